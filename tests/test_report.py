"""`mlbatch audit --html`: the audit as a picture, checked in a real (headless) Chromium.

The browser tests need Debian's chromium (`make tools`); without it they skip, and under
MLBATCH_REQUIRE_TOOLS=1 (make test, CI) they fail."""
from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import re
import subprocess
from collections import Counter
from html.parser import HTMLParser

import boto3
import pytest

from browser import Chromium, find_chromium, synthetic_lines, synthetic_summary
from mlbatch.cli import main
from mlbatch.extract import lock_key
from mlbatch.report import STATE_MARKS, Report, fix_commands, grid_minutes
from mlbatch.sandbox import load_event
from mlbatch.window import window_at

REQUIRE_TOOLS = os.environ.get("MLBATCH_REQUIRE_TOOLS") == "1"
BUCKET, PROJECT, FSV = "report-ingest", "report-proj", "fs-r1"
UTC = dt.timezone.utc

# mini_batch_id -> (project, day folder, LastModified). Two pairs share a window: mb-ok/mb-late (two
# locks, 10:08 window) and mb-first/mb-second (same second: one lock, held by mb-first).
FOLDERS = {
    "mb-ok": (PROJECT, "2024/07/01", "2024-07-01T10:10:00"),
    "mb-late": (PROJECT, "2024/07/01", "2024-07-01T10:12:30"),
    "mb-run": (PROJECT, "2024/07/01", "2024-07-01T11:10:00"),
    "mb-stuck": (PROJECT, "2024/07/01", "2024-07-01T12:10:00"),
    "mb-failed": (PROJECT, "2024/07/01", "2024-07-01T13:10:00"),
    "mb-poisoned": (PROJECT, "2024/07/01", "2024-07-01T14:10:00"),
    "mb-first": (PROJECT, "2024/07/02", "2024-07-02T01:10:00"),
    "mb-second": (PROJECT, "2024/07/02", "2024-07-02T01:10:00"),
    "mb-missing": (PROJECT, "2024/07/02", "2024-07-02T05:10:00"),
    "mb-foreign": (PROJECT, "2024/07/02", "2024-07-02T06:10:00"),
    "mb-ghost": ("ghost-report-proj", "2024/07/02", "2024-07-02T07:10:00"),
}
EXPECTED = {"mb-ok": "SUCCEEDED", "mb-late": "MISSING", "mb-run": "IN_PROGRESS", "mb-stuck": "STUCK",
            "mb-failed": "FAILED", "mb-poisoned": "POISONED", "mb-first": "SUCCEEDED", "mb-second": "COLLISION",
            "mb-missing": "MISSING", "mb-foreign": "UNKNOWN_STATUS", "mb-ghost": "UNKNOWN_PROJECT"}


def _when(batch: str) -> dt.datetime:
    return dt.datetime.fromisoformat(FOLDERS[batch][2]).replace(tzinfo=UTC)


def key(batch: str) -> str:
    start, end = window_at(_when(batch))
    return lock_key({"project_name": PROJECT, "feature_spec_version": FSV, "batch_start_ts_iso": start,
                     "batch_end_ts_iso": end})


def ago(**kw) -> str:
    return (dt.datetime.now(UTC) - dt.timedelta(**kw)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture(scope="module")
def chromium():
    if not find_chromium():
        if REQUIRE_TOOLS:
            pytest.fail("chromium is not installed: run `make tools`")
        pytest.skip("chromium is not installed (make tools installs Debian's package)")
    with Chromium(width=1700, height=900) as browser:
        yield browser


@pytest.fixture(scope="module")
def audited(sandbox, tmp_path_factory):
    """`mlbatch audit --json --html` over two days with one unit per state: (lines, summary, html path)."""
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    for batch, (project, day, _) in FOLDERS.items():
        sandbox.engine.put_object_at(BUCKET, f"acme/netsec/{project}/{day}/{batch}/part-0.json.gz", _when(batch))
    sandbox.put_defaults({**load_event("project_defaults"), "project_name": PROJECT, "feature_spec_version": FSV})
    sandbox.clear_locks()

    def lock(batch, **fields):
        start, end = window_at(_when(batch))
        sandbox.set_lock({"lock_key": key(batch), "project_name": PROJECT, "feature_spec_version": FSV,
                          "batch_start_ts_iso": start, "batch_end_ts_iso": end, "mini_batch_id": batch,
                          "attempts": 1, "updated_at": ago(hours=3), **fields})

    lock("mb-ok", status="SUCCEEDED")
    lock("mb-run", status="IN_PROGRESS", updated_at=ago(minutes=2))
    lock("mb-stuck", status="IN_PROGRESS")
    lock("mb-failed", status="FAILED", attempts=2, error="Pipeline.BuildFailed",
         cause="builder exited 1: <b>not markup</b> & 'quoted'")
    lock("mb-poisoned", status="FAILED", attempts=3, error="Pipeline.BuildFailed", cause="exit 1 again",
         pipeline_execution_arn="arn:aws:states:us-east-1:123456789012:execution:mlbatch-Pipeline:run-7")
    lock("mb-first", status="SUCCEEDED")
    sandbox.set_lock({"lock_key": key("mb-foreign"), "status": "DONE"})

    path = tmp_path_factory.mktemp("report") / "audit.html"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["audit", "--bucket", BUCKET, "--from", "2024-07-01", "--to", "2024-07-02", "--quiet",
                     "--workers", "2", "--lock-table", sandbox.table("LockTable"),
                     "--defaults-table", sandbox.table("ProjectDefaultsTable"), "--json", "--html", str(path)])
    assert code == 3, err.getvalue()
    *lines, summary = [json.loads(line) for line in out.getvalue().splitlines()]
    locks = {lk["lock_key"]: lk for lk in sandbox.locks()}
    yield lines, summary["summary"], path, locks, err.getvalue()
    sandbox.clear_locks()


# What the page shows, read from its DOM: the legend, then every cell (an element of the grid with a
# state's class) and the details it shows when it gets focus.
READ_PAGE = r"""(() => {
  const legend = [...document.querySelectorAll('#legend li')].map(li => ({
    state: li.dataset.state, count: +li.dataset.count, cls: li.querySelector('i').className,
    letter: li.querySelector('i').textContent}));
  const classes = new Set(legend.map(l => l.cls));
  const slots = [...document.querySelectorAll('table.g td')];
  const cells = [...document.querySelectorAll('table.g td, table.g td i')].filter(e => classes.has(e.className));
  return {legend, cells: cells.map(c => {
    c.dispatchEvent(new MouseEvent('mousedown', {bubbles: true}));
    const shown = {fix: []};
    document.querySelectorAll('#details [data-field]').forEach(dd => {
      if (dd.dataset.field === 'fix') shown.fix.push(dd.textContent); else shown[dd.dataset.field] = dd.textContent; });
    const td = c.tagName === 'TD' ? c : c.parentElement;
    return {cls: c.className, letter: c.textContent, focused: document.activeElement === c,
            slot: slots.indexOf(td), day: td.parentElement.querySelector('th').textContent.slice(0, 10),
            shown};
  })};
})()"""


def read_page(chromium, path):
    chromium.page("Network.enable")
    chromium.open(path)
    page = chromium.js(READ_PAGE)
    requests = [e["params"]["request"]["url"] for e in chromium.events
                if e.get("method") == "Network.requestWillBeSent"]
    chromium.page("Network.disable")
    return page, requests


def test_every_audited_unit_is_one_cell_with_its_state_and_the_legend_counts_the_summary(audited, chromium):
    # GIVEN a real `mlbatch audit --json --html` run over folders in every state
    lines, summary, path, locks, err = audited
    assert f"report of {len(lines)} units written to {path}" in err
    # WHEN the page is opened in Chromium
    page, requests = read_page(chromium, path)
    # THEN nothing but the file itself was fetched
    assert [u for u in requests if not u.startswith("file://")] == []
    # AND every unit is exactly one cell, whose class and letter say the unit's state
    state_of = {entry["cls"]: entry["state"] for entry in page["legend"]}
    cells = {cell["shown"]["mini_batch_id"]: cell for cell in page["cells"]}
    assert len(page["cells"]) == len(lines) == len(EXPECTED)
    assert {b: state_of[c["cls"]] for b, c in cells.items()} == EXPECTED
    assert all(c["letter"] == STATE_MARKS[EXPECTED[b]] and c["shown"]["state"].endswith(EXPECTED[b])
               for b, c in cells.items())
    # AND the legend's counts are the audit's summary, and the cells' count per state
    assert {e["state"]: e["count"] for e in page["legend"] if e["count"]} == summary["states"]
    assert Counter(state_of[c["cls"]] for c in page["cells"]) == Counter(summary["states"])
    # AND batches of one window share its slot (in the window's day row)
    assert cells["mb-ok"]["slot"] == cells["mb-late"]["slot"] != cells["mb-run"]["slot"]
    assert cells["mb-first"]["slot"] == cells["mb-second"]["slot"]
    minutes = grid_minutes()
    assert cells["mb-ok"]["day"] == "2024-07-01" and cells["mb-first"]["day"] == "2024-07-02"
    assert len(minutes) * 24 == 96


def test_a_cells_details_are_its_lock_and_the_command_that_fixes_it(audited, chromium, sandbox):
    lines, summary, path, locks, _ = audited
    page, _ = read_page(chromium, path)
    shown = {c["shown"]["mini_batch_id"]: c["shown"] for c in page["cells"]}
    assert all(c["focused"] for c in page["cells"])  # a click gives the cell the keyboard focus
    for line in lines:
        details = shown[line["mini_batch_id"]]
        lock = locks.get(line.get("lock_key"))
        # the unit: its folder and window
        assert details["mini_batch_s3_prefix"] == line["mini_batch_s3_prefix"]
        assert (details["batch_start_ts_iso"], details["batch_end_ts_iso"]) == (line["batch_start_ts_iso"],
                                                                                line["batch_end_ts_iso"])
        # its lock, as the ledger holds it
        if lock is None:
            assert "status" not in details
            continue
        assert details["lock_key"] == lock["lock_key"] == line["lock_key"]
        for field in ("status", "attempts", "error", "cause"):
            if field in lock and line["state"] not in ("SUCCEEDED", "COLLISION"):
                assert details[field] == str(lock[field]), (line["mini_batch_id"], field)
        assert f"mlbatch locks show '{lock['lock_key']}'" in details["fix"][0] or line["state"] == "STUCK"
    failed = shown["mb-failed"]
    assert failed["cause"] == "builder exited 1: <b>not markup</b> & 'quoted'"  # shown as text, not markup
    assert any(f"--bucket {BUCKET} --from 2024-07-02 --to 2024-07-02 --project {PROJECT} "
               f"--lock-table {sandbox.table('LockTable')} --manifest" in c for c in shown["mb-missing"]["fix"])
    assert any("mlbatch replay arn:aws:states:us-east-1:123456789012:execution:mlbatch-Pipeline:run-7 --dry-run" in c
               for c in shown["mb-poisoned"]["fix"])
    assert any("--max-attempts 4" in c for c in shown["mb-poisoned"]["fix"])
    assert shown["mb-second"]["held_by_mini_batch_id"] == "mb-first"
    assert any("mlbatch defaults put" in c for c in shown["mb-ghost"]["fix"])
    # the page's fill-in is the Python one
    by_batch = {line["mini_batch_id"]: line for line in lines}
    context = {"bucket": BUCKET, "lock_table": sandbox.table("LockTable")}
    assert shown["mb-failed"]["fix"] == fix_commands(by_batch["mb-failed"], context)


def test_the_keyboard_moves_a_single_focus_and_hover_shows_details(audited, chromium):
    # GIVEN the report open, nothing focused
    _, _, path, _, _ = audited
    chromium.open(path)
    shown = "document.querySelector('#details [data-field=mini_batch_id]')?.textContent"
    focused = "document.activeElement.textContent + '|' + document.activeElement.className"
    # WHEN the user tabs into the page THEN the first batch (of the first project, ghost-...) has the focus
    chromium.key("Tab")
    assert chromium.js(shown) == "mb-ghost"
    assert chromium.js("document.querySelectorAll('table.g [tabindex]').length") == 1  # one tab stop: roving
    # WHEN ArrowRight at a day's last batch THEN the next day holding batches (the next project's first)
    chromium.key("ArrowRight")
    assert chromium.js(shown) == "mb-ok"
    # WHEN ArrowRight THEN the next batch (mb-late, stacked in the same window)
    chromium.key("ArrowRight")
    assert chromium.js(shown) == "mb-late" and chromium.js(focused) == "M|mi"
    chromium.key("ArrowRight")
    assert chromium.js(shown) == "mb-run"
    # WHEN ArrowDown (from 11:08) THEN the next day's batch nearest in time (06:08); Home/End: the day's first/last
    chromium.key("ArrowDown")
    assert chromium.js(shown) == "mb-foreign"
    chromium.key("Home")
    assert chromium.js(shown) == "mb-first"
    chromium.key("End")
    assert chromium.js(shown) == "mb-foreign"
    assert chromium.js("document.querySelectorAll('table.g [tabindex]').length") == 1
    # WHEN the mouse hovers another cell THEN its details show, the focus stays
    box = chromium.js("""(() => { const c = [...document.querySelectorAll('table.g td.fa')][0];
                         c.scrollIntoView({block: 'center'}); const r = c.getBoundingClientRect();
                         return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()""")
    chromium.hover(box["x"], box["y"])
    assert chromium.js(shown) == "mb-failed"
    assert chromium.js(focused).startswith("?|")  # still on mb-foreign (UNKNOWN_STATUS)


class _Cells(HTMLParser):
    """Counts the grid's cells from the markup alone: elements carrying a state's class."""

    def __init__(self, classes):
        super().__init__()
        self.classes, self.cells, self.in_grid, self.scripts, self.links = classes, Counter(), 0, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "g" in (a.get("class") or "").split():
            self.in_grid += 1
        elif self.in_grid and tag in ("td", "i") and a.get("class") in self.classes:
            self.cells[self.classes[a["class"]]] += 1
        if tag in ("script", "link", "img", "iframe") and (a.get("src") or a.get("href")):
            self.links.append((tag, a.get("src") or a.get("href")))

    def handle_endtag(self, tag):
        if tag == "table" and self.in_grid:
            self.in_grid -= 1


def test_the_page_is_self_contained_and_every_line_is_a_cell_even_without_a_window():
    # GIVEN lines of two projects, one with a window adopted from a binding, one without a readable window
    lines = synthetic_lines(2, dt.date(2025, 3, 1), 1)
    lines[5]["window_adopted_from"] = {"lock_key": "x#y#2025-03-01T01:08:00Z#2025-03-01T01:09:00Z",
                                       "batch_start_ts_iso": "2025-03-01T01:08:00Z",
                                       "batch_end_ts_iso": "2025-03-01T01:09:00Z"}
    lines.append({**lines[0], "mini_batch_id": "mb-odd", "batch_start_ts_iso": None, "state": "UNKNOWN_PROJECT"})
    report = Report()
    for line in lines:
        report.add(line)
    # WHEN the page is made
    page = report.html(synthetic_summary(lines), dt.date(2025, 3, 1), dt.date(2025, 3, 1))
    # THEN it fetches nothing: no external reference, a policy forbidding any, no url() in its style
    classes = {m[1]: m[0] for m in re.findall(r"<li data-state=(\w+) data-count=\d+[^>]*><i class=(\w+)>", page)}
    parser = _Cells(classes)
    parser.feed(page)
    assert parser.links == [] and "default-src 'none'" in page
    assert not re.search(r"https?://(?!www\.w3\.org)|url\(|@import", page.split("<script type=application/json")[0])
    # AND every line is one cell, the unplaced one included
    assert parser.cells == Counter(line["state"] for line in lines)
    # AND the binding's adopted window travels with its unit
    data = json.loads(re.search(r"id=units>(.*?)</script>", page).group(1))
    adopted = data["cols"]["window_adopted_from"]
    values = adopted["m"].values() if "m" in adopted else adopted
    assert [v["batch_start_ts_iso"] for v in values if v] == ["2025-03-01T01:08:00Z"]


def test_a_ledger_where_most_batches_adopted_their_live_window_still_makes_a_page():
    # GIVEN an audit where every batch ran live, so every line names the window LastModified gave
    lines = synthetic_lines(1, dt.date(2025, 3, 1), 1)[:40]
    # (a few windows only, so the page stores the column as distinct values and an index)
    for n, line in enumerate(lines):
        line["window_adopted_from"] = {"lock_key": f"x#y#{n % 4}", "batch_start_ts_iso": "2025-03-01T00:08:00Z",
                                       "batch_end_ts_iso": f"2025-03-01T00:1{n % 4}:00Z"}
    lines[7]["window_adopted_from"] = None
    report = Report()
    for line in lines:
        report.add(line)
    # WHEN the page is made THEN it is (no crash on a column of objects) and each unit keeps its own
    page = report.html(synthetic_summary(lines), dt.date(2025, 3, 1), dt.date(2025, 3, 1))
    column = json.loads(re.search(r"id=units>(.*?)</script>", page).group(1))["cols"]["window_adopted_from"]
    assert "d" in column and len(column["d"]) == 4
    assert [None if i is None else column["d"][i] for i in column["i"]] == [line["window_adopted_from"] for line in lines]


def test_every_audit_state_has_its_letter_and_a_state_unknown_to_the_report_is_still_drawn_and_counted():
    from mlbatch.audit import STATES
    assert set(STATES) <= set(STATE_MARKS)
    assert len(set(STATE_MARKS.values())) == len(STATE_MARKS)  # a letter names one state
    # GIVEN a line in a state a newer audit might add
    lines = synthetic_lines(1, dt.date(2025, 3, 1), 1)[:3]
    lines[1]["state"] = "SOMETHING_NEW"
    report = Report()
    for line in lines:
        report.add(line)
    # WHEN drawn THEN it is a cell, in the legend with its count
    page = report.html(synthetic_summary(lines))
    assert "<li data-state=SOMETHING_NEW data-count=1>" in page and page.count("<td class=ot>*</td>") == 1


def test_a_year_of_one_project_stays_small_and_opens_fast(chromium, tmp_path):
    # GIVEN a year of one project: 365 days x 96 windows, a few windows with two batches
    lines = synthetic_lines(1, dt.date(2025, 1, 1), 365)
    report = Report(context={"bucket": "acme-ingest"})
    for line in lines:
        report.add(line)
    path = tmp_path / "year.html"
    # WHEN written and opened
    size = report.write(str(path), synthetic_summary(lines), dt.date(2025, 1, 1), dt.date(2025, 12, 31))
    seconds = chromium.open(path)
    # THEN a few MB, opened in seconds (generous bounds: the machine may be busy), every unit a cell
    assert size < 8_000_000
    assert seconds < 20
    assert chromium.js("document.querySelectorAll('table.g tr.d').length") == 365
    count = chromium.js("[...document.querySelectorAll('#legend li')].reduce((n, li) => n + +li.dataset.count, 0)")
    assert count == len(lines) > 35_040
    # AND the keyboard reaches the last day
    chromium.js("document.querySelector('table.g td.ok').dispatchEvent(new MouseEvent('mousedown', {bubbles: true}))")
    chromium.key("End", key_code=35)
    for _ in range(60):
        chromium.key("PageDown")
    assert chromium.js("document.activeElement.closest('tr').querySelector('th').textContent").startswith("2025-12-31")


@pytest.mark.parametrize("artifacts_bucket, env, expected", [
    ("heal-bkt", {}, "s3://heal-bkt/backfill/heal-2025-03-01.jsonl"),
    (None, {"MLBATCH_ARTIFACTS_BUCKET": "env-bkt"}, "s3://env-bkt/backfill/heal-2025-03-01.jsonl"),
    (None, {}, None),
])
def test_the_heal_command_a_cell_shows_runs_as_pasted_into_a_shell(artifacts_bucket, env, expected):
    # GIVEN a MISSING unit's heal command, from an audit that knew the artifacts bucket or did not
    line = next(line for line in synthetic_lines(1, dt.date(2025, 3, 1), 1) if line["state"] == "MISSING")
    heal = next(c for c in fix_commands(line, {"bucket": "acme-ingest", "artifacts_bucket": artifacts_bucket})
                if c.startswith("mlbatch audit"))
    # WHEN pasted into a shell (mlbatch replaced by a printer of its arguments)
    shell = subprocess.run(["bash", "-c", "printf '%s\\n' " + heal.removeprefix("mlbatch ")], text=True,
                           capture_output=True, env={"PATH": os.environ["PATH"], **env}, timeout=30)
    # THEN the manifest is the artifacts bucket's heal file, or the shell refuses with one line naming the output
    if expected:
        args = shell.stdout.splitlines()
        assert shell.returncode == 0 and args[args.index("--manifest") + 1] == expected, shell.stderr
    else:
        assert shell.returncode != 0 and shell.stdout == ""
        assert "ArtifactsBucketName" in shell.stderr and len(shell.stderr.splitlines()) == 1


@pytest.mark.parametrize("width", [1600, 1366])
def test_on_a_laptop_screen_neither_the_last_hour_nor_the_gaps_are_cut_off_or_covered(chromium, tmp_path, width):
    # GIVEN a day of one project, its last window and its gaps column filled
    lines = synthetic_lines(1, dt.date(2025, 3, 1), 1)
    report = Report(context={"bucket": "acme-ingest"})
    for line in lines:
        report.add(line)
    path = tmp_path / "day.html"
    report.write(str(path), synthetic_summary(lines), dt.date(2025, 3, 1), dt.date(2025, 3, 1))
    # WHEN opened in a window narrower than the grid and the panel side by side
    chromium.page("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
    try:
        chromium.open(path)
        # (scrolled fully right: the page may scroll sideways, nothing may lie under the panel)
        chromium.js("window.scrollTo(document.documentElement.scrollWidth, 0)")
        chromium.js("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")  # laid out
        hidden = chromium.js("""(() => {
          const row = document.querySelector('table.g tr.d'), panel = document.getElementById('details');
          return [row.lastElementChild, row.lastElementChild.previousElementSibling, panel].map(e => {
            const r = e.getBoundingClientRect(), x = Math.min(r.x + r.width / 2, innerWidth - 1);
            const top = document.elementFromPoint(x, r.y + r.height / 2);
            return e.contains(top) ? null : e.tagName + '.' + e.className + ' under ' + top.tagName + '#' + top.id;
          }).filter(Boolean); })()""")
    finally:
        chromium.page("Emulation.clearDeviceMetricsOverride")
    # THEN the day's gaps count, its last window and the details panel are each what shows where they are
    # (the grid's box once clipped the last hour and the gaps below 1,680 px; the page now scrolls sideways)
    assert hidden == []


@pytest.mark.parametrize("target, message", [
    ("s3://bucket/audit.html", "--html writes a local file"),
    ("{file}/audit.html", "--html {file}/audit.html"),
])
def test_audit_html_refuses_a_target_it_cannot_write_before_listing(cli, tmp_path, target, message):
    # GIVEN a target that is not a local path, or whose folder is a file
    (tmp_path / "file").write_text("")
    target, message = (x.replace("{file}", str(tmp_path / "file")) for x in (target, message))
    # WHEN the audit is asked for its report THEN it says so in one line before any AWS call
    code, out, err = cli("audit", "--bucket", "b", "--from", "2024-07-01", "--to", "2024-07-01", "--lock-table", "l",
                         "--defaults-table", "d", "--html", target)
    assert code in (1, 2) and message in err and "Traceback" not in err and out == ""
