"""The backfill on the embedded engine: one pipeline start per unit, under the live flow's lock."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import time

import boto3
import pytest

from mlbatch.cli import main


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


def test_backfill_manifest_starts_one_pipeline_per_unit_and_a_rerun_starts_none(live, backfill):
    units = [unit(i) for i in range(200)]
    manifest = write_manifest(live, "manifests/200.jsonl", units)
    before = pipeline_starts(live)

    first = live.engine.run(backfill, {"manifest": manifest, "max_concurrency": 16}, timeout=600)

    assert first.status == "SUCCEEDED", first.cause
    assert (first.output["started"], first.output["suppressed"], first.output["failed"]) == (200, 0, 0)
    assert pipeline_starts(live) == before + 200
    locks = {lock["lock_key"]: lock for lock in live.locks()}
    assert {lock_key(u) for u in units} <= set(locks)
    assert all(locks[lock_key(u)]["status"] == "SUCCEEDED" and locks[lock_key(u)]["source"] == "backfill"
               for u in units)

    again = live.engine.run(backfill, {"manifest": manifest, "max_concurrency": 16}, timeout=600)

    assert (again.output["started"], again.output["suppressed"], again.output["failed"]) == (0, 200, 0)
    assert pipeline_starts(live) == before + 200


def test_backfill_retries_failed_windows_and_skips_running_ones(live, backfill):
    units = [unit(i) for i in range(3)]
    live.engine.run(backfill, {"units": units}, timeout=120)
    live.set_lock({**live.lock(lock_key(units[0])), "status": "FAILED"})
    live.set_lock({**live.lock(lock_key(units[1])), "status": "IN_PROGRESS"})

    again = live.engine.run(backfill, {"units": units}, timeout=120)

    assert (again.output["started"], again.output["suppressed"], again.output["failed"]) == (1, 2, 0)
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

    assert (result.output["started"], result.output["suppressed"], result.output["failed"]) == (4, 0, 1)
    assert live.lock(lock_key(bad)) is None  # the lock it took was released
    assert all(live.lock(lock_key(u))["status"] == "SUCCEEDED" for u in units if u is not bad)


def test_backfill_counts_failed_pipelines_and_invalid_units(live):
    failing = live.backfill_variant("DeltaBuilderFails")
    units = [unit(i) for i in range(3)] + [{"project_name": "traffic-anomaly"}]

    result = live.engine.run(failing, {"units": units}, timeout=120)

    assert (result.output["started"], result.output["suppressed"], result.output["failed"]) == (0, 0, 4)
    assert all(live.lock(lock_key(u))["status"] == "FAILED" for u in units[:3])


def test_backfill_rejects_an_unknown_input(live, backfill):
    for bad in [{}, {"units": []}, {"manifest": {"bucket": "b"}}, {"from": "2024-01-01"}]:
        result = live.engine.run(backfill, bad)
        assert result.error == "Backfill.InvalidInput", bad


def test_backfill_date_range_runs_the_extractor_then_its_manifest(live):
    # what the extractor job does, done here: extract from moto S3 into the run's manifest key
    from moto.s3.models import s3_backends
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="range-ingest")
    for i in range(3):
        key = f"acme/netsec/traffic-anomaly/2024/04/0{i + 1}/mb-{i}/p.json.gz"
        s3.put_object(Bucket="range-ingest", Key=key, Body=b"{}")
        s3_backends["123456789012"]["aws"].get_object("range-ingest", key).last_modified = dt.datetime(2024, 4, i + 1, 9)
    name = f"range-{time.time_ns()}"
    artifacts = live.deployment.buckets["ArtifactsBucket"]
    assert main(["extract", "--bucket", "range-ingest", "--from", "2024-04-01", "--to", "2024-04-03", "--quiet",
                 "--defaults-table", live.table("ProjectDefaultsTable"),
                 "--output", f"s3://{artifacts}/backfill/{name}/units.jsonl"]) == 0
    backfill = live.backfill_variant("HappyPath")

    result = live.engine.run(backfill + "#ExtractorSucceeds", {"from": "2024-04-01", "to": "2024-04-03"},
                             name=name, timeout=120)

    assert result.status == "SUCCEEDED", result.cause
    assert (result.output["started"], result.output["failed"]) == (3, 0)
    job = [json.loads(e["taskScheduledEventDetails"]["parameters"]) for e in live.engine.history(result.arn)
           if e["type"] == "TaskScheduled" and e["taskScheduledEventDetails"]["resource"].startswith("createProcessing")]
    (request,) = job
    args = request["AppSpecification"]["ContainerArguments"]
    assert args[args.index("--from") + 1] == "2024-04-01" and args[args.index("--to") + 1] == "2024-04-03"
    assert request["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] == f"s3://{artifacts}/backfill/{name}"


def test_backfill_failed_extraction_starts_nothing(live):
    backfill = live.backfill_variant("HappyPath")
    before = pipeline_starts(live)

    result = live.engine.run(backfill + "#ExtractorFails", {"from": "2024-04-01", "to": "2024-04-03"})

    assert result.error == "Backfill.ExtractFailed"
    assert "does not exist" in result.cause
    assert pipeline_starts(live) == before
