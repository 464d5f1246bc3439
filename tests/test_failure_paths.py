"""Failure paths with faults injected where AWS injects them (docs/failure-paths.md).

DynamoDB Task states throw ProvisionedThroughputExceededException past their retries through
MockConfigFile test cases (tests/mocks/MockConfigFile.json); pipelines are stopped mid-run. Each
test asserts what the execution says (its error and cause), the ledger (per window, `attempts` =
the pipeline executions started for it) and the counts.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import time

import pytest

from mlbatch.audit import run_audit
from mlbatch.engine.harness import path
from mlbatch.items import from_item
from mlbatch.sandbox import load_event
from mlbatch.window import window_at

UTC = dt.timezone.utc
THROTTLED = "DynamoDB.ProvisionedThroughputExceededException"
OUTCOMES = ("started", "suppressed", "collided", "invalid", "failed", "poisoned")
#: far enough ahead that every IN_PROGRESS lock is older than the audit's --stuck-after
LATER = dt.datetime.now(UTC) + dt.timedelta(days=1)


# --- helpers ----------------------------------------------------------------------------------------

def folders(sb, project: str, day: dt.date, batches: list[str]) -> list[dict]:
    """Batch folders in the ingestion bucket (one per hour of `day`), and their execution units."""
    ingest = sb.template.parameters["IngestionBucketName"]
    sb.put_defaults({**load_event("project_defaults"), "project_name": project, "feature_spec_version": "fs-f"})
    units = []
    for hour, batch in enumerate(batches, start=1):
        folder = f"acme/netsec/{project}/{day:%Y/%m/%d}/{batch}/"
        when = dt.datetime(day.year, day.month, day.day, hour, 10)
        sb.engine.put_object_at(ingest, folder + "part-0.json.gz", when)
        start, end = window_at(when.replace(tzinfo=UTC))
        units.append({"project_name": project, "org1": "acme", "org2": "netsec", "mini_batch_id": batch,
                      "mini_batch_s3_prefix": f"s3://{ingest}/{folder}", "feature_spec_version": "fs-f",
                      "batch_start_ts_iso": start, "batch_end_ts_iso": end, "source": "backfill"})
    return units


def key(u: dict) -> str:
    return f"{u['project_name']}#{u['feature_spec_version']}#{u['batch_start_ts_iso']}#{u['batch_end_ts_iso']}"


def runs(sb, lock_key: str) -> int:
    """Pipeline executions started for a window (whatever their test case or outcome)."""
    n = 0
    for e in sb.engine.executions(sb.pipeline_arn):
        given = json.loads(sb.engine.sfn.describe_execution(executionArn=e["executionArn"])["input"] or "null")
        n += isinstance(given, dict) and given.get("lock_key") == lock_key
    return n


def assert_ledger_counts_runs(sb, units: list[dict]) -> None:
    """The invariant: per window, attempts = pipeline executions started (0 and no lock alike)."""
    for u in units:
        lock = sb.lock(key(u)) or {}
        assert lock.get("attempts", 0) == runs(sb, key(u)), (key(u), lock)


def audit(sb, project: str, day: dt.date, **kw):
    return run_audit(bucket=sb.template.parameters["IngestionBucketName"], first=day, last=day, projects=[project],
                     lock_table=sb.table("LockTable"), defaults_table=sb.table("ProjectDefaultsTable"), now=LATER, **kw)


def heal(sb, project: str, day: dt.date, max_attempts: int = 3):
    """`mlbatch audit --manifest` (at a time past --stuck-after), then the backfill runs the manifest."""
    manifest = io.StringIO()
    healed = audit(sb, project, day, manifest=manifest, max_attempts=max_attempts)
    artifacts = sb.deployment.buckets["ArtifactsBucket"]
    sb.engine.client("s3").put_object(Bucket=artifacts, Key=f"backfill/heal-{project}.jsonl", Body=manifest.getvalue())
    result = sb.engine.run(sb.backfill_variant("HappyPath"),
                           {"manifest": {"bucket": artifacts, "key": f"backfill/heal-{project}.jsonl"}}, timeout=180)
    assert result.status == "SUCCEEDED", result.cause
    return healed, result


def run_record(sb, run_id: str) -> dict:
    item = sb.engine.dynamodb.get_item(TableName=sb.table("BackfillRunsTable"), ConsistentRead=True,
                                       Key={"run_id": {"S": run_id}, "entry": {"S": "run"}}).get("Item")
    return from_item(item) if item else {}


def stop_when_running(sb, lock_key: str, state: str = "Mark the lock failed", deadline: float = 120.0) -> str:
    """Stop the pipeline execution running for a window once it has entered `state` (the engine does
    not stop an execution inside a Parallel state; a throttled write retries for seconds); its ARN."""
    began = time.monotonic()
    while time.monotonic() - began < deadline:
        for e in sb.engine.executions(sb.pipeline_arn):
            if e["status"] != "RUNNING":
                continue
            given = json.loads(sb.engine.sfn.describe_execution(executionArn=e["executionArn"])["input"])
            if given.get("lock_key") != lock_key:
                continue
            while state not in [s for s, t in path(sb.engine.history(e["executionArn"])) if t.endswith("Entered")]:
                time.sleep(0.01)
            while time.monotonic() - began < deadline:
                try:  # (the engine refuses a stop in the instant before the execution's worker is ready)
                    sb.engine.sfn.stop_execution(executionArn=e["executionArn"], error="Operator.Stopped",
                                                 cause="stopped mid-run by an operator")
                    return e["executionArn"]
                except Exception:
                    time.sleep(0.02)
        time.sleep(0.02)
    raise TimeoutError(f"no pipeline ran for {lock_key} within {deadline}s")


# --- the pipeline's and lock_release's own writes ---------------------------------------------------

def test_a_failed_build_whose_lock_write_is_throttled_says_the_lock_is_in_progress(live, event):
    # GIVEN a pipeline whose Delta Builder fails and whose "Mark the lock failed" is throttled past its retries
    live.use_intake("pipeline", "DeltaFailsAndTheLockWriteIsThrottled")
    earlier = runs(live, "traffic-anomaly#fs-2024-06#2024-02-29T23:53:00Z#2024-03-01T00:05:07.123Z")  # other tests'
    intake = live.intake(event)
    pipeline = live.engine.wait(intake.output["pipeline_execution_arn"], timeout=120)

    # THEN it fails with its own error, whose cause is true: the lock is IN_PROGRESS, and says what heals it
    assert (pipeline.status, pipeline.error) == ("FAILED", "Pipeline.LockUpdateFailed")
    for said in ("IN_PROGRESS", "lock_release", "mlbatch audit --manifest", "--stuck-after", THROTTLED,
                 "no parquet files under input"):
        assert said in pipeline.cause, said
    assert "The lock is FAILED" not in pipeline.cause
    lock_key = intake.output["lock_key"]
    assert live.lock(lock_key)["status"] == "IN_PROGRESS"

    # WHEN lock_release gets the pipeline's status-change event
    (release,) = live.emit_status_change(pipeline.arn)
    assert live.engine.wait(release).output["released"] is True

    # THEN the lock is FAILED, its one run counted
    lock = live.lock(lock_key)
    assert (lock["status"], lock["error"], lock["attempts"]) == ("FAILED", "Pipeline.FAILED", 1)
    assert runs(live, lock_key) - earlier == 1  # (the lock was new: other tests' runs are not on it)


def test_a_successful_build_whose_lock_write_is_throttled_names_its_outputs(live, event):
    live.use_intake("pipeline", "BuildersSucceedAndTheLockWriteIsThrottled")
    intake = live.intake(event)
    pipeline = live.engine.wait(intake.output["pipeline_execution_arn"], timeout=120)

    assert (pipeline.status, pipeline.error) == ("FAILED", "Pipeline.LockUpdateFailed")
    assert "Both builders succeeded" in pipeline.cause and "still IN_PROGRESS" in pipeline.cause
    assert THROTTLED in pipeline.cause and "/delta/" in pipeline.cause and "/pair_counts/" in pipeline.cause
    assert live.lock(intake.output["lock_key"])["status"] == "IN_PROGRESS"


def test_a_pipeline_whose_lock_check_is_throttled_builds_nothing_and_records_the_failure(live, event):
    # GIVEN a pipeline whose first read, the check that it holds the window lock, is throttled past its retries
    live.use_intake("pipeline", "LockCheckThrottled")

    # WHEN the intake starts it
    intake = live.intake(event)
    pipeline = live.engine.wait(intake.output["pipeline_execution_arn"], timeout=120)

    # THEN no builder ran, the lock it held is FAILED with the read's error, and the cause says so
    entered = [name for name, kind in path(live.engine.history(pipeline.arn)) if kind.endswith("Entered")]
    assert not any(name.startswith("Run the") for name in entered)
    assert (pipeline.status, pipeline.error) == ("FAILED", "Pipeline.BuildFailed")
    assert THROTTLED in pipeline.cause and "The lock is FAILED" in pipeline.cause
    lock = live.lock(intake.output["lock_key"])
    assert (lock["status"], lock["error"], lock["attempts"]) == ("FAILED", THROTTLED, 1)


def test_lock_release_whose_write_is_throttled_says_so_and_the_audit_heals_the_window(live):
    # GIVEN a batch folder, its live event, and a pipeline whose final lock write is throttled
    day = dt.date(2024, 7, 1)
    (u,) = folders(live, "release-proj", day, ["mb-r1"])
    live.use_intake("pipeline", "DeltaFailsAndTheLockWriteIsThrottled")
    intake = live.intake({"s3_key": u["mini_batch_s3_prefix"] + "part-0.json.gz", "timestamp": u["batch_end_ts_iso"]})
    assert intake.output["lock_key"] == key(u)
    pipeline = live.engine.wait(intake.output["pipeline_execution_arn"], timeout=120)
    assert pipeline.error == "Pipeline.LockUpdateFailed"

    # WHEN lock_release's own write is throttled past its retries too
    (release,) = live.emit_status_change(pipeline.arn, case="LockWriteThrottled")
    released = live.engine.wait(release)

    # THEN it fails with its own error naming the write's error and what heals the lock, left IN_PROGRESS
    assert (released.status, released.error) == ("FAILED", "LockRelease.LockUpdateFailed")
    for said in ("still IN_PROGRESS", key(u), THROTTLED, "mlbatch audit --manifest", "--stuck-after"):
        assert said in released.cause, said
    assert live.lock(key(u))["status"] == "IN_PROGRESS"

    # WHEN the audit heals (past --stuck-after) and the backfill runs its manifest
    healed, backfill = heal(live, "release-proj", day)

    # THEN the stuck window was released and ran again: SUCCEEDED, both runs counted
    assert [line["state"] for line in healed.lines] == ["STUCK"]
    assert (backfill.output["units"], backfill.output["started"]) == (1, 1)
    lock = live.lock(key(u))
    assert (lock["status"], lock["attempts"]) == ("SUCCEEDED", 2)
    assert_ledger_counts_runs(live, [u])


# --- the backfill: a lock whose pipeline started is never deleted -------------------------------------

def test_the_ledger_counts_every_pipeline_run_and_the_poison_limit_holds(live):
    # GIVEN three batch folders; every pipeline the backfill starts fails and cannot write its lock
    day = dt.date(2024, 7, 2)
    a, b, c = folders(live, "ledger-proj", day, ["mb-a", "mb-b", "mb-c"])
    throttled = live.backfill_variant("DeltaFailsAndTheLockWriteIsThrottled")

    # WHEN backfills with a limit of two attempts run a and b, then a, then a and b again
    first = live.engine.run(throttled, {"units": [a, b], "max_attempts": 2}, timeout=180)
    second = live.engine.run(throttled, {"units": [a], "max_attempts": 2}, timeout=180)
    third = live.engine.run(throttled, {"units": [a, b], "max_attempts": 2}, timeout=180)

    # THEN no lock of a pipeline that ran was deleted: each ended FAILED with the run's error, counted
    assert (first.output["failed"], second.output["failed"]) == (2, 1)
    assert (third.output["failed"], third.output["poisoned"]) == (1, 1)
    for u in (a, b):
        lock = live.lock(key(u))
        assert (lock["status"], lock["attempts"]) == ("FAILED", 2)
        assert "Pipeline.LockUpdateFailed" in lock["cause"] and "counts as an attempt" in lock["cause"]
    assert live.lock(key(c)) is None
    assert_ledger_counts_runs(live, [a, b, c])  # a ran twice under a limit of two, never three times

    # WHEN the audit heals with the same limit and the backfill runs its manifest
    healed, backfill = heal(live, "ledger-proj", day, max_attempts=2)

    # THEN only the gap ran; every window is SUCCEEDED or POISONED, and the ledger still counts runs
    assert {line["mini_batch_id"]: line["state"] for line in healed.lines} == {
        "mb-a": "POISONED", "mb-b": "POISONED", "mb-c": "MISSING"}
    assert (backfill.output["units"], backfill.output["started"]) == (1, 1)
    assert {line["state"] for line in audit(live, "ledger-proj", day, max_attempts=2).lines} == {"SUCCEEDED", "POISONED"}
    assert_ledger_counts_runs(live, [a, b, c])


@pytest.mark.parametrize("lock_release", [False, True], ids=["alone", "with-lock-release"])
def test_a_pipeline_stopped_mid_run_keeps_its_lock_failed_and_counted(live, lock_release):
    # GIVEN a backfill unit whose pipeline is stopped by an operator while it runs
    day = dt.date(2024, 7, 3 + lock_release)
    (u,) = folders(live, f"stopped-proj-{lock_release:d}", day, ["mb-s"])
    run = live.engine.start(live.backfill_variant("DeltaFailsAndTheLockWriteIsThrottled"), {"units": [u]})
    stopped = stop_when_running(live, key(u))
    assert live.engine.wait(stopped).status == "ABORTED"
    if lock_release:  # ...and its status-change event reaches lock_release (else it is lost)
        (release,) = live.emit_status_change(stopped)
        live.engine.wait(release)

    result = live.engine.wait(run, timeout=180)

    # THEN the unit is counted failed, its lock FAILED (not deleted) with the run counted
    assert (result.output["units"], result.output["failed"]) == (1, 1)
    lock = live.lock(key(u))
    assert (lock["status"], lock["attempts"], lock["pipeline_execution_arn"]) == ("FAILED", 1, stopped)
    assert lock["error"] in ("States.TaskFailed", "Pipeline.ABORTED")
    assert_ledger_counts_runs(live, [u])


def test_a_pipeline_that_never_started_leaves_no_attempt_counted(live, backfill_taken_name):
    # GIVEN a window FAILED once before, and an execution holding the name its next run will ask for
    u, run_name, backfill = backfill_taken_name
    live.set_lock({"lock_key": key(u), "status": "FAILED", "attempts": 1, "mini_batch_id": u["mini_batch_id"]})

    result = live.engine.run(backfill, {"units": [u]}, name=run_name, timeout=120)

    # THEN the start failed, the lock is FAILED again and its attempts are what they were
    assert result.output["failed"] == 1
    lock = live.lock(key(u))
    assert (lock["status"], lock["attempts"]) == ("FAILED", 1)
    assert lock["error"].startswith("StepFunctions.") and "no run was counted" in lock["cause"]


@pytest.fixture
def backfill_taken_name(live):
    """(unit, backfill execution name, backfill ARN) where the pipeline name the unit will ask for is taken."""
    import hashlib
    (u,) = folders(live, "taken-proj", dt.date(2024, 7, 6), ["mb-t"])
    backfill = live.backfill_variant("HappyPath")
    name = f"bf-{time.time_ns()}"
    run_arn = backfill.replace(":stateMachine:", ":execution:") + ":" + name
    start = u["batch_start_ts_iso"]
    taken = f"{start[:13]}{start[14:16]}-" + hashlib.md5(
        f"{u['project_name']}|{u['feature_spec_version']}|{u['batch_end_ts_iso']}|{run_arn}".encode()).hexdigest()
    live.engine.run(live.pipeline_arn + "#HappyPath", {"other": "input"}, name=taken)
    return u, name, backfill


# --- the backfill's bookkeeping ------------------------------------------------------------------------

def _metric(sb, name: str, machine: str) -> float | None:
    cw = sb.engine.client("cloudwatch")
    now = dt.datetime.now(UTC)
    points = cw.get_metric_statistics(
        Namespace="mlbatch", MetricName=name, Dimensions=[{"Name": "StateMachine", "Value": machine}],
        StartTime=now - dt.timedelta(hours=1), EndTime=now + dt.timedelta(minutes=5), Period=3600,
        Statistics=["Sum"])["Datapoints"]
    return sum(p["Sum"] for p in points) if points else None


def _own_backfill(sb, case: str = "HappyPath") -> tuple[str, str]:
    """A backfill machine of its own (its metrics are its own): (ARN, name)."""
    name = f"mlbatch-backfill-{time.time_ns()}"
    definition = sb.template.definition("BackfillStateMachine", {"PipelineStateMachineArn": f"{sb.pipeline_arn}#{case}"})
    return sb.engine.create_machine(name, definition), name


def test_run_record_writes_throttled_past_their_retries_lose_neither_the_run_nor_its_counts(live, cli, monkeypatch):
    # GIVEN a backfill whose "Open the run record" and "Close the run record" are throttled past their retries
    units = folders(live, "books-proj", dt.date(2024, 7, 7), ["mb-1", "mb-2"])
    units.append({**units[1], "org2": "elsewhere"})  # not a folder of its own: invalid

    result = live.engine.run(live.backfill_variant("HappyPath") + "#RunRecordWritesThrottled",
                             {"units": units}, timeout=180)

    # THEN the run succeeds with its counts, and names the writes it could not make
    assert result.status == "SUCCEEDED", result.cause
    out = result.output
    assert {k: out[k] for k in ("units", "started", "invalid", "uncounted")} == {
        "units": 3, "started": 2, "invalid": 1, "uncounted": 0}
    assert set(out["unwritten"]) == {"open_run_record", "close_run_record"}
    assert {w["Error"] for w in out["unwritten"].values()} == {THROTTLED}
    # ...the record holds the same counts, the units' own; `mlbatch backfill show` closes it
    record = run_record(live, out["run_id"])
    assert "closed_at" not in record and "opened_at" not in record
    assert {k: record.get(k, 0) for k in OUTCOMES} == {k: out[k] for k in OUTCOMES}
    monkeypatch.setenv("MLBATCH_RUNS_TABLE", live.table("BackfillRunsTable"))
    code, _, err = cli("backfill", "show", out["run_id"], "--dry-run")
    assert code == 0 and "would close" in err and "closed_at" not in run_record(live, out["run_id"])
    code, shown, err = cli("backfill", "show", out["run_id"], "--json")
    assert code == 0 and "closed it from the execution's output" in err
    shown = json.loads(shown)
    assert {k: shown.get(k, 0) for k in OUTCOMES + ("units", "uncounted")} == {
        k: out[k] for k in OUTCOMES + ("units", "uncounted")}
    closed = run_record(live, out["run_id"])
    assert (closed["units"], closed["uncounted"], closed["closed_by"]) == (3, 0, "mlbatch backfill show")
    assert cli("backfill", "show", out["run_id"])[2].count("closed it") == 0  # once only
    # ...and the failed writes are published for the alarm
    machine = live.backfill_variant("HappyPath").rsplit(":", 1)[-1]
    assert _metric(live, "BackfillBookkeepingWritesFailed", machine) >= 2


def test_a_run_record_neither_written_nor_read_leaves_the_counts_to_backfill_show(live, cli, monkeypatch):
    units = folders(live, "books2-proj", dt.date(2024, 7, 8), ["mb-1"])

    result = live.engine.run(live.backfill_variant("HappyPath") + "#RunRecordUnreachable", {"units": units},
                             timeout=180)

    assert result.status == "SUCCEEDED", result.cause
    out = result.output
    assert out["units"] == 1 and all(out[k] is None for k in OUTCOMES)  # unknown, not zero
    assert set(out["unwritten"]) == {"open_run_record", "close_run_record"}
    record = run_record(live, out["run_id"])
    assert record["started"] == 1 and record["execution_arn"] == result.arn  # the unit counted itself
    monkeypatch.setenv("MLBATCH_RUNS_TABLE", live.table("BackfillRunsTable"))
    code, shown, _ = cli("backfill", "show", out["run_id"], "--json")
    assert code == 0 and json.loads(shown)["started"] == 1


def test_the_published_metrics_equal_the_runs_counts(live):
    # GIVEN a backfill of its own meeting every outcome a unit can have
    units = folders(live, "metrics-proj", dt.date(2024, 7, 9), [f"mb-{i}" for i in range(6)])
    live.set_lock({"lock_key": key(units[1]), "status": "SUCCEEDED", "attempts": 1, "mini_batch_id": "mb-1",
                   "pipeline_execution_arn": "arn:done"})                                    # suppressed
    live.set_lock({"lock_key": key(units[2]), "status": "IN_PROGRESS", "attempts": 1, "mini_batch_id": "other"})  # collided
    live.set_lock({"lock_key": key(units[3]), "status": "FAILED", "attempts": 3, "mini_batch_id": "mb-3"})  # poisoned
    units[4] = {**units[4], "org1": "elsewhere"}                                              # invalid
    units[5] = {**units[5], "project_name": "no-such-project"}                                # failed
    arn, name = _own_backfill(live)

    result = live.engine.run(arn, {"units": units, "max_attempts": 3}, timeout=180)

    # THEN each metric the alarms read equals the run's own counts
    out = result.output
    assert {k: out[k] for k in OUTCOMES} == {"started": 1, "suppressed": 1, "collided": 1, "invalid": 1,
                                              "failed": 1, "poisoned": 1}
    assert _metric(live, "BackfillUnitsStarted", name) == out["started"]
    assert _metric(live, "BackfillUnitsNotRun", name) == out["failed"] + out["collided"] + out["invalid"] + out["uncounted"]
    assert _metric(live, "BackfillWindowsPoisoned", name) == out["poisoned"]
    assert _metric(live, "BackfillBookkeepingWritesFailed", name) == 0


def test_a_pipeline_still_running_when_the_wait_ends_keeps_its_lock():
    # (the engine cannot end a .sync wait before the pipeline ends: the routing is read from the ASL)
    from mlbatch.settings import ROOT
    backfill = json.loads((ROOT / "asl" / "backfill.asl.json").read_text())
    for name in ("Process the manifest", "Process the typed units"):
        states = backfill["States"][name]["ItemProcessor"]["States"]
        sfx = "" if name == "Process the manifest" else " (typed units)"
        choice = states[f"Is it this lock's pipeline run?{sfx}"]
        running, ended = choice["Choices"]
        assert {"Variable": "$.pipeline_run.status", "StringEquals": "RUNNING"} in running["And"]
        assert running["Next"] == f"Record the failed pipeline{sfx}"  # no lock write: the run finalizes it
        assert ended["Next"] == f"Mark the lock of the pipeline run failed{sfx}"
        assert choice["Default"] == f"Was the lock new?{sfx}"


def test_map_run_counts_that_cannot_be_read_are_unknown_named_and_kept_out_of_the_metrics(live):
    # GIVEN a backfill whose DescribeMapRun keeps failing, with one unit that does not run
    (u,) = folders(live, "maprun-proj", dt.date(2024, 7, 10), ["mb-1"])
    bad = {**u, "org1": "elsewhere"}
    machine = live.backfill_variant("HappyPath").rsplit(":", 1)[-1]
    before = {m: _metric(live, m, machine) or 0 for m in ("BackfillUnitsNotRun", "BackfillBookkeepingWritesFailed")}

    result = live.engine.run(live.backfill_variant("HappyPath") + "#MapRunCountsUnknown", {"units": [bad]}, timeout=180)

    # THEN units and uncounted say unknown (-1), the output names what could not be written, and the
    # metrics count the invalid unit, not -1, and the bookkeeping failure
    out = result.output
    assert (out["units"], out["uncounted"], out["invalid"]) == (-1, -1, 1)
    assert set(out["unwritten"]) == {"map_run_counts"}
    assert _metric(live, "BackfillUnitsNotRun", machine) - before["BackfillUnitsNotRun"] == 1
    assert _metric(live, "BackfillBookkeepingWritesFailed", machine) - before["BackfillBookkeepingWritesFailed"] == 1
