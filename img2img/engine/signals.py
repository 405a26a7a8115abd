"""Stopping a training cleanly: SIGINT/SIGTERM finish the step, checkpoint, and exit 130/143.

A second Ctrl-C while the checkpoint is being written is ignored: the atomic write completes (or
leaves the previous checkpoint), and the run exits as the first Ctrl-C asked.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

EXIT_SIGINT, EXIT_SIGTERM = 130, 143


class StopRequest:
    """SIGINT/SIGTERM finish the current step, then the loop checkpoints and exits 130/143.

    A second SIGINT interrupts at once, except while a file is being written (`deferred`): an
    interrupted writer would report a broken file instead of stopping, and the loop stops right
    after the write anyway.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._deferred = 0

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT and not self._deferred:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A block (a checkpoint write) that a second Ctrl-C does not interrupt."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous.clear()
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


class TrainingStopped(Exception):
    """Raised after a signal-triggered checkpoint; carries the exit code (130 or 143)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
