"""Log lines of a real Flask application (pulsetrace's Flask hook, the
native fast path): trace correlation, X-Request-ID, the user/company
context of one request not leaking into the next, the access log."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

import pulsetrace
import pulsetrace.logging as plog
from pulsetrace import _runtime
from pulsetrace.contrib import flask as flask_hook

from conftest import finished

flask = pytest.importorskip("flask")

log = logging.getLogger("shop")


def make_app():
    app = flask.Flask("logs_app")

    @app.route("/orders/<int:order_id>")
    def order(order_id: int):
        if flask.request.args.get("who"):
            pulsetrace.context(user_id="user_789", company_id="comp_456")
        log.info("order %d", order_id, extra={"orderId": order_id})
        with pulsetrace.start_span("load order"):
            log.info("loading")
        return {"id": order_id}

    @app.route("/fail")
    def fail():
        return "nope", 503

    return app


@pytest.fixture
def app(exporter):
    flask_hook.patch()
    buf = io.StringIO()
    plog.configure(stream=buf)
    app = make_app()
    app.lines = lambda: [json.loads(x) for x in buf.getvalue().splitlines()]
    yield app
    plog.unconfigure()
    flask_hook.unpatch()


def get(app, path, **kw):
    with app.test_client() as c:
        r = c.get(path, **kw)
        r.get_data()
        r.close()
        return r.status_code


def test_a_request_s_lines_carry_its_trace_span_and_request_id(app, exporter):
    assert get(app, "/orders/7") == 200
    spans = finished(exporter)
    (server,) = [s for s in spans if s.kind == "server"]
    (child,) = [s for s in spans if s.name == "load order"]
    lines = [x for x in app.lines() if x["type"] == "application"]
    in_view, in_child = lines
    assert in_view["message"] == "order 7" and in_view["metadata"] == {"orderId": 7}
    assert in_view["trace_id"] == f"{server.trace_id:032x}"
    assert in_view["span_id"] == f"{server.span_id:016x}"
    assert in_child["span_id"] == f"{child.span_id:016x}"
    # No X-Request-ID: the request span's id, in the view and below it.
    assert in_view["requestId"] == f"{server.span_id:016x}"
    assert in_child["requestId"] == f"{server.span_id:016x}"


def test_the_x_request_id_header_is_the_request_id(app):
    get(app, "/orders/1", headers={"X-Request-ID": "req_123456"})
    assert [x["requestId"] for x in app.lines()] == ["req_123456", "req_123456"]


def test_user_and_company_of_one_request_do_not_reach_the_next(app):
    get(app, "/orders/1?who=1")
    get(app, "/orders/2")
    first, _, second, _ = app.lines()
    assert (first["userId"], first["companyId"]) == ("user_789", "comp_456")
    assert "userId" not in second and "companyId" not in second


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.02)
    return predicate()


def test_the_access_log_writes_one_line_per_request_off_the_request_thread(app, exporter):
    plog.configure(stream=io.StringIO(), access_log=False)  # the default: no access lines
    buf = io.StringIO()
    plog.configure(stream=buf, access_log=True)
    get(app, "/orders/42", headers={"X-Forwarded-For": "10.1.2.3"})
    get(app, "/fail")
    pulsetrace.flush()

    def access():
        lines = [json.loads(x) for x in buf.getvalue().splitlines()]
        found = [x for x in lines if x["type"] == "access"]
        return found if len(found) == 2 else None

    ok, failed = wait_for(access)
    servers = {s.name: s for s in finished(exporter) if s.kind == "server"}
    span = servers["GET /orders/<int:order_id>"]
    assert ok["message"].startswith("GET /orders/<int:order_id> 200 ")
    meta = ok["metadata"]
    assert meta["method"] == "GET" and meta["route"] == "/orders/<int:order_id>"
    assert meta["path"] == "/orders/42" and meta["status"] == 200
    assert 0 < meta["duration_ms"] < 10_000
    assert ok["requestId"] == f"{span.span_id:016x}"
    assert ok["trace_id"] == f"{span.trace_id:032x}" and ok["span_id"] == ok["requestId"]
    assert ok["level"] == "info"
    assert failed["metadata"]["status"] == 503 and failed["level"] == "warning"
    # Written by the access log's own thread, not the request's.
    assert any(t.name == "pulsetrace-access-log" for t in __import__("threading").enumerate())
    assert pulsetrace.counters()["access_log_dropped"] == 0
    plog.unconfigure()
    assert _runtime.config().access_log  # stays configured; the writer stopped
