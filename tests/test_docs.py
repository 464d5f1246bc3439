"""The documentation: the generated sections (the error table in docs/errors.md, the diagrams in
docs/diagrams.md) follow their sources, every relative link in README.md and docs/ resolves, and the
project stands alone (nothing points outside it)."""
from __future__ import annotations

import re
import shutil
import subprocess
from urllib.parse import unquote

import pytest

from mlbatch import generated, render
from mlbatch.errors import ERRORS
from mlbatch.settings import ROOT

NEW = {"Intake.SomethingNew": ("A new failure | with a pipe.", "Do the new thing.")}


def test_the_error_table_in_docs_lists_every_error_with_its_meaning_and_recovery():
    text = (render.DOCS / "errors.md").read_text()
    section = text[text.index(generated.ERRORS_BEGIN):text.index(generated.ERRORS_END)]

    def as_cell(text):  # one line; | and [ escaped (a [x](y) in a meaning must not render as a link)
        return " ".join(text.split()).replace("|", "\\|").replace("[", "\\[")

    for name, (meaning, recovery) in ERRORS.items():
        row = next(line for line in section.splitlines() if line.startswith(f"| `{name}` |"))
        assert as_cell(meaning) in row and as_cell(recovery) in row


def test_render_check_flags_the_error_table_when_errors_py_changes_and_render_rewrites_it(tmp_path, monkeypatch):
    # GIVEN a copy of docs/ and a new error in errors.py
    monkeypatch.setattr(generated, "ERRORS", {**ERRORS, **NEW})
    docs = tmp_path / "docs"
    shutil.copytree(render.DOCS, docs)
    monkeypatch.setattr(render, "DOCS", docs)

    # WHEN render --check runs, then render
    stale = render.check()
    render.render_all()

    # THEN only docs/errors.md was stale, and now lists the error
    assert stale == [docs / "errors.md"]
    assert "| `Intake.SomethingNew` | A new failure \\| with a pipe. | Do the new thing. |" in (docs / "errors.md").read_text()
    assert render.check() == []


def test_render_writes_the_diagrams_into_docs_not_the_readme(tmp_path, monkeypatch):
    # GIVEN a copy of docs/ whose diagrams section was emptied by hand
    docs = tmp_path / "docs"
    shutil.copytree(render.DOCS, docs)
    monkeypatch.setattr(render, "DOCS", docs)
    text = (docs / "diagrams.md").read_text()
    begin, end = text.index(generated.SECTIONS["diagrams.md"][0]), text.index(generated.SECTIONS["diagrams.md"][1])
    (docs / "diagrams.md").write_text(text[:begin] + text[begin:end].split("\n")[0] + "\n" + text[end:])

    # WHEN render --check runs, then render
    stale = render.check()
    render.render_all()

    # THEN docs/diagrams.md was stale and has one Mermaid diagram per state machine again; the README has none
    assert stale == [docs / "diagrams.md"]
    assert (docs / "diagrams.md").read_text() == text
    assert text.count("```mermaid") == len(list(render.ASL.glob("*.asl.json")))
    assert "```mermaid" not in (ROOT / "README.md").read_text()


def test_render_check_names_a_docs_file_that_lost_its_markers(tmp_path, monkeypatch, cli):
    # GIVEN docs/errors.md without its generated table's markers
    docs = tmp_path / "docs"
    shutil.copytree(render.DOCS, docs)
    monkeypatch.setattr(render, "DOCS", docs)
    (docs / "errors.md").write_text("# Errors\n\nno table\n")

    # WHEN render --check runs
    code, out, err = cli("render", "--check")

    # THEN one line names the file and the fix, no traceback
    assert code == 1 and out == ""
    assert err.startswith("mlbatch render: docs/errors.md lacks the markers '<!-- errors:begin")
    assert err.rstrip().endswith("put them back around the section") and len(err.splitlines()) == 1


# Docs other branches add (issue 17): the README links them before they are merged. A link to one of
# them passes only while the file is absent; once a file exists the test fails until it is dropped
# from this set, so the set empties as the branches merge and every link is then checked.
PENDING: set[str] = set()

DESTINATION = re.compile(r"\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")


def _opening_bracket(text: str, close: int) -> int:
    """Where the `[` that the `]` at `close` closes is (-1: none, or it is escaped as `\\[`)."""
    depth = 0
    for i in range(close - 1, -1, -1):
        if i > 0 and text[i - 1] == "\\":
            continue
        if text[i] == "]":
            depth += 1
        elif text[i] == "[":
            if depth == 0:
                return i
            depth -= 1
    return -1


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        heading = line.lstrip("#").strip()
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(markdown: str) -> list[str]:
    """The target of every [text](target) and ![alt](target), also an image inside a link; not in code,
    not after an escaped `\\[`."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    text = re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group()), text)
    targets = []
    for m in re.finditer(r"\]\(", text):
        opening = _opening_bracket(text, m.start())
        dest = DESTINATION.match(text, m.start() + 1)
        if opening >= 0 and not (opening > 0 and text[opening - 1] == "\\") and dest:
            targets.append(dest.group(1))
    return targets


def test_every_relative_link_in_the_readme_and_docs_resolves():
    # GIVEN every Markdown file a reader opens
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    # WHEN each relative link (file, file#anchor, #anchor) is followed
    for page in pages:
        for target in _links(page.read_text()):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / unquote(path)).resolve() if path else page
            name = file.relative_to(ROOT.resolve()).as_posix() if file.is_relative_to(ROOT.resolve()) else str(file)
            if not file.exists():
                if name not in PENDING:
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
                continue
            if anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    broken += [f"{name} exists now: drop it from PENDING in tests/test_docs.py" for name in sorted(PENDING)
               if (ROOT / name).exists()]
    # THEN each names an existing file, and a heading in it where it names one
    assert broken == []


def test_the_link_check_follows_image_links_skips_code_and_names_headings_as_github_does():
    page = ("[ok](#a-heading) [gone](nowhere.md) [bad](#no-such) [![img](docs/img/x.png)](other.md)\n\n"
            "```\n[not a link](in-code.md)\n```\n`[nor](this.md)` SS\\[.fraction](Z\\|+00:00)\n## A heading\n")
    assert _links(page) == ["#a-heading", "nowhere.md", "#no-such", "docs/img/x.png", "other.md"]
    assert _anchors(page) == {"a-heading"}
    assert _anchors("# Is everything processed? — `mlbatch audit`\n## Pipeline (`asl/pipeline.asl.json`)\n") == {
        "is-everything-processed--mlbatch-audit", "pipeline-aslpipelineasljson"}


def test_nothing_in_the_project_points_outside_it():
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    # every relative path that climbs out of a file's folder (but not the three-dot elision), resolved
    # from that folder, must name something inside the project: users get the project, not the
    # folders beside it
    relative = re.compile(r"(?<![.\w])(?:\.\./)+[\w][\w.-]*")
    outside = []
    for name in tracked.splitlines():
        f = ROOT / name
        if f.is_file():
            for ref in relative.findall(f.read_text(errors="replace")):
                target = (f.parent / ref).resolve()
                if not (target.is_relative_to(ROOT.resolve()) and target.exists()):
                    outside.append(f"{name}: {ref}")

    assert outside == []
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
