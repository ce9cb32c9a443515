"""Importing pulsetrace starts no thread, reads no variable and warns about
nothing; the agent starts on first use. Each case runs in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, os, sys, threading

def threads():
    # Native threads (the core's worker) are not in threading.enumerate().
    return {
        "os": len(os.listdir("/proc/self/task")),
        "python": threading.active_count(),
        "names": sorted(t.name for t in threading.enumerate()),
    }

before = threads()
import pulsetrace
after_import = threads()
print("--- imported", file=sys.stderr, flush=True)
exec(sys.argv[1])
print(json.dumps({
    "before": before,
    "import": after_import,
    "use": threads(),
}))
"""


def run(first_use: str, **env: str) -> tuple[dict, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))}
    clean.update(OTEL_TRACES_EXPORTER="none", **env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, first_use],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    before_use, _, after_use = out.stderr.partition("--- imported\n")
    return json.loads(out.stdout), before_use, after_use


@pytest.mark.parametrize(
    "first_use",
    [
        "with pulsetrace.start_span('x'): pass",
        "from pulsetrace import start_span\nwith start_span('x'): pass",
        "pulsetrace.latency()",
        "pulsetrace.configure(sample_rate=1.0)",
        "pulsetrace.add_exporter(pulsetrace.InMemorySpanExporter())",
        "import pulsetrace.auto",
    ],
)
def test_import_starts_nothing_and_first_use_starts_the_agent(first_use):
    # A bad value: its warning says when the environment is read.
    r, at_import, at_use = run(first_use, PULSETRACE_MAX_EVENTS="lots")
    assert r["import"] == r["before"], "import started a thread"
    assert r["import"]["names"] == ["MainThread"]
    assert at_import == "", "import read the environment"
    assert r["use"]["os"] > r["before"]["os"], "the core's worker runs after first use"
    assert at_use.count("PULSETRACE_MAX_EVENTS='lots' is not an integer") == 1


def test_each_bad_variable_is_warned_about_once_however_often_the_configuration_is_used():
    code = (
        "import pulsetrace.auto\n"
        "pulsetrace.configure(sample_rate=1.0)\n"
        "pulsetrace.configure()\n"
        "from pulsetrace.export.otlp_exporter import OtlpSpanExporter\n"
        "OtlpSpanExporter().shutdown(1)\n"
        "with pulsetrace.start_span('x'): pass\n"
        "pulsetrace.get_config(); pulsetrace.latency()"
    )
    _, at_import, at_use = run(
        code, PULSETRACE_RATE_LIMIT="oops", OTEL_EXPORTER_OTLP_COMPRESSION="zip"
    )
    assert at_import == ""
    assert at_use.count("PULSETRACE_RATE_LIMIT=") == 1
    assert at_use.count("OTEL_EXPORTER_OTLP_COMPRESSION=") == 1


def test_start_span_is_still_the_native_method():
    """Lazy start adds no Python frame to the hot path."""
    import inspect

    import pulsetrace

    assert inspect.isbuiltin(pulsetrace.start_span)
