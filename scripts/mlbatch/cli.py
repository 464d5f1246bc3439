"""The `mlbatch` command: render | run | extract | audit | replay | locks | defaults | bench."""
from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["main"]


def cmd_render(args) -> int:
    """Render templates/*.asl.json.j2 to asl/ (or, with --check, name every stale file)."""
    from . import render
    if args.check:
        stale = render.check()
        for path in stale:
            print(f"stale: {path.relative_to(render.ASL.parent)} (run `mlbatch render` and review the diff)",
                  file=sys.stderr)
        return 1 if stale else 0
    for path in render.render_all():
        print(f"rendered {path.relative_to(render.ASL.parent)} - review the diff before committing",
              file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    """The main job: events through the intake and the pipeline on the embedded engine."""
    from .sandbox import MOCK_CONFIG, Sandbox, load_event
    from .trace import execution_trace, ledger_table

    failures = 0

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

    with Sandbox() as sb:
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


def _table(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows])


def cmd_bench(args) -> int:
    """Benchmark intake, pipeline, backfill units and the extractor; Markdown tables on stdout
    (JSON Lines with --json), progress on stderr."""
    from .bench import bench_backfill_unit, bench_extractor, bench_intake, bench_pipeline
    parts = {"intake": lambda: bench_intake(runs=args.runs), "pipeline": lambda: bench_pipeline(runs=args.runs),
             "backfill": bench_backfill_unit, "extractor": bench_extractor}
    for name in args.only or list(parts):
        rows = parts[name]()
        if args.json:
            for row in rows:
                print(json.dumps({"bench": name, **row}))
        else:
            print(f"\n### {name}\n\n{_table(rows)}")
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
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _date_range(command: str, args):
    """(first, last) from --from/--to, or the usage error's exit code (bad date, from after to)."""
    import datetime as dt
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

    from .extract import ExtractError, Extractor, Progress, open_output, write_units

    dates = _date_range("extract", args)
    if isinstance(dates, int):
        return dates
    first, last = dates
    if not args.dry_run and not args.output:
        return _usage("extract", "--output is required (a path, '-' or s3://bucket/key)")
    # in the backfill's processing job, optional filters arrive as environment variables
    args.prefix = args.prefix or os.environ.get("MLBATCH_EXTRACT_PREFIX") or None
    args.project = args.project or [p for p in os.environ.get("MLBATCH_EXTRACT_PROJECTS", "").split(",") if p]
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
                    row["already_succeeded"] = ex.count_succeeded(args.lock_table, group)
                    ex.report.already_succeeded += row["already_succeeded"]
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
    p.add_argument("--from", dest="date_from", required=True, help="first path date, YYYY-MM-DD")
    p.add_argument("--to", dest="date_to", required=True, help="last path date, YYYY-MM-DD (inclusive)")
    p.add_argument("--prefix", help="org1/org2 (default: discover every org pair)")
    p.add_argument("--project", action="append", help="a project (repeatable; default: discover)")
    p.add_argument("--defaults-table", required=True, help="project-defaults table (feature_spec_version)")
    p.add_argument("--output", help="a path, '-' for stdout, or s3://bucket/key (checked before the listing)")
    p.add_argument("--representative", choices=["earliest", "latest"], default="earliest",
                   help="which object's LastModified stands for the batch (default earliest)")
    p.add_argument("--suspect-after-days", type=_int_at_least(0), default=2, metavar="N",
                   help="flag a unit (timestamp_suspect) whose LastModified is before its folder's date or "
                        "more than N days after it (default 2)")
    p.add_argument("--strict", action="store_true",
                   help="fatal (exit 1, no output published): an unknown project, or any suspect LastModified")
    p.add_argument("--dry-run", action="store_true", help="print the plan per project and day; write nothing")
    p.add_argument("--lock-table", help="with --dry-run: count windows already SUCCEEDED")
    p.add_argument("--workers", type=_int_at_least(1), default=8, help="date spans listed in parallel (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_extract)


def cmd_audit(args) -> int:
    """Is everything processed? Batch folders in S3 over a date range joined with the lock ledger:
    one JSON line per unit with its state, a summary per project and day; with --manifest, the
    heal: stuck locks whose pipeline ended are released and the units to heal are written as a
    backfill manifest."""
    import contextlib

    from .audit import DEFAULT_MAX_ATTEMPTS, DEFAULT_STUCK_AFTER_MINUTES, run_audit, summary_table
    from .extract import ExtractError, Progress, check_output, open_output

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
    progress = Progress(enabled=not args.quiet)

    def warn(msg: str) -> None:
        print(f"mlbatch audit: warning: {msg}", file=sys.stderr)
    try:
        with contextlib.ExitStack() as stack:  # outputs are checked before any listing
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
                strict=args.strict, workers=args.workers, progress=progress, warn=warn)
    except ExtractError as exc:
        progress.done()
        print(f"mlbatch audit: {exc}", file=sys.stderr)
        return 1
    progress.done()
    summary = result.summary
    if args.json:
        print(json.dumps({"summary": summary}))
    else:
        print(summary_table(summary), file=sys.stderr)
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
    elif summary["healable"]:
        print(f"mlbatch audit: {summary['healable']} units can be healed: add --manifest FILE|s3://bucket/key",
              file=sys.stderr)
    return result.exit_code


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
    p.add_argument("--workers", type=_int_at_least(1), default=8, help="date spans listed in parallel (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_audit)


def _table_arg(args, env: str, what: str) -> str:
    table = args.table or os.environ.get(env)
    if not table:
        raise SystemExit(f"mlbatch: name the {what} table with --table or {env} (stack output)")
    return table


def _fail(exc: Exception) -> int:
    print(f"mlbatch: {exc}", file=sys.stderr)
    return 1


def cmd_defaults(args) -> int:
    """Check project-defaults items against the schema the state machines read, and load them."""
    from .defaults import problems
    from .operator import OperatorError, put_defaults
    items = []
    for path in args.files:
        try:
            doc = json.loads(open(path).read())
        except (OSError, json.JSONDecodeError) as exc:
            return _fail(f"{path}: {exc}")
        items += doc if isinstance(doc, list) else [doc]
    if args.action == "check":
        bad = [(i, p) for i, item in enumerate(items) if (p := problems(item))]
        for i, p in bad:
            print(json.dumps({"item": i, "problems": p}))
        return 1 if bad else 0
    try:
        names = put_defaults(_table_arg(args, "MLBATCH_DEFAULTS_TABLE", "project-defaults"), items, args.dry_run)
    except OperatorError as exc:
        return _fail(exc)
    for name in names:
        print(json.dumps({"project_name": name, "written": not args.dry_run}))
    return 0


def cmd_locks(args) -> int:
    """The lock ledger: list, show, or reset a window (reset marks it FAILED; nothing is deleted)."""
    from .operator import OperatorError, list_locks, reset_lock, show_lock
    from .trace import ledger_table
    table = _table_arg(args, "MLBATCH_LOCK_TABLE", "lock")
    try:
        if args.action == "list":
            locks = list_locks(table, args.project, args.status, args.window_from, args.window_to)
            if args.json:
                for lock in locks:
                    print(json.dumps(lock))
            else:
                print(ledger_table(locks))
        elif args.action == "show":
            print(json.dumps(show_lock(table, args.lock_key), indent=None if args.json else 2))
        else:
            print(json.dumps(reset_lock(table, args.lock_key, args.reason or "", args.dry_run)))
    except OperatorError as exc:
        return _fail(exc)
    return 0


def cmd_replay(args) -> int:
    """Start an execution again with its own input (a traceable `<name>-replay-<n>`), or redrive it."""
    from .operator import OperatorError, plan_replay, redrive, start_replay
    try:
        if args.redrive:
            print(json.dumps({"redriven": redrive(args.execution_arn)}))
            return 0
        plan = plan_replay(args.execution_arn, args.force, args.reason)
        if plan.get("advice"):
            print(f"mlbatch replay: {plan['advice']}", file=sys.stderr)
        if args.dry_run:
            print(json.dumps(plan))
            return 0
        if plan["kind"] == "pipeline" and not args.yes:
            return _fail("not starting a new pipeline execution (see above); add --yes to start it anyway")
        print(json.dumps({"started": start_replay(plan), "name": plan["name"], "input": plan["input"]}))
    except OperatorError as exc:
        return _fail(exc)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlbatch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n  mlbatch render --check\n  mlbatch run\n"
                                            "  mlbatch bench --runs 50 > bench.md")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("render", help=cmd_render.__doc__, description=cmd_render.__doc__,
                       epilog="example: mlbatch render --check   # exit 1 names stale files")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if any rendered file is stale")
    p.set_defaults(func=cmd_render)
    _extract_parser(sub)
    _audit_parser(sub)
    p = sub.add_parser("defaults", help=cmd_defaults.__doc__, description=cmd_defaults.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  mlbatch defaults check sam/project-defaults/*.json\n"
                              "  mlbatch defaults put sam/project-defaults/*.json --table <ProjectDefaultsTableName>\n"
                              "exit codes: 0 ok, 1 invalid items (nothing written) or AWS error, 2 usage")
    p.add_argument("action", choices=["check", "put"])
    p.add_argument("files", nargs="+", help="JSON files holding one item or a list of items")
    p.add_argument("--table", help="project-defaults table (default: $MLBATCH_DEFAULTS_TABLE)")
    p.add_argument("--dry-run", action="store_true", help="validate, write nothing")
    p.set_defaults(func=cmd_defaults)
    p = sub.add_parser("locks", help=cmd_locks.__doc__, description=cmd_locks.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  mlbatch locks list --project traffic-anomaly --status FAILED --json\n"
                              "  mlbatch locks show 'traffic-anomaly#fs-2024-06#2024-02-29T23:53:00Z#...'\n"
                              "  mlbatch locks reset '<lock_key>' --reason 'builder image fixed, INC-4711'\n"
                              "exit codes: 0 ok, 1 no such lock / AWS error, 2 usage")
    p.add_argument("action", choices=["list", "show", "reset"])
    p.add_argument("lock_key", nargs="?", help="for show and reset")
    p.add_argument("--table", help="lock table (default: $MLBATCH_LOCK_TABLE)")
    p.add_argument("--project")
    p.add_argument("--status", choices=["IN_PROGRESS", "SUCCEEDED", "FAILED"])
    p.add_argument("--from", dest="window_from", help="window start >= this ISO time")
    p.add_argument("--to", dest="window_to", help="window start <= this ISO time")
    p.add_argument("--reason", help="for reset: recorded on the lock")
    p.add_argument("--dry-run", action="store_true", help="for reset: show the result, change nothing")
    p.add_argument("--json", action="store_true", help="JSON (Lines for list) for scripts")
    p.set_defaults(func=cmd_locks)
    p = sub.add_parser("replay", help=cmd_replay.__doc__, description=cmd_replay.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  mlbatch replay arn:aws:states:...:execution:mlbatch-intake:8a2b...\n"
                              "  mlbatch replay <intake execution ARN> --force --reason 're-run after fix'\n"
                              "exit codes: 0 started (or planned), 1 refused / AWS error, 2 usage")
    p.add_argument("execution_arn")
    p.add_argument("--force", action="store_true", help="intake only: re-run a SUCCEEDED window")
    p.add_argument("--reason", help="with --force: recorded on the lock")
    p.add_argument("--dry-run", action="store_true", help="print the plan, start nothing")
    p.add_argument("--redrive", action="store_true", help="AWS RedriveExecution of this execution instead")
    p.add_argument("--yes", action="store_true", help="start a new pipeline execution even so")
    p.set_defaults(func=cmd_replay)
    p = sub.add_parser("run", help=cmd_run.__doc__, description=cmd_run.__doc__, epilog="example: mlbatch run")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("bench", help=cmd_bench.__doc__, description=cmd_bench.__doc__,
                       epilog="example: mlbatch bench --runs 20 --only intake --only pipeline")
    p.add_argument("--runs", type=int, default=20, help="executions per path (default 20)")
    p.add_argument("--json", action="store_true", help="JSON Lines instead of Markdown tables")
    p.add_argument("--only", action="append", choices=["intake", "pipeline", "backfill", "extractor"],
                   help="run only this part (repeatable)")
    p.set_defaults(func=cmd_bench)
    args = parser.parse_args(argv)
    if getattr(args, "action", None) in ("show", "reset") and not args.lock_key:
        parser.error(f"locks {args.action} needs a LOCK_KEY")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
