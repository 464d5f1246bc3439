"""`mlbatch bench`: state transitions, service calls and wall time per intake path."""
from __future__ import annotations

import copy
import json
import statistics
import sys
from collections.abc import Callable

from .engine.harness import service_calls
from .sandbox import Sandbox, load_event

__all__ = ["bench_intake", "bench_pipeline"]


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


def _measure(sb: Sandbox, execution_arn: str) -> tuple[int, int, float]:
    """(state transitions, service calls, wall ms) of an ended execution."""
    events = sb.engine.history(execution_arn)
    d = sb.engine.sfn.describe_execution(executionArn=execution_arn)
    return (sum(1 for e in events if e["type"].endswith("StateEntered")), len(service_calls(events)),
            (d["stopDate"] - d["startDate"]).total_seconds() * 1000)


def _row(label: str, samples: list[tuple[int, int, float]]) -> dict:
    wall = [w for _, _, w in samples]
    return {"path": label, "transitions": "/".join(map(str, sorted({t for t, _, _ in samples}))),
            "service_calls": "/".join(map(str, sorted({c for _, c, _ in samples}))),
            "p50_ms": round(statistics.median(wall), 1), "p95_ms": round(_percentile(wall, 0.95), 1),
            "runs": len(samples)}


def bench_intake(runs: int = 20, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Measure each intake path `runs` times on the embedded engine; one row per path."""
    progress = progress or (lambda msg: print(msg, file=sys.stderr))
    live = load_event("live_event")
    rows = []
    with Sandbox() as sb:
        sb.use_intake("stand-in")  # the intake alone: its pipeline leaves the lock be
        sb.put_defaults(load_event("project_defaults"))
        sb.put_defaults({"project_name": "half-configured", "feature_spec_version": "v1"})
        missing = {k: v.replace("mlbatch-pipeline", "missing-pipeline")
                   for k, v in sb.template.substitutions("IntakeStateMachine").items() if k.startswith("Pipeline")}
        no_pipeline = sb.engine.create_machine("bench-no-pipeline",
                                               sb.template.definition("IntakeStateMachine", missing))
        intake = sb.intake_arn

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
            samples = []
            for i in range(runs):
                result = sb.engine.run(machine, copy.deepcopy(make(i)))
                got = result.output["status"] if result.status == "SUCCEEDED" else result.error
                if got != expect:
                    raise RuntimeError(f"{label}: expected {expect}, got {got}: {result.cause}")
                samples.append(_measure(sb, result.arn))
            progress(f"bench: intake {label} done ({runs} runs)")
            rows.append(_row(label, samples))
    return rows


def bench_pipeline(runs: int = 20, progress: Callable[[str], None] | None = None) -> list[dict]:
    """The pipeline per batch (builders mocked) and lock_release, `runs` times each."""
    progress = progress or (lambda msg: print(msg, file=sys.stderr))
    live = load_event("live_event")
    rows = []
    with Sandbox() as sb:
        sb.put_defaults(load_event("project_defaults"))
        scenarios = [("success (HappyPath)", "HappyPath", "SUCCEEDED", runs),
                     ("Delta Builder fails", "DeltaBuilderFails", "Pipeline.BuildFailed", runs),
                     ("Pair Counts Builder fails", "PairCountsFails", "Pipeline.BuildFailed", runs),
                     # a throttling retry sleeps 0-2 s (full jitter): fewer runs
                     ("throttled once, then success", "ThrottledThenSucceeds", "SUCCEEDED", min(runs, 5))]
        n = 0
        for label, case, expect, count in scenarios:
            sb.use_intake("pipeline", case)
            samples = []
            for _ in range(count):
                n += 1
                intake = sb.intake({**_key(live, batch=f"mb-p-{n}"), "timestamp": f"2024-03-01T00:10:00.{n:06d}Z"})
                pipeline = sb.engine.wait(intake.output["pipeline_execution_arn"], timeout=120)
                got = pipeline.output["status"] if pipeline.status == "SUCCEEDED" else pipeline.error
                if got != expect:
                    raise RuntimeError(f"{label}: expected {expect}, got {got}: {pipeline.cause}")
                samples.append(_measure(sb, pipeline.arn))
            progress(f"bench: pipeline {label} done ({count} runs)")
            rows.append(_row(f"pipeline: {label}", samples))
        samples = []
        for i in range(runs):
            name = f"bench-release-{i}"
            arn = sb.pipeline_arn.replace(":stateMachine:", ":execution:") + ":" + name
            key = f"bench#release#{i}"
            sb.set_lock({"lock_key": key, "status": "IN_PROGRESS", "pipeline_execution_arn": arn})
            sb.engine.run(sb.pipeline_arn, {"lock_key": key}, name=name)  # fails before its Catch
            (release,) = sb.emit_status_change(arn)
            if not sb.engine.wait(release).output["released"]:
                raise RuntimeError("lock_release did not release an owned lock")
            samples.append(_measure(sb, release))
        progress(f"bench: lock_release done ({runs} runs)")
        rows.append(_row("lock_release: releases an owned lock", samples))
    return rows
