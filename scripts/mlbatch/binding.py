"""Batch bindings in the lock table: how every reader finds the window a batch is bound to, and
`mlbatch locks bind`, the migration that binds the batches of window locks written before bindings.

A batch folder (its ``mini_batch_s3_prefix`` under one ``feature_spec_version``) is bound to one
window the first time a flow claims it: an item keyed :func:`~mlbatch.extract.binding_key`, with
``item_type = batch_binding`` and the bound window (``window_lock_key``, ``batch_start_ts_iso``,
``batch_end_ts_iso``). See docs/contracts.md (the batch binding contract) and docs/upgrading.md.
"""
from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable
from typing import Any

from .extract import batch_get, binding_key, lock_key
from .failures import Failure
from .items import from_item

__all__ = ["BINDING_TYPE", "BINDING_FIELDS", "MIGRATION_BY", "kind", "is_binding", "read_bindings", "bound_window",
           "bound_windows", "window_rank", "BindPlan", "plan_bind", "apply_bind", "missing_bindings", "with_batches", "related"]

BINDING_TYPE = "batch_binding"
#: Every attribute of a binding item (all strings), as the contract names them.
BINDING_FIELDS = ("item_type", "feature_spec_version", "mini_batch_s3_prefix", "project_name", "mini_batch_id",
                  "window_lock_key", "batch_start_ts_iso", "batch_end_ts_iso", "bound_at", "bound_by", "bound_source")
#: bound_by of the migration's bindings (a flow writes its execution ARN).
MIGRATION_BY = "mlbatch locks bind"
#: What readers need of a binding (BatchGetItem's projection).
_READ_FIELDS = ("lock_key", "item_type", "window_lock_key", "batch_start_ts_iso", "batch_end_ts_iso", "bound_source")


class BindError(Failure):
    """The migration cannot go on; the message says why."""


def is_binding(item: dict) -> bool:
    """A binding item (plain JSON): its item_type says so, or its key has the binding's form."""
    return item.get("item_type") == BINDING_TYPE or str(item.get("lock_key", "")).startswith("batch#")


def kind(item: dict) -> str:
    """`binding` or `window` (a window lock: anything else in the lock table)."""
    return "binding" if is_binding(item) else "window"


def _plain(item: dict) -> dict:
    return {k: v["S"] if "S" in v else from_item({k: v})[k] for k, v in item.items()}


def read_bindings(dynamodb, table: str, keys: list[str], on_call: Callable[[], None] | None = None) -> dict[str, dict]:
    """The bindings of these binding keys (at most 100, distinct), consistent reads, one BatchGetItem
    (plus retries of throttled keys): binding key -> plain binding. Items at a binding key that are
    not bindings, or name no window, are left out (the unit then audits by its own window)."""
    if not keys:
        return {}
    names = {f"#b{i}": name for i, name in enumerate(_READ_FIELDS)}
    items = batch_get(dynamodb, table, [{"lock_key": {"S": k}} for k in keys], consistent=True,
                      projection=", ".join(names), names=names, on_call=on_call)
    out = {}
    for item in map(_plain, items):
        if item.get("item_type") == BINDING_TYPE and isinstance(item.get("window_lock_key"), str):
            out[item["lock_key"]] = item
    return out


def bound_window(unit: dict, binding: dict | None) -> tuple[str, str, str, dict | None]:
    """(lock key, start, end, window_adopted_from) of a unit: the bound window when it has a binding,
    else its own; window_adopted_from is the unit's own window when the bound one differs, else None."""
    own = lock_key(unit)
    if binding is None or binding["window_lock_key"] == own:
        return own, unit["batch_start_ts_iso"], unit["batch_end_ts_iso"], None
    # a partial binding: its window lock key holds the window
    start, end = _window_of(binding, binding["window_lock_key"]) or (binding.get("batch_start_ts_iso"),
                                                                       binding.get("batch_end_ts_iso"))
    adopted_from = {"lock_key": own, "batch_start_ts_iso": unit["batch_start_ts_iso"],
                    "batch_end_ts_iso": unit["batch_end_ts_iso"]}
    return binding["window_lock_key"], start, end, adopted_from


def bound_windows(dynamodb, table: str, units: list[dict],
                  on_call: Callable[[], None] | None = None) -> list[tuple | None]:
    """Every reader's join of units (at most 100) with their bindings, one BatchGetItem: per unit
    (lock key, start, end, window_adopted_from, binding) as :func:`bound_window` gives them, the
    binding or None; None for a unit without feature_spec_version (an unknown project)."""
    bkeys = [binding_key(u["feature_spec_version"], u["mini_batch_s3_prefix"])
             if u.get("feature_spec_version") is not None else None for u in units]
    bindings = read_bindings(dynamodb, table, list(dict.fromkeys(k for k in bkeys if k)), on_call=on_call)
    return [(*bound_window(unit, bindings.get(k)), bindings.get(k)) if k else None for unit, k in zip(units, bkeys)]


# --- the migration: `mlbatch locks bind` ------------------------------------------------------------

_STATUS_RANK = {"SUCCEEDED": 0, "IN_PROGRESS": 1, "FAILED": 2}


def window_rank(lock: dict) -> tuple:
    """Which of several window locks of one batch its binding names (the smallest): SUCCEEDED before
    IN_PROGRESS before FAILED before anything else, then the earliest `acquired_at` (none: last),
    then the key."""
    acquired = lock.get("acquired_at")
    return (_STATUS_RANK.get(lock.get("status"), 3), 0 if isinstance(acquired, str) else 1,
            acquired if isinstance(acquired, str) else "", lock["lock_key"])


def _window_of(item: dict, key: str) -> tuple[str, str] | None:
    """(start, end) of a window lock or a binding: its own attributes, else the two last fields of
    `key`, the window lock key (`<project>#<version>#<start>#<end>`); None when neither has them."""
    start, end = item.get("batch_start_ts_iso"), item.get("batch_end_ts_iso")
    if isinstance(start, str) and isinstance(end, str):
        return start, end
    parts = key.split("#")
    return (parts[-2], parts[-1]) if len(parts) >= 4 else None


def _binding_for(lock: dict, now: str) -> dict[str, str]:
    fsv, prefix = lock["feature_spec_version"], lock["mini_batch_s3_prefix"]
    start, end = _window_of(lock, lock["lock_key"])
    return {"item_type": BINDING_TYPE, "feature_spec_version": fsv, "mini_batch_s3_prefix": prefix,
            "project_name": str(lock.get("project_name") or lock["lock_key"].split("#")[0]),
            "mini_batch_id": str(lock.get("mini_batch_id") or prefix.rstrip("/").rsplit("/", 1)[-1]),
            "window_lock_key": lock["lock_key"], "batch_start_ts_iso": start, "batch_end_ts_iso": end,
            "bound_at": now, "bound_by": MIGRATION_BY, "bound_source": "migration"}


class BindPlan:
    """What `locks bind` found: one line per window lock (with its outcome), and the bindings to write."""

    def __init__(self):
        self.lines: list[dict] = []
        self.writes: list[tuple[dict, dict]] = []  # (the line, the binding to write)
        self.counts: Counter = Counter()

    def summary(self, dry_run: bool) -> dict[str, Any]:
        c = self.counts
        return {"window_locks": len(self.lines), "batches": c["batches"],
                "bound": 0 if dry_run else c["bound"], "would_bind": len(self.writes) if dry_run else 0,
                "skipped": c["skipped"], "unbindable": c["unbindable"], "conflicts": c["conflict"],
                "duplicates": c["duplicate"], "dry_run": dry_run}


def plan_bind(table: str, ddb, project: str | None = None) -> BindPlan:
    """Scan the lock table (only `project`'s items when given) and plan a binding for every batch of
    window locks that has none. Each window lock's line says: `bind` (this lock's batch gets bound
    to it), `skipped` (already bound to it), `conflict` (bound to another window, which stays),
    `duplicate` (another window lock of the same batch is the one bound, see :func:`window_rank`),
    `unbindable` (no mini_batch_s3_prefix or feature_spec_version: written by another orchestrator)."""
    kwargs: dict[str, Any] = {"TableName": table}
    if project:
        kwargs.update(FilterExpression="#p = :p", ExpressionAttributeNames={"#p": "project_name"},
                      ExpressionAttributeValues={":p": {"S": project}})
    bindings, batches = {}, {}
    plan = BindPlan()
    for page in ddb.get_paginator("scan").paginate(**kwargs):
        for item in map(from_item, page["Items"]):
            if "lock_key" not in item:
                raise BindError(f"table {table!r} holds items without lock_key: it is not a lock table; name the "
                                "lock table with --table or MLBATCH_LOCK_TABLE")
            if is_binding(item):
                bindings[item["lock_key"]] = item
                continue
            fsv, prefix = item.get("feature_spec_version"), item.get("mini_batch_s3_prefix")
            if not (isinstance(fsv, str) and fsv and isinstance(prefix, str) and prefix) or _window_of(item, item["lock_key"]) is None:
                missing = [n for n, v in (("mini_batch_s3_prefix", prefix), ("feature_spec_version", fsv))
                           if not (isinstance(v, str) and v)]
                plan.lines.append({"lock_key": item["lock_key"], "outcome": "unbindable",
                                   "why": f"no {' or '.join(missing)}" if missing else "no window in its key"})
                plan.counts["unbindable"] += 1
                continue
            batches.setdefault(binding_key(fsv, prefix), []).append(item)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    for bkey in sorted(batches):
        locks = sorted(batches[bkey], key=window_rank)
        plan.counts["batches"] += 1
        existing = bindings.get(bkey)
        chosen = existing.get("window_lock_key") if existing else locks[0]["lock_key"]
        for lock in locks:
            line = {"lock_key": lock["lock_key"], "binding_key": bkey, "status": lock.get("status"),
                    "source": lock.get("source"), "bound_window_lock_key": chosen}
            if existing and lock["lock_key"] == chosen:
                line["outcome"] = "skipped"
            elif existing:
                line["outcome"] = "conflict" if not any(x["lock_key"] == chosen for x in locks) else "duplicate"
                line["bound_source"] = existing.get("bound_source")
            elif lock is locks[0]:
                line["outcome"] = "bind"
                plan.writes.append((line, _binding_for(lock, now)))
            else:
                line["outcome"] = "duplicate"
            if line["outcome"] != "bind":
                plan.counts[line["outcome"]] += 1
            plan.lines.append(line)
    return plan


def apply_bind(plan: BindPlan, table: str, ddb) -> None:
    """Write the planned bindings as the flows do: one UpdateItem `SET #a = if_not_exists(#a, :a), ...`,
    no condition, ReturnValues ALL_NEW. A binding a flow wrote meanwhile is kept: the line then says
    `conflict` (another window) or `skipped` (this one)."""
    names = {f"#a{i}": name for i, name in enumerate(BINDING_FIELDS)}
    for line, binding in plan.writes:
        values = {f":a{i}": {"S": binding[name]} for i, name in enumerate(BINDING_FIELDS)}
        new = ddb.update_item(TableName=table, Key={"lock_key": {"S": line["binding_key"]}},
                              UpdateExpression="SET " + ", ".join(f"#a{i} = if_not_exists(#a{i}, :a{i})"
                                                                  for i in range(len(BINDING_FIELDS))),
                              ExpressionAttributeNames=names, ExpressionAttributeValues=values,
                              ReturnValues="ALL_NEW")["Attributes"]
        bound = _plain(new)
        if bound.get("bound_by") == MIGRATION_BY and bound.get("bound_at") == binding["bound_at"]:
            line["outcome"] = "bound"
        elif bound.get("window_lock_key") == binding["window_lock_key"]:
            line["outcome"] = "skipped"
        else:
            line.update(outcome="conflict", bound_window_lock_key=bound.get("window_lock_key"),
                        bound_source=bound.get("bound_source"))
        plan.counts[line["outcome"]] += 1


# --- `locks list` and `locks show`: a lock's batch, a batch's lock --------------------------------------

def missing_bindings(items: list[dict]) -> list[str]:
    """The binding keys of the listed window locks whose binding is not listed itself (a listing
    filtered by status or source leaves the bindings out): what `with_batches` needs read."""
    listed = {i["lock_key"] for i in items if is_binding(i)}
    keys = (binding_key(i["feature_spec_version"], i["mini_batch_s3_prefix"]) for i in items
            if not is_binding(i) and isinstance(i.get("feature_spec_version"), str)
            and isinstance(i.get("mini_batch_s3_prefix"), str))
    return list(dict.fromkeys(k for k in keys if k not in listed))


def with_batches(items: list[dict], bindings: dict[str, dict] | None = None) -> list[dict]:
    """Listed items (plain JSON) with `kind` first, and `bound`: for a binding, the window it binds
    (`window_lock_key`); for a window lock, `yes` when its batch's binding (listed, or in `bindings`:
    binding key -> binding) names it, `no (batch bound to another window)` or `no binding`, `-` when
    it names no batch (no prefix or version)."""
    bound_to = {k: b.get("window_lock_key") for k, b in (bindings or {}).items()}
    bound_to.update({i["lock_key"]: i.get("window_lock_key") for i in items if is_binding(i)})
    out = []
    for item in items:
        row = {"kind": kind(item), **item}
        if row["kind"] == "binding":
            row["bound"] = f"-> {item.get('window_lock_key')}"
        elif isinstance(item.get("feature_spec_version"), str) and isinstance(item.get("mini_batch_s3_prefix"), str):
            bkey = binding_key(item["feature_spec_version"], item["mini_batch_s3_prefix"])
            row["binding_key"] = bkey
            target = bound_to.get(bkey)
            row["bound"] = ("no binding" if bkey not in bound_to else "yes" if target == item["lock_key"]
                            else "no (batch bound to another window)")
        else:
            row["bound"] = "-"
        out.append(row)
    return out


def related(table: str, item: dict, ddb) -> dict:
    """A shown item with `kind` and the other half of its binding: a window lock gets `binding` (its
    batch's binding item, or null) and `bound_here` (whether that binding names this window); a
    binding gets `window_lock` (the window lock it names, or null)."""
    def get(key: str) -> dict | None:
        found = ddb.get_item(TableName=table, Key={"lock_key": {"S": key}}, ConsistentRead=True).get("Item")
        return from_item(found) if found else None

    out = {"kind": kind(item), **item}
    if out["kind"] == "binding":
        window = item.get("window_lock_key")
        out["window_lock"] = get(window) if isinstance(window, str) else None
    elif isinstance(item.get("feature_spec_version"), str) and isinstance(item.get("mini_batch_s3_prefix"), str):
        binding = get(binding_key(item["feature_spec_version"], item["mini_batch_s3_prefix"]))
        out["binding"] = binding
        out["bound_here"] = bool(binding) and binding.get("window_lock_key") == item["lock_key"]
    return out


# --- `backfill show`: which of a run's units adopted a bound window -------------------------------------

def _run_units(run: dict, s3, artifacts_bucket: str | None) -> tuple[list, str]:
    """A backfill run's units, from the input its run record keeps: inline `units`, its `manifest`, or
    the extracted manifest backfill/<run_id>/units.jsonl in the artifacts bucket. (units, where)."""
    import json
    try:
        options = json.loads(run.get("input") or "{}")
    except (TypeError, ValueError):
        raise BindError("the run record's input is not JSON") from None
    if isinstance(options.get("units"), list):
        return options["units"], "the run's input"
    manifest = options.get("manifest")
    if isinstance(manifest, dict) and isinstance(manifest.get("bucket"), str) and isinstance(manifest.get("key"), str):
        bucket, key = manifest["bucket"], manifest["key"]
    elif artifacts_bucket:
        bucket, key = artifacts_bucket, f"backfill/{run['run_id']}/units.jsonl"
    else:
        raise BindError("the run extracted its units into the artifacts bucket: name it with --artifacts-bucket "
                        "or MLBATCH_ARTIFACTS_BUCKET (the stack's ArtifactsBucketName output)")
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    except Exception as exc:
        raise BindError(f"cannot read the run's units at s3://{bucket}/{key}: {exc}") from None
    units = []
    for text in body.splitlines():
        try:
            units.append(json.loads(text) if text.strip() else None)
        except ValueError:
            units.append(None)
    return units, f"s3://{bucket}/{key}"


def run_adoptions(run: dict, lock_table: str, ddb, s3, artifacts_bucket: str | None = None) -> tuple[list[dict], str]:
    """(the run's units whose batch is bound to a window other than their own -- they adopted it, or
    will while the run goes on --, where the units were read). One BatchGetItem per 100 units."""
    units, where = _run_units(run, s3, artifacts_bucket)
    fields = ("project_name", "feature_spec_version", "mini_batch_s3_prefix", "batch_start_ts_iso", "batch_end_ts_iso")
    readable = [(i, u) for i, u in enumerate(units)
                if isinstance(u, dict) and all(isinstance(u.get(f), str) for f in fields)]
    out = []
    for n in range(0, len(readable), 100):
        chunk = readable[n:n + 100]
        for (line, unit), (window, start, end, adopted_from, _) in zip(
                chunk, bound_windows(ddb, lock_table, [u for _, u in chunk])):
            if adopted_from:
                out.append({"line": line, "mini_batch_id": unit.get("mini_batch_id"), "lock_key": window,
                            "batch_start_ts_iso": start, "batch_end_ts_iso": end, "window_adopted_from": adopted_from})
    return out, where


def batch_items(table: str, prefix: str, ddb) -> list[dict]:
    """`locks show s3://...`: a batch folder's items (one Scan of the table, filtered on
    mini_batch_s3_prefix): its bindings (one per feature_spec_version) with their window locks, or, for a
    batch never bound, its window locks with `binding: null`."""
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    pages = ddb.get_paginator("scan").paginate(
        TableName=table, FilterExpression="#p = :p", ExpressionAttributeNames={"#p": "mini_batch_s3_prefix"},
        ExpressionAttributeValues={":p": {"S": prefix}})
    items = sorted((from_item(i) for page in pages for i in page["Items"]), key=lambda i: i["lock_key"])
    bindings = [i for i in items if is_binding(i)]
    if not items:
        raise BindError(f"no binding and no window lock names the batch folder {prefix} in {table}: check the "
                        "prefix (s3://bucket/org1/org2/project/YYYY/MM/dd/mini_batch_id/)")
    return [related(table, i, ddb) for i in (bindings or items)]
