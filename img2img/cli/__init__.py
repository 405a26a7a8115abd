"""The `img2img` command line: parse, call the engine, render with rich.

Each command module registers its commands on the one typer `app`; plugins add theirs through the
``register_commands(app)`` hook.
"""
from __future__ import annotations

from typing import Any

import typer
import typer.main
from typer.core import TyperGroup

from img2img.cli.base import app, console, err_console, print_message, report_user_errors
from img2img.errors import Img2ImgError, closest

# Each module adds its commands; `img2img --help` lists them in this order.
from img2img.cli import training, inference, serve, plugins, datasets, evaluation, weights  # noqa: E402, F401, I001  isort:skip
from img2img.cli import pipelines, importing  # noqa: E402, F401  isort:skip
from img2img.cli import health, docs  # noqa: E402, F401, I001  isort:skip

__all__ = ["app", "console", "err_console", "main", "print_message", "report_user_errors"]

_added: set[tuple[str, object]] = set()  # (plugin, hook function) whose register_commands has run


def _add_plugin_commands(hook: str | None = None) -> bool:
    """Let plugins add commands; a plugin that fails here is recorded, the CLI keeps working.

    With `hook`, only the plugins whose source names it are loaded (`img2img --help` lists plugin
    commands without importing every network plugin, or torch). True when a command was added."""
    from img2img import plugins as plugin_mod

    try:
        pm, _ = plugin_mod.plugins_for(hook) if hook else (plugin_mod.get_plugin_manager(), None)
    except Img2ImgError as exc:
        print_message(str(exc), prefix="error:")
        raise SystemExit(1) from None
    added = False
    for impl in pm.hook.register_commands.get_hookimpls():
        key = (impl.plugin_name, getattr(impl.function, "__func__", impl.function))
        if key in _added:  # once per process, whichever manager (listing or full) found it first
            continue
        _added.add(key)
        try:
            impl.function(app=app)
            added = True
        except Exception as exc:
            if plugin_mod.strict():
                raise
            info = plugin_mod.info_for(impl.plugin_name)
            if info is not None:
                info.errors.append(f"commands: register_commands raised {type(exc).__name__}: {exc}")
    return added


class _Commands(TyperGroup):
    """The root command group: built-in commands are there from the start; plugin commands are added
    when a name is not a built-in one, or when the commands are listed (--help)."""

    def _with_plugins(self, listing: bool) -> None:
        from img2img import plugins as plugin_mod

        if listing and not plugin_mod.loaded():
            added = _add_plugin_commands("register_commands")
        else:
            added = _add_plugin_commands()
        if added:
            for name, command in typer.main.get_group(app).commands.items():
                self.commands.setdefault(name, command)

    def list_commands(self, ctx: Any) -> list[str]:
        self._with_plugins(listing=True)
        return super().list_commands(ctx)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:  # click's NoSuchOption: suggest only options whose names are alike
            name, possible = getattr(exc, "option_name", None), getattr(exc, "possibilities", None)
            if name and possible:  # `--bogus` is not like `--out`: compare without the dashes
                exc.possibilities = [p for p in possible if closest(name.lstrip("-"), [p.lstrip("-")]) is not None]
            raise

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None and not cmd_name.startswith("-"):
            self._with_plugins(listing=False)
            command = super().get_command(ctx, cmd_name)
        return command


app.info.cls = _Commands


def main() -> None:
    from img2img import plugins as plugin_mod

    plugin_mod.on_load(lambda line: print_message(line, prefix="warning:", style="yellow"))
    app()


if __name__ == "__main__":
    main()
