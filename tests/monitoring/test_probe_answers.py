"""Probes answered from what is already computed: a rendering still fresh
is served by the server's I/O thread at once, even while every handler
thread waits on a hung dependency; a probe storm costs one rendering; and
no reuse shows an answer older than its documented bound (a check's TTL, a
switch of tracing, a newly registered check)."""

from __future__ import annotations

import threading
import time

import pytest
from monitoring_support import monitoring_server

import pulsetrace
import pulsetrace.health
from pulsetrace import _runtime
from pulsetrace._router import HttpError, Request, Response, Router, json_response
from pulsetrace.monitoring import apm, endpoints, reuse
from pulsetrace.monitoring import health as _health

TOKEN = "probe-token"


def test_fresh_renderings_are_answered_while_every_handler_thread_waits(monkeypatch):
    monkeypatch.setattr(apm, "TRANSACTIONS_TTL_S", 60.0)
    monkeypatch.setattr(apm, "STATUS_TTL_S", 60.0)
    monkeypatch.setattr(endpoints, "METRICS_TTL_S", 60.0)
    release = threading.Event()
    with monitoring_server() as client:
        with pulsetrace.start_span("checkout"):
            pass
        fresh = ["/apm/transactions", "/apm/status", "/health/metrics"]
        first = {path: client.get(path)[2] for path in fresh}
        pulsetrace.health.register("hung", lambda: release.wait(10) or True, timeout=8.0)
        # Four requests waiting on the hung check hold the server's four
        # handler threads.
        waiting = [
            threading.Thread(target=client.get, args=("/health/checks/hung",), daemon=True)
            for _ in range(4)
        ]
        for t in waiting:
            t.start()
        time.sleep(0.5)
        try:
            for path in fresh:
                t0 = time.monotonic()
                status, _, body = client.get(path, timeout=4.0)
                assert status == 200 and time.monotonic() - t0 < 2.0, path
                assert body == first[path]  # the same rendering
        finally:
            release.set()
            for t in waiting:
                t.join(10)


def test_a_storm_of_health_probes_costs_one_rendering(monkeypatch):
    monkeypatch.setattr(reuse, "HEALTH_RENDER_TTL_S", 60.0)
    renders = []
    summary = _health.summary
    monkeypatch.setattr(_health, "summary", lambda results: renders.append(1) or summary(results))
    with monitoring_server() as client:
        pulsetrace.health.register("db", lambda: True, ttl=60.0)
        for _ in range(20):
            status, _, body = client.get("/health")
            assert status == 200 and body["status"] == "pass"
        # The first probe runs the check (its handler renders), the second
        # renders from the cached result, the others reuse that rendering.
        assert len(renders) <= 2


def test_health_shows_a_result_no_older_than_the_checks_ttl(monkeypatch):
    monkeypatch.setattr(reuse, "HEALTH_RENDER_TTL_S", 60.0)
    healthy = [True]
    with monitoring_server(token=TOKEN) as client:
        pulsetrace.health.register("db", lambda: healthy[0], ttl=0.5)
        assert client.get("/health")[0] == 200
        assert client.get("/health/ready")[0] == 200
        healthy[0] = False
        t0 = time.monotonic()
        status = client.get("/health")[0]
        if time.monotonic() - t0 < 0.4:
            assert status == 200  # the check's cached result, as documented
        time.sleep(0.6)  # past the check's TTL: run again, whatever was rendered
        status, _, body = client.get("/health")
        assert status == 503 and body["checks"][0]["status"] == "fail"
        assert client.get("/health/ready")[2]["failing"] == ["db"]
        # A run on demand shows at once.
        healthy[0] = True
        assert client.post("/health/run", {}, token=TOKEN)[0] == 200
        assert client.get("/health")[0] == 200
        assert client.get("/health/ready")[0] == 200


def test_health_shows_a_check_registered_or_removed_at_once(monkeypatch):
    monkeypatch.setattr(reuse, "HEALTH_RENDER_TTL_S", 60.0)
    with monitoring_server() as client:
        pulsetrace.health.register("db", lambda: True, ttl=60.0)
        for _ in range(2):
            assert [c["name"] for c in client.get("/health")[2]["checks"]] == ["db"]
        pulsetrace.health.register("cache", lambda: True, ttl=60.0)
        names = [c["name"] for c in client.get("/health")[2]["checks"]]
        assert names == ["db", "cache"]
        pulsetrace.health.unregister("cache")
        assert [c["name"] for c in client.get("/health")[2]["checks"]] == ["db"]


def test_status_shows_tracing_switched_at_once(monkeypatch):
    monkeypatch.setattr(apm, "STATUS_TTL_S", 60.0)
    with monitoring_server(token=TOKEN) as client:
        assert client.get("/apm/status")[2]["enabled"] is True
        assert client.get("/apm/status")[2]["enabled"] is True
        tracer = _runtime.tracer()
        tracer.enabled = False
        try:
            assert client.get("/apm/status")[2]["status"] == "disabled"
        finally:
            tracer.enabled = True
        assert client.get("/apm/status")[2]["status"] == "enabled"
        client.post("/apm/control", {"sample_rate": 0.25}, token=TOKEN)
        assert client.get("/apm/status")[2]["sample_rate"] == 0.25


def test_status_counts_are_no_older_than_its_ttl(monkeypatch):
    monkeypatch.setattr(apm, "STATUS_TTL_S", 0.3)
    apm.RING.clear()
    with monitoring_server() as client:
        before = client.get("/apm/status")[2]["traces_buffered"]
        with pulsetrace.start_span("kept"):
            pass
        pulsetrace.flush()
        time.sleep(0.35)
        assert client.get("/apm/status")[2]["traces_buffered"] == before + 1
    apm.RING.clear()


def test_beyond_loopback_a_fresh_rendering_still_needs_the_token(monkeypatch):
    monkeypatch.setattr(apm, "TRANSACTIONS_TTL_S", 60.0)
    monkeypatch.setattr(apm, "STATUS_TTL_S", 60.0)
    monkeypatch.setattr(endpoints, "METRICS_TTL_S", 60.0)
    monkeypatch.setattr(reuse, "HEALTH_RENDER_TTL_S", 60.0)
    with monitoring_server(host="0.0.0.0", token=TOKEN) as client:
        pulsetrace.health.register("db", lambda: True, ttl=60.0)
        paths = ["/apm/transactions", "/apm/status", "/health/metrics", "/health"]
        for path in paths:
            for _ in range(2):  # rendered, then fresh
                assert client.get(path, token=TOKEN)[0] == 200, path
        for path in paths:
            status, headers, body = client.get(path)
            assert status == 401 and headers["www-authenticate"] == "Bearer", path
            assert client.get(path, token="not-the-token")[0] == 401, path
        # What a load balancer probes stays open.
        assert client.get("/health/ready")[0] == 200
        assert client.get("/health/live")[0] == 200


def _handler(request: Request) -> Response:
    return json_response(200, {"from": "handler"})


def _get(path: str) -> Request:
    return Request("GET", path, "", {})


def test_a_quick_answer_is_sent_and_without_one_the_handler_answers():
    router = Router()
    router.add("/fresh", _handler, quick=lambda r: json_response(200, {"from": "quick"}))
    router.add("/stale", _handler, quick=lambda r: None)
    router.add("/live", _handler, inline=True, quick=lambda r: None)
    fresh = router.answer_now(_get("/fresh"))
    assert fresh is not None and b"quick" in fresh.body
    assert router.answer_now(_get("/stale")) is None  # queued for its handler
    live = router.answer_now(_get("/live"))  # inline: its handler at once
    assert live is not None and b"handler" in live.body
    assert router.answer_now(_get("/nothing")) is None  # the handlers answer 404


def test_a_failing_quick_answer_is_counted_and_the_handler_answers():
    from pulsetrace import _diag

    router = Router()
    router.add("/p", _handler, quick=lambda r: 1 / 0)
    router.add("/i", _handler, inline=True, quick=lambda r: 1 / 0)
    before = sum(_diag.internal_errors().values())
    assert router.answer_now(_get("/p")) is None
    inline = router.answer_now(_get("/i"))
    assert inline is not None and b"handler" in inline.body
    assert sum(_diag.internal_errors().values()) == before + 2


def test_a_quick_answer_refusing_the_request_is_its_error():
    def refuse(request: Request) -> Response:
        raise HttpError(401, "wrong token")

    router = Router()
    router.add("/p", _handler, quick=refuse)
    got = router.answer_now(Request("GET", "/p", "", {}))
    assert got is not None and got.status == 401 and b"wrong token" in got.body
    with pytest.raises(ValueError, match="exact path"):
        router.add("/p/{id}", _handler, quick=refuse)
