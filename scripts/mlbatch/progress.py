"""Progress on stderr that reads well in a terminal and in a log.

On a terminal the line is redrawn in place; anywhere else (a CI log, the CloudWatch
log of a SageMaker job) a `\\r` would glue every update into one line, so a plain line
is written at most every few seconds, and the last state is always written at the end.

    with Progress() as progress:
        for i, item in enumerate(items, 1):
            progress.update(f"listed {i}/{len(items)} spans")
        progress.done("listed every span")
"""
from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """One progress line: `update()` as often as you like, `note()` for a line that stays,
    `done()` (or leaving the `with` block) to end it, `clear()` to end it without a trace."""

    def __init__(self, stream: TextIO | None = None, every: float = 5.0, tty: bool | None = None,
                 enabled: bool = True, clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stderr
        self.every = every
        self.tty = self.stream.isatty() if tty is None else tty
        self.enabled = enabled
        self.clock = clock
        self._shown = ""      # what the terminal line shows now (tty)
        self._pending = ""    # the latest update not yet written (plain)
        self._last = None     # when a plain line was last written

    def update(self, message: str) -> None:
        """The current state; drawn now (terminal) or when `every` seconds have passed (log)."""
        if not self.enabled:
            return
        if self.tty:
            width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
            self._draw(message[:width])
            return
        now = self.clock()
        if self._last is None or now - self._last >= self.every:
            self._write_line(message)
            self._last = now
            self._pending = ""
        else:
            self._pending = message

    def note(self, message: str) -> None:
        """A line that stays (the progress line, if any, is redrawn below it)."""
        if not self.enabled:
            return
        shown = self._shown
        self._clear()
        self._write_line(message)
        if shown:
            self._draw(shown)

    def done(self, message: str | None = None) -> None:
        """End the progress line, with `message` as its last state if given."""
        if not self.enabled:
            return
        if self.tty:
            if message is not None:
                self._draw(message)
            if self._shown:
                self.stream.write("\n")
                self.stream.flush()
            self._shown = ""
        else:
            if message is not None or self._pending:
                self._write_line(message if message is not None else self._pending)
            self._pending, self._last = "", None

    def clear(self) -> None:
        """End the progress line without a last state (the caller reports the outcome itself)."""
        if not self.enabled:
            return
        self._clear()
        self.stream.flush()
        self._pending, self._last = "", None

    def __call__(self, message: str) -> None:  # usable where a `progress(msg)` callback is expected
        self.update(message)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.done()

    def _draw(self, message: str) -> None:
        self.stream.write("\r" + message + "\x1b[K")  # \x1b[K: clear what a longer line left
        self.stream.flush()
        self._shown = message

    def _clear(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\r\x1b[K")
            self._shown = ""

    def _write_line(self, message: str) -> None:
        self.stream.write(message + "\n")
        self.stream.flush()
