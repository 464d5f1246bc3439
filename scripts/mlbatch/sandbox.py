"""A local mlbatch: the engine with template.yaml deployed and an example project seeded.

Shared by `mlbatch run`, `mlbatch bench` and the tests, so all three exercise the
same resources the same way.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .engine.harness import STAND_IN_PIPELINE, Deployment, Engine, Execution
from .settings import ROOT
from .template import load

__all__ = ["Sandbox", "EXAMPLE_BUCKET", "EVENTS", "load_event", "to_item", "from_item"]

EXAMPLE_BUCKET = "mlbatch-example-ingest"
EVENTS = ROOT / "tests" / "events"


def load_event(name: str) -> Any:
    """A fixture from tests/events/<name>.json."""
    return json.loads((EVENTS / f"{name}.json").read_text())


def to_item(value: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON -> DynamoDB attribute values (strings, numbers, bools, maps, lists)."""
    from boto3.dynamodb.types import TypeSerializer
    ser = TypeSerializer()
    return {k: ser.serialize(v) for k, v in value.items()}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB attribute values -> plain JSON (integral numbers as int)."""
    from decimal import Decimal

    from boto3.dynamodb.types import TypeDeserializer
    de = TypeDeserializer()

    def plain(v: Any) -> Any:
        if isinstance(v, Decimal):
            return int(v) if v == v.to_integral_value() else float(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, set)):
            return [plain(x) for x in v]
        return v
    return {k: plain(de.deserialize(v)) for k, v in item.items()}


class Sandbox:
    """Engine + deployment; use as a context manager."""

    def __init__(self, engine: Engine | None = None, parameters: dict[str, str] | None = None,
                 template_path: Path | None = None):
        self.engine = engine or Engine()
        self.template = load(template_path, {"IngestionBucketName": EXAMPLE_BUCKET, **(parameters or {})})
        self.deployment: Deployment | None = None

    def __enter__(self) -> "Sandbox":
        self.engine.__enter__()
        self.deployment = self.engine.deploy(self.template, self._stand_ins())
        return self

    def __exit__(self, *exc) -> None:
        self.engine.__exit__(*exc)

    def _stand_ins(self) -> dict[str, dict]:
        """A stand-in pipeline where the template starts one it does not declare."""
        name = self.template.resolve({"Ref": "PipelineStateMachineName"})
        declared = {self.template.physical_name(k) for k in self.template.state_machines}
        return {} if name in declared else {name: STAND_IN_PIPELINE}

    # --- resources ------------------------------------------------------------------------

    def arn(self, logical: str) -> str:
        return self.deployment.state_machines[logical]

    def table(self, logical: str) -> str:
        return self.deployment.tables[logical]

    @property
    def pipeline_arn(self) -> str:
        return self.template.substitutions("IntakeStateMachine")["PipelineStateMachineArn"]

    def put_defaults(self, item: dict[str, Any]) -> None:
        self.engine.dynamodb.put_item(TableName=self.table("ProjectDefaultsTable"), Item=to_item(item))

    def locks(self) -> list[dict[str, Any]]:
        pages = self.engine.dynamodb.get_paginator("scan").paginate(TableName=self.table("LockTable"),
                                                                      ConsistentRead=True)
        return sorted((from_item(i) for p in pages for i in p["Items"]), key=lambda i: i["lock_key"])

    def lock(self, lock_key: str) -> dict[str, Any] | None:
        item = self.engine.dynamodb.get_item(TableName=self.table("LockTable"),
                                             Key={"lock_key": {"S": lock_key}}, ConsistentRead=True).get("Item")
        return from_item(item) if item else None

    def set_lock(self, item: dict[str, Any]) -> None:
        self.engine.dynamodb.put_item(TableName=self.table("LockTable"), Item=to_item(item))

    def clear_locks(self) -> None:
        for lock in self.locks():
            self.engine.dynamodb.delete_item(TableName=self.table("LockTable"),
                                             Key={"lock_key": {"S": lock["lock_key"]}})

    def pipeline_executions(self) -> list[dict]:
        return self.engine.executions(self.pipeline_arn)

    # --- the intake -----------------------------------------------------------------------

    def intake(self, event: Any, name: str | None = None) -> Execution:
        return self.engine.run(self.arn("IntakeStateMachine"), event, name)
