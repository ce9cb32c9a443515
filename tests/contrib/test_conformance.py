"""Every integration of the registry behaves alike, each checked in a fresh
interpreter (tests/contrib/conformance_probe.py) against the real library
and, where it needs one, a real server:

- patched before its library is imported (the lazy hook) and after, and
  when the application imports pulsetrace's hook module before the library
  (whose import, made by the hook module itself, fires the lazy hook);
- patching twice (``patch()`` and the registry again) keeps the same
  wrappers, and a call is still one span, not two;
- ``uninstrument`` puts back the very objects that were there (identity);
- ``PULSETRACE_<NAME>_ENABLED=false`` and ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``
  leave it unpatched;
- a small use of the library returns the same value and raises the same
  exception type patched and unpatched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pulsetrace.contrib import INTEGRATIONS

PROBE = Path(__file__).with_name("conformance_probe.py")
#: The logging integration wraps no library call (``wraps=False``): it
#: installs a handler on Python's logging (tests/logging/test_logs_level.py
#: covers its toggles and what it writes), so these checks do not apply.
NAMES = [i.name for i in INTEGRATIONS if i.wraps]
#: The servers each library needs, as (probe variable, fixture).
SERVERS = {
    "redis": ("PROBE_REDIS", "redis_server"),
    "psycopg": ("PROBE_POSTGRES", "postgres_server"),
    "psycopg2": ("PROBE_POSTGRES", "postgres_server"),
    "pymysql": ("PROBE_MYSQL", "mysql_server"),
    "pika": ("PROBE_RABBITMQ", "rabbitmq_server"),
    "aio_pika": ("PROBE_RABBITMQ", "rabbitmq_server"),
}
#: The standard library (possibly imported by the interpreter already).
STDLIB = {"sqlite3", "urllib"}
#: Spans one use makes (a call that succeeds, one that fails), per integration.
SPANS_PER_USE = {
    "flask": 2,
    "django": 2,
    "starlette": 2,
    "redis": 2,
    "requests": 2,
    "urllib3": 2,
    "httpx": 2,
    "urllib": 2,
    "aiohttp": 2,
    "sqlite3": 2,
    "psycopg": 2,
    "psycopg2": 2,
    "pymysql": 2,
    "sqlalchemy": 2,
    "pika": 2,
    "aio_pika": 2,
    "celery": 2,
}


def test_every_integration_has_a_use():
    assert set(SPANS_PER_USE) == set(NAMES)


def run_probe(request: Any, name: str, scenario: str, **env: str) -> dict[str, Any]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("APM_", "OTEL_", "PULSETRACE_", "PROBE_"))
    }
    environ.update(OTEL_TRACES_EXPORTER="none", **env)
    if name in SERVERS:
        var, fixture = SERVERS[name]
        server = request.getfixturevalue(fixture)
        environ[var] = f"{server.host}:{server.port}"
    proc = subprocess.run(
        [sys.executable, str(PROBE), name, scenario],
        env=environ,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-4000:]
    return json.loads(lines[-1])


@pytest.mark.parametrize("name", NAMES)
def test_patch_before_import(request, name):
    out = run_probe(request, name, "before_import")
    if name not in STDLIB:
        assert not out["imported_before"], "pulsetrace itself imported the library"
    assert out["chosen"] == [name]
    assert out["wrapped"]
    assert out["instrumented"] == [name]
    assert out["patched"]["spans"] == SPANS_PER_USE[name]


@pytest.mark.parametrize("name", NAMES)
def test_hook_module_imported_before_the_library(request, name):
    out = run_probe(request, name, "hook_first")
    assert out["internal_errors"] == {}
    assert out["chosen"] == [name]
    assert out["wrapped"]
    assert out["instrumented"] == [name]
    assert out["patched"]["spans"] == SPANS_PER_USE[name]


@pytest.mark.parametrize("name", NAMES)
def test_patch_after_import_twice_then_unpatch(request, name):
    out = run_probe(request, name, "after_import")
    bare = out["bare"]
    assert bare["spans"] == 0
    assert bare["error"] is not None, "the failing call must fail"
    assert out["chosen"] == [name]
    assert out["instrumented"] == [name]
    assert out["wrapped"]
    # The library behaves the same: value and exception type.
    for phase in ("patched", "patched_twice", "unpatched"):
        assert out[phase]["result"] == bare["result"], phase
        assert out[phase]["error"] == bare["error"], phase
    assert out["patched"]["spans"] == SPANS_PER_USE[name]
    assert out["patch_again"] is True
    assert out["same_wrappers"]
    assert out["patched_twice"]["spans"] == SPANS_PER_USE[name]
    assert out["restored"], "uninstrument must put the original objects back"
    assert out["unpatched"]["spans"] == 0
    assert out["instrumented_after"] == []


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "toggle",
    [
        lambda n: {f"PULSETRACE_{n.upper()}_ENABLED": "false"},
        lambda n: {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": f"somethingelse, {n}"},
    ],
    ids=["pulsetrace_enabled_false", "otel_disabled"],
)
def test_toggles_leave_it_unpatched(request, name, toggle):
    out = run_probe(request, name, "toggled", **toggle(name))
    assert out["chosen"] == []
    assert not out["wrapped_any"]
    assert out["use"]["spans"] == 0
    assert out["instrumented"] == []
