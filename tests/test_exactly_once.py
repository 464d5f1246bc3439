"""One batch, one window: every flow that meets a batch folder adopts the window its first flow bound,
so a folder reaches at most one pipeline run (docs/contracts.md "Batch binding"). Each test counts the
pipeline executions started per batch folder."""
from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections import Counter

import pytest

from mlbatch.cli import main
from mlbatch.window import window_for

PROJECT, FSV, INGEST = "traffic-anomaly", "fs-2024-06", "mlbatch-example-ingest"


def folder(batch: str, day: str = "2024/05/02") -> str:
    return f"s3://{INGEST}/acme/netsec/{PROJECT}/{day}/{batch}/"


def new_batch() -> str:
    return f"mb-{uuid.uuid4().hex[:10]}"


def event(batch: str, timestamp: str, day: str = "2024/05/02", **extra) -> dict:
    return {"s3_key": folder(batch, day) + "part-0.json.gz", "timestamp": timestamp, **extra}


def window(timestamp: str) -> dict:
    """The window a timestamp computes, in window_adopted_from's shape."""
    w = window_for(timestamp)
    return {"lock_key": f"{PROJECT}#{FSV}#{w.start}#{w.end}", "batch_start_ts_iso": w.start, "batch_end_ts_iso": w.end}


def unit(batch: str, last_modified: str, day: str = "2024/05/02") -> dict:
    """A backfill unit as the extractor writes it: the window from the folder's LastModified."""
    w = window(last_modified)
    return {"project_name": PROJECT, "org1": "acme", "org2": "netsec", "mini_batch_id": batch,
            "mini_batch_s3_prefix": folder(batch, day), "feature_spec_version": FSV,
            "batch_start_ts_iso": w["batch_start_ts_iso"], "batch_end_ts_iso": w["batch_end_ts_iso"],
            "source": "backfill"}


class Runs:
    """Pipeline executions started from now on, per batch folder (their input's mini_batch_s3_prefix)."""

    def __init__(self, sb, machine: str):
        self.sb, self.machine = sb, machine
        self.before = {e["executionArn"] for e in sb.engine.executions(machine)}

    def inputs(self) -> list[dict]:
        return [json.loads(self.sb.engine.sfn.describe_execution(executionArn=e["executionArn"])["input"])
                for e in self.sb.engine.executions(self.machine) if e["executionArn"] not in self.before]

    def per_folder(self) -> Counter:
        return Counter(i["mini_batch_s3_prefix"] for i in self.inputs())


@pytest.fixture
def flows(live):
    """The intake and the backfill starting the real pipeline (builders mocked: HappyPath)."""
    live.use_intake("pipeline", "HappyPath")
    live.runs = Runs(live, live.pipeline_arn)
    return live


@pytest.fixture
def intake_only(stack):
    stack.runs = Runs(stack, stack.started_pipeline_arn)
    return stack


def backfill(sb, units: list[dict], case: str = "HappyPath"):
    result = sb.engine.run(sb.backfill_variant(case), {"units": units}, timeout=300)
    assert result.status == "SUCCEEDED", result.cause
    return result


def finish(sb, intake) -> None:
    """Wait for the pipeline an intake started (it finalizes the lock)."""
    assert intake.output["status"] == "STARTED", (intake.error, intake.cause)
    sb.engine.wait(intake.output["pipeline_execution_arn"], timeout=120)


def deliver_live(sb, day: str, last_modified: list[dt.datetime], stamps: list[str]) -> list[str]:
    """A day of new batch folders, one file each with the given LastModified; the first len(stamps) are
    delivered live, their events stamped so, and their pipelines finish. Returns the batches."""
    batches = [new_batch() for _ in last_modified]
    for batch, t in zip(batches, last_modified):
        sb.engine.put_object_at(INGEST, folder(batch, day).removeprefix(f"s3://{INGEST}/") + "part-0.json.gz", t)
    for batch, ts in zip(batches, stamps):
        finish(sb, sb.intake(event(batch, ts, day)))
    return batches


# --- live: redelivery and producer retries ----------------------------------------------------

FIRST = "2024-05-02T10:22:58.600Z"  # the :08 window; the grid minute :23 is 1.4 s away
RETRIES = {"redelivery": FIRST, "sub-second later": "2024-05-02T10:22:59.100Z",
           "seconds earlier": "2024-05-02T10:22:51Z", "across the grid minute": "2024-05-02T10:23:02.250Z"}


@pytest.mark.parametrize("retry", RETRIES.values(), ids=RETRIES.keys())
def test_a_retried_event_of_a_batch_is_suppressed_in_its_first_window(intake_only, retry):
    # GIVEN a batch whose event started its pipeline
    sb, batch = intake_only, new_batch()
    first = sb.intake(event(batch, FIRST))
    assert first.output["status"] == "STARTED"

    # WHEN the event comes again, its timestamp as the producer stamped it this time
    again = sb.intake(event(batch, retry))

    # THEN it is a duplicate of the first window, says which window it computed, and nothing ran again
    assert again.status == "SUCCEEDED", again.cause
    assert again.output["status"] == "DUPLICATE_SUPPRESSED"
    assert again.output["lock_key"] == first.output["lock_key"] == window(FIRST)["lock_key"]
    assert again.output["batch"] == first.output["batch"]
    assert again.output["window_adopted_from"] == (None if retry == FIRST else window(retry))
    assert sb.runs.per_folder() == {folder(batch): 1}
    (binding,) = [b for b in sb.bindings() if b["mini_batch_id"] == batch]
    assert binding == {**binding, "lock_key": f"batch#{FSV}#{folder(batch)}", "item_type": "batch_binding",
                       "window_lock_key": first.output["lock_key"], "bound_by": first.arn,
                       "bound_source": "inference", "project_name": PROJECT, "feature_spec_version": FSV,
                       "mini_batch_s3_prefix": folder(batch), "batch_start_ts_iso": "2024-05-02T10:08:00Z",
                       "batch_end_ts_iso": "2024-05-02T10:22:58.600Z"}
    assert [lock["lock_key"] for lock in sb.locks() if lock.get("mini_batch_id") == batch] == [first.output["lock_key"]]


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_first_events_of_a_new_batch_with_different_timestamps_bind_it_once(intake_only, round_):
    # GIVEN a new batch whose event arrives 30 times at once, stamped across two windows
    sb, batch = intake_only, new_batch()
    stamps = [f"2024-05-02T10:22:{50 + i % 10:02d}.{i:03d}Z" if i % 2 else f"2024-05-02T10:23:0{i % 10}.{i:03d}Z"
              for i in range(30)]
    arns, guard = [], threading.Lock()

    def deliver(ts):
        arn = sb.engine.start(sb.intake_arn, event(batch, ts))
        with guard:
            arns.append(arn)
    threads = [threading.Thread(target=deliver, args=(ts,)) for ts in stamps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    results = [sb.engine.wait(a, timeout=120) for a in arns]

    # THEN one binding, one window, one pipeline run
    assert sorted(r.output["status"] for r in results) == ["DUPLICATE_SUPPRESSED"] * 29 + ["STARTED"]
    (binding,) = [b for b in sb.bindings() if b["mini_batch_id"] == batch]
    assert {r.output["lock_key"] for r in results} == {binding["window_lock_key"]}
    assert len([lock for lock in sb.locks() if lock.get("mini_batch_id") == batch]) == 1
    assert sb.runs.per_folder() == {folder(batch): 1}


def test_a_forced_replay_with_another_timestamp_reruns_the_bound_window(intake_only):
    sb, batch = intake_only, new_batch()
    first = sb.intake(event(batch, FIRST))
    sb.set_lock({**sb.lock(first.output["lock_key"]), "status": "SUCCEEDED"})

    plain = sb.intake(event(batch, "2024-05-02T10:40:00Z"))
    forced = sb.intake(event(batch, "2024-05-02T10:40:00Z", force=True, reason="rebuild after fix 42"))

    assert plain.output["status"] == "DUPLICATE_SUPPRESSED"
    assert forced.output["status"] == "STARTED"
    assert forced.output["lock_key"] == first.output["lock_key"]
    assert forced.output["window_adopted_from"] == window("2024-05-02T10:40:00Z")
    lock = sb.lock(first.output["lock_key"])
    assert (lock["status"], lock["attempts"], lock["reason"]) == ("IN_PROGRESS", 2, "rebuild after fix 42")
    assert lock["pipeline_execution_arn"] == forced.output["pipeline_execution_arn"]
    assert sb.lock(window("2024-05-02T10:40:00Z")["lock_key"]) is None
    assert sb.runs.per_folder() == {folder(batch): 2}
    assert {i["lock_key"] for i in sb.runs.inputs()} == {first.output["lock_key"]}


# --- collisions: two batches, one window ----------------------------------------------------------

def test_a_batch_colliding_with_another_in_its_window_is_not_held_to_that_window(intake_only):
    # GIVEN batch A running in the window of its timestamp
    sb, a, b = intake_only, new_batch(), new_batch()
    first = sb.intake(event(a, FIRST))

    # WHEN batch B arrives with the very same timestamp
    collided = sb.intake(event(b, FIRST))

    # THEN B is a collision; the binding B's execution wrote is gone, A's lock and binding untouched
    assert (collided.status, collided.error) == ("FAILED", "Intake.WindowCollision")
    assert sb.binding(FSV, folder(b)) is None
    assert sb.binding(FSV, folder(a))["window_lock_key"] == first.output["lock_key"]
    assert sb.lock(first.output["lock_key"])["owner_execution_arn"] == first.arn
    # ...so B, re-emitted with its own timestamp as the cause asks, runs in its own window
    own = sb.intake(event(b, "2024-05-02T10:22:59Z"))
    assert own.output["status"] == "STARTED" and own.output["window_adopted_from"] is None
    assert sb.runs.per_folder() == {folder(a): 1, folder(b): 1}


def test_a_binding_an_earlier_flow_wrote_is_released_when_its_window_belongs_to_another_batch(intake_only):
    sb, a, b = intake_only, new_batch(), new_batch()
    first = sb.intake(event(a, FIRST))
    earlier = {"lock_key": f"batch#{FSV}#{folder(b)}", "item_type": "batch_binding", "feature_spec_version": FSV,
               "mini_batch_s3_prefix": folder(b), "project_name": PROJECT, "mini_batch_id": b,
               "window_lock_key": first.output["lock_key"], "batch_start_ts_iso": "2024-05-02T10:08:00Z",
               "batch_end_ts_iso": "2024-05-02T10:22:58.600Z", "bound_at": "2024-05-02T10:23:00Z",
               "bound_by": "mlbatch locks bind", "bound_source": "migration"}
    sb.set_lock(earlier)

    collided = sb.intake(event(b, "2024-05-02T10:30:00Z"))
    again = sb.intake(event(b, "2024-05-02T10:30:00Z"))

    # B never ran in A's window (no flow takes over another batch's window), so whoever bound B there, the
    # binding would hold B in a collision for good, with no command to undo it: it goes, and B runs once
    assert collided.error == "Intake.WindowCollision"
    assert again.output["status"] == "STARTED" and again.output["lock_key"] == window("2024-05-02T10:30:00Z")["lock_key"]
    assert sb.runs.per_folder() == {folder(a): 1, folder(b): 1}


# --- live and backfill ------------------------------------------------------------------------------

LAST_MODIFIED = {"equal instant, other spelling": ("2024-05-02T10:20:29.000Z", "2024-05-02T10:20:29Z"),
                 "sub-second": ("2024-05-02T10:20:29.400Z", "2024-05-02T10:20:30Z"),
                 "seconds": ("2024-05-02T10:20:29Z", "2024-05-02T10:21:14Z"),
                 "across the grid minute": ("2024-05-02T10:22:41Z", "2024-05-02T10:23:12Z")}


@pytest.mark.parametrize("live_ts, last_modified", LAST_MODIFIED.values(), ids=LAST_MODIFIED.keys())
def test_a_backfill_of_a_live_batch_adopts_the_live_window_and_runs_nothing(flows, live_ts, last_modified):
    # GIVEN a batch the live flow ran, its folder's LastModified not its payload timestamp
    sb, batch = flows, new_batch()
    live = sb.intake(event(batch, live_ts))
    finish(sb, live)

    # WHEN a backfill over its day meets the folder
    result = backfill(sb, [unit(batch, last_modified)])

    # THEN the unit adopts the live window, finds it done, and runs nothing
    assert (result.output["started"], result.output["suppressed"]) == (0, 1)
    assert sb.lock(window(last_modified)["lock_key"]) is None
    lock = sb.lock(live.output["lock_key"])
    assert (lock["status"], lock["attempts"], lock["source"]) == ("SUCCEEDED", 1, "inference")
    assert sb.runs.per_folder() == {folder(batch): 1}


def test_a_batch_first_run_by_a_backfill_is_suppressed_when_its_live_event_arrives_late(flows):
    sb, batch = flows, new_batch()
    backfill(sb, [unit(batch, "2024-05-02T10:37:40Z")])

    late = sb.intake(event(batch, "2024-05-02T10:38:05.5Z"))

    assert late.output["status"] == "DUPLICATE_SUPPRESSED"
    assert late.output["lock_key"] == window("2024-05-02T10:37:40Z")["lock_key"]
    assert late.output["window_adopted_from"] == window("2024-05-02T10:38:05.5Z")
    assert late.output["suppressed_by"]["status"] == "SUCCEEDED"
    assert sb.binding(FSV, folder(batch))["bound_source"] == "backfill"
    assert sb.runs.per_folder() == {folder(batch): 1}


def test_a_failed_batch_is_retried_in_its_bound_window_by_any_flow(flows):
    # GIVEN a live batch whose pipeline failed
    sb, batch = flows, new_batch()
    sb.use_intake("pipeline", "DeltaBuilderFails")
    failed = sb.intake(event(batch, FIRST))
    finish(sb, failed)
    bound = failed.output["lock_key"]
    assert sb.lock(bound)["status"] == "FAILED"
    sb.use_intake("pipeline", "HappyPath")

    # WHEN a backfill meets it (another window by LastModified), and later, failed again, a live retry
    result = backfill(sb, [unit(batch, "2024-05-02T10:24:10Z")])
    assert (result.output["started"], sb.lock(bound)["status"], sb.lock(bound)["attempts"]) == (1, "SUCCEEDED", 2)
    sb.set_lock({**sb.lock(bound), "status": "FAILED"})
    retry = sb.intake(event(batch, "2024-05-02T10:31:00Z"))
    finish(sb, retry)

    # THEN every run was in the bound window
    assert retry.output["lock_key"] == bound and retry.output["window_adopted_from"] == window("2024-05-02T10:31:00Z")
    assert (sb.lock(bound)["status"], sb.lock(bound)["attempts"]) == ("SUCCEEDED", 3)
    assert sb.runs.per_folder() == {folder(batch): 3}
    assert {i["lock_key"] for i in sb.runs.inputs()} == {bound}
    assert sb.lock(window("2024-05-02T10:24:10Z")["lock_key"]) is None


def test_a_backfill_unit_colliding_with_another_batch_leaves_no_binding(flows):
    sb, a, b = flows, new_batch(), new_batch()
    finish(sb, sb.intake(event(a, "2024-05-02T10:50:00Z")))
    colliding = {**unit(b, "2024-05-02T10:50:00Z")}

    result = backfill(sb, [colliding])

    assert result.output["collided"] == 1
    assert sb.binding(FSV, folder(b)) is None
    assert sb.runs.per_folder() == {folder(a): 1}


def test_a_live_event_racing_a_backfill_of_the_same_new_batch_runs_it_once(flows):
    sb, batch = flows, new_batch()
    run = sb.engine.start(sb.backfill_variant("HappyPath"), {"units": [unit(batch, "2024-05-02T11:05:30Z")]})
    live = sb.intake(event(batch, "2024-05-02T11:05:01Z"))
    result = sb.engine.wait(run, timeout=300)

    assert result.output["started"] + (live.output["status"] == "STARTED") == 1
    assert sb.runs.per_folder() == {folder(batch): 1}
    (binding,) = [b for b in sb.bindings() if b["mini_batch_id"] == batch]
    assert live.output["lock_key"] == binding["window_lock_key"]


def test_a_backfill_of_a_day_through_the_extractor_runs_only_the_batches_live_traffic_missed(flows, tmp_path):
    # GIVEN four batch folders of one day; three were delivered live, stamped off their LastModified by
    # -30 s, +0.4 s and across a grid minute; the fourth never arrived
    sb, day = flows, "2024/07/09"
    batches = deliver_live(sb, day, [dt.datetime(2024, 7, 9, 8, 10, 15), dt.datetime(2024, 7, 9, 8, 40, 2),
                                     dt.datetime(2024, 7, 9, 9, 8, 3), dt.datetime(2024, 7, 9, 9, 30, 0)],
                           ["2024-07-09T08:09:45Z", "2024-07-09T08:40:02.400Z", "2024-07-09T09:07:58Z"])
    manifest = tmp_path / "units.jsonl"
    assert main(["extract", "--bucket", INGEST, "--from", "2024-07-09", "--to", "2024-07-09", "--quiet",
                 "--prefix", "acme/netsec", "--project", PROJECT,
                 "--defaults-table", sb.table("ProjectDefaultsTable"), "--output", str(manifest)]) == 0
    units = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(u["mini_batch_id"] for u in units) == sorted(batches)

    # WHEN the backfill runs the day, then again, and the missing batch's event arrives late
    first = backfill(sb, units)
    again = backfill(sb, units)
    late = sb.intake(event(batches[3], "2024-07-09T09:29:41Z", day))

    # THEN only the missing batch ran, once; nothing ran twice
    assert (first.output["started"], first.output["suppressed"]) == (1, 3)
    assert (again.output["started"], again.output["suppressed"]) == (0, 4)
    assert late.output["status"] == "DUPLICATE_SUPPRESSED"
    assert sb.runs.per_folder() == {folder(b, day): 1 for b in batches}


# --- every reader and every healer, through the CLI -------------------------------------------------

def _sweep_input(sb, until: str) -> dict:
    """What the template's sweep schedule sends, at a scheduled time."""
    from mlbatch.template import load
    tpl = load(parameters={**sb.template.parameters, "SweepSchedule": "rate(1 day)", "SweepDays": "1"})
    (sweep,) = tpl.resources("AWS::Scheduler::Schedule").values()
    return json.loads(tpl.resolve(sweep["Properties"])["Target"]["Input"].replace("<aws.scheduler.scheduled-time>",
                                                                                  until))


def test_live_batches_stay_done_through_the_audit_its_heal_a_backfill_the_sweep_and_an_upgrade(flows, cli, tmp_path):
    # GIVEN a day of five batch folders; four delivered live, their events stamped off LastModified by
    # +0.4 s, the same instant spelled differently, -30 s, and across a grid minute; one never arrived
    sb, day, date = flows, "2024/08/14", "2024-08-14"
    batches = deliver_live(sb, day, [dt.datetime(2024, 8, 14, 1, 10, 29), dt.datetime(2024, 8, 14, 2, 10, 29),
                                     dt.datetime(2024, 8, 14, 3, 10, 15), dt.datetime(2024, 8, 14, 4, 23, 3),
                                     dt.datetime(2024, 8, 14, 5, 30)],
                           [f"{date}T01:10:29.400Z", f"{date}T02:10:29.000Z", f"{date}T03:09:45Z", f"{date}T04:22:58Z"])
    s3 = sb.engine.client("s3")
    tables = ["--lock-table", sb.table("LockTable"), "--defaults-table", sb.table("ProjectDefaultsTable")]
    audit = ["audit", "--bucket", INGEST, "--from", date, "--to", date, "--project", PROJECT, "--json", *tables]
    artifacts = sb.deployment.buckets["ArtifactsBucket"]

    def audited(*extra: str) -> tuple[int, dict, str]:
        code, out, err = cli(*audit, *extra)
        lines = [json.loads(line) for line in out.splitlines()]
        return code, {line["mini_batch_id"]: line for line in lines if "mini_batch_id" in line}, err

    # WHEN the audit heals into a manifest and the backfill runs it
    heal = tmp_path / "heal.jsonl"
    code, lines, _ = audited("--manifest", str(heal))
    s3.put_object(Bucket=artifacts, Key="backfill/heal/units.jsonl", Body=heal.read_bytes())
    healed = sb.engine.run(sb.backfill_variant("HappyPath"),
                           {"manifest": {"bucket": artifacts, "key": "backfill/heal/units.jsonl"}}, timeout=300)

    # THEN every live batch audits SUCCEEDED in its live window; only the one that never arrived is healed
    assert code == 3
    assert {b: line["state"] for b, line in lines.items()} == {**{b: "SUCCEEDED" for b in batches[:4]},
                                                              batches[4]: "MISSING"}
    # (each lock key spells the end as its event did, `...:29.000Z` too: all four adopt the live window)
    assert all(lines[b]["window_adopted_from"]["lock_key"] != lines[b]["lock_key"] for b in batches[:4])
    assert [json.loads(u)["mini_batch_id"] for u in heal.read_text().splitlines()] == [batches[4]]
    assert (healed.output["units"], healed.output["started"]) == (1, 1)

    # WHEN the day is backfilled through the extractor, the sweep runs over it, and a late event arrives
    manifest = tmp_path / "units.jsonl"
    assert main(["extract", "--bucket", INGEST, "--from", date, "--to", date, "--quiet", "--project", PROJECT,
                 "--defaults-table", sb.table("ProjectDefaultsTable"), "--output", str(manifest)]) == 0
    day_backfill = backfill(sb, [json.loads(u) for u in manifest.read_text().splitlines()])
    name = f"sweep-{uuid.uuid4().hex[:8]}"
    s3.put_object(Bucket=artifacts, Key=f"backfill/{name}/units.jsonl", Body=manifest.read_bytes())
    sweep = sb.engine.run(sb.backfill_variant("HappyPath") + "#ExtractorSucceeds",
                          _sweep_input(sb, f"{date}T23:30:00Z"), name=name, timeout=300)
    late = sb.intake(event(batches[4], f"{date}T05:29:41Z", day))

    # THEN nothing runs again, and the audit finds no gap
    assert (day_backfill.output["started"], day_backfill.output["suppressed"]) == (0, 5)
    assert (sweep.status, sweep.output["started"], sweep.output["suppressed"]) == ("SUCCEEDED", 0, 5)
    assert late.output["status"] == "DUPLICATE_SUPPRESSED"
    assert audited()[0] == 0
    assert sb.runs.per_folder() == {folder(b, day): 1 for b in batches}

    # WHEN the ledger is as an mlbatch before bindings left it (window locks only), then upgraded
    for binding in sb.bindings():
        sb.engine.dynamodb.delete_item(TableName=sb.table("LockTable"), Key={"lock_key": {"S": binding["lock_key"]}})
    before_upgrade = audited()
    assert cli("locks", "bind", "--table", sb.table("LockTable"))[0] == 0
    after_upgrade = audited()
    again = backfill(sb, [json.loads(u) for u in manifest.read_text().splitlines()])

    # THEN before the upgrade the live batches whose windows differ look MISSING and the audit names the
    # migration; after it every batch is SUCCEEDED, and a backfill of the day still runs nothing
    assert before_upgrade[0] == 3 and "mlbatch locks bind" in before_upgrade[2]
    assert {b for b, line in before_upgrade[1].items() if line["state"] == "MISSING"} == set(batches[:4])
    assert after_upgrade[0] == 0
    assert {line["state"] for line in after_upgrade[1].values()} == {"SUCCEEDED"}
    assert (again.output["started"], again.output["suppressed"]) == (0, 5)
    assert sb.runs.per_folder() == {folder(b, day): 1 for b in batches}


# --- adversarial review: paths that reached a second run, or left a batch stuck -----------------------

def test_a_batch_whose_run_failed_keeps_its_window_when_another_batch_arrives_with_its_timestamp(intake_only):
    # GIVEN batch A's run in the window of its timestamp failed (the lock FAILED, A's to retry)
    sb, a, b = intake_only, new_batch(), new_batch()
    first = sb.intake(event(a, FIRST))
    sb.set_lock({**sb.lock(first.output["lock_key"]), "status": "FAILED", "error": "States.TaskFailed"})

    # WHEN batch B arrives stamped the very same instant, then A's event is redelivered
    other = sb.intake(event(b, FIRST))
    retry = sb.intake(event(a, FIRST))

    # THEN B collides (it never takes over A's window), and A's retry runs in A's bound window
    assert (other.status, other.error) == ("FAILED", "Intake.WindowCollision"), other.output
    assert sb.binding(FSV, folder(b)) is None
    assert retry.output["status"] == "STARTED", (retry.error, retry.cause)
    assert retry.output["lock_key"] == first.output["lock_key"]
    assert sb.runs.per_folder() == {folder(a): 2}


@pytest.fixture
def intake_without_pipeline(intake_only):
    """The intake with every pipeline start failing (its pipeline state machine does not exist)."""
    sb = intake_only
    overrides = {k: v.replace("mlbatch-pipeline", "missing-pipeline")
                 for k, v in sb.template.substitutions("IntakeStateMachine").items() if k.startswith("Pipeline")}
    existing = [m["stateMachineArn"] for m in sb.engine.sfn.list_state_machines()["stateMachines"]
                if m["name"] == "exactly-once-intake-without-pipeline"]
    return existing[0] if existing else sb.engine.create_machine(
        "exactly-once-intake-without-pipeline", sb.template.definition("IntakeStateMachine", overrides))


def test_a_batch_whose_pipeline_start_failed_is_not_stuck_when_another_batch_takes_its_window(
        intake_only, intake_without_pipeline):
    # GIVEN batch A's first intake bound it and failed to start its pipeline (no lock left)
    sb, a, b = intake_only, new_batch(), new_batch()
    failed = sb.engine.run(intake_without_pipeline, event(a, FIRST))
    assert failed.error == "Intake.PipelineStartFailed"

    # WHEN batch B arrives stamped the same instant and runs, then A's event is redelivered, then re-emitted
    # with its own timestamp as the collision's cause asks
    other = sb.intake(event(b, FIRST))
    retry = sb.intake(event(a, FIRST))
    own = sb.intake(event(a, "2024-05-02T10:22:59Z"))

    # THEN A collides once, is not held to the window B now owns, and runs (once) in a window of its own
    assert other.output["status"] == "STARTED"
    assert retry.error == "Intake.WindowCollision"
    assert own.status == "SUCCEEDED", (own.error, own.cause)
    assert own.output["status"] == "STARTED" and own.output["window_adopted_from"] is None
    assert sb.runs.per_folder() == {folder(a): 1, folder(b): 1}


def _builders_run(sb, execution_arn: str) -> list[str]:
    history = sb.engine.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
    return [e["stateEnteredEventDetails"]["name"] for e in history
            if e.get("stateEnteredEventDetails", {}).get("name", "").startswith("Run the ")
            and e["stateEnteredEventDetails"]["name"] != "Run the builders"]


def test_a_console_replay_of_a_finished_pipeline_execution_runs_no_builder_again(flows):
    # GIVEN a batch whose pipeline ran and succeeded
    sb, batch = flows, new_batch()
    live = sb.intake(event(batch, FIRST))
    finish(sb, live)
    original = sb.engine.sfn.describe_execution(executionArn=live.output["pipeline_execution_arn"])
    assert sorted(_builders_run(sb, original["executionArn"])) == ["Run the Delta Builder", "Run the Pair Counts Builder"]

    # WHEN an operator replays that pipeline execution from the console: New execution, same input
    replay = sb.engine.wait(sb.engine.start(sb.pipeline_arn + "#HappyPath", json.loads(original["input"])),
                            timeout=120)

    # THEN the replay starts no builder (the window's lock is not its own) and the lock is untouched
    assert (replay.status, replay.error) == ("FAILED", "Pipeline.LockLost")
    assert _builders_run(sb, replay.arn) == []
    assert sb.lock(live.output["lock_key"])["status"] == "SUCCEEDED"


def test_a_forced_event_of_another_batch_stamped_a_done_windows_instant_collides_and_takes_nothing_over(intake_only):
    # GIVEN batch A done in the window of its timestamp
    sb, a, b = intake_only, new_batch(), new_batch()
    first = sb.intake(event(a, FIRST))
    sb.set_lock({**sb.lock(first.output["lock_key"]), "status": "SUCCEEDED"})

    # WHEN an operator forces batch B, whose event is stamped that very instant
    forced = sb.intake(event(b, FIRST, force=True, reason="re-run B after fix 7"))

    # THEN B collides: A's record and binding stay, so A's redelivery is still a duplicate of its own run
    assert (forced.status, forced.error) == ("FAILED", "Intake.WindowCollision"), forced.output
    lock = sb.lock(first.output["lock_key"])
    assert (lock["status"], lock["mini_batch_id"], lock["attempts"]) == ("SUCCEEDED", a, 1)
    assert sb.binding(FSV, folder(b)) is None
    assert sb.intake(event(a, FIRST)).output["status"] == "DUPLICATE_SUPPRESSED"
    assert sb.runs.per_folder() == {folder(a): 1}


def test_a_backfill_unit_meeting_another_batchs_failed_window_collides_and_leaves_it_to_that_batch(flows):
    # GIVEN batch A's live run failed in the window of its timestamp
    sb, a, b = flows, new_batch(), new_batch()
    sb.use_intake("pipeline", "DeltaBuilderFails")
    failed = sb.intake(event(a, "2024-05-02T10:50:00Z"))
    finish(sb, failed)
    sb.use_intake("pipeline", "HappyPath")

    # WHEN a backfill meets batch B, whose LastModified is that very instant, then A is retried
    result = backfill(sb, [unit(b, "2024-05-02T10:50:00Z")])
    retry = sb.intake(event(a, "2024-05-02T10:50:00Z"))
    finish(sb, retry)

    # THEN B collided (no binding left), A ran again in its own window: attempts count A's runs only
    assert (result.output["started"], result.output["collided"]) == (0, 1)
    assert sb.binding(FSV, folder(b)) is None
    lock = sb.lock(failed.output["lock_key"])
    assert (lock["status"], lock["mini_batch_id"], lock["attempts"]) == ("SUCCEEDED", a, 2)
    assert sb.runs.per_folder() == {folder(a): 2}
