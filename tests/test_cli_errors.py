"""No traceback for a user error: each command, each ordinary mistake -> one message naming the
problem and the fix; exit 1 when refused or failed, 2 for bad usage."""
from __future__ import annotations

import json
import shutil
import socket

import boto3
import pytest

from mlbatch import render
from mlbatch.cli import main
from mlbatch.sandbox import EVENTS, load_event
from mlbatch.settings import ROOT

PIPELINE_ARN = "arn:aws:states:us-east-1:123456789012:execution:mlbatch-pipeline:2024-02-29T2353-0123"
DEFAULTS_FILE = str(ROOT / "sam" / "project-defaults" / "traffic-anomaly.json")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aws_env(monkeypatch, **overrides) -> None:
    """A clean AWS environment: the example tables named, fake credentials, a region, no endpoint,
    no config files, no metadata service (it would make a missing-credentials test slow), and a
    fresh default boto3 session (one process runs many commands here: it caches credentials)."""
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    base = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/nonexistent/config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1",
            "MLBATCH_LOCK_TABLE": "mlbatch-LockTable", "MLBATCH_DEFAULTS_TABLE": "mlbatch-ProjectDefaultsTable"}
    for name, value in {**base, **overrides}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


# --- the environment: region, credentials, endpoint -------------------------------------------

COMMANDS = {
    "locks list": ["locks", "list"],
    "locks show": ["locks", "show", "k#v#s#e"],
    "locks reset": ["locks", "reset", "k#v#s#e", "--reason", "r"],
    "replay": ["replay", PIPELINE_ARN],
    "defaults put": ["defaults", "put", DEFAULTS_FILE],
    "extract": ["extract", "--bucket", "ingest", "--from", "2024-03-01", "--to", "2024-03-01",
                "--defaults-table", "mlbatch-ProjectDefaultsTable", "--output", "-", "--quiet"],
}
SETUPS = {
    "no region": ({"AWS_DEFAULT_REGION": None}, "no AWS region configured: set AWS_DEFAULT_REGION"),
    "no credentials": ({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None},
                       "no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID"),
    "endpoint down": ({"AWS_ENDPOINT_URL": "http://127.0.0.1:{port}"}, "cannot reach http://127.0.0.1:{port}"),
}


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("command", COMMANDS)
def test_environment_mistakes_name_the_setting_to_fix(command, setup, monkeypatch, cli):
    port = closed_port()
    overrides, message = SETUPS[setup]
    aws_env(monkeypatch, **{k: v and v.format(port=port) for k, v in overrides.items()})

    code, _, err = cli(*COMMANDS[command])

    assert code == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    if command == "extract":  # the extractor words its own messages; the problem is named all the same
        assert {"no region": "region", "no credentials": "credentials",
                "endpoint down": f"127.0.0.1:{port}"}[setup] in err.lower()
    else:
        assert message.format(port=port) in err
        if setup == "endpoint down":
            assert "mlbatch local up" in err


def test_run_against_an_endpoint_that_is_down_names_it(monkeypatch, cli):
    port = closed_port()
    aws_env(monkeypatch, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")

    code, _, err = cli("run", "--event", str(EVENTS / "live_event.json"))

    assert code == 1 and "Traceback" not in err
    assert f"cannot reach http://127.0.0.1:{port}" in err and "mlbatch local up" in err


@pytest.mark.parametrize("argv, variable", [(["locks", "list"], "MLBATCH_LOCK_TABLE"),
                                            (["defaults", "put", DEFAULTS_FILE], "MLBATCH_DEFAULTS_TABLE")])
def test_an_unnamed_table_is_asked_for(argv, variable, monkeypatch, cli):
    aws_env(monkeypatch, **{variable: None})

    code, _, err = cli(*argv)

    assert code == 1 and f"--table or {variable}" in err and "Traceback" not in err


# --- AWS service errors: the table, the ARN --------------------------------------------------

@pytest.fixture
def aws(sandbox, monkeypatch):
    """The embedded engine's tables (template.yaml deployed) for the CLI's own clients."""
    endpoint = sandbox.engine.endpoint_url
    aws_env(monkeypatch, AWS_ENDPOINT_URL=endpoint or None)
    sandbox.clear_locks()
    yield sandbox
    sandbox.put_defaults(load_event("project_defaults"))


@pytest.mark.parametrize("argv", [
    ["locks", "list", "--table", "no-such-table"],
    ["locks", "show", "k#v#s#e", "--table", "no-such-table"],
    ["locks", "reset", "k#v#s#e", "--reason", "r", "--table", "no-such-table"],
    ["defaults", "put", DEFAULTS_FILE, "--table", "no-such-table"],
], ids=" ".join)
def test_a_missing_table_is_named_with_the_fix(aws, argv, cli):
    code, _, err = cli(*argv)

    assert code == 1 and "Traceback" not in err
    assert "no table 'no-such-table' at " in err and "--table or MLBATCH_" in err


@pytest.mark.parametrize("argv, kind, key", [
    (["locks", "list", "--table", "mlbatch-ProjectDefaultsTable"], "lock", "lock_key"),
    (["locks", "show", "k#v#s#e", "--table", "mlbatch-ProjectDefaultsTable"], "lock", "lock_key"),
    (["locks", "reset", "k#v#s#e", "--reason", "r", "--table", "mlbatch-ProjectDefaultsTable"], "lock", "lock_key"),
    (["defaults", "put", DEFAULTS_FILE, "--table", "mlbatch-LockTable"], "project-defaults", "project_name"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_a_table_of_the_wrong_kind_is_named_with_the_fix(aws, argv, kind, key, cli):
    code, _, err = cli(*argv)

    assert code == 1 and "Traceback" not in err
    assert "not a " + kind + " table" in err and key in err and "--table or MLBATCH_" in err


def test_replay_of_something_that_is_not_an_execution_arn_is_bad_usage(cli):
    code, _, err = cli("replay", "not-an-arn")
    code_machine, _, err_machine = cli("replay", "arn:aws:states:us-east-1:123456789012:stateMachine:mlbatch-pipeline")

    assert (code, code_machine) == (2, 2) and "Traceback" not in err + err_machine
    assert "not a Step Functions execution ARN" in err and "'not-an-arn'" in err
    assert "that is a state machine's ARN" in err_machine


def test_replay_of_an_unknown_execution_and_redrive_on_the_engine_say_what_to_do(aws, cli):
    done = aws.engine.run(aws.arn("IntakeStateMachine"), {"hello": "world"})  # fails: Intake.InvalidInput

    code, _, err = cli("replay", PIPELINE_ARN)
    code_redrive, _, err_redrive = cli("replay", done.arn, "--redrive")

    assert (code, code_redrive) == (1, 1) and "Traceback" not in err + err_redrive
    assert "no execution" in err
    assert "does not implement RedriveExecution" in err_redrive and "replay the intake execution" in err_redrive


# --- files ----------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path):
    item = load_event("project_defaults")
    paths = {"binary": b"\x89PNG\r\n\x1a\n\x00\xff", "empty list": b"[]", "empty file": b"  \n",
             "bad json": b'{"project_name": "x",\n oops}', "one": json.dumps(item).encode(),
             "same project again": json.dumps([{**item, "description": "twice"}]).encode()}
    for name, data in paths.items():
        (tmp_path / f"{name.replace(' ', '-')}.json").write_bytes(data)
    return {name: str(tmp_path / f"{name.replace(' ', '-')}.json") for name in paths}


@pytest.mark.parametrize("names, complaint", [
    (["binary"], "not UTF-8 text"),
    (["empty list"], "holds an empty list"),
    (["empty file"], "empty: a file holds one item"),
    (["bad json"], "not valid JSON: Expecting property name enclosed in double quotes at line 2 column 2"),
    (["one", "same project again"], "project 'traffic-anomaly' is already defined by"),
])
@pytest.mark.parametrize("action", ["check", "put"])
def test_defaults_files_that_cannot_be_loaded_are_named_and_nothing_is_written(files, names, complaint, action,
                                                                            monkeypatch, cli):
    aws_env(monkeypatch, AWS_DEFAULT_REGION=None)  # nothing may reach AWS

    code, _, err = cli("defaults", action, *(files[n] for n in names))

    assert code == 1 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if complaint in line]
    assert files[names[-1]] in line
    if names == ["one", "same project again"]:
        assert files["one"] in line  # both files named
    if action == "put":
        assert "nothing was written" in err


def test_defaults_check_of_valid_files_says_ok_with_the_count(files, cli):
    code, _, err = cli("defaults", "check", files["one"], str(ROOT / "sam/project-defaults/dns-tunnel.json"))

    assert code == 0 and err.strip() == "ok: 2 items valid"


def test_defaults_problems_of_an_item_name_the_file_and_the_index(tmp_path, cli):
    path = tmp_path / "two.json"
    path.write_text(json.dumps([load_event("project_defaults"), {"project_name": "p", "feature_spec_version": "v#1"}]))

    code, _, err = cli("defaults", "check", str(path))

    assert code == 1
    assert f"{path}[1] (p): feature_spec_version must be a non-empty string without '#'" in err


@pytest.mark.parametrize("argv, complaint", [
    (["run", "--event", "/nonexistent/event.json"], "/nonexistent/event.json: cannot read it"),
    (["run", "--event", str(ROOT / "README.md")], "README.md: not valid JSON"),
])
def test_run_names_an_event_file_it_cannot_use(argv, complaint, cli):
    code, _, err = cli(*argv)

    assert code == 1 and complaint in err and "Traceback" not in err


@pytest.fixture
def broken_templates(tmp_path, monkeypatch):
    """A copy of templates/ the test may break (render reads TEMPLATES and writes ASL)."""
    copy = tmp_path / "templates"
    shutil.copytree(render.TEMPLATES, copy)
    monkeypatch.setattr(render, "TEMPLATES", copy)
    return copy


@pytest.mark.parametrize("breakage, complaint", [
    (lambda text: text.replace("{%", "{% if %}{%", 1), "templates/pipeline.asl.json.j2, line"),
    (lambda text: text.replace("{", "{,", 1), "pipeline.asl.json.j2 renders invalid JSON"),
    (lambda text: "{{ no_such_name.x }}" + text, "'no_such_name' is undefined"),
], ids=["jinja syntax", "not JSON", "undefined name"])
def test_render_check_names_a_broken_template(broken_templates, breakage, complaint, cli):
    template = broken_templates / "pipeline.asl.json.j2"
    template.write_text(breakage(template.read_text()))

    code, _, err = cli("render", "--check")

    assert code == 1 and "Traceback" not in err
    assert complaint in err.splitlines()[0] and "then run `mlbatch render`" in err.splitlines()[0]


# --- usage: exit 2 --------------------------------------------------------------------------

@pytest.mark.parametrize("argv, complaint", [
    (["bench", "--runs", "0"], "argument --runs: a whole number >= 1 expected, got '0'"),
    (["locks", "reset", "k#v#s#e"], "locks reset needs --reason TEXT"),
    (["locks", "reset", "k#v#s#e", "--reason", "  "], "locks reset needs --reason TEXT"),
    (["locks", "show"], "locks show needs a LOCK_KEY"),
    (["locks", "list", "--from", "2024-02-30"], "argument --from: not a real date or ISO instant: '2024-02-30'"),
    (["locks", "list", "--from", "yesterday"], "argument --from: not a real date or ISO instant: 'yesterday'"),
    (["locks", "list", "--to", "2024-03-01T25:00:00Z"], "argument --to: not a real date or ISO instant"),
    (["locks", "list", "--from", "2024-03-02", "--to", "2024-03-01T12:00:00Z"],
     "--from 2024-03-02T00:00:00Z is after --to 2024-03-01T12:00:00Z"),
    (["locks", "list", "--source", "cron"], "argument --source: invalid choice: 'cron'"),
    (["replay", PIPELINE_ARN, "--force"], "--force needs --reason TEXT"),
    (["run", "--s3-key", "s3://b/k"], "--s3-key and --timestamp go together"),
    (["run", "--event", "e.json", "--s3-key", "k", "--timestamp", "t"], "either --event FILE or --s3-key"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_usage_exits_2_with_the_reason(argv, complaint, cli):
    code, _, err = cli(*argv)

    assert code == 2 and complaint in err and "Traceback" not in err


def test_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])

    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"mlbatch {version('mlbatch')}"


def test_a_command_needing_the_engine_says_which_extra_to_install():
    from mlbatch.failures import explain
    message = explain(ModuleNotFoundError("No module named 'moto'", name="moto"))
    assert "pip install 'mlbatch[engine]'" in message
    assert explain(ModuleNotFoundError("No module named 'something_else'", name="something_else")) is None
