"""Static checks of the rendered ASL and the template: what no linter checks for us."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from jsonpath_ng import parse as jsonpath

from mlbatch import render
from mlbatch.awsrules import states
from mlbatch.errors import ERRORS, SERVICE_ERRORS
from mlbatch.sandbox import load_event, to_item
from mlbatch.settings import ROOT
from mlbatch.template import load

ASL_FILES = sorted((ROOT / "asl").glob("*.asl.json"))
TOOLS = ROOT / ".tools"
REQUIRE_TOOLS = os.environ.get("MLBATCH_REQUIRE_TOOLS") == "1"


def tool(path: Path | str | None, what: str) -> str:
    if path and Path(path).exists():
        return str(path)
    if REQUIRE_TOOLS:
        pytest.fail(f"{what} is not installed: run `make tools`")
    pytest.skip(f"{what} is not installed (make tools)")


def strings(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def test_rendered_asl_is_current():
    stale = render.check()
    assert not stale, f"run `mlbatch render`: stale {[str(p) for p in stale]}"


def test_every_template_has_its_rendered_file():
    assert {p.name for p in ASL_FILES} == {p.name.removesuffix(".j2") for p in render.TEMPLATES.glob("*.asl.json.j2")}


# statelint predates ItemReader's ReaderConfig.InputType (required by AWS for CSV/JSON/JSONL
# manifests) and workflow variables (Assign, and "$name" paths, AWS 2024-11); asl-validator and
# AWS's own language service know both. Only those messages are forgiven, and a "not a JSONPath"
# message only for a field that does hold a variable reference.
STATELINT_GAPS = re.compile(r'Field "InputType" not allowed in .*\.ItemReader\.ReaderConfig|Field "Assign" not allowed in ')
NOT_A_PATH = re.compile(r'Field "(?P<field>[^"]+)" of (?:Parameters|ResultSelector) at "[^"]*" is not a JSONPath or intrinsic function expression')
VARIABLE = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*")


def _variable_fields(node) -> set[str]:
    """The `.$` fields whose value reads a workflow variable ($name or $name.path)."""
    return {k for k, v in strings(node) if isinstance(k, str) and k.endswith(".$") and isinstance(v, str)
            and VARIABLE.match(v) and not v.startswith("$$")}


@pytest.mark.parametrize("asl", ASL_FILES, ids=lambda p: p.name)
def test_statelint_accepts(asl):
    exe = tool(Path(sys.executable).with_name("statelint"), "statelint")
    run = subprocess.run([exe, "--ignore=URI,FLOAT", str(asl)], capture_output=True, text=True)
    variables = _variable_fields(json.loads(asl.read_text()))
    problems = [line for line in run.stdout.splitlines()[1:] if line.strip() and not STATELINT_GAPS.search(line)
                and not ((m := NOT_A_PATH.search(line)) and m["field"] in variables)]
    assert not problems and not run.stderr.strip(), run.stdout + run.stderr


@pytest.mark.parametrize("asl", ASL_FILES, ids=lambda p: p.name)
def test_asl_validator_accepts(asl):
    exe = tool(TOOLS / "node" / "node_modules" / ".bin" / "asl-validator", "asl-validator (npm)")
    run = subprocess.run([exe, "--json-path", str(asl)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


LANGUAGE_SERVICE = ROOT / "tests" / "tools" / "asl_language_service.js"


def _language_service(*files: Path) -> tuple[int, list[dict]]:
    modules = TOOLS / "node" / "node_modules"
    tool(modules / "amazon-states-language-service", "amazon-states-language-service (npm)")
    run = subprocess.run(["node", str(LANGUAGE_SERVICE), *map(str, files)], capture_output=True, text=True,
                         env={**os.environ, "NODE_PATH": str(modules)})
    assert run.returncode in (0, 1), run.stderr
    return run.returncode, [json.loads(line) for line in run.stdout.splitlines()]


def test_aws_language_service_accepts_every_rendered_file():
    """AWS's own ASL validator (amazon-states-language-service, behind the AWS Toolkit's editor)."""
    code, reports = _language_service(*ASL_FILES)
    assert code == 0 and all(r["diagnostics"] == [] for r in reports), reports


def test_aws_language_service_reports_a_broken_definition(tmp_path):
    broken = tmp_path / "broken.asl.json"
    broken.write_text(json.dumps({"StartAt": "A", "States": {
        "A": {"Type": "Pass", "Parameters": {"x.$": "States.Format('{}', $.a"}, "Next": "Nowhere"},
        "B": {"Type": "Succeed"}}}))
    code, (report,) = _language_service(broken)
    messages = " ".join(d["message"] for d in report["diagnostics"])
    assert code == 1
    assert "intrinsic function" in messages and "existing state" in messages and "cannot be reached" in messages


def test_substitutions_match_placeholders_both_ways():
    tpl = load(parameters={"IngestionBucketName": "b"})
    for logical, res in tpl.state_machines.items():
        asl = tpl.definition_path(logical)
        assert asl.exists(), f"{logical}: DefinitionUri {asl} does not exist"
        used = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", asl.read_text()))
        declared = set(res["Properties"].get("DefinitionSubstitutions", {}))
        assert used == declared, f"{logical}: only in ASL {used - declared}, only in template {declared - used}"
        assert all(re.fullmatch(r"[A-Z][A-Za-z0-9]+", n) for n in used), "placeholders are PascalCase"


@pytest.mark.parametrize("asl", ASL_FILES, ids=lambda p: p.name)
def test_error_names_are_listed(asl):
    definition = json.loads(asl.read_text())
    names = set()
    for _, _, state in states(definition):
        if state["Type"] == "Fail" and "Error" in state:
            names.add(state["Error"])
            assert not state["Error"].startswith("States."), "our errors never use the States. prefix"
        for rule in state.get("Retry", []) + state.get("Catch", []):
            names.update(rule["ErrorEquals"])
    unknown = {n for n in names if not n.startswith("States.") and n not in ERRORS and n not in SERVICE_ERRORS}
    assert not unknown


@pytest.mark.parametrize("asl", ASL_FILES, ids=lambda p: p.name)
def test_asl_is_portable(asl):
    """No account ids or resource ARNs in the ASL: only ${PascalCase} placeholders (AWS limits:
    tests/test_aws_rules.py)."""
    text = asl.read_text()
    assert not re.search(r"\b\d{12}\b", text), "no account ids in ASL"
    assert not re.search(r"arn:aws[a-z-]*:(?!states:::)", text), "no ARNs but integration ARNs in ASL"


def test_error_table_is_in_the_docs():
    errors_page = (ROOT / "docs" / "errors.md").read_text()
    for name in ERRORS:
        assert f"`{name}`" in errors_page, f"docs/errors.md lacks {name}"


def test_every_path_the_intake_reads_resolves_against_the_examples():
    """The example events and defaults item satisfy every path the intake's Choices read."""
    intake = json.loads((ROOT / "asl" / "intake.asl.json").read_text())
    defaults = {"defaults": {"Item": to_item(load_event("project_defaults"))}}
    rules = intake["States"]["Are the project defaults valid?"]["Choices"][1]["Not"]["And"]
    paths = {r["Variable"] for r in rules if "Variable" in r}
    paths |= {r["Not"]["Variable"] for r in rules if "Not" in r}
    assert len(paths) >= 6
    for p in sorted(paths):
        assert jsonpath(p).find(defaults), f"{p} does not resolve against tests/events/project_defaults.json"
    shape_rules = intake["States"]["Which input shape is the event?"]["Choices"]
    normalized = [r for r in shape_rules if r["Next"] == "Parse the event"][0]["And"]
    for p in {r["Variable"] for r in normalized if "Variable" in r}:
        for name in ("live_event", "forced_rerun"):
            assert jsonpath(p).find(load_event(name)), f"{p} missing in {name}"


def test_cfn_lint_accepts_the_template():
    # informational checks too: I3011 wants every stateful resource's deletion and replacement explicit
    run = subprocess.run([str(Path(sys.executable).with_name("cfn-lint")), "--include-checks", "I", "--",
                          str(ROOT / "template.yaml")],
                         capture_output=True, text=True, env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"})
    assert run.returncode == 0, run.stdout + run.stderr


def test_sam_validate_lint_accepts_the_template():
    exe = tool(TOOLS / "sam" / "bin" / "sam", "SAM CLI")
    run = subprocess.run([exe, "validate", "--lint", "-t", str(ROOT / "template.yaml")], capture_output=True,
                         text=True, env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1",
                                         "SAM_CLI_TELEMETRY": "0"})
    assert run.returncode == 0, run.stdout + run.stderr


def test_no_module_defines_a_top_level_name_twice():
    """A second `def` of a name silently replaces the first (it once broke `mlbatch bench`)."""
    import ast

    twice = []
    for path in sorted((ROOT / "scripts" / "mlbatch").rglob("*.py")):
        seen = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.name in seen:
                    twice.append(f"{path.relative_to(ROOT)}: {node.name} (line {node.lineno})")
                seen.add(node.name)

    assert twice == []
