"""`mlbatch run` with your own event on the in-process engine, and the one endpoint setting:
an in-process engine ignores AWS_ENDPOINT_URL (moto intercepts only AWS hostnames)."""
from __future__ import annotations

import socket

import pytest

from mlbatch.cli import main
from mlbatch.engine.harness import Engine


@pytest.fixture
def dead_endpoint(monkeypatch):
    """AWS_ENDPOINT_URL left pointing at nothing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    return f"http://127.0.0.1:{port}"


def test_an_in_process_engine_ignores_an_endpoint_left_in_the_environment(sandbox, dead_endpoint, event):
    if sandbox.engine.endpoint_url:
        pytest.skip("the suite runs against an external endpoint")
    sandbox.clear_locks()
    sandbox.use_intake("stand-in")

    result = sandbox.intake(event)  # three service calls from inside the interpreter

    sandbox.use_intake()
    assert result.status == "SUCCEEDED", result.cause
    assert result.output["status"] == "STARTED"
    assert Engine().endpoint_url == dead_endpoint and Engine(endpoint_url="").endpoint_url == ""


def test_run_without_an_endpoint_pushes_the_event_through_the_in_process_engine(sandbox, monkeypatch, capsys):
    if sandbox.engine.endpoint_url:
        pytest.skip("the suite runs against an external endpoint")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    sandbox.clear_locks()

    code = main(["run", "--s3-key", "s3://mlbatch-example-ingest/acme/netsec/traffic-anomaly/2024/05/01/mb-7/f.json.gz",
                 "--timestamp", "2024-05-01T10:10:00Z"])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert "moto (in-process)" in err
    assert out.count("status: SUCCEEDED") == 2
    assert '"lock_key": "traffic-anomaly#fs-2024-06#2024-05-01T10:08:00Z#2024-05-01T10:10:00Z"' in out
    assert sandbox.lock("traffic-anomaly#fs-2024-06#2024-05-01T10:08:00Z#2024-05-01T10:10:00Z")["status"] == "SUCCEEDED"


def test_run_reports_a_failed_intake_with_its_error_and_exit_1(sandbox, monkeypatch, capsys):
    if sandbox.engine.endpoint_url:
        pytest.skip("the suite runs against an external endpoint")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)

    code = main(["run", "--s3-key", "s3://mlbatch-example-ingest/acme/netsec/traffic-anomaly/2024/02/30/mb-7/f.json.gz",
                 "--timestamp", "2024-05-01T10:10:00Z"])

    out, err = capsys.readouterr()
    assert code == 1
    assert "status: FAILED" in out and "mlbatch run: the intake failed: Intake.InvalidS3Key" in err
