"""Mermaid diagrams generated from the rendered ASL (never drawn by hand)."""
from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["mermaid", "markdown_section", "BEGIN", "END"]

BEGIN = "<!-- diagrams:begin (mlbatch render writes this section from asl/*.asl.json) -->"
END = "<!-- diagrams:end -->"


def _id(prefix: str, name: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9]", "_", name)


def _label(name: str) -> str:
    return name.replace('"', "'")


def _states(definition: dict, prefix: str, lines: list[str], indent: str) -> None:
    for name, state in definition["States"].items():
        sid = _id(prefix, name)
        kind = state["Type"]
        shape = {"Choice": ('{"', '"}'), "Fail": ('[["', '"]]'), "Succeed": ('(["', '"])')}.get(kind, ('["', '"]'))
        if kind in ("Map", "Parallel"):
            lines.append(f'{indent}subgraph {sid}["{_label(name)} ({kind})"]')
            branches = state.get("Branches") or [state.get("ItemProcessor") or state.get("Iterator")]
            for b, branch in enumerate(branches):
                inner = f"{sid}_{b}_"
                lines.append(f'{indent}  {inner}start((start)) --> {_id(inner, branch["StartAt"])}')
                _states(branch, inner, lines, indent + "  ")
            lines.append(f"{indent}end")
        else:
            lines.append(f"{indent}{sid}{shape[0]}{_label(name)}{shape[1]}")
        targets = []
        if "Next" in state:
            targets.append((state["Next"], ""))
        for rule in state.get("Choices", []):
            targets.append((rule["Next"], ""))
        if "Default" in state:
            targets.append((state["Default"], "default"))
        for catch in state.get("Catch", []):
            targets.append((catch["Next"], "catch " + ", ".join(catch["ErrorEquals"])))
        seen = set()
        for target, label in targets:
            if (target, label) in seen:
                continue
            seen.add((target, label))
            arrow = f" -. {_label(label)} .-> " if label.startswith("catch") else (f" -- {label} --> " if label else " --> ")
            lines.append(f"{indent}{sid}{arrow}{_id(prefix, target)}")


def mermaid(asl_path: Path) -> str:
    definition = json.loads(asl_path.read_text())
    lines = ["flowchart TD", f"  start((start)) --> {_id('s_', definition['StartAt'])}"]
    _states(definition, "s_", lines, "  ")
    return "\n".join(lines)


def markdown_section(asl_dir: Path) -> str:
    """One Mermaid diagram per rendered state machine, between the markers (docs/diagrams.md)."""
    parts = [BEGIN, ""]
    for path in sorted(asl_dir.glob("*.asl.json")):
        parts += [f"## {path.name.removesuffix('.asl.json')}", "", "```mermaid", mermaid(path), "```", ""]
    parts.append(END)
    return "\n".join(parts)
