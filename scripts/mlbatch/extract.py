"""The historical extractor: batch folders in S3 -> execution units (JSON Lines).

One listing per project and span of days (ListObjectsV2 from the span's first
day with StartAfter, pages of 1,000 keys, spans listed in parallel; LastModified
comes with the listing, so no HeadObject), objects grouped by batch folder as
they stream past (keys arrive sorted, so a folder is contiguous), the representative
object's LastModified floored by the same window table the ASL is generated
from (:func:`mlbatch.window.window_at`). Memory does not grow with the number of
folders. Also the entry point of the backfill's SageMaker Processing step
(`mlbatch extract ... --output /opt/ml/processing/output/units.jsonl`), and the
listing half of `mlbatch audit`.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

from . import clients
from .failures import Failure
from .window import InvalidTimestamp, iso_z, window_at

__all__ = ["read_request", "ExtractError", "Extractor", "Report", "UNIT_FIELDS", "SUSPECT_AFTER_DAYS",
           "iso_from_last_modified", "lock_key", "binding_key", "unit_dict", "batch_get", "check_output", "open_output", "write_units"]

#: The execution-unit contract, in the order every unit line is written.
UNIT_FIELDS = ("project_name", "org1", "org2", "mini_batch_id", "mini_batch_s3_prefix", "feature_spec_version",
               "batch_start_ts_iso", "batch_end_ts_iso", "source", "representative_key",
               "representative_last_modified")

#: A representative LastModified more than this many days after its folder's date (or any time
#: before it) is suspect: a copied or restored bucket gives every object the copy time.
SUSPECT_AFTER_DAYS = 2

#: Suspect units named one by one on stderr; the rest are counted (a copied bucket has millions).
WARN_FIRST = 5

_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per unit


class ExtractError(Exception):
    """The extraction cannot go on (bad arguments, unknown project with --strict, S3 errors)."""


def iso_from_last_modified(t: dt.datetime) -> str:
    """S3 LastModified -> YYYY-MM-DDTHH:MM:SS[.mmm]Z (UTC), the form the window policy accepts."""
    return iso_z(t)


def lock_key(unit: dict) -> str:
    """`<project_name>#<feature_spec_version>#<batch_start_ts_iso>#<batch_end_ts_iso>`, as the intake and
    the backfill write it."""
    return "#".join([unit["project_name"], unit["feature_spec_version"], unit["batch_start_ts_iso"],
                     unit["batch_end_ts_iso"]])


def binding_key(feature_spec_version: str, mini_batch_s3_prefix: str) -> str:
    """`batch#<feature_spec_version>#<mini_batch_s3_prefix>`: the key of a batch's binding item in the lock
    table (the prefix exactly as in the unit, trailing slash), as the intake and the backfill write it."""
    return f"batch#{feature_spec_version}#{mini_batch_s3_prefix}"


def unit_dict(record: tuple) -> dict[str, Any]:
    """An extractor record -> the execution unit (plus `timestamp_suspect: true` when flagged)."""
    unit = dict(zip(UNIT_FIELDS, record))
    if record[-1]:
        unit["timestamp_suspect"] = True
    return unit


@dataclass
class Report:
    """What an extraction did: the summary printed at the end (JSON on stderr)."""

    folders: int = 0
    units: int = 0
    skipped: Counter = field(default_factory=Counter)       # reason -> batch folders
    stray_keys: Counter = field(default_factory=Counter)    # reason -> keys
    api_calls: Counter = field(default_factory=Counter)     # API -> calls
    already_succeeded: int = 0
    will_adopt: int = 0                                     # units whose batch is bound to another window
    ledger_read: bool = False                               # the two above were counted (a lock table was read)
    timestamp_suspect: int = 0                              # units whose LastModified is outside the folder's date
    suspect_examples: list = field(default_factory=list)    # the first few, for messages
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_call(self, api: str, n: int = 1) -> None:
        with self._lock:
            self.api_calls[api] += n

    def as_dict(self) -> dict[str, Any]:
        return {"folders": self.folders, "units": self.units, "skipped": dict(self.skipped),
                "stray_keys": dict(self.stray_keys), "api_calls": dict(self.api_calls),
                # the ledger is read only by `--dry-run --lock-table`: unknown (None) otherwise, never 0
                "already_succeeded": self.already_succeeded if self.ledger_read else None,
                "will_adopt": self.will_adopt if self.ledger_read else None,
                "timestamp_suspect": self.timestamp_suspect}


def _client(service: str):
    try:
        return clients.client(service)
    except Failure as exc:  # a retry setting that is not valid
        raise ExtractError(str(exc)) from None
    except Exception as exc:  # NoRegionError and friends, raised by client creation
        raise ExtractError(f"cannot create the {service} client: {exc} "
                           "(set AWS_DEFAULT_REGION or AWS_REGION, and credentials)") from None


def _check_range(first: dt.date, last: dt.date) -> None:
    if last < first:
        raise ExtractError(f"--to {last} is before --from {first}")


def _day(path: str, first: dt.date, last: dt.date) -> dt.date | None:
    """'YYYY/MM/dd' naming a real date within first..last -> that date, else None."""
    parts = path.split("/")
    if len(parts) != 3 or [len(p) for p in parts] != [4, 2, 2] or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    try:
        day = dt.date(*map(int, parts))
    except ValueError:
        return None
    return day if first <= day <= last else None


def _spans(first: dt.date, last: dt.date, days: int) -> list[tuple[dt.date, dt.date]]:
    out, start = [], first
    while start <= last:
        end = min(last, start + dt.timedelta(days=days - 1))
        out.append((start, end))
        start = end + dt.timedelta(days=1)
    return out


def _ordered_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """pool.map that keeps at most `ahead` results in flight (bounded memory, input order)."""
    pending = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.pop(0).result()
    for fut in pending:
        yield fut.result()


def batch_get(dynamodb, table: str, keys: list[dict], *, consistent: bool = False, projection: str | None = None,
              names: dict[str, str] | None = None, on_call: Callable[[], None] | None = None,
              max_rounds: int = 12) -> list[dict]:
    """BatchGetItem of up to 100 distinct keys, retrying UnprocessedKeys with capped exponential
    backoff and full jitter (DynamoDB returns them when throttled). Items in no particular order."""
    request: dict[str, Any] = {"Keys": keys, "ConsistentRead": consistent}
    if projection:
        request["ProjectionExpression"] = projection
    if names:
        request["ExpressionAttributeNames"] = names
    items: list[dict] = []
    for attempt in range(max_rounds):
        try:
            resp = dynamodb.batch_get_item(RequestItems={table: request})
        except Exception as exc:
            raise ExtractError(f"BatchGetItem on table {table!r} failed: {exc}{clients.throttle_hint(exc)}") from None
        if on_call:
            on_call()
        items += resp.get("Responses", {}).get(table, [])
        left = resp.get("UnprocessedKeys", {}).get(table, {}).get("Keys", [])
        if not left:
            return items
        request = {**request, "Keys": left}
        time.sleep(random.uniform(0, min(5.0, 0.05 * 2 ** attempt)))
    raise ExtractError(f"BatchGetItem on table {table!r}: {len(request['Keys'])} keys still unprocessed after "
                       f"{max_rounds} rounds (throttled): raise the table's read capacity or try again later")


class Extractor:
    """Enumerate batch folders of projects over a date range and turn them into units."""

    def __init__(self, bucket: str, defaults_table: str | None, *, s3=None, dynamodb=None,
                 representative: str = "earliest", strict: bool = False, workers: int = 8,
                 span_days: int = 10, progress: Callable[[str], None] | None = None,
                 suspect_after_days: int = SUSPECT_AFTER_DAYS, warn: Callable[[str], None] | None = None,
                 keep_unknown: bool = False):
        if representative not in ("earliest", "latest"):
            raise ExtractError(f"--representative must be earliest or latest, not {representative!r}")
        if workers < 1:
            raise ExtractError(f"--workers must be at least 1, not {workers}")
        if suspect_after_days < 0:
            raise ExtractError(f"--suspect-after-days must be 0 or more, not {suspect_after_days}")
        self.bucket = bucket
        self.defaults_table = defaults_table
        self.s3 = s3 or _client("s3")
        self.dynamodb = dynamodb or _client("dynamodb")
        self.representative = representative
        self.strict = strict
        self.workers = workers
        self.span_days = span_days
        self.progress = progress or (lambda msg: None)
        self.warn = warn or (lambda msg: None)
        self.suspect_after = dt.timedelta(days=1 + suspect_after_days)
        #: yield folders of projects without a defaults item too (feature_spec_version None): the audit
        #: reports them; the extractor skips them
        self.keep_unknown = keep_unknown
        self.report = Report()

    # --- discovery -------------------------------------------------------------------------

    def _list_prefixes(self, prefix: str) -> list[str]:
        """Child "folders" of a prefix (a delimiter listing)."""
        out, token = [], None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/"}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(self.s3.list_objects_v2, **kwargs)
            self.report.count_call("ListObjectsV2 (discovery)")
            out += [p["Prefix"][len(prefix):-1] for p in page.get("CommonPrefixes", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return out

    def projects(self, prefix: str | None, projects: list[str] | None) -> list[tuple[str, str, str]]:
        """(org1, org2, project) triples: from --prefix/--project, discovering what is not given."""
        if prefix:
            parts = prefix.strip("/").split("/")
            if len(parts) != 2 or not all(parts):
                raise ExtractError(f"--prefix must be org1/org2, not {prefix!r}")
            pairs = [tuple(parts)]
        else:
            pairs = [(o1, o2) for o1 in self._list_prefixes("") for o2 in self._list_prefixes(f"{o1}/")]
        found = []
        for org1, org2 in pairs:
            names = projects or self._list_prefixes(f"{org1}/{org2}/")
            found += [(org1, org2, p) for p in names]
        return found

    def feature_spec_versions(self, names: set[str]) -> dict[str, str | None]:
        """One read per project (BatchGetItem in pages of 100); None for an unknown project."""
        if not self.defaults_table:
            raise ExtractError("--defaults-table is required to resolve feature_spec_version")
        versions: dict[str, str | None] = {n: None for n in names}
        todo = sorted(names)
        for i in range(0, len(todo), 100):
            keys = [{"project_name": {"S": n}} for n in todo[i:i + 100]]
            for item in batch_get(self.dynamodb, self.defaults_table, keys,
                                  projection="project_name, feature_spec_version",
                                  on_call=lambda: self.report.count_call("BatchGetItem")):
                fsv = item.get("feature_spec_version", {}).get("S")
                versions[item["project_name"]["S"]] = fsv or None
        return versions

    # --- listing a span of days ------------------------------------------------------------

    def _span_records(self, task: tuple[str, str, str, str | None, dt.date, dt.date]) -> tuple[list[tuple], Report]:
        """Records (UNIT_FIELDS values + the suspect flag) of one project over days first..last:
        one listing from the first day's key (StartAfter) until a key passes the last day, so
        pages are full (about objects/1000 calls), with that span's own counters."""
        org1, org2, project, fsv, first, last = task
        local = Report()
        project_prefix = f"{org1}/{org2}/{project}/"
        cut = len(project_prefix)
        stop_at = f"{project_prefix}{last + dt.timedelta(days=1):%Y/%m/%d}/"
        records: list[tuple] = []
        days: dict[str, dt.date | None] = {}
        folder, day_path, objects = None, None, []
        pick = min if self.representative == "earliest" else max
        strict, keep_unknown, suspect_after = self.strict, self.keep_unknown, self.suspect_after
        bucket_prefix = f"s3://{self.bucket}/{project_prefix}"

        def close_folder():
            if folder is None:
                return
            local.folders += 1
            files = [o for o in objects if not o["Key"].endswith("/")]
            if not files:
                local.skipped["empty batch folder"] += 1
                return
            if fsv is None and not keep_unknown:
                local.skipped["project not in the defaults table"] += 1
                return
            rep = pick(files, key=lambda o: (o["LastModified"], o["Key"]))
            last_modified = rep["LastModified"]
            try:
                start, end = window_at(last_modified)
            except InvalidTimestamp:
                local.skipped["LastModified outside the accepted years"] += 1
                return
            day = days[day_path]
            day_start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
            lm_utc = last_modified if last_modified.tzinfo else last_modified.replace(tzinfo=dt.timezone.utc)
            suspect = not day_start <= lm_utc < day_start + suspect_after
            if suspect:
                local.timestamp_suspect += 1
                if len(local.suspect_examples) < WARN_FIRST:
                    local.suspect_examples.append(f"s3://{self.bucket}/{rep['Key']} has LastModified {end} "
                                                  f"(folder date {day})")
                if strict:
                    return
            records.append((project, org1, org2, folder, f"{bucket_prefix}{day_path}/{folder}/", fsv, start, end,
                            "backfill", rep["Key"], end, suspect))

        token, done = None, False
        while not done:
            kwargs = {"Bucket": self.bucket, "Prefix": project_prefix,
                      "StartAfter": f"{project_prefix}{first:%Y/%m/%d}"}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(self.s3.list_objects_v2, **kwargs)
            local.api_calls["ListObjectsV2"] += 1
            for obj in page.get("Contents", ()):
                key = obj["Key"]
                if key >= stop_at:
                    done = True
                    break
                rest = key[cut:].split("/")
                here = "/".join(rest[:3])
                if here not in days:
                    days[here] = _day(here, first, last)
                if days[here] is None:
                    local.stray_keys["not under a YYYY/MM/dd folder in the range"] += 1
                    continue
                if len(rest) == 4:
                    local.stray_keys["file directly in the day folder"] += 1
                    continue
                if len(rest) > 5 or not rest[3]:
                    local.stray_keys["deeper than <mini_batch_id>/<file>"] += 1
                    continue
                if rest[3] != folder or here != day_path:
                    close_folder()
                    day_path, folder, objects = here, rest[3], []
                objects.append(obj)
            token = page.get("NextContinuationToken")
            done = done or not token
        close_folder()
        local.units = len(records)
        return records, local

    def _call(self, fn, **kwargs):
        try:
            return fn(**kwargs)
        except self.s3.exceptions.NoSuchBucket:
            raise ExtractError(f"bucket {self.bucket!r} does not exist (name the ingestion bucket with --bucket)") from None
        except Exception as exc:  # botocore ClientError and friends: name the call, the bucket and the prefix
            raise ExtractError(f"ListObjectsV2 s3://{kwargs.get('Bucket', self.bucket)}/{kwargs.get('Prefix', '')} "
                               f"failed: {exc}{clients.throttle_hint(exc)}") from None

    # --- the whole run ------------------------------------------------------------------------

    def records(self, first: dt.date, last: dt.date, prefix: str | None = None,
                projects: list[str] | None = None) -> Iterator[tuple]:
        """Every unit as a record (UNIT_FIELDS values, then the suspect flag), in (project, day,
        folder) order. With --strict, suspect units are held back and the run fails at the end."""
        _check_range(first, last)
        triples = self.projects(prefix, projects)
        versions = self.feature_spec_versions({p for _, _, p in triples})
        unknown = sorted(p for p, v in versions.items() if v is None)
        if unknown and self.strict and not self.keep_unknown:
            raise ExtractError(f"projects without a defaults item (or feature_spec_version): {', '.join(unknown)}")
        tasks = [(o1, o2, p, versions[p], a, b) for o1, o2, p in triples
                 for a, b in _spans(first, last, self.span_days)]
        report = self.report
        with ThreadPoolExecutor(self.workers) as pool:
            for i, (records, local) in enumerate(_ordered_map(pool, self._span_records, tasks, self.workers), 1):
                report.folders += local.folders
                report.units += local.units
                report.skipped.update(local.skipped)
                report.stray_keys.update(local.stray_keys)
                with report._lock:  # the audit's ledger threads count their calls meanwhile
                    report.api_calls.update(local.api_calls)
                for example in local.suspect_examples:
                    if len(report.suspect_examples) < WARN_FIRST:
                        report.suspect_examples.append(example)
                        self.warn(f"suspect LastModified: {example}")
                report.timestamp_suspect += local.timestamp_suspect
                self.progress(f"{i}/{len(tasks)} project-spans, {report.folders} folders, {report.units} units")
                yield from records
        if report.timestamp_suspect > len(report.suspect_examples):
            self.warn(f"suspect LastModified: {report.timestamp_suspect - len(report.suspect_examples)} more units "
                      f"({report.timestamp_suspect} in all)")
        if report.timestamp_suspect and self.strict:
            raise ExtractError(
                f"{report.timestamp_suspect} units have a representative LastModified outside their folder's "
                f"date (before it, or more than {self.suspect_after.days - 1} days after it), e.g. "
                f"{report.suspect_examples[0]}; refused under --strict (none of them was written and the "
                "output was not published). A copied or restored bucket does this: recover the batch times "
                "first, or run without --strict (units are then flagged timestamp_suspect)")

    def units(self, first: dt.date, last: dt.date, prefix: str | None = None,
              projects: list[str] | None = None) -> Iterator[dict]:
        """Stream every unit in (project, day, folder) order."""
        return map(unit_dict, self.records(first, last, prefix, projects))

    def lines(self, first: dt.date, last: dt.date, prefix: str | None = None,
              projects: list[str] | None = None) -> Iterator[str]:
        """Every unit as a compact JSON line (no newline), in (project, day, folder) order."""
        return map(_ENCODE, self.units(first, last, prefix, projects))

    def count_succeeded(self, lock_table: str, units: list[dict]) -> int:
        """How many of these units' windows already hold a SUCCEEDED lock (BatchGetItem)."""
        return self.ledger_plan(lock_table, units)[0]

    def ledger_plan(self, lock_table: str, units: list[dict]) -> tuple[int, list[dict]]:
        """(how many units' windows already hold a SUCCEEDED lock, the units that will adopt a bound
        window): per 100 units one BatchGetItem of their bindings, one of their windows' locks -- the
        bound window's when the batch has a binding, else the unit's own."""
        from .binding import bound_windows
        done, adopting = 0, []
        count = lambda: self.report.count_call("BatchGetItem")  # noqa: E731
        for i in range(0, len(units), 100):
            chunk = units[i:i + 100]
            windows = bound_windows(self.dynamodb, lock_table, chunk, on_call=count)
            request = [{"lock_key": {"S": k}} for k in dict.fromkeys(w[0] for w in windows)]
            succeeded = {item["lock_key"]["S"] for item in batch_get(
                self.dynamodb, lock_table, request, projection="#k, #s", names={"#k": "lock_key", "#s": "status"},
                on_call=count) if item.get("status", {}).get("S") == "SUCCEEDED"}
            for unit, (key, start, end, adopted_from, _) in zip(chunk, windows):
                done += key in succeeded
                if adopted_from:
                    adopting.append({"mini_batch_id": unit["mini_batch_id"], "lock_key": key,
                                     "batch_start_ts_iso": start, "batch_end_ts_iso": end,
                                     "window_adopted_from": adopted_from})
        return done, adopting


# --- outputs ------------------------------------------------------------------------------------

def _s3_target(target: str, what: str) -> tuple[str, str]:
    bucket, _, key = target[len("s3://"):].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ExtractError(f"{what} s3://bucket/key expected, got {target!r}")
    return bucket, key


def read_request(path: str) -> dict:
    """The backfill's extraction request (the file its SageMaker step hands the extractor, `--request`):
    the backfill input's options. A date range {"from", "to"}, or a sweep {"sweep": {"days", "until"}}:
    the `days` days ending the day before `until` (the schedule's time); optional "prefix" (org1/org2)
    and "projects" (comma-separated). Returns {"from", "to", "prefix", "projects"} (dates, str|None, list)."""
    try:
        with open(path, encoding="utf-8") as fh:
            request = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExtractError(f"--request {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(request, dict):
        raise ExtractError(f"--request {path}: expected a JSON object, got {type(request).__name__}")
    try:
        if isinstance(request.get("sweep"), dict):
            days, until = request["sweep"].get("days"), request["sweep"].get("until")
            if isinstance(days, bool) or not isinstance(days, int) or days < 1:
                raise ValueError(f"sweep.days must be a whole number of days >= 1, not {days!r}")
            if not isinstance(until, str):
                raise ValueError(f"sweep.until must be an ISO time, not {until!r}")
            last = dt.datetime.fromisoformat(until.replace("Z", "+00:00")).date() - dt.timedelta(days=1)
            first = last - dt.timedelta(days=days - 1)
        else:
            first, last = (dt.date.fromisoformat(str(request.get(k))) for k in ("from", "to"))
    except (ValueError, TypeError) as exc:
        raise ExtractError(f"--request {path}: no date range: {exc} (expected from/to as YYYY-MM-DD, or "
                           'sweep {"days", "until"})') from None
    if last < first:
        raise ExtractError(f"--request {path}: from {first} is after to {last}")
    projects = request.get("projects") or ""
    return {"from": first, "to": last, "prefix": request.get("prefix") or None,
            "projects": [p.strip() for p in str(projects).split(",") if p.strip()]}


def check_output(target: str, s3=None, what: str = "--output") -> None:
    """Fail now, before any listing, if the output cannot be written: a local path's folder must be
    creatable and writable (and the path not a folder); an S3 bucket must exist (HeadBucket).
    A bucket we may write to but not list (HeadBucket 403) passes: the upload names its own error."""
    if target == "-":
        return
    if target.startswith("s3://"):
        bucket, _ = _s3_target(target, what)
        s3 = s3 or _client("s3")
        try:
            s3.head_bucket(Bucket=bucket)
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("403", "AccessDenied", "Forbidden"):
                return
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise ExtractError(f"{what} {target}: bucket {bucket!r} does not exist; create it or name an "
                                   "existing bucket (e.g. the stack's ArtifactsBucketName output)") from None
            raise ExtractError(f"{what} {target}: cannot reach bucket {bucket!r} ({exc}); check the bucket "
                               "name, the region and your credentials") from None
        return
    path = os.path.abspath(target)
    if os.path.isdir(path):
        raise ExtractError(f"{what} {target} is a folder; name a file in it (e.g. {os.path.join(target, 'units.jsonl')})")
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise ExtractError(f"{what} {target}: cannot create folder {folder} ({exc.strerror}); "
                           "name a writable path, '-' for stdout, or s3://bucket/key") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExtractError(f"{what} {target}: folder {folder} is not writable; "
                           "name a writable path, '-' for stdout, or s3://bucket/key")


@contextlib.contextmanager
def open_output(target: str, s3=None, what: str = "--output") -> Iterator[TextIO]:
    """A local path, '-' (stdout) or s3://bucket/key, checked on entry (before any work).
    A local file is written next to its final name and renamed when the run succeeds; an S3
    object is spooled to a temporary file and uploaded when the run succeeds: a failed run
    publishes no partial output (stdout excepted)."""
    check_output(target, s3, what)
    if target == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    if not target.startswith("s3://"):
        path = os.path.abspath(target)
        partial = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.partial")
        try:
            fh = open(partial, "w")
        except OSError as exc:
            raise ExtractError(f"{what} {target}: cannot write there ({exc.strerror}); "
                               "name a writable path, '-' for stdout, or s3://bucket/key") from None
        try:
            with fh:
                yield fh
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        return
    bucket, key = _s3_target(target, what)
    with tempfile.NamedTemporaryFile("w+", suffix=".jsonl") as fh:
        yield fh
        fh.flush()
        try:
            (s3 or _client("s3")).upload_file(fh.name, bucket, key)
        except Exception as exc:
            raise ExtractError(f"{what}: uploading to s3://{bucket}/{key} failed: {exc}") from None


def write_units(lines: Iterable[str], out: TextIO) -> None:
    """JSON Lines out: one unit per line."""
    for line in lines:
        out.write(line + "\n")
