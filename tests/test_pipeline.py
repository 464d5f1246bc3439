"""The pipeline and the lock's life cycle, with the builders mocked (tests/mocks/MockConfigFile.json)."""
from __future__ import annotations

import hashlib
import json
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlbatch.engine.harness import path
from mlbatch.render import environment, render_text
from mlbatch.sandbox import EXAMPLE_PARAMETERS, load_event
from mlbatch.settings import ROOT

JOB_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
LOCK_KEY = "traffic-anomaly#fs-2024-06#2024-02-29T23:53:00Z#2024-03-01T00:05:07.123Z"


def run_live(sandbox, case, event):
    """Deliver an event to an intake whose pipeline runs test case `case`; wait for both."""
    sandbox.use_intake("pipeline", case)
    intake = sandbox.intake(event)
    assert intake.status == "SUCCEEDED", intake.cause
    if intake.output["status"] != "STARTED":
        return intake, None
    return intake, sandbox.engine.wait(intake.output["pipeline_execution_arn"], timeout=120)


def processing_requests(sandbox, execution_arn) -> dict[str, dict]:
    """The CreateProcessingJob requests of a pipeline execution, by builder, from its history."""
    events = sandbox.engine.history(execution_arn)
    requests = {}
    for i, e in enumerate(events):
        if e["type"] == "TaskScheduled" and e["taskScheduledEventDetails"]["resource"] == "createProcessingJob.sync":
            params = json.loads(e["taskScheduledEventDetails"]["parameters"])
            requests[params["ProcessingJobName"].split("-")[0]] = params
    return requests


# --- the life cycle -------------------------------------------------------------------------

def test_event_through_intake_and_pipeline_ends_with_the_lock_succeeded(live, event):
    intake, pipeline = run_live(live, "HappyPath", event)

    assert pipeline.status == "SUCCEEDED", pipeline.cause
    lock = live.lock(LOCK_KEY)
    assert lock["status"] == "SUCCEEDED"
    assert lock["pipeline_execution_arn"] == pipeline.arn == intake.output["pipeline_execution_arn"]
    assert lock["delta_job_arn"].endswith("processing-job/delta-mocked")
    assert lock["pair_counts_job_arn"].endswith("processing-job/pairs-mocked")
    prefix = "s3://mlbatch-example-features/features/traffic-anomaly/fs-2024-06/20240229T2353-"
    assert lock["delta_output_uri"].startswith(prefix) and lock["delta_output_uri"].endswith("/delta/")
    assert lock["pair_counts_output_uri"] == lock["delta_output_uri"].replace("/delta/", "/pair_counts/")
    assert pipeline.output == {
        "status": "SUCCEEDED", "lock_key": LOCK_KEY,
        "delta_job_arn": lock["delta_job_arn"], "delta_output_uri": lock["delta_output_uri"],
        "pair_counts_job_arn": lock["pair_counts_job_arn"], "pair_counts_output_uri": lock["pair_counts_output_uri"],
    }
    entered = [s for s, t in path(live.engine.history(pipeline.arn)) if t.endswith("Entered")]
    assert entered[:8] == ["Is the pipeline input complete?", "Read the window lock", "Does this run hold the lock?",
                           "Get the project's builder settings",
                           "Does the project override builder settings?", "Resolve the builder settings",
                           "Write the batch config", "Run the builders"]
    assert set(entered[8:10]) == {"Run the Delta Builder", "Run the Pair Counts Builder"}
    assert entered[10:] == ["Mark the lock succeeded", "Report the outputs"]


@pytest.mark.parametrize("case, reason", [("DeltaBuilderFails", "no parquet files under input"),
                                          ("PairCountsFails", "column 'src_addr' not found")])
def test_builder_failure_marks_the_lock_failed_and_redelivery_runs_it_again(live, event, case, reason):
    _, failed = run_live(live, case, event)

    assert (failed.status, failed.error) == ("FAILED", "Pipeline.BuildFailed")
    assert reason in failed.cause and "replay" in failed.cause
    lock = live.lock(LOCK_KEY)
    assert (lock["status"], lock["error"]) == ("FAILED", "States.TaskFailed")
    assert reason in lock["cause"]

    again, pipeline = run_live(live, "HappyPath", event)

    assert again.output["status"] == "STARTED"
    assert pipeline.status == "SUCCEEDED"
    lock = live.lock(LOCK_KEY)
    assert (lock["status"], lock["attempts"]) == ("SUCCEEDED", 2)
    assert "error" not in lock and "cause" not in lock


def test_throttled_builder_is_retried_until_it_succeeds(live, event):
    _, pipeline = run_live(live, "ThrottledThenSucceeds", event)

    assert pipeline.status == "SUCCEEDED"
    outcomes = [(e["type"], (e.get("taskFailedEventDetails") or e.get("taskSucceededEventDetails"))["error"
                 if e["type"] == "TaskFailed" else "resource"]) for e in live.engine.history(pipeline.arn)
                if e["type"] in ("TaskFailed", "TaskSucceeded")]
    jobs = [o for o in outcomes if o[1] in ("createProcessingJob.sync", "SageMaker.AmazonSageMakerException")]
    assert sorted(jobs) == [("TaskFailed", "SageMaker.AmazonSageMakerException"),
                            ("TaskSucceeded", "createProcessingJob.sync"), ("TaskSucceeded", "createProcessingJob.sync")]
    assert live.lock(LOCK_KEY)["status"] == "SUCCEEDED"


def test_failed_jobs_and_timeouts_are_not_retried_throttling_is_briefly():
    # AWS raises SageMaker throttling under the base class, which also carries validation errors:
    # a few attempts only. A failed job (States.TaskFailed) or a builder that outlasted its wait
    # (States.Timeout) is never retried: the window is marked FAILED.
    pipeline = json.loads((ROOT / "asl" / "pipeline.asl.json").read_text())
    for branch in pipeline["States"]["Run the builders"]["Branches"]:
        (task,) = branch["States"].values()
        retried = {e for r in task["Retry"] for e in r["ErrorEquals"]}
        assert retried == {"SageMaker.AmazonSageMakerException", "SageMaker.ResourceLimitExceededException"}
        assert sum(r["MaxAttempts"] for r in task["Retry"]) <= 5


def test_builder_that_outlasts_its_wait_marks_the_window_failed(live, event):
    _, pipeline = run_live(live, "DeltaBuilderTimesOut", event)

    assert (pipeline.status, pipeline.error) == ("FAILED", "Pipeline.BuildFailed")
    lock = live.lock(LOCK_KEY)
    assert (lock["status"], lock["error"]) == ("FAILED", "States.Timeout")
    scheduled = [e for e in live.engine.history(pipeline.arn) if e["type"] == "TaskScheduled"
                 and e["taskScheduledEventDetails"]["resource"] == "createProcessingJob.sync"]
    # how long the pipeline waits: the builder's max runtime (3600) plus the provisioning margin (900)
    assert {e["taskScheduledEventDetails"].get("timeoutInSeconds") for e in scheduled} == {4500}


@pytest.mark.parametrize("status", ["FAILED", "ABORTED", "TIMED_OUT"])
def test_pipeline_ending_without_finalizing_is_released_by_lock_release(live, event, status):
    # A pipeline execution that owns an IN_PROGRESS lock ends without finalizing it. (The
    # engine cannot time out quickly and its StopExecution during a Parallel is unreliable,
    # so the execution fails before its Catch and the event carries the status under test.)
    name = f"ends-{status.lower()}-{time.time_ns()}"
    arn = live.pipeline_arn.replace(":stateMachine:", ":execution:") + ":" + name
    live.set_lock({"lock_key": LOCK_KEY, "status": "IN_PROGRESS", "pipeline_execution_arn": arn,
                   "mini_batch_id": "mb-000123", "attempts": 1})
    assert live.engine.run(live.pipeline_arn, {"lock_key": LOCK_KEY}, name=name).status == "FAILED"

    (release,) = live.emit_status_change(arn, status)
    result = live.engine.wait(release)

    assert result.output == {"released": True, "lock_key": LOCK_KEY, "execution_arn": arn,
                             "execution_status": status}
    lock = live.lock(LOCK_KEY)
    assert (lock["status"], lock["error"]) == ("FAILED", f"Pipeline.{status}")
    assert arn in lock["cause"] and "replay" in lock["cause"]


def test_lock_release_leaves_another_executions_lock_alone(live, event):
    _, pipeline = run_live(live, "HappyPath", event)
    live.set_lock({**live.lock(LOCK_KEY), "status": "IN_PROGRESS"})
    other = live.engine.start(live.pipeline_arn + "#PairCountsFails", {"lock_key": LOCK_KEY})
    assert live.engine.wait(other).error == "Pipeline.InvalidInput"

    (release,) = live.emit_status_change(other)
    result = live.engine.wait(release)

    assert result.output["released"] is False
    assert live.lock(LOCK_KEY)["status"] == "IN_PROGRESS"
    assert live.lock(LOCK_KEY)["pipeline_execution_arn"] == pipeline.arn


def test_lock_release_leaves_a_final_lock_alone(live, event):
    _, pipeline = run_live(live, "HappyPath", event)

    (release,) = live.emit_status_change(pipeline.arn, "FAILED")

    assert live.engine.wait(release).output["released"] is False
    assert live.lock(LOCK_KEY)["status"] == "SUCCEEDED"


def test_status_changes_of_other_machines_and_successes_start_nothing(live, event):
    intake, pipeline = run_live(live, "HappyPath", event)
    assert live.emit_status_change(intake.arn) == []
    assert live.emit_status_change(pipeline.arn) == []  # SUCCEEDED is not in the rule


def test_lock_release_rejects_a_non_status_change_event(live):
    result = live.engine.run(live.arn("LockReleaseStateMachine"), {"hello": "world"})
    assert result.error == "LockRelease.InvalidEvent"


# --- runtime parameters -----------------------------------------------------------------------

OVERRIDES = {"delta_builder": {"instance_type": "ml.m5.4xlarge", "instance_count": 3,
                               "image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/delta-builder:canary"},
             "pair_counts_builder": {"max_runtime_seconds": 900}}
EVENTS = [
    # (project defaults extra attributes, s3 key, timestamp)
    ({}, "s3://mlbatch-example-ingest/acme/netsec/traffic-anomaly/2024/03/01/mb-000123/part-0000.json.gz",
     "2024-03-01T00:05:07.123+00:00"),
    ({}, "acme/netsec/traffic-anomaly/2023/12/31/batch_2359/x.json.gz", "2023-12-31T23:59:59Z"),
    (OVERRIDES, "s3://mlbatch-example-ingest/org.a/org_b/tuned-project/2025/01/01/b-1/f.json.gz", "2025-01-01T00:00:00"),
    ({"delta_builder": {"volume_size_gb": 100}}, "o1/o2/Proj.With.Dots/2024/02/29/mb/f", "2024-02-29T12:38:00.5Z"),
]


@pytest.mark.parametrize("extra, key, timestamp", EVENTS)
def test_processing_requests_carry_exactly_the_resolved_parameters(live, extra, key, timestamp):
    project = key.removeprefix("s3://").split("/")[-6]
    defaults = {**load_event("project_defaults"), "project_name": project, **extra}
    live.put_defaults(defaults)
    intake, pipeline = run_live(live, "HappyPath", {"s3_key": key, "timestamp": timestamp})
    assert pipeline.status == "SUCCEEDED", pipeline.cause
    batch = intake.output["batch"]
    traffic_prefix = json.loads(live.engine.sfn.describe_execution(
        executionArn=pipeline.arn)["input"])["traffic_input"]["s3_prefix"]

    requests = processing_requests(live, pipeline.arn)

    assert set(requests) == {"delta", "pairs"}
    lock = live.lock(intake.output["lock_key"])
    window = lock["delta_output_uri"].removesuffix("delta/")
    config_uri = window + "batch.json"
    bucket, _, key = config_uri.removeprefix("s3://").partition("/")
    config = json.loads(live.engine.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
    pipeline_input = json.loads(live.engine.sfn.describe_execution(executionArn=pipeline.arn)["input"])
    # the batch config holds the pipeline input as resolved, and where each builder writes
    assert config == {**pipeline_input, "pipeline_execution_arn": pipeline.arn,
                      "outputs": {"delta": lock["delta_output_uri"], "pair_counts": lock["pair_counts_output_uri"]}}
    for short, key_ in (("delta", "delta"), ("pairs", "pair_counts")):
        r = requests[short]
        settings_ = {**{"image_uri": EXAMPLE_PARAMETERS["DeltaBuilderImageUri" if short == "delta"
                                                       else "PairCountsBuilderImageUri"],
                        "instance_type": "ml.m5.xlarge", "instance_count": 1, "volume_size_gb": 30,
                        "max_runtime_seconds": 3600},
                     **extra.get(f"{key_}_builder", {})}
        assert JOB_NAME.fullmatch(r["ProcessingJobName"]) and len(r["ProcessingJobName"]) <= 63
        assert r["RoleArn"] == live.template.arn("ProcessingRole")
        assert r["AppSpecification"]["ImageUri"] == settings_["image_uri"]
        assert r["ProcessingResources"]["ClusterConfig"] == {
            "InstanceType": settings_["instance_type"], "InstanceCount": settings_["instance_count"],
            "VolumeSizeInGB": settings_["volume_size_gb"]}
        assert r["StoppingCondition"] == {"MaxRuntimeInSeconds": settings_["max_runtime_seconds"]}
        inputs = {i["InputName"]: i["S3Input"] for i in r["ProcessingInputs"]}
        assert inputs["batch"]["S3Uri"] == batch["mini_batch_s3_prefix"]
        assert inputs["batch"]["LocalPath"] == "/opt/ml/processing/input/batch"
        assert inputs["config"]["S3Uri"] == config_uri
        assert inputs["config"]["LocalPath"] == "/opt/ml/processing/input/config"
        (out,) = r["ProcessingOutputConfig"]["Outputs"]
        assert out["S3Output"]["S3Uri"] == lock[f"{key_}_output_uri"] == config["outputs"][key_]
        assert out["S3Output"]["S3Uri"].startswith(
            f"s3://mlbatch-example-features/features/{project}/{batch['feature_spec_version']}/")
        # only values of bounded length in the request; everything else is in the batch config
        assert r["Environment"] == {"MLBATCH_CONFIG": "/opt/ml/processing/input/config/batch.json",
                                    "MLBATCH_BUILDER": key_, "MLBATCH_WINDOW_START": batch["batch_start_ts_iso"],
                                    "MLBATCH_SOURCE": "inference",
                                    "MLBATCH_LOCK_KEY_MD5": hashlib.md5(lock["lock_key"].encode()).hexdigest()}
        assert r["AppSpecification"]["ContainerArguments"] == [
            "--config", "/opt/ml/processing/input/config/batch.json", "--builder", key_,
            "--input", "/opt/ml/processing/input/batch", "--output", "/opt/ml/processing/output"]
    # both builders read the very same folder: the invariant the identity promises
    assert traffic_prefix + "/" + batch["mini_batch_id"] + "/" == batch["mini_batch_s3_prefix"]
    assert requests["pairs"]["ProcessingInputs"][0]["S3Input"]["S3Uri"] == batch["mini_batch_s3_prefix"]
    assert config["traffic_input"]["field_mapping"] == defaults["traffic_input"]["field_mapping"]


def test_rerun_of_a_window_writes_to_the_same_place_under_new_job_names(live, event):
    _, first = run_live(live, "HappyPath", event)
    live.set_lock({**live.lock(LOCK_KEY), "status": "FAILED"})
    _, second = run_live(live, "HappyPath", event)

    a, b = processing_requests(live, first.arn), processing_requests(live, second.arn)

    for short in ("delta", "pairs"):
        assert a[short]["ProcessingOutputConfig"] == b[short]["ProcessingOutputConfig"]
        assert a[short]["ProcessingJobName"] != b[short]["ProcessingJobName"]


@pytest.fixture(scope="module")
def job_name_machine(sandbox):
    env = environment([ROOT / "tests" / "machines"])
    text = render_text("job_names.asl.json.j2", env)
    text = text.replace("${OutputPrefix}", "features").replace("${ProvisioningMarginSeconds}", "900")
    return sandbox.engine.create_machine("job-names", text)


_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ \t"


@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(projects=st.lists(st.one_of(
    st.text(min_size=1, max_size=100),
    st.text(alphabet=_PUNCTUATION, min_size=1, max_size=100),
    st.text(min_size=100, max_size=100),
    st.text(alphabet=_PUNCTUATION + "aZ09", min_size=100, max_size=100)), min_size=200, max_size=200))
def test_job_names_are_valid_for_any_project_name(sandbox, job_name_machine, projects):
    inputs = [{"lock_key": f"{p}#fs-1#2024-03-01T00:08:00Z#2024-03-01T00:10:00Z",
               "batch_start_ts_iso": "2024-03-01T00:08:00Z"} for p in projects]

    result = sandbox.engine.run(job_name_machine, {"inputs": inputs}, timeout=120)

    names = [n for item in result.output for n in item.values()]
    assert len(names) == 400
    bad = [n for n in names if not (JOB_NAME.fullmatch(n) and len(n) <= 63)]
    assert not bad
    assert len(set(names)) == len({p for p in projects}) * 2  # distinct windows keys, distinct names


# --- a stale pipeline never touches a lock a newer run owns ------------------------------------

def _pipeline_input(sandbox) -> dict:
    defaults = load_event("project_defaults")
    return {"project_name": "traffic-anomaly", "org1": "acme", "org2": "netsec", "mini_batch_id": "mb-000123",
            "mini_batch_s3_prefix": "s3://mlbatch-example-ingest/acme/netsec/traffic-anomaly/2024/03/01/mb-000123/",
            "feature_spec_version": "fs-2024-06", "batch_start_ts_iso": "2024-02-29T23:53:00Z",
            "batch_end_ts_iso": "2024-03-01T00:05:07.123Z", "source": "inference", "lock_key": LOCK_KEY,
            "traffic_input": {"s3_prefix": "s3://mlbatch-example-ingest/acme/netsec/traffic-anomaly/2024/03/01",
                              "field_mapping": defaults["traffic_input"]["field_mapping"]}}


@pytest.mark.parametrize("case, status", [("HappyPath", "IN_PROGRESS"), ("DeltaBuilderFails", "IN_PROGRESS"),
                                          ("HappyPath", "SUCCEEDED"), ("DeltaBuilderFails", "FAILED")])
def test_stale_pipeline_ends_lock_lost_and_leaves_the_newer_runs_lock_alone(live, case, status):
    # GIVEN the window was re-acquired by a newer pipeline execution (which may have finished)
    newer = live.pipeline_arn.replace(":stateMachine:", ":execution:") + ":newer-run"
    lock = {"lock_key": LOCK_KEY, "status": status, "pipeline_execution_arn": newer, "mini_batch_id": "mb-000123",
            "attempts": 2, "error": "kept", "updated_at": "2024-03-01T00:10:00Z"}
    live.set_lock(lock)

    # WHEN the older execution finishes (its builders succeed, or one fails)
    stale = live.engine.run(live.pipeline_arn + f"#{case}", _pipeline_input(live), name=f"stale-{time.time_ns()}",
                            timeout=60)

    # THEN it ends Pipeline.LockLost on both paths, and the lock is exactly as the newer run left it
    assert (stale.status, stale.error) == ("FAILED", "Pipeline.LockLost"), stale.cause
    assert live.lock(LOCK_KEY) == lock


def test_pipeline_never_finalizes_a_lock_written_by_another_orchestrator(live):
    # a lock item with only lock_key and a status: no pipeline_execution_arn to own it by
    live.engine.dynamodb.put_item(TableName=live.table("LockTable"),
                                  Item={"lock_key": {"S": LOCK_KEY}, "status": {"S": "IN_PROGRESS"}})

    result = live.engine.run(live.pipeline_arn + "#HappyPath", _pipeline_input(live), timeout=60)

    assert result.error == "Pipeline.LockLost"
    assert live.lock(LOCK_KEY) == {"lock_key": LOCK_KEY, "status": "IN_PROGRESS"}


@pytest.mark.parametrize("item", [{"status": {"S": "IN_PROGRESS"}}, {}, {"status": {"S": "RUNNING"},
                                                                           "pipeline_execution_arn": {"S": "x"}}])
def test_lock_release_leaves_a_lock_it_did_not_acquire_alone(live, item):
    name = f"foreign-{time.time_ns()}"
    arn = live.pipeline_arn.replace(":stateMachine:", ":execution:") + ":" + name
    live.engine.dynamodb.put_item(TableName=live.table("LockTable"), Item={"lock_key": {"S": LOCK_KEY}, **item})
    assert live.engine.run(live.pipeline_arn, {"lock_key": LOCK_KEY}, name=name).status == "FAILED"

    (release,) = live.emit_status_change(arn, "ABORTED")
    result = live.engine.wait(release)

    assert result.status == "SUCCEEDED" and result.output["released"] is False
    raw = live.engine.dynamodb.get_item(TableName=live.table("LockTable"), Key={"lock_key": {"S": LOCK_KEY}})["Item"]
    assert raw == {"lock_key": {"S": LOCK_KEY}, **item}
