"""The backfill on the embedded engine: one pipeline start per unit, under the live flow's lock."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import time

import boto3
import pytest

from mlbatch.cli import main
from mlbatch.items import from_item
from mlbatch.sandbox import EVENTS


def unit(i: int, project="traffic-anomaly", fsv="fs-2024-06") -> dict:
    """Unit i: its own folder and window (one minute apart, from 2024-03-01T00:08)."""
    t = dt.datetime(2024, 3, 1, 0, 8) + dt.timedelta(minutes=15 * i)
    day = f"{t:%Y/%m/%d}"
    end = t + dt.timedelta(minutes=1, seconds=i % 60)
    return {"project_name": project, "org1": "acme", "org2": "netsec", "mini_batch_id": f"mb-{i:05d}",
            "mini_batch_s3_prefix": f"s3://mlbatch-example-ingest/acme/netsec/{project}/{day}/mb-{i:05d}/",
            "feature_spec_version": fsv, "batch_start_ts_iso": f"{t:%Y-%m-%dT%H:%M:00Z}",
            "batch_end_ts_iso": f"{end:%Y-%m-%dT%H:%M:%SZ}", "source": "backfill",
            "representative_key": f"acme/netsec/{project}/{day}/mb-{i:05d}/part-0.json.gz",
            "representative_last_modified": f"{end:%Y-%m-%dT%H:%M:%SZ}"}


def lock_key(u: dict) -> str:
    return "#".join([u["project_name"], u["feature_spec_version"], u["batch_start_ts_iso"], u["batch_end_ts_iso"]])


def write_manifest(sb, key: str, units: list[dict]) -> dict:
    bucket = sb.deployment.buckets["ArtifactsBucket"]
    sb.engine.client("s3").put_object(Bucket=bucket, Key=key, Body="".join(json.dumps(u) + "\n" for u in units))
    return {"bucket": bucket, "key": key}


@pytest.fixture
def backfill(live):
    return live.backfill_variant("HappyPath")


def pipeline_starts(sb) -> int:
    return len(sb.engine.executions(sb.pipeline_arn))


OUTCOMES = ("started", "suppressed", "collided", "invalid", "failed", "poisoned", "uncounted")


def outcomes(result) -> dict:
    """The backfill's counts that are not zero, plus `units`; they always add up."""
    out = result.output
    assert sum(out[k] for k in OUTCOMES) == out["units"], out
    return {"units": out["units"], **{k: out[k] for k in OUTCOMES if out[k]}}


def run_record(sb, result) -> dict:
    """The run's record, with `failures`: its units not started by manifest line."""
    pages = sb.engine.dynamodb.get_paginator("query").paginate(
        TableName=sb.table("BackfillRunsTable"), KeyConditionExpression="run_id = :r",
        ExpressionAttributeValues={":r": {"S": result.output["run_id"]}})
    items = [from_item(i) for page in pages for i in page["Items"]]
    (record,) = [i for i in items if i["entry"] == "run"]
    return {**record, "failures": {i["entry"].removeprefix("unit#"): i for i in items if i["entry"] != "run"}}


def test_backfill_manifest_starts_one_pipeline_per_unit_and_a_rerun_starts_none(live, backfill):
    units = [unit(i) for i in range(80)]
    manifest = write_manifest(live, "manifests/80.jsonl", units)
    before = pipeline_starts(live)

    first = live.engine.run(backfill, {"manifest": manifest, "max_concurrency": 16}, timeout=600)

    assert first.status == "SUCCEEDED", first.cause
    assert outcomes(first) == {"units": 80, "started": 80}
    assert pipeline_starts(live) == before + 80
    locks = {lock["lock_key"]: lock for lock in live.locks()}
    assert {lock_key(u) for u in units} <= set(locks)
    assert all(locks[lock_key(u)]["status"] == "SUCCEEDED" and locks[lock_key(u)]["source"] == "backfill"
               for u in units)

    again = live.engine.run(backfill, {"manifest": manifest, "max_concurrency": 16}, timeout=600)

    assert outcomes(again) == {"units": 80, "suppressed": 80}
    assert pipeline_starts(live) == before + 80


def test_backfill_retries_failed_windows_and_skips_running_ones(live, backfill):
    units = [unit(i) for i in range(3)]
    live.engine.run(backfill, {"units": units}, timeout=120)
    live.set_lock({**live.lock(lock_key(units[0])), "status": "FAILED"})
    live.set_lock({**live.lock(lock_key(units[1])), "status": "IN_PROGRESS"})

    again = live.engine.run(backfill, {"units": units}, timeout=120)

    assert outcomes(again) == {"units": 3, "started": 1, "suppressed": 2}
    assert live.lock(lock_key(units[0]))["attempts"] == 2


def test_live_event_during_a_backfill_shares_the_lock(live, backfill):
    units = [unit(i) for i in range(60)]
    target = units[45]
    event = {"s3_key": target["mini_batch_s3_prefix"].replace("s3://mlbatch-example-ingest/", "") + "part-0.json.gz",
             "timestamp": target["batch_end_ts_iso"]}
    live.use_intake("pipeline", "HappyPath")
    before = pipeline_starts(live)

    run = live.engine.start(backfill, {"units": units, "max_concurrency": 4})
    intake = live.intake(event)
    result = live.engine.wait(run, timeout=300)

    assert intake.status == "SUCCEEDED" and intake.output["lock_key"] == lock_key(target)
    assert result.output["started"] + result.output["suppressed"] == 60
    assert pipeline_starts(live) == before + 60  # the window ran once, by whichever came first
    assert (intake.output["status"] == "STARTED") == (result.output["suppressed"] == 1)


def test_backfill_counts_a_unit_whose_start_fails_and_runs_the_others(live, backfill):
    units = [unit(i) for i in range(5)]
    name = f"bf-{time.time_ns()}"
    run_arn = backfill.replace(":stateMachine:", ":execution:") + ":" + name
    bad = units[2]
    taken = f"{bad['batch_start_ts_iso'][:13]}{bad['batch_start_ts_iso'][14:16]}-" + hashlib.md5(
        f"{bad['project_name']}|{bad['feature_spec_version']}|{bad['batch_end_ts_iso']}|{run_arn}".encode()).hexdigest()
    # an execution already holds the name this unit's pipeline run will ask for
    live.engine.run(live.pipeline_arn + "#HappyPath", {"other": "input"}, name=taken)

    result = live.engine.run(backfill, {"units": units}, name=name, timeout=120)

    assert outcomes(result) == {"units": 5, "started": 4, "failed": 1}
    assert live.lock(lock_key(bad)) is None  # the lock it took was released
    (record,) = run_record(live, result)["failures"].values()
    assert record["outcome"] == "FAILED" and record["lock_key"] == lock_key(bad)
    assert record["error"].startswith("StepFunctions.")
    assert all(live.lock(lock_key(u))["status"] == "SUCCEEDED" for u in units if u is not bad)


def test_backfill_counts_failed_pipelines_and_invalid_units(live):
    failing = live.backfill_variant("DeltaBuilderFails")
    units = [unit(i) for i in range(3)] + [{"project_name": "traffic-anomaly"}]

    result = live.engine.run(failing, {"units": units}, timeout=120)

    assert outcomes(result) == {"units": 4, "failed": 3, "invalid": 1}
    assert all(live.lock(lock_key(u))["status"] == "FAILED" for u in units[:3])
    failures = run_record(live, result)["failures"]
    assert failures["3"]["error"] == "Backfill.InvalidUnit"
    assert {failures[str(i)]["error"] for i in range(3)} == {"States.TaskFailed"}


def test_backfill_rejects_an_unknown_input(live, backfill):
    for bad in [{}, {"units": []}, {"manifest": {"bucket": "b"}}, {"from": "2024-01-01"},
                {"sweep": {"days": "two", "until": "2024-01-01T00:00:00Z"}}, {"units": [{}], "max_attempts": "3"}]:
        result = live.engine.run(backfill, bad)
        assert result.error == "Backfill.InvalidInput", bad


def test_backfill_date_range_runs_the_extractor_then_its_manifest(live):
    # what the extractor job does, done here: extract from moto S3 into the run's manifest key
    from moto.s3.models import s3_backends
    s3 = boto3.client("s3", region_name="us-east-1")
    ingest = live.template.parameters["IngestionBucketName"]
    for i in range(3):
        key = f"acme/netsec/traffic-anomaly/2024/04/0{i + 1}/mb-{i}/p.json.gz"
        s3.put_object(Bucket=ingest, Key=key, Body=b"{}")
        s3_backends["123456789012"]["aws"].get_object(ingest, key).last_modified = dt.datetime(2024, 4, i + 1, 9)
    name = f"range-{time.time_ns()}"
    artifacts = live.deployment.buckets["ArtifactsBucket"]
    assert main(["extract", "--bucket", ingest, "--from", "2024-04-01", "--to", "2024-04-03", "--quiet",
                 "--defaults-table", live.table("ProjectDefaultsTable"),
                 "--output", f"s3://{artifacts}/backfill/{name}/units.jsonl"]) == 0
    backfill = live.backfill_variant("HappyPath")

    result = live.engine.run(backfill + "#ExtractorSucceeds", {"from": "2024-04-01", "to": "2024-04-03"},
                             name=name, timeout=120)

    assert result.status == "SUCCEEDED", result.cause
    assert outcomes(result) == {"units": 3, "started": 3}
    job = [json.loads(e["taskScheduledEventDetails"]["parameters"]) for e in live.engine.history(result.arn)
           if e["type"] == "TaskScheduled" and e["taskScheduledEventDetails"]["resource"].startswith("createProcessing")]
    (request,) = job
    args = request["AppSpecification"]["ContainerArguments"]
    assert args[args.index("--request") + 1] == "/opt/ml/processing/input/request/request.json"
    (request_input,) = request["ProcessingInputs"]
    assert request_input["S3Input"]["S3Uri"] == f"s3://{artifacts}/backfill/{name}/request.json"
    written = json.loads(live.engine.client("s3").get_object(Bucket=artifacts, Key=f"backfill/{name}/request.json")["Body"].read())
    assert (written["from"], written["to"]) == ("2024-04-01", "2024-04-03")
    assert request["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] == f"s3://{artifacts}/backfill/{name}"


def test_backfill_failed_extraction_starts_nothing(live):
    backfill = live.backfill_variant("HappyPath")
    before = pipeline_starts(live)

    result = live.engine.run(backfill + "#ExtractorFails", {"from": "2024-04-01", "to": "2024-04-03"})

    assert result.error == "Backfill.ExtractFailed"
    assert "does not exist" in result.cause
    assert pipeline_starts(live) == before


def _raw_lock(sb, u: dict, item: dict) -> None:
    sb.engine.dynamodb.put_item(TableName=sb.table("LockTable"), Item={"lock_key": {"S": lock_key(u)}, **item})


def test_backfill_counts_every_unit_exactly_once_whatever_it_meets(live, backfill):
    # GIVEN fourteen units meeting every case a unit can meet
    units = [unit(i) for i in range(14)]
    _raw_lock(live, units[12], {"status": {"S": "DONE"}, "mini_batch_id": {"S": "mb-other"}})  # another's status
    _raw_lock(live, units[13], {"status": {"S": "FAILED"}, "attempts": {"S": "3"}})         # attempts not a number
    _raw_lock(live, units[2], {"status": {"S": "SUCCEEDED"}, "mini_batch_id": {"S": units[2]["mini_batch_id"]},
                               "pipeline_execution_arn": {"S": "arn:done"}, "attempts": {"N": "1"}})
    _raw_lock(live, units[3], {"status": {"S": "SUCCEEDED"}})               # written before mlbatch
    _raw_lock(live, units[4], {})                                           # only a key
    _raw_lock(live, units[5], {"status": {"S": "IN_PROGRESS"}, "mini_batch_id": {"S": "mb-someone-else"}})
    _raw_lock(live, units[6], {"status": {"S": "FAILED"}, "attempts": {"N": "3"},
                               "mini_batch_id": {"S": units[6]["mini_batch_id"]}})      # failed 3 times
    units[7] = {k: v for k, v in units[7].items() if k != "org2"}          # incomplete
    units[8]["mini_batch_s3_prefix"] = units[8]["mini_batch_s3_prefix"].replace("mlbatch-example-ingest", "elsewhere")
    units[9]["mini_batch_s3_prefix"] = units[9]["mini_batch_s3_prefix"].replace("/netsec/", "/other-org/")
    units[10]["batch_start_ts_iso"] = units[10]["batch_start_ts_iso"][:14] + "39:00Z"      # not a grid start
    units[11] = unit(11, project="nobody")                                  # no defaults item
    locks_before = {i: live.lock(lock_key(units[i])) for i in (2, 3, 4, 5, 6, 12, 13)}
    before = pipeline_starts(live)

    # WHEN the backfill runs them with a limit of three attempts per window
    result = live.engine.run(backfill, {"units": units, "max_attempts": 3}, timeout=300)

    # THEN every unit is in exactly one count, and only the two free windows started
    assert result.status == "SUCCEEDED", result.cause
    assert outcomes(result) == {"units": 14, "started": 2, "suppressed": 4, "collided": 1, "poisoned": 1,
                                "invalid": 4, "failed": 2}
    assert pipeline_starts(live) == before + 2
    assert {i: live.lock(lock_key(units[i])) for i in (2, 3, 4, 5, 6, 12, 13)} == locks_before
    failures = run_record(live, result)["failures"]
    assert {i: failures[str(i)]["outcome"] for i in range(5, 12)} == {
        5: "COLLIDED", 6: "POISONED", 7: "INVALID", 8: "INVALID", 9: "INVALID", 10: "INVALID", 11: "FAILED"}
    assert "mb-someone-else" in failures["5"]["cause"]
    assert failures["6"]["error"] == "Backfill.PoisonedWindow" and "3 times" in failures["6"]["cause"]
    assert failures["11"]["error"] == "Config.InvalidProjectDefaults"
    # (DynamoDB refuses to compare a string attempts with a number: the write fails, or reads as refused
    # and the unit says why; both are the same named outcome)
    assert failures["13"]["error"] == "Intake.LockWriteFailed" and lock_key(units[13]) in failures["13"]["cause"]
    record = run_record(live, result)
    assert (record["units"], record["uncounted"], record["started"]) == (14, 0, 2)


def test_backfill_without_a_limit_retries_a_window_failed_many_times(live, backfill):
    u = unit(0)
    _raw_lock(live, u, {"status": {"S": "FAILED"}, "attempts": {"N": "7"}, "mini_batch_id": {"S": u["mini_batch_id"]}})

    result = live.engine.run(backfill, {"units": [u]}, timeout=120)

    assert outcomes(result) == {"units": 1, "started": 1}
    assert live.lock(lock_key(u))["attempts"] == 8


def test_backfill_lists_each_unit_not_started_in_an_item_of_its_own(live, backfill):
    # many failures with long causes never grow the run record past DynamoDB's 400 KB item size
    big = [unit(i) for i in range(12)]
    for u in big:
        u["mini_batch_s3_prefix"] = "s3://elsewhere/" + "x" * 40_000 + "/"
    manifest = write_manifest(live, "manifests/big.jsonl", big)

    result = live.engine.run(backfill, {"manifest": manifest, "max_concurrency": 4}, timeout=120)

    assert outcomes(result) == {"units": 12, "invalid": 12}
    record = run_record(live, result)
    assert sorted(record["failures"], key=int) == [str(i) for i in range(12)]
    assert all(f["error"] == "Backfill.InvalidUnit" and "x" * 40_000 in f["cause"] for f in record["failures"].values())
    assert "details_dropped" not in record


def test_backfill_reports_a_unit_it_could_not_process_as_uncounted(live, backfill):
    # a unit too large to go through a state (Step Functions' 256 KB payload limit) fails uncatchably;
    # the map run's own counts still account for it, and the others run
    huge = unit(0)
    huge["mini_batch_s3_prefix"] = "s3://elsewhere/" + "x" * 210_000 + "/"
    manifest = write_manifest(live, "manifests/huge.jsonl", [huge, unit(1)])

    result = live.engine.run(backfill, {"manifest": manifest}, timeout=120)

    assert outcomes(result) == {"units": 2, "started": 1, "uncounted": 1}


def test_the_scheduled_sweep_runs_the_gaps_and_skips_poisoned_windows(live):
    # GIVEN the sweep's scheduled input as the template writes it, at a scheduled time
    from mlbatch.template import load
    tpl = load(parameters={**live.template.parameters, "SweepSchedule": "rate(1 day)"})
    (sweep,) = tpl.resources("AWS::Scheduler::Schedule").values()
    scheduled = json.loads(tpl.resolve(sweep["Properties"])["Target"]["Input"].replace(
        "<aws.scheduler.scheduled-time>", "2024-04-04T02:30:00Z"))
    assert scheduled == json.loads((EVENTS / "console" / "backfill-sweep.json").read_text())
    # ...and what its extractor finds: a gap, a window already done, a window that keeps failing
    units = [unit(i) for i in range(3)]
    live.engine.run(live.backfill_variant("HappyPath"), {"units": [units[1]]}, timeout=60)
    _raw_lock(live, units[2], {"status": {"S": "FAILED"}, "attempts": {"N": "3"},
                               "mini_batch_id": {"S": units[2]["mini_batch_id"]}})
    name = f"sweep-{time.time_ns()}"
    write_manifest(live, f"backfill/{name}/units.jsonl", units)
    before = pipeline_starts(live)

    # WHEN the schedule starts the backfill (the extractor job mocked)
    result = live.engine.run(live.backfill_variant("HappyPath") + "#ExtractorSucceeds", scheduled, name=name,
                             timeout=120)

    # THEN only the gap ran; the poisoned window is counted, not retried; the extractor got the request
    assert outcomes(result) == {"units": 3, "started": 1, "suppressed": 1, "poisoned": 1}
    assert pipeline_starts(live) == before + 1
    artifacts = live.deployment.buckets["ArtifactsBucket"]
    request = json.loads(live.engine.client("s3").get_object(Bucket=artifacts, Key=f"backfill/{name}/request.json")["Body"].read())
    assert (request["sweep"], request["max_attempts"]) == ({"days": 2, "until": "2024-04-04T02:30:00Z"}, 3)


def test_an_operator_reads_a_runs_counts_and_why_each_unit_did_not_start(live, backfill, monkeypatch, capsys):
    units = [unit(i) for i in range(3)]
    units[1] = {k: v for k, v in units[1].items() if k != "org1"}
    result = live.engine.run(backfill, {"units": units}, timeout=120)
    monkeypatch.setenv("MLBATCH_RUNS_TABLE", live.table("BackfillRunsTable"))

    assert main(["backfill", "show", result.output["run_id"], "--json"]) == 0
    out, err = capsys.readouterr()
    shown = json.loads(out)
    assert (shown["units"], shown["started"], shown["invalid"]) == (3, 2, 1)
    (missing,) = shown["units_not_started"]
    assert (missing["line"], missing["outcome"], missing["error"]) == (1, "INVALID", "Backfill.InvalidUnit")
    assert "3 units: 2 started" in err
    assert main(["backfill", "list"]) == 0
    assert result.output["run_id"] in capsys.readouterr().out
    assert main(["backfill", "show", "no-such-run"]) == 1
    assert "no backfill run 'no-such-run'" in capsys.readouterr().err
