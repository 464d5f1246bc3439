"""Each engine fix: the defect shows without it, the behaviour is right with it.

When a newer moto no longer has a defect, the "without" test fails with a message
saying the fix can go.
"""
from __future__ import annotations

import json
import threading
import time

import boto3
import pytest

from mlbatch.engine import fixes


without = fixes.suspended


def no_longer_needed(name: str):
    pytest.fail(f"moto {fixes.MOTO_VERSION}'s defect behind fix {name!r} did not show: "
                "the fix (and this test) can be removed")


def machine(sandbox, name, definition):
    existing = {m["name"]: m["stateMachineArn"] for m in sandbox.engine.sfn.list_state_machines()["stateMachines"]}
    return existing.get(name) or sandbox.engine.create_machine(name, definition)


START_CHILD = {
    "StartAt": "Start the child",
    "States": {"Start the child": {
        "Type": "Task", "Resource": "arn:aws:states:::states:startExecution",
        "Parameters": {"StateMachineArn.$": "$.child", "Input": {"hello": "world"}},
        "ResultSelector": {"arn.$": "$.ExecutionArn"}, "End": True}},
}
CHILD = {"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}}


def test_service_normalisation_lets_startexecution_run(sandbox):
    child = machine(sandbox, "fix-child", CHILD)
    parent = machine(sandbox, "fix-parent", START_CHILD)

    with without("service_normalisation"):
        broken = sandbox.engine.run(parent, {"child": child})
    fixed = sandbox.engine.run(parent, {"child": child})

    if broken.status == "SUCCEEDED":
        no_longer_needed("service_normalisation")
    assert broken.error == "States.Runtime"
    assert fixed.status == "SUCCEEDED", fixed.cause
    assert fixed.output["arn"].startswith(child.replace(":stateMachine:", ":execution:"))


def test_execution_name_default_is_unique(sandbox):
    child = machine(sandbox, "fix-child", CHILD)
    with without("execution_name_default"):
        arn = sandbox.engine.start(child, {})
    if not arn.endswith(":None"):
        no_longer_needed("execution_name_default")

    first, second = sandbox.engine.start(child, {}), sandbox.engine.start(child, {})
    assert first != second and not first.endswith(":None")


def _concurrently(slow_read: float, *writers) -> None:
    """Run the writers on threads at once, moto's DynamoDB reads slowed down by `slow_read` seconds to
    widen the read-then-write window the defect leaves open."""
    from moto.dynamodb.models.table import Table

    original = Table.get_item

    def get_item(self, *args, **kwargs):
        item = original(self, *args, **kwargs)
        time.sleep(slow_read)
        return item
    Table.get_item = get_item
    try:
        threads = [threading.Thread(target=writer) for writer in writers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        Table.get_item = original


def _race(sandbox, table, slow_read, key) -> int:
    """Two conditional writers race for one absent key; how many win?"""
    wins, guard = [], threading.Lock()

    def writer():
        client = boto3.client("dynamodb", region_name="us-east-1")
        try:
            client.update_item(TableName=table, Key={"lock_key": {"S": key}},
                               UpdateExpression="SET #s = :s", ConditionExpression="attribute_not_exists(lock_key)",
                               ExpressionAttributeNames={"#s": "status"},
                               ExpressionAttributeValues={":s": {"S": "IN_PROGRESS"}})
            with guard:
                wins.append(1)
        except client.exceptions.ConditionalCheckFailedException:
            pass
    _concurrently(slow_read, writer, writer)
    return len(wins)


def test_atomic_conditional_writes_let_one_writer_win(stack):
    table = stack.table("LockTable")
    with without("atomic_conditional_writes"):
        unfixed = _race(stack, table, 0.2, "race#unfixed")
    if unfixed == 1:
        no_longer_needed("atomic_conditional_writes")
    assert unfixed == 2
    assert _race(stack, table, 0.2, "race#fixed") == 1


def _bind_race(table, slow_read, key) -> set[str]:
    """Two unconditional `SET w = if_not_exists(w, :mine)` writers (the batch binding) race for one
    absent key; which windows do they read back (ALL_NEW)?"""
    read_back, guard = [], threading.Lock()

    def writer(window: str):
        client = boto3.client("dynamodb", region_name="us-east-1")
        got = client.update_item(TableName=table, Key={"lock_key": {"S": key}},
                                 UpdateExpression="SET #w = if_not_exists(#w, :w)",
                                 ExpressionAttributeNames={"#w": "window_lock_key"},
                                 ExpressionAttributeValues={":w": {"S": window}}, ReturnValues="ALL_NEW")
        with guard:
            read_back.append(got["Attributes"]["window_lock_key"]["S"])
    _concurrently(slow_read, *(lambda i=i: writer(f"window-{i}") for i in range(2)))
    return set(read_back)


def test_atomic_conditional_writes_make_an_if_not_exists_binding_one_value(stack):
    # The batch binding has no condition: its atomicity is if_not_exists's. Unserialised, both
    # writers saw no item, each created one and read its own window back: two windows for one batch.
    table = stack.table("LockTable")
    with without("atomic_conditional_writes"):
        unfixed = _bind_race(table, 0.2, "batch#race#unfixed")
    if len(unfixed) == 1:
        no_longer_needed("atomic_conditional_writes")
    assert len(unfixed) == 2
    assert len(_bind_race(table, 0.2, "batch#race#fixed")) == 1


def test_definite_index_paths_read_the_value(sandbox):
    choice = machine(sandbox, "fix-index-path", {
        "StartAt": "Is the first body a string?",
        "States": {
            "Is the first body a string?": {"Type": "Choice", "Choices": [
                {"Variable": "$[0].body", "IsString": True, "Next": "Yes"}], "Default": "No"},
            "Yes": {"Type": "Pass", "Result": {"is_string": True}, "End": True},
            "No": {"Type": "Pass", "Result": {"is_string": False}, "End": True}}})
    with without("definite_index_paths"):
        unfixed = sandbox.engine.run(choice, [{"body": "{}"}]).output["is_string"]
    if unfixed:
        no_longer_needed("definite_index_paths")
    assert sandbox.engine.run(choice, [{"body": "{}"}]).output["is_string"] is True
    assert sandbox.engine.run(choice, [{"body": 5}]).output["is_string"] is False


def test_program_cache_parses_a_definition_once(sandbox, monkeypatch):
    from moto.stepfunctions.parser.asl.antlr.runtime.ASLParser import ASLParser

    calls = []
    original = ASLParser.state_machine
    monkeypatch.setattr(ASLParser, "state_machine", lambda self: calls.append(1) or original(self))
    unique = json.dumps({**CHILD, "Comment": f"cache probe {time.time_ns()}"})
    child = sandbox.engine.create_machine(f"fix-cache-{time.time_ns()}", unique)
    calls.clear()

    with without("program_cache"):
        for _ in range(2):
            sandbox.engine.run(child, {})
    unfixed = len(calls)
    calls.clear()
    results = [sandbox.engine.run(child, {"n": n}) for n in range(3)]

    if unfixed < 2:
        no_longer_needed("program_cache")
    assert len(calls) <= 1
    assert [r.output for r in results] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_fixes_refuse_another_moto(monkeypatch):
    import moto
    monkeypatch.setattr(moto, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match="written for moto"):
        fixes.apply_all()


MOCKED_SYNC = {
    "StartAt": "Run a job",
    "States": {"Run a job": {
        "Type": "Task", "Resource": "arn:aws:states:::sagemaker:createProcessingJob.sync",
        "Parameters": {"ProcessingJobName": "probe"}, "End": True}},
}


def test_mock_config_loader_runs_step_functions_local_test_cases(sandbox, tmp_path, monkeypatch):
    mock = tmp_path / "MockConfigFile.json"
    mock.write_text(json.dumps({
        "StateMachines": {"fix-mocked-sync": {"TestCases": {"Done": {"Run a job": "Completed"}}}},
        "MockedResponses": {"Completed": {"0": {"Return": {"ProcessingJobStatus": "Completed"}}}}}))
    monkeypatch.setenv("SFN_MOCK_CONFIG", str(mock))
    arn = machine(sandbox, "fix-mocked-sync", MOCKED_SYNC)

    with without("mock_config_loader"):
        try:
            unfixed = sandbox.engine.run(arn + "#Done", {}).status
        except Exception:  # the engine refuses the ARN outright
            unfixed = "REFUSED"
    if unfixed == "SUCCEEDED":
        no_longer_needed("mock_config_loader")

    assert sandbox.engine.run(arn + "#Done", {}).output == {"ProcessingJobStatus": "Completed"}
    with pytest.raises(Exception, match="no test case 'Missing'"):
        sandbox.engine.start(arn + "#Missing", {})


def test_states_error_names_survive_mocks_and_parallel_branches(sandbox, tmp_path, monkeypatch):
    mock = tmp_path / "MockConfigFile.json"
    mock.write_text(json.dumps({
        "StateMachines": {"fix-branch-error": {"TestCases": {"Fails": {"Run a job": "JobFailed"}}}},
        "MockedResponses": {"JobFailed": {"0": {"Throw": {"Error": "States.TaskFailed", "Cause": "job failed"}}}}}))
    monkeypatch.setenv("SFN_MOCK_CONFIG", str(mock))
    arn = machine(sandbox, "fix-branch-error", {
        "StartAt": "Both", "States": {"Both": {
            "Type": "Parallel", "Branches": [MOCKED_SYNC],
            "Catch": [{"ErrorEquals": ["States.TaskFailed"], "Next": "Caught"}], "End": True},
            "Caught": {"Type": "Pass", "End": True}}})

    with without("states_error_names"):
        unfixed = sandbox.engine.run(arn + "#Fails", {})
    if unfixed.status == "SUCCEEDED":
        no_longer_needed("states_error_names")
    assert unfixed.error == "States.Runtime"

    fixed = sandbox.engine.run(arn + "#Fails", {})
    assert fixed.status == "SUCCEEDED"
    assert fixed.output == {"Error": "States.TaskFailed", "Cause": "job failed"}


def test_mock_throw_names_fail_a_dynamodb_task_with_the_mocked_error(sandbox, tmp_path, monkeypatch):
    mock = tmp_path / "MockConfigFile.json"
    mock.write_text(json.dumps({
        "StateMachines": {"fix-mocked-throttle": {"TestCases": {"Throttled": {"Write": "Throttled"}}}},
        "MockedResponses": {"Throttled": {"0": {"Throw": {
            "Error": "DynamoDB.ProvisionedThroughputExceededException", "Cause": "throughput exceeded"}}}}}))
    monkeypatch.setenv("SFN_MOCK_CONFIG", str(mock))
    arn = machine(sandbox, "fix-mocked-throttle", {
        "StartAt": "Write", "States": {
            "Write": {"Type": "Task", "Resource": "arn:aws:states:::dynamodb:putItem",
                      "Parameters": {"TableName": "any", "Item": {"k": {"S": "v"}}},
                      "Catch": [{"ErrorEquals": ["DynamoDB.ProvisionedThroughputExceededException"], "Next": "Caught"}],
                      "End": True},
            "Caught": {"Type": "Pass", "End": True}}})

    with without("mock_throw_names"):
        unfixed = sandbox.engine.run(arn + "#Throttled", {})
    if unfixed.status == "SUCCEEDED":
        no_longer_needed("mock_throw_names")
    assert unfixed.error == "DynamoDB.AmazonDynamoDBException" and not unfixed.cause

    fixed = sandbox.engine.run(arn + "#Throttled", {})
    assert fixed.output == {"Error": "DynamoDB.ProvisionedThroughputExceededException", "Cause": "throughput exceeded"}


VARIABLES = {
    "StartAt": "Parse",
    "States": {
        # AWS: a Pass state's Assign sees its Parameters output (recorded: LocalStack's
        # test_assign_from_value[BASE_ASSIGN_FROM_PARAMETERS]); later states read $name and $name.path
        "Parse": {"Type": "Pass", "Parameters": {"parts.$": "States.StringSplit($.path, '/')"},
                  "Assign": {"parts.$": "$.parts", "last.$": "States.ArrayGetItem($.parts, 2)",
                             "doc": {"a": {"b": "deep"}}},
                  "Next": "Is it c?"},
        "Is it c?": {"Type": "Choice", "Choices": [{"Variable": "$last", "StringEquals": "c", "Next": "Read"}],
                     "Default": "Other", "Assign": {"went": "default"}},
        "Other": {"Type": "Pass", "Parameters": {"went.$": "$went"}, "End": True},
        "Read": {"Type": "Pass", "Parameters": {"first.$": "States.ArrayGetItem($parts, 0)", "deep.$": "$doc.a.b",
                                                "formatted.$": "States.Format('{}-{}', $last, $doc.a.b)"},
                 "End": True},
    },
}


def test_jsonpath_variables_are_read_as_aws_documents(sandbox):
    arn = machine(sandbox, "fix-variables", VARIABLES)

    with without("jsonpath_variables"):
        unfixed = sandbox.engine.run(arn, {"path": "a/b/c"})
    if unfixed.status == "SUCCEEDED":
        no_longer_needed("jsonpath_variables")
    assert unfixed.error == "States.Runtime" and "NoneType" in unfixed.cause

    assert sandbox.engine.run(arn, {"path": "a/b/c"}).output == {"first": "a", "deep": "deep", "formatted": "c-deep"}
    assert sandbox.engine.run(arn, {"path": "a/b/x"}).output == {"went": "default"}


def test_tolerance_integers_let_a_map_tolerate_failed_items(sandbox):
    definition = {"StartAt": "Map", "States": {"Map": {
        "Type": "Map", "ItemsPath": "$.items", "ToleratedFailurePercentage": 100,
        "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                          "StartAt": "Pass", "States": {"Pass": {"Type": "Pass", "End": True}}},
        "End": True}}}

    with without("tolerance_integers"):
        try:
            sandbox.engine.create_machine(f"fix-tolerance-{time.time_ns()}", definition)
            unfixed = "ACCEPTED"
        except Exception as exc:
            unfixed = str(exc)
    if unfixed == "ACCEPTED":
        no_longer_needed("tolerance_integers")
    assert "ToleratedFailurePercentage" in unfixed

    arn = sandbox.engine.create_machine(f"fix-tolerance-{time.time_ns()}", definition)
    assert sandbox.engine.run(arn, {"items": [1, 2]}).status == "SUCCEEDED"
