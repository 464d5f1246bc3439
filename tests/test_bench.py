"""`mlbatch bench` prints what it measured: a Markdown table per part on stdout, JSON Lines with
--json (the measurements themselves run in `mlbatch bench`, not in the suite)."""
from __future__ import annotations

import json

from mlbatch import bench
from mlbatch.cli import main


def test_bench_prints_a_markdown_table_per_part_and_json_lines_on_request(monkeypatch, capsys):
    rows = [{"path": "backfill: unit started", "transitions": 9}, {"path": "backfill: unit invalid", "service_calls": 1}]
    monkeypatch.setattr(bench, "bench_backfill_unit", lambda progress, runs, baseline: rows)

    assert main(["bench", "--only", "backfill"]) == 0
    out = capsys.readouterr().out
    assert "### backfill" in out
    assert "| path | transitions | service_calls |" in out  # every column any row has
    assert "| backfill: unit invalid |  | 1 |" in out

    assert main(["bench", "--only", "backfill", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [{"bench": "backfill", **row} for row in rows]
