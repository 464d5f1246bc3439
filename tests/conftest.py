"""Shared fixtures: one embedded engine with template.yaml deployed, per test session."""
from __future__ import annotations

import copy

import pytest

from mlbatch.cli import main
from mlbatch.render import environment, render_text
from mlbatch.sandbox import Sandbox, load_event
from mlbatch.settings import ROOT


@pytest.fixture(scope="session")
def sandbox():
    with Sandbox() as sb:
        sb.put_defaults(load_event("project_defaults"))
        yield sb


@pytest.fixture
def stack(sandbox):
    """The intake on its own: it starts a stand-in pipeline that leaves the lock alone."""
    sandbox.clear_locks()
    sandbox.use_intake("stand-in")
    yield sandbox
    sandbox.use_intake()


@pytest.fixture
def live(sandbox):
    """The whole flow: the intake starts the real pipeline (builders mocked per test case)."""
    sandbox.clear_locks()
    sandbox.use_intake()
    yield sandbox


@pytest.fixture
def event():
    """A fresh copy of the example live event (normalized shape)."""
    return copy.deepcopy(load_event("live_event"))


@pytest.fixture(scope="session")
def window_machine(sandbox):
    """Test-only machine: the window macros mapped over $.timestamps."""
    env = environment([ROOT / "tests" / "machines"])
    return sandbox.engine.create_machine("window-map", render_text("window_map.asl.json.j2", env))


@pytest.fixture
def cli(capsys):
    """`mlbatch ARGV` in-process, as a user runs it: (exit code, stdout, stderr); argparse's usage
    exits (code 2) included."""
    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


class DynamoDBThrottle:
    """moto's DynamoDB answering ProvisionedThroughputExceededException, call by call, as a test says.

    `on("UpdateItem", rule)`: the n-th call of that operation (0-based, retries included) is
    throttled when rule(n) is true. `unprocessed("BatchGetItem", rule)`: when rule(n), the call
    serves its first key only and returns the rest as UnprocessedKeys. The client's backoff
    waits (botocore's and batch_get's) are recorded in `waits`, not slept."""

    OPERATIONS = {"GetItem": "get_item", "UpdateItem": "update_item", "PutItem": "put_item",
                  "BatchGetItem": "batch_get_item"}

    def __init__(self, monkeypatch):
        import types

        import botocore.endpoint
        from moto.dynamodb.responses import DynamoHandler

        import mlbatch.extract
        self.calls, self.throttled, self.waits = {}, {}, []
        self._rules, self._unprocessed = {}, {}
        for operation, method in self.OPERATIONS.items():
            monkeypatch.setattr(DynamoHandler, method, self._wrap(operation, getattr(DynamoHandler, method)))
        no_sleep = types.SimpleNamespace(sleep=self.waits.append)
        monkeypatch.setattr(botocore.endpoint, "time", no_sleep)
        monkeypatch.setattr(mlbatch.extract, "time", no_sleep)

    def on(self, operation: str, rule) -> None:
        self._rules[operation] = rule

    def unprocessed(self, operation: str, rule) -> None:
        self._unprocessed[operation] = rule

    def _wrap(self, operation: str, real):
        from moto.dynamodb.exceptions import DynamodbException

        def serve(handler):
            n = self.calls.get(operation, 0)
            self.calls[operation] = n + 1
            if self._rules.get(operation, lambda n: False)(n):
                self.throttled[operation] = self.throttled.get(operation, 0) + 1
                raise DynamodbException("ProvisionedThroughputExceededException",
                                        "The level of configured provisioned throughput for the table was exceeded. "
                                        "Consider increasing your provisioning level with the UpdateTable API.")
            if not self._unprocessed.get(operation, lambda n: False)(n):
                return real(handler)
            left = {}
            for table, request in handler.body["RequestItems"].items():
                if len(request["Keys"]) > 1:
                    left[table] = {**request, "Keys": request["Keys"][1:]}
                    request["Keys"] = request["Keys"][:1]
            result = real(handler)
            result.result["UnprocessedKeys"] = left
            return result
        return serve


@pytest.fixture
def throttle(monkeypatch):
    """DynamoDB throttled at the engine (in-process moto), as the test says: see DynamoDBThrottle.
    Served normally again before other fixtures tear down (they may write)."""
    throttle = DynamoDBThrottle(monkeypatch)
    yield throttle
    throttle._rules.clear()
    throttle._unprocessed.clear()
