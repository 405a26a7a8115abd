"""The `img2img` command line: parse, call the engine, render with rich.

Each command module registers its commands on the one typer `app`; plugins add theirs through the
``register_commands(app)`` hook.
"""
from __future__ import annotations

from img2img.cli.base import app, console, err_console, print_message, report_user_errors
from img2img.errors import Img2ImgError

# Each module adds its commands; `img2img --help` lists them in this order.
from img2img.cli import training, inference, serve, plugins, datasets, evaluation, weights  # noqa: E402, F401, I001  isort:skip
from img2img.cli import pipelines, importing  # noqa: E402, F401  isort:skip
from img2img.cli import health  # noqa: E402, F401, I001  isort:skip

__all__ = ["app", "console", "err_console", "main", "print_message", "report_user_errors"]

def _add_plugin_commands() -> None:
    """Let plugins add commands; a plugin that fails here is recorded, the CLI keeps working."""
    from img2img import plugins as plugin_mod

    try:
        pm = plugin_mod.get_plugin_manager()
    except Img2ImgError as exc:
        print_message(str(exc), prefix="error:")
        raise SystemExit(1) from None
    plugin_mod.warn_unknown_names_once(lambda line: print_message(line, prefix="warning:", style="yellow"))
    for impl in pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(app=app)
        except Exception as exc:
            if plugin_mod.strict():
                raise
            info = plugin_mod.info_for(impl.plugin_name)
            if info is not None:
                info.errors.append(f"register: register_commands raised {type(exc).__name__}: {exc}")

def main() -> None:
    _add_plugin_commands()
    app()


if __name__ == "__main__":
    main()
