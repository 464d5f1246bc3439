"""The engine harness: bring up the engine, deploy template.yaml's resources, run executions.

In-process (default) it is moto's Step Functions interpreter with our fixes; with
an endpoint (`MLBATCH_ENDPOINT_URL`, e.g. LocalStack on http://localhost:4566) the
same calls go to that emulator and nothing is patched.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import boto3

from ..settings import REGION
from ..template import Template
from . import fixes

__all__ = ["Engine", "Deployment", "Execution", "STAND_IN_PIPELINE", "ROLE_ARN"]

ROLE_ARN = "arn:aws:iam::123456789012:role/mlbatch-local"

#: A machine that accepts the pipeline input and succeeds, leaving the lock alone: the
#: intake tests start it to test the intake on its own (Sandbox.intake_variant).
STAND_IN_PIPELINE = {
    "Comment": "Stand-in for the 15-minute pipeline (harness only)",
    "StartAt": "Accept the batch",
    "States": {"Accept the batch": {"Type": "Pass", "End": True}},
}

_TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}


@dataclass
class Execution:
    arn: str
    status: str
    output: Any = None
    error: str | None = None
    cause: str | None = None
    input: Any = None


@dataclass
class Deployment:
    template: Template
    state_machines: dict[str, str] = field(default_factory=dict)  # logical id -> ARN
    tables: dict[str, str] = field(default_factory=dict)          # logical id -> name
    buckets: dict[str, str] = field(default_factory=dict)         # logical id -> name


class Engine:
    """The embedded engine (context manager)."""

    def __init__(self, endpoint_url: str | None = None, region: str = REGION):
        self.endpoint_url = endpoint_url if endpoint_url is not None else os.environ.get("MLBATCH_ENDPOINT_URL")
        self.region = region
        self._mock = None

    @property
    def backend(self) -> str:
        return f"external emulator at {self.endpoint_url}" if self.endpoint_url else "moto (in-process)"

    def __enter__(self) -> "Engine":
        for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                           ("AWS_DEFAULT_REGION", self.region)):
            os.environ.setdefault(var, value)
        if not self.endpoint_url:
            from moto import mock_aws
            # The interpreter logs every caught error (Catch paths included) as a stack of
            # "Exception=..." lines; the history holds the same facts. MLBATCH_ENGINE_LOG=1 keeps them.
            if os.environ.get("MLBATCH_ENGINE_LOG") != "1":
                logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)
            fixes.apply_all()
            self._mock = mock_aws(config={"stepfunctions": {"execute_state_machine": True}})
            self._mock.start()
        self.sfn = self.client("stepfunctions")
        self.dynamodb = self.client("dynamodb")
        return self

    def __exit__(self, *exc) -> None:
        if self._mock is not None:
            self._mock.stop()
            self._mock = None

    def client(self, service: str):
        return boto3.client(service, region_name=self.region, endpoint_url=self.endpoint_url or None)

    # --- deployment ---------------------------------------------------------------------

    def deploy(self, template: Template) -> Deployment:
        """Create the template's tables, buckets and state machines."""
        dep = Deployment(template)
        for logical, res in template.tables.items():
            props = res["Properties"]
            name = template.physical_name(logical)
            self.dynamodb.create_table(
                TableName=name, KeySchema=props["KeySchema"],
                AttributeDefinitions=props["AttributeDefinitions"],
                BillingMode=props.get("BillingMode", "PAY_PER_REQUEST"))
            dep.tables[logical] = name
        s3 = self.client("s3")
        for logical in template.resources("AWS::S3::Bucket"):
            dep.buckets[logical] = template.physical_name(logical)
            s3.create_bucket(Bucket=dep.buckets[logical])
        for logical in template.state_machines:
            arn = self.sfn.create_state_machine(
                name=template.physical_name(logical), definition=template.definition(logical),
                roleArn=ROLE_ARN, type=template.state_machines[logical]["Properties"].get("Type", "STANDARD"),
            )["stateMachineArn"]
            dep.state_machines[logical] = arn
        return dep

    def create_machine(self, name: str, definition: dict | str) -> str:
        text = definition if isinstance(definition, str) else json.dumps(definition)
        return self.sfn.create_state_machine(name=name, definition=text, roleArn=ROLE_ARN)["stateMachineArn"]

    # --- executions ---------------------------------------------------------------------

    def start(self, state_machine_arn: str, payload: Any, name: str | None = None) -> str:
        kwargs = {"stateMachineArn": state_machine_arn, "input": json.dumps(payload)}
        if name:
            kwargs["name"] = name
        return self.sfn.start_execution(**kwargs)["executionArn"]

    def wait(self, execution_arn: str, timeout: float = 60.0) -> Execution:
        deadline = time.monotonic() + timeout
        while True:
            d = self.sfn.describe_execution(executionArn=execution_arn)
            if d["status"] in _TERMINAL:
                out = d.get("output")
                return Execution(execution_arn, d["status"], json.loads(out) if out else None,
                                 d.get("error"), d.get("cause"), json.loads(d.get("input") or "null"))
            if time.monotonic() > deadline:
                raise TimeoutError(f"{execution_arn} still {d['status']} after {timeout}s")
            time.sleep(0.01)

    def run(self, state_machine_arn: str, payload: Any, name: str | None = None,
            timeout: float = 60.0) -> Execution:
        return self.wait(self.start(state_machine_arn, payload, name), timeout)

    def history(self, execution_arn: str) -> list[dict]:
        events, token = [], None
        while True:
            kwargs = {"executionArn": execution_arn, "maxResults": 1000}
            if token:
                kwargs["nextToken"] = token
            page = self.sfn.get_execution_history(**kwargs)
            events += page["events"]
            token = page.get("nextToken")
            if not token:
                return events

    def executions(self, state_machine_arn: str) -> list[dict]:
        pages = self.sfn.get_paginator("list_executions").paginate(stateMachineArn=state_machine_arn)
        return [e for page in pages for e in page["executions"]]


def path(events: list[dict]) -> list[tuple[str, str]]:
    """The ordered (state, event type) pairs of an execution history."""
    out = []
    for e in events:
        details = e.get("stateEnteredEventDetails") or e.get("stateExitedEventDetails")
        if details:
            out.append((details["name"], e["type"]))
    return out


def service_calls(events: list[dict]) -> list[str]:
    """The service actions a history scheduled, in order (e.g. 'dynamodb:getItem')."""
    return [f"{e['taskScheduledEventDetails']['resourceType']}:{e['taskScheduledEventDetails']['resource']}"
            for e in events if e["type"] == "TaskScheduled"]
