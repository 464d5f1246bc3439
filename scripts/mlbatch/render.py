"""Render templates/*.asl.json.j2 to asl/*.asl.json (Jinja, StrictUndefined, stable JSON)."""
from __future__ import annotations

import calendar
import json
from pathlib import Path

import jinja2

from .defaults import FIELD_MAPPING
from . import settings
from .settings import CRON, ROOT, YEAR_MAX, YEAR_MIN
from .window import leap_years, minute_table

__all__ = ["environment", "render_text", "render_all", "check", "TEMPLATES", "ASL", "DOCS"]

TEMPLATES = ROOT / "templates"
ASL = ROOT / "asl"


def _intrinsic_array(values: list[str]) -> str:
    """A Jinja-generated lookup table as an intrinsic `States.Array('a', 'b', ...)`."""
    for v in values:
        if any(c in v for c in "'{}\\"):
            raise ValueError(f"table value {v!r} needs escaping, which the engine mishandles")
    return "States.Array(" + ", ".join(f"'{v}'" for v in values) + ")"


def lookup_tables(cron: str = CRON) -> dict[str, list[str]]:
    """Every table the ASL needs, derived from the cron grid and the year span."""
    minutes = minute_table(cron)
    years = list(range(YEAR_MIN, YEAR_MAX + 1))
    days_in = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]  # a common year; Feb 29 via `leap`
    return {
        "years": [str(y) for y in years],
        "leap_years": [str(y) for y in leap_years()],
        # every month-day that exists in some year; "02-29" further needs a leap year
        "month_days": [f"{m:02d}-{d:02d}" for m in range(1, 13)
                       for d in range(1, calendar.monthrange(2000, m)[1] + 1)],
        "hours": [f"{h:02d}" for h in range(24)],
        "minutes": [f"{m:02d}" for m in range(60)],
        "seconds": [f"{s:02d}" for s in range(60)],
        "floor_minute": [floor for floor, _ in minutes],
        "borrow_minutes": [f"{m:02d}" for m, (_, borrow) in enumerate(minutes) if borrow],
        # index h -> the hour before h (index 0 unused: hour 00 borrows a day)
        "prev_hour": ["--"] + [f"{h - 1:02d}" for h in range(1, 24)],
        # index d -> the day before d in the same month (index 0, 1 unused)
        "prev_day": ["--", "--"] + [f"{d - 1:02d}" for d in range(2, 32)],
        # index m -> the last month-day of the month before m in a common year (index 0, 1 unused)
        "prev_month_end": ["--", "--"] + [f"{m - 1:02d}-{days_in[m - 2]:02d}" for m in range(2, 13)],
    }


def environment(extra_paths: list[Path] | None = None) -> jinja2.Environment:
    loader = jinja2.FileSystemLoader([str(TEMPLATES), *map(str, extra_paths or [])])
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=True,
                             extensions=["jinja2.ext.do"])
    env.filters["compact"] = lambda v: json.dumps(v, separators=(",", ":"))
    env.filters["regex_replace_int"] = lambda v, fmt: fmt % int(v)
    env.globals.update(tables=lookup_tables(), arr=_intrinsic_array, cron=CRON, FIELD_MAPPING=list(FIELD_MAPPING),
                       INTAKE_TIMEOUT_SECONDS=settings.INTAKE_TIMEOUT_SECONDS,
                       PIPELINE_BACKSTOP_SECONDS=settings.PIPELINE_BACKSTOP_SECONDS,
                       EXTRACTOR_MAX_RUNTIME_SECONDS=settings.EXTRACTOR_MAX_RUNTIME_SECONDS)
    return env


def render_text(name: str, env: jinja2.Environment | None = None) -> str:
    """Render one template to its stable JSON text (indent 2, trailing newline)."""
    env = env or environment()
    raw = env.get_template(name).render()
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        lines = raw.splitlines()
        around = "\n".join(lines[max(0, exc.lineno - 3):exc.lineno + 2])
        raise ValueError(f"{name} renders invalid JSON ({exc}):\n{around}") from None
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _targets() -> dict[Path, str]:
    return {ASL / p.name.removesuffix(".j2"): p.name for p in sorted(TEMPLATES.glob("*.asl.json.j2"))}


DOCS = ASL.parent / "docs"


def _generated() -> dict[Path, str]:
    """Each docs file with a generated section (docs/diagrams.md, docs/errors.md), written afresh."""
    from .generated import SECTIONS, regenerate
    return {DOCS / name: regenerate(name, (DOCS / name).read_text(), ASL) for name in SECTIONS}


def render_all() -> list[Path]:
    """Write every rendered ASL file and the docs' generated sections; return what changed."""
    env, changed = environment(), []
    ASL.mkdir(exist_ok=True)
    for target, name in _targets().items():
        text = render_text(name, env)
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
            changed.append(target)
    for path, text in _generated().items():
        if path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed


def check() -> list[Path]:
    """The committed ASL files that differ from their templates (or are missing / orphaned), then
    the docs whose generated sections are stale."""
    env, stale = environment(), []
    targets = _targets()
    for target, name in targets.items():
        if not target.exists() or target.read_text() != render_text(name, env):
            stale.append(target)
    stale += [p for p in sorted(ASL.glob("*.asl.json")) if p not in targets]
    if not stale:
        stale += [path for path, text in _generated().items() if path.read_text() != text]
    return stale
