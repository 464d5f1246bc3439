"""`mlbatch audit`: is every batch folder processed? The extractor's listing joined with the lock ledger.

The batch folders come from the very code `mlbatch extract` runs (same listing, same
API-call floor, no HeadObject); the ledger is read with consistent BatchGetItem calls of
100 keys, overlapped with the listing, so memory stays flat in the number of folders.
Every unit gets a state (:data:`STATES`); the healable ones (MISSING, FAILED below the
attempts limit, STUCK whose pipeline is not running) can be written as a backfill
manifest, and a STUCK lock whose pipeline execution has ended is released first (marked
``FAILED`` with ``error = Audit.Stuck`` by the owner-checked write lock_release uses), so
the backfill re-acquires it. See docs/audit.md.
"""
from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

from .binding import bound_windows
from .clients import throttle_hint
from .extract import (_ENCODE, SUSPECT_AFTER_DAYS, UNIT_FIELDS, ExtractError, Extractor, _client, _ordered_map,
                      batch_get, lock_key, unit_dict)
from .items import from_item
from .settings import MAX_ATTEMPTS, STUCK_AFTER_MINUTES

__all__ = ["STATES", "GAPS", "DEFAULT_STUCK_AFTER_MINUTES", "DEFAULT_MAX_ATTEMPTS", "AuditResult", "Auditor",
           "HealStopped", "classify", "lock_key", "manifest_unit", "run_audit", "summary_table"]

#: --stuck-after's default (90 min: the pipeline's timeout, ProcessingMaxRuntimeSeconds 3600 s + a
#: 900 s provisioning margin, plus 15 min) and --max-attempts' (3); see settings.py.
DEFAULT_STUCK_AFTER_MINUTES = STUCK_AFTER_MINUTES
DEFAULT_MAX_ATTEMPTS = MAX_ATTEMPTS

#: Every state a unit can be in, in the order summaries show them.
STATES = ("SUCCEEDED", "IN_PROGRESS", "STUCK", "FAILED", "POISONED", "MISSING", "COLLISION", "UNKNOWN_STATUS",
          "UNKNOWN_PROJECT")
#: States that are not (yet) a processed or processing window: any of them makes the exit code 3.
GAPS = frozenset(STATES) - {"SUCCEEDED", "IN_PROGRESS"}

#: Pipeline execution statuses that mean a run may still finalize the lock: never touched.
_LIVE = {"RUNNING", "PENDING_REDRIVE"}
_BATCH = 100  # BatchGetItem's limit
#: What the audit reads of a lock (BatchGetItem's ProjectionExpression): what it classifies by and
#: reports, no more -- a read's cost grows with the attributes returned.
_LEDGER_FIELDS = ("lock_key", "status", "mini_batch_id", "attempts", "updated_at", "pipeline_execution_arn", "error",
                  "source", "cause")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _instant(value: Any) -> dt.datetime | None:
    """A lock's ISO time (`$$.State.EnteredTime`, `...Z`) -> aware datetime; None if absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _plain(item: dict) -> dict:
    """A ledger item -> plain JSON: strings and numbers directly (the audit reads a million of them),
    anything else through boto3's deserializer; an attribute it cannot read is left out."""
    out = {}
    for name, value in item.items():
        if "S" in value:
            out[name] = value["S"]
        elif "N" in value:
            n = value["N"]
            out[name] = int(n) if n.lstrip("-").isdigit() else float(n)
        else:
            try:
                out.update(from_item({name: value}))
            except Exception:
                pass
    return out


def _attempts(lock: dict) -> int:
    try:
        return int(lock.get("attempts", 0))
    except (TypeError, ValueError):
        return 0


def classify(unit: dict, lock: dict | None, now: dt.datetime, stuck_after: dt.timedelta,
             max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> str:
    """The state of a unit given its window's lock (plain JSON, or None when there is none).

    A lock may lack anything but its key (another orchestrator may have written it): no
    `mini_batch_id` cannot be a collision; an IN_PROGRESS lock without a readable
    `updated_at` cannot prove it is alive, so it is STUCK (healed only if
    its pipeline execution is known and ended); a status other than the three mlbatch writes,
    or none, is UNKNOWN_STATUS (a gap the backfill cannot heal: its acquire would be refused)."""
    if unit.get("feature_spec_version") is None:
        return "UNKNOWN_PROJECT"
    if lock is None:
        return "MISSING"
    holder = lock.get("mini_batch_id")
    if isinstance(holder, str) and holder != unit["mini_batch_id"]:
        return "COLLISION"
    status = lock.get("status")
    if status == "SUCCEEDED":
        return "SUCCEEDED"
    if status == "FAILED":
        return "POISONED" if _attempts(lock) >= max_attempts else "FAILED"
    if status == "IN_PROGRESS":
        seen = _instant(lock.get("updated_at"))
        return "IN_PROGRESS" if seen is not None and now - seen <= stuck_after else "STUCK"
    return "UNKNOWN_STATUS"


class HealStopped(ExtractError):
    """The heal stopped on an error (a write, or a read after some writes): `released` holds the line of
    every lock this run released (FAILED, Audit.Stuck) before it stopped, `written` the lock keys whose
    line went to the output. No manifest was published; the next heal finds those windows FAILED."""

    def __init__(self, message: str, released: list[dict], written: set[str]):
        super().__init__(message)
        self.released = released
        self.written = written


@dataclass
class AuditResult:
    """What `run_audit` returns: the unit lines (when no output stream was given), the summary
    (the `--json` object) and the command's exit code (0 no gaps, 3 gaps)."""

    lines: list[dict]
    summary: dict[str, Any]
    exit_code: int


@dataclass
class _Tally:
    states: Counter = field(default_factory=Counter)
    by_project_day: dict = field(default_factory=dict)  # (project, day) -> Counter of states
    healable: int = 0
    released: int = 0
    races: int = 0
    pipeline_checks: int = 0
    bound: int = 0                                          # units audited through a binding
    unbound: Counter = field(default_factory=Counter)       # source -> window locks read without a binding

    def add(self, line: dict) -> None:
        state = line["state"]
        self.states[state] += 1
        day = "-".join(line["mini_batch_s3_prefix"].split("/")[-5:-2])
        self.by_project_day.setdefault((line["project_name"], day), Counter())[state] += 1


class Auditor:
    """Streams audited unit lines; with `heal`, releases stuck locks whose pipeline has ended.

    The extractor lists (its own thread pool); batches of 100 units are looked up in the ledger
    on a second small pool while the listing goes on, at most `ahead` batches in flight."""

    def __init__(self, extractor: Extractor, lock_table: str, *, dynamodb=None, sfn=None,
                 stuck_after_minutes: int = DEFAULT_STUCK_AFTER_MINUTES, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 heal: bool = False, now: dt.datetime | None = None, ahead: int = 4,
                 warn: Callable[[str], None] | None = None):
        if stuck_after_minutes <= 0:
            raise ExtractError(f"--stuck-after must be more than 0 minutes, not {stuck_after_minutes}")
        if max_attempts < 1:
            raise ExtractError(f"--max-attempts must be at least 1, not {max_attempts}")
        self.extractor = extractor
        self.lock_table = lock_table
        self.dynamodb = dynamodb or extractor.dynamodb
        self._sfn = sfn
        self.stuck_after = dt.timedelta(minutes=stuck_after_minutes)
        self.max_attempts = max_attempts
        self.heal = heal
        self.now = now or _now()
        self.ahead = ahead
        self.warn = warn or (lambda msg: None)
        self.tally = _Tally()
        self._lock = threading.Lock()
        self._warned_describe = False
        #: lines of the locks this run released, in the order written; the first error that stops the heal
        self.released: list[dict] = []
        self.stopped: str | None = None

    @property
    def sfn(self):
        if self._sfn is None:
            with self._lock:
                if self._sfn is None:
                    self._sfn = _client("stepfunctions")
        return self._sfn

    # --- the ledger --------------------------------------------------------------------------

    def _locks(self, keys: list[str]) -> dict[str, dict]:
        if not keys:
            return {}
        names = {f"#a{i}": name for i, name in enumerate(_LEDGER_FIELDS)}
        items = batch_get(self.dynamodb, self.lock_table, [{"lock_key": {"S": k}} for k in keys], consistent=True,
                          projection=", ".join(names), names=names,
                          on_call=lambda: self.extractor.report.count_call("BatchGetItem (ledger)"))
        return {lock.get("lock_key"): lock for lock in map(_plain, items)}

    def _pipeline_status(self, arn: Any) -> tuple[str, str | None]:
        """(status, problem): RUNNING/SUCCEEDED/FAILED/TIMED_OUT/ABORTED/..., NOT_FOUND when the
        execution does not exist, UNKNOWN when it cannot be told (no ARN, or DescribeExecution failed)."""
        if not isinstance(arn, str) or not arn:
            return "UNKNOWN", "the lock names no pipeline_execution_arn"
        with self._lock:
            self.tally.pipeline_checks += 1
        try:
            return self.sfn.describe_execution(executionArn=arn)["status"], None
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code == "ExecutionDoesNotExist":
                return "NOT_FOUND", None
            problem = f"DescribeExecution {arn} failed: {exc}"
            with self._lock:
                first, self._warned_describe = not self._warned_describe, True
            if first:
                self.warn(f"{problem} (stuck locks whose pipeline cannot be checked are not healed)")
            return "UNKNOWN", problem

    def _release(self, key: str, arn: str, status: str, since: Any) -> bool | None:
        """Mark a stuck lock FAILED (Audit.Stuck) if it is still IN_PROGRESS and owned by `arn` -- the
        condition lock_release writes with. False when the lock changed since it was read; None when
        the heal has stopped (an earlier call failed): not attempted."""
        if self.stopped:
            return None
        ended = "does not exist" if status == "NOT_FOUND" else f"ended {status}"
        cause = (f"Lock IN_PROGRESS since {since or 'an unknown time'} (more than "
                 f"{int(self.stuck_after.total_seconds() // 60)} minutes) and its pipeline execution {arn} {ended}; "
                 "marked FAILED by mlbatch audit so that a backfill re-acquires the window.")
        try:
            self.dynamodb.update_item(
                TableName=self.lock_table, Key={"lock_key": {"S": key}},
                ConditionExpression="#pipeline_execution_arn = :arn AND #status = :in_progress",
                UpdateExpression="SET #status = :failed, #updated_at = :now, #error = :error, #cause = :cause",
                ExpressionAttributeNames={"#pipeline_execution_arn": "pipeline_execution_arn", "#status": "status",
                                          "#updated_at": "updated_at", "#error": "error", "#cause": "cause"},
                ExpressionAttributeValues={":arn": {"S": arn}, ":in_progress": {"S": "IN_PROGRESS"},
                                           ":failed": {"S": "FAILED"}, ":now": {"S": _iso(_now())},
                                           ":error": {"S": "Audit.Stuck"}, ":cause": {"S": cause}})
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code", "") == "ConditionalCheckFailedException":
                return False
            problem = (f"UpdateItem of lock {key!r} in table {self.lock_table!r} failed: {exc}{throttle_hint(exc)} "
                       "(that lock is still STUCK, or FAILED if the write went through)")
            with self._lock:
                self.stopped = self.stopped or problem
            raise ExtractError(problem) from None
        self.extractor.report.count_call("UpdateItem (release)")
        return True

    # --- the binding: which window a batch is bound to ---------------------------------------------

    def _windows(self, units: list[dict]) -> list[tuple | None]:
        """(lock key, start, end, window_adopted_from, binding) per unit, None for an unknown project:
        the bound window when the batch has a binding (one BatchGetItem for the whole batch of units),
        else the window its LastModified gives (ledgers from before bindings, other orchestrators)."""
        return bound_windows(self.dynamodb, self.lock_table, units,
                             on_call=lambda: self.extractor.report.count_call("BatchGetItem (ledger)"))

    def _bound_line(self, line: dict, window: tuple, lock: dict | None) -> None:
        """The line shows the bound window (and the LastModified one as window_adopted_from when they
        differ); a window lock mlbatch wrote whose batch has no binding is counted (the audit warns)."""
        key, start, end, adopted_from, binding = window
        if adopted_from is not None:
            line["batch_start_ts_iso"], line["batch_end_ts_iso"] = start, end
            line["window_adopted_from"] = adopted_from
        if binding is not None:
            line["bound_source"] = binding.get("bound_source")
        with self._lock:
            self.tally.bound += binding is not None
            if binding is None and lock is not None and isinstance(lock.get("source"), str):
                self.tally.unbound[lock["source"]] += 1

    # --- one batch of units ---------------------------------------------------------------------

    def _audit_batch(self, records: list[tuple]) -> list[tuple[dict, bool]]:
        """(line, goes in the manifest) for each record, in order."""
        units = [unit_dict(r) for r in records]
        try:
            windows = self._windows(units)  # each unit's window: its binding's, else its LastModified's
            keys = [w[0] if w else None for w in windows]
            locks = self._locks(list(dict.fromkeys(k for k in keys if k)))
        except ExtractError as exc:  # no release after this: the run fails
            with self._lock:
                self.stopped = self.stopped or str(exc)
            raise
        out = []
        for unit, key, window in zip(units, keys, windows):
            lock = locks.get(key) if key else None
            state = classify(unit, lock, self.now, self.stuck_after, self.max_attempts)
            line = unit
            if key is None:
                del line["feature_spec_version"]
            line["state"] = state
            if key:
                line["lock_key"] = key
                self._bound_line(line, window, lock)
            if lock is not None:
                for name in ("status", "attempts", "updated_at", "pipeline_execution_arn"):
                    if name in lock:
                        line[name] = lock[name]
                if state in ("FAILED", "POISONED"):
                    line["attempts"] = _attempts(lock)
                    line["error"] = lock.get("error")
                    if "cause" in lock:
                        line["cause"] = lock["cause"]
                if state == "COLLISION":
                    line["held_by_mini_batch_id"] = lock["mini_batch_id"]
            healable = state in ("MISSING", "FAILED")
            in_manifest = healable
            if state == "STUCK":
                status, problem = self._pipeline_status(lock.get("pipeline_execution_arn"))
                line["pipeline_status"] = status
                if problem:
                    line["pipeline_problem"] = problem
                healable = status not in _LIVE and status != "UNKNOWN"
                in_manifest = healable
                if healable and self.heal:
                    released = self._release(key, lock["pipeline_execution_arn"], status, lock.get("updated_at"))
                    line["lock_released"] = bool(released)
                    in_manifest = bool(released)
                    if released:
                        with self._lock:
                            self.released.append(line)
                    elif released is None:
                        line["heal_note"] = "the heal stopped on an earlier error before releasing it: audit again"
                    else:
                        line["heal_note"] = "the lock changed since it was read (another writer won): left alone"
            line["healable"] = healable
            out.append((line, in_manifest))
        return out

    # --- the run --------------------------------------------------------------------------------------

    def lines(self, first: dt.date, last: dt.date, prefix: str | None = None,
              projects: list[str] | None = None) -> Iterator[tuple[dict, bool]]:
        """(audited line, goes in the manifest) for every unit, in (project, day, folder) order."""
        def batches(records: Iterable[tuple]) -> Iterator[list[tuple]]:
            batch = []
            for record in records:
                batch.append(record)
                if len(batch) == _BATCH:
                    yield batch
                    batch = []
            if batch:
                yield batch

        tally = self.tally
        with ThreadPoolExecutor(self.ahead) as pool:
            for done in _ordered_map(pool, self._audit_batch, batches(self.extractor.records(first, last, prefix,
                                                                                             projects)), self.ahead):
                for line, in_manifest in done:
                    tally.add(line)
                    tally.healable += line["healable"]
                    tally.released += line.get("lock_released") is True
                    tally.races += line.get("lock_released") is False
                    yield line, in_manifest

    def summary(self) -> dict[str, Any]:
        """The run's summary: counts per state (totals and per project and day), gaps, heal counts
        and the extractor's own report (folders, skipped, API calls)."""
        t = self.tally
        return {"units": sum(t.states.values()),
                "states": {s: t.states[s] for s in STATES if t.states[s]},
                "gaps": sum(n for s, n in t.states.items() if s in GAPS),
                "healable": t.healable,
                "stuck_locks_released": t.released, "stuck_release_races": t.races,
                "pipeline_checks": t.pipeline_checks,
                "timestamp_suspect": self.extractor.report.timestamp_suspect,
                **self._binding_summary(),
                "by_project_day": [{"project_name": p, "day": d, **{s: c[s] for s in STATES if c[s]}}
                                   for (p, d), c in sorted(t.by_project_day.items())],
                "extract": self.extractor.report.as_dict()}

    def _binding_summary(self) -> dict[str, Any]:
        """How many units were audited through a binding, the unbound window locks the audit read (per
        source), and the warning that names the migration while any exist (see docs/audit.md)."""
        t = self.tally
        out: dict[str, Any] = {"bound_units": t.bound, "unbound_window_locks": dict(t.unbound)}
        unbound = sum(t.unbound.values())
        if unbound:
            out["binding_warning"] = (
                f"{unbound} window locks in this range were written before batch bindings (no binding: "
                + ", ".join(f"{n} {s}" for s, n in sorted(t.unbound.items())) + "); a live-processed batch whose "
                "event timestamp differs from its LastModified audits MISSING and a heal or sweep would run it "
                "again: bind them first with `mlbatch locks bind` (see docs/upgrading.md)")
        elif not t.bound and t.states["MISSING"]:
            out["binding_warning"] = (
                "no unit in this range has a batch binding: if this ledger was written before bindings, MISSING "
                "units may be batches processed live in another window; run `mlbatch locks bind --dry-run` to "
                "see (docs/upgrading.md)")
        return out

    def exit_code(self) -> int:
        return 3 if any(self.tally.states[s] for s in GAPS) else 0


def summary_table(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table: one row per project and day, then the totals."""
    shown = [s for s in STATES if summary["states"].get(s)] or ["SUCCEEDED"]
    rows = [[r["project_name"], r["day"], *(str(r.get(s, 0)) for s in shown)] for r in summary["by_project_day"]]
    rows.append(["TOTAL", "", *(str(summary["states"].get(s, 0)) for s in shown)])
    header = ["project", "day", *shown]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([fmt(header), *map(fmt, rows)])


def manifest_unit(line: dict) -> dict:
    """An audited line -> the execution unit a heal manifest holds: exactly what `mlbatch extract` writes,
    with the folder's own (LastModified) window, so the backfill binds or adopts it by itself."""
    unit = {k: line[k] for k in (*UNIT_FIELDS, "timestamp_suspect") if k in line}
    own = line.get("window_adopted_from")
    if own:
        unit["batch_start_ts_iso"], unit["batch_end_ts_iso"] = own["batch_start_ts_iso"], own["batch_end_ts_iso"]
    return unit


def run_audit(bucket: str, first: dt.date, last: dt.date, *, lock_table: str, defaults_table: str,
              prefix: str | None = None, projects: list[str] | None = None, output: TextIO | None = None,
              manifest: TextIO | None = None, dry_run: bool = False,
              stuck_after_minutes: int = DEFAULT_STUCK_AFTER_MINUTES, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
              suspect_after_days: int = SUSPECT_AFTER_DAYS, strict: bool = False, representative: str = "earliest",
              workers: int = 8, s3=None, dynamodb=None, sfn=None, now: dt.datetime | None = None,
              progress: Callable[[str], None] | None = None, warn: Callable[[str], None] | None = None,
              on_line: Callable[[dict], None] | None = None) -> AuditResult:
    """Audit the batch folders of first..last against the lock ledger.

    Lines go to `output` (JSON Lines) or, when it is None, into the result. With `manifest` (an
    open text stream) and not `dry_run`, this is the heal: stuck locks whose pipeline has ended
    are released (FAILED, Audit.Stuck) and every unit to heal is written to `manifest` as an
    execution unit. Raises :class:`ExtractError` when the run cannot be completed (with `strict`,
    also when a unit's LastModified is suspect). `on_line` sees every line too (the --html report)."""
    extractor = Extractor(bucket, defaults_table, s3=s3, dynamodb=dynamodb, representative=representative,
                          strict=strict, workers=workers, progress=progress, suspect_after_days=suspect_after_days,
                          warn=warn, keep_unknown=True)
    auditor = Auditor(extractor, lock_table, sfn=sfn, stuck_after_minutes=stuck_after_minutes,
                      max_attempts=max_attempts, heal=manifest is not None and not dry_run, now=now, warn=warn)
    kept: list[dict] = []
    written = 0
    reported: set[str] = set()  # released locks whose line went to the output
    try:
        for line, in_manifest in auditor.lines(first, last, prefix, projects):
            if on_line is not None:
                on_line(line)
            if output is None:
                kept.append(line)
            else:
                output.write(_ENCODE(line) + "\n")
            if line.get("lock_released"):
                reported.add(line["lock_key"])
            if in_manifest and auditor.heal:
                manifest.write(_ENCODE(manifest_unit(line)) + "\n")
                written += 1
    except ExtractError as exc:
        if auditor.heal:  # every batch in flight has finished: `released` is complete
            raise HealStopped(str(exc), list(auditor.released), reported) from None
        raise
    summary = auditor.summary()
    summary.update(manifest_units=written, dry_run=dry_run)
    return AuditResult(kept, summary, auditor.exit_code())
