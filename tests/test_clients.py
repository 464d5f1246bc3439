"""The AWS clients of every mlbatch command: one retry policy fit for throttling, configurable."""
from __future__ import annotations

import boto3
import pytest
from botocore.config import Config

from mlbatch import clients


@pytest.fixture(autouse=True)
def no_retry_settings(monkeypatch, tmp_path):
    """No retry setting from the environment, a profile or a previous command."""
    for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    clients.configure()
    yield
    clients.configure()


def retries(client) -> tuple[str, int]:
    config = client.meta.config.retries
    return config["mode"], config["total_max_attempts"]


def test_commands_retry_15_times_in_standard_mode_unless_told_otherwise(monkeypatch, tmp_path):
    assert retries(clients.client("dynamodb", region_name="us-east-1")) == ("standard", 15)

    (tmp_path / "config").write_text("[default]\nmax_attempts = 6\nretry_mode = adaptive\n")
    assert retries(clients.client("dynamodb", region_name="us-east-1")) == ("adaptive", 6)  # the profile

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("AWS_RETRY_MODE", "legacy")
    assert retries(clients.client("s3", region_name="us-east-1")) == ("legacy", 7)  # the environment over it

    clients.configure(max_attempts=20, mode="standard")
    assert retries(clients.client("stepfunctions", region_name="us-east-1")) == ("standard", 20)  # the CLI's option


@pytest.mark.parametrize("variable, value, complaint", [
    ("AWS_MAX_ATTEMPTS", "lots", "AWS_MAX_ATTEMPTS (or the profile's max_attempts) is 'lots', not a whole number"),
    ("AWS_MAX_ATTEMPTS", "0", "AWS_MAX_ATTEMPTS (or the profile's max_attempts) is '0'"),
    ("AWS_RETRY_MODE", "eager", "AWS_RETRY_MODE (or the profile's retry_mode) is 'eager', not one of standard"),
])
def test_a_retry_setting_that_is_not_valid_is_named_in_one_line(variable, value, complaint, monkeypatch, cli):
    monkeypatch.setenv(variable, value)
    code, out, err = cli("locks", "list", "--table", "t")
    assert (code, out) == (1, "") and complaint in err and "Traceback" not in err and err.count("\n") == 1


def test_a_throttled_call_keeps_its_attempt_budget_when_the_retry_quota_runs_out(sandbox, throttle):
    """botocore's standard mode spends a per-client retry quota (500 tokens, 5 per throttled retry):
    2 throttles per call use it up after 100 calls, and later throttles fail at once. The commands'
    clients keep retrying throttles until their attempt budget is spent."""
    # GIVEN DynamoDB throttling 2 of every 3 GetItem attempts, for 120 calls
    throttle.on("GetItem", lambda n: n % 3 != 2)
    table, key = sandbox.table("LockTable"), {"lock_key": {"S": "quota#1"}}

    def failures(ddb) -> int:
        failed = 0
        for _ in range(120):
            try:
                ddb.get_item(TableName=table, Key=key)
            except ddb.exceptions.ProvisionedThroughputExceededException:
                failed += 1
        return failed

    # WHEN a plain client with the same budget and a command's client make them
    plain = boto3.client("dynamodb", region_name="us-east-1",
                         config=Config(retries={"mode": "standard", "total_max_attempts": clients.DEFAULT_MAX_ATTEMPTS}))
    plain_failures = failures(plain)
    ours = failures(clients.client("dynamodb", region_name="us-east-1"))

    # THEN the plain one fails once its quota is gone, the command's never
    assert plain_failures > 0 and ours == 0


def test_every_command_makes_its_aws_clients_in_one_place():
    """Outside mlbatch.clients only the engine harness, the local stack's deploy and the benchmark
    (which talk to the embedded engine, not to AWS) make boto3 clients of their own."""
    import re

    from mlbatch.settings import ROOT
    package = ROOT / "scripts" / "mlbatch"
    own = {"clients.py", "bench.py", "local.py"}
    makers = re.compile(r"boto3\.(client|resource|Session|session\.Session)\(")
    found = [f"{path.relative_to(package)}:{n}" for path in sorted(package.rglob("*.py"))
             if path.name not in own and path.parent.name != "engine"
             for n, line in enumerate(path.read_text().splitlines(), 1) if makers.search(line)]
    assert found == []
