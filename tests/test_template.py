"""template.yaml: least privilege, the SAM checks, and what deploys as declared."""
from __future__ import annotations

import os
import subprocess


from mlbatch.sandbox import EXAMPLE_PARAMETERS
from mlbatch.settings import ROOT
from mlbatch.template import load

from test_static import TOOLS, tool

# Wildcards AWS forces or that name a family of per-run names; (resource, Sid) -> reason.
ALLOWED_WILDCARDS = {
    ("ExtractorRole", "EcrLogin"): "ecr:GetAuthorizationToken has no resource-level permissions",
    ("ProcessingRole", "EcrLogin"): "ecr:GetAuthorizationToken has no resource-level permissions",
    ("ExtractorRole", "PullExtractorImage"): "images are parameters: any repository of this account",
    ("ProcessingRole", "PullBuilderImages"): "images are parameters, overridable per project: this account's repositories",
    ("ExtractorRole", "JobLogs"): "SageMaker names a log stream per job under /aws/sagemaker/ProcessingJobs",
    ("ProcessingRole", "JobLogs"): "SageMaker names a log stream per job under /aws/sagemaker/ProcessingJobs",
    ("ProcessingRole", "ReadBatches"): "batch object keys are not known in advance (read-only, ingestion bucket)",
    ("ProcessingRole", "WriteFeatures"): "feature objects under the output prefix only",
    ("ExtractorRole", "WriteManifests"): "manifests under backfill/ of the stack's artifacts bucket only",
    ("BackfillStateMachine", "ReadManifestsWriteResults"): "manifests and results under backfill/ only",
    ("PipelineStateMachine", "RunBuilderJobs"): "job names are made per attempt: delta-* and pairs-* only",
    ("BackfillStateMachine", "RunTheExtractor"): "job names are made per run: extract-* only",
    ("BackfillStateMachine", "WaitForPipelines"): "executions of the pipeline state machine only",
    ("BackfillStateMachine", "DistributedMapRuns"): "the backfill's own child executions and map runs",
    **{(m, sid): "CloudWatch Logs delivery and X-Ray APIs have no resource-level permissions"
       for m in ("IntakeStateMachine", "PipelineStateMachine", "LockReleaseStateMachine", "BackfillStateMachine")
       for sid in ("DeliverExecutionLogs", "WriteTraces")},
}


def statements(tpl):
    """(resource logical id, statement) for every IAM statement the template declares."""
    for logical, res in tpl.doc["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                for st in policy["PolicyDocument"]["Statement"]:
                    yield logical, st
        elif res["Type"] == "AWS::Serverless::StateMachine":
            for policy in props.get("Policies", []):
                assert isinstance(policy, dict) and "Statement" in policy, \
                    f"{logical}: only inline statements (no SAM policy templates or managed policies)"
                yield from ((logical, st) for st in policy["Statement"])
        elif res["Type"] == "AWS::SQS::QueuePolicy":
            yield from ((logical, st) for st in props["PolicyDocument"]["Statement"])


def test_every_policy_names_its_resources():
    tpl = load(parameters=EXAMPLE_PARAMETERS)
    seen, problems = set(), []
    for logical, st in statements(tpl):
        sid = st.get("Sid")
        if not sid:
            problems.append(f"{logical}: a statement without Sid")
            continue
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        problems += [f"{logical}/{sid}: wildcard action {a}" for a in actions if "*" in a]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if any("*" in str(tpl.resolve(r)) for r in resources):
            seen.add((logical, sid))
            if (logical, sid) not in ALLOWED_WILDCARDS:
                problems.append(f"{logical}/{sid}: wildcard resource not on the allow-list")
    assert not problems
    assert seen == set(ALLOWED_WILDCARDS), f"allow-list entries no longer needed: {set(ALLOWED_WILDCARDS) - seen}"


def test_every_resource_has_a_comment_saying_why():
    lines = (ROOT / "template.yaml").read_text().splitlines()
    tpl = load(parameters=EXAMPLE_PARAMETERS)
    for logical in tpl.doc["Resources"]:
        i = lines.index(f"  {logical}:")
        assert lines[i - 1].lstrip().startswith("#"), f"{logical} has no comment above it"


def test_state_machines_log_and_trace():
    tpl = load(parameters=EXAMPLE_PARAMETERS)
    for logical, res in tpl.state_machines.items():
        props = res["Properties"]
        assert props["Type"] == "STANDARD"
        assert props["Tracing"] == {"Enabled": True}, logical
        assert props["Logging"]["Level"] == "ALL", logical
        group = props["Logging"]["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
        assert tpl.doc["Resources"][group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_checkov_passes_or_skips_with_reasons():
    exe = tool(TOOLS / "checkov" / "bin" / "checkov", "checkov")
    run = subprocess.run([exe, "-f", str(ROOT / "template.yaml"), "--framework", "cloudformation",
                          "--skip-download", "--quiet", "--compact"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    text = (ROOT / "template.yaml").read_text()
    assert text.count("- id: CKV_") == text.count("comment: \"")  # every inline skip says why


def test_sam_build_succeeds_offline(tmp_path):
    exe = tool(TOOLS / "sam" / "bin" / "sam", "SAM CLI")
    run = subprocess.run([exe, "build", "-t", str(ROOT / "template.yaml"), "--build-dir", str(tmp_path / "build")],
                         capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "SAM_CLI_TELEMETRY": "0"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    built = (tmp_path / "build" / "template.yaml").read_text()
    assert "asl/intake.asl.json" in built or "intake.asl.json" in built
