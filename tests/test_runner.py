"""Entry points with real processes: pulsetrace-run, gunicorn with several
workers (fork), flush on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

RUN = shutil.which("pulsetrace-run") or str(Path(sys.executable).with_name("pulsetrace-run"))
TESTS = Path(__file__).parent


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))}
    # No OTLP receiver in these tests: export to the in-process exporters only.
    e["OTEL_TRACES_EXPORTER"] = "none"
    e.update(extra)
    return e


def test_runner_usage_and_missing_command():
    r = subprocess.run([RUN], capture_output=True, text=True)
    assert r.returncode == 2 and "usage: pulsetrace-run" in r.stderr
    r = subprocess.run([RUN, "no-such-program-xyz"], capture_output=True, text=True)
    assert r.returncode == 127
    assert "no-such-program-xyz: command not found" in r.stderr


def test_runner_instruments_python_and_chains_the_users_sitecustomize(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['USER_SITE_RAN'] = '1'\n")
    code = (
        "import os, sys; import flask; import pulsetrace.contrib as c;"
        "print(os.environ.get('USER_SITE_RAN'), 'pulsetrace.auto' in sys.modules, c.instrumented())"
    )
    r = subprocess.run(
        [RUN, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env(PYTHONPATH=str(tmp_path)),
        check=True,
    )
    assert r.stdout.split() == ["1", "True", "['flask']"]


def test_a_bad_setting_is_one_warning_and_help_none():
    # The runner's own process neither reads the settings nor starts the
    # agent: only the application's process does, once.
    bad = env(PULSETRACE_SAMPLE_RATE="lots")
    r = subprocess.run(
        [RUN, sys.executable, "-c", "print('ran')"], capture_output=True, text=True, env=bad
    )
    assert r.returncode == 0 and r.stdout == "ran\n"
    assert r.stderr.count("PULSETRACE_SAMPLE_RATE='lots'") == 1, r.stderr
    assert r.stderr.count("pulsetrace") == 1, r.stderr
    r = subprocess.run([RUN, "--help"], capture_output=True, text=True, env=bad)
    assert r.returncode == 0 and r.stdout == ""
    assert r.stderr.startswith("usage: pulsetrace-run")
    assert "lots" not in r.stderr and "not a number" not in r.stderr, r.stderr


def test_runner_passes_the_exit_status_through():
    r = subprocess.run([RUN, sys.executable, "-c", "raise SystemExit(3)"], env=env())
    assert r.returncode == 3


def test_kill_switch_patches_nothing():
    code = "import flask, pulsetrace.contrib as c; print(c.instrumented())"
    r = subprocess.run(
        [RUN, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env(APM_ENABLED="false"),
        check=True,
    )
    assert r.stdout.strip() == "[]"


def test_per_integration_toggles():
    code = "import flask, pulsetrace.contrib as c; print(c.instrumented())"
    for extra in (
        {"PULSETRACE_FLASK_ENABLED": "false"},
        {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "redis,flask"},
    ):
        r = subprocess.run(
            [RUN, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env(**extra),
            check=True,
        )
        assert r.stdout.strip() == "[]", extra


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


@pytest.mark.slow
def test_gunicorn_workers_each_trace_their_own_requests():
    pytest.importorskip("gunicorn")
    port = free_port()
    proc = subprocess.Popen(
        [RUN, "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "contrib.flask_app:app"],
        cwd=TESTS,
        env=env(
            PYTHONPATH=str(TESTS), PULSETRACE_SAMPLE_RATE="1", PULSETRACE_ADAPTIVE_PERCENTILE="0"
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                fetch(f"http://127.0.0.1:{port}/users/0")
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        served: dict[int, int] = {}
        for i in range(1, 400):
            pid = json.loads(fetch(f"http://127.0.0.1:{port}/users/{i}"))["pid"]
            served[pid] = served.get(pid, 0) + 1
            if len(served) == 2 and min(served.values()) >= 10:
                break
        assert len(served) == 2, "both workers served requests"
        seen: dict[int, list[dict[str, str]]] = {}
        deadline = time.monotonic() + 20
        while set(seen) != set(served) and time.monotonic() < deadline:
            data = json.loads(fetch(f"http://127.0.0.1:{port}/_spans"))
            seen[data["pid"]] = data["spans"]
        assert set(seen) == set(served)
        for pid, spans in seen.items():
            users = [s for s in spans if s["name"] == "GET /users/<int:user_id>"]
            # Each worker traced exactly the requests it served (the first
            # readiness probe may have gone to either).
            assert served[pid] <= len(users) <= served[pid] + 1, (pid, served, len(users))
        ids = [s["span_id"] for spans in seen.values() for s in spans]
        assert len(ids) == len(set(ids)), "no id reused across forked workers"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


SIGTERM_SCRIPT = r"""
import json, os, signal, sys, time
import pulsetrace.auto
import pulsetrace

class FileExporter:
    def export(self, traces):
        with open(sys.argv[1], "a") as f:
            for t in traces:
                for s in t:
                    f.write(json.dumps(s.name) + "\n")
        return pulsetrace.ExportResult.SUCCESS
    def force_flush(self, timeout=30.0):
        return True
    def shutdown(self, timeout=30.0):
        pass

pulsetrace.configure(sample_rate=1.0, export_interval_ms=60_000)
pulsetrace.add_exporter(FileExporter())
for i in range(5):
    with pulsetrace.start_span(f"request {i}"):
        pass
print("ready", flush=True)
time.sleep(30)
"""


def test_spans_are_flushed_on_sigterm(tmp_path):
    out = tmp_path / "spans.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env=env(),
    )
    with proc.stdout:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        # It still dies of SIGTERM, as it would without pulsetrace.
        assert proc.wait(timeout=10) == -signal.SIGTERM
    names = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(names) == [f"request {i}" for i in range(5)]
