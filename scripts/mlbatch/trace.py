"""Readable traces of executions and of the lock ledger (for `mlbatch run`)."""
from __future__ import annotations

import json
from datetime import datetime

__all__ = ["execution_trace", "ledger_table"]


def _ms(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() * 1000


def execution_trace(title: str, execution, events: list[dict]) -> str:
    """States in order with their durations, then the result or the error."""
    lines = [f"== {title}", f"   execution: {execution.arn.rsplit(':', 1)[-1]}  status: {execution.status}"]
    end = events[-1]["timestamp"] if events else None
    entered: list[list] = []  # [name, entered_at, exited_at] in order of entry (branches nest)
    for e in events:
        if e.get("stateEnteredEventDetails"):
            entered.append([e["stateEnteredEventDetails"]["name"], e["timestamp"], None])
        elif e.get("stateExitedEventDetails"):
            name = e["stateExitedEventDetails"]["name"]
            row = next(r for r in reversed(entered) if r[0] == name and r[2] is None)
            row[2] = e["timestamp"]
    for name, start, stop in entered:  # a Fail state has no exit event
        lines.append(f"   {_ms(start, stop or end):7.1f} ms  {name}")
    if execution.status == "SUCCEEDED":
        lines.append("   result: " + json.dumps(execution.output, indent=2).replace("\n", "\n   "))
    else:
        lines.append(f"   error: {execution.error}")
        lines.append(f"   cause: {execution.cause}")
    return "\n".join(lines)


def ledger_table(locks: list[dict]) -> str:
    cols = ["lock_key", "status", "attempts", "mini_batch_id", "source", "error", "reason"]
    if any("kind" in lock for lock in locks):  # `locks list`: window locks and batch bindings apart
        cols = ["kind", *cols, "bound"]
    rows = [[str(lock.get(c, "")) for c in cols] for lock in locks]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    out = [fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r) for r in rows] or ["(no locks)"]
    return "\n".join(out)
