"""Errors a user can fix. The CLI prints them without a traceback and exits 1."""
from __future__ import annotations


class Img2ImgError(Exception):
    """A problem with the user's input: a file, a folder, a YAML value, a checkpoint.

    The message names what is wrong and what to do about it.
    """


class PipelineError(Img2ImgError):
    """A pipeline that failed validation; `problems` holds every (dotted path, message) found, `lines`
    where each is: a line of the file, or ``"--set"``."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None,
                 lines: dict[str, int | str] | None = None):
        self.problems = list(problems)
        self.source = source
        self.lines = dict(lines or {})
        where = f" in {source}" if source else ""
        count = len(self.problems)
        text = [f"{count} problem{'s' if count != 1 else ''}{where}:"]
        for path, msg in self.problems:
            line = self.lines.get(path)  # a line of the file, or "--set" for a value given on the command line
            where = "" if not line else f" (line {line})" if isinstance(line, int) else f" ({line})"
            text.append(f"  {path or '<file>'}{where}: {msg}")
        super().__init__("\n".join(text))


class PeerFailed(Img2ImgError):
    """This process of a torchrun job stops because another one failed and said why; printed once, by
    that process, so this one exits 1 quietly."""


class PluginError(Img2ImgError):
    """A plugin that broke the contract (raised only where it cannot be isolated)."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (or its type name), for one-line user errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def closest(word: object, options, *, cutoff: float = 0.6) -> str | None:
    """The option closest to `word` (a case-insensitive match first), or None when none is close."""
    import difflib

    options = [str(o) for o in options]
    lowered = {o.lower(): o for o in options}
    if str(word).lower() in lowered:
        return lowered[str(word).lower()]
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(word: object, options, *, cutoff: float = 0.6) -> str:
    """``"did you mean 'x'?"`` for the closest of `options` to `word`, or ``""`` when none is close.

    The one "did you mean" of img2img: every message that suggests a name uses it.
    """
    match = closest(word, options, cutoff=cutoff)
    return f"did you mean '{match}'?" if match is not None else ""
