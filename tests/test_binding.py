"""Every reader finds a batch's window through its binding (issue 15), through the CLI on the embedded engine:
`mlbatch audit`, `extract --dry-run --lock-table`, `backfill show`, `locks list|show`, and `locks bind`, the
migration of ledgers written before bindings.

The live flow stamps a batch with its event's timestamp, S3 with LastModified: the ledger here is written
as the state machines write it (window locks at the payload's window; bindings by one UpdateItem
`SET #a = if_not_exists(#a, :a)`, ReturnValues ALL_NEW, per the batch binding contract in docs/contracts.md).
"""
from __future__ import annotations

import datetime as dt
import json

import boto3
import pytest

from mlbatch.extract import UNIT_FIELDS, binding_key, lock_key
from mlbatch.sandbox import load_event
from mlbatch.window import window_at, window_for

BUCKET = "bind-ingest"
PROJECT, FSV = "bind-proj", "fs-b1"
DAY = "2024-07-01"
UTC = dt.timezone.utc


def at(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s).replace(tzinfo=UTC)


# mini_batch_id -> (S3 LastModified, the live event's timestamp or None: never delivered). The grid fires at
# minutes 8, 23, 38 and 53.
FOLDERS = {
    "mb-sub": (at("2024-07-01T10:10:29"), "2024-07-01T10:10:29.400Z"),    # sub-second
    "mb-equal": (at("2024-07-01T11:10:29"), "2024-07-01T11:10:29.000Z"),  # the same instant, written otherwise
    "mb-secs": (at("2024-07-01T12:10:29"), "2024-07-01T12:10:22Z"),       # seconds before the upload ended
    "mb-grid": (at("2024-07-01T13:08:03"), "2024-07-01T13:07:58Z"),       # across a grid minute: the 12:53 window
    "mb-late": (at("2024-07-01T14:10:00"), "2024-07-01T14:10:45Z"),       # stamped after the upload
    "mb-same": (at("2024-07-01T15:10:00"), "2024-07-01T15:10:00Z"),       # payload == LastModified, to the string
    "mb-failed": (at("2024-07-01T16:10:10"), "2024-07-01T16:10:05Z"),     # processed live, and failed
    "mb-missing": (at("2024-07-01T17:10:00"), None),                      # never arrived
}
DIFFERING = {"mb-sub", "mb-equal", "mb-secs", "mb-grid", "mb-late", "mb-failed"}
LIVE = DIFFERING | {"mb-same"}


def unit(batch: str) -> dict:
    """The execution unit `mlbatch extract` writes for a folder (its LastModified window)."""
    start, end = window_at(FOLDERS[batch][0])
    return {"project_name": PROJECT, "org1": "acme", "org2": "bind", "mini_batch_id": batch,
            "mini_batch_s3_prefix": f"s3://{BUCKET}/acme/bind/{PROJECT}/2024/07/01/{batch}/",
            "feature_spec_version": FSV, "batch_start_ts_iso": start, "batch_end_ts_iso": end, "source": "backfill",
            "representative_key": f"acme/bind/{PROJECT}/2024/07/01/{batch}/part-0.json.gz",
            "representative_last_modified": end}


def live_window(batch: str) -> dict:
    """The window the live flow computed from the event's timestamp: its lock key, start and end."""
    start, end = window_for(FOLDERS[batch][1])
    return {"lock_key": "#".join([PROJECT, FSV, start, end]), "batch_start_ts_iso": start, "batch_end_ts_iso": end}


def own_window(batch: str) -> dict:
    u = unit(batch)
    return {"lock_key": lock_key(u), "batch_start_ts_iso": u["batch_start_ts_iso"],
            "batch_end_ts_iso": u["batch_end_ts_iso"]}


def bkey(batch: str) -> str:
    return binding_key(FSV, unit(batch)["mini_batch_s3_prefix"])


def window_lock(sb, batch: str, window: dict, source: str, acquired_at: str, status: str = "SUCCEEDED", **more):
    """A window lock as the intake (source inference) or the backfill writes it."""
    u = unit(batch)
    sb.set_lock({**window, "status": status, "source": source, "attempts": 1, "acquired_at": acquired_at,
                 "updated_at": acquired_at, **{f: u[f] for f in ("project_name", "feature_spec_version",
                                                                 "mini_batch_id", "mini_batch_s3_prefix")}, **more})


def bind(sb, batch: str, window: dict, source: str = "inference") -> dict:
    """The binding a flow writes: one UpdateItem, if_not_exists on every attribute, ALL_NEW back."""
    u = unit(batch)
    values = {"item_type": "batch_binding", "feature_spec_version": FSV,
              "mini_batch_s3_prefix": u["mini_batch_s3_prefix"], "project_name": PROJECT, "mini_batch_id": batch,
              "window_lock_key": window["lock_key"], "batch_start_ts_iso": window["batch_start_ts_iso"],
              "batch_end_ts_iso": window["batch_end_ts_iso"], "bound_at": "2024-07-01T18:00:00.000Z",
              "bound_by": f"arn:aws:states:us-east-1:123456789012:execution:mlbatch-intake:{batch}",
              "bound_source": source}
    names = {f"#a{i}": k for i, k in enumerate(values)}
    new = sb.engine.dynamodb.update_item(
        TableName=sb.table("LockTable"), Key={"lock_key": {"S": bkey(batch)}},
        UpdateExpression="SET " + ", ".join(f"#a{i} = if_not_exists(#a{i}, :a{i})" for i in range(len(values))),
        ExpressionAttributeNames=names, ExpressionAttributeValues={f":a{i}": {"S": v}
                                                                  for i, v in enumerate(values.values())},
        ReturnValues="ALL_NEW")
    return new["Attributes"]


@pytest.fixture(scope="module")
def ingest(sandbox):
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    for batch, (when, _) in FOLDERS.items():
        sandbox.engine.put_object_at(BUCKET, unit(batch)["representative_key"], when)
    sandbox.put_defaults({**load_event("project_defaults"), "project_name": PROJECT, "feature_spec_version": FSV})
    return sandbox


def live_ledger(sb, with_bindings: bool) -> None:
    """The ledger after the live flow ran every delivered batch (mb-failed's pipeline failed), with the
    bindings the state machines now write, or without them (a ledger from before bindings)."""
    sb.clear_locks()
    for i, batch in enumerate(sorted(LIVE)):
        status = "FAILED" if batch == "mb-failed" else "SUCCEEDED"
        window_lock(sb, batch, live_window(batch), "inference", f"2024-07-01T18:00:0{i}.000Z", status,
                    **({"error": "Pipeline.BuildFailed"} if status == "FAILED" else {}))
        if with_bindings:
            bind(sb, batch, live_window(batch))


@pytest.fixture
def bound(ingest):
    live_ledger(ingest, with_bindings=True)
    yield ingest
    ingest.clear_locks()


@pytest.fixture
def pre_change(ingest):
    """A ledger from before bindings: window locks only. mb-secs ran twice (the old double run): live,
    then a heal at its LastModified window; two items another orchestrator wrote cannot be bound."""
    live_ledger(ingest, with_bindings=False)
    window_lock(ingest, "mb-secs", own_window("mb-secs"), "backfill", "2024-07-02T09:00:00.000Z")
    ingest.set_lock({"lock_key": "legacy#1", "status": "SUCCEEDED"})
    ingest.set_lock({"lock_key": f"{PROJECT}#{FSV}#2024-06-01T00:08:00Z#2024-06-01T00:09:00Z", "status": "SUCCEEDED",
                     "project_name": PROJECT, "feature_spec_version": FSV})
    yield ingest
    ingest.clear_locks()


def audit(cli, sb, *args):
    """`mlbatch audit --json` over the day: (exit code, lines by mini-batch, summary, stderr)."""
    code, out, err = cli("audit", "--bucket", BUCKET, "--from", DAY, "--to", DAY, "--quiet", "--workers", "2",
                         "--project", PROJECT, "--lock-table", sb.table("LockTable"),
                         "--defaults-table", sb.table("ProjectDefaultsTable"), "--json", *args)
    lines = [json.loads(line) for line in out.splitlines()]
    return code, {line["mini_batch_id"]: line for line in lines[:-1]}, lines[-1]["summary"], err


def states(lines: dict) -> dict:
    return {batch: line["state"] for batch, line in lines.items()}


EXPECTED = {**{b: "SUCCEEDED" for b in LIVE}, "mb-failed": "FAILED", "mb-missing": "MISSING"}


# --- the audit ----------------------------------------------------------------------------------------------

def test_live_batches_whose_event_time_differs_from_last_modified_audit_succeeded_through_their_binding(
        bound, cli, tmp_path):
    # GIVEN a day the live flow processed, each batch bound to the window its event's timestamp gave
    manifest = tmp_path / "heal.jsonl"

    # WHEN the audit heals the day
    code, lines, summary, err = audit(cli, bound, "--manifest", str(manifest))

    # THEN every live-processed batch is SUCCEEDED in its bound window, whatever its LastModified says
    assert states(lines) == EXPECTED and code == 3
    for batch in DIFFERING:
        line = lines[batch]
        assert {k: line[k] for k in ("lock_key", "batch_start_ts_iso", "batch_end_ts_iso")} == live_window(batch)
        assert line["window_adopted_from"] == own_window(batch) and line["bound_source"] == "inference"
    assert lines["mb-grid"]["batch_start_ts_iso"] == "2024-07-01T12:53:00Z"  # the previous grid window
    assert "window_adopted_from" not in lines["mb-same"] and lines["mb-same"]["lock_key"] == own_window("mb-same")["lock_key"]
    # the heal runs only the failed batch and the one that never arrived, as the execution units `mlbatch
    # extract` writes (their own LastModified window: the backfill adopts the bound one itself)
    healed = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert healed == [unit("mb-failed"), unit("mb-missing")]
    assert all(list(u) == list(UNIT_FIELDS) for u in healed)
    # no warning: nothing in the range is unbound
    assert summary["bound_units"] == len(LIVE) and summary["unbound_window_locks"] == {}
    assert "binding_warning" not in summary and "locks bind" not in err
    # 8 units: one BatchGetItem of the bindings, one of the window locks
    assert summary["extract"]["api_calls"]["BatchGetItem (ledger)"] == 2


def test_a_binding_to_a_window_without_a_lock_is_missing_and_healed_by_adoption(bound, cli, tmp_path):
    """A flow bound the batch and stopped before its acquire: the bound window is the one to heal."""
    bound.engine.dynamodb.delete_item(TableName=bound.table("LockTable"),
                                      Key={"lock_key": {"S": live_window("mb-grid")["lock_key"]}})
    manifest = tmp_path / "heal.jsonl"

    code, lines, _, _ = audit(cli, bound, "--manifest", str(manifest))

    assert lines["mb-grid"]["state"] == "MISSING" and lines["mb-grid"]["lock_key"] == live_window("mb-grid")["lock_key"]
    assert unit("mb-grid") in [json.loads(line) for line in manifest.read_text().splitlines()]


# --- the migration ------------------------------------------------------------------------------------------

def test_a_ledger_from_before_bindings_warns_is_bound_by_the_migration_then_audits_cleanly(pre_change, cli):
    sb = pre_change
    # GIVEN a ledger from before bindings: the audit cannot find the live windows and says why
    code, lines, summary, err = audit(cli, sb)
    assert {b for b, s in states(lines).items() if s == "MISSING"} == (DIFFERING - {"mb-secs"}) | {"mb-missing"}
    assert summary["unbound_window_locks"] == {"inference": 1, "backfill": 1}  # mb-same's, mb-secs's heal
    assert "mlbatch locks bind" in summary["binding_warning"] and "warning: 2 window locks" in err
    assert "mlbatch locks bind" in err.splitlines()[-2] + err.splitlines()[-1]

    # WHEN the operator looks first: the dry run writes nothing
    before = sb.locks()
    code, out, err = cli("locks", "bind", "--dry-run", "--table", sb.table("LockTable"))
    dry = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and sb.locks() == before
    assert dry[-1]["summary"] == {"window_locks": 10, "batches": 7, "bound": 0, "would_bind": 7, "skipped": 0,
                                  "unbindable": 2, "conflicts": 0, "duplicates": 1, "dry_run": True}
    assert "nothing was written" in err

    # AND binds
    code, out, err = cli("locks", "bind", "--table", sb.table("LockTable"))
    done = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and done[-1]["summary"]["bound"] == 7 and "7 batches bound" in err
    by_key = {line["lock_key"]: line for line in done[:-1]}
    assert {by_key[live_window(b)["lock_key"]]["outcome"] for b in LIVE} == {"bound"}
    # the double run: bound to the earlier (live) SUCCEEDED run, the heal's lock reported, kept
    assert by_key[own_window("mb-secs")["lock_key"]]["outcome"] == "duplicate"
    assert by_key[own_window("mb-secs")["lock_key"]]["bound_window_lock_key"] == live_window("mb-secs")["lock_key"]
    assert sb.lock(own_window("mb-secs")["lock_key"])["status"] == "SUCCEEDED"
    assert {line["outcome"] for line in done[:-1] if "binding_key" not in line} == {"unbindable"}
    binding = sb.lock(bkey("mb-grid"))
    assert binding == {"lock_key": bkey("mb-grid"), "item_type": "batch_binding", "feature_spec_version": FSV,
                       "mini_batch_s3_prefix": unit("mb-grid")["mini_batch_s3_prefix"], "project_name": PROJECT,
                       "mini_batch_id": "mb-grid", **{k: v for k, v in live_window("mb-grid").items() if k != "lock_key"},
                       "window_lock_key": live_window("mb-grid")["lock_key"], "bound_at": binding["bound_at"],
                       "bound_by": "mlbatch locks bind", "bound_source": "migration"}

    # THEN a second run binds nothing (idempotent), and the audit is clean: no warning, no live batch to heal
    again = [json.loads(line) for line in cli("locks", "bind", "--table", sb.table("LockTable"))[1].splitlines()]
    assert (again[-1]["summary"]["bound"], again[-1]["summary"]["skipped"]) == (0, 7)
    code, lines, summary, err = audit(cli, sb)
    assert states(lines) == EXPECTED
    assert lines["mb-grid"]["window_adopted_from"] == own_window("mb-grid")
    assert "binding_warning" not in summary and "locks bind" not in err


def test_the_migration_never_overwrites_a_binding_to_another_window(ingest, cli):
    sb = ingest
    sb.clear_locks()
    window_lock(sb, "mb-late", own_window("mb-late"), "backfill", "2024-07-02T09:00:00.000Z")
    bind(sb, "mb-late", live_window("mb-late"))  # a flow bound the batch elsewhere (its lock not here)
    before = sb.locks()

    code, out, _ = cli("locks", "bind", "--project", PROJECT, "--table", sb.table("LockTable"))

    line, summary = (json.loads(x) for x in out.splitlines())
    assert code == 0 and line["outcome"] == "conflict"
    assert line["bound_window_lock_key"] == live_window("mb-late")["lock_key"]
    assert (summary["summary"]["conflicts"], summary["summary"]["bound"]) == (1, 0)
    assert sb.locks() == before
    sb.clear_locks()


# --- the other readers ------------------------------------------------------------------------------------

def test_locks_list_and_show_tell_window_locks_from_bindings_and_link_them(bound, cli):
    table = bound.table("LockTable")
    code, out, _ = cli("locks", "list", "--kind", "binding", "--json", "--table", table)
    bindings = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and {b["lock_key"] for b in bindings} == {bkey(b) for b in LIVE}
    assert all(b["kind"] == "binding" for b in bindings)
    rows = {json.loads(line)["lock_key"]: json.loads(line)
            for line in cli("locks", "list", "--kind", "window", "--json", "--table", table)[1].splitlines()}
    grid = rows[live_window("mb-grid")["lock_key"]]
    assert (grid["kind"], grid["binding_key"], grid["bound"]) == ("window", bkey("mb-grid"), "yes")
    header = cli("locks", "list", "--table", table)[1].splitlines()[0].split()
    assert (header[0], header[-1]) == ("kind", "bound")
    # a listing filtered by status leaves the bindings out of the scan: their windows still read bound
    status = grid.get("status")
    filtered = {json.loads(line)["lock_key"]: json.loads(line) for line in
                cli("locks", "list", "--status", status, "--json", "--table", table)[1].splitlines()}
    assert filtered[grid["lock_key"]]["bound"] == "yes"
    assert all(row["kind"] == "window" for row in filtered.values())

    shown_batch = json.loads(cli("locks", "show", bkey("mb-grid"), "--json", "--table", table)[1])
    assert shown_batch["kind"] == "binding" and shown_batch["window_lock"]["lock_key"] == live_window("mb-grid")["lock_key"]
    shown_lock = json.loads(cli("locks", "show", live_window("mb-grid")["lock_key"], "--json", "--table", table)[1])
    assert shown_lock["binding"]["lock_key"] == bkey("mb-grid") and shown_lock["bound_here"] is True

    code, _, err = cli("locks", "reset", bkey("mb-grid"), "--reason", "r", "--table", table)
    assert code == 1 and "is a batch binding, not a window lock" in err


def test_extract_dry_run_names_the_units_that_will_adopt_a_bound_window(bound, cli):
    code, out, err = cli("extract", "--bucket", BUCKET, "--from", DAY, "--to", DAY, "--quiet", "--project", PROJECT,
                         "--defaults-table", bound.table("ProjectDefaultsTable"), "--dry-run",
                         "--lock-table", bound.table("LockTable"))

    (row,) = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and (row["units"], row["already_succeeded"]) == (8, len(LIVE) - 1)
    adopting = {a["mini_batch_id"]: a for a in row["will_adopt"]}
    assert set(adopting) == DIFFERING
    assert adopting["mb-grid"]["lock_key"] == live_window("mb-grid")["lock_key"]
    assert adopting["mb-grid"]["window_adopted_from"] == own_window("mb-grid")
    assert json.loads(err.strip().splitlines()[-1])["summary"]["will_adopt"] == len(DIFFERING)


def test_backfill_show_names_the_units_that_adopted_a_bound_window(bound, cli):
    runs = bound.table("BackfillRunsTable")
    units = [unit(b) for b in ("mb-grid", "mb-missing", "mb-same")]
    bound.engine.dynamodb.put_item(TableName=runs, Item={
        "run_id": {"S": "bind-run-1"}, "entry": {"S": "run"}, "units": {"N": "3"}, "started": {"N": "1"},
        "suppressed": {"N": "2"}, "input": {"S": json.dumps({"units": units})}, "closed_at": {"S": "2024-07-02T10:00:00Z"}})

    code, out, err = cli("backfill", "show", "bind-run-1", "--json", "--table", runs,
                         "--lock-table", bound.table("LockTable"))

    shown = json.loads(out)
    assert code == 0 and [(a["line"], a["mini_batch_id"]) for a in shown["units_adopting"]] == [(0, "mb-grid")]
    assert shown["units_adopting"][0]["window_adopted_from"] == own_window("mb-grid")
    assert "1 unit adopted the window their batch is bound to" in err


def test_locks_show_of_a_batch_folder_names_its_binding_and_window_lock(bound, cli):
    table = bound.table("LockTable")
    prefix = unit("mb-grid")["mini_batch_s3_prefix"]

    code, out, _ = cli("locks", "show", prefix.rstrip("/"), "--json", "--table", table)

    (shown,) = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and shown["lock_key"] == bkey("mb-grid")
    assert shown["window_lock"]["lock_key"] == live_window("mb-grid")["lock_key"]
    code, _, err = cli("locks", "show", f"s3://{BUCKET}/nowhere/", "--table", table)
    assert code == 1 and "no binding and no window lock names the batch folder" in err


def test_the_migration_keeps_a_binding_a_flow_wrote_between_its_scan_and_its_write(ingest):
    from mlbatch.binding import apply_bind, plan_bind
    sb, table = ingest, ingest.table("LockTable")
    sb.clear_locks()
    window_lock(sb, "mb-late", own_window("mb-late"), "backfill", "2024-07-02T09:00:00.000Z")
    plan = plan_bind(table, sb.engine.dynamodb)
    bind(sb, "mb-late", live_window("mb-late"))  # a live event binds the batch meanwhile

    apply_bind(plan, table, sb.engine.dynamodb)

    (line,) = plan.lines
    assert (line["outcome"], line["bound_window_lock_key"]) == ("conflict", live_window("mb-late")["lock_key"])
    assert sb.lock(bkey("mb-late"))["bound_source"] == "inference"  # the flow's binding, untouched
    assert plan.summary(dry_run=False)["conflicts"] == 1
    sb.clear_locks()
