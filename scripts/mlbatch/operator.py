"""Thin operator tools: the lock ledger, replays, project defaults."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .clients import client as aws_client
from .failures import Failure, explain, is_error_page
from .defaults import problems
from .items import from_item, to_item

__all__ = ["backfill_run", "backfill_runs", "complete_backfill_run", "OperatorError", "list_locks", "show_lock", "ResetPlan", "plan_reset", "apply_reset", "reset_lock",
           "pipeline_status", "replay_name", "plan_replay", "start_replay", "redrive", "redrive_refusal", "put_defaults"]


class OperatorError(Failure):
    """What the operator asked for cannot be done; the message says why and what to do."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the lock ledger ----------------------------------------------------------------------

def list_locks(table: str, project: str | None = None, status: str | None = None,
               start_from: str | None = None, start_to: str | None = None, ddb=None,
               mini_batch: str | None = None, source: str | None = None) -> list[dict]:
    """Locks filtered by project, status, mini-batch, source and window start (inclusive
    `YYYY-MM-DDTHH:MM:SSZ` bounds), sorted by key. Items holding only `lock_key` are listed too
    (they match no filter on an attribute they lack)."""
    ddb = ddb or aws_client("dynamodb")
    filters, names, values = [], {}, {}
    for attr, op, value in (("project_name", "=", project), ("status", "=", status),
                            ("mini_batch_id", "=", mini_batch), ("source", "=", source),
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
    if any("lock_key" not in i for i in items):
        keys = sorted(set().union(*(i.keys() for i in items if "lock_key" not in i)))
        raise OperatorError(f"table {table!r} holds items without lock_key (they have {', '.join(keys)}): it is "
                            "not a lock table; name the lock table with --table or MLBATCH_LOCK_TABLE")
    return sorted(items, key=lambda i: i["lock_key"])


def _lock_item(table: str, lock_key: str, ddb) -> dict | None:
    """The lock item as DynamoDB returns it (a consistent read), or None."""
    return ddb.get_item(TableName=table, Key={"lock_key": {"S": lock_key}}, ConsistentRead=True).get("Item")


def _raw_lock(table: str, lock_key: str, ddb) -> dict:
    item = _lock_item(table, lock_key, ddb)
    if not item:
        raise OperatorError(f"no lock {lock_key!r} in {table}: list them with `mlbatch locks list`")
    return item


def show_lock(table: str, lock_key: str, ddb=None) -> dict:
    """The lock item as plain JSON (whatever attributes it has)."""
    return from_item(_raw_lock(table, lock_key, ddb or aws_client("dynamodb")))


def pipeline_status(lock: dict, sfn=None) -> dict:
    """The pipeline execution a lock names and its status (DescribeExecution), as far as known."""
    arn = lock.get("pipeline_execution_arn")
    if not isinstance(arn, str) or not arn:
        return {"pipeline_execution_arn": None, "status": "unknown (the lock names no pipeline execution)"}
    sfn = sfn or aws_client("stepfunctions")
    try:
        return {"pipeline_execution_arn": arn, "status": sfn.describe_execution(executionArn=arn)["status"]}
    except sfn.exceptions.ExecutionDoesNotExist:
        return {"pipeline_execution_arn": arn, "status": "not found (in this account and region)"}


def owner_phrase(owner: dict) -> str:
    """'its pipeline execution ARN is STATUS', or that the lock names none (never 'execution None')."""
    if not owner.get("pipeline_execution_arn"):
        return "the lock names no pipeline execution, so nothing tells whether a run is alive"
    return f"its pipeline execution {owner['pipeline_execution_arn']} is {owner['status']}"


@dataclass
class ResetPlan:
    """What `locks reset` would write: the lock now and after, and (IN_PROGRESS) its pipeline."""

    table: str
    before: dict
    after: dict
    raw: dict = field(repr=False)
    owner: dict | None = None


def plan_reset(table: str, lock_key: str, reason: str, in_progress_ok: bool = False, ddb=None,
               sfn=None) -> ResetPlan:
    """Check a reset and say what it would write; an IN_PROGRESS lock is refused unless
    `in_progress_ok` (its pipeline may still run: a reset lets a second run start beside it)."""
    if not reason.strip():
        raise OperatorError("--reason is required: it is recorded on the lock")
    ddb = ddb or aws_client("dynamodb")
    raw = _raw_lock(table, lock_key, ddb)
    lock = from_item(raw)
    owner = None
    if lock.get("status") == "IN_PROGRESS":
        owner = pipeline_status(lock, sfn)
        if not in_progress_ok:
            running = owner["status"] == "RUNNING"
            raise OperatorError(
                f"lock {lock_key!r} is IN_PROGRESS: {owner_phrase(owner)}. "
                + ("Resetting it would let a second run of the window start beside it: stop that execution "
                   "first (aws stepfunctions stop-execution), or wait for it. " if running else "")
                + "To reset it anyway, add --in-progress-ok")
    after = {**lock, "status": "FAILED", "error": "Operator.Reset", "cause": reason, "reason": reason,
             "updated_at": _now()}
    for name in ("error", "cause"):
        after.pop(f"previous_{name}", None)
        if name in lock:
            after[f"previous_{name}"] = lock[name]
    return ResetPlan(table, lock, after, raw, owner)


def apply_reset(plan: ResetPlan, ddb=None) -> dict:
    """Write a planned reset, on the condition that the lock still has the status it was read
    with (a concurrent acquire or finalize wins; nothing is overwritten). Returns the lock after."""
    ddb = ddb or aws_client("dynamodb")
    names = {"#s": "status", "#e": "error", "#c": "cause", "#r": "reason", "#u": "updated_at",
             "#pe": "previous_error", "#pc": "previous_cause"}
    values = {":failed": {"S": "FAILED"}, ":e": {"S": "Operator.Reset"}, ":c": {"S": plan.after["reason"]},
              ":u": {"S": plan.after["updated_at"]}}
    sets = ["#s = :failed", "#e = :e", "#c = :c", "#r = :c", "#u = :u"]
    removes = []
    for name, placeholder, value in (("error", "#pe", ":pe"), ("cause", "#pc", ":pc")):
        if name in plan.raw:
            sets.append(f"{placeholder} = {value}")
            values[value] = plan.raw[name]
        else:
            removes.append(placeholder)
    if "status" in plan.raw:
        condition = "attribute_exists(lock_key) AND #s = :was"
        values[":was"] = plan.raw["status"]
    else:
        condition = "attribute_exists(lock_key) AND attribute_not_exists(#s)"
    key = plan.before["lock_key"]
    try:
        ddb.update_item(TableName=plan.table, Key={"lock_key": {"S": key}}, ConditionExpression=condition,
                        UpdateExpression="SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else ""),
                        ExpressionAttributeNames=names, ExpressionAttributeValues=values)
    except ddb.exceptions.ConditionalCheckFailedException:
        now = from_item(_lock_item(plan.table, key, ddb) or {"status": {"S": "(deleted)"}})
        raise OperatorError(f"lock {key!r} changed while it was being reset (it was {plan.before.get('status')}, "
                            f"now {now.get('status')}): nothing was written; look at it again "
                            "(`mlbatch locks show`) before deciding") from None
    return show_lock(plan.table, key, ddb)


def reset_lock(table: str, lock_key: str, reason: str, dry_run: bool = False, ddb=None,
               in_progress_ok: bool = False, sfn=None) -> dict:
    """Mark a lock FAILED with the operator's reason (never delete): the next delivery or replay
    of its batch runs the window again. Returns the lock after (or as it would be, dry_run)."""
    plan = plan_reset(table, lock_key, reason, in_progress_ok, ddb, sfn)
    return plan.after if dry_run else apply_reset(plan, ddb)


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


#: AWS: an execution name has at most 80 characters
NAME_MAX = 80


def replay_name(original: str, n: int) -> str:
    """`<original>-replay-<n>` within 80 characters: a name too long keeps its head and gets a
    short hash of the whole original, so replays of different long names stay apart."""
    suffix = f"-replay-{n}"
    if len(original) + len(suffix) <= NAME_MAX:
        return original + suffix
    digest = hashlib.sha256(original.encode()).hexdigest()[:8]
    return f"{original[:NAME_MAX - len(suffix) - len(digest) - 1]}-{digest}{suffix}"


def _free_name(machine_arn: str, original: str, sfn) -> str:
    prefix = machine_arn.replace(":stateMachine:", ":execution:", 1)
    for n in range(1, 10_000):
        name = replay_name(original, n)
        try:
            sfn.describe_execution(executionArn=f"{prefix}:{name}")
        except sfn.exceptions.ExecutionDoesNotExist:
            return name
    raise OperatorError(f"{original!r} has been replayed 9,999 times: start it under a name of your own")


def _window_owner(payload: Any, execution_arn: str, lock_table: str | None, ddb) -> str:
    """Which intake execution owns the window a pipeline execution ran for, as a sentence."""
    lock_key = payload.get("lock_key") if isinstance(payload, dict) else None
    if not lock_key:
        return "Its input names no lock_key, so no window owns it."
    if not lock_table:
        return (f"The lock {lock_key!r} names the intake execution that owns the window (owner_execution_arn): "
                "name the lock table with --table or MLBATCH_LOCK_TABLE to see it.")
    ddb = ddb or aws_client("dynamodb")
    item = _lock_item(lock_table, lock_key, ddb)
    if not item:
        return f"No lock {lock_key!r} in {lock_table}: the window is free, replay the batch's intake event."
    lock = from_item(item)
    owner = lock.get("owner_execution_arn")
    if not owner:
        return f"The lock {lock_key!r} names no owner_execution_arn (written by another orchestrator?)."
    since = ("" if lock.get("pipeline_execution_arn") == execution_arn else
             f" (the window has been re-acquired since: its pipeline is now {lock.get('pipeline_execution_arn')})")
    return f"The intake execution that owns the window: {owner}{since}; replay it: `mlbatch replay {owner}`."


def plan_replay(execution_arn: str, force: bool = False, reason: str | None = None, sfn=None,
                lock_table: str | None = None, ddb=None) -> dict:
    """What `mlbatch replay` would start: the state machine, a traceable name and the input."""
    sfn = sfn or aws_client("stepfunctions")
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
    original = re.sub(r"-replay-\d+$", "", ex["name"])
    plan = {"state_machine_arn": machine, "kind": kind, "status": ex["status"],
            "name": _free_name(machine, original, sfn), "input": payload}
    if kind == "pipeline":
        plan["advice"] = ("A pipeline builds only as the run its window lock names: a new pipeline execution "
                          "would stop at its lock check with Pipeline.LockLost, running no builder. Replay the "
                          "intake execution that "
                          "started it (its input is the batch event); a FAILED window is re-acquired. "
                          + _window_owner(payload, execution_arn, lock_table, ddb)
                          + (" --redrive re-runs this very execution from its failed state: only while the lock is "
                             "still IN_PROGRESS and names it (replay checks)."
                             if ex["status"] in ("FAILED", "TIMED_OUT", "ABORTED") else ""))
    return plan


def redrive_refusal(execution_arn: str, lock_table: str | None, sfn=None, ddb=None) -> str | None:
    """Why redriving this execution would run a second pipeline of its batch, or None. A pipeline that
    ended unsuccessfully has almost always lost its lock (its own Catch or lock_release marked it
    FAILED): a redriven run would run the builders again and end Pipeline.LockLost, while the next
    delivery, heal or sweep re-acquires the FAILED window beside it. Only a pipeline whose lock is
    still IN_PROGRESS and names it (its final write failed and nothing released it) may be redriven."""
    sfn = sfn or aws_client("stepfunctions")
    try:
        ex = sfn.describe_execution(executionArn=execution_arn)
    except sfn.exceptions.ExecutionDoesNotExist:
        raise OperatorError(f"no execution {execution_arn!r}: copy the ARN from the console or list-executions") from None
    if ex["status"] not in ("FAILED", "TIMED_OUT", "ABORTED") or _kind(ex["stateMachineArn"], sfn) != "pipeline":
        return None
    payload = json.loads(ex.get("input") or "null")
    lock_key = payload.get("lock_key") if isinstance(payload, dict) else None
    if not lock_key:
        return None
    if not lock_table:
        return ("a redriven pipeline runs its builders again: name the lock table (--table or MLBATCH_LOCK_TABLE) so "
                "that replay can check the execution still owns its window's lock")
    item = _lock_item(lock_table, lock_key, ddb or aws_client("dynamodb"))
    lock = from_item(item) if item else {}
    if lock.get("status") == "IN_PROGRESS" and lock.get("pipeline_execution_arn") == execution_arn:
        return None
    holder = lock.get("pipeline_execution_arn")
    return (f"the window's lock {lock_key!r} is {lock.get('status', 'absent') if item else 'absent'}"
            + ("" if holder in (None, execution_arn) else f" and names the pipeline run {holder}")
            + ": this execution no longer owns it, so a redriven run would run both builders again and then fail "
              "Pipeline.LockLost, while the next delivery, heal or sweep re-acquires the window beside it. "
              + _window_owner(payload, execution_arn, lock_table, ddb))


def start_replay(plan: dict, sfn=None) -> str:
    """Start what plan_replay planned; the new execution's ARN."""
    sfn = sfn or aws_client("stepfunctions")
    return sfn.start_execution(stateMachineArn=plan["state_machine_arn"], name=plan["name"],
                               input=json.dumps(plan["input"]))["executionArn"]


def redrive(execution_arn: str, sfn=None) -> str:
    """AWS RedriveExecution: the same execution again from its failed states (keeps the lock)."""
    from botocore.exceptions import ClientError
    sfn = sfn or aws_client("stepfunctions")
    unsupported = ("this endpoint does not implement RedriveExecution (AWS does; the embedded engine does not): "
                   "replay the intake execution instead (`mlbatch replay --dry-run` on this one names it)")
    try:
        sfn.redrive_execution(executionArn=execution_arn)
    except NotImplementedError:
        raise OperatorError(unsupported) from None
    except ClientError as exc:
        if is_error_page(exc):  # not an AWS error: no such operation here
            raise OperatorError(unsupported) from None
        error = exc.response.get("Error", {})
        raise OperatorError(f"RedriveExecution refused: {error.get('Code')}: {error.get('Message')}") from None
    return execution_arn


# --- project defaults -----------------------------------------------------------------------

def put_defaults(table: str, items: list[dict], dry_run: bool = False, ddb=None) -> list[str]:
    """Validate every item first; write them only if all are valid. Returns the project names."""
    bad = {i: p for i, item in enumerate(items) if (p := problems(item))}
    if bad:
        raise OperatorError("; ".join(f"item {i} ({items[i].get('project_name', '?') if isinstance(items[i], dict) else '?'}): "
                                      + ", ".join(p) for i, p in bad.items()))
    if not dry_run:
        ddb = ddb or aws_client("dynamodb")
        for n, item in enumerate(items):
            try:
                ddb.put_item(TableName=table, Item=to_item(item))
            except Exception as exc:
                if not n or explain(exc) is None:  # nothing written yet: the error as it is
                    raise
                raise OperatorError(f"{explain(exc)}; written before it: "
                                    f"{', '.join(i['project_name'] for i in items[:n])} ({n} of {len(items)}); "
                                    "putting the same files again is safe") from None
    return [item["project_name"] for item in items]



# --- backfill runs ------------------------------------------------------------------------------

def backfill_run(table: str, run_id: str, ddb=None) -> dict:
    """A backfill's run record with `units_not_started`: one entry per unit that did not start
    (its manifest line, outcome, error, cause), in manifest order."""
    ddb = ddb or aws_client("dynamodb")
    pages = ddb.get_paginator("query").paginate(
        TableName=table, KeyConditionExpression="run_id = :r", ConsistentRead=True,
        ExpressionAttributeValues={":r": {"S": run_id}})
    items = [from_item(i) for page in pages for i in page["Items"]]
    record = next((i for i in items if i.get("entry") == "run"), None)
    if record is None:
        raise OperatorError(f"no backfill run {run_id!r} in {table}: list them with `mlbatch backfill list`")
    units = [{"line": int(i["entry"].removeprefix("unit#")), **{k: v for k, v in i.items() if k not in ("run_id", "entry")}}
             for i in items if i.get("entry", "").startswith("unit#")]
    return {**{k: v for k, v in record.items() if k != "entry"}, "units_not_started": sorted(units, key=lambda u: u["line"])}


def complete_backfill_run(table: str, run: dict, ddb=None, sfn=None, dry_run: bool = False) -> dict | None:
    """Close a run record the backfill could not close ("Close the run record" failed after its retries,
    the output names it under `unwritten`): its units and uncounted are taken from the ended execution's
    output, its closed_at from the execution's stop time. Returns what was (or, dry_run, would be)
    written, or None when there is nothing to complete (closed, still running, or no usable output).
    The units' own counts stay as the units ADDed them."""
    if run.get("closed_at") or not run.get("execution_arn"):
        return None
    sfn = sfn or aws_client("stepfunctions")
    execution = sfn.describe_execution(executionArn=run["execution_arn"])
    output = json.loads(execution.get("output") or "null")
    if execution["status"] != "SUCCEEDED" or not isinstance(output, dict):
        return None
    units, uncounted = output.get("units"), output.get("uncounted")
    if not (isinstance(units, int) and isinstance(uncounted, int) and units >= 0 and uncounted >= 0):
        return None
    closed_at = execution["stopDate"].astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    done = {"units": units, "uncounted": uncounted, "closed_at": closed_at, "closed_by": "mlbatch backfill show"}
    if not dry_run:
        ddb = ddb or aws_client("dynamodb")
        try:
            ddb.update_item(
                TableName=table, Key={"run_id": {"S": run["run_id"]}, "entry": {"S": "run"}},
                ConditionExpression="attribute_not_exists(#closed_at)",
                UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in done),
                ExpressionAttributeNames={f"#{k}": k for k in done},
                ExpressionAttributeValues={f":{k}": v for k, v in to_item(done).items()})
        except ddb.exceptions.ConditionalCheckFailedException:
            return None  # closed in the meantime
    return done


def backfill_runs(table: str, ddb=None) -> list[dict]:
    """Every backfill run's record (no unit entries), newest first."""
    ddb = ddb or aws_client("dynamodb")
    pages = ddb.get_paginator("scan").paginate(
        TableName=table, FilterExpression="#e = :run", ExpressionAttributeNames={"#e": "entry"},
        ExpressionAttributeValues={":run": {"S": "run"}})
    runs = [{k: v for k, v in from_item(i).items() if k != "entry"} for page in pages for i in page["Items"]]
    return sorted(runs, key=lambda r: r.get("opened_at", ""), reverse=True)
