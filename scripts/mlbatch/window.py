"""The window policy in Python: the reference the ASL is tested against.

A batch's window starts at its timestamp floored to the previous (or equal)
fire time of the cron grid, and ends at the timestamp itself, written
canonically. The extractor uses this module for history; the rendered ASL
lookup tables come from :func:`minute_table`, so both read one setting.
"""
from __future__ import annotations

import calendar
import functools
import re
from datetime import datetime, timedelta, timezone

from croniter import croniter

from .settings import CRON, YEAR_MAX, YEAR_MIN

__all__ = ["InvalidTimestamp", "Window", "window_for", "window_at", "iso_z", "minute_table", "is_leap",
           "leap_years"]

_TS = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})T(?P<h>\d{2}):(?P<mi>\d{2}):(?P<s>\d{2})"
    r"(?:\.(?P<frac>\d+))?(?P<tz>Z|\+00:00)?"
)


class InvalidTimestamp(ValueError):
    """The timestamp is not an accepted, existing UTC instant."""


class Window(tuple):
    """(batch_start_ts_iso, batch_end_ts_iso)."""

    __slots__ = ()

    def __new__(cls, start: str, end: str) -> "Window":
        return super().__new__(cls, (start, end))

    @property
    def start(self) -> str:
        return self[0]

    @property
    def end(self) -> str:
        return self[1]


def _five_field(cron: str) -> str:
    """AWS's six-field cron (with year, `?`) as croniter's five fields, grid-checked."""
    fields = cron.split()
    if len(fields) != 6:
        raise ValueError(f"expected an AWS cron of 6 fields, got {cron!r}")
    minute, *rest, _year = fields
    if any(f not in ("*", "?") for f in rest):
        raise ValueError(f"only the minute field may vary in the window grid: {cron!r}")
    return f"{minute} * * * *"


def minute_table(cron: str = CRON) -> list[tuple[str, bool]]:
    """For each minute 0..59: (floor minute 'MM', whether the floor is in the previous hour)."""
    expr = _five_field(cron)
    table = []
    for minute in range(60):
        t = datetime(2001, 1, 1, 1, minute, 0, 1)  # 1 µs past: a grid minute floors to itself
        prev = croniter(expr, t).get_prev(datetime)
        table.append((f"{prev.minute:02d}", prev.hour == 0))
    if all(borrow for _, borrow in table):
        raise ValueError(f"the grid {cron!r} never fires within an hour")
    return table


def is_leap(year: int) -> bool:
    return calendar.isleap(year)


def leap_years() -> list[int]:
    return [y for y in range(YEAR_MIN, YEAR_MAX + 1) if is_leap(y)]


def window_for(timestamp: str, cron: str = CRON) -> Window:
    """The window of a source timestamp, or :class:`InvalidTimestamp`."""
    m = _TS.fullmatch(timestamp) if isinstance(timestamp, str) else None
    if m is None:
        raise InvalidTimestamp(f"not YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00): {timestamp!r}")
    y = int(m["y"])
    if not YEAR_MIN <= y <= YEAR_MAX:
        raise InvalidTimestamp(f"year {y} outside {YEAR_MIN}-{YEAR_MAX}: {timestamp!r}")
    try:
        t = datetime(y, int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), int(m["s"]),
                     tzinfo=timezone.utc)
    except ValueError as exc:
        raise InvalidTimestamp(f"no such instant {timestamp!r}: {exc}") from None
    floor = croniter(_five_field(cron), t + timedelta(microseconds=1)).get_prev(datetime)
    frac = f".{m['frac']}" if m["frac"] is not None else ""
    end = f"{m['y']}-{m['mo']}-{m['d']}T{m['h']}:{m['mi']}:{m['s']}{frac}Z"
    return Window(floor.strftime("%Y-%m-%dT%H:%M:00Z"), end)


@functools.lru_cache(maxsize=8)
def _floors(cron: str) -> tuple[tuple[int, bool], ...]:
    return tuple((int(floor), borrow) for floor, borrow in minute_table(cron))


def iso_z(t: datetime) -> str:
    """An aware datetime -> YYYY-MM-DDTHH:MM:SS[.mmm]Z in UTC (milliseconds only when non-zero):
    what S3 LastModified becomes as a source timestamp."""
    if t.utcoffset():
        t = t.astimezone(timezone.utc)
    base = (f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}")
    return f"{base}.{t.microsecond // 1000:03d}Z" if t.microsecond else f"{base}Z"


def window_at(t: datetime, cron: str = CRON) -> Window:
    """The window of an aware datetime, equal to ``window_for(iso_z(t))`` (tests prove it) but
    from the precomputed :func:`minute_table` instead of croniter: the extractor calls it once
    per batch folder."""
    if t.utcoffset():
        t = t.astimezone(timezone.utc)
    if not YEAR_MIN <= t.year <= YEAR_MAX:
        raise InvalidTimestamp(f"year {t.year} outside {YEAR_MIN}-{YEAR_MAX}: {t.isoformat()}")
    floor, borrow = _floors(cron)[t.minute]
    start = t.replace(minute=floor, second=0, microsecond=0)
    if borrow:
        start -= timedelta(hours=1)
    return Window(f"{start.year:04d}-{start.month:02d}-{start.day:02d}T{start.hour:02d}:{start.minute:02d}:00Z",
                  iso_z(t))
