"""The `mlbatch` command: render | run | bench."""
from __future__ import annotations

import argparse
import json
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


def cmd_bench(args) -> int:
    """Benchmark every intake and pipeline path; a Markdown table on stdout (or JSON Lines with --json)."""
    from .bench import bench_intake, bench_pipeline
    rows = bench_intake(runs=args.runs) + bench_pipeline(runs=args.runs)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    cols = ["path", "transitions", "service_calls", "p50_ms", "p95_ms", "runs"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
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
    p = sub.add_parser("run", help=cmd_run.__doc__, description=cmd_run.__doc__, epilog="example: mlbatch run")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("bench", help=cmd_bench.__doc__, description=cmd_bench.__doc__,
                       epilog="example: mlbatch bench --runs 20")
    p.add_argument("--runs", type=int, default=20, help="executions per path (default 20)")
    p.add_argument("--json", action="store_true", help="JSON Lines instead of a Markdown table")
    p.set_defaults(func=cmd_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
