"""`mlbatch bench`: state transitions, service calls and wall time per intake path."""
from __future__ import annotations

import copy
import json
import statistics
import sys
from collections.abc import Callable

from .engine.harness import service_calls
from .sandbox import Sandbox, load_event

__all__ = ["bench_intake"]


def _key(event: dict, project: str | None = None, batch: str | None = None) -> dict:
    segs = event["s3_key"].split("/")  # s3:, '', bucket, org1, org2, project, yyyy, mm, dd, batch, file
    if project:
        segs[5] = project
    if batch:
        segs[9] = batch
    return {**event, "s3_key": "/".join(segs)}


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def bench_intake(runs: int = 20, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Measure each intake path `runs` times on the embedded engine; one row per path."""
    progress = progress or (lambda msg: print(msg, file=sys.stderr))
    live = load_event("live_event")
    rows = []
    with Sandbox() as sb:
        sb.put_defaults(load_event("project_defaults"))
        sb.put_defaults({"project_name": "half-configured", "feature_spec_version": "v1"})
        missing = {k: v.replace("mlbatch-pipeline", "missing-pipeline")
                   for k, v in sb.template.substitutions("IntakeStateMachine").items() if k.startswith("Pipeline")}
        no_pipeline = sb.engine.create_machine("bench-no-pipeline",
                                               sb.template.definition("IntakeStateMachine", missing))
        intake = sb.arn("IntakeStateMachine")

        def fresh(i: int) -> dict:  # a new window per run
            return {**_key(live, batch=f"mb-bench-{i}"), "timestamp": f"2024-03-01T00:10:00.{i:06d}Z"}

        def pipes(ev: dict) -> list:
            return [{**load_event("pipes_batch")[0], "body": json.dumps(ev)}]

        def collide(i: int):
            first = {**fresh(i), "timestamp": f"2024-03-02T01:10:00.{i:06d}Z"}
            sb.intake(first)
            return _key(first, batch=f"mb-other-{i}")

        scenarios = [
            ("happy path (normalized event)", intake, fresh, "STARTED"),
            ("happy path (Pipes batch, raw SQS body)", intake, lambda i: pipes(fresh(1000 + i)), "STARTED"),
            ("happy path (Pipes batch, SNS envelope)", intake, lambda i: [{**load_event(
                "pipes_batch_sns_envelope")[0], "body": json.dumps({
                    **load_event("sns_envelope"), "Message": json.dumps(fresh(2000 + i))})}],
             "STARTED"),
            ("duplicate (redelivery)", intake, lambda i: live, "DUPLICATE_SUPPRESSED"),
            ("Intake.InvalidInput", intake, lambda i: {"hello": i}, "Intake.InvalidInput"),
            ("Intake.InvalidS3Key", intake, lambda i: {**live, "s3_key": live["s3_key"].replace("/03/01/", "/02/30/")},
             "Intake.InvalidS3Key"),
            ("Intake.InvalidTimestamp", intake, lambda i: {**live, "timestamp": "2024-03-01T00:05:07+02:00"},
             "Intake.InvalidTimestamp"),
            ("Config.ProjectNotFound", intake, lambda i: _key(live, project="nobody"), "Config.ProjectNotFound"),
            ("Config.InvalidProjectDefaults", intake, lambda i: _key(live, project="half-configured"),
             "Config.InvalidProjectDefaults"),
            ("Intake.WindowCollision", intake, collide, "Intake.WindowCollision"),
            ("Intake.PipelineStartFailed", no_pipeline, lambda i: fresh(3000 + i), "Intake.PipelineStartFailed"),
        ]
        sb.intake(live)  # the lock the duplicates meet
        for label, machine, make, expect in scenarios:
            transitions, calls, wall = set(), set(), []
            for i in range(runs):
                payload = copy.deepcopy(make(i))
                result = sb.engine.run(machine, payload)
                got = result.output["status"] if result.status == "SUCCEEDED" else result.error
                if got != expect:
                    raise RuntimeError(f"{label}: expected {expect}, got {got}: {result.cause}")
                events = sb.engine.history(result.arn)
                transitions.add(sum(1 for e in events if e["type"].endswith("StateEntered")))
                calls.add(len(service_calls(events)))
                d = sb.engine.sfn.describe_execution(executionArn=result.arn)
                wall.append((d["stopDate"] - d["startDate"]).total_seconds() * 1000)
            progress(f"bench: {label} done ({runs} runs)")
            rows.append({"path": label, "transitions": "/".join(map(str, sorted(transitions))),
                         "service_calls": "/".join(map(str, sorted(calls))),
                         "p50_ms": round(statistics.median(wall), 1), "p95_ms": round(_percentile(wall, 0.95), 1),
                         "runs": runs})
    return rows
