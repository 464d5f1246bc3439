"""Shared fixtures: one embedded engine with template.yaml deployed, per test session."""
from __future__ import annotations

import copy

import pytest

from mlbatch.cli import main
from mlbatch.render import environment, render_text
from mlbatch.sandbox import Sandbox, load_event
from mlbatch.settings import ROOT


@pytest.fixture(scope="session")
def sandbox():
    with Sandbox() as sb:
        sb.put_defaults(load_event("project_defaults"))
        yield sb


@pytest.fixture
def stack(sandbox):
    """The intake on its own: it starts a stand-in pipeline that leaves the lock alone."""
    sandbox.clear_locks()
    sandbox.use_intake("stand-in")
    yield sandbox
    sandbox.use_intake()


@pytest.fixture
def live(sandbox):
    """The whole flow: the intake starts the real pipeline (builders mocked per test case)."""
    sandbox.clear_locks()
    sandbox.use_intake()
    yield sandbox


@pytest.fixture
def event():
    """A fresh copy of the example live event (normalized shape)."""
    return copy.deepcopy(load_event("live_event"))


@pytest.fixture(scope="session")
def window_machine(sandbox):
    """Test-only machine: the window macros mapped over $.timestamps."""
    env = environment([ROOT / "tests" / "machines"])
    return sandbox.engine.create_machine("window-map", render_text("window_map.asl.json.j2", env))


@pytest.fixture
def cli(capsys):
    """`mlbatch ARGV` in-process, as a user runs it: (exit code, stdout, stderr); argparse's usage
    exits (code 2) included."""
    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err
    return run
