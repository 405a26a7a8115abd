"""The `img2img` typer application, its consoles and how user errors are shown.

User errors (`Img2ImgError`) print a message and exit 1 without a traceback; anything else is a
bug and keeps its traceback. Command modules add their commands to `app`.
"""
from __future__ import annotations

import errno
import functools
import os
from typing import Any, Callable

import typer
from rich.console import Console, ConsoleDimensions
from rich.text import Text

from img2img._version import __version__
from img2img.errors import Img2ImgError, PeerFailed

UNWRAPPED_WIDTH = 10_000
"""The width output that is not a terminal gets: in effect, no wrapping."""


class _Console(Console):
    """The command line's console. Where its stream is not a terminal (a file, a pipe, a log collector)
    nothing is wrapped: a log record or a message stays one line however long it is, and a table is as
    wide as its content. ``COLUMNS`` still sets a width where one is wanted."""

    def _get_size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        if self._width is None and not self.is_terminal and not self._environ.get("COLUMNS", "").isdigit():
            return ConsoleDimensions(UNWRAPPED_WIDTH, size.height)
        return size

    size = property(_get_size, Console.size.fset)

    def print(self, *objects: Any, soft_wrap: bool | None = None, **kwargs: Any) -> None:
        if soft_wrap is None and not self.is_terminal and all(isinstance(o, (str, Text)) for o in objects):
            soft_wrap = True
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)


console = _Console()
err_console = _Console(stderr=True)

app = typer.Typer(
    name="img2img",
    help="Image-to-image translation: train CycleGAN and pix2pix from YAML pipelines, translate folders, "
         "export ONNX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
datasets_app = typer.Typer(help="Demo data sets (synthesised, no download) and the public archives.",
                           no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")

def report_user_errors(fn: Callable) -> Callable:
    """Img2ImgError -> message + exit 1; a signal-stopped training keeps its 130/143."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from img2img.engine.signals import TrainingStopped

        try:
            return fn(*args, **kwargs)
        except TrainingStopped as stop:
            if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops alike; rank 0 says so
                print_message(str(stop), style="yellow")
            raise typer.Exit(stop.code) from None
        except PeerFailed:  # another process of the torchrun job printed the error
            raise typer.Exit(1) from None
        except Img2ImgError as exc:
            print_message(str(exc), prefix="error:")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            print_message("interrupted", style="yellow")
            raise typer.Exit(130) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f" while writing {exc.filename}" if exc.filename else ""
            print_message(f"disk full{where}. Free some space and run the command again (a training continues "
                          "with --resume from its last complete checkpoint, or starts again with --overwrite if it "
                          "stopped before its first one).", prefix="error:")
            raise typer.Exit(1) from None

    return wrapper

def print_message(text: str, *, prefix: str = "", style: str = "") -> None:
    """A message to stderr as plain text: file names such as ``img[1].png`` are not read as markup,
    and long paths are not broken across lines."""
    line = Text()
    if prefix:
        line.append(prefix, style="red")
        line.append(" ")
    line.append(text, style=style)
    err_console.print(line, highlight=False, soft_wrap=True)

def version_callback(value: bool) -> None:
    if value:
        console.print(f"img2img {__version__}")
        raise typer.Exit()

@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """img2img: plugin-based image-to-image translation."""


def usage_error(message: str, param: str | None = None) -> Exception:
    """Wrong command-line usage: typer prints the usage line and the message, and exits 2.

    With `param`, a value given to it is wrong; without, something is missing.
    """
    if param is not None:
        return typer.BadParameter(message, param_hint=param)
    usage_error_class = typer.BadParameter.__mro__[1]  # click's UsageError (exit 2), which typer does not export
    return usage_error_class(message)


def _flags_show_no_type() -> None:
    """typer's rich help prints ``<bool>`` beside flags (``--overwrite <bool>``), which reads as if
    ``--overwrite true`` worked; a flag takes no value, so show none."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "flag_aware", False):
        return

    def display_type_rich(self, ctx):  # noqa: ANN001
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        return shown(self, ctx)

    display_type_rich.flag_aware = True
    TyperOption.display_type_rich = display_type_rich


_flags_show_no_type()

SetOption = typer.Option(None, "--set", "-s", metavar="KEY=VALUE",
                         help="Override a pipeline field, e.g. --set train.max_steps=100 (value parsed as YAML).")


