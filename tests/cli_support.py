"""Helpers for tests of the command line's user-error path."""
from __future__ import annotations


def flat(text: str) -> str:
    """`text` with every run of whitespace as one space (rich wraps long messages)."""
    return " ".join(text.split())


def user_error(result, *needles: str) -> str:
    """Exit 1 through the user-error path, no traceback, every needle in the message; the flat output."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), f"escaped: {result.exception!r}\n{result.output}"
    assert "Traceback" not in result.output
    out = flat(result.output)
    for needle in needles:
        assert flat(needle) in out, f"{needle!r} not in:\n{result.output}"
    return out
