"""The frameworks' own test suites pass with pulsetrace as they do without it.

``scripts/run_framework_suite.py`` downloads the installed framework's sdist,
runs its ``tests/`` plainly and under ``pulsetrace-run``, and compares the
JUnit reports test by test (see its docstring). These tests run it for Flask
and Starlette and check that pulsetrace really ran inside the test process
(the framework class patched, server spans recorded): a comparison with the
agent switched off would prove nothing, and the last test shows the script
refuses such a run.

The sdists and the suites' extra packages (``requirements.txt`` here) are
downloaded once into ``~/.cache/pulsetrace/framework-suites``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "run_framework_suite.py"


def run_script(tmp_path: Path, *args: str) -> tuple[int, str, dict[str, Any]]:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--parallel", "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    result = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    return proc.returncode, proc.stdout, result


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("framework", ["flask", "starlette"])
def test_suite_passes_with_pulsetrace(framework: str, tmp_path: Path) -> None:
    code, output, result = run_script(tmp_path, framework)
    print(output)
    assert code == 0, output
    assert result["regressions"] == [], output
    plain, traced = result["runs"]["plain"], result["runs"]["pulsetrace"]
    # Both runs ran the whole suite.
    assert plain["counts"]["total"] > 400, output
    assert traced["counts"]["total"] == plain["counts"]["total"], output
    assert traced["counts"]["passed"] >= plain["counts"]["passed"], output
    # pulsetrace ran inside the pulsetrace run's test process, and only there.
    agent = traced["probe"]
    assert agent["auto_loaded"], output
    assert agent["framework_patched"], output
    assert framework in agent["instrumented"], output
    assert agent["server_spans"] > 100, output
    assert agent["internal_errors"] == {}, output
    assert not plain["probe"]["auto_loaded"], output
    assert not plain["probe"]["framework_patched"], output
    # The installed framework was tested, not the copy in the sdist.
    assert "site-packages" in agent["framework_file"], output


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_without_the_agent_is_refused(tmp_path: Path) -> None:
    """With the Flask integration switched off the suite still passes, but the
    script must not call that a pass: exit 2, and the probe says why."""
    code, output, result = run_script(
        tmp_path,
        "flask",
        "--select",
        "tests/test_basic.py",
        "--agent-env",
        "PULSETRACE_FLASK_ENABLED=false",
    )
    assert code == 2, output
    assert result["regressions"] == [], output
    agent = result["runs"]["pulsetrace"]["probe"]
    assert agent["auto_loaded"], output
    assert not agent["framework_patched"], output
    assert agent["server_spans"] == 0, output
    assert "flask.Flask was not patched by pulsetrace" in result["problems"], output


# ---------------------------------------------------------------- the comparison itself


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("run_framework_suite", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.test_a" name="test_ok" time="0.1"/>
<testcase classname="tests.test_a.TestC" name="test_p[x-1]" time="0.1">
  <failure message="assert 1 == 2">boom</failure></testcase>
<testcase classname="tests.test_a" name="test_skip" time="0"><skipped message="s"/></testcase>
<testcase classname="tests.test_a" name="test_teardown" time="0.1">
  <failure message="f">f</failure><error message="e">e</error></testcase>
</testsuite></testsuites>
"""


def test_junit_outcomes_and_keys(tmp_path: Path) -> None:
    script = load_script()
    path = tmp_path / "r.xml"
    path.write_text(JUNIT, encoding="utf-8")
    assert script.junit_outcomes(path) == {
        "tests.test_a::test_ok": "passed",
        "tests.test_a.TestC::test_p[x-1]": "failed",
        "tests.test_a::test_skip": "skipped",
        "tests.test_a::test_teardown": "error",
    }
    assert (
        script.junit_key("tests/test_a.py::TestC::test_p[x-1]") == "tests.test_a.TestC::test_p[x-1]"
    )
    assert script.junit_key("tests/sub/test_b.py::test_q") == "tests.sub.test_b::test_q"


def test_regressions_are_what_pulsetrace_made_worse() -> None:
    script = load_script()
    plain = {
        "a": "passed",
        "b": "failed",
        "c": "skipped",
        "d": "passed",
        "e": "passed",
        "f": "skipped",
        "g": "error",
    }
    traced = {
        "a": "passed",
        "b": "error",  # failing either way: not pulsetrace's
        "c": "failed",
        "d": "skipped",
        "f": "passed",
        "g": "passed",
        "h": "error",  # only in the pulsetrace run
    }
    assert script.regressions(plain, traced) == [
        ("c", "skipped", "failed"),
        ("d", "passed", "skipped"),
        ("e", "passed", "missing"),
        ("h", "missing", "error"),
    ]
