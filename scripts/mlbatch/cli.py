"""The `mlbatch` command: render | run | extract | audit | backfill | replay | locks | defaults | bench | local."""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import sys

__all__ = ["main"]


def cmd_render(args) -> int:
    """Render templates/*.asl.json.j2 to asl/ and the docs' generated sections (docs/diagrams.md,
    the table in docs/errors.md); with --check change nothing and name every stale file."""
    import jinja2

    from . import render
    from .failures import Failure
    try:
        if args.check:
            stale = render.check()
            for path in stale:
                print(f"stale: {path.relative_to(render.ASL.parent)} (run `mlbatch render` and review the diff)",
                      file=sys.stderr)
            if not stale:
                print("ok: asl/ and the generated docs (docs/diagrams.md, docs/errors.md) are up to date",
                      file=sys.stderr)
            return 1 if stale else 0
        for path in render.render_all():
            print(f"rendered {path.relative_to(render.ASL.parent)} - review the diff before committing",
                  file=sys.stderr)
    except jinja2.TemplateSyntaxError as exc:
        raise Failure(f"templates/{exc.name or exc.filename}, line {exc.lineno}: {exc.message}: "
                      "fix the template, then run `mlbatch render`") from None
    except jinja2.TemplateError as exc:  # e.g. an undefined name (StrictUndefined)
        raise Failure(f"a template fails to render: {exc}: fix it, then run `mlbatch render`") from None
    except ValueError as exc:  # rendered text that is not JSON (with the lines around), or missing docs markers
        first, _, context = str(exc).partition("\n")
        fix = "" if "lacks the markers" in first else ": fix the template, then run `mlbatch render`"
        raise Failure(first + fix + ("\n" + context if context else "")) from None
    return 0


def _demo() -> int:
    """The main job (`make run`): five deliveries on the in-process engine, with traces."""
    from .engine.harness import Engine
    from .sandbox import MOCK_CONFIG, Sandbox, load_event
    from .trace import execution_trace, ledger_table

    failures = 0
    if os.environ.get("AWS_ENDPOINT_URL"):
        print("mlbatch run: the demo runs on the in-process engine; to push an event through the stack at "
              "AWS_ENDPOINT_URL, use `mlbatch run --event FILE`", file=sys.stderr)

    def show(title: str, execution, expect: str) -> None:
        nonlocal failures
        print(execution_trace(title, execution, sb.engine.history(execution.arn)) + "\n")
        got = execution.output["status"] if execution.status == "SUCCEEDED" else execution.error
        if got != expect:
            failures += 1
            print(f"!! expected {expect}, got {got}", file=sys.stderr)

    def deliver(title: str, event, case: str, expect: str, pipeline_expect: str | None = None) -> None:
        sb.use_intake("pipeline", case)
        result = sb.intake(event)
        show(title, result, expect)
        if pipeline_expect:
            pipeline = sb.engine.wait(result.output["pipeline_execution_arn"], timeout=120)
            show(f"{title}: its pipeline (builders: test case {case})", pipeline, pipeline_expect)

    with Sandbox(Engine(endpoint_url="")) as sb:
        print(f"engine: {sb.engine.backend}; deployed from template.yaml: "
              f"{', '.join(sb.deployment.state_machines)} + {', '.join(sb.deployment.tables)}")
        print(f"builders: SageMaker jobs mocked from {MOCK_CONFIG.relative_to(MOCK_CONFIG.parents[2])} "
              "(Step Functions Local format)")
        defaults = load_event("project_defaults")
        sb.put_defaults(defaults)
        print(f"seeded project defaults: {defaults['project_name']} ({defaults['feature_spec_version']})\n")
        live = load_event("pipes_batch")
        deliver("1. live event (EventBridge Pipes batch from SQS)", live, "DeltaBuilderFails", "STARTED",
                "Pipeline.BuildFailed")
        deliver("2. the same event redelivered: the FAILED window runs again", live, "HappyPath", "STARTED",
                "SUCCEEDED")
        deliver("3. redelivered once more", live, "HappyPath", "DUPLICATE_SUPPRESSED")
        deliver("4. forced re-run of the succeeded window", load_event("forced_rerun"), "HappyPath", "STARTED",
                "SUCCEEDED")
        deliver("5. a bad event (Feb 30 in the path)", load_event("bad_event"), "HappyPath", "Intake.InvalidS3Key")
        print("== lock ledger")
        print(ledger_table(sb.locks()))
        print(f"\npipeline executions: {len(sb.pipeline_executions())}")
    return 1 if failures else 0


def _event_arg(args) -> object:
    """The event `run` pushes: a file's JSON (any shape the intake accepts) or a normalized event."""
    from .failures import Failure
    if args.event is None:
        return {"s3_key": args.s3_key, "timestamp": args.timestamp}
    try:
        text = sys.stdin.read() if args.event == "-" else open(args.event, encoding="utf-8").read()
    except UnicodeDecodeError:
        raise Failure(f"{args.event}: not UTF-8 text: --event takes a JSON file") from None
    except OSError as exc:
        raise Failure(f"{args.event}: cannot read it: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise Failure(f"{args.event}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
                      "--event takes an intake input, e.g. tests/events/live_event.json") from None


def _intake_arn(engine, explicit: str | None) -> str:
    """The deployed intake: --intake, $MLBATCH_INTAKE_ARN, or the template's name found by listing."""
    from .failures import Failure
    from .template import load
    if explicit or os.environ.get("MLBATCH_INTAKE_ARN"):
        return explicit or os.environ["MLBATCH_INTAKE_ARN"]
    name = load().physical_name("IntakeStateMachine")
    for page in engine.sfn.get_paginator("list_state_machines").paginate():
        for machine in page["stateMachines"]:
            if machine["name"] == name:
                return machine["stateMachineArn"]
    raise Failure(f"no state machine {name} at {engine.endpoint_url}: deploy it with `mlbatch local up` "
                  "(or name the intake with --intake / MLBATCH_INTAKE_ARN)")


def _push(args) -> int:
    """`run --event/--s3-key`: one event through the intake and its pipeline, with traces."""
    from .engine.harness import Engine
    from .failures import Failure
    from .progress import Progress
    from .sandbox import Sandbox, load_event
    from .trace import execution_trace

    event = _event_arg(args)
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")

    def run(engine, intake_arn: str) -> int:
        with Progress() as progress:
            try:
                intake = engine.wait(engine.start(intake_arn, event), args.timeout, progress)
                progress.clear()
                print(execution_trace("intake", intake, engine.history(intake.arn)) + "\n")
                if intake.status != "SUCCEEDED":
                    raise Failure(f"the intake failed: {intake.error}: {intake.cause}")
                if intake.output.get("status") != "STARTED":
                    print(f"mlbatch run: {intake.output.get('status')}: no pipeline started "
                          f"(lock {intake.output.get('lock_key')})", file=sys.stderr)
                    return 0
                pipeline = engine.wait(intake.output["pipeline_execution_arn"], args.timeout, progress)
                progress.clear()
            except TimeoutError as exc:
                raise Failure(f"{exc}: look at it in the engine (`aws stepfunctions describe-execution`), or "
                              "wait longer with --timeout SECONDS") from None
        print(execution_trace("its pipeline", pipeline, engine.history(pipeline.arn)))
        if pipeline.status != "SUCCEEDED":
            raise Failure(f"the pipeline failed: {pipeline.error}: {pipeline.cause}")
        return 0

    if endpoint:
        with Engine(endpoint) as engine:
            print(f"engine: {engine.backend}", file=sys.stderr)
            return run(engine, _intake_arn(engine, args.intake))
    with Sandbox(Engine(endpoint_url="")) as sb:
        print(f"engine: {sb.engine.backend} (set AWS_ENDPOINT_URL to use a running stack); builders: test "
              "case HappyPath", file=sys.stderr)
        sb.put_defaults(load_event("project_defaults"))
        sb.use_intake("pipeline", "HappyPath")
        return run(sb.engine, sb.intake_arn)


def cmd_run(args) -> int:
    """Events through the intake and the pipeline, with a trace per execution. No arguments: the
    demo on the in-process engine. --event/--s3-key: your event, through the stack at
    AWS_ENDPOINT_URL (`mlbatch local up`), or in-process if it is unset."""
    if args.event is None and args.s3_key is None:
        return _demo()
    return _push(args)


def _markdown_table(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(c for r in rows for c in r))  # every column any row has, in order
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows])


def cmd_bench(args) -> int:
    """Benchmark intake, pipeline, backfill units and the extractor; Markdown tables on stdout
    (JSON Lines with --json), progress on stderr."""
    from .bench import bench_backfill_unit, bench_extractor, bench_intake, bench_pipeline
    from .progress import Progress
    with Progress() as progress:
        parts = {"intake": lambda: bench_intake(runs=args.runs, progress=progress, baseline=args.baseline),
                 "pipeline": lambda: bench_pipeline(runs=args.runs, progress=progress, baseline=args.baseline),
                 "backfill": lambda: bench_backfill_unit(progress=progress, runs=args.runs, baseline=args.baseline),
                 "extractor": lambda: bench_extractor(progress=progress)}
        for name in args.only or list(parts):
            rows = parts[name]()
            progress.done(f"bench: {name} done")
            if args.json:
                for row in rows:
                    print(json.dumps({"bench": name, **row}))
            else:
                print(f"\n### {name}\n\n{_markdown_table(rows)}")
    return 0


def _usage(command: str, message: str) -> int:
    """A semantic usage error (argparse cannot see it): the message, exit code 2."""
    print(f"mlbatch {command}: error: {message}", file=sys.stderr)
    return 2


def _int_at_least(low: int):
    """An argparse type: an integer >= low (a usage error, exit 2, otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"a whole number >= {low} expected, got {text!r}")
        return value
    return parse


def _date_range(command: str, args):
    """(first, last) from --from/--to, or the usage error's exit code (bad date, from after to)."""
    try:
        first, last = (dt.date.fromisoformat(v) for v in (args.date_from, args.date_to))
    except ValueError as exc:
        return _usage(command, f"--from/--to must be YYYY-MM-DD: {exc}")
    if last < first:
        return _usage(command, f"--from {first} is after --to {last}")
    return first, last


def cmd_extract(args) -> int:
    """Historical extractor: batch folders in S3 over a date range -> execution units (JSON Lines)."""
    import itertools

    from .extract import ExtractError, Extractor, open_output, read_request, write_units
    from .progress import Progress

    if args.request:  # the backfill's SageMaker step: its input's range (or sweep), prefix and projects
        if args.date_from or args.date_to:
            return _usage("extract", "--request holds the date range: leave out --from/--to")
        try:
            request = read_request(args.request)
        except ExtractError as exc:
            print(f"mlbatch extract: {exc}", file=sys.stderr)
            return 1
        first, last = request["from"], request["to"]
        args.prefix = args.prefix or request["prefix"]
        args.project = args.project or request["projects"]
        print(f"mlbatch extract: request {args.request}: {first} to {last}"
              + (f", prefix {args.prefix}" if args.prefix else "")
              + (f", projects {','.join(args.project)}" if args.project else ""), file=sys.stderr)
    else:
        if not (args.date_from and args.date_to):
            return _usage("extract", "give --from and --to (YYYY-MM-DD), or --request FILE")
        dates = _date_range("extract", args)
        if isinstance(dates, int):
            return dates
        first, last = dates
    if not args.dry_run and not args.output:
        return _usage("extract", "--output is required (a path, '-' or s3://bucket/key)")
    args.defaults_table = args.defaults_table or os.environ.get("MLBATCH_DEFAULTS_TABLE")
    if not args.defaults_table:
        return _usage("extract", "name the project-defaults table with --defaults-table or MLBATCH_DEFAULTS_TABLE "
                      "(the stack's ProjectDefaultsTableName output)")
    progress = Progress(enabled=not args.quiet)
    try:
        ex = Extractor(args.bucket, args.defaults_table, representative=args.representative,
                       strict=args.strict, workers=args.workers, progress=progress,
                       suspect_after_days=args.suspect_after_days,
                       warn=lambda msg: print(f"mlbatch extract: warning: {msg}", file=sys.stderr))
        if args.dry_run:
            for (project, day), group in itertools.groupby(
                    ex.units(first, last, args.prefix, args.project or None),
                    key=lambda u: (u["project_name"], u["mini_batch_s3_prefix"].split("/")[-5:-2])):
                group = list(group)
                row = {"project_name": project, "day": "-".join(day), "units": len(group)}
                if args.lock_table:
                    row["already_succeeded"], adopting = ex.ledger_plan(args.lock_table, group)
                    ex.report.already_succeeded += row["already_succeeded"]
                    ex.report.ledger_read = True
                    if adopting:  # their batches are bound to another window: the backfill adopts it
                        row["will_adopt"] = adopting
                        ex.report.will_adopt += len(adopting)
                print(json.dumps(row))
        else:
            with open_output(args.output) as out:  # checked (writable path, existing bucket) before the listing
                write_units(ex.lines(first, last, args.prefix, args.project or None), out)
    except ExtractError as exc:
        progress.done()
        print(f"mlbatch extract: {exc}", file=sys.stderr)
        return 1
    progress.done()
    print(json.dumps({"summary": ex.report.as_dict()}), file=sys.stderr)
    return 0


def _extract_parser(sub) -> None:
    p = sub.add_parser("extract", help=cmd_extract.__doc__, description=cmd_extract.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  mlbatch extract --bucket ingest --from 2024-01-01 --to 2024-12-31 \\\n"
                              "      --defaults-table mlbatch-ProjectDefaults --output s3://artifacts/units.jsonl\n"
                              "exit codes: 0 done, 1 extraction failed (message on stderr), 2 bad arguments")
    p.add_argument("--bucket", required=True, help="the ingestion bucket")
    p.add_argument("--from", dest="date_from", help="first path date, YYYY-MM-DD")
    p.add_argument("--to", dest="date_to", help="last path date, YYYY-MM-DD (inclusive)")
    p.add_argument("--request", metavar="FILE",
                   help="instead of --from/--to: the backfill's request file ({from, to} or {sweep: {days, "
                        "until}}, optional prefix and projects), as its SageMaker step passes it")
    p.add_argument("--prefix", help="org1/org2 (default: discover every org pair)")
    p.add_argument("--project", action="append", help="a project (repeatable; default: discover)")
    p.add_argument("--defaults-table",
                   help="project-defaults table, for feature_spec_version (default: $MLBATCH_DEFAULTS_TABLE)")
    p.add_argument("--output", help="a path, '-' for stdout, or s3://bucket/key (checked before the listing)")
    p.add_argument("--representative", choices=["earliest", "latest"], default="earliest",
                   help="which object's LastModified stands for the batch (default earliest)")
    p.add_argument("--suspect-after-days", type=_int_at_least(0), default=2, metavar="N",
                   help="flag a unit (timestamp_suspect) whose LastModified is before its folder's date or "
                        "more than N days after it (default 2)")
    p.add_argument("--strict", action="store_true",
                   help="fatal (exit 1, no output published): an unknown project, or any suspect LastModified")
    p.add_argument("--dry-run", action="store_true", help="print the plan per project and day; write nothing")
    p.add_argument("--lock-table", help="with --dry-run: count windows already SUCCEEDED (through each batch's "
                                        "binding) and name the units that will adopt a bound window")
    p.add_argument("--workers", type=_int_at_least(1), default=8, help="date spans listed in parallel (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_extract)


def cmd_audit(args) -> int:
    """Is everything processed? Batch folders in S3 over a date range joined with the lock ledger:
    one JSON line per unit with its state, a summary per project and day; with --manifest, the
    heal: stuck locks whose pipeline ended are released and the units to heal are written as a
    backfill manifest."""
    from .audit import DEFAULT_MAX_ATTEMPTS, DEFAULT_STUCK_AFTER_MINUTES, HealStopped, run_audit, summary_table
    from .extract import ExtractError, check_output, open_output
    from .progress import Progress

    dates = _date_range("audit", args)
    if isinstance(dates, int):
        return dates
    defaults_table = args.defaults_table or os.environ.get("MLBATCH_DEFAULTS_TABLE")
    lock_table = args.lock_table or os.environ.get("MLBATCH_LOCK_TABLE")
    if not defaults_table:
        return _usage("audit", "name the project-defaults table with --defaults-table or MLBATCH_DEFAULTS_TABLE "
                               "(the stack's ProjectDefaultsTableName output)")
    if not lock_table:
        return _usage("audit", "name the lock table with --lock-table or MLBATCH_LOCK_TABLE "
                               "(the stack's LockTableName output)")
    if args.html and args.html.startswith("s3://"):
        return _usage("audit", "--html writes a local file: name a path (e.g. --html audit.html)")
    progress = Progress(enabled=not args.quiet)
    report = None
    if args.html:  # the picture of the same lines (docs/audit-report.md)
        from .report import Report
        report = Report(context={"bucket": args.bucket, "lock_table": args.lock_table,
                                 "artifacts_bucket": os.environ.get("MLBATCH_ARTIFACTS_BUCKET"),
                                 "audited_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")})

    def warn(msg: str) -> None:
        print(f"mlbatch audit: warning: {msg}", file=sys.stderr)
    try:
        with contextlib.ExitStack() as stack:  # outputs are checked before any listing
            if report is not None:
                check_output(args.html, what="--html")
            out = stack.enter_context(open_output(args.output))
            manifest = None
            if args.manifest and args.dry_run:
                check_output(args.manifest, what="--manifest")
            elif args.manifest:
                manifest = stack.enter_context(open_output(args.manifest, what="--manifest"))
            result = run_audit(
                args.bucket, *dates, lock_table=lock_table, defaults_table=defaults_table, prefix=args.prefix,
                projects=args.project, output=out, manifest=manifest, dry_run=args.dry_run,
                stuck_after_minutes=args.stuck_after or DEFAULT_STUCK_AFTER_MINUTES,
                max_attempts=args.max_attempts or DEFAULT_MAX_ATTEMPTS, suspect_after_days=args.suspect_after_days,
                strict=args.strict, workers=args.workers, progress=progress, warn=warn,
                on_line=report.add if report is not None else None)
            if report is not None:
                size = report.write(args.html, result.summary, *dates)
    except HealStopped as exc:
        progress.done()
        return _heal_stopped(exc, args.output)
    except ExtractError as exc:
        progress.done()
        print(f"mlbatch audit: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # only the report's write is left outside ExtractError
        progress.done()
        print(f"mlbatch audit: --html {args.html}: cannot write it ({exc.strerror}); name a writable path",
              file=sys.stderr)
        return 1
    progress.done()
    summary = result.summary
    if report is not None:
        shown = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{max(1, round(size / 1e3))} kB"
        print(f"mlbatch audit: report of {summary['units']} units written to {args.html} ({shown}): "
              "open it in a browser", file=sys.stderr)
    if args.json:
        print(json.dumps({"summary": summary}))
    else:
        print(summary_table(summary), file=sys.stderr)
    if summary.get("binding_warning"):
        print(f"mlbatch audit: warning: {summary['binding_warning']}", file=sys.stderr)
    if args.manifest:
        heal = (f"{summary['manifest_units']} units to heal" if not args.dry_run else
                f"{summary['healable']} units would be healed")
        if args.dry_run:
            print(f"mlbatch audit: dry run, nothing written: {heal} (stuck locks would be released first); "
                  f"run again without --dry-run to write {args.manifest}", file=sys.stderr)
        else:
            print(f"mlbatch audit: {heal} written to {args.manifest} ({summary['stuck_locks_released']} stuck locks "
                  f"released as Audit.Stuck)", file=sys.stderr)
            if summary["stuck_release_races"]:
                print(f"mlbatch audit: {summary['stuck_release_races']} stuck locks changed while the audit ran and "
                      "were left alone (not in the manifest); audit again", file=sys.stderr)
            if summary["manifest_units"]:
                where = (json.dumps({"manifest": dict(zip(("bucket", "key"), args.manifest[5:].split("/", 1)))})
                         if args.manifest.startswith("s3://") else
                         '{"manifest": {"bucket": "<ArtifactsBucketName>", "key": "<key>"}} after uploading it')
                print(f"mlbatch audit: heal: start the backfill state machine with {where}", file=sys.stderr)
                if args.manifest.startswith("s3://"):  # the same, as a command that runs as printed
                    arn = os.environ.get("MLBATCH_BACKFILL_ARN")
                    machine = (shlex.quote(arn) if arn else
                               "${MLBATCH_BACKFILL_ARN:?export the stack BackfillStateMachineArn output}")
                    print(f"mlbatch audit: heal: aws stepfunctions start-execution --state-machine-arn {machine} "
                          f"--input {shlex.quote(where)}", file=sys.stderr)
    elif summary["healable"]:
        print(f"mlbatch audit: {summary['healable']} units can be healed: add --manifest FILE|s3://bucket/key",
              file=sys.stderr)
    return result.exit_code


def _heal_stopped(exc, output: str) -> int:
    """A heal that stopped on an error: the line of every lock it released that is not on stdout yet
    goes there (an --output file is not published), and one line on stderr says what it did. Exit 1."""
    for line in exc.released:
        if output != "-" or line["lock_key"] not in exc.written:
            print(json.dumps(line, separators=(",", ":")))
    n = len(exc.released)
    did = (f"before it stopped it released {n} stuck lock{'s' if n != 1 else ''} (now FAILED, error Audit.Stuck; "
           f"their lines are on stdout, lock_released: true) and wrote no manifest: the next "
           "`mlbatch audit --manifest` finds them FAILED and heals them" if n else
           "no lock was released and no manifest was written")
    print(f"mlbatch audit: the heal stopped: {exc}; {did}", file=sys.stderr)
    return 1


def _audit_parser(sub) -> None:
    from .settings import MAX_ATTEMPTS as DEFAULT_MAX_ATTEMPTS, STUCK_AFTER_MINUTES as DEFAULT_STUCK_AFTER_MINUTES
    p = sub.add_parser(
        "audit", help="Is everything processed? S3 batch folders against the lock ledger; --manifest heals",
        description=cmd_audit.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  mlbatch audit --bucket ingest --from 2024-03-01 --to 2024-03-07 --lock-table mlbatch-Locks \\\n"
               "      --defaults-table mlbatch-ProjectDefaults > audit.jsonl\n"
               "  mlbatch audit ... --manifest s3://<ArtifactsBucketName>/backfill/heal-2024-03.jsonl   # the heal\n"
               "  jq -c 'select(.state == \"MISSING\")' audit.jsonl\n"
               "  mlbatch audit ... --html audit.html > audit.jsonl   # the same run as a picture\n"
               "states: SUCCEEDED IN_PROGRESS STUCK FAILED POISONED MISSING COLLISION UNKNOWN_STATUS UNKNOWN_PROJECT\n"
               "exit codes: 0 every unit SUCCEEDED or IN_PROGRESS, 3 gaps (any other state), 1 error, 2 usage\n"
               "guide: docs/audit.md")
    p.add_argument("--bucket", required=True, help="the ingestion bucket")
    p.add_argument("--from", dest="date_from", required=True, help="first path date, YYYY-MM-DD")
    p.add_argument("--to", dest="date_to", required=True, help="last path date, YYYY-MM-DD (inclusive)")
    p.add_argument("--prefix", help="org1/org2 (default: discover every org pair)")
    p.add_argument("--project", action="append", help="a project (repeatable; default: discover)")
    p.add_argument("--defaults-table", help="project-defaults table (default: $MLBATCH_DEFAULTS_TABLE)")
    p.add_argument("--lock-table", help="lock table (default: $MLBATCH_LOCK_TABLE)")
    p.add_argument("--output", default="-", help="the unit lines: a path, '-' (stdout, default) or s3://bucket/key")
    p.add_argument("--manifest", metavar="FILE|s3://bucket/key",
                   help="the heal: release stuck locks whose pipeline ended, write the units to heal as a backfill "
                        "manifest")
    p.add_argument("--dry-run", action="store_true", help="with --manifest: write nothing, say what the heal would do")
    p.add_argument("--stuck-after", type=_int_at_least(1), metavar="MINUTES",
                   help=f"an IN_PROGRESS lock not updated for this long is STUCK (default "
                        f"{DEFAULT_STUCK_AFTER_MINUTES}: the pipeline's timeout plus a margin)")
    p.add_argument("--max-attempts", type=_int_at_least(1), metavar="N",
                   help=f"a FAILED window with this many attempts is POISONED, never healed (default "
                        f"{DEFAULT_MAX_ATTEMPTS})")
    p.add_argument("--suspect-after-days", type=_int_at_least(0), default=2, metavar="N",
                   help="flag a unit (timestamp_suspect) whose LastModified is before its folder's date or "
                        "more than N days after it (default 2)")
    p.add_argument("--strict", action="store_true",
                   help="a suspect LastModified is fatal: such units are not reported, exit 1, no manifest")
    p.add_argument("--json", action="store_true", help="the summary as one JSON object on stdout after the lines "
                                                       "(instead of the table on stderr)")
    p.add_argument("--html", metavar="FILE", help="also write the audit as one self-contained HTML page: a calendar "
                                                  "of days x windows per project (docs/audit-report.md)")
    p.add_argument("--workers", type=_int_at_least(1), default=8, help="date spans listed in parallel (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_audit)


def _table_arg(args, kind: str) -> str:
    from .failures import TABLES, Failure
    _, env, output = TABLES[kind]
    table = args.table or os.environ.get(env)
    if not table:
        raise Failure(f"which {kind} table? name it with --table or {env} (the stack output {output}; "
                      'for the local stack: eval "$(mlbatch local status --shell)")')
    return table


@contextlib.contextmanager
def _table(args, kind: str):
    """(table name, DynamoDB client) for a command on one of mlbatch's tables; a missing table or
    one of another kind becomes a message naming it."""
    from .clients import client
    from .failures import about_table
    table = _table_arg(args, kind)
    ddb = client("dynamodb")
    with about_table(table, kind, ddb):
        yield table, ddb


def cmd_defaults(args) -> int:
    """Check project-defaults items against the schema the state machines read, and load them."""
    from .defaults import check_located, read_files
    from .failures import Failure
    from .operator import put_defaults
    items, problems = read_files(args.files)
    problems += check_located(items)
    for problem in problems:
        print(f"mlbatch defaults: {problem}", file=sys.stderr)
    if problems:
        raise Failure(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} (above): fix the files"
                      + ("; nothing was written" if args.action == "put" else ""))
    if args.action == "check":
        print(f"ok: {len(items)} items valid", file=sys.stderr)
        return 0
    with _table(args, "project-defaults") as (table, ddb):
        names = put_defaults(table, [located.item for located in items], args.dry_run, ddb)
    for name in names:
        print(json.dumps({"project_name": name, "written": not args.dry_run}))
    print(f"dry run: {len(names)} items valid; nothing was written to {table}" if args.dry_run
          else f"ok: {len(names)} items written to {table}", file=sys.stderr)
    return 0


def _locks_bind(args, table: str, ddb) -> int:
    """`locks bind`: bind the batches of window locks written before batch bindings (docs/upgrading.md)."""
    from .binding import apply_bind, plan_bind
    plan = plan_bind(table, ddb, args.project)
    if args.dry_run:
        for line, _ in plan.writes:
            line["outcome"] = "would_bind"
    else:
        apply_bind(plan, table, ddb)
    for line in plan.lines:
        print(json.dumps(line))
    summary = plan.summary(args.dry_run)
    print(json.dumps({"summary": summary}))
    done = (f"{summary['would_bind']} batches would be bound (dry run: nothing was written to {table})"
            if args.dry_run else f"{summary['bound']} batches bound")
    print(f"mlbatch locks bind: {summary['window_locks']} window locks, {summary['batches']} batches: {done}, "
          f"{summary['skipped']} already bound, {summary['unbindable']} unbindable (no mini_batch_s3_prefix or "
          f"feature_spec_version), {summary['conflicts']} bound to another window (kept), {summary['duplicates']} "
          "duplicate window locks of a bound batch (kept; see `mlbatch locks show`)", file=sys.stderr)
    return 0


def cmd_locks(args) -> int:
    """The lock ledger: list, show, reset a window (reset marks it FAILED; nothing is deleted), or bind
    the batches of window locks written before batch bindings."""
    from .binding import kind, missing_bindings, read_bindings, with_batches
    from .operator import apply_reset, list_locks, plan_reset, show_lock
    from .trace import ledger_table
    with _table(args, "lock") as (table, ddb):
        if args.action == "bind":
            return _locks_bind(args, table, ddb)
        if args.action == "list":
            locks = list_locks(table, args.project, args.status, args.window_from, args.window_to, ddb,
                               mini_batch=args.mini_batch, source=args.source)
            wanted = missing_bindings(locks)  # a filtered listing: read the bindings it left out
            bindings = {k: v for i in range(0, len(wanted), 100)
                        for k, v in read_bindings(ddb, table, wanted[i:i + 100]).items()}
            locks = [row for row in with_batches(locks, bindings) if not args.kind or row["kind"] == args.kind]
            if args.json:
                for lock in locks:
                    print(json.dumps(lock))
            else:
                print(ledger_table(locks))
        elif args.action == "show":
            from .binding import batch_items, related
            shown = (batch_items(table, args.lock_key, ddb) if args.lock_key.startswith("s3://") else
                     [related(table, show_lock(table, args.lock_key, ddb), ddb)])
            for item in shown:
                print(json.dumps(item, indent=None if args.json else 2))
        else:
            if kind({"lock_key": args.lock_key}) == "binding":
                from .failures import Failure
                raise Failure(f"{args.lock_key!r} is a batch binding, not a window lock: reset its window lock "
                              "(`mlbatch locks show` on it names it as window_lock_key)")
            plan = plan_reset(table, args.lock_key, args.reason, args.in_progress_ok, ddb)
            if plan.owner:
                from .operator import owner_phrase
                print(f"mlbatch locks: {args.lock_key} is IN_PROGRESS; {owner_phrase(plan.owner)}", file=sys.stderr)
            if args.dry_run:
                print(json.dumps(plan.after))
                print(f"dry run: nothing was written to {table}; the lock above is what the reset would write",
                      file=sys.stderr)
                return 0
            print(json.dumps(apply_reset(plan, ddb)))
            print(f"reset: the lock is FAILED (was {plan.before.get('status', 'without a status')}); the next "
                  "delivery or replay of its batch runs the window again", file=sys.stderr)
    return 0


def cmd_backfill(args) -> int:
    """Backfill runs: list them, or show one -- its counts and every unit that did not start, with why."""
    from .operator import backfill_run, backfill_runs, complete_backfill_run
    with _table(args, "backfill runs") as (table, ddb):
        if args.action == "list":
            for run in backfill_runs(table, ddb):
                print(json.dumps(run))
            return 0
        run = backfill_run(table, args.run_id, ddb)
        completed = complete_backfill_run(table, run, ddb, dry_run=args.dry_run)
        if completed:
            run = {**run, **completed}
            print(f"mlbatch backfill: the run record was not closed by its backfill (its output names the write "
                  f"under \"unwritten\"); {'would close' if args.dry_run else 'closed'} it from the execution's output"
                  + (" (dry run, nothing written)" if args.dry_run else ""), file=sys.stderr)
        lock_table = args.lock_table or os.environ.get("MLBATCH_LOCK_TABLE")
        if lock_table:  # which units adopted a window their batch was already bound to
            from .binding import run_adoptions
            from .clients import client
            from .failures import Failure
            try:
                run["units_adopting"], where = run_adoptions(
                    run, lock_table, ddb, client("s3"),
                    args.artifacts_bucket or os.environ.get("MLBATCH_ARTIFACTS_BUCKET"))
            except Failure as exc:
                print(f"mlbatch backfill: warning: which units adopt a bound window is unknown: {exc}",
                      file=sys.stderr)
    print(json.dumps(run, indent=None if args.json else 2))
    if "units_adopting" in run:
        n = len(run["units_adopting"])
        verb = "adopted" if run.get("closed_at") else "adopts" if n == 1 else "adopt"
        print(f"mlbatch backfill: {n} unit{'' if n == 1 else 's'} {verb} "
              f"the window their batch is bound to (units from {where}; see units_adopting)", file=sys.stderr)
    counts = {k: run.get(k, 0) for k in ("started", "suppressed", "collided", "invalid", "failed", "poisoned")}
    print(f"mlbatch backfill: {run.get('units', '?')} units: " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f", {run.get('uncounted', 0)} uncounted" + ("" if run.get("closed_at") else " (still running)"),
          file=sys.stderr)
    return 0


def cmd_replay(args) -> int:
    """Start an execution again with its own input (a traceable `<name>-replay-<n>`), or redrive it."""
    from .failures import Failure
    from .operator import plan_replay, redrive, redrive_refusal, start_replay
    lock_table = args.table or os.environ.get("MLBATCH_LOCK_TABLE")
    if args.redrive:
        refusal = redrive_refusal(args.execution_arn, lock_table)
        if refusal:
            raise Failure(f"not redriving: {refusal}")
        print(json.dumps({"redriven": redrive(args.execution_arn)}))
        return 0
    plan = plan_replay(args.execution_arn, args.force, args.reason, lock_table=lock_table)
    if plan.get("advice"):
        print(f"mlbatch replay: {plan['advice']}", file=sys.stderr)
    if args.dry_run:
        print(json.dumps(plan))
        return 0
    if plan["kind"] == "pipeline" and not args.yes:
        raise Failure("not starting a new pipeline execution (see above); add --yes to start it anyway")
    print(json.dumps({"started": start_replay(plan), "name": plan["name"], "input": plan["input"]}))
    return 0


def _print_env(env: dict[str, str], shell: bool, as_json: bool) -> None:
    from .local import shell_lines
    if as_json:
        print(json.dumps(env))
    elif shell:
        print(shell_lines(env))
    else:
        print("\n".join(f"{name}={value}" for name, value in env.items()))


def _actions(actions: dict[str, str]) -> str:
    """`created 11` / `updated IntakeStateMachine; unchanged 10`: names when few, else a count."""
    by: dict[str, list[str]] = {}
    for logical, action in actions.items():
        by.setdefault(action, []).append(logical)
    return "; ".join(f"{action} {', '.join(names) if len(names) <= 3 else len(names)}" for action, names in by.items())


def cmd_local(args) -> int:
    """The local stack: the embedded engine as a background server on 127.0.0.1 with
    template.yaml deployed (builders mocked), for every other command to use via AWS_ENDPOINT_URL."""
    from . import local
    from .failures import Failure

    def say(message: str) -> None:
        print(f"mlbatch local: {message}", file=sys.stderr)

    if args.action == "up":
        server, started = local.start(args.port)
        say(f"engine {'started' if started else 'already running'} on {server.endpoint} "
            f"(pid {server.pid}; log {local.state_dir() / 'server.log'})")
        stack = local.deploy(server, args.builders)
        say(f"template.yaml deployed ({_actions(stack.actions)}); builders: test case {stack.builders}")
        _print_env(stack.env, args.shell, args.json)
        if not (args.shell or args.json):
            say('use it in this shell: eval "$(mlbatch local status --shell)"; stop it: mlbatch local down')
        return 0
    if args.action == "status":
        stack = local.deployed()
        if not stack:
            raise Failure("the local stack is not running: start it with `mlbatch local up`")
        if not (args.shell or args.json):
            say(f"running on {stack.server.endpoint} (pid {stack.server.pid}; builders: test case "
                f"{stack.builders}; log {local.state_dir() / 'server.log'})")
            for kind, names in local.inventory(stack.server).items():
                say(f"{kind}: {', '.join(names) or '(none)'}")
        _print_env(stack.env, args.shell, args.json)
        return 0
    try:
        stack = local.deployed()
    except local.LocalError:  # alive but not answering: stop it all the same (local.stop does)
        stack = None
    stopped = local.stop()
    if args.shell:
        print(local.unset_lines(stack.env if stack else local.environment_names()))
    say(f"stopped the engine on {stopped.endpoint} (pid {stopped.pid})" if stopped else "not running")
    return 0


def _window_bound(end: bool):
    """--from/--to of `locks list`: a real date (whole day) or ISO instant -> `YYYY-MM-DDTHH:MM:SSZ` (UTC)."""
    def parse(text: str) -> str:
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                day = dt.date.fromisoformat(text)
                return f"{day.isoformat()}T{'23:59:59' if end else '00:00:00'}Z"
            t = dt.datetime.fromisoformat(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"not a real date or ISO instant: {text!r} ({exc}); e.g. 2024-03-01 or 2024-03-01T00:08:00Z") from None
        t = (t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t).astimezone(dt.timezone.utc)
        if t.microsecond and not end:  # window starts are whole seconds: round a lower bound up
            t = t.replace(microsecond=0) + dt.timedelta(seconds=1)
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")
    return parse


_EXECUTION_ARN = re.compile(r"arn:aws[a-z-]*:states:[a-z0-9-]+:\d{12}:(execution|express):[^:\s]+:[^:\s]+")


def _execution_arn(text: str) -> str:
    if not _EXECUTION_ARN.fullmatch(text):
        hint = " (that is a state machine's ARN)" if ":stateMachine:" in text else ""
        raise argparse.ArgumentTypeError(
            f"not a Step Functions execution ARN{hint}: {text!r}; expected "
            "arn:aws:states:REGION:ACCOUNT:execution:STATE_MACHINE:NAME (copy it from the console)")
    return text


def _check_usage(sub, args) -> None:
    """Usage errors argparse cannot see on its own: exit 2 with the subcommand's usage."""
    error = sub.choices[args.command].error
    if args.command == "locks":
        if args.action in ("show", "reset") and not args.lock_key:
            error(f"locks {args.action} needs a LOCK_KEY")
        if args.action == "reset" and not (args.reason or "").strip():
            error("locks reset needs --reason TEXT: it is recorded on the lock")
        if args.window_from and args.window_to and args.window_from > args.window_to:
            error(f"--from {args.window_from} is after --to {args.window_to}")
    if args.command == "backfill" and args.action == "show" and not args.run_id:
        error("backfill show needs a RUN_ID (the backfill execution's name; `mlbatch backfill list` shows them)")
    if args.command == "replay" and args.force and not args.reason:
        error("--force needs --reason TEXT: it is recorded on the lock")
    if args.command == "run":
        if args.event is not None and (args.s3_key or args.timestamp):
            error("give either --event FILE or --s3-key KEY --timestamp TIME, not both")
        if (args.s3_key is None) != (args.timestamp is None):
            error("--s3-key and --timestamp go together")


def _doc(command) -> str:
    """A command's docstring as its --help description (dedented)."""
    import inspect
    return inspect.cleandoc(command.__doc__)


def _summary(command) -> str:
    """The first sentence of a command's docstring, for the list of commands."""
    return _doc(command).replace("\n", " ").split(". ")[0].rstrip(".")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("mlbatch")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlbatch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n  mlbatch render --check\n  mlbatch run\n"
                                            '  eval "$(mlbatch local up --shell)"\n'
                                            "  mlbatch run --event tests/events/live_event.json\n"
                                            "  mlbatch locks list\n  mlbatch local down\n"
                                            "exit codes: 0 ok, 1 refused or failed (the message names the "
                                            "problem and the fix), 2 bad usage")
    parser.add_argument("--version", action="version", version=f"mlbatch {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("render", help=_summary(cmd_render), description=_doc(cmd_render),
                       epilog="example: mlbatch render --check   # exit 1 names stale files")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if any rendered file is stale")
    p.set_defaults(func=cmd_render)
    _extract_parser(sub)
    _audit_parser(sub)
    p = sub.add_parser("defaults", help=_summary(cmd_defaults), description=_doc(cmd_defaults),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  mlbatch defaults check sam/project-defaults/*.json\n"
                              "  mlbatch defaults put sam/project-defaults/*.json --table <ProjectDefaultsTableName>\n"
                              "exit codes: 0 ok, 1 invalid items (nothing written) or AWS error, 2 usage")
    p.add_argument("action", choices=["check", "put"])
    p.add_argument("files", nargs="+", help="JSON files holding one item or a list of items")
    p.add_argument("--table", help="project-defaults table (default: $MLBATCH_DEFAULTS_TABLE)")
    p.add_argument("--dry-run", action="store_true", help="validate, write nothing")
    p.set_defaults(func=cmd_defaults)
    p = sub.add_parser("locks", help=_summary(cmd_locks), description=_doc(cmd_locks),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  mlbatch locks list --project traffic-anomaly --status FAILED --json\n"
                              "  mlbatch locks list --from 2024-03-01 --to 2024-03-01T12:00:00Z\n"
                              "  mlbatch locks show 'traffic-anomaly#fs-2024-06#2024-02-29T23:53:00Z#...'\n"
                              "  mlbatch locks reset '<lock_key>' --reason 'builder image fixed, INC-4711'\n"
                              "  mlbatch locks show s3://ingest/acme/netsec/traffic-anomaly/2024/02/29/mb-1/   # its binding\n"
                              "  mlbatch locks bind --dry-run   # the upgrade step: docs/upgrading.md\n"
                              "exit codes: 0 ok, 1 no such lock / refused / AWS error, 2 usage")
    p.add_argument("action", choices=["list", "show", "reset", "bind"])
    p.add_argument("lock_key", nargs="?", help="for show: a window lock's key, a binding's (batch#...) or a batch folder "
                                                 "(s3://.../mini_batch_id/); for reset: a window lock's key")
    p.add_argument("--kind", choices=["window", "binding"], help="for list: only window locks, or only bindings")
    p.add_argument("--table", help="lock table (default: $MLBATCH_LOCK_TABLE)")
    p.add_argument("--project")
    p.add_argument("--status", choices=["IN_PROGRESS", "SUCCEEDED", "FAILED"])
    p.add_argument("--mini-batch", help="mini_batch_id")
    p.add_argument("--source", choices=["inference", "backfill"])
    p.add_argument("--from", dest="window_from", type=_window_bound(end=False),
                   help="window start >= this date (whole day) or ISO instant (UTC unless an offset is given)")
    p.add_argument("--to", dest="window_to", type=_window_bound(end=True),
                   help="window start <= this date (whole day) or ISO instant")
    p.add_argument("--reason", help="for reset (required): recorded on the lock")
    p.add_argument("--in-progress-ok", action="store_true",
                   help="for reset: reset an IN_PROGRESS lock (its pipeline may still run: check it first)")
    p.add_argument("--dry-run", action="store_true", help="for reset and bind: say what it would write, write nothing")
    p.add_argument("--json", action="store_true", help="JSON (Lines for list) for scripts")
    p.set_defaults(func=cmd_locks)
    p = sub.add_parser("backfill", help=_summary(cmd_backfill), description=_doc(cmd_backfill),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  mlbatch backfill list\n"
                              "  mlbatch backfill show 2a4c0e1f-...   # counts, and each unit not started with why\n"
                              "exit codes: 0 ok, 1 no such run / AWS error, 2 usage")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("run_id", nargs="?", help="for show: the backfill execution's name (its run_id)")
    p.add_argument("--table", help="backfill runs table (default: $MLBATCH_RUNS_TABLE)")
    p.add_argument("--lock-table", help="for show: lock table, to name the units that adopt a bound window "
                                        "(default: $MLBATCH_LOCK_TABLE)")
    p.add_argument("--artifacts-bucket", help="for show: where an extracted run's units are (default: "
                                              "$MLBATCH_ARTIFACTS_BUCKET)")
    p.add_argument("--json", action="store_true", help="one line of JSON")
    p.add_argument("--dry-run", action="store_true",
                   help="for show: do not close a record its backfill could not close, only say so")
    p.set_defaults(func=cmd_backfill)
    p = sub.add_parser("replay", help=_summary(cmd_replay), description=_doc(cmd_replay),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  mlbatch replay arn:aws:states:...:execution:mlbatch-intake:8a2b...\n"
                              "  mlbatch replay <intake execution ARN> --force --reason 're-run after fix'\n"
                              "  mlbatch replay <pipeline execution ARN> --dry-run   # names the intake to replay\n"
                              "exit codes: 0 started (or planned), 1 refused / AWS error, 2 usage")
    p.add_argument("execution_arn", type=_execution_arn)
    p.add_argument("--force", action="store_true", help="intake only: re-run a SUCCEEDED window")
    p.add_argument("--reason", help="with --force: recorded on the lock")
    p.add_argument("--dry-run", action="store_true", help="print the plan, start nothing")
    p.add_argument("--redrive", action="store_true", help="AWS RedriveExecution of this execution instead")
    p.add_argument("--yes", action="store_true", help="start a new pipeline execution even so")
    p.add_argument("--table", help="lock table, to name the intake execution owning a pipeline's window "
                                   "(default: $MLBATCH_LOCK_TABLE)")
    p.set_defaults(func=cmd_replay)
    p = sub.add_parser("run", help=_summary(cmd_run), description=_doc(cmd_run),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  mlbatch run   # the demo (make run)\n"
                              "  mlbatch run --event tests/events/live_event.json\n"
                              "  mlbatch run --s3-key s3://mlbatch-example-ingest/acme/netsec/traffic-anomaly/"
                              "2024/05/01/mb-7/f.json.gz \\\n      --timestamp 2024-05-01T10:10:00Z\n"
                              "exit codes: 0 the intake and its pipeline succeeded (or the event was a duplicate), "
                              "1 an execution failed, 2 usage")
    p.add_argument("--event", metavar="FILE", help="an intake input (any accepted shape) from a JSON file, '-' for stdin")
    p.add_argument("--s3-key", help="a batch file's key (s3://bucket/key or key) for a normalized event")
    p.add_argument("--timestamp", help="with --s3-key: the batch timestamp (ISO, UTC)")
    p.add_argument("--intake", metavar="ARN", help="the intake state machine (default: $MLBATCH_INTAKE_ARN, "
                                                   "else found by name at AWS_ENDPOINT_URL)")
    p.add_argument("--timeout", type=_int_at_least(1), default=120, help="seconds to wait per execution (default 120)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("bench", help=_summary(cmd_bench), description=_doc(cmd_bench),
                       epilog="examples:\n  mlbatch bench --runs 20 --only intake --only pipeline\n"
                              "  mlbatch bench --only intake --baseline v0.1.0   # transitions before and after",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=_int_at_least(1), default=20, help="executions per path (default 20)")
    p.add_argument("--json", action="store_true", help="JSON Lines instead of Markdown tables")
    p.add_argument("--only", action="append", choices=["intake", "pipeline", "backfill", "extractor"],
                   help="run only this part (repeatable)")
    p.add_argument("--baseline", metavar="GIT_REF",
                   help="also run each intake, pipeline and backfill path once on the state machines committed at this "
                        "ref, and show their transitions and service calls beside today's")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("local", help=_summary(cmd_local), description=_doc(cmd_local),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog='examples:\n  eval "$(mlbatch local up --shell)"   # start, deploy, use it here\n'
                              "  mlbatch run --event tests/events/live_event.json\n  mlbatch local status\n"
                              '  eval "$(mlbatch local down --shell)"\n'
                              "state (pid, port, log): $MLBATCH_STATE_DIR, else $XDG_STATE_HOME/mlbatch "
                              "(~/.local/state/mlbatch)\nexit codes: 0 ok, 1 failed or (status) not running, 2 usage")
    local_sub = p.add_subparsers(dest="action", required=True)
    up = local_sub.add_parser("up", help="start the engine (unless it runs) and deploy template.yaml (idempotent)",
                              description="Start the engine server unless it runs, deploy template.yaml into it "
                                          "(reusing what exists, updating changed definitions), seed the example "
                                          "project, print the environment.",
                              epilog='example: eval "$(mlbatch local up --shell)"')
    up.add_argument("--port", type=int, default=None,
                    help="port on 127.0.0.1 (default: the running stack's, else $MLBATCH_LOCAL_PORT or 4599; "
                         "0 picks a free one)")
    up.add_argument("--builders", default="HappyPath",
                    help="MockConfigFile test case the pipeline's builders follow (default HappyPath; "
                         "also DeltaBuilderFails, PairCountsFails, ThrottledThenSucceeds)")
    status = local_sub.add_parser("status", help="is it running, what is deployed, and its environment",
                                  epilog='example: eval "$(mlbatch local status --shell)"')
    down = local_sub.add_parser("down", help="stop the engine (its resources go with it)",
                                epilog='example: eval "$(mlbatch local down --shell)"   # also unsets the variables')
    for q in (up, status):
        how = q.add_mutually_exclusive_group()
        how.add_argument("--shell", action="store_true", help="print `export NAME=value` lines for eval")
        how.add_argument("--json", action="store_true", help="print the environment as one JSON object")
    down.add_argument("--shell", action="store_true", help="print an `unset` line for eval")
    p.set_defaults(func=cmd_local)
    _retry_options(parser, sub)
    args = parser.parse_args(argv)
    _check_usage(sub, args)
    return _run(args)


def _retry_options(parser, sub) -> None:
    """--aws-max-attempts / --aws-retry-mode, before or after the command (`audit --max-attempts` is
    the poison limit, another thing): the retries of every AWS call the command makes."""
    from .clients import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_MODE, RETRY_MODES
    for target in (parser, *sub.choices.values()):
        top = target is parser
        target.add_argument("--aws-max-attempts", type=_int_at_least(1), metavar="N",
                            default=None if top else argparse.SUPPRESS,
                            help=f"attempts per AWS call, the first included (default: $AWS_MAX_ATTEMPTS, "
                                 f"else the profile's max_attempts, else {DEFAULT_MAX_ATTEMPTS})")
        target.add_argument("--aws-retry-mode", choices=RETRY_MODES, default=None if top else argparse.SUPPRESS,
                            help=f"botocore's retry mode (default: $AWS_RETRY_MODE, else the profile's "
                                 f"retry_mode, else {DEFAULT_RETRY_MODE}); docs/cli.md, Retries")


def _run(args) -> int:
    """Run the command; a user error becomes one line on stderr and exit 1 (a bug keeps its traceback)."""
    from .clients import configure
    from .failures import explain  # user errors subclass failures.Failure: nothing heavy to import here
    configure(getattr(args, "aws_max_attempts", None), getattr(args, "aws_retry_mode", None))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"mlbatch {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mlbatch ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except Exception as exc:
        message = explain(exc)
        if message is None:
            raise
    print(f"mlbatch {args.command}: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
