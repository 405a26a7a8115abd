"""Errors a user can fix. The CLI prints them without a traceback and exits 1."""
from __future__ import annotations


class Img2ImgError(Exception):
    """A problem with the user's input: a file, a folder, a YAML value, a checkpoint.

    The message names what is wrong and what to do about it.
    """


class PipelineError(Img2ImgError):
    """A pipeline that failed validation; `problems` holds every (dotted path, message) found."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None,
                 lines: dict[str, int] | None = None):
        self.problems = list(problems)
        self.source = source
        self.lines = dict(lines or {})
        where = f" in {source}" if source else ""
        count = len(self.problems)
        text = [f"{count} problem{'s' if count != 1 else ''}{where}:"]
        for path, msg in self.problems:
            line = self.lines.get(path)
            text.append(f"  {path or '<file>'}{f' (line {line})' if line else ''}: {msg}")
        super().__init__("\n".join(text))


class PluginError(Img2ImgError):
    """A plugin that broke the contract (raised only where it cannot be isolated)."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (or its type name), for one-line user errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def did_you_mean(word: object, options, *, cutoff: float = 0.6) -> str:
    """``"did you mean 'x'?"`` for the closest of `options` to `word`, or ``""`` when none is close."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=cutoff)
    return f"did you mean '{close[0]}'?" if close else ""
