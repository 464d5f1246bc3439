"""The documentation: the README's error table is generated from scripts/mlbatch/errors.py, and the
project stands alone (nothing points outside it)."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from mlbatch import readme, render
from mlbatch.errors import ERRORS
from mlbatch.settings import ROOT

NEW = {"Intake.SomethingNew": ("A new failure | with a pipe.", "Do the new thing.")}


def test_the_readme_error_table_lists_every_error_with_its_meaning_and_recovery():
    text = render.README.read_text()
    section = text[text.index(readme.ERRORS_BEGIN):text.index(readme.ERRORS_END)]

    for name, (meaning, recovery) in ERRORS.items():
        row = next(line for line in section.splitlines() if line.startswith(f"| `{name}` |"))
        assert " ".join(meaning.split()).replace("|", "\\|") in row and " ".join(recovery.split()) in row


def test_render_check_flags_the_error_table_when_errors_py_changes_and_render_rewrites_it(tmp_path, monkeypatch):
    monkeypatch.setattr(readme, "ERRORS", {**ERRORS, **NEW})
    copy = tmp_path / "README.md"
    shutil.copy(render.README, copy)
    monkeypatch.setattr(render, "README", copy)

    stale = render.check()
    render.render_all()

    assert stale == [copy]
    assert "| `Intake.SomethingNew` | A new failure \\| with a pipe. | Do the new thing. |" in copy.read_text()
    assert render.check() == []


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
