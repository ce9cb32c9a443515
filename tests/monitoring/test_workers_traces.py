"""Kept traces and error groups across pre-fork workers
(``pulsetrace.monitoring.traces_merge``): under real gunicorn ``-w 4``
started with ``pulsetrace-run``, the master (which serves the monitoring
endpoints and no request) shows every worker's traces with their exact span
trees, resolves each by id, and counts errors exactly, a worker killed with
SIGKILL included once; an error-rate alert's example trace resolves there.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import prefork
import pytest
from alert_support import SECRET, Receiver
from test_workers_merge import serving  # noqa: F401 (a fixture)

import pulsetrace
from pulsetrace.monitoring import apm
from servers import free_port

HERE = Path(__file__).resolve().parent
RUN = str(Path(sys.executable).with_name("pulsetrace-run"))


def _get(port: int, path: str) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON body or None, headers)."""
    status, body, headers = prefork.get(port, path)
    try:
        return status, json.loads(body), headers
    except ValueError:
        return status, None, headers


_until = prefork.until


class Gunicorn(prefork.Gunicorn):
    """``pulsetrace-run gunicorn -w 4 traces_app:app``, every trace kept,
    the monitoring server on ``mport``."""

    def __init__(self, tmp_path: Path, **env_extra: str) -> None:
        env = dict(PULSETRACE_SAMPLE_RATE="1.0", PULSETRACE_EXPORT_INTERVAL_MS="50")
        super().__init__(tmp_path, "traces_app:app", "traces-test", **env, **env_extra)

    def requests(self, paths: list[str]) -> list[tuple[str, int, str]]:
        """Each path requested (8 threads): (path, worker pid, trace id)."""

        def one(path: str) -> tuple[str, int, str]:
            status, _, headers = _get(self.port, path)
            assert status == (200 if path == "/work" else 500), (path, status)
            return path, int(headers["X-Pid"]), headers["X-Trace-Id"]

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, paths))


def _mix(n: int) -> list[str]:
    """``n`` requests: 3 in 5 succeed, 1 in 5 raises KeyError, 1 ValueError."""
    return [("/work", "/fail", "/work", "/refuse", "/work")[i % 5] for i in range(n)]


def _served(app: Gunicorn, rounds_of: int = 50, workers: int = 3):
    """Rounds of requests until at least ``workers`` workers served."""
    done: list[tuple[str, int, str]] = []
    while len({pid for _, pid, _ in done}) < workers and len(done) < 500:
        done += app.requests(_mix(rounds_of))
    assert len({pid for _, pid, _ in done}) >= workers, done
    return done


def _errors(mport: int) -> dict[str, int]:
    """``/apm/errors``' counts by exception type."""
    _, body, _ = _get(mport, "/apm/errors")
    out: dict[str, int] = {}
    for g in body["errors"]:
        out[g["type"]] = out.get(g["type"], 0) + g["count"]
    return out


def _want_errors(done: list[tuple[str, int, str]]) -> dict[str, int]:
    return {
        "KeyError": sum(p == "/fail" for p, _, _ in done),
        "ValueError": sum(p == "/refuse" for p, _, _ in done),
    }


def _shape(nodes: list[dict[str, Any]]) -> list[Any]:
    """A span tree as (name, status, children) lists."""
    return [[n["name"], n["status"], _shape(n["children"])] for n in nodes]


SHAPES = {
    "/work": [["GET /work", "unset", [["load", "unset", [["query", "unset", []]]]]]],
    "/fail": [["GET /fail", "error", []]],
    "/refuse": [["GET /refuse", "error", []]],
}


def _check_trees(mport: int, done: list[tuple[str, int, str]]) -> None:
    """Every trace resolves at the master with its exact span tree."""
    for path, _, tid in done:
        status, body, _ = _get(mport, f"/apm/traces/{tid}")
        assert status == 200, (path, tid, body)
        assert body["trace_id"] == tid and body["operation"] == f"GET {path}"
        assert _shape(body["tree"]) == SHAPES[path], (path, body["tree"])
        assert body["spans"] == (3 if path == "/work" else 1)
        assert body["error"] is (path != "/work")
        root = body["tree"][0]
        assert root["trace_id"] == tid and root["parent_span_id"] is None
        child = root["children"][0] if root["children"] else None
        if child is not None:
            assert child["parent_span_id"] == root["span_id"]
            assert child["children"][0]["parent_span_id"] == child["span_id"]


def test_gunicorn_traces_and_errors_of_every_worker_and_of_a_killed_one(tmp_path):
    pytest.importorskip("gunicorn")
    app = Gunicorn(tmp_path)
    try:
        done = _served(app)
        want = _want_errors(done)
        pids = {pid for _, pid, _ in done}
        assert app.proc.pid not in pids  # the master serves no request

        def listed() -> set[str]:
            _, body, _ = _get(app.mport, "/apm/traces?limit=1000")
            return {t["trace_id"] for t in body["traces"]}

        ids = {tid for _, _, tid in done}
        _until(
            lambda: ids <= listed(),
            lambda: f"{len(ids - listed())} of {len(ids)} traces missing: {app.output()}",
        )
        _until(lambda: _errors(app.mport) == want, lambda: f"{_errors(app.mport)} != {want}")
        # Traces from several workers, each with its exact tree.
        assert len({pid for _, pid, tid in done if tid in listed()}) >= 3
        _check_trees(app.mport, done)
        # The filters, over the whole application.
        _, body, _ = _get(app.mport, "/apm/traces?error=true&limit=1000")
        failed = {tid for p, _, tid in done if p != "/work"}
        assert {t["trace_id"] for t in body["traces"]} == failed
        _, body, _ = _get(app.mport, "/apm/traces?operation=GET%20/work&limit=1000")
        assert {t["trace_id"] for t in body["traces"]} == {
            tid for p, _, tid in done if p == "/work"
        }
        assert body["buffered"] >= len(ids)
        _, body, _ = _get(app.mport, "/apm/traces?min_duration_ms=100000")
        assert body["traces"] == []
        _, body, _ = _get(app.mport, "/apm/errors")
        (key,) = [g for g in body["errors"] if g["type"] == "KeyError"]
        assert key["location"].endswith(" in fail") and "traces_app.py:" in key["location"]
        assert key["sample_trace_id"] in failed and key["first_seen"] <= key["last_seen"]
        assert body["groups"] == 2 and body["groups_overflowed"] == 0

        # A worker killed with SIGKILL once everything it served is shown:
        # gunicorn replaces it; its errors stay, counted once, its traces stay.
        victim = max(pids, key=lambda p: sum(pid == p and q != "/work" for q, pid, _ in done))
        assert any(pid == victim and q != "/work" for q, pid, _ in done)
        os.kill(victim, signal.SIGKILL)
        more = app.requests(_mix(50))
        assert victim not in {pid for _, pid, _ in more}
        want = _want_errors(done + more)
        _until(lambda: _errors(app.mport) == want, lambda: f"{_errors(app.mport)} != {want}")
        _, body, _ = _get(app.mport, "/apm/status")
        assert any(w["pid"] == victim and not w["alive"] for w in body["workers"])
        time.sleep(2.5)  # the dead worker folded, more copies published
        assert _errors(app.mport) == want
        _check_trees(app.mport, [d for d in done + more if d[1] == victim or d in more])
    finally:
        app.kill()


def _rules(tmp_path: Path) -> Path:
    rules = tmp_path / "rules.json"
    condition = {
        "kind": "error_ratio",
        "operation": "GET /fail",
        "threshold": 0.05,
        "window": "5m",
        "min_count": 5,
    }
    rule = {"id": "fail-errors", "name": "Failing", "severity": "critical", "condition": condition}
    rules.write_text(json.dumps({"rules": [rule]}))
    return rules


def test_gunicorn_alert_links_a_trace_the_serving_process_resolves(tmp_path):
    """The evaluating worker's example trace comes from the merged view, and
    the link (to the monitoring server, the master) resolves there."""
    pytest.importorskip("gunicorn")
    rx = Receiver()
    clock = tmp_path / "clock"
    t0 = time.time()
    clock.write_text(repr(t0))
    mport = free_port()
    app = Gunicorn(
        tmp_path,
        mport=str(mport),
        PULSETRACE_ALERT_RULES=str(_rules(tmp_path)),
        PULSETRACE_ALERT_INTERVAL_MS="100",
        ALERT_WEBHOOK_URL=rx.url + "/webhook",
        ALERT_WEBHOOK_SECRET=SECRET,
        PULSETRACE_SMS_WEBHOOK_URL=rx.url + "/sms",
        ALERT_TEST_CLOCK=str(clock),
    )
    try:
        done = _served(app)
        failing = {tid for p, _, tid in done if p == "/fail"}

        def link() -> Optional[str]:
            for got in rx.got:
                if got["json"].get("trace_url"):
                    return str(got["json"]["trace_url"])
            return None

        _until(lambda: rx.paths(), lambda: f"the first step: {app.output()}")
        clock.write_text(repr(t0 + 15 * 60))  # the next step looks for a trace again
        url = _until(link, lambda: f"a link to a trace: {rx.got}")
        assert url.startswith(f"http://127.0.0.1:{mport}/apm/traces/")
        tid = url.rsplit("/", 1)[1]
        assert tid in failing  # a worker's trace of the failing operation
        # The evaluating worker may have picked a trace of its own ring that
        # its next copy (within a second) publishes: it resolves by then.
        _, body, _ = _until(
            lambda: (got := _get(mport, f"/apm/traces/{tid}"))[0] == 200 and got,
            lambda: f"{tid} at the monitoring server: {_get(mport, f'/apm/traces/{tid}')}",
            timeout=5.0,
        )
        assert body["operation"] == "GET /fail" and body["error"] is True
        assert _shape(body["tree"]) == SHAPES["/fail"]
    finally:
        app.kill()
        rx.close()


# --- in this process, with a forked child ---------------------------------------


def test_a_forked_child_publishes_its_own_traces_not_its_parents(serving):  # noqa: F811
    """The serving process's traces and errors are its own; a child forked
    from it publishes only what it recorded itself (not the ring it
    inherited): each error counted once, each trace listed once."""
    from test_workers_merge import _child, _record

    apm.RING.clear()
    _record("job", 2, errors=2)
    pulsetrace.flush()
    _until(lambda: apm.RING.counters()["ring_traces"] == 2, "the parent's traces")
    pid, w = _child("job", 3, errors=3, stay=False)
    os.close(w)
    assert os.waitpid(pid, 0)[1] == 0

    def counts() -> tuple[int, int]:
        _, body, _ = _get(serving, "/apm/errors")
        _, listed, _ = _get(serving, "/apm/traces?limit=1000")
        errors = sum(g["count"] for g in body["errors"] if g["operation"] == "job")
        return errors, len([t for t in listed["traces"] if t["operation"] == "job"])

    _until(lambda: counts() == (5, 5), counts)
    time.sleep(1.0)  # folded, read again
    assert counts() == (5, 5)
