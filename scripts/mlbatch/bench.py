"""`mlbatch bench`: state transitions, service calls and wall time per intake path; the extractor
and the audit against a plain listing."""
from __future__ import annotations

import copy
import json
import statistics
import sys
from collections.abc import Callable

from .engine.harness import service_calls
from .extract import lock_key
from .progress import Progress
from .sandbox import Sandbox, load_event

__all__ = ["bench_intake", "bench_pipeline", "bench_extractor", "bench_backfill_unit"]


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


def _row(label: str, samples: list[tuple[int, int, float]], before: tuple[int, int] | None = None,
         baseline: str | None = None) -> dict:
    wall = [w for _, _, w in samples]
    row = {"path": label, "transitions": "/".join(map(str, sorted({t for t, _, _ in samples}))),
           "service_calls": "/".join(map(str, sorted({c for _, c, _ in samples})))}
    if baseline:  # the same path on the state machines of another commit
        row.update({f"transitions@{baseline}": before[0] if before else "-",
                    f"service_calls@{baseline}": before[1] if before else "-"})
    return {**row, "p50_ms": round(statistics.median(wall), 1), "p95_ms": round(_percentile(wall, 0.95), 1),
            "runs": len(samples)}


def baseline_definition(sb: Sandbox, ref: str, logical: str, overrides: dict[str, str] | None = None) -> str:
    """A state machine's ASL as committed at git `ref`, with this template's substitutions."""
    import re
    import subprocess

    from .settings import ROOT
    path = sb.template.definition_path(logical).relative_to(ROOT)
    try:
        text = subprocess.run(["git", "show", f"{ref}:{path.as_posix()}"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"--baseline {ref}: cannot read {path} at that commit ({exc})") from None
    subs = {**sb.template.substitutions(logical), **(overrides or {})}
    return re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: subs.get(m.group(1), m.group(0)), text)


def _before(sb: Sandbox, machine: str | None, payload, expect: str, name: str | None = None) -> tuple[int, int] | None:
    """(transitions, calls) of one run on the baseline machine, or None where it does not reach the
    same outcome (a path the baseline did not have)."""
    if machine is None:
        return None
    result = sb.engine.run(machine, copy.deepcopy(payload), name=name, timeout=120)
    got = result.output.get("status") if result.status == "SUCCEEDED" and isinstance(result.output, dict) else result.error
    return _measure(sb, result.arn)[:2] if got == expect else None


def bench_intake(runs: int = 20, progress: Callable[[str], None] | None = None,
                 baseline: str | None = None) -> list[dict]:
    """Measure each intake path `runs` times on the embedded engine; one row per path. With
    `baseline` (a git ref) each path also runs once on the intake committed there."""
    progress = progress or Progress()
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
        old = old_no_pipeline = None
        if baseline:
            stand_in = {"PipelineStateMachineArn": sb._stand_in,
                        "PipelineExecutionArnPrefix": sb._stand_in.replace(":stateMachine:", ":execution:")}
            old = sb.engine.create_machine("bench-intake-baseline",
                                           baseline_definition(sb, baseline, "IntakeStateMachine", stand_in))
            old_no_pipeline = sb.engine.create_machine(
                "bench-no-pipeline-baseline", baseline_definition(sb, baseline, "IntakeStateMachine", missing))

        def fresh(i: int) -> dict:  # a new window per run
            return {**_key(live, batch=f"mb-bench-{i}"), "timestamp": f"2024-03-01T00:10:00.{i:06d}Z"}

        def pipes(ev: dict) -> list:
            return [{**load_event("pipes_batch")[0], "body": json.dumps(ev)}]

        def collide(i: int):
            first = {**fresh(i), "timestamp": f"2024-03-02T01:10:00.{i:06d}Z"}
            sb.intake(first)
            return _key(first, batch=f"mb-other-{i}")

        def foreign(i: int):  # a lock another orchestrator wrote: only a key and a status
            event = {**fresh(4000 + i), "timestamp": f"2024-03-03T01:10:00.{i:06d}Z"}
            sb.engine.dynamodb.put_item(TableName=sb.table("LockTable"), Item={
                "lock_key": {"S": f"traffic-anomaly#fs-2024-06#2024-03-03T01:08:00Z#2024-03-03T01:10:00.{i:06d}Z"},
                "status": {"S": "SUCCEEDED"}})
            return event

        def forced(i: int):  # a SUCCEEDED window run again on purpose
            event = {**fresh(5000 + i), "timestamp": f"2024-03-04T01:10:00.{i:06d}Z"}
            sb.intake(event)
            key = f"traffic-anomaly#fs-2024-06#2024-03-04T01:08:00Z#2024-03-04T01:10:00.{i:06d}Z"
            sb.set_lock({**sb.lock(key), "status": "SUCCEEDED"})
            return {**event, "force": True, "reason": "bench"}

        def retried(i: int):  # the producer sends the running batch again, stamped in another window
            return {**live, "timestamp": f"2024-03-01T00:09:{i % 60:02d}.5Z"}

        scenarios = [
            ("happy path (normalized event)", intake, fresh, "STARTED"),
            ("happy path (Pipes batch, raw SQS body)", intake, lambda i: pipes(fresh(1000 + i)), "STARTED"),
            ("happy path (Pipes batch, SNS envelope)", intake, lambda i: [{**load_event(
                "pipes_batch_sns_envelope")[0], "body": json.dumps({
                    **load_event("sns_envelope"), "Message": json.dumps(fresh(2000 + i))})}],
             "STARTED"),
            ("duplicate (redelivery)", intake, lambda i: live, "DUPLICATE_SUPPRESSED"),
            ("duplicate (producer retry, new timestamp: adopts the bound window)", intake, retried,
             "DUPLICATE_SUPPRESSED"),
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
            ("duplicate of a lock another orchestrator wrote", intake, foreign, "DUPLICATE_SUPPRESSED"),
            ("forced re-run of a SUCCEEDED window", intake, forced, "STARTED"),
            ("key in another bucket (Intake.InvalidS3Key)", intake,
             lambda i: {**live, "s3_key": live["s3_key"].replace("mlbatch-example-ingest", "elsewhere")},
             "Intake.InvalidS3Key"),
        ]
        sb.intake(live)  # the lock the duplicates meet
        for label, machine, make, expect in scenarios:
            samples = []
            for i in range(runs):
                progress(f"bench: intake {label} {i + 1}/{runs}")
                result = sb.engine.run(machine, copy.deepcopy(make(i)))
                got = result.output["status"] if result.status == "SUCCEEDED" else result.error
                if got != expect:
                    raise RuntimeError(f"{label}: expected {expect}, got {got}: {result.cause}")
                samples.append(_measure(sb, result.arn))
            before = None
            if baseline:
                sb.clear_locks()
                sb.intake(live)  # the lock the duplicates meet
                before = _before(sb, old_no_pipeline if machine == no_pipeline else old, make(runs + 10), expect)
            progress(f"bench: intake {label} done ({runs} runs)")
            rows.append(_row(label, samples, before, baseline))
    return rows


def bench_pipeline(runs: int = 20, progress: Callable[[str], None] | None = None,
                   baseline: str | None = None) -> list[dict]:
    """The pipeline per batch (builders mocked) and lock_release, `runs` times each. With `baseline`
    (a git ref) each pipeline path also runs once on the pipeline committed there."""
    progress = progress or Progress()
    live = load_event("live_event")
    rows = []
    with Sandbox() as sb:
        sb.put_defaults(load_event("project_defaults"))
        # (label, test case, outcome, runs[, the baseline's outcome where it ended another way])
        scenarios = [("success (HappyPath)", "HappyPath", "SUCCEEDED", runs),
                     ("Delta Builder fails", "DeltaBuilderFails", "Pipeline.BuildFailed", runs),
                     ("Pair Counts Builder fails", "PairCountsFails", "Pipeline.BuildFailed", runs),
                     # a throttling retry sleeps 0-2 s (full jitter): fewer runs
                     ("throttled once, then success", "ThrottledThenSucceeds", "SUCCEEDED", min(runs, 5)),
                     # the finalizer's lock write throttled through its 3 retries (0-7 s of waits): fewer runs
                     ("success, its lock write failed", "BuildersSucceedAndTheLockWriteIsThrottled",
                      "Pipeline.LockUpdateFailed", min(runs, 5), "DynamoDB.ProvisionedThroughputExceededException"),
                     ("Delta Builder fails, its lock write failed", "DeltaFailsAndTheLockWriteIsThrottled",
                      "Pipeline.LockUpdateFailed", min(runs, 5), "Pipeline.BuildFailed")]
        n = 0
        for label, case, expect, count, *was in scenarios:
            sb.use_intake("pipeline", case)
            samples = []
            for i in range(count):
                progress(f"bench: pipeline {label} {i + 1}/{count}")
                n += 1
                intake = sb.intake({**_key(live, batch=f"mb-p-{n}"), "timestamp": f"2024-03-01T00:10:00.{n:06d}Z"})
                pipeline = sb.engine.wait(intake.output["pipeline_execution_arn"], timeout=120)
                got = pipeline.output["status"] if pipeline.status == "SUCCEEDED" else pipeline.error
                if got != expect:
                    raise RuntimeError(f"{label}: expected {expect}, got {got}: {pipeline.cause}")
                samples.append(_measure(sb, pipeline.arn))
            before = _pipeline_before(sb, baseline, case, pipeline.input, (was or [expect])[0]) if baseline else None
            progress(f"bench: pipeline {label} done ({count} runs)")
            rows.append(_row(f"pipeline: {label}", samples, before, baseline))
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


def _pipeline_before(sb: Sandbox, ref: str, case: str, pipeline_input: dict, expect: str) -> tuple[int, int] | None:
    """One run of the baseline pipeline, its builders mocked by the same test case (the mock file
    keys test cases by state machine name: a copy names the baseline's too)."""
    import os
    import tempfile

    from .sandbox import MOCK_CONFIG
    name = "mlbatch-pipeline-baseline"
    existing = {m["name"]: m["stateMachineArn"] for m in sb.engine.sfn.list_state_machines()["stateMachines"]}
    machine = existing.get(name) or sb.engine.create_machine(name, baseline_definition(sb, ref, "PipelineStateMachine"))
    config = json.loads(MOCK_CONFIG.read_text())
    config["StateMachines"][name] = config["StateMachines"][sb.template.physical_name("PipelineStateMachine")]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(config, fh)
    saved = os.environ.get("SFN_MOCK_CONFIG")
    os.environ["SFN_MOCK_CONFIG"] = fh.name
    try:
        lock = sb.lock(pipeline_input["lock_key"])
        arn = f"{machine.replace(':stateMachine:', ':execution:')}:baseline-{len(existing)}-{os.getpid()}"
        sb.set_lock({**lock, "status": "IN_PROGRESS", "pipeline_execution_arn": arn})  # it owns the window
        return _before(sb, machine + f"#{case}", pipeline_input, expect, name=arn.rsplit(":", 1)[1])
    finally:
        os.environ["SFN_MOCK_CONFIG"] = saved or str(MOCK_CONFIG)
        os.unlink(fh.name)


BENCH_PROJECT, BENCH_FSV = "traffic-anomaly", "fs-1"


def _populate(bucket: str, folders: int, files_per_folder: int = 1) -> int:
    """Write `folders` batch folders (96 a day from 2023-01-01) straight into moto's S3 backend."""
    import datetime as dt

    from moto.s3.models import s3_backends
    backend = s3_backends["123456789012"]["aws"]
    backend.create_bucket(bucket, "us-east-1")
    start = dt.datetime(2023, 1, 1, 0, 8)
    objects = 0
    for i in range(folders):
        t = start + dt.timedelta(minutes=15 * i)
        for f in range(files_per_folder):
            key = f"acme/netsec/{BENCH_PROJECT}/{t:%Y/%m/%d}/mb-{i:06d}/part-{f}.json.gz"
            backend.put_object(bucket, key, b"{}")
            backend.get_object(bucket, key).last_modified = t + dt.timedelta(seconds=30 + f)
            objects += 1
    return objects


def _seed_ledger(table: str, folders: int, buckets: dict[str, int] | None = None) -> None:
    """Locks for the windows `_populate` creates, straight into moto's DynamoDB backend: per 100
    folders 90 SUCCEEDED, 4 FAILED, 1 POISONED, 1 IN_PROGRESS and 4 without a lock (MISSING); one
    in 1,000 is a STUCK lock whose pipeline execution does not exist (a DescribeExecution each).
    Every lock's batch has its binding (as the intake and the backfill write it) in each of `buckets` that holds it,
    so the audit's first read per 100 units returns what it returns on a ledger written since issue 15."""
    import datetime as dt

    from moto.dynamodb.models import dynamodb_backends
    backend = dynamodb_backends["123456789012"]["us-east-1"]
    start = dt.datetime(2023, 1, 1, 0, 8)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    for i in range(folders):
        t = start + dt.timedelta(minutes=15 * i)
        if i % 1000 == 999:
            status, attempts, updated = "IN_PROGRESS", 1, "2023-01-01T00:00:00.000Z"
        elif i % 100 < 90:
            status, attempts, updated = "SUCCEEDED", 1, now
        elif i % 100 < 94:
            status, attempts, updated = "FAILED", 1, now
        elif i % 100 == 94:
            status, attempts, updated = "FAILED", 3, now
        elif i % 100 == 95:
            status, attempts, updated = "IN_PROGRESS", 1, now
        else:
            continue
        end = f"{t + dt.timedelta(seconds=30):%Y-%m-%dT%H:%M:%S}Z"
        key = f"{BENCH_PROJECT}#{BENCH_FSV}#{t:%Y-%m-%dT%H:%M:00Z}#{end}"
        backend.put_item(table, {
            "lock_key": {"S": key}, "status": {"S": status}, "attempts": {"N": str(attempts)},
            "mini_batch_id": {"S": f"mb-{i:06d}"}, "updated_at": {"S": updated}, "source": {"S": "backfill"},
            "pipeline_execution_arn": {"S": f"arn:aws:states:us-east-1:123456789012:execution:bench:mb-{i:06d}"}})
        for bucket in [b for b, size in (buckets or {}).items() if i < size]:
            prefix = f"s3://{bucket}/acme/netsec/{BENCH_PROJECT}/{t:%Y/%m/%d}/mb-{i:06d}/"
            backend.put_item(table, {k: {"S": v} for k, v in {
                "lock_key": f"batch#{BENCH_FSV}#{prefix}", "item_type": "batch_binding",
                "feature_spec_version": BENCH_FSV, "mini_batch_s3_prefix": prefix, "project_name": BENCH_PROJECT,
                "mini_batch_id": f"mb-{i:06d}", "window_lock_key": key, "batch_start_ts_iso": f"{t:%Y-%m-%dT%H:%M:00Z}",
                "batch_end_ts_iso": end, "bound_at": updated, "bound_source": "backfill",
                "bound_by": "arn:aws:states:us-east-1:123456789012:execution:bench-backfill:bench"}.items()})


def _serve_history(role: str, sizes: tuple[int, ...], port_queue, stop) -> None:
    """In a child process: moto's server on 127.0.0.1, either holding one bucket per size
    (role "s3") or the project-defaults table and a lock ledger for the largest size (role
    "ledger"; Step Functions is asked there too). S3 and DynamoDB are separate services with
    separate capacity on AWS: served by one process, the ledger's reads would take the listing's
    CPU, which never happens there. The parent's measurements cover the commands alone."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    if role == "s3":
        port_queue.put((role, endpoint, {n: _populate(f"bench-{n}", n) for n in sizes}))
    else:
        ddb = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        for table, key in (("bench-defaults", "project_name"), ("bench-locks", "lock_key")):
            ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                             KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                             AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}])
        ddb.put_item(TableName="bench-defaults", Item={"project_name": {"S": BENCH_PROJECT},
                                                        "feature_spec_version": {"S": BENCH_FSV}})
        _seed_ledger("bench-locks", max(sizes), buckets={f"bench-{n}": n for n in sizes})
        port_queue.put((role, endpoint, None))
    stop.wait(3600)
    server.stop()


#: The baseline `mlbatch extract` is held to: a plain sequential ListObjectsV2 walk of the same
#: prefix, writing the keys, in a process of its own (start-up included, as for the command).
_WALK = """
import sys
import boto3
bucket, prefix, out = sys.argv[1:4]
s3, kwargs, calls = boto3.client("s3"), {"Bucket": bucket, "Prefix": prefix}, 0
with open(out, "w") as fh:
    while True:
        page = s3.list_objects_v2(**kwargs)
        calls += 1
        fh.writelines(o["Key"] + "\\n" for o in page.get("Contents", ()))
        if not page.get("NextContinuationToken"):
            break
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
print(calls, file=sys.stderr)
"""


#: Runs a command in a child of a small process, so that the child's peak RSS (ru_maxrss, which
#: survives exec) and CPU time are its own and not the benchmarking parent's.
_LAUNCH = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, int, str]:
    """Run a process to its end: (wall seconds, its own peak RSS in MiB, its CPU seconds, exit code,
    stderr)."""
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryFile("w+") as err, tempfile.NamedTemporaryFile("r") as rss:
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-S", "-c", _LAUNCH, rss.name, *argv], env=env,
                              stdout=subprocess.DEVNULL, stderr=err, text=True)
        seconds = time.perf_counter() - began
        err.seek(0)
        maxrss, cpu = (rss.read().split() or ["0", "0"])
        return seconds, int(maxrss) / 1024, float(cpu), done.returncode, err.read()


def _cpu_seconds(pid: int) -> float:
    """CPU seconds a process has used (Linux /proc; 0 elsewhere): what a server spent on a run,
    whatever else the machine was doing."""
    import os
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def bench_extractor(sizes: tuple[int, ...] = (3_500, 20_000, 35_040), repeats: int = 2,
                    progress: Callable[[str], None] | None = None) -> list[dict]:
    """`mlbatch extract` and `mlbatch audit` against moto's threaded servers (S3 in one process, the
    ledger in another, over HTTP on 127.0.0.1), next to a plain ListObjectsV2 walk of the same keys.

    Per size and command: API calls against their floors (ListObjectsV2 ceil(objects/1000), the
    ledger's BatchGetItem 2 x ceil(units/100): bindings, then window locks) and HeadObject calls, counted in-process, with the
    peak Python memory (tracemalloc); wall time, folders per minute, peak RSS and CPU time from each
    command run as a process of its own, start-up included, the three run side by side `repeats`
    times (the best run counts), with the CPU each server spent on that run. `ratio`: extract
    against the walk, audit against extract."""
    import datetime as dt
    import logging
    import math
    import multiprocessing
    import os
    import tempfile
    import tracemalloc
    from collections import Counter

    import boto3

    from .audit import run_audit
    from .extract import Extractor, write_units

    progress = progress or Progress()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    ctx = multiprocessing.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    children = [ctx.Process(target=_serve_history, args=(role, sizes, ports, stop), daemon=True)
                for role in ("s3", "ledger")]
    for child in children:
        child.start()
    rows = []
    try:
        served = {role: (endpoint, extra) for role, endpoint, extra in (ports.get(timeout=900) for _ in children)}
        (s3_endpoint, objects_by_size), (ledger_endpoint, _) = served["s3"], served["ledger"]
        endpoints = {"s3": s3_endpoint, "dynamodb": ledger_endpoint, "stepfunctions": ledger_endpoint}
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
        env.update(AWS_ENDPOINT_URL_S3=s3_endpoint, AWS_ENDPOINT_URL_DYNAMODB=ledger_endpoint,
                   AWS_ENDPOINT_URL_SFN=ledger_endpoint, AWS_DEFAULT_REGION="us-east-1",
                   AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")

        def client(service: str, calls: Counter | None = None):
            c = boto3.client(service, region_name="us-east-1", endpoint_url=endpoints[service])
            if calls is not None:
                c.meta.events.register(f"before-call.{c.meta.service_model.endpoint_prefix}.*",
                                       lambda model, **kw: calls.update([model.name]))
            return c

        for folders in sizes:
            bucket, objects = f"bench-{folders}", objects_by_size[folders]
            last = dt.date(2023, 1, 1) + dt.timedelta(days=math.ceil(folders / 96) - 1)
            dates = ["--from", "2023-01-01", "--to", f"{last}", "--prefix", "acme/netsec", "--project", BENCH_PROJECT]

            # in-process: calls against the floors, peak Python memory
            measured = {}
            for command in ("extract", "audit"):
                calls: Counter = Counter()
                s3, ddb = client("s3", calls), client("dynamodb", calls)
                tracemalloc.start()
                with tempfile.TemporaryFile("w+") as out:
                    if command == "extract":
                        ex = Extractor(bucket, "bench-defaults", s3=s3, dynamodb=ddb, workers=8)
                        write_units(ex.lines(dt.date(2023, 1, 1), last, "acme/netsec", [BENCH_PROJECT]), out)
                        units = ex.report.units
                    else:
                        summary = run_audit(bucket, dt.date(2023, 1, 1), last, lock_table="bench-locks",
                                            defaults_table="bench-defaults", prefix="acme/netsec",
                                            projects=[BENCH_PROJECT], output=out, s3=s3, dynamodb=ddb,
                                            sfn=client("stepfunctions", calls)).summary
                        units = summary["units"]
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                ledger_calls = calls["BatchGetItem"] - 1  # the defaults read is one BatchGetItem
                measured[command] = {"folders": folders, "objects": objects, "list_calls": calls["ListObjectsV2"],
                                     "list_floor": math.ceil(objects / 1000),
                                     "ledger_calls": ledger_calls if command == "audit" else 0,
                                     # the bindings, then the window locks: 2 reads per 100 units
                                     "ledger_floor": 2 * math.ceil(units / 100) if command == "audit" else 0,
                                     "head_calls": calls["HeadObject"], "peak_py_mib": round(peak / 2**20, 1)}

            # side by side, each a process of its own: wall time and peak RSS, start-up included
            best: dict[str, tuple[float, float]] = {}
            walk_calls = 0
            with tempfile.TemporaryDirectory() as tmp:
                argv = {
                    "walk": [sys.executable, "-c", _WALK, bucket, f"acme/netsec/{BENCH_PROJECT}/", f"{tmp}/keys"],
                    "extract": [sys.executable, "-m", "mlbatch.cli", "extract", "--bucket", bucket, *dates,
                                "--defaults-table", "bench-defaults", "--output", f"{tmp}/units.jsonl", "--quiet"],
                    "audit": [sys.executable, "-m", "mlbatch.cli", "audit", "--bucket", bucket, *dates,
                              "--defaults-table", "bench-defaults", "--lock-table", "bench-locks",
                              "--output", f"{tmp}/audit.jsonl", "--quiet", "--json"]}
                for _ in range(repeats):
                    for name, args in argv.items():
                        before = [_cpu_seconds(child.pid) for child in children]
                        seconds, rss, cpu, code, err = _timed(args, env)
                        served = [_cpu_seconds(child.pid) - b for child, b in zip(children, before)]
                        if code != {"walk": 0, "extract": 0, "audit": 3}[name]:
                            raise RuntimeError(f"bench: {name} exited {code}: {err[-2000:]}")
                        if name == "walk":
                            walk_calls = int(err.split()[-1])
                        if seconds < best.get(name, (float("inf"),))[0]:
                            best[name] = (seconds, rss, cpu, *served)
            progress(f"bench: extractor/audit {folders} folders: walk {best['walk'][0]:.1f}s, "
                     f"extract {best['extract'][0]:.1f}s, audit {best['audit'][0]:.1f}s")

            def timing(name: str, against: str | None) -> dict:
                seconds, rss, cpu, s3_cpu, ledger_cpu = best[name]
                return {"wall_s": round(seconds, 2), "folders_per_min": round(folders / seconds * 60),
                        "peak_rss_mib": round(rss, 1), "cpu_s": round(cpu, 1), "s3_server_cpu_s": round(s3_cpu, 1),
                        "ledger_server_cpu_s": round(ledger_cpu, 1),
                        "ratio": f"{seconds / best[against][0]:.2f}x {against}" if against else "1.00x walk"}

            rows.append({"command": "ListObjectsV2 walk", "folders": folders, "objects": objects,
                         "list_calls": walk_calls, "list_floor": math.ceil(objects / 1000), "ledger_calls": 0,
                         "ledger_floor": 0, "head_calls": 0, "peak_py_mib": "-", **timing("walk", None)})
            rows.append({"command": "mlbatch extract", **measured["extract"], **timing("extract", "walk")})
            rows.append({"command": "mlbatch audit", **measured["audit"], **timing("audit", "extract")})
    finally:
        stop.set()
        for child in children:
            child.join(30)
    return rows


def _unit_outcome(sb: Sandbox, execution_arn: str) -> str:
    """started | suppressed | collided | ...: the outcome a backfill unit was counted under."""
    from .engine.harness import path
    counted = [name for name, kind in path(sb.engine.history(execution_arn))
               if kind == "TaskStateEntered" and name.startswith("Count the ")]
    return counted[-1].removeprefix("Count the ").split(" ")[0] if counted else "uncounted"


# what the Map's ItemSelector hands each unit as `execution_arn` ($$.Execution.Id): the backfill's own
# ARN, written into a batch binding's bound_by
BACKFILL_ARN = "arn:aws:states:us-east-1:123456789012:execution:bench-backfill:bench"


def bench_backfill_unit(progress: Callable[[str], None] | None = None, runs: int = 5,
                        baseline: str | None = None) -> list[dict]:
    """State transitions and service calls per backfill unit, by outcome (`runs` each). With `baseline`
    (a git ref) each outcome also runs once on the unit processor committed there ("-" where that
    processor reaches another outcome: a path it did not have).

    The engine keeps a Distributed Map's child executions out of the parent's history, so
    the backfill's item processor runs here as a machine of its own, per outcome."""
    progress = progress or Progress()
    rows = []
    with Sandbox() as sb:
        sb.put_defaults(load_event("project_defaults"))
        happy = {"PipelineStateMachineArn": sb.pipeline_arn + "#HappyPath"}

        def processor_of(definition: str, name: str) -> str:
            processor = json.loads(definition)["States"]["Process the manifest"]["ItemProcessor"]
            processor.pop("ProcessorConfig")
            return sb.engine.create_machine(name, processor)

        machine = processor_of(sb.template.definition("BackfillStateMachine", happy), "bench-backfill-unit")
        old = processor_of(baseline_definition(sb, baseline, "BackfillStateMachine", happy),
                           "bench-backfill-unit-baseline") if baseline else None
        sb.engine.dynamodb.put_item(TableName=sb.table("BackfillRunsTable"),
                                    Item={"run_id": {"S": "bench"}, "entry": {"S": "run"}})

        def unit(i: int) -> dict:
            return {"project_name": "traffic-anomaly", "org1": "acme", "org2": "netsec", "mini_batch_id": f"mb-{i}",
                    "mini_batch_s3_prefix": f"s3://mlbatch-example-ingest/acme/netsec/traffic-anomaly/2024/03/01/mb-{i}/",
                    "feature_spec_version": "fs-2024-06", "batch_start_ts_iso": "2024-03-01T00:08:00Z",
                    "batch_end_ts_iso": f"2024-03-01T00:09:00.{i:06d}Z", "source": "backfill"}

        def poisoned(i: int) -> dict:
            u = unit(1000 + i)
            sb.set_lock({"lock_key": lock_key(u),
                         "status": "FAILED", "attempts": 3, "mini_batch_id": u["mini_batch_id"]})
            return u

        def adopted(i: int) -> dict:  # the live flow ran the batch in the window of its payload timestamp
            u = unit(2000 + i)
            live_end = f"2024-03-01T00:08:41.{i:06d}Z"
            live_key = lock_key({**u, "batch_end_ts_iso": live_end})
            sb.set_lock({"lock_key": live_key, "status": "SUCCEEDED", "attempts": 1, "mini_batch_id": u["mini_batch_id"],
                         "pipeline_execution_arn": "arn:aws:states:us-east-1:123456789012:execution:live:x"})
            sb.set_lock({"lock_key": f"batch#{u['feature_spec_version']}#{u['mini_batch_s3_prefix']}",
                         "item_type": "batch_binding", "feature_spec_version": u["feature_spec_version"],
                         "mini_batch_s3_prefix": u["mini_batch_s3_prefix"], "project_name": u["project_name"],
                         "mini_batch_id": u["mini_batch_id"], "window_lock_key": live_key,
                         "batch_start_ts_iso": u["batch_start_ts_iso"], "batch_end_ts_iso": live_end,
                         "bound_at": "2024-03-01T00:08:42Z", "bound_by": "arn:live", "bound_source": "inference"})
            return u

        def collided(i: int) -> dict:  # another mini-batch holds the unit's window
            u = unit(3000 + i)
            sb.set_lock({"lock_key": lock_key(u), "status": "IN_PROGRESS", "attempts": 1, "mini_batch_id": "mb-other",
                         "pipeline_execution_arn": "arn:aws:states:us-east-1:123456789012:execution:other:x"})
            return u

        # (label, unit maker, outcome, the unit the baseline processor gets: fresh, or one already done)
        cases = [("unit started (pipeline waited for)", unit, "started", lambda: unit(500)),
                 ("unit suppressed (window done)", unit, "suppressed", lambda: unit(0)),
                 ("unit suppressed (adopts the live window it was bound to)", adopted, "suppressed",
                  lambda: adopted(runs + 50)),
                 ("unit collided (another batch's window)", collided, "collided", lambda: collided(runs + 50)),
                 ("unit poisoned (max_attempts 3)", poisoned, "poisoned", lambda: poisoned(runs + 50)),
                 ("unit invalid (incomplete)", lambda i: {"project_name": "x"}, "invalid", lambda: {"project_name": "x"})]
        for label, make, expect, again in cases:
            samples = []
            for i in range(runs):
                progress(f"bench: backfill {label} {i + 1}/{runs}")
                payload = {"unit": make(i), "run_id": "bench", "index": i, "max_attempts": 3,
                           "execution_arn": BACKFILL_ARN}
                result = sb.engine.run(machine, payload, timeout=120)
                got = _unit_outcome(sb, result.arn)
                if got != expect:
                    raise RuntimeError(f"backfill {label}: expected {expect}, got {got}")
                samples.append(_measure(sb, result.arn))
            before = None
            if old:
                result = sb.engine.run(old, {"unit": again(), "run_id": "bench", "index": runs, "max_attempts": 3,
                                             "execution_arn": BACKFILL_ARN}, timeout=120)
                before = _measure(sb, result.arn)[:2] if _unit_outcome(sb, result.arn) == expect else None
            rows.append(_row(f"backfill: {label}", samples, before, baseline))
        progress("bench: backfill units done")

        # the whole backfill around one (suppressed) unit: its run record, map-run counts and metrics; the
        # Distributed Map's child executions stay out of this history, so the unit's own states do too
        def run_of(definition: str, name: str) -> str:
            return sb.engine.create_machine(name, json.loads(definition))

        whole = run_of(sb.template.definition("BackfillStateMachine", happy), "bench-backfill-run")
        whole_old = run_of(baseline_definition(sb, baseline, "BackfillStateMachine", happy),
                           "bench-backfill-run-baseline") if baseline else None

        def bookkeeping(machine: str) -> tuple[int, int, float] | None:
            result = sb.engine.run(machine, {"units": [unit(0)]}, timeout=120)  # unit(0)'s window is done
            ok = result.status == "SUCCEEDED" and (result.output or {}).get("suppressed") == 1
            return _measure(sb, result.arn) if ok else None

        samples = []
        for i in range(runs):
            progress(f"bench: backfill run bookkeeping {i + 1}/{runs}")
            measured = bookkeeping(whole)
            if measured is None:
                raise RuntimeError("backfill run: expected one suppressed unit and a SUCCEEDED run")
            samples.append(measured)
        before = bookkeeping(whole_old) if whole_old else None
        rows.append(_row("backfill run: bookkeeping around the map (1 suppressed unit, its states not counted)",
                         samples, before[:2] if before else None, baseline))
        progress("bench: backfill run done")
    return rows
