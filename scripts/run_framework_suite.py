#!/usr/bin/env python3
"""Run a web framework's own test suite twice, plainly and under pulsetrace,
and report every test that fails only with pulsetrace.

    python scripts/run_framework_suite.py flask [--work DIR] [--json OUT]
    python scripts/run_framework_suite.py starlette

For the framework version installed in this interpreter it downloads the
source distribution from PyPI (``pip download --no-binary :all: --no-deps``),
unpacks it, installs the extra packages its tests import (pinned in
``tests/framework_suites/requirements.txt``, into a folder of their own that
goes on ``PYTHONPATH``: the venv is not changed) and runs its ``tests/`` from
inside the unpacked tree, with the suite's own ``pyproject.toml`` as the only
pytest configuration (``--rootdir`` and ``-c``), so this project's settings do
not apply:

1. plainly: ``python -m pytest tests -p no:cacheprovider --junitxml=...``
2. with pulsetrace in every process: ``pulsetrace-run python -m pytest ...``
   (pulsetrace's ``sitecustomize`` imports ``pulsetrace.auto``).

Both runs get the same environment (``PULSETRACE_SAMPLE_RATE=1``,
``OTEL_TRACES_EXPORTER=none``, any other ``PULSETRACE_*``/``OTEL_*``/
``APM_*`` variable removed), so pulsetrace's ``sitecustomize`` is the only
difference. A small plugin (``tests/framework_suites/pulsetrace_suite_probe.py``)
reports from inside each test process whether pulsetrace was running there,
whether it patched the framework, how many server spans it recorded and its
internal errors.

The per-test outcomes of the two JUnit XML reports are compared. A test that
passes (or is skipped) plainly but fails, errors or is missing with
pulsetrace, or that passes plainly but is skipped with pulsetrace, is a
regression; each one is run again on its own, in both modes, to tell a
deterministic regression from a flaky one (reported, not forgiven).

Exit status: 0 no regression and pulsetrace was active; 1 a regression;
2 nothing can be concluded (pulsetrace not active in its run, or active in
the plain one; a run that produced no report; a download or install failure).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
SUITES_DIR = REPO / "tests" / "framework_suites"
REQUIREMENTS = SUITES_DIR / "requirements.txt"
PROBE = "pulsetrace_suite_probe"

#: Environment variables that configure pulsetrace (or an OpenTelemetry SDK):
#: removed from both runs, then the ones below are set for both.
_AGENT_PREFIXES = ("PULSETRACE_", "OTEL_", "APM_", "PROMETHEUS_")
#: Inherited variables that would change how pytest runs the suite.
_PYTEST_VARS = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_CURRENT_TEST", "PYTHONPATH")
AGENT_ENV = {"PULSETRACE_SAMPLE_RATE": "1", "OTEL_TRACES_EXPORTER": "none"}

MODES = ("plain", "pulsetrace")
OUTCOMES = ("passed", "failed", "skipped", "error")
FAILING = ("failed", "error", "missing")


@dataclass(frozen=True)
class Suite:
    #: The distribution on PyPI (and in this venv).
    dist: str
    #: The module and class pulsetrace marks ``__pulsetrace_patched__`` when it patches them.
    patched_module: str
    patched_class: str
    #: The integration's name in ``pulsetrace.contrib.instrumented()``.
    integration: str
    #: Names from ``requirements.txt`` the suite needs beyond the venv.
    requires: tuple[str, ...]
    #: Test paths inside the sdist.
    tests: tuple[str, ...] = ("tests",)
    #: Other distributions whose versions the report names.
    related: tuple[str, ...] = ()
    #: Folders of the sdist that would shadow the installed package when the
    #: suite's root goes on ``sys.path`` (moved aside: the installed one is tested).
    shadowing: tuple[str, ...] = ()


SUITES: dict[str, Suite] = {
    "flask": Suite(
        dist="flask",
        patched_module="flask",
        patched_class="Flask",
        integration="flask",
        requires=("pytest", "greenlet", "python-dotenv"),
        related=("werkzeug", "jinja2", "click", "blinker"),
    ),
    "starlette": Suite(
        dist="starlette",
        patched_module="starlette.applications",
        patched_class="Starlette",
        integration="starlette",
        requires=(
            "trio",
            "outcome",
            "sortedcontainers",
            "sniffio",
            "python-multipart",
            "pyyaml",
            "backports-zstd",
            "blockbuster",
            "forbiddenfruit",
        ),
        related=("anyio", "httpx2", "httpx"),
        shadowing=("starlette",),
    ),
}


def log(msg: str) -> None:
    print(msg, flush=True)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def default_work() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "pulsetrace" / "framework-suites"


class SetupError(Exception):
    """The suite cannot be prepared (download, unpack, install)."""


# ---------------------------------------------------------------- preparation


def pinned(names: tuple[str, ...]) -> list[str]:
    """The lines of requirements.txt for ``names`` (each must be pinned there)."""
    pins: dict[str, str] = {}
    for raw in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            pins[canonical(re.split(r"[=<>!~;\[ ]", line, maxsplit=1)[0])] = line
    missing = [n for n in names if canonical(n) not in pins]
    if missing:
        raise SetupError(f"not pinned in {REQUIREMENTS}: {', '.join(missing)}")
    return [pins[canonical(n)] for n in names]


def run_checked(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SetupError(f"{what} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")


def fetch_sdist(dist: str, version: str, work: Path) -> Path:
    """The sdist archive of ``dist==version``, downloaded once into ``work/sdist``."""
    folder = work / "sdist"

    def found() -> Optional[Path]:
        for path in sorted(folder.glob("*.tar.gz")):
            name, _, ver = path.name[: -len(".tar.gz")].rpartition("-")
            if canonical(name) == canonical(dist) and ver == version:
                return path
        return None

    archive = found() if folder.is_dir() else None
    if archive is None:
        folder.mkdir(parents=True, exist_ok=True)
        log(f"downloading the {dist} {version} sdist from PyPI")
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check"]
        cmd += ["--no-binary", ":all:", "--no-deps", "-d", str(folder), f"{dist}=={version}"]
        run_checked(cmd, "pip download")
        archive = found()
        if archive is None:
            names = ", ".join(p.name for p in folder.iterdir())
            raise SetupError(f"pip download left no {dist} {version} sdist in {folder} ({names})")
    return archive


def unpack(archive: Path, work: Path, suite: Suite) -> Path:
    """A fresh copy of the sdist tree (nothing left over from an earlier run)."""
    dest = work / "src"
    top = archive.name[: -len(".tar.gz")]
    tree = dest / top
    if tree.exists():
        shutil.rmtree(tree)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.split("/", 1)[0] == top]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - Python without extraction filters
            tar.extractall(dest, members=members)
    if not tree.is_dir():
        raise SetupError(f"{archive.name} has no top-level folder {top}/")
    for path in suite.tests:
        if not (tree / path).exists():
            raise SetupError(f"the {archive.name} sdist has no {path}/: no test suite to run")
    for name in suite.shadowing:
        if (tree / name).exists():
            (tree / name).rename(tree / f"_{name}_sdist_copy_not_imported")
    return tree


def install_deps(suite: Suite, work: Path) -> Path:
    """The suite's pinned extras, installed once into a folder keyed by the pins."""
    lines = pinned(suite.requires)
    key = hashlib.sha256("\n".join([sys.version, *lines]).encode()).hexdigest()[:12]
    target = work / f"deps-{suite.dist}-{key}"
    if (target / ".complete").exists():
        return target
    if target.exists():
        shutil.rmtree(target)
    log(f"installing into {target}: {' '.join(lines)}")
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    cmd += ["--no-deps", "--no-input", "--target", str(target), *lines]
    run_checked(cmd, "pip install")
    (target / ".complete").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


# ---------------------------------------------------------------- the runs


@dataclass
class RunResult:
    mode: str
    returncode: int
    seconds: float
    outcomes: dict[str, str]
    probe: dict[str, Any]
    log: Path
    counts: dict[str, int] = field(default_factory=dict)


def base_env(deps: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_AGENT_PREFIXES) and k not in _PYTEST_VARS
    }
    env.update(AGENT_ENV)
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join([str(deps), str(SUITES_DIR)])
    env["PY_COLORS"] = "0"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def pulsetrace_run() -> list[str]:
    script = Path(sys.executable).with_name("pulsetrace-run")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "pulsetrace.runner"]


def pytest_command(tree: Path, junit: Path, basetemp: Path, targets: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        *targets,
        "-p",
        "no:cacheprovider",
        "-p",
        PROBE,
        "-q",
        "-rfE",
        "--rootdir",
        str(tree),
        "-c",
        str(tree / "pyproject.toml"),
        f"--basetemp={basetemp}",
        f"--junitxml={junit}",
    ]


def junit_outcomes(path: Path) -> dict[str, str]:
    """``classname::name`` -> passed / failed / error / skipped (xfail counts as skipped)."""
    order = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
    out: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        key = f"{case.get('classname', '')}::{case.get('name', '')}"
        tags = {child.tag for child in case}
        if "error" in tags:
            outcome = "error"
        elif "failure" in tags:
            outcome = "failed"
        elif "skipped" in tags:
            outcome = "skipped"
        else:
            outcome = "passed"
        if key not in out or order[outcome] > order[out[key]]:
            out[key] = outcome
    return out


def junit_key(nodeid: str) -> str:
    """The ``classname::name`` pytest's JUnit report gives the test ``nodeid``."""
    path, *names = nodeid.split("::")
    dotted = re.sub(r"\.py$", "", path.replace("/", "."))
    parts = [dotted, *names]
    return f"{'.'.join(parts[:-1])}::{parts[-1]}"


@dataclass
class _Started:
    mode: str
    proc: subprocess.Popen[bytes]
    output: Any
    start: float
    junit: Path
    probe: Path
    log: Path


def run_suite(
    suite: Suite,
    tree: Path,
    deps: Path,
    work: Path,
    targets: list[str],
    agent_env: dict[str, str],
    timeout: float,
    parallel: bool = False,
    tag: str = "",
) -> dict[str, RunResult]:
    """The suite run in each mode, one after the other (both at once with ``parallel``)."""
    pending: list[_Started] = []
    results: dict[str, RunResult] = {}
    for mode in MODES:
        name = f"{suite.dist}-{mode}{tag}"
        junit, probe, out = work / f"{name}.xml", work / f"{name}.probe.json", work / f"{name}.log"
        for path in (junit, probe):
            path.unlink(missing_ok=True)
        env = base_env(deps, agent_env if mode == "pulsetrace" else {})
        env["PULSETRACE_SUITE_PROBE_OUT"] = str(probe)
        env["PULSETRACE_SUITE_PROBE_MODULE"] = suite.patched_module
        env["PULSETRACE_SUITE_PROBE_CLASS"] = suite.patched_class
        cmd = pytest_command(tree, junit, work / f"tmp-{name}", targets)
        if mode == "pulsetrace":
            cmd = [*pulsetrace_run(), *cmd]
        output = open(out, "w", encoding="utf-8")  # noqa: SIM115 - closed in finish()
        output.write(" ".join(cmd) + "\n\n")
        output.flush()
        proc = subprocess.Popen(
            cmd, cwd=tree, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        pending.append(_Started(mode, proc, output, time.monotonic(), junit, probe, out))
        if not parallel:
            results.update(wait_all(pending, timeout))
            pending.clear()
    results.update(wait_all(pending, timeout))
    return {mode: results[mode] for mode in MODES}


def wait_all(runs: list[_Started], timeout: float) -> dict[str, RunResult]:
    """Wait for the runs (killing a run's process group past ``timeout``), each
    timed to its own end, and read their reports."""
    done: dict[str, RunResult] = {}
    while len(done) < len(runs):
        for run in runs:
            if run.mode in done:
                continue
            rc = run.proc.poll()
            if rc is None and time.monotonic() - run.start > timeout:
                os.killpg(run.proc.pid, signal.SIGKILL)
                run.proc.wait()
                run.output.write(f"\n[killed after {timeout:.0f}s]\n")
                rc = -1
            if rc is not None:
                run.output.close()
                done[run.mode] = finish(run, rc, time.monotonic() - run.start)
        time.sleep(0.05)
    return done


def finish(run: _Started, rc: int, seconds: float) -> RunResult:
    outcomes: dict[str, str] = {}
    probe: dict[str, Any] = {}
    try:
        outcomes = junit_outcomes(run.junit) if run.junit.exists() else {}
        if run.probe.exists():
            probe = json.loads(run.probe.read_text(encoding="utf-8"))
    except (ET.ParseError, ValueError) as exc:  # a run killed while writing
        log(f"  {run.mode}: unreadable report: {exc}")
    counts = {k: sum(1 for o in outcomes.values() if o == k) for k in OUTCOMES}
    counts["total"] = len(outcomes)
    return RunResult(run.mode, rc, seconds, outcomes, probe, run.log, counts)


# ---------------------------------------------------------------- comparison


def regressions(plain: dict[str, str], traced: dict[str, str]) -> list[tuple[str, str, str]]:
    """(test, plain outcome, pulsetrace outcome) for every test pulsetrace made worse."""
    out = []
    for key in sorted(plain):
        before, after = plain[key], traced.get(key, "missing")
        worse = after in FAILING or after == "skipped"
        if (before == "passed" and worse) or (before == "skipped" and after in FAILING):
            out.append((key, before, after))
    for key in sorted(set(traced) - set(plain)):
        if traced[key] in FAILING:
            out.append((key, "missing", traced[key]))
    return out


def agent_problems(suite: Suite, plain: RunResult, traced: RunResult) -> list[str]:
    """Why the pulsetrace run does not prove anything (empty when it does)."""
    problems = []
    for run in (plain, traced):
        if not run.outcomes:
            problems.append(f"the {run.mode} run left no JUnit report (exit {run.returncode})")
        if not run.probe:
            problems.append(f"the {run.mode} run left no probe report (exit {run.returncode})")
        elif "probe_error" in run.probe:
            problems.append(f"the probe failed in the {run.mode} run: {run.probe['probe_error']}")
        elif run.returncode not in (0, 1):
            problems.append(f"pytest exited {run.returncode} in the {run.mode} run")
    if plain.probe.get("auto_loaded"):
        problems.append("pulsetrace was loaded in the plain run")
    p = traced.probe
    if p and "probe_error" not in p:
        if not p.get("auto_loaded"):
            problems.append("pulsetrace.auto was not loaded in the test process")
        if not p.get("framework_patched"):
            problems.append(
                f"{suite.patched_module}.{suite.patched_class} was not patched by pulsetrace"
            )
        if suite.integration not in p.get("instrumented", []):
            problems.append(f"{suite.integration!r} not in pulsetrace.contrib.instrumented()")
        if not p.get("server_spans"):
            problems.append("pulsetrace recorded no server span")
    return problems


def rerun(
    suite: Suite,
    tree: Path,
    deps: Path,
    work: Path,
    found: list[tuple[str, str, str]],
    traced: RunResult,
    agent_env: dict[str, str],
    timeout: float,
) -> dict[str, dict[str, str]]:
    """Each regression run again alone, plainly and with pulsetrace."""
    by_key = {junit_key(n): n for n in traced.probe.get("nodeids", [])}
    nodeids = [by_key[k] for k, _, _ in found if k in by_key][:50]
    if not nodeids:
        return {}
    runs = run_suite(suite, tree, deps, work, nodeids, agent_env, timeout, tag="-rerun")
    return {
        n: {m: r.outcomes.get(junit_key(n), "missing") for m, r in runs.items()} for n in nodeids
    }


# ---------------------------------------------------------------- report


def table(plain: RunResult, traced: RunResult) -> str:
    head = f"{'':12}{'total':>7}{'passed':>8}{'failed':>8}{'skipped':>9}{'errors':>8}{'time':>9}"
    rows = [head]
    for run in (plain, traced):
        c = run.counts
        rows.append(
            f"{run.mode:12}{c['total']:>7}{c['passed']:>8}{c['failed']:>8}"
            f"{c['skipped']:>9}{c['error']:>8}{run.seconds:>8.1f}s"
        )
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("framework", choices=sorted(SUITES))
    parser.add_argument("--work", type=Path, default=None, help=f"default: {default_work()}")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument(
        "--select",
        action="append",
        default=None,
        metavar="PATH",
        help="run only these test paths or node ids of the suite (repeatable)",
    )
    parser.add_argument(
        "--agent-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra variable for the pulsetrace run only (e.g. to check the probe)",
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="per pytest run (s)")
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="run the plain and the pulsetrace run at the same time (one core each)",
    )
    args = parser.parse_args(argv)

    suite = SUITES[args.framework]
    work = (args.work or default_work()).resolve()
    work.mkdir(parents=True, exist_ok=True)
    agent_env = dict(AGENT_ENV)
    for item in args.agent_env:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--agent-env {item!r}: expected KEY=VALUE")
        agent_env[key] = value

    started = time.monotonic()
    try:
        version = importlib.metadata.version(suite.dist)
    except importlib.metadata.PackageNotFoundError:
        log(f"{suite.dist} is not installed in {sys.executable}")
        return 2
    try:
        archive = fetch_sdist(suite.dist, version, work)
        tree = unpack(archive, work, suite)
        deps = install_deps(suite, work)
    except SetupError as exc:
        log(f"setup failed: {exc}")
        return 2
    targets = list(args.select or suite.tests)
    log(f"{suite.dist} {version}: running {' '.join(targets)} of {tree}")
    runs = run_suite(suite, tree, deps, work, targets, agent_env, args.timeout, args.parallel)
    for mode, run in runs.items():
        log(f"  {mode}: exit {run.returncode} in {run.seconds:.1f}s, output in {run.log}")
    plain, traced = runs["plain"], runs["pulsetrace"]

    problems = agent_problems(suite, plain, traced)
    found = regressions(plain.outcomes, traced.outcomes) if plain.outcomes else []
    reruns = rerun(suite, tree, deps, work, found, traced, agent_env, args.timeout) if found else {}
    failing = sorted(k for k, o in plain.outcomes.items() if o in FAILING)
    both = [k for k in failing if traced.outcomes.get(k, "missing") in FAILING]
    fixed = [k for k in failing if traced.outcomes.get(k) == "passed"]

    p = traced.probe
    log("")
    log(f"{suite.dist} {version} ({p.get('framework_file')}), sdist {archive.name}")
    log(f"with {', '.join(versions_of((*suite.related, 'pulsetrace')))}, pytest {p.get('pytest')}")
    log(table(plain, traced))
    log(
        f"pulsetrace in the test process: auto loaded {p.get('auto_loaded')}, "
        f"{suite.patched_class} patched {p.get('framework_patched')}, "
        f"instrumented {p.get('instrumented')}, {p.get('server_spans')} server spans "
        f"({p.get('spans')} spans), OpenTelemetry bridge {p.get('otel_bridge')}, "
        f"internal errors {p.get('internal_errors')}"
    )
    log(f"fail in both runs (not pulsetrace's): {len(both)}")
    for key in both:
        log(f"  {key}: {plain.outcomes[key]}")
    if fixed:
        log(f"fail plainly but pass with pulsetrace: {', '.join(fixed)}")
    log(f"tests that fail only with pulsetrace: {len(found)}")
    for key, before, after in found:
        log(f"  {key}: {before} plainly, {after} with pulsetrace")
    for nodeid, alone in reruns.items():
        log(f"  rerun alone {nodeid}: {alone}")
    for problem in problems:
        log(f"NOT CONCLUSIVE: {problem}")
    status = 2 if problems else (1 if found else 0)
    verdict = ("ok", "REGRESSION", "INCONCLUSIVE")[status]
    log(f"result: {verdict} in {time.monotonic() - started:.1f}s")

    if args.json:
        result = {
            "framework": suite.dist,
            "version": version,
            "sdist": archive.name,
            "status": status,
            "problems": problems,
            "regressions": [list(r) for r in found],
            "reruns": reruns,
            "fail_in_both": both,
            "runs": {
                mode: {
                    "returncode": r.returncode,
                    "seconds": round(r.seconds, 2),
                    "counts": r.counts,
                    "probe": {k: v for k, v in r.probe.items() if k != "nodeids"},
                }
                for mode, r in runs.items()
            },
        }
        args.json.write_text(json.dumps(result, indent=1, sort_keys=True), encoding="utf-8")
    return status


def versions_of(dists: tuple[str, ...]) -> list[str]:
    out = []
    for dist in dists:
        try:
            out.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


if __name__ == "__main__":
    sys.exit(main())
