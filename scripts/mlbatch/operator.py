"""Thin operator tools: the lock ledger, replays, project defaults."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

import boto3

from .defaults import problems
from .items import from_item, to_item

__all__ = ["OperatorError", "list_locks", "show_lock", "reset_lock", "plan_replay", "start_replay", "put_defaults"]


class OperatorError(Exception):
    """What the operator asked for cannot be done; the message says why and what to do."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the lock ledger ----------------------------------------------------------------------

def list_locks(table: str, project: str | None = None, status: str | None = None,
               start_from: str | None = None, start_to: str | None = None, ddb=None) -> list[dict]:
    """Locks filtered by project, status and window start (inclusive ISO bounds), sorted by key."""
    ddb = ddb or boto3.client("dynamodb")
    filters, names, values = [], {}, {}
    for attr, op, value in (("project_name", "=", project), ("status", "=", status),
                            ("batch_start_ts_iso", ">=", start_from), ("batch_start_ts_iso", "<=", start_to)):
        if value:
            placeholder = f":v{len(values)}"
            names[f"#{attr}"] = attr
            values[placeholder] = {"S": value}
            filters.append(f"#{attr} {op} {placeholder}")
    kwargs: dict[str, Any] = {"TableName": table}
    if filters:
        kwargs.update(FilterExpression=" AND ".join(filters), ExpressionAttributeNames=names,
                      ExpressionAttributeValues=values)
    items = [from_item(i) for page in ddb.get_paginator("scan").paginate(**kwargs) for i in page["Items"]]
    return sorted(items, key=lambda i: i["lock_key"])


def show_lock(table: str, lock_key: str, ddb=None) -> dict:
    ddb = ddb or boto3.client("dynamodb")
    item = ddb.get_item(TableName=table, Key={"lock_key": {"S": lock_key}}, ConsistentRead=True).get("Item")
    if not item:
        raise OperatorError(f"no lock {lock_key!r} in {table}: list them with `mlbatch locks list`")
    return from_item(item)


def reset_lock(table: str, lock_key: str, reason: str, dry_run: bool = False, ddb=None) -> dict:
    """Mark a lock FAILED with the operator's reason (never delete): the next delivery or replay
    of its batch runs the window again."""
    if not reason.strip():
        raise OperatorError("--reason is required: it is recorded on the lock")
    lock = show_lock(table, lock_key, ddb)
    after = {**lock, "status": "FAILED", "error": "Operator.Reset", "cause": reason,
             "reason": reason, "updated_at": _now()}
    if dry_run:
        return after
    ddb = ddb or boto3.client("dynamodb")
    ddb.update_item(
        TableName=table, Key={"lock_key": {"S": lock_key}}, ConditionExpression="attribute_exists(lock_key)",
        UpdateExpression="SET #s = :failed, #e = :e, #c = :c, #r = :r, #u = :u",
        ExpressionAttributeNames={"#s": "status", "#e": "error", "#c": "cause", "#r": "reason", "#u": "updated_at"},
        ExpressionAttributeValues={":failed": {"S": "FAILED"}, ":e": {"S": "Operator.Reset"},
                                   ":c": {"S": reason}, ":r": {"S": reason}, ":u": {"S": after["updated_at"]}})
    return show_lock(table, lock_key, ddb)


# --- replay -----------------------------------------------------------------------------------

def _normalized(payload: Any) -> dict:
    """The normalized intake event inside any accepted shape (for --force)."""
    for _ in range(4):
        if isinstance(payload, list) and len(payload) == 1:
            payload = payload[0]
        elif isinstance(payload, dict) and isinstance(payload.get("body"), str):
            payload = json.loads(payload["body"])
        elif isinstance(payload, dict) and payload.get("Type") == "Notification" and isinstance(payload.get("Message"), str):
            payload = json.loads(payload["Message"])
        else:
            break
    if not (isinstance(payload, dict) and "s3_key" in payload and "timestamp" in payload):
        raise OperatorError("--force needs an intake input holding an event with s3_key and timestamp")
    return payload


def _kind(state_machine_arn: str, sfn) -> str:
    """intake | pipeline | backfill | other, from the definition's first state."""
    definition = json.loads(sfn.describe_state_machine(stateMachineArn=state_machine_arn)["definition"])
    return {"Which input shape is the event?": "intake", "Is the pipeline input complete?": "pipeline",
            "Set the backfill defaults": "backfill"}.get(definition["StartAt"], "other")


def plan_replay(execution_arn: str, force: bool = False, reason: str | None = None, sfn=None) -> dict:
    """What `mlbatch replay` would start: the state machine, a traceable name and the input."""
    sfn = sfn or boto3.client("stepfunctions")
    try:
        ex = sfn.describe_execution(executionArn=execution_arn)
    except sfn.exceptions.ExecutionDoesNotExist:
        raise OperatorError(f"no execution {execution_arn!r}: copy the ARN from the console or list-executions") from None
    machine, payload = ex["stateMachineArn"], json.loads(ex["input"])
    kind = _kind(machine, sfn)
    if force:
        if kind != "intake":
            raise OperatorError("--force applies to intake executions (it re-runs a SUCCEEDED window)")
        if not reason:
            raise OperatorError("--force needs --reason TEXT: it is recorded on the lock")
        payload = {**_normalized(payload), "force": True, "reason": reason}
    original = ex["name"].split("-replay-")[0]
    taken = {e["name"] for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=machine)
             for e in page["executions"]}
    n = 1
    while f"{original[:80 - len(f'-replay-{n}')]}-replay-{n}" in taken:
        n += 1
    plan = {"state_machine_arn": machine, "kind": kind, "status": ex["status"],
            "name": f"{original[:80 - len(f'-replay-{n}')]}-replay-{n}", "input": payload}
    if kind == "pipeline":
        plan["advice"] = ("A pipeline run finalizes only the lock it owns: a new pipeline execution would run "
                          "the builders and then fail with Pipeline.LockLost. Replay the intake execution that "
                          "started it (its input is the batch event); a FAILED window is re-acquired."
                          + (" --redrive re-runs this very execution from its failed state, which keeps the lock."
                             if ex["status"] in ("FAILED", "TIMED_OUT", "ABORTED") else ""))
    return plan


def start_replay(plan: dict, sfn=None) -> str:
    sfn = sfn or boto3.client("stepfunctions")
    return sfn.start_execution(stateMachineArn=plan["state_machine_arn"], name=plan["name"],
                               input=json.dumps(plan["input"]))["executionArn"]


def redrive(execution_arn: str, sfn=None) -> str:
    sfn = sfn or boto3.client("stepfunctions")
    try:
        sfn.redrive_execution(executionArn=execution_arn)
    except NotImplementedError:
        raise OperatorError("this endpoint does not implement RedriveExecution (AWS does)") from None
    except Exception as exc:
        raise OperatorError(f"RedriveExecution refused: {exc}") from None
    return execution_arn


# --- project defaults -----------------------------------------------------------------------

def put_defaults(table: str, items: list[dict], dry_run: bool = False, ddb=None) -> list[str]:
    """Validate every item first; write them only if all are valid. Returns the project names."""
    bad = {i: p for i, item in enumerate(items) if (p := problems(item))}
    if bad:
        raise OperatorError("; ".join(f"item {i} ({items[i].get('project_name', '?') if isinstance(items[i], dict) else '?'}): "
                                      + ", ".join(p) for i, p in bad.items()))
    if not dry_run:
        ddb = ddb or boto3.client("dynamodb")
        for item in items:
            ddb.put_item(TableName=table, Item=to_item(item))
    return [item["project_name"] for item in items]

