"""mlbatch installs where operators work: Python 3.11 and every later CPython (issue 17).

Three checks, cheapest first:
- pyproject.toml admits 3.11, 3.12, 3.13 and later (no upper cap);
- no source under scripts/ or tests/ uses a module or API that 3.12 or 3.13 removed (a static scan), and
  every source compiles under the 3.12 and 3.13 interpreters found on this machine, warnings as errors;
- every dependency, of every extra, resolves to wheels for 3.12 and 3.13: pip's resolver on PyPI's
  metadata (`pip install --dry-run --only-binary=:all: --python-version X`; nothing is downloaded but
  metadata). Both versions resolve at once (about 20 s); a success is remembered for 7 days per
  dependency list, so `make test` pays it once a week or when pyproject.toml changes. Skipped offline;
  `make wheels` runs it afresh.

The extractor image (sam/extractor/Dockerfile) stays on python:3.11-slim: 3.11 is still admitted.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from mlbatch.settings import ROOT

CHECKED = ("3.12", "3.13")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SOURCES = sorted((ROOT / "scripts").rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))

# --- what 3.12 and 3.13 removed --------------------------------------------------------------------------
# https://docs.python.org/3/whatsnew/3.12.html#removed
# https://docs.python.org/3/whatsnew/3.13.html#removed-modules-and-apis (PEP 594 "dead batteries", lib2to3)
REMOVED_MODULES = {
    **dict.fromkeys(("distutils", "imp", "asynchat", "asyncore", "smtpd"), "3.12"),
    **dict.fromkeys(("aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "mailcap", "msilib", "nis",
                     "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau", "telnetlib", "uu", "xdrlib",
                     "lib2to3", "tkinter.tix"), "3.13"),
}
# module-level names, as `module.name` or `from module import name`
REMOVED_NAMES = {
    ("configparser", "SafeConfigParser"): "3.12", ("ssl", "wrap_socket"): "3.12", ("ssl", "match_hostname"): "3.12",
    ("ssl", "RAND_pseudo_bytes"): "3.12", ("locale", "format"): "3.12", ("pkgutil", "ImpImporter"): "3.12",
    ("pkgutil", "ImpLoader"): "3.12", ("sqlite3", "enable_shared_cache"): "3.12",
    ("sqlite3", "OptimizedUnicode"): "3.12", ("io", "OpenWrapper"): "3.12",
    ("locale", "resetlocale"): "3.13", ("unittest", "findTestCases"): "3.13", ("unittest", "makeSuite"): "3.13",
    ("unittest", "getTestCaseNames"): "3.13", ("configparser", "LegacyInterpolation"): "3.13",
    ("re", "template"): "3.13", ("re", "TEMPLATE"): "3.13", ("typing", "io"): "3.13", ("typing", "re"): "3.13",
    ("ctypes", "SetPointerType"): "3.13",
}
# methods: names nothing else in the standard library or our dependencies uses
REMOVED_METHODS = {
    **dict.fromkeys(("failUnless", "failIf", "failUnlessEqual", "failIfEqual", "failUnlessAlmostEqual",
                     "failIfAlmostEqual", "failUnlessRaises", "assert_", "assertEquals", "assertNotEquals",
                     "assertAlmostEquals", "assertNotAlmostEquals", "assertRegexpMatches",
                     "assertNotRegexpMatches", "assertRaisesRegexp", "assertDictContainsSubset"), "3.12 (unittest)"),
    "readfp": "3.12 (configparser)", "link_to": "3.12 (pathlib)", "settiltangle": "3.13 (turtle)",
    "usageExit": "3.13 (unittest)",
    # not removed yet, but a DeprecationWarning since 3.12 (-W error would fail):
    # https://docs.python.org/3/whatsnew/3.12.html#deprecated
    "utcnow": "deprecated in 3.12 (datetime)", "utcfromtimestamp": "deprecated in 3.12 (datetime)",
}


def removed_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every use in `source` of a module or API removed in 3.12 or 3.13, as 'file:line: what (version)'."""
    found, aliases = [], {}

    def removed_module(name: str) -> str | None:
        parts = name.split(".")
        return next((REMOVED_MODULES[p] for p in (".".join(parts[:i]) for i in range(len(parts), 0, -1))
                     if p in REMOVED_MODULES), None)

    attributes = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute):
            attributes.append(node)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if version := removed_module(alias.name):
                    found.append(f"{where}: import {alias.name} (removed in {version})")
                aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                version = removed_module(node.module) or removed_module(full) or REMOVED_NAMES.get((node.module, alias.name))
                if version:
                    found.append(f"{where}: from {node.module} import {alias.name} (removed in {version})")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) \
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__"):
            if version := removed_module(node.args[0].value):
                found.append(f"{where}: imports {node.args[0].value!r} (removed in {version})")
    # attributes last: `import locale as l` anywhere in the file binds `l`
    for node in attributes:
        where = f"{filename}:{node.lineno}"
        if isinstance(node.value, ast.Name) and (aliases.get(node.value.id), node.attr) in REMOVED_NAMES:
            module = aliases[node.value.id]
            found.append(f"{where}: {module}.{node.attr} (removed in {REMOVED_NAMES[(module, node.attr)]})")
        elif node.attr in REMOVED_METHODS:
            found.append(f"{where}: .{node.attr} ({REMOVED_METHODS[node.attr]})")
    return found


def test_pyproject_admits_python_311_and_every_later_version():
    admitted = SpecifierSet(PROJECT["requires-python"])

    assert not admitted.contains("3.10.14")
    assert all(admitted.contains(v) for v in ("3.11.0", "3.12.0", "3.13.0", "3.14.0", "3.20.0"))
    declared = {c.rsplit(" :: ", 1)[1] for c in PROJECT["classifiers"] if re.fullmatch(r".* :: 3\.\d+", c)}
    assert declared == {"3.11", *CHECKED}


def test_the_extractor_image_runs_a_python_the_project_admits():
    image = re.search(r"^FROM python:(\d+\.\d+)", (ROOT / "sam" / "extractor" / "Dockerfile").read_text(), re.M)

    assert image and SpecifierSet(PROJECT["requires-python"]).contains(f"{image[1]}.0")


def test_the_scan_finds_each_kind_of_removed_use():
    planted = "\n".join([
        "import imp", "import telnetlib as t", "from distutils.util import strtobool", "from tkinter import tix",
        "from configparser import SafeConfigParser", "import locale as l", "l.resetlocale()",
        "import importlib; importlib.import_module('asyncore')", "self.assertEquals(1, 1)",
        "dt.datetime.utcnow()", "import json; json.dumps({})", "self.assertEqual(1, 1)",
    ])

    found = removed_uses(planted, "planted.py")

    assert [f.split(": ", 1)[0] for f in found] == [f"planted.py:{n}" for n in (1, 2, 3, 4, 5, 8, 7, 9, 10)]


def test_no_source_uses_a_module_or_api_removed_in_312_or_313():
    found = [f for path in SOURCES for f in removed_uses(path.read_text(), str(path.relative_to(ROOT)))]

    assert found == []


def _interpreter(version: str) -> str | None:
    """A CPython `version` on this machine (PATH, then pyenv's versions), or None."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [f"python{version}", *map(str, sorted(pyenv.glob(f"versions/{version}*/bin/python{version}")))]
    for exe in candidates:
        try:
            run = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if run.returncode == 0 and run.stdout.strip() == version:
            return exe
    return None


COMPILE_ALL = """
import sys
failed = []
for path in sys.argv[1:]:
    try:
        compile(open(path, encoding="utf-8").read(), path, "exec")
    except SyntaxError as e:
        failed.append(f"{path}:{e.lineno}: {e.msg}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.parametrize("version", CHECKED)
def test_every_source_compiles_under_the_newer_python_with_warnings_as_errors(version):
    exe = _interpreter(version)
    if exe is None:
        pytest.skip(f"no Python {version} on this machine (e.g. `pyenv install {version}`)")

    # -W error: 3.12 turned invalid escape sequences into a SyntaxWarning
    run = subprocess.run([exe, "-W", "error", "-c", COMPILE_ALL, *map(str, SOURCES)],
                         capture_output=True, text=True, timeout=120)

    assert run.returncode == 0, run.stdout + run.stderr


# --- wheels for 3.12 and 3.13 -----------------------------------------------------------------------------

def requirements() -> list[str]:
    """The dependencies and every extra's, as pyproject.toml declares them."""
    return [*PROJECT["dependencies"], *(r for extra in PROJECT["optional-dependencies"].values() for r in extra)]


CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlbatch" / "wheel-check"
CACHE_DAYS = 7


def _cache_file(version: str) -> Path:
    key = json.dumps([version, sysconfig.get_platform(), requirements()])
    return CACHE / f"{version}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _recent_success(version: str) -> dict | None:
    path = _cache_file(version)
    if os.environ.get("MLBATCH_WHEELS_FRESH") == "1" or not path.exists():
        return None
    if time.time() - path.stat().st_mtime > CACHE_DAYS * 86400:
        return None
    return json.loads(path.read_text())


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory):
    """pip's resolution per version, started together: {version: cached dict | running process}."""
    started = {}
    pending = [v for v in CHECKED if _recent_success(v) is None]
    if pending and not _pypi_reachable():
        pytest.skip("PyPI is unreachable (offline): `make wheels` checks the wheels where it is reachable")
    work = tmp_path_factory.mktemp("wheels")
    for version in CHECKED:
        cached = _recent_success(version)
        if cached is not None:
            started[version] = cached
            continue
        report = work / f"report-{version}.json"
        started[version] = (report, subprocess.Popen(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
             "--disable-pip-version-check", "--only-binary=:all:", "--python-version", version,
             "--target", str(work / f"target-{version}"), "--report", str(report), *requirements()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    yield started
    for value in started.values():
        if isinstance(value, tuple) and value[1].poll() is None:
            value[1].kill()


@pytest.mark.parametrize("version", CHECKED)
def test_every_dependency_of_every_extra_resolves_to_wheels_for_the_newer_python(resolutions, version):
    result = resolutions[version]
    if isinstance(result, tuple):
        report, process = result
        out, err = process.communicate(timeout=600)
        errors = [line for line in err.splitlines() if line.startswith("ERROR")]
        assert process.returncode == 0, f"no wheels for Python {version}:\n" + "\n".join(errors or [err[-3000:]])
        installs = json.loads(report.read_text())["install"]
        result = {"python": version, "platform": sysconfig.get_platform(),
                  "wheels": sorted(i["download_info"]["url"].rsplit("/", 1)[-1] for i in installs),
                  "names": sorted(canonicalize_name(i["metadata"]["name"]) for i in installs)}
        assert all(w.endswith(".whl") for w in result["wheels"])
        _cache_file(version).parent.mkdir(parents=True, exist_ok=True)
        _cache_file(version).write_text(json.dumps(result, indent=1))

    wanted = {canonicalize_name(Requirement(r).name) for r in requirements()}
    assert wanted <= set(result["names"]), f"not resolved: {wanted - set(result['names'])}"
    assert all(w.endswith(".whl") for w in result["wheels"])
