"""Operator experience: replay, the lock ledger, project defaults, console inputs, diagrams."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlbatch.defaults import problems
from mlbatch.diagram import mermaid
from mlbatch.sandbox import EVENTS, load_event
from mlbatch.settings import ROOT

LOCK_KEY = "traffic-anomaly#fs-2024-06#2024-02-29T23:53:00Z#2024-03-01T00:05:07.123Z"


@pytest.fixture
def ops(live, monkeypatch):
    """The whole flow with mocked builders, and the operator commands pointed at its tables."""
    live.use_intake("pipeline", "HappyPath")
    monkeypatch.setenv("MLBATCH_LOCK_TABLE", live.table("LockTable"))
    monkeypatch.setenv("MLBATCH_DEFAULTS_TABLE", live.table("ProjectDefaultsTable"))
    yield live
    live.put_defaults(load_event("project_defaults"))


def finish(sb, intake):
    if intake.status == "SUCCEEDED" and intake.output["status"] == "STARTED":
        sb.engine.wait(intake.output["pipeline_execution_arn"], timeout=60)


def test_replay_of_a_failed_intake_after_fixing_its_cause_starts_the_window(ops, cli):
    ops.engine.dynamodb.delete_item(TableName=ops.table("ProjectDefaultsTable"),
                                    Key={"project_name": {"S": "traffic-anomaly"}})
    failed = ops.intake(load_event("pipes_batch"))
    assert failed.error == "Config.ProjectNotFound" and "replay this input unchanged" in failed.cause
    assert cli("defaults", "put", str(ROOT / "sam/project-defaults/traffic-anomaly.json"))[0] == 0

    code, out, _ = cli("replay", failed.arn)

    assert code == 0
    started = json.loads(out)
    assert started["name"] == failed.arn.rsplit(":", 1)[1] + "-replay-1"
    assert started["input"] == load_event("pipes_batch")
    replayed = ops.engine.wait(started["started"])
    assert replayed.output["status"] == "STARTED"
    finish(ops, replayed)
    assert ops.lock(LOCK_KEY)["status"] == "SUCCEEDED"


def test_replay_of_a_succeeded_intake_is_suppressed_and_forcing_records_the_reason(ops, cli):
    first = ops.intake(load_event("sqs_record"))
    finish(ops, first)

    code, out, _ = cli("replay", first.arn)
    plain = ops.engine.wait(json.loads(out)["started"])
    code2, out2, _ = cli("replay", first.arn, "--force", "--reason", "builder v1.4.1 fixes ports")
    forced = ops.engine.wait(json.loads(out2)["started"])

    assert (code, code2) == (0, 0)
    assert plain.output["status"] == "DUPLICATE_SUPPRESSED"
    assert plain.output["suppressed_by"]["status"] == "SUCCEEDED"
    assert json.loads(out2)["name"].endswith("-replay-2")
    assert json.loads(out2)["input"] == {**load_event("live_event"), "force": True,
                                         "reason": "builder v1.4.1 fixes ports"}
    assert forced.output["status"] == "STARTED"
    lock = ops.lock(LOCK_KEY)
    assert (lock["reason"], lock["attempts"]) == ("builder v1.4.1 fixes ports", 2)


def test_replay_refuses_what_it_cannot_do(ops, cli):
    intake = ops.intake(load_event("live_event"))
    finish(ops, intake)
    assert cli("replay", intake.arn, "--force")[0] == 2  # no reason: bad usage
    code, out, err = cli("replay", intake.output["pipeline_execution_arn"], "--dry-run")
    assert code == 0 and "Pipeline.LockLost" in err and json.loads(out)["kind"] == "pipeline"
    assert cli("replay", intake.output["pipeline_execution_arn"])[0] == 1  # needs --yes
    code, _, err = cli("replay", intake.arn.replace(intake.arn.rsplit(":", 1)[1], "nope"))
    assert code == 1 and "no execution" in err


def test_locks_reset_then_redelivery_runs_the_window_again(ops, cli):
    finish(ops, ops.intake(load_event("live_event")))
    before = len(ops.pipeline_executions())

    code, out, _ = cli("locks", "reset", LOCK_KEY, "--reason", "features were wrong, INC-9")
    again = ops.intake(load_event("live_event"))

    assert code == 0 and json.loads(out)["status"] == "FAILED"
    assert again.output["status"] == "STARTED"
    finish(ops, again)
    assert len(ops.pipeline_executions()) == before + 1
    assert ops.lock(LOCK_KEY)["status"] == "SUCCEEDED"


def test_locks_list_show_and_reset_rules(ops, cli):
    finish(ops, ops.intake(load_event("live_event")))
    ops.set_lock({"lock_key": "other#v#2024-01-01T00:08:00Z#2024-01-01T00:09:00Z", "status": "FAILED",
                  "project_name": "other", "batch_start_ts_iso": "2024-01-01T00:08:00Z"})

    code, out, _ = cli("locks", "list", "--project", "traffic-anomaly", "--kind", "window", "--json")
    assert code == 0 and [json.loads(line)["lock_key"] for line in out.splitlines()] == [LOCK_KEY]
    code, out, _ = cli("locks", "list", "--status", "FAILED", "--to", "2024-02-01T00:00:00Z", "--json")
    assert [json.loads(line)["project_name"] for line in out.splitlines()] == ["other"]
    assert LOCK_KEY in cli("locks", "list")[1]
    assert json.loads(cli("locks", "show", LOCK_KEY, "--json")[1])["status"] == "SUCCEEDED"
    assert cli("locks", "show", "no#such#lock#x")[0] == 1
    assert cli("locks", "reset", LOCK_KEY)[0] == 2  # a reason is required: bad usage
    code, out, err = cli("locks", "reset", LOCK_KEY, "--reason", "r", "--dry-run")
    assert json.loads(out)["status"] == "FAILED" and "dry run: nothing was written" in err
    assert ops.lock(LOCK_KEY)["status"] == "SUCCEEDED"  # dry run changed nothing


def test_defaults_put_validates_before_writing(ops, cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**load_event("project_defaults"), "project_name": "fine-one"},
                               {"project_name": "broken", "feature_spec_version": "v#1",
                                "traffic_input": {"field_mapping": {"source_ip": "s"}},
                                "delta_builder": {"instance_count": "3"}}]))

    code, _, err = cli("defaults", "put", str(bad))

    assert code == 1
    assert "feature_spec_version" in err and "destination_ip" in err and "instance_count" in err
    assert ops.engine.dynamodb.get_item(TableName=ops.table("ProjectDefaultsTable"),
                                        Key={"project_name": {"S": "fine-one"}}).get("Item") is None


def test_example_defaults_items_are_valid_and_the_intake_accepts_them(ops, cli):
    files = sorted(str(p) for p in (ROOT / "sam" / "project-defaults").glob("*.json"))
    assert cli("defaults", "check", *files)[0] == 0
    assert cli("defaults", "put", *files)[0] == 0
    for path in files:
        project = json.loads(Path(path).read_text())["project_name"]
        event = {"s3_key": f"acme/netsec/{project}/2024/05/01/mb-1/f.json.gz", "timestamp": "2024-05-01T10:10:00Z"}
        result = ops.intake(event)
        assert result.output["status"] == "STARTED", result.cause
        finish(ops, result)


@pytest.mark.parametrize("item, complaint", [
    ({}, "project_name"), ({"project_name": "a/b"}, "'/'"), ({"project_name": "p", "extra": 1}, "unknown attribute"),
    ({"project_name": "p", "pair_counts_builder": {"gpu": 1}}, "not a builder setting"),
    ({"project_name": "p", "delta_builder": {"instance_type": "m5.xlarge"}}, "like ml.m5.xlarge"),
    ({"project_name": "p", "delta_builder": {"volume_size_gb": True}}, "volume_size_gb"),
    ({"project_name": "p", "feature_spec_version": "v" * 129}, "at most 128"),
    ({"project_name": "p", "traffic_input": {"field_mapping": {"source_ip": "c" * 129}}}, "at most 128"),
])
def test_defaults_schema_names_each_problem(item, complaint):
    assert any(complaint in p for p in problems(item))


# what each console input does when started as documented in docs/operating.md (Console replay)
CONSOLE = {
    "intake-replay-a-batch.json": ("IntakeStateMachine", "STARTED"),
    "intake-pipes-delivery.json": ("IntakeStateMachine", "STARTED"),
    "intake-force-a-succeeded-window.json": ("IntakeStateMachine", "STARTED"),
    "backfill-typed-units.json": ("BackfillStateMachine", {"started": 2, "suppressed": 0, "failed": 0}),
    "lock-release-timed-out-pipeline.json": ("LockReleaseStateMachine", {"released": False}),
}


def test_every_console_input_is_documented_and_executes_as_documented(ops):
    files = sorted(p.name for p in (EVENTS / "console").glob("*.json"))
    operating = (ROOT / "docs" / "operating.md").read_text()
    assert all(f"tests/events/console/{name}" in operating for name in files)
    backfill = ops.backfill_variant("HappyPath")
    for name, (machine, expect) in CONSOLE.items():
        if "force" in name:  # the window must have succeeded first
            finish(ops, ops.intake(load_event("live_event")))
        arn = {"IntakeStateMachine": ops.intake_arn, "BackfillStateMachine": backfill}.get(machine) or ops.arn(machine)
        result = ops.engine.run(arn, json.loads((EVENTS / "console" / name).read_text()), timeout=120)
        assert result.status == "SUCCEEDED", (name, result.error, result.cause)
        if isinstance(expect, str):
            assert result.output["status"] == expect, name
            finish(ops, result)
            if "force" not in name:
                ops.clear_locks()
        else:
            assert {k: result.output[k] for k in expect} == expect, name


@pytest.mark.parametrize("asl", sorted((ROOT / "asl").glob("*.asl.json")), ids=lambda p: p.name)
def test_diagrams_show_every_state_and_transition(asl):
    text = mermaid(asl)
    definition = json.loads(asl.read_text())

    def names(d):
        for n, s in d["States"].items():
            yield n
            for sub in [s.get("ItemProcessor")] + s.get("Branches", []):
                if sub:
                    yield from names(sub)
    for name in names(definition):
        assert f'"{name.replace(chr(34), chr(39))}' in text, name
    assert text.count("-->") + text.count(".->") >= len(definition["States"])


# --- the ledger on any item, a reset that is safe, replays that name their owner ---------------

def test_locks_work_on_items_another_orchestrator_wrote(ops, cli):
    ops.set_lock({"lock_key": "legacy#1"})
    ops.set_lock({"lock_key": "legacy#2", "status": "SUCCEEDED"})

    code, out, _ = cli("locks", "list", "--json")
    table = cli("locks", "list")[1]
    shown = json.loads(cli("locks", "show", "legacy#1", "--json")[1])
    reset_bare = cli("locks", "reset", "legacy#1", "--reason", "adopted by mlbatch")
    reset_done = cli("locks", "reset", "legacy#2", "--reason", "re-run under mlbatch")

    assert code == 0 and [json.loads(line)["lock_key"] for line in out.splitlines()] == ["legacy#1", "legacy#2"]
    assert "legacy#1" in table and shown == {"kind": "window", "lock_key": "legacy#1"}  # no batch to name
    assert (reset_bare[0], reset_done[0]) == (0, 0)
    assert ops.lock("legacy#1")["status"] == "FAILED" and "previous_error" not in ops.lock("legacy#1")
    assert "was SUCCEEDED" in reset_done[2]
    assert ops.lock("legacy#2")["reason"] == "re-run under mlbatch"


def test_locks_list_filters_by_mini_batch_source_and_window_start(ops, cli):
    base = {"project_name": "p", "status": "SUCCEEDED"}
    ops.set_lock({**base, "lock_key": "a", "mini_batch_id": "mb-1", "source": "inference",
                  "batch_start_ts_iso": "2024-03-01T00:08:00Z"})
    ops.set_lock({**base, "lock_key": "b", "mini_batch_id": "mb-2", "source": "backfill",
                  "batch_start_ts_iso": "2024-03-01T23:53:00Z"})
    ops.set_lock({**base, "lock_key": "c", "mini_batch_id": "mb-3", "source": "backfill",
                  "batch_start_ts_iso": "2024-03-02T00:08:00Z"})

    def keys(*argv):
        code, out, err = cli("locks", "list", "--json", *argv)
        assert code == 0, err
        return [json.loads(line)["lock_key"] for line in out.splitlines()]

    assert keys("--mini-batch", "mb-2") == ["b"]
    assert keys("--source", "backfill") == ["b", "c"]
    assert keys("--from", "2024-03-01", "--to", "2024-03-01") == ["a", "b"]  # dates are whole days
    assert keys("--from", "2024-03-01T01:08:00+01:00", "--to", "2024-03-01T00:08:00.5Z") == ["a"]  # offsets: UTC
    assert keys("--from", "2024-03-01T00:08:00.5Z") == ["b", "c"]


def test_locks_reset_refuses_an_in_progress_lock_unless_told_and_then_shows_its_pipeline(ops, cli):
    intake = ops.intake(load_event("live_event"))
    pipeline = intake.output["pipeline_execution_arn"]
    finish(ops, intake)
    ops.set_lock({**ops.lock(LOCK_KEY), "status": "IN_PROGRESS", "error": "States.TaskFailed", "cause": "job 1"})

    refused = cli("locks", "reset", LOCK_KEY, "--reason", "stuck")
    dry = cli("locks", "reset", LOCK_KEY, "--reason", "stuck", "--in-progress-ok", "--dry-run")
    unchanged = ops.lock(LOCK_KEY)
    done = cli("locks", "reset", LOCK_KEY, "--reason", "stuck", "--in-progress-ok")

    assert refused[0] == 1 and "IN_PROGRESS" in refused[2] and pipeline in refused[2] and "SUCCEEDED" in refused[2]
    assert "--in-progress-ok" in refused[2]
    assert dry[0] == 0 and "nothing was written" in dry[2] and f"{pipeline} is SUCCEEDED" in dry[2]
    assert unchanged["status"] == "IN_PROGRESS"
    assert done[0] == 0 and f"{pipeline} is SUCCEEDED" in done[2]
    lock = ops.lock(LOCK_KEY)
    assert (lock["status"], lock["error"], lock["cause"]) == ("FAILED", "Operator.Reset", "stuck")
    assert (lock["previous_error"], lock["previous_cause"]) == ("States.TaskFailed", "job 1")


def test_locks_reset_never_overwrites_a_lock_that_changed_after_it_was_read(ops):
    from mlbatch.operator import OperatorError, apply_reset, plan_reset
    ops.set_lock({"lock_key": "race#1", "status": "FAILED", "error": "Pipeline.BuildFailed"})
    plan = plan_reset(ops.table("LockTable"), "race#1", "retry", ddb=ops.engine.dynamodb)
    ops.set_lock({"lock_key": "race#1", "status": "IN_PROGRESS", "pipeline_execution_arn": "arn:new"})  # re-acquired

    with pytest.raises(OperatorError, match="changed while it was being reset .*now IN_PROGRESS"):
        apply_reset(plan, ops.engine.dynamodb)

    assert ops.lock("race#1") == {"lock_key": "race#1", "status": "IN_PROGRESS", "pipeline_execution_arn": "arn:new"}


def test_replay_names_stay_within_80_characters_and_apart(ops, cli):
    from mlbatch.operator import replay_name
    long_a, long_b = "a" * 70 + "-first-run", "a" * 70 + "-other-run"
    failed = [ops.engine.run(ops.arn("IntakeStateMachine"), {"hello": 1}, name=n) for n in (long_a, long_b)]

    names = [json.loads(cli("replay", f.arn, "--dry-run")[1])["name"] for f in failed]
    first = json.loads(cli("replay", failed[0].arn)[1])
    again = json.loads(cli("replay", first["started"])[1])  # a replay of the replay

    assert all(len(n) <= 80 for n in names + [first["name"], again["name"]])
    assert names[0] != names[1] and names[0].endswith("-replay-1") and names[0].startswith("a" * 40)
    assert again["name"] == names[0].replace("-replay-1", "-replay-2")
    assert replay_name("8a2b", 3) == "8a2b-replay-3"


def test_replay_of_a_pipeline_names_the_intake_execution_owning_its_window(ops, cli, monkeypatch):
    intake = ops.intake(load_event("live_event"))
    finish(ops, intake)
    pipeline = intake.output["pipeline_execution_arn"]

    code, _, err = cli("replay", pipeline, "--dry-run")
    monkeypatch.delenv("MLBATCH_LOCK_TABLE")
    _, _, err_without_table = cli("replay", pipeline, "--dry-run")

    assert code == 0
    assert f"The intake execution that owns the window: {intake.arn}" in err
    assert f"mlbatch replay {intake.arn}" in err
    assert "name the lock table with --table or MLBATCH_LOCK_TABLE" in err_without_table


# --- refusals and throttling ------------------------------------------------------------------

def test_locks_reset_of_an_in_progress_lock_naming_no_pipeline_says_so_in_words(ops, cli):
    # GIVEN an IN_PROGRESS lock without a pipeline_execution_arn (the audit calls it STUCK, status UNKNOWN)
    intake = ops.intake(load_event("live_event"))
    finish(ops, intake)
    lock = {k: v for k, v in ops.lock(LOCK_KEY).items() if k != "pipeline_execution_arn"}
    ops.set_lock({**lock, "status": "IN_PROGRESS"})
    # WHEN reset without and then with --in-progress-ok (the command the audit report suggests)
    refused = cli("locks", "reset", LOCK_KEY, "--reason", "stuck")
    done = cli("locks", "reset", LOCK_KEY, "--reason", "stuck", "--in-progress-ok")
    # THEN both say the lock names no pipeline execution, never "execution None", each in one line
    for code, _, err in (refused, done):
        assert "names no pipeline execution" in err and "None" not in err, err
    assert refused[0] == 1 and len(refused[2].splitlines()) == 1 and "--in-progress-ok" in refused[2]
    assert done[0] == 0 and ops.lock(LOCK_KEY)["status"] == "FAILED"


def test_locks_reset_refuses_an_in_progress_lock_whose_pipeline_is_still_running(ops, cli):
    # GIVEN an IN_PROGRESS lock whose pipeline execution is still running
    machine = ops.engine.create_machine("reset-running-pipeline", {
        "StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 3600, "End": True}}})
    running = ops.engine.start(machine, {})
    ops.set_lock({"lock_key": "running#1", "status": "IN_PROGRESS", "pipeline_execution_arn": running, "attempts": 1})
    before = ops.lock("running#1")

    # WHEN the operator resets it, for real and as a dry run
    code, out, err = cli("locks", "reset", "running#1", "--reason", "looks stuck")
    dry = cli("locks", "reset", "running#1", "--reason", "looks stuck", "--dry-run")
    ops.engine.sfn.stop_execution(executionArn=running)

    # THEN both are refused, naming the running execution and what to do; nothing is written
    assert (code, out) == (1, "") and f"{running} is RUNNING" in err and "stop that execution first" in err
    assert "Traceback" not in err and dry[:2] == (1, "")
    assert ops.lock("running#1") == before


def test_locks_reset_outlasts_throttling_and_fails_in_one_line_past_its_budget(ops, cli, throttle):
    # GIVEN a FAILED lock, and DynamoDB throttling its first 5 reads and writes (botocore's own budget is 4)
    ops.set_lock({"lock_key": "throttled#1", "status": "FAILED", "error": "Pipeline.BuildFailed"})
    throttle.on("GetItem", lambda n: n < 5)
    throttle.on("UpdateItem", lambda n: n < 5)

    # WHEN the operator resets it
    code, _, err = cli("locks", "reset", "throttled#1", "--reason", "builder fixed")

    # THEN the reset is written after the throttles
    assert code == 0, err
    assert throttle.throttled == {"GetItem": 5, "UpdateItem": 5}
    throttle.on("GetItem", lambda n: False)
    assert ops.lock("throttled#1")["error"] == "Operator.Reset"

    # WHEN every write is throttled and the budget is 3 attempts
    throttle.on("UpdateItem", lambda n: True)
    code, out, err = cli("--aws-max-attempts", "3", "locks", "reset", "throttled#1", "--reason", "again")

    # THEN one line names the throttled write, the budget and how to raise it
    assert (code, out) == (1, "") and err.count("\n") == 1 and "Traceback" not in err
    assert "UpdateItem failed: ProvisionedThroughputExceededException" in err
    assert "(3 attempts, standard mode): raise it with --aws-max-attempts N" in err
    assert ops.lock("throttled#1")["reason"] == "builder fixed"


def test_defaults_put_throttled_past_its_budget_names_what_it_wrote(ops, cli, throttle, tmp_path):
    # GIVEN two valid items, and DynamoDB serving the first write, then throttling every one
    items = tmp_path / "two.json"
    items.write_text(json.dumps([{**load_event("project_defaults"), "project_name": name}
                                 for name in ("put-first", "put-second")]))
    throttle.on("PutItem", lambda n: n >= 1)

    # WHEN they are put with a budget of 2 attempts
    code, out, err = cli("defaults", "put", str(items), "--aws-max-attempts", "2")

    # THEN one line names the throttled write, what was written before it, and that a rerun is safe
    assert (code, out) == (1, "") and err.count("\n") == 1 and "Traceback" not in err
    assert "PutItem failed: ProvisionedThroughputExceededException" in err and "(2 attempts, standard mode)" in err
    assert "written before it: put-first (1 of 2); putting the same files again is safe" in err
    assert throttle.calls["PutItem"] == 1 + 2


def test_redriving_a_failed_pipeline_whose_lock_was_released_is_refused_before_it_runs_the_builders_again(ops, cli):
    # GIVEN a pipeline run whose build failed: it marked its window's lock FAILED (the next delivery re-runs it)
    ops.use_intake("pipeline", "DeltaBuilderFails")
    intake = ops.intake(load_event("live_event"))
    finish(ops, intake)
    pipeline = intake.output["pipeline_execution_arn"]
    assert ops.lock(LOCK_KEY)["status"] == "FAILED"

    # WHEN an operator follows the replay advice and redrives that pipeline execution
    _, _, advice = cli("replay", pipeline, "--dry-run")
    code, out, err = cli("replay", pipeline, "--redrive")

    # THEN replay refuses (a redriven run would build the batch a second time beside the window's next run)
    # and names the intake execution to replay instead
    assert "which keeps the lock" not in advice
    assert (code, out) == (1, "") and "Traceback" not in err
    assert "not redriving" in err and "is FAILED" in err and "LockLost" in err
    assert f"mlbatch replay {intake.arn}" in err
