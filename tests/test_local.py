"""`mlbatch local`: the engine as a background server with template.yaml deployed, used by the
other commands through AWS_ENDPOINT_URL. One server for the module (it takes seconds to start)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mlbatch import local
from mlbatch.cli import main
from mlbatch.sandbox import EVENTS

LOCK_KEY = "traffic-anomaly#fs-2024-06#2024-02-29T23:53:00Z#2024-03-01T00:05:07.123Z"


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """A state directory of its own; whatever happens, the server is stopped at the end."""
    with pytest.MonkeyPatch.context() as mp:
        directory = tmp_path_factory.mktemp("mlbatch-state")
        mp.setenv("MLBATCH_STATE_DIR", str(directory))
        yield directory
        local.stop()


@pytest.fixture(scope="module")
def up(state):
    """`mlbatch local up --port 0 --json` once: the environment it printed."""
    code = main(["local", "up", "--port", "0", "--json"])
    assert code == 0
    return local.deployed().env


@pytest.fixture
def in_stack(up, monkeypatch):
    """This shell after `eval "$(mlbatch local up --shell)"`."""
    for name in ("AWS_PROFILE", "MLBATCH_INTAKE_ARN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in up.items():
        monkeypatch.setenv(name, value)
    return up


def test_local_up_serves_the_deployed_stack_and_prints_its_environment_for_eval(in_stack, cli):
    code, shell, _ = cli("local", "status", "--shell")
    read_back = subprocess.run(["bash", "-c", 'eval "$1"; echo "$AWS_ENDPOINT_URL $MLBATCH_LOCK_TABLE $MLBATCH_INTAKE_ARN"',
                                "-", shell], capture_output=True, text=True, check=True).stdout.split()
    code_status, _, err = cli("local", "status")

    assert code == 0 and code_status == 0
    assert read_back == [in_stack["AWS_ENDPOINT_URL"], in_stack["MLBATCH_LOCK_TABLE"], in_stack["MLBATCH_INTAKE_ARN"]]
    assert in_stack["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    assert {"AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "MLBATCH_DEFAULTS_TABLE", "MLBATCH_PIPELINE_ARN",
            "MLBATCH_BACKFILL_ARN", "MLBATCH_INGEST_BUCKET"} <= set(in_stack)
    assert "running on " + in_stack["AWS_ENDPOINT_URL"] in err
    for name in ("mlbatch-intake", "mlbatch-pipeline", "mlbatch-LockTable (0 items)",
                 "mlbatch-ProjectDefaultsTable (1 items)", "mlbatch-example-ingest"):
        assert name in err


def test_run_pushes_an_event_through_the_local_intake_and_its_pipeline_and_locks_list_shows_it(in_stack, cli):
    code, out, err = cli("run", "--event", str(EVENTS / "live_event.json"))

    assert code == 0, err
    assert "engine: the engine at " + in_stack["AWS_ENDPOINT_URL"] in err
    assert out.count("status: SUCCEEDED") == 2  # the intake, then its pipeline (builders: HappyPath)
    assert '"status": "STARTED"' in out and "Mark the lock succeeded" in out
    code, out, _ = cli("locks", "list", "--mini-batch", "mb-000123", "--kind", "window", "--json")
    (lock,) = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert (lock["lock_key"], lock["status"], lock["source"]) == (LOCK_KEY, "SUCCEEDED", "inference")
    code, _, err = cli("replay", lock["pipeline_execution_arn"], "--redrive")  # an HTML 500 before
    assert code == 1 and "does not implement RedriveExecution" in err and "<" not in err


def test_a_second_up_reuses_the_server_and_every_resource_and_updates_a_changed_definition(in_stack, cli):
    code, out, err = cli("local", "up", "--json")

    assert code == 0
    assert json.loads(out) == in_stack
    assert "already running" in err and "unchanged 11" in err
    assert cli("locks", "show", LOCK_KEY, "--json")[0] == 0  # the ledger survived
    code, _, err = cli("local", "up", "--builders", "DeltaBuilderFails")
    assert code == 0 and "updated IntakeStateMachine, BackfillStateMachine" in err
    code, _, err = cli("local", "up")
    assert code == 0 and "builders: test case HappyPath" in err
    names = [m.split(" (")[0] for m in local.inventory(local.running())["state machines"]]
    assert sorted(names) == sorted(set(names)) and len(names) == 4


def test_up_on_another_port_is_refused_while_the_stack_runs(in_stack, cli):
    code, _, err = cli("local", "up", "--port", "1")

    assert code == 1
    assert "already runs on port" in err and "mlbatch local down" in err


def test_down_stops_the_server_and_commands_then_say_the_endpoint_is_down(in_stack, cli, monkeypatch):
    pid = local.running().pid
    code, out, err = cli("local", "down", "--shell")

    assert code == 0 and f"pid {pid}" in err
    assert out.startswith("unset AWS_ENDPOINT_URL ") and "MLBATCH_LOCK_TABLE" in out
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
    code, _, err = cli("local", "status")
    assert code == 1 and "not running" in err and "mlbatch local up" in err
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code, _, err = cli("locks", "list")
    assert code == 1 and "Traceback" not in err
    assert f"cannot reach {in_stack['AWS_ENDPOINT_URL']}" in err and "mlbatch local up" in err
    assert cli("local", "down")[0] == 0  # stopping a stopped stack is fine


def test_down_stops_an_engine_that_runs_but_does_not_answer(tmp_path, monkeypatch, cli):
    # what `mlbatch local status` tells the user to do about a hung engine must work
    monkeypatch.setenv("MLBATCH_STATE_DIR", str(tmp_path))
    hung = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "mlbatch.engine.server"])
    try:
        (tmp_path / "server.json").write_text(json.dumps({"pid": hung.pid, "port": 1}))
        code, _, err = cli("local", "status")
        assert code == 1 and "does not answer" in err and "mlbatch local down" in err

        code, out, err = cli("local", "down", "--shell")

        assert code == 0 and f"stopped the engine on http://127.0.0.1:1 (pid {hung.pid})" in err
        assert hung.wait(timeout=15) is not None
        assert out.startswith("unset AWS_ENDPOINT_URL ")
        assert not (tmp_path / "server.json").exists()
    finally:
        hung.kill()
