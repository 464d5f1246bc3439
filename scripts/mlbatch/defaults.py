"""Project-defaults items: the schema the state machines read, checked before anything is written."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["FIELD_MAPPING", "BUILDER_SETTINGS", "problems", "Located", "read_files", "check_located"]

FIELD_MAPPING = ("source_ip", "destination_ip", "destination_port", "event_start", "event_end")
#: optional per-builder overrides (attribute -> (type, check, meaning))
BUILDER_SETTINGS = {
    "image_uri": (str, lambda v: bool(v), "a non-empty image URI"),
    "instance_type": (str, lambda v: re.fullmatch(r"ml\.[a-z0-9]+\.[a-z0-9]+", v) is not None, "like ml.m5.xlarge"),
    "instance_count": (int, lambda v: 1 <= v <= 100, "an integer 1-100"),
    "volume_size_gb": (int, lambda v: 1 <= v <= 16384, "an integer 1-16384"),
    "max_runtime_seconds": (int, lambda v: 1 <= v <= 432000, "an integer 1-432000"),
}
TOP_LEVEL = {"project_name", "feature_spec_version", "traffic_input", "delta_builder", "pair_counts_builder",
             "description"}
#: The longest feature_spec_version and source column name mlbatch accepts: they reach builders in the
#: batch config, but the version is also part of output keys and the lock key (docs/errors.md: Limits).
MAX_NAME = 128


def _nonempty_str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def problems(item: Any) -> list[str]:
    """Everything wrong with a defaults item (an empty list: the intake and pipeline accept it)."""
    if not isinstance(item, dict):
        return ["an item must be a JSON object"]
    out = [f"unknown attribute {k!r} (allowed: {', '.join(sorted(TOP_LEVEL))})" for k in item if k not in TOP_LEVEL]
    if not _nonempty_str(item.get("project_name")):
        out.append("project_name must be a non-empty string")
    elif "/" in item["project_name"]:
        out.append("project_name is a path segment: no '/'")
    fsv = item.get("feature_spec_version")
    if not _nonempty_str(fsv) or "#" in fsv:
        out.append("feature_spec_version must be a non-empty string without '#' (it is part of the lock key)")
    elif len(fsv) > MAX_NAME:
        out.append(f"feature_spec_version must be at most {MAX_NAME} characters (it is part of output keys)")
    mapping = (item.get("traffic_input") or {}).get("field_mapping") if isinstance(item.get("traffic_input"), dict) else None
    if not isinstance(mapping, dict):
        out.append("traffic_input.field_mapping must be an object")
    else:
        out += [f"traffic_input.field_mapping.{f} must be a non-empty string (the source column)"
                for f in FIELD_MAPPING if not _nonempty_str(mapping.get(f))]
        out += [f"traffic_input.field_mapping.{f} must be at most {MAX_NAME} characters"
                for f in FIELD_MAPPING if _nonempty_str(mapping.get(f)) and len(mapping[f]) > MAX_NAME]
    for builder in ("delta_builder", "pair_counts_builder"):
        if builder not in item:
            continue
        settings = item[builder]
        if not isinstance(settings, dict):
            out.append(f"{builder} must be an object")
            continue
        for key, value in settings.items():
            if key not in BUILDER_SETTINGS:
                out.append(f"{builder}.{key} is not a builder setting ({', '.join(BUILDER_SETTINGS)})")
                continue
            typ, check, meaning = BUILDER_SETTINGS[key]
            if isinstance(value, bool) or not isinstance(value, typ) or not check(value):
                out.append(f"{builder}.{key} must be {meaning}")
    return out


@dataclass(frozen=True)
class Located:
    """A defaults item and where it came from (`file` or `file[i]` for a list)."""

    where: str
    item: Any

    @property
    def name(self) -> str | None:
        """The item's project_name, if it has a usable one."""
        name = self.item.get("project_name") if isinstance(self.item, dict) else None
        return name if isinstance(name, str) and name else None

    @property
    def label(self) -> str:
        return f"{self.where} ({self.name})" if self.name else self.where


def read_files(paths: list[str]) -> tuple[list[Located], list[str]]:
    """Items from JSON files, each holding one item (an object) or a list of items; and the
    problems of the files themselves (unreadable, not UTF-8, not JSON, empty), each naming its file."""
    items, bad = [], []
    for path in paths:
        try:
            text = open(path, encoding="utf-8").read()
        except UnicodeDecodeError:
            bad.append(f"{path}: not UTF-8 text (a binary file?): pass a JSON file")
            continue
        except OSError as exc:
            bad.append(f"{path}: cannot read it: {exc.strerror or exc}")
            continue
        if not text.strip():
            bad.append(f"{path}: empty: a file holds one item (a JSON object) or a list of items")
            continue
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            bad.append(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
            continue
        if isinstance(doc, list):
            if not doc:
                bad.append(f"{path}: holds an empty list: nothing to check or load")
            items += [Located(f"{path}[{i}]", item) for i, item in enumerate(doc)]
        else:
            items.append(Located(path, doc))
    return items, bad


def check_located(items: list[Located]) -> list[str]:
    """Every problem of every item, and every project defined twice (across all files), each
    message naming the file (and index) it is about."""
    out, first = [], {}
    for located in items:
        out += [f"{located.label}: {p}" for p in problems(located.item)]
        name = located.name
        if name:
            if name in first:
                out.append(f"{located.where}: project {name!r} is already defined by {first[name]}: "
                           "keep one item per project")
            else:
                first[name] = located.where
    return out
