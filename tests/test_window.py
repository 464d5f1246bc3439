"""The window policy: the rendered ASL agrees with the Python reference, case by case and at random."""
from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlbatch.window import InvalidTimestamp, iso_z, minute_table, window_at, window_for

INVALID = "Intake.InvalidTimestamp"

# (timestamp, expected start, expected end) -- expected None: InvalidTimestamp
CASES = [
    # exact grid minutes floor to themselves; minutes 00-07 roll back an hour
    ("2024-05-17T10:08:00Z", "2024-05-17T10:08:00Z", "2024-05-17T10:08:00Z"),
    ("2024-05-17T10:23:00Z", "2024-05-17T10:23:00Z", "2024-05-17T10:23:00Z"),
    ("2024-05-17T10:38:00Z", "2024-05-17T10:38:00Z", "2024-05-17T10:38:00Z"),
    ("2024-05-17T10:53:00Z", "2024-05-17T10:53:00Z", "2024-05-17T10:53:00Z"),
    ("2024-05-17T10:22:59Z", "2024-05-17T10:08:00Z", "2024-05-17T10:22:59Z"),
    ("2024-05-17T10:07:59.999Z", "2024-05-17T09:53:00Z", "2024-05-17T10:07:59.999Z"),
    ("2024-05-17T10:00:00Z", "2024-05-17T09:53:00Z", "2024-05-17T10:00:00Z"),
    # day rollover, months of 31/30 days, February in leap and common years
    ("2024-05-17T00:07:59.999Z", "2024-05-16T23:53:00Z", "2024-05-17T00:07:59.999Z"),
    ("2024-05-01T00:03:00Z", "2024-04-30T23:53:00Z", "2024-05-01T00:03:00Z"),
    ("2024-04-01T00:03:00Z", "2024-03-31T23:53:00Z", "2024-04-01T00:03:00Z"),
    ("2024-03-01T00:03:00Z", "2024-02-29T23:53:00Z", "2024-03-01T00:03:00Z"),
    ("2023-03-01T00:03:00Z", "2023-02-28T23:53:00Z", "2023-03-01T00:03:00Z"),
    ("2000-03-01T00:00:00Z", "2000-02-29T23:53:00Z", "2000-03-01T00:00:00Z"),
    ("2100-03-01T00:00:00Z", "2100-02-28T23:53:00Z", "2100-03-01T00:00:00Z"),
    ("2024-02-01T00:05:00Z", "2024-01-31T23:53:00Z", "2024-02-01T00:05:00Z"),
    ("2024-12-01T00:05:00Z", "2024-11-30T23:53:00Z", "2024-12-01T00:05:00Z"),
    # year rollover
    ("2025-01-01T00:00:00.5Z", "2024-12-31T23:53:00Z", "2025-01-01T00:00:00.5Z"),
    ("1900-01-01T00:07:00Z", "1899-12-31T23:53:00Z", "1900-01-01T00:07:00Z"),
    # fractions of several lengths, +00:00 and no offset
    ("2024-05-17T10:30:00.1Z", "2024-05-17T10:23:00Z", "2024-05-17T10:30:00.1Z"),
    ("2024-05-17T10:30:00.123456Z", "2024-05-17T10:23:00Z", "2024-05-17T10:30:00.123456Z"),
    ("2024-05-17T10:30:00.123456789+00:00", "2024-05-17T10:23:00Z", "2024-05-17T10:30:00.123456789Z"),
    ("2024-05-17T10:30:00+00:00", "2024-05-17T10:23:00Z", "2024-05-17T10:30:00Z"),
    ("2024-05-17T10:30:00", "2024-05-17T10:23:00Z", "2024-05-17T10:30:00Z"),
    ("2024-05-17T10:30:00.000", "2024-05-17T10:23:00Z", "2024-05-17T10:30:00.000Z"),
    # invalid: instants that do not exist, other offsets, malformed shapes
    ("2023-02-29T10:00:00Z", None, None),
    ("2100-02-29T10:00:00Z", None, None),
    ("2024-04-31T10:00:00Z", None, None),
    ("2024-13-01T10:00:00Z", None, None),
    ("2024-00-10T10:00:00Z", None, None),
    ("2024-05-17T24:00:00Z", None, None),
    ("2024-05-17T10:60:00Z", None, None),
    ("2024-05-17T10:30:60Z", None, None),
    ("2024-05-17T10:30:00+01:00", None, None),
    ("2024-05-17T10:30:00-00:00", None, None),
    ("2024-05-17T10:30:00.Z", None, None),
    ("2024-05-17T10:30:00ZZ", None, None),
    ("2024-05-17T10:30:00Z5", None, None),
    ("2024-05-17 10:30:00Z", None, None),
    ("2024-5-17T10:30:00Z", None, None),
    ("2024-05-17T10:30Z", None, None),
    ("02024-05-17T10:30:00Z", None, None),
    ("2024--05-17T10:30:00Z", None, None),
    ("1899-12-31T23:59:59Z", None, None),
    ("2400-01-01T00:00:00Z", None, None),
    ("2024-05-17T10:30:00.12a4Z", None, None),
    ("", None, None),
    ("not a timestamp", None, None),
]


def asl_windows(sandbox, machine, timestamps):
    """Run the rendered window macros over timestamps in one execution."""
    result = sandbox.engine.run(machine, {"timestamps": timestamps}, timeout=300)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    return [INVALID if "error" in w else (w["start"], w["end"]) for w in result.output]


def reference(ts):
    try:
        return tuple(window_for(ts))
    except InvalidTimestamp:
        return INVALID


def test_python_reference_matches_the_case_table():
    for ts, start, end in CASES:
        assert reference(ts) == (INVALID if start is None else (start, end)), ts


def test_asl_window_matches_the_case_table(sandbox, window_machine):
    got = asl_windows(sandbox, window_machine, [ts for ts, _, _ in CASES])
    expected = [INVALID if start is None else (start, end) for _, start, end in CASES]
    assert dict(zip([c[0] for c in CASES], got)) == dict(zip([c[0] for c in CASES], expected))


def test_grid_comes_from_the_cron_setting():
    table = minute_table("8-59/15 * * * ? *")
    assert [m for m, (floor, _) in enumerate(table) if floor == f"{m:02d}"] == [8, 23, 38, 53]
    assert [m for m, (_, borrow) in enumerate(table) if borrow] == list(range(8))
    hourly = minute_table("0 * * * ? *")
    assert all(floor == "00" and not borrow for floor, borrow in hourly)
    with pytest.raises(ValueError):
        minute_table("8-59/15 3 * * ? *")  # only the minute field may vary


# --- property: ASL == Python reference on random timestamps ------------------------------

_DIGITS = st.text("0123456789", min_size=1, max_size=9)


@st.composite
def timestamps(draw):
    """Mostly valid instants (biased to rollover edges), some near-misses."""
    year = draw(st.one_of(st.integers(1900, 2399), st.sampled_from([1900, 2000, 2100, 2399, 2024, 2023])))
    month = draw(st.one_of(st.integers(1, 12), st.sampled_from([1, 2, 3, 12])))
    day = draw(st.one_of(st.integers(1, 31), st.sampled_from([1, 28, 29, 30, 31])))
    hour = draw(st.one_of(st.integers(0, 23), st.just(0)))
    minute = draw(st.one_of(st.integers(0, 59), st.integers(0, 8)))
    second = draw(st.integers(0, 59))
    frac = draw(st.one_of(st.just(""), _DIGITS.map(lambda d: "." + d)))
    suffix = draw(st.sampled_from(["Z", "+00:00", "", "Z", "+01:00"]))
    ts = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{frac}{suffix}"
    if draw(st.integers(0, 19)) == 0:  # a near-miss: one character changed or dropped
        i = draw(st.integers(0, len(ts) - 1))
        ts = ts[:i] + draw(st.sampled_from(["", "x", "-", ":", "T", "9", "Z", "+"])) + ts[i + 1:]
    return ts


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                 HealthCheck.function_scoped_fixture])
@given(batch=st.lists(timestamps(), min_size=100, max_size=100))
def test_asl_window_equals_python_reference_on_random_timestamps(sandbox, window_machine, batch):
    # 20 examples x 100 timestamps = 2,000 random timestamps per run, 100 per execution
    got = asl_windows(sandbox, window_machine, batch)
    mismatches = [(ts, g, reference(ts)) for ts, g in zip(batch, got) if g != reference(ts)]
    assert not mismatches, mismatches[:10]


# --- property: the extractor's table-driven window == the croniter reference ---------------------

def _window_or_invalid(fn, arg):
    try:
        return tuple(fn(arg))
    except InvalidTimestamp:
        return INVALID


@settings(max_examples=300, deadline=None)
@given(t=st.datetimes(min_value=dt.datetime(1899, 12, 30), max_value=dt.datetime(2400, 1, 2),
                      timezones=st.sampled_from([dt.timezone.utc, dt.timezone(dt.timedelta(hours=5, minutes=30)),
                                                 dt.timezone(dt.timedelta(hours=-8))])))
def test_window_at_equals_the_reference_for_any_instant(t):
    """window_at (minute table, once per batch folder in the extractor) agrees with window_for
    (croniter) on every instant, including rollovers, other offsets and the years' edges."""
    assert _window_or_invalid(window_at, t) == _window_or_invalid(window_for, iso_z(t))


def test_window_at_on_the_case_table_edges():
    cases = [(dt.datetime(2024, 3, 1, 0, 7, 59, 999000, dt.timezone.utc), ("2024-02-29T23:53:00Z", "2024-03-01T00:07:59.999Z")),
             (dt.datetime(2025, 1, 1, 0, 0, 0, 500000, dt.timezone.utc), ("2024-12-31T23:53:00Z", "2025-01-01T00:00:00.500Z")),
             (dt.datetime(2024, 5, 17, 10, 8, tzinfo=dt.timezone.utc), ("2024-05-17T10:08:00Z", "2024-05-17T10:08:00Z"))]
    for t, expected in cases:
        assert tuple(window_at(t)) == expected == tuple(window_for(iso_z(t)))
    with pytest.raises(InvalidTimestamp):
        window_at(dt.datetime(2400, 1, 1, tzinfo=dt.timezone.utc))
