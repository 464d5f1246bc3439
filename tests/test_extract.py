"""The historical extractor against moto S3 with a realistic layout."""
from __future__ import annotations

import datetime as dt
import json

import boto3
import pytest

from mlbatch.cli import main
from mlbatch.extract import ExtractError, Extractor, iso_from_last_modified
from mlbatch.progress import Progress
from mlbatch.sandbox import load_event
from mlbatch.window import window_for

BUCKET = "history-ingest"
UTC = dt.timezone.utc


def at(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s).replace(tzinfo=UTC)


# key -> LastModified (whole seconds: what S3 listings report). Three org pairs, four projects (one unknown), days across a month
# boundary in a leap year, folders whose files straddle a window boundary, empty folders, strays.
LAYOUT = {
    # traffic-anomaly: files straddling 00:08 (the earliest decides the window)
    "acme/netsec/traffic-anomaly/2024/02/28/mb-001/part-0.json.gz": at("2024-02-28T23:52:59"),
    "acme/netsec/traffic-anomaly/2024/02/28/mb-001/part-1.json.gz": at("2024-02-28T23:53:02"),
    "acme/netsec/traffic-anomaly/2024/02/29/mb-002/part-0.json.gz": at("2024-03-01T00:07:59"),
    "acme/netsec/traffic-anomaly/2024/02/29/mb-002/part-1.json.gz": at("2024-03-01T00:08:00"),
    "acme/netsec/traffic-anomaly/2024/02/29/mb-003/part-0.json.gz": at("2024-02-29T12:38:00"),
    "acme/netsec/traffic-anomaly/2024/03/01/mb-004/a.json.gz": at("2024-03-01T00:23:00"),
    "acme/netsec/traffic-anomaly/2024/03/01/mb-004/b.json.gz": at("2024-03-01T00:22:00"),
    "acme/netsec/traffic-anomaly/2024/03/01/mb-004/c.json.gz": at("2024-03-01T00:24:00"),
    "acme/netsec/traffic-anomaly/2024/03/01/mb-empty/": at("2024-03-01T01:00:00"),       # empty folder
    "acme/netsec/traffic-anomaly/2024/03/01/stray.json.gz": at("2024-03-01T01:00:00"),    # not in a batch
    "acme/netsec/traffic-anomaly/2024/03/01/mb-005/deep/x.json.gz": at("2024-03-01T01:00:00"),  # too deep
    "acme/netsec/traffic-anomaly/2024/03/02/mb-006/part-0.json.gz": at("2024-03-02T00:00:00"),  # out of range
    "acme/netsec/traffic-anomaly/README.md": at("2024-01-01T00:00:00"),                     # not a day
    # dns-tunnel and cdn-bots: plain folders
    "acme/netsec/dns-tunnel/2024/02/29/mb-a/f.json.gz": at("2024-02-29T23:59:59"),
    "acme/edge/cdn-bots/2024/03/01/mb-b/f.json.gz": at("2024-03-01T10:10:10"),
    "acme/edge/cdn-bots/2024/03/01/mb-c/": at("2024-03-01T10:10:10"),                   # marker ...
    "acme/edge/cdn-bots/2024/03/01/mb-c/f.json.gz": at("2024-03-01T10:40:00"),         # ... with a file
    # a project with no defaults item
    "globex/soc/unknown-proj/2024/03/01/mb-z/f.json.gz": at("2024-03-01T05:00:00"),
}
KNOWN = {"traffic-anomaly": "fs-2024-06", "dns-tunnel": "fs-dns-3", "cdn-bots": "v7"}


@pytest.fixture(scope="module")
def history(sandbox):
    from moto.s3.models import s3_backends
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    backend = s3_backends["123456789012"]["aws"]
    for key, when in LAYOUT.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"" if key.endswith("/") else b"{}")
        backend.get_object(BUCKET, key).last_modified = when.replace(tzinfo=None)
    for project, fsv in KNOWN.items():
        sandbox.put_defaults({**load_event("project_defaults"), "project_name": project, "feature_spec_version": fsv})
    return sandbox


def reference_units(representative="earliest") -> list[dict]:
    """The units computed straight from LAYOUT with the window reference."""
    folders: dict[str, list[tuple[dt.datetime, str]]] = {}
    for key, when in LAYOUT.items():
        parts = key.split("/")
        if len(parts) != 8 or not parts[7] or parts[3:6] > ["2024", "03", "01"] or parts[2] not in KNOWN:
            continue
        folders.setdefault("/".join(parts[:7]), []).append((when, key))
    units = []
    for folder, files in sorted(folders.items()):
        when, key = (min if representative == "earliest" else max)(files)
        org1, org2, project, y, m, d, batch = folder.split("/")
        start, end = window_for(iso_from_last_modified(when))
        units.append({"project_name": project, "org1": org1, "org2": org2, "mini_batch_id": batch,
                      "mini_batch_s3_prefix": f"s3://{BUCKET}/{folder}/", "feature_spec_version": KNOWN[project],
                      "batch_start_ts_iso": start, "batch_end_ts_iso": end, "source": "backfill",
                      "representative_key": key, "representative_last_modified": iso_from_last_modified(when)})
    return units


def extractor(history, **kw) -> Extractor:
    return Extractor(BUCKET, history.table("ProjectDefaultsTable"), workers=4, **kw)


def key_of(u):
    return u["mini_batch_s3_prefix"]


def test_extract_units_equal_the_python_reference(history):
    ex = extractor(history)

    units = list(ex.units(dt.date(2024, 2, 28), dt.date(2024, 3, 1)))

    assert sorted(units, key=key_of) == sorted(reference_units(), key=key_of)
    boundary = next(u for u in units if u["mini_batch_id"] == "mb-002")
    assert (boundary["batch_start_ts_iso"], boundary["batch_end_ts_iso"]) == (
        "2024-02-29T23:53:00Z", "2024-03-01T00:07:59Z")


def test_extract_reports_what_it_skipped_and_why(history):
    ex = extractor(history)
    list(ex.units(dt.date(2024, 2, 28), dt.date(2024, 3, 1)))

    r = ex.report.as_dict()
    assert r["units"] == len(reference_units())
    assert r["skipped"] == {"empty batch folder": 1, "project not in the defaults table": 1}
    assert r["stray_keys"] == {"file directly in the day folder": 1, "deeper than <mini_batch_id>/<file>": 1}
    assert r["folders"] == r["units"] + 2
    # one listing per project for the 3-day span (a page holds 1,000 keys); discovery: orgs, pairs, projects
    assert r["api_calls"]["ListObjectsV2"] == 4
    assert r["api_calls"]["ListObjectsV2 (discovery)"] == 1 + 2 + 3
    assert r["api_calls"]["BatchGetItem"] == 1
    assert "HeadObject" not in r["api_calls"]


def test_extract_spans_listed_in_parallel_give_the_same_units(history):
    ex = extractor(history, span_days=1)
    units = list(ex.units(dt.date(2024, 2, 28), dt.date(2024, 3, 1)))
    assert units == list(extractor(history).units(dt.date(2024, 2, 28), dt.date(2024, 3, 1)))
    assert ex.report.api_calls["ListObjectsV2"] == 12  # 4 projects x 3 one-day spans


def test_extract_latest_representative_moves_straddling_windows(history):
    units = {u["mini_batch_id"]: u for u in extractor(history, representative="latest").units(
        dt.date(2024, 2, 28), dt.date(2024, 3, 1))}
    assert units == {u["mini_batch_id"]: u for u in reference_units("latest")}
    assert units["mb-002"]["batch_start_ts_iso"] == "2024-03-01T00:08:00Z"


def test_extract_given_prefix_and_project_lists_only_those(history):
    ex = extractor(history)
    units = list(ex.units(dt.date(2024, 2, 29), dt.date(2024, 2, 29), "acme/netsec", ["dns-tunnel"]))
    assert [u["mini_batch_id"] for u in units] == ["mb-a"]
    assert "ListObjectsV2 (discovery)" not in ex.report.api_calls


def test_extract_strict_fails_on_an_unknown_project(history):
    with pytest.raises(ExtractError, match="unknown-proj"):
        list(extractor(history, strict=True).units(dt.date(2024, 3, 1), dt.date(2024, 3, 1)))


def test_extract_rejects_a_reversed_range_and_a_bad_prefix(history):
    with pytest.raises(ExtractError, match="before"):
        list(extractor(history).units(dt.date(2024, 3, 2), dt.date(2024, 3, 1)))
    with pytest.raises(ExtractError, match="org1/org2"):
        list(extractor(history).units(dt.date(2024, 3, 1), dt.date(2024, 3, 1), "acme"))


def test_extract_cli_streams_units_to_s3_and_summarises(history, capsys):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="artifacts")

    code = main(["extract", "--bucket", BUCKET, "--from", "2024-02-28", "--to", "2024-03-01", "--quiet",
                 "--defaults-table", history.table("ProjectDefaultsTable"), "--output", "s3://artifacts/u.jsonl"])

    assert code == 0
    body = s3.get_object(Bucket="artifacts", Key="u.jsonl")["Body"].read().decode()
    assert sorted((json.loads(line) for line in body.splitlines()), key=key_of) == sorted(reference_units(), key=key_of)
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["summary"]
    assert summary["units"] == len(reference_units())


def test_extract_dry_run_plans_per_day_and_counts_succeeded_windows(history, capsys):
    done = reference_units()[0]
    history.set_lock({"lock_key": "#".join([done["project_name"], done["feature_spec_version"],
                                            done["batch_start_ts_iso"], done["batch_end_ts_iso"]]),
                      "status": "SUCCEEDED"})

    code = main(["extract", "--bucket", BUCKET, "--from", "2024-02-28", "--to", "2024-03-01", "--quiet",
                 "--defaults-table", history.table("ProjectDefaultsTable"), "--dry-run",
                 "--lock-table", history.table("LockTable")])

    assert code == 0
    plan = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(p["units"] for p in plan) == len(reference_units())
    assert sum(p["already_succeeded"] for p in plan) == 1
    assert {"project_name": "traffic-anomaly", "day": "2024-03-01", "units": 1, "already_succeeded": 0} in plan
    history.clear_locks()


def test_extract_cli_names_bad_arguments(history, capsys):
    code = main(["extract", "--bucket", BUCKET, "--from", "2024-13-01", "--to", "2024-03-01",
                 "--defaults-table", "t", "--output", "-"])
    assert code == 2 and "YYYY-MM-DD" in capsys.readouterr().err
    code = main(["extract", "--bucket", "no-such-bucket", "--from", "2024-03-01", "--to", "2024-03-01",
                 "--defaults-table", history.table("ProjectDefaultsTable"), "--output", "-", "--quiet"])
    assert code == 1 and "no-such-bucket" in capsys.readouterr().err



def test_extract_cli_takes_the_defaults_table_from_the_environment_and_does_not_guess_ledger_counts(
        history, capsys, monkeypatch):
    # GIVEN no --defaults-table on the command line
    args = ["extract", "--bucket", BUCKET, "--from", "2024-03-01", "--to", "2024-03-01", "--output", "-"]
    monkeypatch.delenv("MLBATCH_DEFAULTS_TABLE", raising=False)

    # WHEN it is missing, then set in the environment as the stack's outputs are
    missing = main(args)
    missing_err = capsys.readouterr().err
    monkeypatch.setenv("MLBATCH_DEFAULTS_TABLE", history.table("ProjectDefaultsTable"))
    code = main(args)
    out, err = capsys.readouterr()

    # THEN the first is a usage error naming both ways, the second extracts; its summary does not claim
    # that nothing had succeeded or would adopt a window: it read no ledger
    assert missing == 2 and "--defaults-table or MLBATCH_DEFAULTS_TABLE" in missing_err
    assert code == 0 and out.strip()
    summary = json.loads(err.strip().splitlines()[-1])["summary"]
    assert (summary["already_succeeded"], summary["will_adopt"]) == (None, None)

# --- LastModified sanity: a copied bucket ---------------------------------------------------------

COPIED = "history-copied"
COPY_TIME = at("2025-06-01T12:00:00")


@pytest.fixture(scope="module")
def copied(history):
    """A copy of three days of history: every object got the copy time as LastModified, except
    one folder restored with its original time."""
    from moto.s3.models import s3_backends
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=COPIED)
    backend = s3_backends["123456789012"]["aws"]
    layout = {f"acme/netsec/traffic-anomaly/2024/03/0{d}/mb-{d}{i:02d}/part-0.json.gz": COPY_TIME
              for d in (1, 2, 3) for i in range(4)}
    layout["acme/netsec/traffic-anomaly/2024/03/02/mb-kept/part-0.json.gz"] = at("2024-03-02T10:10:00")
    layout["acme/netsec/traffic-anomaly/2024/03/03/mb-early/part-0.json.gz"] = at("2024-03-02T23:59:59")
    for key, when in layout.items():
        s3.put_object(Bucket=COPIED, Key=key, Body=b"{}")
        backend.get_object(COPIED, key).last_modified = when.replace(tzinfo=None)
    return history


def extract_cli(history, *args, bucket=COPIED):
    return main(["extract", "--bucket", bucket, "--from", "2024-03-01", "--to", "2024-03-03", "--quiet",
                 "--defaults-table", history.table("ProjectDefaultsTable"), *args])


def test_extract_flags_units_whose_last_modified_is_outside_the_folder_date(copied, capsys, tmp_path):
    out = tmp_path / "units.jsonl"

    code = extract_cli(copied, "--output", str(out))

    assert code == 0
    units = {u["mini_batch_id"]: u for u in map(json.loads, out.read_text().splitlines())}
    suspect = {b for b, u in units.items() if u.get("timestamp_suspect")}
    # 12 copied folders are suspect (3 months after their day); so is a LastModified before its folder's day
    assert suspect == {f"mb-{d}{i:02d}" for d in (1, 2, 3) for i in range(4)} | {"mb-early"}
    assert "timestamp_suspect" not in units["mb-kept"]
    # the copied units collapse onto one window: what the flag is there to catch
    assert {units[b]["batch_start_ts_iso"] for b in suspect - {"mb-early"}} == {"2025-06-01T11:53:00Z"}
    err = capsys.readouterr().err
    assert json.loads(err.strip().splitlines()[-1])["summary"]["timestamp_suspect"] == 13
    warnings = [line for line in err.splitlines() if "suspect LastModified" in line]
    assert len(warnings) == 6  # the first five by name, then one line counting the rest
    assert "8 more units (13 in all)" in warnings[-1]


def test_extract_suspect_window_is_configurable(copied, tmp_path):
    out = tmp_path / "units.jsonl"
    assert extract_cli(copied, "--output", str(out), "--suspect-after-days", "500") == 0
    suspect = [u["mini_batch_id"] for u in map(json.loads, out.read_text().splitlines()) if u.get("timestamp_suspect")]
    assert suspect == ["mb-early"]  # before its folder's day is suspect whatever the margin


def test_extract_strict_refuses_suspect_units_and_publishes_nothing(copied, capsys, tmp_path):
    out = tmp_path / "units.jsonl"

    code = extract_cli(copied, "--output", str(out), "--strict")

    assert code == 1
    err = capsys.readouterr().err
    assert "13 units have a representative LastModified outside their folder's date" in err
    assert f"s3://{COPIED}/acme/netsec/traffic-anomaly/2024/03/01/mb-100/part-0.json.gz" in err  # an example
    assert "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no partial manifest left behind


# --- CLI robustness: usage errors exit 2, bad outputs fail before the listing ------------------

def test_extract_cli_usage_errors_exit_2(history, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["extract", "--bucket", BUCKET, "--from", "2024-03-01", "--to", "2024-03-01",
              "--defaults-table", "t", "--output", "-", "--workers", "0"])
    assert exc.value.code == 2 and "--workers" in capsys.readouterr().err
    code = main(["extract", "--bucket", BUCKET, "--from", "2024-03-02", "--to", "2024-03-01",
                 "--defaults-table", "t", "--output", "-"])
    assert code == 2 and "--from 2024-03-02 is after --to 2024-03-01" in capsys.readouterr().err


@pytest.fixture
def list_calls():
    """ListObjectsV2 calls made by clients the CLI creates (boto3's default session)."""
    calls = []
    session = boto3._get_default_session()
    handler = lambda **kw: calls.append(kw["model"].name)  # noqa: E731
    session.events.register("before-call.s3.ListObjectsV2", handler)
    yield calls
    session.events.unregister("before-call.s3.ListObjectsV2", handler)


@pytest.mark.parametrize("output, message", [
    ("s3://nosuchbucket/x.jsonl", "bucket 'nosuchbucket' does not exist"),
    ("/proc/nope/u.jsonl", "cannot create folder /proc/nope"),
])
def test_extract_cli_rejects_an_unusable_output_before_listing(history, capsys, list_calls, output, message):
    code = main(["extract", "--bucket", BUCKET, "--from", "2024-02-28", "--to", "2024-03-01", "--quiet",
                 "--defaults-table", history.table("ProjectDefaultsTable"), "--output", output])

    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err
    assert list_calls == []  # nothing was listed


def test_extract_errors_name_the_table_and_the_bucket(history, capsys):
    code = main(["extract", "--bucket", BUCKET, "--from", "2024-03-01", "--to", "2024-03-01", "--quiet",
                 "--defaults-table", "no-such-table", "--output", "-"])
    assert code == 1 and "BatchGetItem on table 'no-such-table' failed" in capsys.readouterr().err


def test_progress_is_redrawn_on_a_terminal_and_plain_lines_in_a_log():
    import io

    log, now = io.StringIO(), [0.0]
    progress = Progress(log, every=5, tty=False, clock=lambda: now[0])
    for i in range(1, 11):  # one update a second for 10 s
        progress(f"{i}/10 spans")
        now[0] += 1
    progress.done()
    assert "\r" not in log.getvalue()
    assert log.getvalue().splitlines() == ["1/10 spans", "6/10 spans", "10/10 spans"]

    term = io.StringIO()
    progress = Progress(term, tty=True)
    progress("1/2 spans")
    progress("2/2 spans")
    progress.done()
    assert term.getvalue() == "\r1/2 spans\x1b[K\r2/2 spans\x1b[K\n"


def test_extract_command_does_not_import_the_engine_or_the_validators():
    """The extractor image starts `mlbatch extract` once per backfill: it must not pay for moto,
    jinja2 or cfn-lint (the bench measures its start-up against a plain listing)."""
    import subprocess
    import sys

    script = ("import sys; from mlbatch.cli import main; "
              "main(['extract', '--bucket', 'b', '--from', '2024-03-01', '--to', '2024-03-01', '--quiet', "
              "'--defaults-table', 't', '--output', '/proc/nope/u.jsonl']); "
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'moto', 'jinja2', 'cfnlint', 'mlbatch'}))")
    env = {"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert "cannot create folder /proc/nope" in done.stderr  # it did reach the extractor
    assert done.stdout.strip() == "['mlbatch']"


def test_batch_get_retries_unprocessed_keys_until_all_are_read():
    """DynamoDB answers a throttled BatchGetItem with UnprocessedKeys: they are asked again."""
    from mlbatch.extract import batch_get

    class Throttled:
        def __init__(self):
            self.requests = []

        def batch_get_item(self, RequestItems):
            keys = RequestItems["t"]["Keys"]
            self.requests.append(len(keys))
            served, left = keys[:2], keys[2:]  # two keys per call, the rest unprocessed
            return {"Responses": {"t": [{**k, "status": {"S": "SUCCEEDED"}} for k in served]},
                    "UnprocessedKeys": {"t": {"Keys": left, "ConsistentRead": True}} if left else {}}

    ddb = Throttled()
    items = batch_get(ddb, "t", [{"lock_key": {"S": f"k{i}"}} for i in range(5)], consistent=True)

    assert sorted(i["lock_key"]["S"] for i in items) == ["k0", "k1", "k2", "k3", "k4"]
    assert ddb.requests == [5, 3, 1]
    with pytest.raises(ExtractError, match="still unprocessed"):
        batch_get(Throttled(), "t", [{"lock_key": {"S": f"k{i}"}} for i in range(5)], max_rounds=2)
