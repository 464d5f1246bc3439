"""The live intake on the embedded engine: shapes, errors, the lock, and what gets started."""
from __future__ import annotations

import copy
import json
import threading

import pytest

from mlbatch.engine.harness import path, service_calls
from mlbatch.sandbox import load_event

LOCK_KEY = "traffic-anomaly#fs-2024-06#2024-02-29T23:53:00Z#2024-03-01T00:05:07.123Z"
BATCH = {
    "project_name": "traffic-anomaly",
    "org1": "acme",
    "org2": "netsec",
    "mini_batch_id": "mb-000123",
    "mini_batch_s3_prefix": "s3://mlbatch-example-ingest/acme/netsec/traffic-anomaly/2024/03/01/mb-000123/",
    "feature_spec_version": "fs-2024-06",
    "batch_start_ts_iso": "2024-02-29T23:53:00Z",
    "batch_end_ts_iso": "2024-03-01T00:05:07.123Z",
    "source": "inference",
}


def started(stack) -> int:
    return len(stack.pipeline_executions())


# --- the happy path ------------------------------------------------------------------------

def test_intake_live_event_starts_one_pipeline_with_the_resolved_batch(stack, event):
    before = started(stack)

    result = stack.intake(event)

    assert result.status == "SUCCEEDED", result.cause
    assert result.output == {
        "status": "STARTED", "batch": BATCH, "lock_key": LOCK_KEY,
        "pipeline_execution_arn": result.output["pipeline_execution_arn"], "window_adopted_from": None,
    }
    assert started(stack) == before + 1
    pipeline = stack.engine.sfn.describe_execution(executionArn=result.output["pipeline_execution_arn"])
    assert json.loads(pipeline["input"]) == {
        **BATCH, "lock_key": LOCK_KEY,
        "traffic_input": {
            "s3_prefix": "s3://mlbatch-example-ingest/acme/netsec/traffic-anomaly/2024/03/01",
            "field_mapping": load_event("project_defaults")["traffic_input"]["field_mapping"],
        },
    }
    lock = stack.lock(LOCK_KEY)
    assert {k: lock[k] for k in BATCH if k not in ("org1", "org2")} == {
        k: v for k, v in BATCH.items() if k not in ("org1", "org2")}
    assert lock["status"] == "IN_PROGRESS"
    assert lock["attempts"] == 1
    assert lock["owner_execution_arn"] == result.arn
    assert lock["pipeline_execution_arn"] == result.output["pipeline_execution_arn"]
    assert lock["reason"] == ""
    assert lock["acquired_at"] == lock["updated_at"]


def test_intake_traffic_prefix_and_batch_prefix_name_the_same_folder(stack, event):
    result = stack.intake(event)
    pipeline = json.loads(stack.engine.sfn.describe_execution(
        executionArn=result.output["pipeline_execution_arn"])["input"])
    assert (pipeline["traffic_input"]["s3_prefix"] + "/" + pipeline["mini_batch_id"] + "/"
            == pipeline["mini_batch_s3_prefix"])


def test_intake_happy_path_history_is_the_documented_sequence(stack, event):
    result = stack.intake(event)

    events = stack.engine.history(result.arn)

    assert path(events) == [
        ("Which input shape is the event?", "ChoiceStateEntered"),
        ("Which input shape is the event?", "ChoiceStateExited"),
        ("Parse the event", "PassStateEntered"),
        ("Parse the event", "PassStateExited"),
        ("Is the event a valid batch?", "ChoiceStateEntered"),
        ("Is the event a valid batch?", "ChoiceStateExited"),
        ("Get the project defaults", "TaskStateEntered"),
        ("Get the project defaults", "TaskStateExited"),
        ("Are the project defaults valid?", "ChoiceStateEntered"),
        ("Are the project defaults valid?", "ChoiceStateExited"),
        ("Compute the window in February 29", "PassStateEntered"),
        ("Compute the window in February 29", "PassStateExited"),
        ("Bind the batch to its window", "TaskStateEntered"),
        ("Bind the batch to its window", "TaskStateExited"),
        ("Acquire the window lock", "TaskStateEntered"),
        ("Acquire the window lock", "TaskStateExited"),
        ("Start the pipeline", "TaskStateEntered"),
        ("Start the pipeline", "TaskStateExited"),
    ]
    assert service_calls(events) == ["dynamodb:getItem", "dynamodb:updateItem", "dynamodb:updateItem",
                                     "states:startExecution"]


@pytest.mark.parametrize("shape", ["sqs_record", "sns_envelope", "pipes_batch", "pipes_batch_sns_envelope"])
def test_intake_every_input_shape_resolves_to_the_same_batch(stack, shape):
    result = stack.intake(load_event(shape))

    assert result.status == "SUCCEEDED", result.cause
    assert result.output["status"] == "STARTED"
    assert result.output["batch"] == BATCH
    assert result.output["lock_key"] == LOCK_KEY


def test_intake_live_pipes_path_stays_within_its_budget(stack):
    # GIVEN what EventBridge Pipes delivers from SQS (SNS raw message delivery): the live path
    # WHEN it runs
    result = stack.intake(load_event("pipes_batch"))

    # THEN at most 11 state transitions and 4 service calls, the batch binding included
    events = stack.engine.history(result.arn)
    entered = [name for name, kind in path(events) if kind.endswith("Entered")]
    assert result.output["status"] == "STARTED"
    assert len(entered) <= 11 and "Bind the batch to its window" in entered
    assert len(service_calls(events)) <= 4


def test_intake_bare_key_takes_the_ingestion_bucket(stack, event):
    event["s3_key"] = event["s3_key"].removeprefix("s3://mlbatch-example-ingest/")
    result = stack.intake(event)
    assert result.output["batch"] == BATCH


def test_intake_key_in_another_bucket_is_rejected_naming_the_ingestion_bucket(stack, event):
    # The builders may read only the ingestion bucket: a batch elsewhere would take a lock, start a
    # pipeline and fail in the builder with AccessDenied.
    event["s3_key"] = event["s3_key"].replace("mlbatch-example-ingest", "other-bucket")
    before = started(stack)

    result = stack.intake(event)

    assert (result.status, result.error) == ("FAILED", "Intake.InvalidS3Key")
    assert "other-bucket" in result.cause and "mlbatch-example-ingest" in result.cause
    assert stack.locks() == [] and started(stack) == before


# --- the lock -----------------------------------------------------------------------------

def test_intake_redelivered_event_is_suppressed(stack, event):
    first = stack.intake(event)
    before = started(stack)

    again = stack.intake(load_event("pipes_batch"))

    assert again.status == "SUCCEEDED"
    assert again.output == {
        "status": "DUPLICATE_SUPPRESSED", "batch": BATCH, "lock_key": LOCK_KEY, "window_adopted_from": None,
        "suppressed_by": {"status": "IN_PROGRESS", "attempts": "1", "mini_batch_id": "mb-000123",
                          "pipeline_execution_arn": first.output["pipeline_execution_arn"],
                          "note": again.output["suppressed_by"]["note"]},
        "how_to_rerun": again.output["how_to_rerun"]}
    assert "force" in again.output["how_to_rerun"] and "mlbatch replay" in again.output["how_to_rerun"]
    assert started(stack) == before
    assert stack.lock(LOCK_KEY)["owner_execution_arn"] == first.arn


@pytest.mark.parametrize("round_", range(3))
def test_intake_concurrent_deliveries_start_exactly_one_pipeline(stack, event, round_):
    event["timestamp"] = f"2024-03-01T00:05:0{round_}.5Z"
    before = started(stack)
    arns, lock = [], threading.Lock()

    def deliver():
        arn = stack.engine.start(stack.intake_arn, event)
        with lock:
            arns.append(arn)
    threads = [threading.Thread(target=deliver) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = [stack.engine.wait(a, timeout=120) for a in arns]

    statuses = sorted(r.output["status"] for r in results)
    assert statuses == ["DUPLICATE_SUPPRESSED"] * 49 + ["STARTED"]
    assert started(stack) == before + 1


def test_intake_failed_lock_is_reacquired(stack, event):
    first = stack.intake(event)
    stack.set_lock({**stack.lock(LOCK_KEY), "status": "FAILED", "error": "Pipeline.BuilderFailed",
                    "cause": "Delta Builder exited 1"})
    before = started(stack)

    again = stack.intake(event)

    assert again.output["status"] == "STARTED"
    assert again.output["pipeline_execution_arn"] != first.output["pipeline_execution_arn"]
    assert started(stack) == before + 1
    lock = stack.lock(LOCK_KEY)
    assert (lock["status"], lock["attempts"], lock["owner_execution_arn"]) == ("IN_PROGRESS", 2, again.arn)
    assert "error" not in lock and "cause" not in lock


def test_intake_succeeded_lock_suppresses_unless_forced(stack, event):
    stack.intake(event)
    stack.set_lock({**stack.lock(LOCK_KEY), "status": "SUCCEEDED"})
    before = started(stack)

    stack.set_lock({**stack.lock(LOCK_KEY), "status": "SUCCEEDED", "delta_job_arn": "arn:old-job",
                    "delta_output_uri": "s3://old/"})
    plain = stack.intake(event)
    forced = stack.intake(load_event("forced_rerun"))

    assert plain.output["status"] == "DUPLICATE_SUPPRESSED"
    assert forced.output["status"] == "STARTED"
    assert started(stack) == before + 1
    lock = stack.lock(LOCK_KEY)
    assert lock["status"] == "IN_PROGRESS"
    assert lock["reason"] == load_event("forced_rerun")["reason"]
    assert lock["attempts"] == 2
    assert "delta_job_arn" not in lock and "delta_output_uri" not in lock  # the old run's record is cleared


def test_intake_in_progress_lock_suppresses_even_when_forced(stack, event):
    stack.intake(event)
    before = started(stack)

    forced = stack.intake(load_event("forced_rerun"))

    assert forced.output["status"] == "DUPLICATE_SUPPRESSED"
    assert started(stack) == before
    assert stack.lock(LOCK_KEY)["attempts"] == 1


def test_intake_forced_run_takes_over_the_succeeded_lock_with_a_second_conditional_write(stack, event):
    # The first write's condition holds no `force` (DynamoDB compares attributes with values, not
    # two values): a forced run meets the SUCCEEDED lock, reads it, then takes it over.
    stack.intake(event)
    stack.set_lock({**stack.lock(LOCK_KEY), "status": "SUCCEEDED"})

    forced = stack.intake(load_event("forced_rerun"))

    entered = [name for name, kind in path(stack.engine.history(forced.arn)) if kind.endswith("Entered")]
    assert entered[-5:] == ["Acquire the window lock", "Read the existing lock", "Is the lock held by this mini-batch?",
                            "Take over the succeeded lock", "Start the pipeline"]
    assert forced.output["status"] == "STARTED"
    assert stack.lock(LOCK_KEY)["status"] == "IN_PROGRESS"


def test_intake_force_false_behaves_like_no_force(stack, event):
    stack.intake(event)
    stack.set_lock({**stack.lock(LOCK_KEY), "status": "SUCCEEDED"})
    result = stack.intake({**event, "force": False, "reason": "just checking"})
    assert result.output["status"] == "DUPLICATE_SUPPRESSED"


# --- errors: each named, none leaves a lock or starts anything -------------------------------

def _key(event, **parts):
    segs = event["s3_key"].removeprefix("s3://").split("/")
    names = ["bucket", "org1", "org2", "project", "yyyy", "mm", "dd", "batch", "file"]
    d = dict(zip(names, segs), **parts)
    return "s3://" + "/".join(d[n] for n in names)


LIVE = load_event("live_event")
BAD_EVENTS = [
    ("Intake.InvalidInput", {}),
    ("Intake.InvalidInput", "just a string"),
    ("Intake.InvalidInput", 42),
    ("Intake.InvalidInput", []),
    ("Intake.InvalidInput", {"s3_key": LIVE["s3_key"]}),
    ("Intake.InvalidInput", {"s3_key": 7, "timestamp": LIVE["timestamp"]}),
    ("Intake.InvalidInput", {**LIVE, "force": "yes"}),
    ("Intake.InvalidInput", {**LIVE, "reason": 5}),
    ("Intake.InvalidInput", {"body": "not json"}),
    ("Intake.InvalidInput", {"body": 5}),
    ("Intake.InvalidInput", {"Type": "Notification", "Message": "plain text"}),
    ("Intake.InvalidInput", {"Type": "SubscriptionConfirmation", "Message": json.dumps(LIVE)}),
    ("Intake.InvalidInput", [{"body": json.dumps(LIVE)}, {"body": json.dumps(LIVE)}]),
    ("Intake.InvalidInput", [{"body": {"s3_key": "x"}}]),
    ("Intake.InvalidInput", {"body": json.dumps({"hello": "world"})}),
    ("Intake.InvalidS3Key", {**LIVE, "s3_key": "s3://mlbatch-example-ingest/acme/netsec/traffic-anomaly/2024/03/01/part.json.gz"}),
    ("Intake.InvalidS3Key", {**LIVE, "s3_key": LIVE["s3_key"] + "/extra"}),
    ("Intake.InvalidS3Key", {**LIVE, "s3_key": LIVE["s3_key"].replace("/netsec/", "//")}),
    ("Intake.InvalidS3Key", {**LIVE, "s3_key": LIVE["s3_key"].replace("/netsec/", "/netsec//")}),
    ("Intake.InvalidS3Key", {**LIVE, "s3_key": LIVE["s3_key"] + "/"}),
    ("Intake.InvalidS3Key", {**LIVE, "s3_key": "s3:///acme/netsec/traffic-anomaly/2024/03/01/mb/part.json.gz"}),
    ("Intake.InvalidS3Key", {**LIVE, "s3_key": "/acme/netsec/traffic-anomaly/2024/03/01/mb/part.json.gz"}),
    ("Intake.InvalidS3Key", {**LIVE, "s3_key": _key(LIVE, dd="30", mm="02")}),
    ("Intake.InvalidS3Key", {**LIVE, "s3_key": _key(LIVE, yyyy="2023", mm="02", dd="29")}),
    ("Intake.InvalidS3Key", {**LIVE, "s3_key": _key(LIVE, mm="13")}),
    ("Intake.InvalidS3Key", {**LIVE, "s3_key": _key(LIVE, mm="3")}),
    ("Intake.InvalidS3Key", {**LIVE, "s3_key": _key(LIVE, yyyy="24")}),
    ("Intake.InvalidS3Key", {**LIVE, "s3_key": _key(LIVE, yyyy="1850")}),
    ("Intake.InvalidS3Key", {**LIVE, "s3_key": ""}),
    ("Intake.InvalidTimestamp", {**LIVE, "timestamp": "2024-03-01T00:05:07+02:00"}),
    ("Intake.InvalidTimestamp", {**LIVE, "timestamp": "2024-02-30T00:05:07Z"}),
    ("Intake.InvalidTimestamp", {**LIVE, "timestamp": "2024-03-01 00:05:07"}),
    ("Intake.InvalidTimestamp", {**LIVE, "timestamp": ""}),
    ("Config.ProjectNotFound", {**LIVE, "s3_key": _key(LIVE, project="no-such-project")}),
    ("Config.InvalidProjectDefaults", {**LIVE, "s3_key": _key(LIVE, project="half-configured")}),
    ("Config.InvalidProjectDefaults", {**LIVE, "s3_key": _key(LIVE, project="hash-version")}),
]


@pytest.fixture
def misconfigured(stack):
    stack.put_defaults({"project_name": "half-configured", "feature_spec_version": "v1",
                        "traffic_input": {"field_mapping": {"source_ip": "src"}}})
    stack.put_defaults({**load_event("project_defaults"), "project_name": "hash-version",
                        "feature_spec_version": "v1#2"})
    return stack


@pytest.mark.parametrize("error, bad", BAD_EVENTS, ids=[f"{e}-{i}" for i, (e, _) in enumerate(BAD_EVENTS)])
def test_intake_bad_event_fails_with_its_named_error_and_leaves_nothing(misconfigured, error, bad):
    stack = misconfigured
    before = started(stack)

    result = stack.intake(bad)

    assert (result.status, result.error) == ("FAILED", error), result.cause
    assert result.cause and "replay" in result.cause.lower()
    assert stack.locks() == []
    assert started(stack) == before


def test_intake_other_mini_batch_in_the_same_window_is_a_collision(stack, event):
    first = stack.intake(event)
    other = copy.deepcopy(event)
    other["s3_key"] = _key(event, batch="mb-000999")
    before = started(stack)

    result = stack.intake(other)

    assert (result.status, result.error) == ("FAILED", "Intake.WindowCollision")
    assert "mb-000123" in result.cause and "mb-000999" in result.cause
    assert stack.lock(LOCK_KEY)["owner_execution_arn"] == first.arn
    assert started(stack) == before


@pytest.fixture
def intake_without_pipeline(stack):
    """An intake whose pipeline state machine does not exist: every start fails."""
    overrides = {k: v.replace("mlbatch-pipeline", "missing-pipeline")
                 for k, v in stack.template.substitutions("IntakeStateMachine").items()
                 if k.startswith("Pipeline")}
    name = "intake-without-pipeline"
    existing = [m["stateMachineArn"] for m in stack.engine.sfn.list_state_machines()["stateMachines"]
                if m["name"] == name]
    return existing[0] if existing else stack.engine.create_machine(
        name, stack.template.definition("IntakeStateMachine", overrides))


def test_intake_failed_start_deletes_a_new_lock(stack, event, intake_without_pipeline):
    result = stack.engine.run(intake_without_pipeline, event)

    assert (result.status, result.error) == ("FAILED", "Intake.PipelineStartFailed")
    assert "missing-pipeline" in result.cause
    assert stack.locks() == []


def test_intake_failed_start_returns_a_reacquired_lock_to_failed_without_counting_a_run(
        stack, event, intake_without_pipeline):
    stack.intake(event)
    stack.set_lock({**stack.lock(LOCK_KEY), "status": "FAILED"})

    result = stack.engine.run(intake_without_pipeline, event)

    assert result.error == "Intake.PipelineStartFailed"
    lock = stack.lock(LOCK_KEY)
    # attempts counts pipeline runs: one ran, the second never started (docs/failure-paths.md)
    assert (lock["status"], lock["attempts"], lock["owner_execution_arn"]) == ("FAILED", 1, result.arn)
    assert lock["error"].startswith("StepFunctions.") and "no run was counted" in lock["cause"]


def test_intake_failed_start_whose_release_is_throttled_says_the_lock_is_held(stack, event, intake_without_pipeline):
    # the start fails, and deleting the new lock is throttled past its retries (MockConfigFile)
    result = stack.engine.run(intake_without_pipeline + "#ReleaseThrottled", event)

    assert result.error == "Intake.PipelineStartFailed"
    assert "still IN_PROGRESS" in result.cause and "ProvisionedThroughputExceededException" in result.cause
    assert "was released" not in result.cause and "mlbatch audit --manifest" in result.cause
    assert stack.lock(LOCK_KEY)["status"] == "IN_PROGRESS"


def test_intake_malformed_json_body_fails_without_a_lock(stack):
    # Braced but malformed JSON passes the cheap shape check and fails in
    # States.StringToJson, which nothing can catch (docs/errors.md). Nothing is locked.
    result = stack.intake({"body": "{not json}"})
    assert result.status == "FAILED"
    assert stack.locks() == []


# --- lock items mlbatch did not write (a table adopted from another orchestrator) -----------------

def _raw_lock(stack, item: dict) -> None:
    """Put a lock item as given in DynamoDB's typed form (types mlbatch never writes included)."""
    stack.engine.dynamodb.put_item(TableName=stack.table("LockTable"), Item={"lock_key": {"S": LOCK_KEY}, **item})


FOREIGN_DUPLICATES = [
    # (lock item attributes besides lock_key, suppressed_by expected)
    ({"status": {"S": "SUCCEEDED"}, "mini_batch_id": {"S": "mb-000123"}},
     {"status": "SUCCEEDED", "mini_batch_id": "mb-000123", "pipeline_execution_arn": None, "attempts": None}),
    ({"status": {"S": "SUCCEEDED"}},
     {"status": "SUCCEEDED", "mini_batch_id": None, "pipeline_execution_arn": None, "attempts": None}),
    ({}, {"status": "unknown", "mini_batch_id": None, "pipeline_execution_arn": None, "attempts": None}),
    ({"status": {"S": "DONE"}, "mini_batch_id": {"S": "mb-other"}, "attempts": {"N": "4"}},
     {"status": "DONE", "mini_batch_id": "mb-other", "pipeline_execution_arn": None, "attempts": "4"}),
    ({"status": {"N": "2"}, "mini_batch_id": {"S": "mb-000123"}, "pipeline_execution_arn": {"S": "arn:x"}},
     {"status": "unknown", "mini_batch_id": "mb-000123", "pipeline_execution_arn": "arn:x", "attempts": None}),
]


@pytest.mark.parametrize("item, suppressed_by", FOREIGN_DUPLICATES, ids=[
    "same-batch-no-mlbatch-fields", "no-mini-batch-id", "key-only", "unknown-status", "status-not-a-string"])
def test_intake_lock_item_without_mlbatch_attributes_is_a_named_duplicate(stack, event, item, suppressed_by):
    _raw_lock(stack, item)
    before_item = stack.engine.dynamodb.get_item(TableName=stack.table("LockTable"),
                                                 Key={"lock_key": {"S": LOCK_KEY}})["Item"]
    before = started(stack)

    result = stack.intake(event)

    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert result.output["status"] == "DUPLICATE_SUPPRESSED"
    got = result.output["suppressed_by"]
    assert {k: got[k] for k in suppressed_by} == suppressed_by
    assert "note" in got and "how_to_rerun" in result.output
    assert started(stack) == before
    after_item = stack.engine.dynamodb.get_item(TableName=stack.table("LockTable"), Key={"lock_key": {"S": LOCK_KEY}})
    assert after_item["Item"] == before_item  # nothing was changed


def test_intake_foreign_lock_of_another_batch_in_progress_is_a_collision(stack, event):
    _raw_lock(stack, {"status": {"S": "IN_PROGRESS"}, "mini_batch_id": {"S": "mb-other"}})
    result = stack.intake(event)
    assert result.error == "Intake.WindowCollision"
    assert "mb-other" in result.cause and "mb-000123" in result.cause


def test_intake_foreign_failed_lock_without_attempts_is_acquired(stack, event):
    _raw_lock(stack, {"status": {"S": "FAILED"}, "legacy_owner": {"S": "airflow"}})
    result = stack.intake(event)
    assert result.output["status"] == "STARTED"
    lock = stack.lock(LOCK_KEY)
    assert (lock["status"], lock["attempts"], lock["legacy_owner"]) == ("IN_PROGRESS", 1, "airflow")  # only adds


def test_intake_foreign_lock_of_the_wrong_types_fails_with_a_named_error(stack, event):
    # attempts stored as a string: the acquisition's ADD cannot count it
    _raw_lock(stack, {"status": {"S": "FAILED"}, "attempts": {"S": "3"}})
    before = started(stack)

    result = stack.intake(event)

    assert result.error == "Intake.LockWriteFailed"
    assert LOCK_KEY in result.cause and "mlbatch locks show" in result.cause
    assert started(stack) == before
