"""The historical extractor: batch folders in S3 -> execution units (JSON Lines).

One listing per project and span of days (ListObjectsV2 from the span's first
day with StartAfter, pages of 1,000 keys, spans listed in parallel; LastModified
comes with the listing, so no HeadObject), objects grouped by batch folder as
they stream past (keys arrive sorted, so a folder is contiguous), the representative
object's LastModified floored by the same window reference the ASL is generated
from. Memory does not grow with the number of folders. Also the entry point of
the backfill's SageMaker Processing step (`mlbatch extract ... --output
/opt/ml/processing/output/units.jsonl`).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

import boto3

from .window import InvalidTimestamp, window_for

__all__ = ["ExtractError", "Extractor", "Report", "iso_from_last_modified"]


class ExtractError(Exception):
    """The extraction cannot go on (bad arguments, unknown project with --strict, S3 errors)."""


def iso_from_last_modified(t: dt.datetime) -> str:
    """S3 LastModified -> YYYY-MM-DDTHH:MM:SS[.mmm]Z (UTC), the form the window policy accepts."""
    t = t.astimezone(dt.timezone.utc)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{t.microsecond // 1000:03d}Z" if t.microsecond else f"{base}Z"


@dataclass
class Report:
    """What an extraction did: the summary printed at the end (JSON on stderr)."""

    folders: int = 0
    units: int = 0
    skipped: Counter = field(default_factory=Counter)       # reason -> batch folders
    stray_keys: Counter = field(default_factory=Counter)    # reason -> keys
    api_calls: Counter = field(default_factory=Counter)     # API -> calls
    already_succeeded: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_call(self, api: str, n: int = 1) -> None:
        with self._lock:
            self.api_calls[api] += n

    def as_dict(self) -> dict[str, Any]:
        return {"folders": self.folders, "units": self.units, "skipped": dict(self.skipped),
                "stray_keys": dict(self.stray_keys), "api_calls": dict(self.api_calls),
                "already_succeeded": self.already_succeeded}


def _check_range(first: dt.date, last: dt.date) -> None:
    if last < first:
        raise ExtractError(f"--to {last} is before --from {first}")


def _is_day(parts: list[str], first: dt.date, last: dt.date) -> bool:
    """parts == [YYYY, MM, dd] naming a real date within first..last."""
    if len(parts) != 3 or [len(p) for p in parts] != [4, 2, 2] or not all(p.isascii() and p.isdigit() for p in parts):
        return False
    try:
        return first <= dt.date(*map(int, parts)) <= last
    except ValueError:
        return False


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


class Extractor:
    """Enumerate batch folders of projects over a date range and turn them into units."""

    def __init__(self, bucket: str, defaults_table: str | None, *, s3=None, dynamodb=None,
                 representative: str = "earliest", strict: bool = False, workers: int = 8,
                 span_days: int = 10, progress: Callable[[str], None] | None = None):
        if representative not in ("earliest", "latest"):
            raise ExtractError(f"--representative must be earliest or latest, not {representative!r}")
        self.bucket = bucket
        self.defaults_table = defaults_table
        self.s3 = s3 or boto3.client("s3")
        self.dynamodb = dynamodb or boto3.client("dynamodb")
        self.representative = representative
        self.strict = strict
        self.workers = workers
        self.span_days = span_days
        self.progress = progress or (lambda msg: None)
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
        while todo:
            chunk, todo = todo[:100], todo[100:]
            keys = [{"project_name": {"S": n}} for n in chunk]
            while keys:
                resp = self._call(self.dynamodb.batch_get_item, RequestItems={self.defaults_table: {
                    "Keys": keys, "ProjectionExpression": "project_name, feature_spec_version"}})
                self.report.count_call("BatchGetItem")
                for item in resp["Responses"].get(self.defaults_table, []):
                    fsv = item.get("feature_spec_version", {}).get("S")
                    versions[item["project_name"]["S"]] = fsv or None
                keys = resp.get("UnprocessedKeys", {}).get(self.defaults_table, {}).get("Keys", [])
        return versions

    # --- listing a span of days ------------------------------------------------------------

    def _span_units(self, task: tuple[str, str, str, str | None, dt.date, dt.date]) -> tuple[list[str], Report]:
        """Units of one project over days first..last: one listing from the first day's key
        (StartAfter) until a key passes the last day, so pages are full (about objects/1000
        calls), with that span's own counters."""
        org1, org2, project, fsv, first, last = task
        local = Report()
        project_prefix = f"{org1}/{org2}/{project}/"
        stop_at = f"{project_prefix}{last + dt.timedelta(days=1):%Y/%m/%d}/"
        units: list[str] = []
        folder, day_path, objects = None, None, []

        def close_folder():
            if folder is None:
                return
            local.folders += 1
            files = [o for o in objects if not o["Key"].endswith("/")]
            if not files:
                local.skipped["empty batch folder"] += 1
                return
            if fsv is None:
                local.skipped["project not in the defaults table"] += 1
                return
            pick = min if self.representative == "earliest" else max
            rep = pick(files, key=lambda o: (o["LastModified"], o["Key"]))
            try:
                start, end = window_for(iso_from_last_modified(rep["LastModified"]))
            except InvalidTimestamp:
                local.skipped["LastModified outside the accepted years"] += 1
                return
            units.append(json.dumps({  # kept as a JSON line: a fifth of a dict's memory
                "project_name": project, "org1": org1, "org2": org2, "mini_batch_id": folder,
                "mini_batch_s3_prefix": f"s3://{self.bucket}/{project_prefix}{day_path}/{folder}/",
                "feature_spec_version": fsv, "batch_start_ts_iso": start, "batch_end_ts_iso": end,
                "source": "backfill", "representative_key": rep["Key"],
                "representative_last_modified": iso_from_last_modified(rep["LastModified"]),
            }, separators=(",", ":")))

        token, done = None, False
        while not done:
            kwargs = {"Bucket": self.bucket, "Prefix": project_prefix,
                      "StartAfter": f"{project_prefix}{first:%Y/%m/%d}"}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(self.s3.list_objects_v2, **kwargs)
            local.api_calls["ListObjectsV2"] += 1
            for obj in page.get("Contents", []):
                if obj["Key"] >= stop_at:
                    done = True
                    break
                rest = obj["Key"][len(project_prefix):].split("/")
                if not _is_day(rest[:3], first, last):
                    local.stray_keys["not under a YYYY/MM/dd folder in the range"] += 1
                    continue
                if len(rest) == 4:
                    local.stray_keys["file directly in the day folder"] += 1
                    continue
                if len(rest) > 5 or not rest[3]:
                    local.stray_keys["deeper than <mini_batch_id>/<file>"] += 1
                    continue
                here = "/".join(rest[:3])
                if (here, rest[3]) != (day_path, folder):
                    close_folder()
                    day_path, folder, objects = here, rest[3], []
                objects.append(obj)
            token = page.get("NextContinuationToken")
            done = done or not token
        close_folder()
        local.units = len(units)
        return units, local

    def _call(self, fn, **kwargs):
        try:
            return fn(**kwargs)
        except self.s3.exceptions.NoSuchBucket:
            raise ExtractError(f"bucket {self.bucket!r} does not exist") from None
        except Exception as exc:  # botocore ClientError and friends: name the call and the problem
            raise ExtractError(f"{fn.__name__} {kwargs.get('Prefix', '')!r} failed: {exc}") from exc

    # --- the whole run ------------------------------------------------------------------------

    def units(self, first: dt.date, last: dt.date, prefix: str | None = None,
              projects: list[str] | None = None) -> Iterator[dict]:
        """Stream every unit in (project, day, folder) order."""
        return map(json.loads, self.lines(first, last, prefix, projects))

    def lines(self, first: dt.date, last: dt.date, prefix: str | None = None,
              projects: list[str] | None = None) -> Iterator[str]:
        """Every unit as a compact JSON line (no newline), in (project, day, folder) order."""
        _check_range(first, last)
        triples = self.projects(prefix, projects)
        versions = self.feature_spec_versions({p for _, _, p in triples})
        unknown = sorted(p for p, v in versions.items() if v is None)
        if unknown and self.strict:
            raise ExtractError(f"projects without a defaults item (or feature_spec_version): {', '.join(unknown)}")
        tasks = [(o1, o2, p, versions[p], a, b) for o1, o2, p in triples
                 for a, b in _spans(first, last, self.span_days)]
        with ThreadPoolExecutor(self.workers) as pool:
            for i, (units, local) in enumerate(_ordered_map(pool, self._span_units, tasks, self.workers), 1):
                self.report.folders += local.folders
                self.report.units += local.units
                self.report.skipped.update(local.skipped)
                self.report.stray_keys.update(local.stray_keys)
                self.report.api_calls.update(local.api_calls)
                self.progress(f"\r{i}/{len(tasks)} project-spans, {self.report.folders} folders, "
                              f"{self.report.units} units")
                yield from units
        self.progress("\n")

    def count_succeeded(self, lock_table: str, units: list[dict]) -> int:
        """How many of these units' windows already hold a SUCCEEDED lock (BatchGetItem)."""
        keys = [f"{u['project_name']}#{u['feature_spec_version']}#{u['batch_start_ts_iso']}#{u['batch_end_ts_iso']}"
                for u in units]
        done = 0
        for i in range(0, len(keys), 100):
            request = [{"lock_key": {"S": k}} for k in dict.fromkeys(keys[i:i + 100])]
            while request:
                resp = self._call(self.dynamodb.batch_get_item, RequestItems={lock_table: {
                    "Keys": request, "ProjectionExpression": "#s", "ExpressionAttributeNames": {"#s": "status"}}})
                self.report.count_call("BatchGetItem")
                done += sum(1 for it in resp["Responses"].get(lock_table, []) if it["status"]["S"] == "SUCCEEDED")
                request = resp.get("UnprocessedKeys", {}).get(lock_table, {}).get("Keys", [])
        return done


@contextlib.contextmanager
def open_output(target: str, s3=None) -> Iterator[TextIO]:
    """A local path, '-' (stdout) or s3://bucket/key (written to a temp file, then uploaded)."""
    if target == "-":
        yield sys.stdout
        return
    if not target.startswith("s3://"):
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        with open(target, "w") as fh:
            yield fh
        return
    bucket, _, key = target[len("s3://"):].partition("/")
    if not bucket or not key:
        raise ExtractError(f"--output s3://bucket/key expected, got {target!r}")
    with tempfile.NamedTemporaryFile("w+", suffix=".jsonl") as fh:
        yield fh
        fh.flush()
        (s3 or boto3.client("s3")).upload_file(fh.name, bucket, key)


def write_units(lines: Iterable[str], out: TextIO) -> None:
    """JSON Lines out: one unit per line."""
    for line in lines:
        out.write(line + "\n")
