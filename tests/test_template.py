"""template.yaml: least privilege, the SAM checks, and what deploys as declared."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    ("ProcessingRole", "WriteFeaturesReadBatchConfigs"): "feature objects and batch configs under the output prefix only",
    ("ExtractorRole", "WriteManifestsReadRequests"): "manifests and requests under backfill/ of the stack's artifacts bucket only",
    ("BackfillStateMachine", "ReadManifestsWriteRequestsAndResults"): "manifests, requests and results under backfill/ only",
    ("PipelineStateMachine", "WriteBatchConfigs"): "batch configs under the output prefix only",
    ("BackfillStateMachine", "PublishRunMetrics"): "PutMetricData has no resource-level permissions; namespace mlbatch only (condition)",
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


# --- the ledger survives the stack -------------------------------------------------------------------

STATEFUL = ("LockTable", "ProjectDefaultsTable", "BackfillRunsTable", "BatchEventsQueue", "BatchEventsDeadLetterQueue",
            "ArtifactsBucket")


def test_stateful_resources_are_retained_on_deletion_and_replacement():
    tpl = load(parameters=EXAMPLE_PARAMETERS)
    for logical in STATEFUL:
        res = tpl.doc["Resources"][logical]
        assert (res.get("DeletionPolicy"), res.get("UpdateReplacePolicy")) == ("Retain", "Retain"), logical


# --- bring your own tables ---------------------------------------------------------------------------

GIVEN = {"ExistingLockTableName": "legacy-locks", "ExistingProjectDefaultsTableName": "legacy-defaults"}


def _table_refs(tpl) -> tuple[set[str], set[str]]:
    """Every table name the state machines are given and every DynamoDB table ARN the policies name."""
    names = {v for logical in tpl.state_machines for k, v in tpl.substitutions(logical).items()
             if k.endswith("TableName")}
    arns = set()
    for _, st in statements(tpl):
        for r in st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]:
            resolved = tpl.resolve(r)
            if ":dynamodb:" in resolved:
                arns.add(resolved)
    return names, arns


def test_created_tables_are_used_by_default():
    tpl = load(parameters=EXAMPLE_PARAMETERS)
    assert {"LockTable", "ProjectDefaultsTable"} <= set(tpl.tables)
    names, arns = _table_refs(tpl)
    assert names == {"mlbatch-LockTable", "mlbatch-ProjectDefaultsTable", "mlbatch-BackfillRunsTable"}
    assert {a.rsplit("/", 1)[1] for a in arns} == names


def test_given_tables_replace_the_created_ones_in_every_substitution_policy_and_output():
    tpl = load(parameters={**EXAMPLE_PARAMETERS, **GIVEN})

    assert "LockTable" not in tpl.tables and "ProjectDefaultsTable" not in tpl.tables
    names, arns = _table_refs(tpl)
    assert names == {"legacy-locks", "legacy-defaults", "mlbatch-BackfillRunsTable"}
    assert arns == {f"arn:aws:dynamodb:us-east-1:123456789012:table/{n}" for n in names}
    outputs = {k: tpl.resolve(v["Value"]) for k, v in tpl.doc["Outputs"].items() if "Condition" not in v}
    assert (outputs["LockTableName"], outputs["ProjectDefaultsTableName"]) == ("legacy-locks", "legacy-defaults")


# --- alarms that notify --------------------------------------------------------------------------------

def test_the_alarm_topic_key_lets_cloudwatch_publish_and_rotates():
    tpl = load(parameters=EXAMPLE_PARAMETERS)
    topic = tpl.doc["Resources"]["AlarmTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "AlarmKey"}
    key = tpl.doc["Resources"]["AlarmKey"]["Properties"]
    assert key["EnableKeyRotation"] is True
    grants = [st for st in key["KeyPolicy"]["Statement"] if st["Principal"].get("Service") == "cloudwatch.amazonaws.com"]
    assert len(grants) == 1 and grants[0]["Effect"] == "Allow"
    assert set(grants[0]["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    assert grants[0]["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    alarms = [r for r in tpl.doc["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert alarms and all(r["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}] for r in alarms)


# --- the sweep ---------------------------------------------------------------------------------------------

def test_no_sweep_unless_a_schedule_is_given():
    tpl = load(parameters=EXAMPLE_PARAMETERS)
    assert not tpl.resources("AWS::Scheduler::Schedule") and "SweepRole" not in tpl.resources("AWS::IAM::Role")


def test_the_sweep_starts_only_this_stacks_backfill_on_its_schedule():
    tpl = load(parameters={**EXAMPLE_PARAMETERS, "SweepSchedule": "cron(30 2 * * ? *)", "SweepDays": "3"})
    (sweep,) = tpl.resources("AWS::Scheduler::Schedule").values()
    props = tpl.resolve(sweep["Properties"])
    assert props["ScheduleExpression"] == "cron(30 2 * * ? *)"
    assert props["Target"]["Arn"] == tpl.arn("BackfillStateMachine")
    assert json.loads(props["Target"]["Input"]) == {
        "sweep": {"days": 3, "until": "<aws.scheduler.scheduled-time>"}, "max_attempts": 3}
    role = tpl.resolve(tpl.doc["Resources"]["SweepRole"]["Properties"])
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "scheduler.amazonaws.com"}
    (policy,) = role["Policies"]
    assert policy["PolicyDocument"]["Statement"] == [{"Sid": "StartTheBackfill", "Effect": "Allow",
                                                      "Action": "states:StartExecution",
                                                      "Resource": tpl.arn("BackfillStateMachine")}]
