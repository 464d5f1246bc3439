"""A local mlbatch: the engine with template.yaml deployed and an example project seeded.

Shared by `mlbatch run`, `mlbatch bench` and the tests, so all three exercise the
same resources the same way.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from .engine.harness import STAND_IN_PIPELINE, Deployment, Engine, Execution
from .items import from_item, to_item
from .settings import ROOT
from .template import load

__all__ = ["Sandbox", "EXAMPLE_PARAMETERS", "EVENTS", "MOCK_CONFIG", "load_event", "to_item", "from_item",
           "matches"]

EXAMPLE_PARAMETERS = {
    "ProducerTopicArn": "arn:aws:sns:us-east-1:123456789012:producer-batches",
    "IngestionBucketName": "mlbatch-example-ingest",
    "OutputBucketName": "mlbatch-example-features",
    "DeltaBuilderImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/delta-builder:1.4.0",
    "PairCountsBuilderImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/pair-counts-builder:2.1.0",
    "ExtractorImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlbatch:0.1.0",
}
EVENTS = ROOT / "tests" / "events"
#: template parameter naming a table the stack uses instead of creating it -> the resource it replaces
GIVEN_TABLES = {"ExistingLockTableName": "LockTable", "ExistingProjectDefaultsTableName": "ProjectDefaultsTable"}
#: Builder mocks, Step Functions Local format: `<pipeline ARN>#<TestCase>` runs a test case.
MOCK_CONFIG = ROOT / "tests" / "mocks" / "MockConfigFile.json"


def matches(pattern: Any, event: Any) -> bool:
    """EventBridge pattern matching for the subset SAM rules here use (nested keys, value lists)."""
    if isinstance(pattern, dict):
        return isinstance(event, dict) and all(k in event and matches(v, event[k]) for k, v in pattern.items())
    return event in pattern


def load_event(name: str) -> Any:
    """A fixture from tests/events/<name>.json."""
    return json.loads((EVENTS / f"{name}.json").read_text())


class Sandbox:
    """Engine + deployment; use as a context manager."""

    def __init__(self, engine: Engine | None = None, parameters: dict[str, str] | None = None,
                 template_path: Path | None = None, stack_name: str = "mlbatch"):
        """`engine`: the engine to use; one already running (entered) is left running on exit, so a
        second stack can deploy into it. `stack_name` prefixes every name."""
        self.engine = engine or Engine()
        self._owns_engine = not hasattr(self.engine, "sfn")  # not entered yet: this sandbox runs it
        self.template = load(template_path, {**EXAMPLE_PARAMETERS, **(parameters or {})}).with_stack_name(stack_name)
        self.deployment: Deployment | None = None
        self._intakes: dict[tuple[str, str], str] = {}
        #: the intake `intake()` runs, and the pipeline it starts (see use_intake)
        self.intake_arn = ""
        self.started_pipeline_arn = ""

    def __enter__(self) -> "Sandbox":
        os.environ.setdefault("SFN_MOCK_CONFIG", str(MOCK_CONFIG))
        if self._owns_engine:
            self.engine.__enter__()
        # what the stack is given (its parameters) exists in the account before it deploys:
        # the buckets, and the lock and defaults tables a team brings instead of creating them
        for param in ("IngestionBucketName", "OutputBucketName"):
            self.engine.put_bucket(self.template.parameters[param])
        for param, logical in GIVEN_TABLES.items():
            if self.template.parameters.get(param):
                self.engine.put_table(self.template.parameters[param],
                                      self.template.doc["Resources"][logical]["Properties"])
        self.deployment = self.engine.deploy(self.template)
        self.intake_arn = self.arn("IntakeStateMachine")
        self.started_pipeline_arn = self.pipeline_arn
        return self

    def __exit__(self, *exc) -> None:
        if self._owns_engine:
            self.engine.__exit__(*exc)

    # --- resources ------------------------------------------------------------------------

    def arn(self, logical: str) -> str:
        return self.deployment.state_machines[logical]

    def table(self, logical: str) -> str:
        """The name of a table of the stack: created by it, or given to it (bring your own)."""
        given = {v: k for k, v in GIVEN_TABLES.items()}.get(logical)
        return self.deployment.tables.get(logical) or self.template.parameters[given]

    @property
    def pipeline_arn(self) -> str:
        return self.template.substitutions("IntakeStateMachine")["PipelineStateMachineArn"]

    def intake_variant(self, pipeline: str = "pipeline", case: str | None = None) -> str:
        """The deployed intake's definition, starting another pipeline and/or a mock test case.

        pipeline="pipeline": the template's pipeline; "stand-in": a machine that accepts the
        pipeline input and leaves the lock alone (to test the intake on its own).
        case: a MockConfigFile test case, started as `<pipeline ARN>#<case>` -- the same
        substitution runs the same test on Step Functions Local or LocalStack."""
        key = (pipeline, case or "")
        if key not in self._intakes:
            target = self.pipeline_arn
            if pipeline == "stand-in" and not any(key[0] == "stand-in" for key in self._intakes):
                self.engine.create_machine(f"{self.template.stack_name}-pipeline-stand-in", STAND_IN_PIPELINE)
            if pipeline == "stand-in":
                target = self._stand_in
            subs = {"PipelineStateMachineArn": target + (f"#{case}" if case else ""),
                    "PipelineExecutionArnPrefix": target.replace(":stateMachine:", ":execution:")}
            self._intakes[key] = self.engine.create_machine(
                f"{self.template.stack_name}-intake-{pipeline}-{case or 'live'}",
                self.template.definition("IntakeStateMachine", subs))
        return self._intakes[key]

    def backfill_variant(self, case: str) -> str:
        """The deployed backfill's definition starting the pipeline as `<pipeline ARN>#<case>`,
        named `mlbatch-backfill-<case>` (the name its own test cases are keyed by)."""
        key = ("backfill", case)
        if key not in self._intakes:
            definition = self.template.definition(
                "BackfillStateMachine", {"PipelineStateMachineArn": f"{self.pipeline_arn}#{case}"})
            self._intakes[key] = self.engine.create_machine(f"{self.template.stack_name}-backfill-{case}",
                                                            definition)
        return self._intakes[key]

    def use_intake(self, pipeline: str = "pipeline", case: str | None = None) -> None:
        """Make `intake()` run that variant (the deployed intake when both are defaults)."""
        default = (pipeline, case) == ("pipeline", None)
        self.intake_arn = self.arn("IntakeStateMachine") if default else self.intake_variant(pipeline, case)
        self.started_pipeline_arn = self.pipeline_arn if pipeline == "pipeline" else self._stand_in

    @property
    def _stand_in(self) -> str:
        t = self.template
        return f"arn:aws:states:{t.region}:{t.account}:stateMachine:{t.stack_name}-pipeline-stand-in"

    def emit_status_change(self, execution_arn: str, status: str | None = None, case: str | None = None) -> list[str]:
        """Play EventBridge: the "Step Functions Execution Status Change" event of an ended
        execution goes to every state machine whose template rule matches it; their
        execution ARNs are returned. `status` overrides what the engine reports (the engine
        cannot reach TIMED_OUT quickly); `case` starts them as `<ARN>#<case>` (a MockConfigFile test case)."""
        d = self.engine.sfn.describe_execution(executionArn=execution_arn)
        event = {
            "version": "0", "id": str(uuid.uuid4()), "detail-type": "Step Functions Execution Status Change",
            "source": "aws.states", "account": self.template.account, "region": self.template.region,
            "time": d["startDate"].isoformat(), "resources": [execution_arn],
            "detail": {"executionArn": execution_arn, "stateMachineArn": d["stateMachineArn"],
                       "name": d["name"], "status": status or d["status"],
                       "startDate": int(d["startDate"].timestamp() * 1000),
                       "stopDate": int(d["stopDate"].timestamp() * 1000) if d.get("stopDate") else None,
                       "input": d.get("input"), "inputDetails": {"included": True},
                       "output": d.get("output"), "error": d.get("error"), "cause": d.get("cause")},
        }
        started = []
        for logical, arn in self.deployment.state_machines.items():
            if any(matches(rule, event) for rule in self.template.event_rules(logical)):
                started.append(self.engine.start(arn + (f"#{case}" if case else ""), event))
        return started

    def put_defaults(self, item: dict[str, Any]) -> None:
        self.engine.dynamodb.put_item(TableName=self.table("ProjectDefaultsTable"), Item=to_item(item))

    def _ledger(self) -> list[dict[str, Any]]:
        """Every item of the lock table: window locks and batch bindings."""
        pages = self.engine.dynamodb.get_paginator("scan").paginate(TableName=self.table("LockTable"),
                                                                      ConsistentRead=True)
        return sorted((from_item(i) for p in pages for i in p["Items"]), key=lambda i: i["lock_key"])

    def locks(self) -> list[dict[str, Any]]:
        """The window locks (the lock table without its batch bindings)."""
        return [i for i in self._ledger() if i.get("item_type") != "batch_binding"]

    def bindings(self) -> list[dict[str, Any]]:
        """The batch bindings (item_type = batch_binding, keyed batch#<version>#<prefix>)."""
        return [i for i in self._ledger() if i.get("item_type") == "batch_binding"]

    def binding(self, feature_spec_version: str, mini_batch_s3_prefix: str) -> dict[str, Any] | None:
        return self.lock(f"batch#{feature_spec_version}#{mini_batch_s3_prefix}")

    def lock(self, lock_key: str) -> dict[str, Any] | None:
        item = self.engine.dynamodb.get_item(TableName=self.table("LockTable"),
                                             Key={"lock_key": {"S": lock_key}}, ConsistentRead=True).get("Item")
        return from_item(item) if item else None

    def set_lock(self, item: dict[str, Any]) -> None:
        self.engine.dynamodb.put_item(TableName=self.table("LockTable"), Item=to_item(item))

    def clear_locks(self) -> None:
        """Empty the lock table: window locks and bindings."""
        for lock in self._ledger():
            self.engine.dynamodb.delete_item(TableName=self.table("LockTable"),
                                             Key={"lock_key": {"S": lock["lock_key"]}})

    def pipeline_executions(self) -> list[dict]:
        """Executions of the pipeline the current intake starts."""
        return self.engine.executions(self.started_pipeline_arn)

    # --- the intake -----------------------------------------------------------------------

    def intake(self, event: Any, name: str | None = None) -> Execution:
        return self.engine.run(self.intake_arn, event, name)
