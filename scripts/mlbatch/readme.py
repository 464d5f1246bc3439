"""The README's generated sections, between marker comments: the state machine diagrams
(from asl/) and the error table (from scripts/mlbatch/errors.py). `mlbatch render` writes
them; `mlbatch render --check` (and the tests) flag them when stale."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import diagram
from .errors import ERRORS

__all__ = ["ERRORS_BEGIN", "ERRORS_END", "error_table", "regenerate"]

ERRORS_BEGIN = "<!-- errors:begin (mlbatch render writes this table from scripts/mlbatch/errors.py) -->"
ERRORS_END = "<!-- errors:end -->"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def error_table() -> str:
    """Every custom error name with its meaning and recovery, as a Markdown table (markers included)."""
    rows = [f"| `{name}` | {_cell(meaning)} | {_cell(recovery)} |" for name, (meaning, recovery) in ERRORS.items()]
    return "\n".join([ERRORS_BEGIN, "", "| error | meaning | recovery |", "| --- | --- | --- |", *rows, "",
                      ERRORS_END])


def _sections(asl_dir: Path) -> list[tuple[str, str, Callable[[], str]]]:
    return [(diagram.BEGIN, diagram.END, lambda: diagram.readme_section(asl_dir)),
            (ERRORS_BEGIN, ERRORS_END, error_table)]


def regenerate(text: str, asl_dir: Path) -> str:
    """`text` (the README) with every generated section written afresh."""
    for begin, end, body in _sections(asl_dir):
        if begin not in text or end not in text:
            raise ValueError(f"README.md lacks the markers {begin!r} ... {end!r}: put them back around the section")
        head, rest = text.split(begin, 1)
        text = head + body() + rest.split(end, 1)[1]
    return text
