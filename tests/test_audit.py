"""`mlbatch audit` on the embedded engine: S3 folders joined with the lock ledger, the heal."""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess

import boto3
import pytest

from mlbatch.audit import classify, lock_key, run_audit
from mlbatch.cli import main
from mlbatch.extract import UNIT_FIELDS, ExtractError, Extractor
from mlbatch.sandbox import load_event

BUCKET = "audit-ingest"
PROJECT, FSV = "audit-proj", "fs-a1"
UTC = dt.timezone.utc
APRIL_1, APRIL_2, APRIL_5 = dt.date(2024, 4, 1), dt.date(2024, 4, 2), dt.date(2024, 4, 5)


def at(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s).replace(tzinfo=UTC)


# mini_batch_id -> (project, day folder, representative LastModified). April 1 holds only windows that
# are done or running; April 2 one folder per other state; April 5 a folder restored from a copy.
FOLDERS = {
    "mb-ok": (PROJECT, "2024/04/01", at("2024-04-01T10:10:00")),
    "mb-run": (PROJECT, "2024/04/01", at("2024-04-01T11:10:00")),
    "mb-stuck-live": (PROJECT, "2024/04/02", at("2024-04-02T01:10:00")),
    "mb-stuck-dead": (PROJECT, "2024/04/02", at("2024-04-02T02:10:00")),
    "mb-stuck-gone": (PROJECT, "2024/04/02", at("2024-04-02T03:10:00")),
    "mb-stuck-blind": (PROJECT, "2024/04/02", at("2024-04-02T04:10:00")),
    "mb-failed": (PROJECT, "2024/04/02", at("2024-04-02T05:10:00")),
    "mb-poisoned": (PROJECT, "2024/04/02", at("2024-04-02T06:10:00")),
    "mb-missing": (PROJECT, "2024/04/02", at("2024-04-02T07:10:00")),
    "mb-collide": (PROJECT, "2024/04/02", at("2024-04-02T08:10:00")),
    "mb-foreign": (PROJECT, "2024/04/02", at("2024-04-02T09:10:00")),
    "mb-ghost": ("ghost-proj", "2024/04/02", at("2024-04-02T10:10:00")),
    "mb-copied": (PROJECT, "2024/04/05", at("2025-01-15T12:00:00")),
}
EXPECTED = {"mb-ok": "SUCCEEDED", "mb-run": "IN_PROGRESS", "mb-stuck-live": "STUCK", "mb-stuck-dead": "STUCK",
            "mb-stuck-gone": "STUCK", "mb-stuck-blind": "STUCK", "mb-failed": "FAILED", "mb-poisoned": "POISONED",
            "mb-missing": "MISSING", "mb-collide": "COLLISION", "mb-foreign": "UNKNOWN_STATUS",
            "mb-ghost": "UNKNOWN_PROJECT"}
HEALABLE = {"mb-stuck-dead", "mb-stuck-gone", "mb-failed", "mb-missing"}


def unit(batch: str) -> dict:
    """The execution unit `mlbatch extract` writes for a folder of FOLDERS."""
    from mlbatch.window import window_at
    project, day, when = FOLDERS[batch]
    start, end = window_at(when)
    return {"project_name": project, "org1": "acme", "org2": "netsec", "mini_batch_id": batch,
            "mini_batch_s3_prefix": f"s3://{BUCKET}/acme/netsec/{project}/{day}/{batch}/", "feature_spec_version": FSV,
            "batch_start_ts_iso": start, "batch_end_ts_iso": end, "source": "backfill",
            "representative_key": f"acme/netsec/{project}/{day}/{batch}/part-0.json.gz",
            "representative_last_modified": end}


def key(batch: str) -> str:
    return lock_key(unit(batch))


def ago(**kw) -> str:
    return (dt.datetime.now(UTC) - dt.timedelta(**kw)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture(scope="module")
def ingest(sandbox):
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    for batch, (project, day, when) in FOLDERS.items():
        sandbox.engine.put_object_at(BUCKET, f"acme/netsec/{project}/{day}/{batch}/part-0.json.gz", when)
    sandbox.put_defaults({**load_event("project_defaults"), "project_name": PROJECT, "feature_spec_version": FSV})
    # pipeline executions the stuck locks name: one still running (a long Wait), one that ended
    long = sandbox.engine.create_machine("audit-long-pipeline", {
        "StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 3600, "End": True}}})
    running = sandbox.engine.start(long, {})
    ended = sandbox.engine.run(sandbox.engine.create_machine("audit-short-pipeline", {
        "StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}}), {}).arn
    gone = long.replace(":stateMachine:", ":execution:") + ":never-started"
    return {"sb": sandbox, "running": running, "ended": ended, "gone": gone}


@pytest.fixture
def ledger(ingest):
    """The lock table holding one lock per state (function scope: a heal changes it)."""
    sb = ingest["sb"]
    sb.clear_locks()

    def lock(batch, **fields):
        u = unit(batch)
        item = {"lock_key": key(batch), **{f: u[f] for f in ("project_name", "feature_spec_version",
                                                            "batch_start_ts_iso", "batch_end_ts_iso", "mini_batch_id",
                                                            "mini_batch_s3_prefix", "source")},
                "attempts": 1, "acquired_at": ago(hours=3), "updated_at": ago(hours=3), **fields}
        sb.set_lock(item)

    lock("mb-ok", status="SUCCEEDED", pipeline_execution_arn=ingest["ended"])
    lock("mb-run", status="IN_PROGRESS", updated_at=ago(minutes=5), pipeline_execution_arn=ingest["running"])
    lock("mb-stuck-live", status="IN_PROGRESS", pipeline_execution_arn=ingest["running"])
    lock("mb-stuck-dead", status="IN_PROGRESS", pipeline_execution_arn=ingest["ended"])
    lock("mb-stuck-gone", status="IN_PROGRESS", pipeline_execution_arn=ingest["gone"])
    lock("mb-failed", status="FAILED", attempts=2, error="Pipeline.BuildFailed", cause="exit 1")
    lock("mb-poisoned", status="FAILED", attempts=3, error="Pipeline.BuildFailed", cause="exit 1")
    lock("mb-collide", status="SUCCEEDED", mini_batch_id="mb-other")
    # written by another orchestrator: a bare key; an IN_PROGRESS lock with no time and no pipeline
    sb.set_lock({"lock_key": key("mb-foreign")})
    sb.set_lock({"lock_key": key("mb-stuck-blind"), "status": "IN_PROGRESS"})
    yield ingest
    sb.clear_locks()


def audit(ingest, first=APRIL_1, last=APRIL_2, **kw):
    sb = ingest["sb"]
    return run_audit(BUCKET, first, last, lock_table=sb.table("LockTable"),
                     defaults_table=sb.table("ProjectDefaultsTable"), workers=2, **kw)


def by_batch(lines):
    return {line["mini_batch_id"]: line for line in lines}


def test_audit_reports_every_state_and_changes_nothing(ledger):
    before = ledger["sb"].locks()

    result = audit(ledger)

    lines = by_batch(result.lines)
    assert {b: line["state"] for b, line in lines.items()} == EXPECTED
    assert result.exit_code == 3
    # each line is the unit plus what the ledger says
    assert {k: lines["mb-missing"][k] for k in UNIT_FIELDS} == unit("mb-missing")
    assert (lines["mb-failed"]["attempts"], lines["mb-failed"]["error"]) == (2, "Pipeline.BuildFailed")
    assert lines["mb-poisoned"]["attempts"] == 3
    assert lines["mb-run"]["pipeline_execution_arn"] == ledger["running"]
    assert lines["mb-collide"]["held_by_mini_batch_id"] == "mb-other"
    assert [lines[b]["pipeline_status"] for b in ("mb-stuck-live", "mb-stuck-dead", "mb-stuck-gone", "mb-stuck-blind")
            ] == ["RUNNING", "SUCCEEDED", "NOT_FOUND", "UNKNOWN"]
    assert "status" not in lines["mb-foreign"] and "lock_key" not in lines["mb-ghost"]
    assert "feature_spec_version" not in lines["mb-ghost"]
    assert {b for b, line in lines.items() if line["healable"]} == HEALABLE
    # the summary: per project and day, and totals
    summary = result.summary
    assert summary["states"]["STUCK"] == 4 and summary["gaps"] == 10 and summary["healable"] == 4
    assert {"project_name": PROJECT, "day": "2024-04-01", "SUCCEEDED": 1, "IN_PROGRESS": 1} in summary["by_project_day"]
    assert {"project_name": "ghost-proj", "day": "2024-04-02", "UNKNOWN_PROJECT": 1} in summary["by_project_day"]
    # without a manifest it is a report: no lock was written
    assert ledger["sb"].locks() == before


def test_audit_heal_releases_ended_stuck_locks_and_writes_exactly_the_healable_units(ledger):
    sb = ledger["sb"]
    live_before = sb.lock(key("mb-stuck-live"))
    manifest = io.StringIO()

    result = audit(ledger, manifest=manifest)

    healed = [json.loads(line) for line in manifest.getvalue().splitlines()]
    # exactly the execution units `mlbatch extract` writes, for exactly the healable folders
    assert sorted(healed, key=lambda u: u["mini_batch_id"]) == [unit(b) for b in sorted(HEALABLE)]
    for batch in ("mb-stuck-dead", "mb-stuck-gone"):
        lock = sb.lock(key(batch))
        assert (lock["status"], lock["error"]) == ("FAILED", "Audit.Stuck")
        assert lock["pipeline_execution_arn"] in lock["cause"] and lock["mini_batch_id"] == batch  # item kept
        assert lock["updated_at"] > ago(minutes=1)
    assert "ended SUCCEEDED" in sb.lock(key("mb-stuck-dead"))["cause"]
    assert "does not exist" in sb.lock(key("mb-stuck-gone"))["cause"]
    # a running pipeline's lock, a poisoned or colliding window, an unknown status: never touched
    assert sb.lock(key("mb-stuck-live")) == live_before
    assert sb.lock(key("mb-poisoned"))["status"] == "FAILED" and sb.lock(key("mb-poisoned"))["error"] != "Audit.Stuck"
    assert sb.lock(key("mb-stuck-blind")) == {"lock_key": key("mb-stuck-blind"), "status": "IN_PROGRESS"}
    assert result.summary["stuck_locks_released"] == 2 and result.summary["manifest_units"] == 4
    assert by_batch(result.lines)["mb-stuck-dead"]["lock_released"] is True

    again = by_batch(audit(ledger).lines)  # the released locks are now plain FAILED windows
    assert (again["mb-stuck-dead"]["state"], again["mb-stuck-dead"]["error"]) == ("FAILED", "Audit.Stuck")


def test_audit_dry_run_writes_nothing(ledger):
    before, manifest = ledger["sb"].locks(), io.StringIO()

    result = audit(ledger, manifest=manifest, dry_run=True)

    assert manifest.getvalue() == "" and ledger["sb"].locks() == before
    assert result.summary["healable"] == 4 and result.summary["manifest_units"] == 0


def test_audit_a_lost_release_race_is_reported_not_healed(ledger):
    """Between the audit's read and its release, a new run re-acquires the window: the
    owner-checked write fails and the lock is left to its new owner."""
    sb = ledger["sb"]
    real = boto3.client("dynamodb", region_name="us-east-1")

    class Racing:
        def __getattr__(self, name):
            return getattr(real, name)

        def update_item(self, **kw):
            if kw["Key"]["lock_key"]["S"] == key("mb-stuck-dead"):
                sb.set_lock({**sb.lock(key("mb-stuck-dead")), "pipeline_execution_arn": "arn:...:new-run",
                             "updated_at": ago(seconds=1)})
            return real.update_item(**kw)

    manifest = io.StringIO()
    result = audit(ledger, manifest=manifest, dynamodb=Racing())

    line = by_batch(result.lines)["mb-stuck-dead"]
    assert line["lock_released"] is False and "left alone" in line["heal_note"]
    assert sb.lock(key("mb-stuck-dead"))["status"] == "IN_PROGRESS"  # the new run's lock, untouched
    assert "mb-stuck-dead" not in manifest.getvalue() and "mb-stuck-gone" in manifest.getvalue()
    assert result.summary["stuck_release_races"] == 1


def test_audit_reads_the_ledger_in_batches_of_100_consistent_keys(ingest):
    """250 folders: 2 x ceil(250/100) = 6 BatchGetItem calls (the bindings, then the window locks),
    consistent reads, no GetItem."""
    sb = ingest["sb"]
    for i in range(250):
        sb.engine.put_object_at(BUCKET, f"acme/bulk/{PROJECT}/2024/05/01/mb-{i:03d}/part-0.json.gz",
                                dt.datetime(2024, 5, 1, 0, 1) + dt.timedelta(minutes=5 * i))
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    calls = []
    ddb.meta.events.register("before-parameter-build.dynamodb.*",
                             lambda model, params, **kw: calls.append((model.name, params)))

    result = audit(ingest, dt.date(2024, 5, 1), dt.date(2024, 5, 1), prefix="acme/bulk", dynamodb=ddb)

    assert result.summary["states"] == {"MISSING": 250}
    ledger_calls = [p for name, p in calls if name == "BatchGetItem" and sb.table("LockTable") in p["RequestItems"]]
    assert len(ledger_calls) == 6
    assert all(p["RequestItems"][sb.table("LockTable")]["ConsistentRead"] for p in ledger_calls)
    assert sorted(len(p["RequestItems"][sb.table("LockTable")]["Keys"]) for p in ledger_calls) == [50, 50, 100, 100,
                                                                                                   100, 100]
    assert result.summary["extract"]["api_calls"]["BatchGetItem (ledger)"] == 6
    assert not [name for name, _ in calls if name == "GetItem"]


def test_audit_flags_a_copied_folder_and_strict_refuses_it(ledger):
    manifest = io.StringIO()
    result = audit(ledger, APRIL_5, APRIL_5, manifest=manifest)
    (line,) = result.lines
    assert (line["state"], line["timestamp_suspect"]) == ("MISSING", True)
    assert json.loads(manifest.getvalue())["timestamp_suspect"] is True  # the flag travels with the unit
    assert result.summary["timestamp_suspect"] == 1

    with pytest.raises(ExtractError, match="1 units have a representative LastModified outside"):
        audit(ledger, APRIL_5, APRIL_5, manifest=io.StringIO(), strict=True)


def test_classify_never_crashes_on_a_partial_lock():
    now = dt.datetime(2024, 4, 2, 12, tzinfo=UTC)
    u = unit("mb-failed")
    stuck_after = dt.timedelta(minutes=90)
    assert classify(u, {"lock_key": "k", "status": "FAILED"}, now, stuck_after) == "FAILED"  # no attempts: 0
    assert classify(u, {"lock_key": "k", "status": "FAILED", "attempts": "many"}, now, stuck_after) == "FAILED"
    assert classify(u, {"lock_key": "k", "status": "IN_PROGRESS", "updated_at": "yesterday"}, now, stuck_after) == "STUCK"
    assert classify(u, {"lock_key": "k", "status": "IN_PROGRESS", "updated_at": "2024-04-02T11:00:00Z"},
                    now, stuck_after) == "IN_PROGRESS"
    assert classify(u, {"lock_key": "k", "status": "IN_PROGRESS"}, now, stuck_after) == "STUCK"
    assert classify(u, {"lock_key": "k", "status": "IN_PROGRESS", "updated_at": "2024-04-02T10:29:59.999Z"},
                    now, stuck_after) == "STUCK"
    assert classify(u, {"lock_key": "k", "status": "DONE"}, now, stuck_after) == "UNKNOWN_STATUS"
    assert classify(u, {"lock_key": "k", "status": "SUCCEEDED", "mini_batch_id": 7}, now, stuck_after) == "SUCCEEDED"


# --- the command ------------------------------------------------------------------------------------

def cli(ingest, *args, first="2024-04-01", last="2024-04-02"):
    sb = ingest["sb"]
    return main(["audit", "--bucket", BUCKET, "--from", first, "--to", last, "--quiet", "--workers", "2",
                 "--lock-table", sb.table("LockTable"), "--defaults-table", sb.table("ProjectDefaultsTable"), *args])


def test_audit_cli_exit_0_when_every_unit_is_done_or_running(ledger, capsys):
    code = cli(ledger, "--json", last="2024-04-01")

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [json.loads(line)["state"] for line in out[:-1]] == ["SUCCEEDED", "IN_PROGRESS"]
    assert json.loads(out[-1])["summary"]["states"] == {"SUCCEEDED": 1, "IN_PROGRESS": 1}  # after the lines


def test_audit_cli_exit_3_on_gaps_with_a_table_on_stderr(ledger, capsys):
    code = cli(ledger)

    captured = capsys.readouterr()
    assert code == 3
    assert len(captured.out.splitlines()) == len(EXPECTED)
    table = captured.err.splitlines()
    assert table[0].split() == ["project", "day", *[s for s in ("SUCCEEDED", "IN_PROGRESS", "STUCK", "FAILED",
                                                               "POISONED", "MISSING", "COLLISION", "UNKNOWN_STATUS",
                                                               "UNKNOWN_PROJECT")]]
    assert next(r for r in table if r.startswith("TOTAL")).split() == ["TOTAL", "1", "1", "4", "1", "1", "1", "1", "1",
                                                                       "1"]
    assert "4 units can be healed: add --manifest" in captured.err


def test_audit_cli_heals_into_an_s3_manifest_and_names_the_backfill_input(ledger, capsys):
    sb = ledger["sb"]
    bucket = sb.deployment.buckets["ArtifactsBucket"]

    code = cli(ledger, "--manifest", f"s3://{bucket}/backfill/heal.jsonl")

    assert code == 3  # the gaps were there when the audit ran
    body = sb.engine.client("s3").get_object(Bucket=bucket, Key="backfill/heal.jsonl")["Body"].read().decode()
    assert sorted(json.loads(line)["mini_batch_id"] for line in body.splitlines()) == sorted(HEALABLE)
    err = capsys.readouterr().err
    assert f'{{"manifest": {{"bucket": "{bucket}", "key": "backfill/heal.jsonl"}}}}' in err


@pytest.mark.parametrize("backfill_arn", ["arn:aws:states:us-east-1:123456789012:stateMachine:mlbatch-backfill", None])
def test_audit_cli_heal_prints_the_backfill_start_as_a_command_that_runs_as_pasted(ledger, capsys, monkeypatch,
                                                                                   backfill_arn):
    # GIVEN an operator shell with (or without) the stack's backfill ARN exported
    if backfill_arn:
        monkeypatch.setenv("MLBATCH_BACKFILL_ARN", backfill_arn)
    else:
        monkeypatch.delenv("MLBATCH_BACKFILL_ARN", raising=False)
    bucket = ledger["sb"].deployment.buckets["ArtifactsBucket"]
    # WHEN the audit heals into an S3 manifest
    cli(ledger, "--manifest", f"s3://{bucket}/backfill/heal.jsonl")
    line = next(x for x in capsys.readouterr().err.splitlines() if "heal: aws stepfunctions" in x)
    command = line.split("heal: ", 1)[1]
    # AND that command is pasted into a shell (aws replaced by a printer of its arguments)
    env = {"PATH": os.environ["PATH"], **({"MLBATCH_BACKFILL_ARN": backfill_arn} if backfill_arn else {})}
    shell = subprocess.run(["bash", "-c", "printf '%s\\n' " + command.removeprefix("aws ")], text=True,
                           capture_output=True, env=env, timeout=30)
    # THEN it starts the backfill on that manifest, or the shell names the missing output in one line
    if backfill_arn:
        args = shell.stdout.splitlines()
        assert args[:2] == ["stepfunctions", "start-execution"]
        assert args[args.index("--state-machine-arn") + 1] == backfill_arn
        manifest = {"bucket": bucket, "key": "backfill/heal.jsonl"}
        assert json.loads(args[args.index("--input") + 1]) == {"manifest": manifest}
    else:
        assert shell.returncode != 0 and "BackfillStateMachineArn" in shell.stderr
        assert len(shell.stderr.splitlines()) == 1


def test_audit_cli_dry_run_says_so_and_writes_no_manifest(ledger, capsys, tmp_path):
    before = ledger["sb"].locks()
    code = cli(ledger, "--manifest", str(tmp_path / "heal.jsonl"), "--dry-run")
    assert code == 3 and list(tmp_path.iterdir()) == [] and ledger["sb"].locks() == before
    assert "dry run, nothing written: 4 units would be healed" in capsys.readouterr().err


def test_audit_cli_strict_exit_1_and_no_manifest(ledger, capsys, tmp_path):
    code = cli(ledger, "--manifest", str(tmp_path / "heal.jsonl"), "--strict", first="2024-04-05", last="2024-04-05")
    err = capsys.readouterr().err
    assert code == 1 and "refused under --strict" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--from", "2024-04-02", "--to", "2024-04-01"], "--from 2024-04-02 is after --to 2024-04-01"),
    (["--from", "2024-04-31", "--to", "2024-05-01"], "YYYY-MM-DD"),
])
def test_audit_cli_usage_errors_exit_2(ingest, capsys, args, message):
    code = main(["audit", "--bucket", BUCKET, "--lock-table", "t", "--defaults-table", "d", *args])
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--stuck-after", "0"], ["--max-attempts", "0"], ["--workers", "-1"]])
def test_audit_cli_rejects_non_positive_numbers(ingest, capsys, flag):
    with pytest.raises(SystemExit) as exc:
        cli(ingest, *flag)
    assert exc.value.code == 2 and flag[0] in capsys.readouterr().err


def test_audit_cli_needs_the_lock_table(ingest, capsys, monkeypatch):
    monkeypatch.delenv("MLBATCH_LOCK_TABLE", raising=False)
    code = main(["audit", "--bucket", BUCKET, "--from", "2024-04-01", "--to", "2024-04-01", "--defaults-table", "d"])
    assert code == 2 and "--lock-table or MLBATCH_LOCK_TABLE" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (["--bucket", "no-such-bucket"], "bucket 'no-such-bucket' does not exist"),
    (["--lock-table", "no-such-locks"], "BatchGetItem on table 'no-such-locks' failed"),
    (["--manifest", "s3://no-such-artifacts/heal.jsonl"], "bucket 'no-such-artifacts' does not exist"),
])
def test_audit_cli_errors_exit_1_with_a_message(ledger, capsys, change, message):
    calls = []
    session = boto3._get_default_session()
    handler = lambda model, **kw: calls.append(model.name)  # noqa: E731
    session.events.register("before-call.s3.ListObjectsV2", handler)
    try:
        code = cli(ledger, *change)
    finally:
        session.events.unregister("before-call.s3.ListObjectsV2", handler)
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err
    if change[0] == "--manifest":
        assert calls == []  # an unusable manifest target fails before any listing


def test_audit_lists_folders_exactly_as_extract_does(ingest):
    """Same listing code: the audit's units are the extractor's units, plus unknown projects."""
    sb = ingest["sb"]
    ex = Extractor(BUCKET, sb.table("ProjectDefaultsTable"), workers=2)
    extracted = list(ex.units(APRIL_1, APRIL_2))
    audited = audit(ingest).lines
    assert [{k: line[k] for k in UNIT_FIELDS} for line in audited if line["state"] != "UNKNOWN_PROJECT"] == extracted
    assert ex.report.api_calls["ListObjectsV2"] == audit(ingest).summary["extract"]["api_calls"]["ListObjectsV2"]


# --- the heal, through the backfill ------------------------------------------------------------------

def test_a_heal_through_the_backfill_leaves_no_gap(live):
    # GIVEN a day of batches in the ingestion bucket: one done, one never run, one failed, one stuck
    # behind a pipeline execution that has ended
    from mlbatch.window import window_at
    ingest, project = live.template.parameters["IngestionBucketName"], "heal-proj"
    live.put_defaults({**load_event("project_defaults"), "project_name": project, "feature_spec_version": "fs-h"})
    s3 = boto3.client("s3", region_name="us-east-1")
    states = {"mb-done": "SUCCEEDED", "mb-never": None, "mb-failed": "FAILED", "mb-stuck": "IN_PROGRESS"}
    ended = live.engine.run(live.pipeline_arn, {"not": "a pipeline input"})  # ends FAILED at once
    for hour, (batch, status) in enumerate(states.items(), start=1):
        key = f"acme/netsec/{project}/2024/06/01/{batch}/part-0.json.gz"
        when = dt.datetime(2024, 6, 1, hour, 10)
        live.engine.put_object_at(ingest, key, when)
        if status:
            start, end = window_at(when.replace(tzinfo=UTC))
            live.set_lock({"lock_key": f"{project}#fs-h#{start}#{end}", "status": status, "mini_batch_id": batch,
                           "attempts": 1, "updated_at": ago(hours=3), "pipeline_execution_arn": ended.arn})
    audit = dict(bucket=ingest, first=dt.date(2024, 6, 1), last=dt.date(2024, 6, 1), projects=[project],
                 lock_table=live.table("LockTable"), defaults_table=live.table("ProjectDefaultsTable"))

    # WHEN the audit heals into a manifest and the backfill runs it
    manifest = io.StringIO()
    healed = run_audit(**audit, manifest=manifest)
    artifacts = live.deployment.buckets["ArtifactsBucket"]
    s3.put_object(Bucket=artifacts, Key="backfill/heal/units.jsonl", Body=manifest.getvalue())
    backfill = live.engine.run(live.backfill_variant("HappyPath"),
                               {"manifest": {"bucket": artifacts, "key": "backfill/heal/units.jsonl"}}, timeout=120)

    # THEN the three gaps ran, and a second audit finds none
    assert healed.exit_code == 3
    assert {line["mini_batch_id"]: line["state"] for line in healed.lines} == {
        "mb-done": "SUCCEEDED", "mb-never": "MISSING", "mb-failed": "FAILED", "mb-stuck": "STUCK"}
    assert sorted(json.loads(u)["mini_batch_id"] for u in manifest.getvalue().splitlines()) == [
        "mb-failed", "mb-never", "mb-stuck"]
    assert (backfill.output["units"], backfill.output["started"]) == (3, 3)
    again = run_audit(**audit)
    assert again.exit_code == 0
    assert {line["state"] for line in again.lines} == {"SUCCEEDED"}


# --- failure paths: a running pipeline, throttling, a heal that stops -----------------------------

def test_audit_never_releases_a_stuck_lock_whose_pipeline_is_pending_redrive(ledger):
    # GIVEN a stuck lock whose pipeline execution failed and awaits a redrive (it will finalize the lock)
    sb = ledger["sb"]
    real = sb.engine.sfn

    class Redriving:
        def describe_execution(self, executionArn):
            if executionArn == ledger["ended"]:
                return {**real.describe_execution(executionArn=executionArn), "status": "PENDING_REDRIVE"}
            return real.describe_execution(executionArn=executionArn)

    before = sb.lock(key("mb-stuck-dead"))
    manifest = io.StringIO()

    # WHEN the audit heals
    result = audit(ledger, manifest=manifest, sfn=Redriving())

    # THEN that lock is reported, left alone and kept out of the manifest
    line = by_batch(result.lines)["mb-stuck-dead"]
    assert (line["state"], line["pipeline_status"], line["healable"]) == ("STUCK", "PENDING_REDRIVE", False)
    assert "lock_released" not in line and sb.lock(key("mb-stuck-dead")) == before
    assert "mb-stuck-dead" not in manifest.getvalue() and "mb-stuck-gone" in manifest.getvalue()


def test_audit_heal_outlasts_throttling_with_the_default_retry_budget(ledger, throttle):
    # GIVEN DynamoDB throttling the audit's calls: the first 7 reads in a row (botocore's own budget is
    # 4 attempts for DynamoDB), then every other read, and 2 of every 3 writes
    throttle.on("BatchGetItem", lambda n: n < 6 or n % 2 == 0)
    throttle.on("UpdateItem", lambda n: n % 3 != 2)
    manifest = io.StringIO()

    # WHEN the audit heals, with its clients as every command makes them
    result = audit(ledger, manifest=manifest)

    # THEN it heals exactly as without throttling, after waiting with growing backoff
    assert {b: line["state"] for b, line in by_batch(result.lines).items()} == EXPECTED
    assert sorted(json.loads(u)["mini_batch_id"] for u in manifest.getvalue().splitlines()) == sorted(HEALABLE)
    assert result.summary["stuck_locks_released"] == 2
    # (two reads per 100 units: the bindings, then the window locks)
    assert throttle.throttled == {"BatchGetItem": 9, "UpdateItem": 4}
    assert len(throttle.waits) == 13 and max(throttle.waits[:7]) > 1  # 7 throttles in a row: waits grow towards 20 s


def test_audit_throttled_past_its_budget_fails_in_one_line_after_15_attempts(ledger, throttle, capsys):
    # GIVEN DynamoDB throttling every read
    throttle.on("BatchGetItem", lambda n: True)

    # WHEN the audit runs
    code = cli(ledger)

    # THEN it made the default 15 attempts and says what failed and how to raise the budget
    err = capsys.readouterr().err
    assert code == 1 and throttle.calls["BatchGetItem"] == 15
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "BatchGetItem on table" in err and "ProvisionedThroughputExceededException" in err
    assert "(reached max retries: 14)" in err and "--aws-max-attempts N (or AWS_MAX_ATTEMPTS)" in err


def test_audit_budget_is_set_with_aws_max_attempts_not_the_poison_limit(ledger, throttle, capsys):
    throttle.on("BatchGetItem", lambda n: True)

    code = cli(ledger, "--aws-max-attempts", "3", "--max-attempts", "5")

    assert code == 1 and throttle.calls["BatchGetItem"] == 3
    assert "(reached max retries: 2)" in capsys.readouterr().err


def test_audit_reads_unprocessed_keys_again_with_its_own_backoff(ledger, throttle):
    # GIVEN DynamoDB serving one key per BatchGetItem, returning the rest as UnprocessedKeys, 4 times
    throttle.unprocessed("BatchGetItem", lambda n: n < 4)

    # WHEN the audit reads the ledger
    result = audit(ledger)

    # THEN every lock is read, after three growing waits of batch_get's own (no SDK error, no SDK retry)
    assert {b: line["state"] for b, line in by_batch(result.lines).items()} == EXPECTED
    # the defaults read (one key); the bindings in 3 partial rounds and the rest; then the window locks
    assert throttle.calls["BatchGetItem"] == 6
    assert len(throttle.waits) == 3 and all(w <= 0.05 * 2 ** i for i, w in enumerate(throttle.waits))


def test_a_heal_stopped_by_a_failed_release_reports_it_and_the_next_heal_completes(ledger, throttle, capsys, tmp_path):
    # GIVEN DynamoDB serving the first release, then throttling every write
    sb = ledger["sb"]
    throttle.on("UpdateItem", lambda n: n >= 1)
    heal = tmp_path / "heal.jsonl"

    # WHEN the audit heals
    code = cli(ledger, "--manifest", str(heal))

    # THEN it fails, says on stderr which write failed and what it had done, lists on stdout the lock it
    # released, and publishes no manifest
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1
    assert f"the heal stopped: UpdateItem of lock '{key('mb-stuck-gone')}'" in err
    assert "ProvisionedThroughputExceededException" in err and "released 1 stuck lock " in err
    (line,) = [json.loads(x) for x in out.splitlines()]
    assert (line["mini_batch_id"], line["lock_released"], line["state"]) == ("mb-stuck-dead", True, "STUCK")
    assert not heal.exists()
    assert (sb.lock(key("mb-stuck-dead"))["status"], sb.lock(key("mb-stuck-gone"))["status"]) == ("FAILED", "IN_PROGRESS")
    assert throttle.calls["UpdateItem"] == 1 + 15

    # WHEN DynamoDB recovers and the audit heals again
    throttle.on("UpdateItem", lambda n: False)
    code = cli(ledger, "--manifest", str(heal))

    # THEN both windows are in the manifest: the one released before (now FAILED) and the other
    out = {json.loads(x)["mini_batch_id"]: json.loads(x) for x in capsys.readouterr().out.splitlines()}
    assert code == 3
    assert (out["mb-stuck-dead"]["state"], out["mb-stuck-dead"]["error"]) == ("FAILED", "Audit.Stuck")
    assert out["mb-stuck-gone"]["lock_released"] is True
    assert sorted(json.loads(u)["mini_batch_id"] for u in heal.read_text().splitlines()) == sorted(HEALABLE)
