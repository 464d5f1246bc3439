"""The stack's CloudWatch dashboard: a body CloudWatch accepts, and every widget shows something the stack
really creates or emits (docs/dashboard.md).

The body is read as deployed: template.yaml through cfn-lint's decoder, its Fn::Sub resolved for a stack
with and without the optional sweep and the bring-your-own tables. cfn-lint, SAM and checkov run over the
same template in test_static.py and test_template.py.
"""
from __future__ import annotations

import json
import re

import pytest

from mlbatch.awsrules import states
from mlbatch.sandbox import EXAMPLE_PARAMETERS
from mlbatch.settings import ROOT
from mlbatch.template import load

# Metrics AWS publishes by itself, with the one dimension a widget may give them. Evidence:
AWS_METRICS = {
    # https://docs.aws.amazon.com/step-functions/latest/dg/procedure-cw-metrics.html
    # ("Execution metrics", dimension StateMachineArn; ExecutionTime in milliseconds)
    "AWS/States": ("StateMachineArn", {"ExecutionsStarted", "ExecutionsSucceeded", "ExecutionsFailed",
                                       "ExecutionsTimedOut", "ExecutionsAborted", "ExecutionThrottled",
                                       "ExecutionTime"}),
    # https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-available-cloudwatch-metrics.html
    # (namespace AWS/SQS, dimension QueueName)
    "AWS/SQS": ("QueueName", {"ApproximateAgeOfOldestMessage", "ApproximateNumberOfMessagesVisible",
                              "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed",
                              "NumberOfMessagesSent", "NumberOfMessagesReceived", "NumberOfMessagesDeleted"}),
    # https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-monitoring.html (metrics, dimension
    # PipeName); the namespace AWS/EventBridge/Pipes: CloudWatch User Guide, "Supported metrics for resource
    # tags for telemetry", section AWS/EventBridge/Pipes (resource type AWS::Pipes::Pipe, dimension PipeName)
    "AWS/EventBridge/Pipes": ("PipeName", {"ExecutionFailed", "ExecutionPartiallyFailed", "ExecutionTimeout",
                                           "ExecutionThrottled", "TargetStageFailed", "TargetStagePartiallyFailed",
                                           "EventCount", "Invocations", "Duration"}),
}
# Values CloudWatch fills into a label (`${SUM}` is written `${!SUM}` inside Fn::Sub):
# https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/graph-dynamic-labels.html
DYNAMIC_LABELS = {"AVG", "DATAPOINT_COUNT", "FIRST", "LAST", "MAX", "MIN", "SUM", "LABEL"}
# Widget types and what each needs: the dashboard body structure,
# https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/CloudWatch-Dashboard-Body-Structure.html
WIDGET_TYPES = {"metric", "alarm", "text"}
GRID_WIDTH = 24

DEPLOYMENTS = {
    "defaults": {},
    "sweep and given tables": {"SweepSchedule": "cron(30 2 * * ? *)", "ExistingLockTableName": "legacy-locks",
                               "ExistingProjectDefaultsTableName": "legacy-defaults"},
}


def deployed(name: str, stack_name: str = "mlbatch"):
    return load(parameters={**EXAMPLE_PARAMETERS, **DEPLOYMENTS[name]}).with_stack_name(stack_name)


def body(tpl) -> dict:
    (dashboard,) = tpl.resources("AWS::CloudWatch::Dashboard").values()
    text = tpl.resolve(dashboard["Properties"]["DashboardBody"])
    assert isinstance(text, str), "DashboardBody is one string (Fn::Sub), as CloudFormation requires"
    return json.loads(text)


def metric_rows(dashboard: dict):
    """(widget title, namespace, metric name, {dimension: value}) for every metric of every graph."""
    for widget in dashboard["widgets"]:
        if widget["type"] != "metric":
            continue
        for row in widget["properties"]["metrics"]:
            fields = [f for f in row if not isinstance(f, dict)]
            namespace, name, dims = fields[0], fields[1], fields[2:]
            assert len(dims) % 2 == 0, f"{widget['properties']['title']}: {row} has a dimension without a value"
            yield widget["properties"]["title"], namespace, name, dict(zip(dims[::2], dims[1::2]))


def published_metrics():
    """What the state machines publish themselves: (machine logical id, namespace, metric, dimensions,
    state path) for every cloudwatch:putMetricData task in the rendered ASL."""
    tpl = load(parameters=EXAMPLE_PARAMETERS)
    for logical in tpl.state_machines:
        definition = json.loads(tpl.definition(logical))
        for path, _, state in states(definition):
            if state.get("Resource", "").endswith(":cloudwatch:putMetricData"):
                params = state["Parameters"]
                for datum in params["MetricData"]:
                    dims = {d["Name"]: d.get("Value.$", d.get("Value")) for d in datum.get("Dimensions", [])}
                    yield logical, params["Namespace"], datum["MetricName"], dims, path


# --- a body CloudWatch accepts ---------------------------------------------------------------------------

@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_the_body_is_json_widgets_on_the_grid_without_overlap(deployment):
    dashboard = body(deployed(deployment))

    cells = {}
    for widget in dashboard["widgets"]:
        assert widget["type"] in WIDGET_TYPES
        x, y, w, h = widget["x"], widget["y"], widget["width"], widget["height"]
        assert 0 <= x and 1 <= w and x + w <= GRID_WIDTH and 1 <= h, widget
        for cell in ((cx, cy) for cx in range(x, x + w) for cy in range(y, y + h)):
            assert cell not in cells, f"{widget['properties'].get('title')} overlaps {cells[cell]}"
            cells[cell] = widget["properties"].get("title", widget["type"])
        if widget["type"] == "metric":
            assert widget["properties"]["region"] == "us-east-1" and widget["properties"]["title"]
            assert widget["properties"]["metrics"]
        if widget["type"] == "alarm":
            assert 1 <= len(widget["properties"]["alarms"]) <= 100


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_nothing_is_left_unsubstituted_but_cloudwatch_dynamic_labels(deployment):
    text = json.dumps(body(deployed(deployment)))

    left = set(re.findall(r"\$\{([^}]*)\}", text))
    assert left <= DYNAMIC_LABELS, f"unresolved in the body: {left - DYNAMIC_LABELS}"


# --- every widget names what the stack creates or emits ------------------------------------------------

@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_every_graphed_metric_is_one_aws_or_the_stack_really_emits_for_its_resources(deployment):
    tpl = deployed(deployment)
    machines = {tpl.arn(m) for m in tpl.state_machines}
    queues = {tpl.physical_name(q) for q in tpl.resources("AWS::SQS::Queue")}
    pipes = {tpl.physical_name(p) for p in tpl.resources("AWS::Pipes::Pipe")}
    resources = {"StateMachineArn": machines, "QueueName": queues, "PipeName": pipes}
    # the stack's own metrics: dimension values are $$.StateMachine.Name, the publishing machine's name
    own = {(ns, name): ({k: tpl.physical_name(logical) for k, v in dims.items() if v == "$$.StateMachine.Name"}, dims)
           for logical, ns, name, dims, _ in published_metrics()}

    problems = []
    for title, namespace, name, dims in metric_rows(body(tpl)):
        if (namespace, name) in own:
            expected, declared = own[(namespace, name)]
            if set(dims) != set(declared) or any(dims[k] != v for k, v in expected.items()):
                problems.append(f"{title}: {namespace}/{name} {dims} is not what the ASL publishes ({declared})")
        elif namespace in AWS_METRICS:
            dimension, names = AWS_METRICS[namespace]
            if name not in names:
                problems.append(f"{title}: {namespace}/{name} is not a documented metric")
            if set(dims) != {dimension} or dims[dimension] not in resources[dimension]:
                problems.append(f"{title}: {namespace}/{name} {dims} names nothing this stack creates")
        else:
            problems.append(f"{title}: {namespace}/{name} is neither AWS's nor published by a state machine")
    assert problems == []


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_the_alarm_widget_shows_exactly_the_alarms_this_deployment_creates(deployment):
    tpl = deployed(deployment)
    (alarms,) = [w["properties"]["alarms"] for w in body(tpl)["widgets"] if w["type"] == "alarm"]

    assert sorted(alarms) == sorted(tpl.arn(a) for a in tpl.resources("AWS::CloudWatch::Alarm"))
    assert (tpl.arn("SweepFailuresAlarm") in alarms) == tpl.condition("HasSweep")


def test_every_state_machine_that_fails_timed_out_or_aborted_raises_an_alarm():
    # GIVEN the deployed stack's state machines (lock_release included: when it fails, a window stays
    # IN_PROGRESS and every redelivery of its batch is suppressed until an audit heals it)
    tpl = deployed("defaults")
    machines = {tpl.arn(m) for m in tpl.resources("AWS::Serverless::StateMachine")} or \
        {tpl.arn(m) for m in tpl.resources("AWS::StepFunctions::StateMachine")}
    # WHEN the alarms' metrics are read
    watched: dict[str, set[str]] = {}
    for alarm in tpl.resources("AWS::CloudWatch::Alarm").values():
        for query in alarm["Properties"].get("Metrics", []):
            metric = query.get("MetricStat", {}).get("Metric", {})
            for dim in metric.get("Dimensions", []):
                if metric.get("Namespace") == "AWS/States" and dim["Name"] == "StateMachineArn":
                    watched.setdefault(tpl.resolve(dim["Value"]), set()).add(metric["MetricName"])
    # THEN each machine's failed, timed-out and aborted executions alarm
    assert len(machines) == 4
    for machine in machines:
        assert {"ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"} <= watched.get(machine, set()), machine


def test_the_dashboard_answers_the_operators_questions():
    """Intake started/succeeded/failed per hour; pipeline successes, failures, timeouts and duration;
    lock_release runs; backfill units by outcome; the queue's age and depth and the DLQ; the pipe's
    failures (issue 17)."""
    tpl = deployed("defaults")
    rows = list(metric_rows(body(tpl)))
    shown = {(ns, name, tuple(dims.values())) for _, ns, name, dims in rows}
    hourly = {(ns, name, tuple(dims.values())) for w in body(tpl)["widgets"] if w["type"] == "metric"
              and w["properties"].get("period") == 3600 for _, ns, name, dims in metric_rows({"widgets": [w]})}
    intake, pipeline, release = (tpl.arn(m) for m in ("IntakeStateMachine", "PipelineStateMachine",
                                                       "LockReleaseStateMachine"))
    queue, dlq = tpl.physical_name("BatchEventsQueue"), tpl.physical_name("BatchEventsDeadLetterQueue")

    for name in ("ExecutionsStarted", "ExecutionsSucceeded", "ExecutionsFailed"):
        assert ("AWS/States", name, (intake,)) in hourly
    for name in ("ExecutionsSucceeded", "ExecutionsFailed", "ExecutionsTimedOut", "ExecutionTime"):
        assert ("AWS/States", name, (pipeline,)) in shown
    assert ("AWS/States", "ExecutionsStarted", (release,)) in shown
    backfill_units = {(ns, name) for logical, ns, name, _, _ in published_metrics() if logical == "BackfillStateMachine"}
    assert backfill_units and backfill_units <= {(ns, name) for _, ns, name, _ in rows}
    for name in ("ApproximateAgeOfOldestMessage", "ApproximateNumberOfMessagesVisible"):
        assert ("AWS/SQS", name, (queue,)) in shown
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible", (dlq,)) in shown
    assert ("AWS/EventBridge/Pipes", "ExecutionFailed", (tpl.physical_name("IntakePipe"),)) in shown


def test_every_metric_a_state_machine_publishes_is_graphed():
    graphed = {(ns, name) for _, ns, name, _ in metric_rows(body(deployed("defaults")))}

    published = {(ns, name) for _, ns, name, _, _ in published_metrics()}
    assert published and published <= graphed, f"published but not on the dashboard: {published - graphed}"


def test_the_dashboard_adds_no_call_per_batch_the_backfill_publishes_once_per_run():
    published = list(published_metrics())

    # every batch event passes the intake (redeliveries again): it publishes nothing
    assert not [path for logical, *_, path in published if logical == "IntakeStateMachine"]
    backfill = [path for logical, *_, path in published if logical == "BackfillStateMachine"]
    assert backfill and all(" > " not in path for path in backfill), "a putMetricData inside the Map runs per unit"


# --- named after the stack, and found from its outputs ---------------------------------------------------

def test_the_dashboard_is_named_after_the_stack_and_its_url_is_an_output():
    for stack in ("mlbatch", "mlbatch-prod"):
        tpl = deployed("defaults", stack)
        url = tpl.resolve(tpl.doc["Outputs"]["DashboardUrl"]["Value"])

        assert tpl.physical_name("Dashboard") == stack
        assert url == (f"https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1"
                       f"#dashboards/dashboard/{stack}")
