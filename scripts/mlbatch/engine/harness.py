"""The engine harness: bring up the engine, deploy template.yaml's resources, run executions.

In-process (default) it is moto's Step Functions interpreter with our fixes; with
an endpoint (`AWS_ENDPOINT_URL`, the AWS SDK's own setting: `mlbatch local up`'s
server, or LocalStack on http://localhost:4566) the same calls go to that engine
and nothing is patched here. An in-process engine ignores AWS_ENDPOINT_URL
entirely, for its own clients and for the interpreter's service calls: moto
intercepts only calls to AWS hostnames, so a configured endpoint would take them
out of the mock.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from ..failures import Failure
from ..settings import ENDPOINT_ENV, REGION
from ..template import Template
from . import fixes

__all__ = ["Engine", "Deployment", "DeployError", "Execution", "STAND_IN_PIPELINE", "ROLE_ARN"]

ROLE_ARN = "arn:aws:iam::123456789012:role/mlbatch-local"

#: A machine that accepts the pipeline input and succeeds, leaving the lock alone: the
#: intake tests start it to test the intake on its own (Sandbox.intake_variant).
STAND_IN_PIPELINE = {
    "Comment": "Stand-in for the 15-minute pipeline (harness only)",
    "StartAt": "Accept the batch",
    "States": {"Accept the batch": {"Type": "Pass", "End": True}},
}

_TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}
#: botocore settings for a client that must not follow AWS_ENDPOINT_URL (or a profile's endpoint_url)
_IN_PROCESS = Config(ignore_configured_endpoint_urls=True)


class DeployError(Failure):
    """A resource of the same name exists but cannot be reused (say, a table with another key)."""


class _Boto3InProcess:
    """boto3 as moto's interpreter sees it: its clients ignore configured endpoints.

    The interpreter makes a new client for every Task (`boto_client_for`); in-process
    it passes no endpoint, so botocore would pick up AWS_ENDPOINT_URL and send the call
    past moto's interception. In server mode it passes its endpoint explicitly, which
    an explicit argument keeps."""

    def __getattr__(self, name: str):
        return getattr(boto3, name)

    @staticmethod
    def client(*args, config: Config | None = None, **kwargs):
        return boto3.client(*args, config=config.merge(_IN_PROCESS) if config else _IN_PROCESS, **kwargs)


def _key(schema: list[dict]) -> str:
    return ", ".join(f"{k['AttributeName']} ({k['KeyType']})" for k in sorted(schema, key=lambda k: k["KeyType"]))


def _isolate_interpreter_clients() -> None:
    from moto.stepfunctions.parser.asl.utils import boto_client
    if not isinstance(boto_client.boto3, _Boto3InProcess):
        boto_client.boto3 = _Boto3InProcess()


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
    actions: dict[str, str] = field(default_factory=dict)         # logical id -> created | updated | unchanged


class Engine:
    """The embedded engine (context manager).

    endpoint_url: None reads AWS_ENDPOINT_URL (unset: in-process); "" is in-process whatever
    the environment says; a URL is that engine."""

    def __init__(self, endpoint_url: str | None = None, region: str = REGION, session: boto3.Session | None = None):
        self.endpoint_url = endpoint_url if endpoint_url is not None else os.environ.get(ENDPOINT_ENV, "")
        self.region = region
        self.session = session  # None: boto3's default session (credentials from the environment)
        self._mock = None

    @property
    def backend(self) -> str:
        return f"the engine at {self.endpoint_url}" if self.endpoint_url else "moto (in-process)"

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
            _isolate_interpreter_clients()
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
        maker = self.session or boto3
        if self.endpoint_url:
            return maker.client(service, region_name=self.region, endpoint_url=self.endpoint_url)
        return maker.client(service, region_name=self.region, config=_IN_PROCESS)

    # --- deployment ---------------------------------------------------------------------

    def deploy(self, template: Template, substitutions: dict[str, dict[str, str]] | None = None) -> Deployment:
        """Create the template's tables, buckets and state machines, reusing what exists (by
        name): an existing state machine whose definition differs is updated, an existing
        table must have the template's key schema. `substitutions` overrides a state
        machine's DefinitionSubstitutions (logical id -> {name: value})."""
        dep = Deployment(template)
        for logical, res in template.tables.items():
            dep.tables[logical] = template.physical_name(logical)
            dep.actions[logical] = self.put_table(dep.tables[logical], res["Properties"])
        for logical in template.resources("AWS::S3::Bucket"):
            dep.buckets[logical] = template.physical_name(logical)
            dep.actions[logical] = self.put_bucket(dep.buckets[logical])
        for logical in template.state_machines:
            definition = template.definition(logical, (substitutions or {}).get(logical))
            kind = template.state_machines[logical]["Properties"].get("Type", "STANDARD")
            dep.state_machines[logical], dep.actions[logical] = self._put_machine(
                template.physical_name(logical), definition, kind)
        return dep

    def put_table(self, name: str, props: dict) -> str:
        """Create a table unless it exists (with the template's key schema): created | unchanged."""
        try:
            table = self.dynamodb.describe_table(TableName=name)["Table"]
        except self.dynamodb.exceptions.ResourceNotFoundException:
            self.dynamodb.create_table(
                TableName=name, KeySchema=props["KeySchema"], AttributeDefinitions=props["AttributeDefinitions"],
                BillingMode=props.get("BillingMode", "PAY_PER_REQUEST"))
            return "created"
        have, want = _key(table["KeySchema"]), _key(props["KeySchema"])
        if have != want:
            raise DeployError(f"table {name} exists with key {have}, the template's is {want}: "
                              "delete the table (or stop the local stack) and deploy again")
        return "unchanged"

    def put_bucket(self, name: str) -> str:
        """Create a bucket unless it exists: created | unchanged."""
        s3 = self.client("s3")
        try:
            s3.head_bucket(Bucket=name)
            return "unchanged"
        except s3.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
                raise
        s3.create_bucket(Bucket=name)
        return "created"

    def put_object_at(self, bucket: str, key: str, last_modified: dt.datetime, body: bytes = b"{}") -> None:
        """Put an object whose S3 LastModified is `last_modified` (naive = UTC), as a producer's file of
        that time: what the extractor, the audit and the backfill read a batch's window from. In-process
        engine only (it sets moto's own record of the object)."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends
        self.client("s3").put_object(Bucket=bucket, Key=key, Body=body)
        s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_object(bucket, key).last_modified = \
            last_modified.astimezone(dt.timezone.utc).replace(tzinfo=None) if last_modified.tzinfo else last_modified

    def _put_machine(self, name: str, definition: str, kind: str = "STANDARD") -> tuple[str, str]:
        """(ARN, created | updated | unchanged) of the state machine `name` with this definition."""
        pages = self.sfn.get_paginator("list_state_machines").paginate()
        arn = next((m["stateMachineArn"] for page in pages for m in page["stateMachines"] if m["name"] == name), None)
        if arn is None:
            return self.sfn.create_state_machine(name=name, definition=definition, roleArn=ROLE_ARN,
                                                 type=kind)["stateMachineArn"], "created"
        if self.sfn.describe_state_machine(stateMachineArn=arn)["definition"] == definition:
            return arn, "unchanged"
        self.sfn.update_state_machine(stateMachineArn=arn, definition=definition)
        return arn, "updated"

    def create_machine(self, name: str, definition: dict | str) -> str:
        """A state machine of this name with this definition (created, or updated if it exists)."""
        text = definition if isinstance(definition, str) else json.dumps(definition)
        return self._put_machine(name, text)[0]

    # --- executions ---------------------------------------------------------------------

    def start(self, state_machine_arn: str, payload: Any, name: str | None = None) -> str:
        kwargs = {"stateMachineArn": state_machine_arn, "input": json.dumps(payload)}
        if name:
            kwargs["name"] = name
        return self.sfn.start_execution(**kwargs)["executionArn"]

    def wait(self, execution_arn: str, timeout: float = 60.0,
             progress: Callable[[str], None] | None = None) -> Execution:
        """Poll until the execution ends (TimeoutError after `timeout` s); `progress` hears
        `<name>: <status> <seconds>s` on every poll."""
        began = time.monotonic()
        interval = 0.1 if self.endpoint_url else 0.01  # a poll over HTTP costs more
        while True:
            d = self.sfn.describe_execution(executionArn=execution_arn)
            if d["status"] in _TERMINAL:
                out = d.get("output")
                return Execution(execution_arn, d["status"], json.loads(out) if out else None,
                                 d.get("error"), d.get("cause"), json.loads(d.get("input") or "null"))
            elapsed = time.monotonic() - began
            if elapsed > timeout:
                raise TimeoutError(f"{execution_arn} still {d['status']} after {timeout}s")
            if progress:
                progress(f"{execution_arn.rsplit(':', 1)[-1]}: {d['status']} {elapsed:.1f}s")
            time.sleep(interval)

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
