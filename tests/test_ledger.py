"""The lock ledger as the system of record: a stack on tables a team brings, holding items
another orchestrator wrote."""
from __future__ import annotations

import copy

import pytest

from mlbatch.sandbox import EXAMPLE_PARAMETERS, Sandbox, load_event

GIVEN = {"ExistingLockTableName": "legacy-orchestrator-locks", "ExistingProjectDefaultsTableName": "legacy-defaults"}
LOCK_KEY = "traffic-anomaly#fs-2024-06#2024-02-29T23:53:00Z#2024-03-01T00:05:07.123Z"


@pytest.fixture(scope="module")
def adopted(sandbox):
    """A second stack, in the same engine, deployed onto given tables (created here as the team's
    existing ones)."""
    with Sandbox(engine=sandbox.engine, parameters=GIVEN, stack_name="adopted") as sb:
        sb.put_defaults(load_event("project_defaults"))
        yield sb


def test_a_stack_on_given_tables_creates_none_and_uses_them(adopted):
    assert set(adopted.deployment.tables) == {"BackfillRunsTable"}
    assert adopted.deployment.tables["BackfillRunsTable"] == "adopted-BackfillRunsTable"
    assert adopted.table("LockTable") == GIVEN["ExistingLockTableName"]
    adopted.use_intake("stand-in")

    result = adopted.intake(copy.deepcopy(load_event("live_event")))

    assert result.output["status"] == "STARTED", result.cause
    item = adopted.engine.dynamodb.get_item(TableName=GIVEN["ExistingLockTableName"],
                                            Key={"lock_key": {"S": LOCK_KEY}})["Item"]
    assert item["status"] == {"S": "IN_PROGRESS"}


def test_an_adopted_ledger_keeps_what_the_old_orchestrator_wrote(adopted):
    # GIVEN a window the old orchestrator ran, recorded its own way
    table = GIVEN["ExistingLockTableName"]
    adopted.engine.dynamodb.put_item(TableName=table, Item={
        "lock_key": {"S": LOCK_KEY}, "status": {"S": "SUCCEEDED"}, "dag_run_id": {"S": "scheduled__2024-03-01"}})
    adopted.use_intake("stand-in")
    before = len(adopted.pipeline_executions())

    # WHEN its event is redelivered, and later forced by an operator
    plain = adopted.intake(copy.deepcopy(load_event("live_event")))
    forced = adopted.intake(copy.deepcopy(load_event("forced_rerun")))

    # THEN the first is a named duplicate, the forced run starts, and mlbatch only added attributes
    assert plain.output["status"] == "DUPLICATE_SUPPRESSED"
    assert plain.output["suppressed_by"]["mini_batch_id"] is None
    assert forced.output["status"] == "STARTED"
    assert len(adopted.pipeline_executions()) == before + 1
    item = adopted.engine.dynamodb.get_item(TableName=table, Key={"lock_key": {"S": LOCK_KEY}})["Item"]
    assert item["dag_run_id"] == {"S": "scheduled__2024-03-01"}
    assert (item["status"], item["attempts"]) == ({"S": "IN_PROGRESS"}, {"N": "1"})


def test_the_example_parameters_still_create_both_tables(sandbox):
    assert {"LockTable", "ProjectDefaultsTable"} <= set(sandbox.deployment.tables)
    assert not any(EXAMPLE_PARAMETERS.get(p) for p in GIVEN)
