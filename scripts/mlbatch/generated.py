"""The generated sections of the docs, between marker comments: the state machine diagrams in
docs/diagrams.md (from asl/) and the error table in docs/errors.md (from scripts/mlbatch/errors.py).
`mlbatch render` writes them; `mlbatch render --check` (and the tests) flag them when stale."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import diagram
from .errors import ERRORS

__all__ = ["ERRORS_BEGIN", "ERRORS_END", "SECTIONS", "error_table", "regenerate"]

ERRORS_BEGIN = "<!-- errors:begin (mlbatch render writes this table from scripts/mlbatch/errors.py) -->"
ERRORS_END = "<!-- errors:end -->"


def _cell(text: str) -> str:
    """One table cell: on one line, `|` escaped, and `[` too (`[.fraction](Z|...)` would render as a link)."""
    return " ".join(text.split()).replace("|", "\\|").replace("[", "\\[")


def error_table() -> str:
    """Every custom error name with its meaning and recovery, as a Markdown table (markers included).
    Reads ERRORS at call time, so a test can add one."""
    rows = [f"| `{name}` | {_cell(meaning)} | {_cell(recovery)} |" for name, (meaning, recovery) in ERRORS.items()]
    return "\n".join([ERRORS_BEGIN, "", "| error | meaning | recovery |", "| --- | --- | --- |", *rows, "",
                      ERRORS_END])


#: file under docs/ -> its generated section: (begin marker, end marker, body from the ASL folder)
SECTIONS: dict[str, tuple[str, str, Callable[[Path], str]]] = {
    "diagrams.md": (diagram.BEGIN, diagram.END, diagram.markdown_section),
    "errors.md": (ERRORS_BEGIN, ERRORS_END, lambda _asl_dir: error_table()),
}


def regenerate(name: str, text: str, asl_dir: Path) -> str:
    """`text` (docs/<name>) with its generated section written afresh."""
    begin, end, body = SECTIONS[name]
    if begin not in text or end not in text:
        raise ValueError(f"docs/{name} lacks the markers {begin!r} ... {end!r}: put them back around the section")
    head, rest = text.split(begin, 1)
    return head + body(asl_dir) + rest.split(end, 1)[1]
