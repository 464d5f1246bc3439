"""The AWS-rules check: the rendered ASL and the template pass it, and every rule fails on a
fixture that breaks it (so a rule that stopped checking would show here)."""
from __future__ import annotations

import copy
import json
import re

import pytest

from mlbatch import awsrules, intrinsics
from mlbatch.sandbox import EXAMPLE_PARAMETERS, MOCK_CONFIG, load_event
from mlbatch.settings import ROOT
from mlbatch.template import load

ASL_FILES = sorted((ROOT / "asl").glob("*.asl.json"))


def machine(**states) -> str:
    """A one-machine definition text from named states (the first starts)."""
    return json.dumps({"StartAt": next(iter(states)), "States": states})


def rules(findings) -> set[str]:
    return {f.rule for f in findings}


# --- the project passes ------------------------------------------------------------------------

@pytest.mark.parametrize("asl", ASL_FILES, ids=lambda p: p.name)
def test_every_rendered_definition_passes_the_aws_rules(asl):
    findings = awsrules.check_definition(asl.name, asl.read_text())
    assert not findings, "\n".join(map(str, findings))


def test_the_template_passes_the_aws_rules():
    findings = awsrules.check_template(load(parameters=EXAMPLE_PARAMETERS))
    assert not findings, "\n".join(map(str, findings))


def test_the_template_passes_with_its_own_tables_replaced_by_given_ones():
    tpl = load(parameters={**EXAMPLE_PARAMETERS, "ExistingLockTableName": "legacy-locks",
                           "ExistingProjectDefaultsTableName": "legacy-defaults", "SweepSchedule": "rate(1 day)"})
    findings = awsrules.check_template(tpl)
    assert not findings, "\n".join(map(str, findings))


def test_the_builder_mocks_throw_only_errors_aws_raises():
    assert not awsrules.check_mock_config("MockConfigFile", json.loads(MOCK_CONFIG.read_text()))


# --- each rule, broken -----------------------------------------------------------------------------

def _calls(n: int) -> str:
    """An expression of exactly n calls: nested Formats around a Hash."""
    expr = "States.Hash($.a, 'MD5')"
    for _ in range(n - 1):
        expr = f"States.Format('{{}}', {expr})"
    return expr


def test_intrinsic_calls_are_counted_per_field_not_by_depth():
    assert intrinsics.calls(intrinsics.parse(_calls(10))) == 10
    wide = "States.Format('{}{}{}{}{}{}', " + ", ".join(["States.Hash($.a, 'MD5')"] * 6) + ")"  # 7 calls, depth 2
    assert intrinsics.calls(intrinsics.parse(wide)) == 7
    ok = machine(A={"Type": "Pass", "Parameters": {"x.$": _calls(10)}, "End": True})
    too_many = machine(A={"Type": "Pass", "Parameters": {"x.$": _calls(11)}, "End": True})
    in_assign = machine(A={"Type": "Pass", "Assign": {"x.$": _calls(11)}, "End": True})
    in_cause = machine(A={"Type": "Fail", "Error": "Intake.InvalidInput", "CausePath": _calls(11)})
    assert not awsrules.check_definition("ok", ok)
    for text in (too_many, in_assign, in_cause):
        assert rules(awsrules.check_definition("bad", text)) == {"intrinsic-calls"}


def test_a_malformed_intrinsic_is_reported():
    bad = machine(A={"Type": "Pass", "Parameters": {"x.$": "States.Format('{}', $.a"}, "End": True})
    assert rules(awsrules.check_definition("bad", bad)) == {"intrinsic-syntax"}


def test_intrinsics_in_a_choice_rule_are_reported():
    bad = machine(A={"Type": "Choice", "Choices": [
        {"Variable": "States.Format('{}', $.a)", "StringEquals": "x", "Next": "B"}], "Default": "B"},
        B={"Type": "Succeed"})
    assert rules(awsrules.check_definition("bad", bad)) == {"intrinsic-in-choice"}


def test_state_names_longer_than_80_characters_are_reported():
    bad = machine(**{"x" * 81: {"Type": "Succeed"}})
    assert rules(awsrules.check_definition("bad", bad)) == {"state-name"}


def test_a_definition_over_one_megabyte_is_reported():
    big = machine(A={"Type": "Pass", "Result": {"pad": "x" * 1_048_576}, "End": True})
    assert rules(awsrules.check_definition("big", big)) == {"definition-size"}


@pytest.mark.parametrize("name", ["SageMaker.ThrottlingException", "DynamoDB.RequestLimitExceeded",
                                  "StepFunctions.ThrottlingException", "States.Throttled"])
def test_error_names_aws_never_raises_are_reported(name):
    bad = machine(A={"Type": "Task", "Resource": "arn:aws:states:::dynamodb:getItem", "Parameters": {},
                     "Retry": [{"ErrorEquals": [name]}], "End": True})
    assert rules(awsrules.check_definition("bad", bad)) == {"error-name"}
    config = {"MockedResponses": {"R": {"0": {"Throw": {"Error": name, "Cause": "c"}}}}}
    assert rules(awsrules.check_mock_config("mock", config)) == {"error-name"}


def test_evidenced_and_own_error_names_pass_and_fail_states_never_use_the_states_prefix():
    ok = machine(A={"Type": "Task", "Resource": "arn:aws:states:::dynamodb:getItem", "Parameters": {},
                    "Retry": [{"ErrorEquals": ["DynamoDB.ProvisionedThroughputExceededException", "States.TaskFailed"]}],
                    "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "B"}], "End": True},
                 B={"Type": "Fail", "Error": "Intake.InvalidInput"})
    assert not awsrules.check_definition("ok", ok)
    bad = machine(A={"Type": "Fail", "Error": "States.MyOwn"})
    assert rules(awsrules.check_definition("bad", bad)) == {"error-name"}


@pytest.mark.parametrize("condition", [
    "attribute_not_exists(lock_key) OR #status = :failed OR (#status = :succeeded AND :force = :yes)",
    ":a = :b", "#s = :x AND (:y <> :z)", ":v IN (:a, :b)"])
def test_dynamodb_conditions_comparing_two_values_are_reported(condition):
    bad = machine(A={"Type": "Task", "Resource": "arn:aws:states:::dynamodb:updateItem",
                     "Parameters": {"ConditionExpression": condition}, "End": True})
    assert rules(awsrules.check_definition("bad", bad)) == {"dynamodb-value-comparison"}


def test_dynamodb_conditions_on_attributes_pass():
    ok = machine(A={"Type": "Task", "Resource": "arn:aws:states:::dynamodb:updateItem", "Parameters": {
        "ConditionExpression": "attribute_not_exists(lock_key) OR (#status = :failed AND #attempts < :max)"},
        "End": True})
    assert not awsrules.check_definition("ok", ok)


def test_a_distributed_map_without_tolerated_failure_is_reported():
    processor = {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}, "StartAt": "X",
                 "States": {"X": {"Type": "Succeed"}}}
    bad = machine(M={"Type": "Map", "ItemsPath": "$.items", "ItemProcessor": processor, "End": True})
    ok = machine(M={"Type": "Map", "ItemsPath": "$.items", "ItemProcessor": processor,
                    "ToleratedFailurePercentage": 100, "End": True})
    assert rules(awsrules.check_definition("bad", bad)) == {"map-tolerance"}
    assert not awsrules.check_definition("ok", ok)


# --- template rules, broken ---------------------------------------------------------------------------

@pytest.fixture
def template():
    tpl = load(parameters=EXAMPLE_PARAMETERS)
    tpl.doc = copy.deepcopy(tpl.doc)
    return tpl


def _statement(tpl, logical: str, sid: str) -> dict:
    for policy in tpl.doc["Resources"][logical]["Properties"]["Policies"]:
        for st in policy["Statement"]:
            if st.get("Sid") == sid:
                return st
    raise KeyError(sid)


def test_a_sync_integration_without_its_extra_permissions_is_reported(template):
    st = _statement(template, "PipelineStateMachine", "RunBuilderJobs")
    st["Action"] = [a for a in st["Action"] if a != "sagemaker:ListTags"]
    findings = awsrules.check_template(template)
    assert rules(findings) == {"iam-missing"} and all("ListTags" in f.message for f in findings)


def test_a_result_writer_without_multipart_permissions_is_reported(template):
    st = _statement(template, "BackfillStateMachine", "ReadManifestsWriteRequestsAndResults")
    st["Action"] = ["s3:GetObject", "s3:PutObject"]
    findings = awsrules.check_template(template)
    assert {f.message.split()[0] for f in findings} == {"s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"}


def test_a_permission_on_the_wrong_table_is_reported(template):
    st = _statement(template, "IntakeStateMachine", "AcquireAndReleaseWindowLocks")
    st["Resource"] = {"Fn::GetAtt": ["BackfillRunsTable", "Arn"]}
    assert "iam-missing" in rules(awsrules.check_template(template))


def test_an_action_the_machine_never_uses_is_reported(template):
    st = _statement(template, "LockReleaseStateMachine", "ReleaseWindowLocks")
    st["Action"] = ["dynamodb:UpdateItem", "dynamodb:DeleteItem"]
    findings = awsrules.check_template(template)
    assert [(f.rule, f.message.split()[0]) for f in findings] == [("iam-unused", "dynamodb:DeleteItem")]


def test_alarms_to_a_topic_under_the_aws_managed_key_are_reported(template):
    template.doc["Resources"]["AlarmTopic"]["Properties"]["KmsMasterKeyId"] = "alias/aws/sns"
    assert rules(awsrules.check_template(template)) == {"alarm-topic"}


def test_alarms_to_a_topic_whose_key_cloudwatch_may_not_use_are_reported(template):
    policy = template.doc["Resources"]["AlarmKey"]["Properties"]["KeyPolicy"]
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != "CloudWatchAlarmsPublish"]
    assert rules(awsrules.check_template(template)) == {"alarm-topic"}


def test_state_machine_names_that_ignore_the_stack_name_are_reported(template):
    template.doc["Resources"]["PipelineStateMachine"]["Properties"]["Name"] = "mlbatch-pipeline"
    findings = awsrules.check_template(template)
    assert rules(findings) == {"state-machine-name"} and "collide" in findings[0].message


def test_state_machine_names_too_long_for_a_long_stack_name_are_reported(template):
    template.doc["Resources"]["PipelineStateMachine"]["Properties"]["Name"] = {
        "Fn::Sub": "${AWS::StackName}-the-fifteen-minute-feature-pipeline"}
    assert "state-machine-name" in rules(awsrules.check_template(template))


def test_a_parameter_that_may_hold_a_quote_inside_an_intrinsic_literal_is_reported(template):
    template.doc["Parameters"]["OutputPrefix"]["AllowedPattern"] = "^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$"
    assert rules(awsrules.check_template(template)) == {"substitution-in-literal"}


# --- SageMaker request limits -------------------------------------------------------------------------

def _request(**over) -> dict:
    request = {"ProcessingJobName": "delta-20240229T2353-" + "0" * 32,
               "Environment": {"MLBATCH_CONFIG": "/opt/ml/processing/input/config/batch.json"},
               "AppSpecification": {"ContainerArguments": ["--config", "/x"]},
               "ProcessingInputs": [{"S3Input": {"S3Uri": "s3://b/k/"}}],
               "ProcessingOutputConfig": {"Outputs": [{"S3Output": {"S3Uri": "s3://b/o/"}}]},
               "Tags": [{"Key": "mlbatch:lock-key-md5", "Value": "0" * 32}]}
    request.update(over)
    return request


@pytest.mark.parametrize("over, complaint", [
    ({"ProcessingJobName": "delta_" + "x" * 10}, "ProcessingJobName"),
    ({"ProcessingJobName": "d" * 64}, "ProcessingJobName"),
    ({"Environment": {"MLBATCH_FIELD_MAPPING": "x" * 257}}, "Environment"),
    ({"AppSpecification": {"ContainerArguments": ["--field-mapping", "x" * 257]}}, "ContainerArguments"),
    ({"ProcessingInputs": [{"S3Input": {"S3Uri": "s3://b/" + "k" * 1020}}]}, "S3Uri"),
    ({"Tags": [{"Key": "mlbatch:project", "Value": "it's #1"}]}, "tag"),
])
def test_processing_requests_over_sagemaker_limits_are_reported(over, complaint):
    assert not awsrules.processing_request_findings(_request())
    problems = awsrules.processing_request_findings(_request(**over))
    assert len(problems) == 1 and complaint in problems[0]


def test_processing_requests_stay_within_limits_for_the_longest_values_the_contracts_allow(live):
    # GIVEN the longest values the contracts let through: long path segments (a key of ~700
    # bytes; S3 allows 1024), a long version and field mapping (defaults check: 128 each), an end
    # timestamp with 300 fraction digits, any punctuation a key segment may hold
    project, batch = "p" * 60 + "(a!b)*'c'" + "p" * 60, "m" * 200
    org1, org2 = "o" * 100, "O" * 100
    defaults = load_event("project_defaults")
    long_mapping = {k: "c" * 128 for k in defaults["traffic_input"]["field_mapping"]}
    live.put_defaults({**defaults, "project_name": project, "feature_spec_version": "v" * 128,
                       "traffic_input": {"field_mapping": long_mapping}})
    live.use_intake("pipeline", "HappyPath")
    key = f"{org1}/{org2}/{project}/2024/03/01/{batch}/" + "f" * 150 + ".json.gz"
    intake = live.intake({"s3_key": key, "timestamp": "2024-03-01T00:05:07." + "1" * 300 + "Z"})
    assert intake.output["status"] == "STARTED", intake.cause

    # WHEN the pipeline builds its SageMaker requests
    pipeline = live.engine.wait(intake.output["pipeline_execution_arn"], timeout=60)
    assert pipeline.status == "SUCCEEDED", pipeline.cause
    requests = [json.loads(e["taskScheduledEventDetails"]["parameters"]) for e in live.engine.history(pipeline.arn)
                if e["type"] == "TaskScheduled" and e["taskScheduledEventDetails"]["resource"].startswith("createProc")]

    # THEN SageMaker would accept each of them, and the pipeline execution's name fits Step Functions
    name = intake.output["pipeline_execution_arn"].rsplit(":", 1)[1]
    assert len(name) <= 80 and re.fullmatch(r"[0-9A-Za-z_-]+", name), name
    assert len(requests) == 2
    for request in requests:
        assert not awsrules.processing_request_findings(request)
