"""`mlbatch audit --html FILE`: the audit as one self-contained picture.

Per project a calendar: one row per day, one column per window of the cron grid (96 for a
15-minute grid: :func:`grid_minutes` reads the grid from :mod:`mlbatch.window`), each audited
unit one cell coloured by its state *and* marked with a letter and a pattern (colour is never the
only signal); several batches in one window share the slot, stacked. Hovering or focusing a cell
(arrow keys move a roving focus) shows the unit, its lock and the command that fixes it.

The file needs no network at view time: inline CSS, inline script, no fonts, no images. The
units travel as one JSON object, column by column, long strings split into a shared stem and
a tail, so a year of one project (35,040 cells) stays a few MB. See docs/audit-report.md.
"""
from __future__ import annotations

import datetime as dt
import html
import json
import os
from bisect import bisect_right
from collections import Counter
from typing import Any

from .settings import CRON
from .window import minute_table

__all__ = ["STATE_MARKS", "Report", "grid_minutes", "fix_templates", "fix_commands", "fill"]

#: state -> (letter in the cell, CSS class). Letters are the non-colour signal.
STATE_MARKS = {
    "SUCCEEDED": "S", "IN_PROGRESS": "P", "STUCK": "T", "FAILED": "F", "POISONED": "X", "MISSING": "M",
    "COLLISION": "C", "UNKNOWN_STATUS": "?", "UNKNOWN_PROJECT": "U",
}
_CLASS = {"SUCCEEDED": "ok", "IN_PROGRESS": "ip", "STUCK": "st", "FAILED": "fa", "POISONED": "po", "MISSING": "mi",
          "COLLISION": "co", "UNKNOWN_STATUS": "us", "UNKNOWN_PROJECT": "up"}
_MEANING = {
    "SUCCEEDED": "done", "IN_PROGRESS": "a run holds the window", "STUCK": "IN_PROGRESS, not updated for too long",
    "FAILED": "the last run failed", "POISONED": "failed max-attempts times", "MISSING": "no lock: never ran",
    "COLLISION": "the window belongs to another batch", "UNKNOWN_STATUS": "a lock mlbatch did not write",
    "UNKNOWN_PROJECT": "no defaults item for the project",
}

#: Unit fields the report keeps (what the details show), in the JSON's column order.
FIELDS = ("project_name", "mini_batch_id", "mini_batch_s3_prefix", "feature_spec_version", "batch_start_ts_iso",
          "batch_end_ts_iso", "state", "lock_key", "status", "attempts", "updated_at", "pipeline_execution_arn",
          "pipeline_status", "pipeline_problem", "error", "cause", "held_by_mini_batch_id", "window_adopted_from",
          "timestamp_suspect", "healable", "lock_released", "heal_note", "fix")
#: Columns stored as (stem, tail): the stem (up to the last separator) is shared by many units.
_STEMMED = {"mini_batch_s3_prefix": "/", "lock_key": "#", "pipeline_execution_arn": ":", "batch_start_ts_iso": "T",
            "batch_end_ts_iso": "T", "updated_at": "T", "held_by_mini_batch_id": "-", "mini_batch_id": "-"}
#: Pixel widths: the day label, the gap count, a window's cell.
_DAY, _GAPS, _CELL = 112, 34, 11
#: A cause longer than this is cut in the file (`mlbatch locks show` prints it whole).
CAUSE_CHARS = 2000


def grid_minutes(cron: str = CRON) -> list[int]:
    """The minutes of each hour the window grid fires at (8, 23, 38, 53 for the default cron):
    the floors :func:`mlbatch.window.minute_table` maps every minute to."""
    return sorted({int(floor) for floor, _ in minute_table(cron)})


def _q(value: str) -> str:
    """A shell word: single-quoted unless plainly safe (the page's script quotes alike)."""
    if value and all((c.isascii() and c.isalnum()) or c in "-_./:=@,+" for c in value):
        return value
    return "'" + value.replace("'", "'\\''") + "'"


#: Placeholders a fix template may hold, filled per unit (here and, in the page, by its script).
_PLACEHOLDERS = ("key", "arn", "day", "project", "next")


def fix_templates(line: dict, context: dict) -> tuple[str, ...]:
    """What an operator runs about a unit (docs/audit.md's "what to do"), most useful first, with
    {key} {arn} {day} {project} {next} left for :func:`fill`: a few distinct templates serve every unit."""
    state = line.get("state")
    table = f" --table {_q(context['lock_table'])}" if context.get("lock_table") else ""
    show = f"mlbatch locks show {{key}}{table}" if line.get("lock_key") else None
    # Runs as printed: the artifacts bucket the audit knew ($MLBATCH_ARTIFACTS_BUCKET), else that variable,
    # which the shell refuses to expand empty (no `<placeholder>`: the shell reads `<` as a redirection).
    artifacts = (_q(context["artifacts_bucket"]) if context.get("artifacts_bucket") else
                 "${MLBATCH_ARTIFACTS_BUCKET:?export the stack ArtifactsBucketName output}")
    heal_table = f" --lock-table {_q(context['lock_table'])}" if context.get("lock_table") else ""
    heal = (f"mlbatch audit --bucket {_q(context.get('bucket') or '<bucket>')} --from {{day}} --to {{day}} "
            f"--project {{project}}{heal_table} --manifest s3://{artifacts}/backfill/heal-{{day}}.jsonl   "
            "# the heal; then start the backfill with that manifest")
    out: list[str | None] = []
    if state in ("SUCCEEDED", "IN_PROGRESS"):
        out = [show]
    elif state == "STUCK":
        ps = line.get("pipeline_status")
        if ps in ("RUNNING", "PENDING_REDRIVE"):
            out = ["aws stepfunctions describe-execution --execution-arn {arn}   # outlived its timeout: stop it, "
                   "then audit again", show]
        elif line.get("healable"):
            out = [heal, show]
        else:
            out = [show, f"mlbatch locks reset {{key}}{table} --in-progress-ok --reason '...'   # only after "
                         "checking that no run is alive"]
    elif state == "FAILED":
        out = [show, heal]
    elif state == "POISONED":
        out = [show, "mlbatch replay {arn} --dry-run   # names the intake to replay once the cause is fixed"
               if line.get("pipeline_execution_arn") else None,
               heal.replace(" --manifest", " --max-attempts {next} --manifest")]
    elif state == "MISSING":
        out = [heal]
    elif state == "COLLISION":
        out = [show, "# inspect both folders; re-emit this batch with its own timestamp or merge it upstream"]
    elif state == "UNKNOWN_STATUS":
        out = [show, f"mlbatch locks reset {{key}}{table} --reason '...'   # makes it FAILED, then healable"]
    elif state == "UNKNOWN_PROJECT":
        out = ["mlbatch defaults put sam/project-defaults/{project}.json   # then audit again"]
    return tuple(c for c in out if c)


def _day(line: dict) -> str:
    """The folder's date (YYYY-MM-DD), what --from/--to select."""
    return "-".join(str(line.get("mini_batch_s3_prefix", "")).split("/")[-5:-2]) or "<day>"


def fill(template: str, line: dict) -> str:
    """A fix template for one unit (what the page shows for it)."""
    try:
        nxt = str(int(line.get("attempts") or 0) + 1)
    except (TypeError, ValueError):
        nxt = "4"
    values = {"key": line.get("lock_key"), "arn": line.get("pipeline_execution_arn"), "day": _day(line),
              "project": line.get("project_name"), "next": nxt}
    for name in _PLACEHOLDERS:
        template = template.replace("{" + name + "}", _q(str(values[name])))
    return template


def fix_commands(line: dict, context: dict) -> list[str]:
    return [fill(t, line) for t in fix_templates(line, context)]


class Report:
    """Collects audited lines (:meth:`add`, one per unit, as `run_audit` yields them) and writes the
    HTML (:meth:`write`). Keeps only the fields it shows."""

    def __init__(self, cron: str = CRON, context: dict | None = None):
        self.minutes = grid_minutes(cron)
        self.cron = cron
        self.context = dict(context or {})
        self.rows: list[tuple] = []

    @property
    def slots_per_day(self) -> int:
        return 24 * len(self.minutes)

    def add(self, line: dict) -> None:
        values = [line.get(f) for f in FIELDS[:-1]]
        cause = values[FIELDS.index("cause")]
        if isinstance(cause, str) and len(cause) > CAUSE_CHARS:
            values[FIELDS.index("cause")] = cause[:CAUSE_CHARS] + " [...]"
        values.append(fix_templates(line, self.context))
        self.rows.append(tuple(values))

    def _place(self, start: Any) -> tuple[str, int] | None:
        """(day, slot) of a window start 'YYYY-MM-DDTHH:MM:00Z'; None when unreadable."""
        try:
            day = dt.date.fromisoformat(start[:10]).isoformat()
            hour, minute = int(start[11:13]), int(start[14:16])
        except (TypeError, ValueError):
            return None
        if not (0 <= hour < 24 and 0 <= minute < 60):
            return None
        return day, hour * len(self.minutes) + max(0, bisect_right(self.minutes, minute) - 1)

    # --- the document ----------------------------------------------------------------------------

    def html(self, summary: dict | None = None, first: dt.date | None = None, last: dt.date | None = None,
             title: str = "mlbatch audit") -> str:
        iproj, istart, istate, imb = (FIELDS.index(f) for f in ("project_name", "batch_start_ts_iso", "state",
                                                                 "mini_batch_id"))
        placed = [(r[iproj] or "", self._place(r[istart]), r) for r in self.rows]
        iend = FIELDS.index("batch_end_ts_iso")
        placed.sort(key=lambda p: (p[0], p[1] or ("9999", 0), str(p[2][iend]), str(p[2][imb])))  # in a window: by time
        counts = Counter(r[istate] for r in self.rows)
        summary_states = (summary or {}).get("states") or {s: n for s, n in counts.items()}
        order = [r for _, _, r in placed]

        out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
               "<meta name=viewport content='width=device-width'>"
               "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; style-src 'unsafe-inline'; "
               "script-src 'unsafe-inline'; img-src data:\">"
               f"<style>{_CSS}{self._widths()}</style></head><body><main>"]
        ctx = self.context
        span = f"{first} to {last}" if first and last else ""
        out.append(f"<header><h1>{html.escape(title)}</h1><p class=meta>{html.escape(span)}"
                   f"{' · bucket ' + html.escape(ctx['bucket']) if ctx.get('bucket') else ''}"
                   f" · {len(self.rows):,} units · grid <code>{html.escape(self.cron)}</code>: "
                   f"{self.slots_per_day} windows a day (UTC)"
                   f"{' · audited ' + html.escape(str(ctx['audited_at'])) if ctx.get('audited_at') else ''}</p>")
        out.append("<ul id=legend aria-label='states and counts'>")
        # a state this version does not know (a newer audit's) is still counted and drawn: "*", grey
        others = sorted(s for s in {*counts, *summary_states} if s not in STATE_MARKS)
        for state in [*STATE_MARKS, *others]:
            n = int(summary_states.get(state, 0))
            out.append(f"<li data-state={html.escape(str(state))} data-count={n}{' class=zero' if not n else ''}>"
                       f"<i class={_CLASS.get(state, 'ot')}>{html.escape(STATE_MARKS.get(state, '*'))}</i>"
                       f"<b>{html.escape(str(state))}</b> <span>{n:,}</span>"
                       f"<small>{_MEANING.get(state, 'a state this report does not know')}</small></li>")
        out.append("</ul><p class=help>Hover a cell, or click one and move with the arrow keys (Home/End: the "
                   "day's first/last batch, PageUp/PageDown: a week). Several batches in one window are stacked in "
                   "their slot, outlined.</p></header>")

        projects: dict[str, list] = {}
        for proj, where, row in placed:
            projects.setdefault(proj, []).append((where, row))
        hours = "".join(f"<th class=h>{h:02d}</th>" for h in range(24))
        for proj, items in projects.items():
            pcount = Counter(r[istate] for _, r in items)
            days = {w[0] for w, _ in items if w}
            if first and last:
                days |= {(first + dt.timedelta(d)).isoformat() for d in range((last - first).days + 1)}
            by_day: dict[str, dict[int, list]] = {}
            unplaced = []
            for where, row in items:
                if where is None:
                    unplaced.append(row)
                else:
                    by_day.setdefault(where[0], {}).setdefault(where[1], []).append(row)
            tally = " · ".join(f"{STATE_MARKS[s]} {s} {pcount[s]:,}" for s in STATE_MARKS if pcount[s])
            name = html.escape(proj or "?", quote=True)
            out.append(f"<section data-project='{name}'><h2>{name} <small>{tally}</small></h2>"
                       f"<table class='g hd' aria-hidden=true><thead><tr><th class=day>day \\ hour (UTC)</th>{hours}"
                       "<th class=n>gaps</th></tr></thead></table>")
            # one table per calendar month, each skipped by the browser's layout while off screen
            blocks: list[tuple[str, list[str]]] = []
            previous = None
            for day in sorted(days):
                d = dt.date.fromisoformat(day)
                if previous is not None and (d - previous).days > 1:
                    blocks.append(("", [f"<tr class=skip><td colspan={self.slots_per_day + 2}>"
                                        f"{(d - previous).days - 1:,} days without batches</td></tr>"]))
                if previous is None or blocks[-1][0] != day[:7]:
                    blocks.append((day[:7], []))
                previous = d
                blocks[-1][1].append(self._day_row(d, by_day.get(day, {}), istate))
            if unplaced:
                inner = "".join(f"<i class={_CLASS.get(r[istate], 'ot')}>{STATE_MARKS.get(r[istate], '*')}</i>"
                                for r in unplaced)
                blocks.append(("no window", [f"<tr class=d><th class=day>no window</th><td colspan={self.slots_per_day}"
                                             f" class=loose>{inner}</td><td class=n>{len(unplaced)}</td></tr>"]))
            for month, rows in blocks:
                out.append(f"<div class=blk style='contain-intrinsic-size:auto {len(rows) * 15 + 2}px'>"
                           f"<table class=g role=grid aria-label='{name} {month}'><tbody>{''.join(rows)}</tbody>"
                           "</table></div>")
            out.append("</section>")

        out.append("</main><aside id=details aria-live=polite><h2>Details</h2><p>Hover or focus a cell.</p></aside>")
        data = {"fields": FIELDS, "cols": self._columns(order), "marks": STATE_MARKS, "classes": _CLASS}
        blob = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
        out.append(f"<script type=application/json id=units>{blob}</script><script>{_JS}</script></body></html>")
        return "".join(out)

    def _widths(self) -> str:
        """Column widths every table shares (header and month tables line up): border-box cells, 1px spacing."""
        n = len(self.minutes)
        width = _DAY + _GAPS + self.slots_per_day * _CELL + self.slots_per_day + 3
        return (f":root{{--cell:{_CELL}px}}table.g{{width:{width}px}}table.hd th.h{{width:{n * _CELL + n - 1}px}}"
                f"table.g th.day{{width:{_DAY}px}}table.g td.n,table.g th.n{{width:{_GAPS}px}}")

    def _day_row(self, d: dt.date, slots: dict[int, list], istate: int) -> str:
        """One day: a cell per batch in its window's slot (several stacked), empty slots merged."""
        gaps = sum(r[istate] not in ("SUCCEEDED", "IN_PROGRESS") for rs in slots.values() for r in rs)
        cells = []
        empty = 0
        for slot in range(self.slots_per_day):
            rs = slots.get(slot)
            if not rs:
                empty += 1
                continue
            if empty:
                cells.append("<td></td>" * empty if empty < 3 else f"<td colspan={empty} class=e></td>")
                empty = 0
            inner = "".join(f"<i class={_CLASS.get(r[istate], 'ot')}>{html.escape(STATE_MARKS.get(r[istate], '*'))}</i>"
                            for r in rs)
            if len(rs) > 1:
                cells.append(f"<td class=m{min(len(rs), 3)}>{inner}</td>")
            else:  # the cell is the td itself: half the elements for the browser to lay out
                cells.append(f"<td class={_CLASS.get(rs[0][istate], 'ot')}>"
                             f"{html.escape(STATE_MARKS.get(rs[0][istate], '*'))}</td>")
        if empty:
            cells.append("<td></td>" * empty if empty < 3 else f"<td colspan={empty} class=e></td>")
        month = " class='d m1'" if d.day == 1 else " class=d"
        return (f"<tr{month}><th class=day>{d.isoformat()} {d.strftime('%a')}</th>{''.join(cells)}"
                f"<td class=n>{gaps or ''}</td></tr>")

    def _columns(self, rows: list[tuple]) -> dict[str, Any]:
        """Column-wise JSON, each column in the smallest of four shapes the page's script reads:
        a list; {"m": {index: value}} when most units lack the field; {"d": values, "i": indexes} when
        few values repeat; {"s": stems, "i": indexes, "t": tails} for long strings sharing a stem.
        A lock_key that is project#version#start#end (the lock contract) is 0 ("derive it"), a
        folder whose last part is the mini_batch_id has tail 0."""
        cols: dict[str, Any] = {}
        imb = FIELDS.index("mini_batch_id")
        derive = [FIELDS.index(f) for f in ("project_name", "feature_spec_version", "batch_start_ts_iso",
                                            "batch_end_ts_iso")]
        for n, name in enumerate(FIELDS):
            values = [r[n] for r in rows]
            if name == "lock_key":
                values = [0 if isinstance(v, str) and all(isinstance(r[k], str) for k in derive)
                          and v == "#".join(r[k] for k in derive) else v for v, r in zip(values, rows)]
            present = sum(v is not None for v in values)
            if not present:
                continue
            if present * 4 < len(values):
                cols[name] = {"m": {str(i): v for i, v in enumerate(values) if v is not None}}
                continue
            # a hashable key per value: lists as tuples, objects (window_adopted_from) by their JSON text
            keys = [tuple(v) if isinstance(v, list) else json.dumps(v, sort_keys=True) if isinstance(v, dict)
                    else v for v in values]
            distinct: dict[Any, int] = {}
            first: dict[Any, Any] = {}
            for k, v in zip(keys, values):
                if k is not None and len(distinct) * 8 <= len(keys):
                    distinct.setdefault(k, len(distinct))
                    first.setdefault(k, v)
            if len(distinct) * 8 <= len(keys):
                cols[name] = {"d": [first[k] for k in distinct],
                              "i": [None if k is None else distinct[k] for k in keys]}
                continue
            sep = _STEMMED.get(name)
            if sep is None:
                cols[name] = values
                continue
            stems: dict[str, int] = {}
            index, tails = [], []
            for v, r in zip(values, rows):
                if not isinstance(v, str):
                    index.append(None)
                    tails.append(v)
                    continue
                cut = v.rfind(sep, 0, len(v) - 1) + 1
                tail = v[cut:]
                index.append(stems.setdefault(v[:cut], len(stems)))
                tails.append(0 if name == "mini_batch_s3_prefix" and tail == f"{r[imb]}/" else tail)
            stemmed = {"s": list(stems), "i": index, "t": tails}
            cols[name] = min((stemmed, values), key=lambda c: len(json.dumps(c, separators=(",", ":"))))
        return cols

    def write(self, path: str, summary: dict | None = None, first: dt.date | None = None,
              last: dt.date | None = None, title: str = "mlbatch audit") -> int:
        """Write the file (next to its final name, then renamed): its size in bytes."""
        text = self.html(summary, first, last, title).encode()
        partial = f"{path}.{os.getpid()}.partial"
        with open(partial, "wb") as fh:
            fh.write(text)
        os.replace(partial, path)
        return len(text)


_CSS = """
:root{--cell:11px;--row:14px;font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:#1d232a;background:#fff}
body{margin:0;display:grid;grid-template-columns:minmax(min-content,1fr) minmax(240px,360px);align-items:start}
main{padding:12px 16px;min-width:0}
header h1{font-size:18px;margin:0 0 2px}
.meta{margin:0 0 8px;color:#4a5561}
code,pre{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px}
#legend{list-style:none;padding:0;margin:0 0 6px;display:flex;flex-wrap:wrap;gap:4px 14px}
#legend li{display:flex;align-items:center;gap:5px;white-space:nowrap}
#legend li i{width:16px;height:16px;line-height:16px;display:inline-block}
#legend li span{font-variant-numeric:tabular-nums;font-weight:600}
#legend li small{color:#5d6873}
#legend li.zero{opacity:.45}
.help{margin:0 0 10px;color:#5d6873;font-size:12px}
section{margin:0 0 18px}
h2{font-size:15px;margin:10px 0 4px}
h2 small{font-weight:400;color:#4a5561;font-size:12px}
table.g{border-collapse:separate;border-spacing:1px;table-layout:fixed}
table.g th,table.g td{box-sizing:border-box;padding:0}
table.g th{font-weight:500;color:#4a5561;font-size:11px;text-align:left}
table.hd{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid #c9d0d6}
table.hd th.h{padding-left:2px;border-left:1px solid #c9d0d6}
table.g th.day{white-space:nowrap;font-variant-numeric:tabular-nums;padding-right:6px}
.blk{content-visibility:auto}
.blk+.blk{border-top:1px solid #9aa5ae;margin-top:2px}
table.g td{height:var(--row)}
table.g td:not([class]){background:#eef1f4}
table.g td.e{background:repeating-linear-gradient(90deg,#eef1f4 0 var(--cell),#fff 0 calc(var(--cell) + 1px))}
table.g td.n,table.g th.n{background:none;text-align:right;font-size:11px;color:#9b2c1a;font-weight:600}
table.g th.n{color:#4a5561;font-weight:500}
table.g td.loose{background:none}
table.g tr.skip td{background:none;height:auto;color:#5d6873;font-size:11px;padding:3px 0 3px 118px}
table.g td{font:700 9px/var(--row) ui-monospace,"DejaVu Sans Mono",monospace;text-align:center;overflow:hidden}
#legend i,#details b{font:700 10px/16px ui-monospace,"DejaVu Sans Mono",monospace;text-align:center;font-style:normal}
.ok,.ip,.fa,.po,.co,.us{color:#fff}
td i{display:block;height:100%;font-style:normal;overflow:hidden}
td.m2 i,td.m3 i{height:50%;line-height:calc(var(--row)/2);font-size:0}
td.m3 i{height:33.3%}
td.m2,td.m3{outline:1px solid #1d232a;outline-offset:0}
td.loose i{display:inline-block;width:var(--cell);height:var(--row);margin:0 1px 0 0}
.ok{background:#1b8a5a}
.ip{background:#2f6fd0;background-image:radial-gradient(#fff7 1px,transparent 1.4px);background-size:4px 4px}
.st{background:#e69f00;color:#1d232a;background-image:repeating-linear-gradient(0deg,#0000 0 2px,#fff6 2px 3px)}
.fa{background:#d55e00;background-image:repeating-linear-gradient(45deg,#0000 0 2px,#fff5 2px 3px)}
.po{background:#5b1a6e;background-image:repeating-linear-gradient(45deg,#0000 0 2px,#fff4 2px 3px),
repeating-linear-gradient(-45deg,#0000 0 2px,#fff4 2px 3px)}
.mi{background:#fff;color:#9b2c1a;box-shadow:inset 0 0 0 1px #9b2c1a}
.co{background:#cc3f8f;background-image:repeating-linear-gradient(90deg,#0000 0 2px,#fff6 2px 3px)}
.us{background:#6b7580;background-image:repeating-conic-gradient(#fff4 0 25%,#0000 0 50%);background-size:4px 4px}
.up{background:#aab3bb;color:#1d232a}
.ot{background:#d4dadf;color:#1d232a}
table.g td:not(.e):not(.n):not(.loose):not(.m2):not(.m3),td i{cursor:pointer}
table.g td:not(.e):not(.n):not(.loose):not(.m2):not(.m3):hover,td i:hover{outline:2px solid #1d232a;outline-offset:-1px}
table.g td:focus,td i:focus{outline:3px solid #1d232a;outline-offset:-1px;position:relative;z-index:1;
box-shadow:0 0 0 2px #fff inset}
#details{position:sticky;top:0;max-height:100vh;overflow:auto;box-sizing:border-box;padding:12px 14px;
border-left:1px solid #d4dadf;background:#f8fafb;font-size:12px}
#details h2{margin:0 0 6px}
#details dl{display:grid;grid-template-columns:auto 1fr;gap:2px 8px;margin:0}
#details dt{color:#5d6873}
#details dd{margin:0;word-break:break-all}
#details dd.state b{display:inline-block;padding:0 6px;color:#fff}
#details pre{white-space:pre-wrap;word-break:break-all;background:#fff;border:1px solid #d4dadf;padding:6px;margin:4px 0}
#details h3{font-size:12px;margin:10px 0 2px}
"""

_JS = r"""
(function () {
"use strict";
// The units, column by column (Report._columns): cell n of the grid (document order) is unit n.
var D = JSON.parse(document.getElementById("units").textContent);
var SEL = "table.g td.ok,td.ip,td.st,td.fa,td.po,td.mi,td.co,td.us,td.up,td.ot,td i";
var cells = document.querySelectorAll(SEL), index = new Map(), details = document.getElementById("details");
for (var n = 0; n < cells.length; n++) index.set(cells[n], n);

function raw(f, i) {
  var c = D.cols[f], s, t;
  if (c === undefined) return null;
  if (Array.isArray(c)) return c[i];
  if (c.m) return c.m.hasOwnProperty(i) ? c.m[i] : null;            // sparse
  s = c.i[i];
  if (c.d) return s === null ? null : c.d[s];                          // distinct values
  t = c.t[i];                                                          // stem + tail
  if (s === null) return t;
  return c.s[s] + (t === 0 ? raw("mini_batch_id", i) + "/" : t);
}
function val(f, i) {
  var v = raw(f, i);
  if (f === "lock_key" && v === 0)                                     // the lock contract's key
    v = [raw("project_name", i), raw("feature_spec_version", i), raw("batch_start_ts_iso", i),
         raw("batch_end_ts_iso", i)].join("#");
  return v;
}
function unit(i) {
  var u = {};
  D.fields.forEach(function (f) { var v = val(f, i); if (v !== null && v !== undefined) u[f] = v; });
  return u;
}
function q(v) {  // a shell word, as report._q
  v = String(v);
  return /^[A-Za-z0-9\-_.\/:=@,+]+$/.test(v) ? v : "'" + v.replace(/'/g, "'\\''") + "'";
}
function fill(t, u) {  // a fix template for one unit, as report.fill
  var day = String(u.mini_batch_s3_prefix || "").split("/").slice(-5, -2).join("-") || "<day>";
  var x = {key: u.lock_key, arn: u.pipeline_execution_arn, day: day, project: u.project_name,
           next: (parseInt(u.attempts, 10) || 0) + 1};
  return t.replace(/\{(key|arn|day|project|next)\}/g, function (m, k) { return q(x[k]); });
}
function esc(s) {
  return String(s).replace(/[&<>"]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]; });
}
var ROWS = [["mini_batch_id", "batch"], ["project_name", "project"], ["mini_batch_s3_prefix", "folder"],
  ["feature_spec_version", "feature spec"], ["batch_start_ts_iso", "window start"], ["batch_end_ts_iso", "window end"],
  ["lock_key", "lock key"], ["status", "lock status"], ["attempts", "attempts"], ["updated_at", "updated at"],
  ["pipeline_execution_arn", "pipeline execution"], ["pipeline_status", "pipeline status"],
  ["pipeline_problem", "problem"], ["error", "error"], ["cause", "cause"], ["held_by_mini_batch_id", "held by batch"],
  ["timestamp_suspect", "suspect timestamp"], ["healable", "healable"], ["lock_released", "lock released"],
  ["heal_note", "heal note"]];

function show(el) {
  var i = index.get(el);
  if (i === undefined) return;
  var u = unit(i), a = u.window_adopted_from;
  var h = ["<h2>Details</h2><dl><dt>state</dt><dd class=state data-field=state><b class=",
           D.classes[u.state] || "ot", ">", esc(D.marks[u.state] || "*"), " ", esc(u.state), "</b></dd>"];
  ROWS.forEach(function (r) {
    if (u[r[0]] === undefined) return;
    var v = u[r[0]];
    h.push("<dt>", r[1], "</dt><dd data-field=", r[0], ">", esc(typeof v === "object" ? JSON.stringify(v) : v), "</dd>");
  });
  if (a) h.push("<dt>adopted from</dt><dd data-field=window_adopted_from>", esc(a.lock_key || JSON.stringify(a)),
                a.batch_start_ts_iso ? " (" + esc(a.batch_start_ts_iso) + " to " + esc(a.batch_end_ts_iso || "") + ")" : "",
                "</dd>");
  h.push("</dl>");
  if (u.fix && u.fix.length) {
    h.push("<h3>What to run</h3>");
    u.fix.forEach(function (c) { h.push("<pre data-field=fix>", esc(fill(c, u)), "</pre>"); });
  }
  details.innerHTML = h.join("");
}

// Keyboard: one tab stop (roving tabindex) that the arrow keys move.
var current = cells[0] || null, rows = null;
if (current) current.tabIndex = 0;
function move(el) {
  if (!el) return;
  if (current && current !== el) current.removeAttribute("tabindex");
  current = el;
  el.tabIndex = 0;
  el.focus();
}
function rowCells(tr) { return tr.querySelectorAll(SEL); }
function cellTd(el) { return el.tagName === "TD" ? el : el.parentElement; }
function dataRows() {  // day rows holding at least one batch, every project, in page order
  if (!rows) rows = Array.prototype.filter.call(document.querySelectorAll("tr.d"),
                                                function (tr) { return tr.querySelector(SEL); });
  return rows;
}
function column(el) {
  var c = 0, x = cellTd(el).previousElementSibling;
  for (; x; x = x.previousElementSibling) c += x.colSpan || 1;
  return c;
}
function nearest(tr, col) {
  var best = null, bd = 1e9, cs = rowCells(tr);
  for (var k = 0; k < cs.length; k++) { var d = Math.abs(column(cs[k]) - col); if (d < bd) { bd = d; best = cs[k]; } }
  return best;
}
document.addEventListener("keydown", function (e) {
  var el = document.activeElement;
  if (index.get(el) === undefined) return;
  var tr = cellTd(el).parentElement, cs = Array.prototype.slice.call(rowCells(tr)), k = cs.indexOf(el);
  var t = null, rs, r, p;
  switch (e.key) {
    case "ArrowRight":
      t = cs[k + 1] || null;
      if (!t) { rs = dataRows(); r = rs.indexOf(tr); if (rs[r + 1]) t = rowCells(rs[r + 1])[0]; }
      break;
    case "ArrowLeft":
      t = cs[k - 1] || null;
      if (!t) { rs = dataRows(); r = rs.indexOf(tr); if (r > 0) { p = rowCells(rs[r - 1]); t = p[p.length - 1]; } }
      break;
    case "ArrowDown": case "ArrowUp": case "PageDown": case "PageUp":
      rs = dataRows();
      r = rs.indexOf(tr) + {ArrowDown: 1, ArrowUp: -1, PageDown: 7, PageUp: -7}[e.key];
      t = nearest(rs[Math.max(0, Math.min(rs.length - 1, r))], column(el));
      break;
    case "Home": t = e.ctrlKey ? cells[0] : cs[0]; break;
    case "End": t = e.ctrlKey ? cells[cells.length - 1] : cs[cs.length - 1]; break;
    default: return;
  }
  e.preventDefault();
  move(t);
});
document.addEventListener("focusin", function (e) {
  if (index.get(e.target) === undefined) return;
  if (current !== e.target) { if (current) current.removeAttribute("tabindex"); current = e.target; current.tabIndex = 0; }
  show(e.target);
});
document.addEventListener("mouseover", function (e) { if (index.get(e.target) !== undefined) show(e.target); });
document.addEventListener("mousedown", function (e) {
  if (index.get(e.target) !== undefined) { e.preventDefault(); move(e.target); }
});
})();
"""
