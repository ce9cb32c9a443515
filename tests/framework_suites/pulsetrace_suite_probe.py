"""A pytest plugin that ``scripts/run_framework_suite.py`` loads (``-p
pulsetrace_suite_probe``) into a framework's own test run, plain and with
pulsetrace: at the end of the session it writes, to the JSON file named by
``PULSETRACE_SUITE_PROBE_OUT``, whether pulsetrace was running in that very
process and what it saw (the framework class patched, server spans recorded,
pulsetrace's internal errors), and every test's node id.

It touches nothing while the tests run: in the plain run it never imports
pulsetrace, and the framework module is looked up in ``sys.modules`` only.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest

_nodeids: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "setup":
        _nodeids.append(report.nodeid)


def _agent(framework_module: str, framework_class: str) -> dict[str, Any]:
    """What pulsetrace did in this process (``active`` False: it was not loaded)."""
    out: dict[str, Any] = {
        "auto_loaded": "pulsetrace.auto" in sys.modules,
        "sitecustomize": getattr(sys.modules.get("sitecustomize"), "__file__", None),
    }
    module = sys.modules.get(framework_module)
    cls = getattr(module, framework_class, None) if module is not None else None
    out["framework_file"] = getattr(module, "__file__", None)
    out["framework_patched"] = bool(cls is not None and getattr(cls, "__pulsetrace_patched__", 0))
    if not out["auto_loaded"]:
        out.update(instrumented=[], server_spans=0, spans=0, internal_errors={}, otel_bridge=False)
        return out
    import pulsetrace
    from pulsetrace import _diag, contrib

    stats = pulsetrace.latency()
    out["instrumented"] = contrib.instrumented()
    out["server_spans"] = sum(s["count"] for s in stats if s["kind"] == "server")
    out["spans"] = sum(s["count"] for s in stats)
    out["operations"] = len(stats)
    out["internal_errors"] = _diag.internal_errors()
    otel = sys.modules.get("pulsetrace.otel")
    out["otel_bridge"] = bool(otel is not None and otel.installed())
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("PULSETRACE_SUITE_PROBE_OUT")
    if not path:
        return
    module = os.environ.get("PULSETRACE_SUITE_PROBE_MODULE", "flask")
    cls = os.environ.get("PULSETRACE_SUITE_PROBE_CLASS", "Flask")
    try:
        agent = _agent(module, cls)
    except Exception as exc:  # reported, never raised into the suite
        agent = {"probe_error": repr(exc)}
    agent["pid"] = os.getpid()
    agent["pytest"] = pytest.__version__
    agent["exitstatus"] = int(exitstatus)
    agent["nodeids"] = _nodeids
    with open(path, "w", encoding="utf-8") as f:
        json.dump(agent, f, indent=1, sort_keys=True)
