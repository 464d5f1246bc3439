"""Progress reads well in a terminal (one redrawn line) and in a log (a line every few seconds)."""
from __future__ import annotations

import io

from mlbatch.progress import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_in_a_log_progress_is_a_plain_line_every_few_seconds_and_the_last_state_at_the_end():
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, every=5.0, tty=False, clock=clock)

    for t in (0, 1, 2, 6, 7, 8):
        clock.now = t
        progress.update(f"listed {t} spans")
    progress.done()

    assert "\r" not in out.getvalue()
    assert out.getvalue().splitlines() == ["listed 0 spans", "listed 6 spans", "listed 8 spans"]


def test_in_a_log_done_with_a_message_writes_it_instead_of_the_pending_state():
    out, clock = io.StringIO(), Clock()
    with Progress(out, every=5.0, tty=False, clock=clock) as progress:
        progress.update("1/3")
        clock.now = 1
        progress.update("2/3")
        progress.done("3/3 done")

    assert out.getvalue().splitlines() == ["1/3", "3/3 done"]


def test_on_a_terminal_the_line_is_redrawn_in_place_and_notes_stay_above_it():
    out = io.StringIO()
    with Progress(out, tty=True) as progress:
        progress.update("1/3")
        progress.update("2/3")
        progress.note("warning: span 2 was empty")
        progress.update("3/3")

    text = out.getvalue()
    assert text.count("\n") == 2  # the note and the end of the progress line
    assert "warning: span 2 was empty\n" in text
    assert text.endswith("\r3/3\x1b[K\n")


def test_clear_leaves_nothing_behind_and_disabled_progress_writes_nothing():
    tty, log, quiet = io.StringIO(), io.StringIO(), io.StringIO()
    for out, is_tty in ((tty, True), (log, False)):
        progress = Progress(out, every=5.0, tty=is_tty, clock=Clock())
        progress.update("waiting: RUNNING 0.1s")
        progress.update("waiting: RUNNING 0.2s")
        progress.clear()
    silent = Progress(quiet, tty=False, enabled=False)
    silent.update("x")
    silent.done("y")

    assert tty.getvalue().endswith("\r\x1b[K")
    assert log.getvalue() == "waiting: RUNNING 0.1s\n"
    assert quiet.getvalue() == ""
