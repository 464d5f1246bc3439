"""The local stack: the embedded engine as a background server with template.yaml deployed.

`mlbatch local up` starts `mlbatch.engine.server` (its own process, on 127.0.0.1),
deploys template.yaml into it (reusing what exists), seeds the example project and
returns the environment the other commands need; `down` stops it; `status` reads it.
The server's pid and port live in a small state directory: `$MLBATCH_STATE_DIR`, else
`$XDG_STATE_HOME/mlbatch` (default `~/.local/state/mlbatch`).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3

from .failures import Failure
from .engine.harness import Deployment, Engine
from .items import to_item
from .sandbox import EXAMPLE_PARAMETERS, MOCK_CONFIG, load_event
from .settings import ENDPOINT_ENV, REGION
from .template import load

__all__ = ["LocalError", "Server", "Stack", "state_dir", "running", "start", "deploy", "stop", "environment",
           "shell_lines", "unset_lines", "builder_cases", "deployed", "inventory", "environment_names",
           "default_port", "DEFAULT_PORT", "STATE_ENV"]

STATE_ENV = "MLBATCH_STATE_DIR"
#: The port `mlbatch local up` serves on unless told otherwise (0 picks a free one).
DEFAULT_PORT = 4599
#: Fake credentials: the local engine accepts any, and these never leave the machine.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
#: The variables the CLI reads, by the template's logical id (others are named after the id).
_TABLE_VARS = {"LockTable": "MLBATCH_LOCK_TABLE", "ProjectDefaultsTable": "MLBATCH_DEFAULTS_TABLE",
               "BackfillRunsTable": "MLBATCH_RUNS_TABLE"}
_PARAMETER_BUCKETS = {"IngestionBucketName": "MLBATCH_INGEST_BUCKET", "OutputBucketName": "MLBATCH_OUTPUT_BUCKET"}


class LocalError(Failure):
    """The local stack cannot be started, reached or deployed; the message says what to do."""


@dataclass(frozen=True)
class Server:
    pid: int
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stack:
    """What `up` deployed: the environment to use it, the builders' test case, what it did."""

    server: Server
    env: dict[str, str]
    builders: str
    actions: dict[str, str]
    started: bool = False


def state_dir() -> Path:
    """Where the server's pid, port and log live (created on demand)."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "mlbatch"


def _server_file() -> Path:
    return state_dir() / "server.json"


def _stack_file() -> Path:
    return state_dir() / "stack.json"


def _log_file() -> Path:
    return state_dir() / "server.log"


def _ours(pid: int) -> bool:
    """Is `pid` an mlbatch engine server (not a process that got a dead server's pid)?"""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        try:
            command = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True,
                                     text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return True  # cannot tell: trust the state file
    return "mlbatch.engine.server" in command


def _alive(pid: int) -> bool:
    try:  # our own child (tests start it in-process): reap it, or it lingers as a zombie
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the pid
        return False
    return _ours(pid)


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/config", timeout=2) as response:
            return isinstance(json.loads(response.read()), dict)
    except (OSError, ValueError):
        return False


def running() -> Server | None:
    """The local server if it runs (its pid alive and its endpoint answering), else None.
    A state file left by a server that died is removed."""
    try:
        info = json.loads(_server_file().read_text())
        server = Server(int(info["pid"]), int(info["port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    alive = _alive(server.pid)
    if alive and _answers(server.endpoint):
        return server
    if not alive:
        _server_file().unlink(missing_ok=True)
        return None
    raise LocalError(f"the local engine (pid {server.pid}) runs but {server.endpoint} does not answer: "
                     f"see {_log_file()}, then `mlbatch local down`")


_children: list[subprocess.Popen] = []  # keeps the Popen of a server this process started


def default_port() -> int:
    """$MLBATCH_LOCAL_PORT, else DEFAULT_PORT."""
    text = os.environ.get("MLBATCH_LOCAL_PORT", str(DEFAULT_PORT))
    if not text.isdigit() or int(text) > 65535:
        raise LocalError(f"MLBATCH_LOCAL_PORT must be a port number, got {text!r}")
    return int(text)


def start(port: int | None = None, timeout: float = 60.0) -> tuple[Server, bool]:
    """The running server, or a new one on `port` (None: default_port(); 0: any free port);
    returns (server, started now). A server running on another port than one asked for is refused."""
    current = running()
    if current:
        if port not in (None, 0, current.port):
            raise LocalError(f"the local stack already runs on port {current.port}: use it, or "
                             f"`mlbatch local down` first to move it to {port}")
        return current, False
    port = default_port() if port is None else port
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    ready = _server_file()
    ready.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != ENDPOINT_ENV}
    with open(_log_file(), "a") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "mlbatch.engine.server", "--port", str(port), "--ready-file", str(ready),
             "--mock-config", str(MOCK_CONFIG)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True)
    _children.append(child)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if child.poll() is not None:
            raise LocalError(f"the local engine did not start: {_last_line(_log_file())} "
                             f"(port {port} taken? choose another with --port N; log: {_log_file()})")
        if time.monotonic() > deadline:
            child.terminate()
            raise LocalError(f"the local engine did not answer within {timeout:.0f}s; log: {_log_file()}")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    return Server(int(info["pid"]), int(info["port"])), True


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def _session() -> boto3.Session:
    return boto3.Session(region_name=REGION, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def builder_cases() -> list[str]:
    """The MockConfigFile test cases of the pipeline (what `--builders` accepts)."""
    machines = json.loads(MOCK_CONFIG.read_text())["StateMachines"]
    return list(machines.get("mlbatch-pipeline", {}).get("TestCases", {}))


def _var(logical: str, suffix: str) -> str:
    words = re.findall(r"[A-Z][a-z0-9]*", logical.removesuffix("StateMachine").removesuffix("Bucket"))
    return "MLBATCH_" + "_".join(w.upper() for w in words) + suffix


def environment(server: Server, dep: Deployment) -> dict[str, str]:
    """The variables that point the CLI, the AWS CLI and boto3 at the local stack."""
    env = {ENDPOINT_ENV: server.endpoint, "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, **CREDENTIALS}
    for logical, name in dep.tables.items():
        env[_TABLE_VARS.get(logical) or _var(logical, "")] = name
    for logical, arn in dep.state_machines.items():
        env[_var(logical, "_ARN")] = arn
    for logical, name in dep.buckets.items():
        env[_var(logical, "_BUCKET")] = name
    for parameter, var in _PARAMETER_BUCKETS.items():
        env[var] = dep.template.parameters[parameter]
    return env


def deploy(server: Server, builders: str = "HappyPath") -> Stack:
    """Deploy template.yaml into the server (idempotent), the intake and backfill starting the
    pipeline with the MockConfigFile test case `builders`; create the example buckets and seed
    the example project unless it exists."""
    if builders not in builder_cases():
        raise LocalError(f"no builders test case {builders!r} in {MOCK_CONFIG.name}: "
                         f"choose one of {', '.join(builder_cases())}")
    template = load(None, EXAMPLE_PARAMETERS)
    pipeline = template.substitutions("IntakeStateMachine")["PipelineStateMachineArn"]
    with_case = {"PipelineStateMachineArn": f"{pipeline}#{builders}"}
    with Engine(server.endpoint, session=_session()) as engine:
        dep = engine.deploy(template, {"IntakeStateMachine": with_case, "BackfillStateMachine": with_case})
        for parameter in _PARAMETER_BUCKETS:
            dep.actions[parameter] = engine.put_bucket(template.parameters[parameter])
        defaults = load_event("project_defaults")
        try:
            engine.dynamodb.put_item(TableName=dep.tables["ProjectDefaultsTable"], Item=to_item(defaults),
                                     ConditionExpression="attribute_not_exists(project_name)")
            dep.actions[f"project {defaults['project_name']}"] = "created"
        except engine.dynamodb.exceptions.ConditionalCheckFailedException:
            dep.actions[f"project {defaults['project_name']}"] = "unchanged"
    stack = Stack(server, environment(server, dep), builders, dep.actions)
    _stack_file().write_text(json.dumps({"env": stack.env, "builders": builders}, indent=2))
    return stack


def deployed() -> Stack | None:
    """What the last `up` deployed into the running server (None if it does not run)."""
    server = running()
    if not server:
        return None
    try:
        saved = json.loads(_stack_file().read_text())
    except (OSError, ValueError):
        saved = {"env": {ENDPOINT_ENV: server.endpoint}, "builders": "?"}
    return Stack(server, saved["env"], saved["builders"], {})


def inventory(server: Server) -> dict[str, list[str]]:
    """What the server holds now: state machines (with executions), tables (with items), buckets."""
    session = _session()
    sfn = session.client("stepfunctions", endpoint_url=server.endpoint)
    ddb = session.client("dynamodb", endpoint_url=server.endpoint)
    s3 = session.client("s3", endpoint_url=server.endpoint)
    machines = []
    for m in sfn.list_state_machines()["stateMachines"]:
        count = sum(len(p["executions"]) for p in sfn.get_paginator("list_executions").paginate(
            stateMachineArn=m["stateMachineArn"]))
        machines.append(f"{m['name']} ({count} executions)")
    tables = [f"{t} ({ddb.scan(TableName=t, Select='COUNT')['Count']} items)"
              for t in ddb.list_tables()["TableNames"]]
    return {"state machines": machines, "tables": tables,
            "buckets": [b["Name"] for b in s3.list_buckets()["Buckets"]]}


def stop(timeout: float = 15.0) -> Server | None:
    """Stop the local server (SIGTERM, then SIGKILL after `timeout`); the server stopped, or None."""
    try:
        server = running()
    except LocalError:  # alive but not answering: stop it all the same
        info = json.loads(_server_file().read_text())
        server = Server(int(info["pid"]), int(info["port"]))
    if not server:
        return None
    os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(server.pid):
        if time.monotonic() > deadline:
            os.kill(server.pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.05)
    _server_file().unlink(missing_ok=True)
    _stack_file().unlink(missing_ok=True)
    return server


def shell_lines(env: dict[str, str]) -> str:
    """`export NAME=value` lines for `eval` (POSIX shells)."""
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in env.items())


def unset_lines(env: dict[str, str]) -> str:
    """`unset NAME ...` for `eval` after `down`."""
    return "unset " + " ".join(env) if env else ""


def environment_names() -> list[str]:
    """The variables `up` sets for the template as it is (for `down --shell` without a saved stack)."""
    template = load(None, EXAMPLE_PARAMETERS)
    dep = Deployment(template, tables={k: "" for k in template.tables},
                     state_machines={k: "" for k in template.state_machines},
                     buckets={k: "" for k in template.resources("AWS::S3::Bucket")})
    return list(environment(Server(0, 0), dep))
