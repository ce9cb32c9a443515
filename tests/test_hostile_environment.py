"""Every variable of the README's configuration table, given hostile values
(huge, negative, zero, float, NaN, empty, bytes that are not UTF-8, 1 MB
long): the application starts, pulsetrace warns once per unusable variable,
naming it, and still traces, within a sane amount of memory.

One process per kind of value, with every variable set to it at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional, Union

import pytest

from pulsetrace.config import Config, OtlpConfig, range_problem

README = Path(__file__).resolve().parent.parent / "README.md"
ONE_MB = 1 << 20

VALUES: dict[str, Union[str, bytes]] = {
    "huge": "99999999999999999999999",
    "negative": "-5",
    "zero": "0",
    "float": "2.5",
    "nan": "nan",
    "empty": "",
    "not_utf8": b"\xff\xfe1",
    "one_mb": "7" * ONE_MB,
}

#: Any non-empty text (short enough, valid UTF-8) is a usable value of these.
FREE_TEXT = {
    "OTEL_SERVICE_NAME",
    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
    "PULSETRACE_REDACT_QUERY_PARAMS",
    "PULSETRACE_KEEP_ATTRIBUTES",
    "PULSETRACE_LOGS_FLUENTD_TAG",
    "PULSETRACE_SCRUB_FIELDS",
    "PULSETRACE_MONITORING_TOKEN",
    "SMTP_HOST",
    "SMTP_USERNAME",
    "PULSETRACE_APP_ID",  # any text names the application (made file-safe)
    # Regular expressions: every hostile text of the sweep is a valid one.
    "PULSETRACE_EXCLUDED_URLS",
    "OTEL_PYTHON_EXCLUDED_URLS",
    "OTEL_PYTHON_FLASK_EXCLUDED_URLS",
    "OTEL_PYTHON_DJANGO_EXCLUDED_URLS",
    "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS",
    "OTEL_PYTHON_STARLETTE_EXCLUDED_URLS",
}
#: Valid values that turn tracing off: not set in a sweep that must trace.
OFF_SWITCHES = {("APM_ENABLED", "zero")}


def readme_variables() -> list[str]:
    """Every variable the README's configuration table documents (a row
    naming a family of variables contributes one member of it)."""
    names: list[str] = []
    for line in README.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        first = line.strip("|").split(" | ")[0]
        found = re.findall(r"`([A-Z][A-Z0-9_<>]+)`", first)
        if "`_TRACES_` form too" in first:
            found += [n.replace("_OTLP_", "_OTLP_TRACES_") for n in found]
        names += [n.replace("<NAME>", "FLASK") for n in found]
    # The OpenTelemetry API's own variable (the bridge only sets it when the
    # application has not): nothing of pulsetrace's reads or warns about it.
    return [n for n in names if n != "OTEL_PYTHON_TRACER_PROVIDER"]


def _field(var: str) -> Optional[dataclasses.Field]:
    generic = var.replace("_OTLP_TRACES_", "_OTLP_").replace(
        "PULSETRACE_FLASK_", "PULSETRACE_<NAME>_"
    )
    for cls in (Config, OtlpConfig):
        for f in dataclasses.fields(cls):
            s = f.metadata.get("setting")
            if s and generic in s.env:
                return f
    return None


def usable(var: str, kind: str) -> bool:
    """Whether the hostile value of ``kind`` is a usable value of ``var``
    (no warning expected)."""
    if kind == "empty":
        return True  # the same as unset
    if kind in ("not_utf8", "one_mb"):
        return False
    raw = VALUES[kind]
    assert isinstance(raw, str)
    if var in FREE_TEXT:
        return True
    f = _field(var)
    if "_INSECURE" in var:
        return False  # the OpenTelemetry spelling only: true or false
    boolean = f is not None and isinstance(f.default, bool)
    if var.endswith("_ENABLED") or var == "OTEL_SDK_DISABLED" or boolean:
        return kind == "zero"  # 0 is false
    s = f.metadata["setting"] if f else None
    if s is None or s.high is None:
        return False  # a choice, an address, a URL, a file, key=value pairs
    integer = isinstance(f.default, int)
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        return False
    return value == value and range_problem(value, s) is None


CHILD = r"""
import json, os, sys
one_mb = json.loads(sys.argv[1])
# Set here: the kernel refuses a single variable over 128 KiB at exec.
for var in one_mb:
    os.environ[var] = "7" * (1 << 20)
import pulsetrace
with pulsetrace.start_span("hostile", kind="server"):
    pass
flushed = pulsetrace.flush(5)
rows = [r for r in pulsetrace.latency() if r["name"] == "hostile"]
print(json.dumps({
    "count": rows[0]["count"] if rows else 0,
    "flushed": flushed,
    # The peak of this process's own memory (VmHWM): ru_maxrss would also
    # count the parent's memory copied at fork, before exec.
    "rss_mb": next(
        int(line.split()[1]) / 1024
        for line in open("/proc/self/status")
        if line.startswith("VmHWM:")
    ),
}))
"""


def test_the_sweep_covers_the_whole_table():
    variables = readme_variables()
    assert len(variables) >= 40
    assert {"PULSETRACE_INTAKE_QUEUE_SIZE", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"} <= set(variables)
    for var in variables:
        assert _field(var) is not None, f"{var} is in the README but no Config field reads it"


@pytest.mark.parametrize("kind", list(VALUES))
def test_hostile_values_in_every_variable_start_warn_and_trace(kind, tmp_path):
    variables = [v for v in readme_variables() if (v, kind) not in OFF_SWITCHES]
    env: dict[Union[str, bytes], Union[str, bytes]] = {
        k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))
    }
    env.pop("APM_ENABLED", None)
    env.pop("LOG_LEVEL", None)
    env.pop("PROMETHEUS_ENABLED", None)
    one_mb = []
    for var in variables:
        if kind == "one_mb":
            one_mb.append(var)
        else:
            env[var] = VALUES[kind]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(one_mb)],
        env=env,
        cwd=tmp_path,  # no file there is a certificate
        capture_output=True,
        timeout=60,
    )
    stderr = out.stderr.decode("utf-8", "replace")
    assert out.returncode == 0, stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["count"] == 1, "the span was recorded"
    assert result["flushed"]
    # Without the values: about 30 MB; each 1 MB value is held a few times
    # (os.environ's bytes and text).
    assert result["rss_mb"] < (400 if kind == "one_mb" else 150), result
    warnings = [line for line in stderr.splitlines() if line.startswith("pulsetrace: ")]
    assert "Traceback" not in stderr, stderr[-3000:]
    for line in warnings:
        assert len(line) < 400, "a warning quotes at most 64 characters of a value"
    for var in variables:
        named = [w for w in warnings if re.match(rf"pulsetrace: {var}[= ]", w)]
        expected = 0 if usable(var, kind) else 1
        assert len(named) == expected, (var, kind, named)


EXPORT_CHILD = r"""
import atexit, json, threading, time

def report():  # registered first, so it runs after pulsetrace's exit flush
    result["exported"] = [s.name for s in exporter.spans()]
    print(json.dumps(result))

atexit.register(report)
import pulsetrace
from pulsetrace import _runtime

exporter = pulsetrace.InMemorySpanExporter()
pulsetrace.add_exporter(exporter)
with pulsetrace.start_span("kept") as span:
    span.set_status("error")
time.sleep(0.5)
result = {
    "export_thread_alive": any(t.name == "pulsetrace-export" for t in threading.enumerate()),
    "interval_s": _runtime._worker.interval_s,
}
"""


def test_a_huge_export_interval_is_clamped_and_the_export_thread_survives():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))}
    env.update(PULSETRACE_EXPORT_INTERVAL_MS="1e30", OTEL_TRACES_EXPORTER="none")
    out = subprocess.run(
        [sys.executable, "-c", EXPORT_CHILD], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "Exception in thread" not in out.stderr, out.stderr
    assert (
        "PULSETRACE_EXPORT_INTERVAL_MS='1e30' is above the maximum (3600000); using 3600000"
        in out.stderr
    )
    result = json.loads(out.stdout)
    assert result["export_thread_alive"]
    assert result["interval_s"] == 3600.0
    assert result["exported"] == ["kept"]
