"""Project-defaults items: the schema the state machines read, checked before anything is written."""
from __future__ import annotations

import re
from typing import Any

__all__ = ["FIELD_MAPPING", "BUILDER_SETTINGS", "problems"]

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
    mapping = (item.get("traffic_input") or {}).get("field_mapping") if isinstance(item.get("traffic_input"), dict) else None
    if not isinstance(mapping, dict):
        out.append("traffic_input.field_mapping must be an object")
    else:
        out += [f"traffic_input.field_mapping.{f} must be a non-empty string (the source column)"
                for f in FIELD_MAPPING if not _nonempty_str(mapping.get(f))]
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
