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
    open_state: tuple[str, datetime] | None = None
    end = events[-1]["timestamp"] if events else None
    for e in events:
        entered = e.get("stateEnteredEventDetails")
        exited = e.get("stateExitedEventDetails")
        if entered:
            open_state = (entered["name"], e["timestamp"])
        elif exited and open_state:
            lines.append(f"   {_ms(open_state[1], e['timestamp']):7.1f} ms  {exited['name']}")
            open_state = None
    if open_state:  # a Fail state has no exit event
        lines.append(f"   {_ms(open_state[1], end):7.1f} ms  {open_state[0]}")
    if execution.status == "SUCCEEDED":
        lines.append("   result: " + json.dumps(execution.output, indent=2).replace("\n", "\n   "))
    else:
        lines.append(f"   error: {execution.error}")
        lines.append(f"   cause: {execution.cause}")
    return "\n".join(lines)


def ledger_table(locks: list[dict]) -> str:
    cols = ["lock_key", "status", "attempts", "mini_batch_id", "source", "reason"]
    rows = [[str(lock.get(c, "")) for c in cols] for lock in locks]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    out = [fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r) for r in rows] or ["(no locks)"]
    return "\n".join(out)
