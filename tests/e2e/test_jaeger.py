"""pulsetrace's traces as a real Jaeger v2 shows them.

A Flask app (jaeger_app.py) under ``pulsetrace-run gunicorn``, configured
only by ``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` and
``OTEL_EXPORTER_OTLP_PROTOCOL`` (and ``PULSETRACE_SAMPLE_RATE=1``, so that
every trace is kept), exports to Jaeger v2 (jaeger_server.py: the binary
``make jaeger`` builds from Jaeger's Go module, memory storage, every
listener on 127.0.0.1). What a user sees in Jaeger is read back through its
query API (``/api/traces``, the JSON of the Jaeger UI): one trace per
request, the SERVER span with its SQL and HTTP CLIENT children, the
service name, the HTTP conventions, the error of a failing request, a
caller's ``traceparent`` honoured, and the spans ended while Jaeger was
down delivered once it is back, every one counted.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

import pytest
from e2e_helpers import HERE, Service, clean_env, free_port
from jaeger_server import Jaeger, JaegerSpan

from conftest import wait_until

pytestmark = pytest.mark.slow

GRPC, HTTP = "grpc", "http/protobuf"
GUNICORN = shutil.which("gunicorn") or str(Path(sys.executable).with_name("gunicorn"))
USER_AGENT = "pulsetrace-jaeger-e2e/1"
TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4737"
REMOTE_PARENT = "10f067aa0ba902b8"
ORDER_ROUTE = "/orders/<int:order_id>"
REFUND_ROUTE = "/orders/<int:order_id>/refund"
#: What the obfuscator leaves of jaeger_app.ORDER_SQL (no literal in it).
ORDER_QUERY_TEXT = "SELECT item, quantity FROM orders WHERE id = ?"
#: The orders in the app's database, by id.
ITEMS = {1: "widget", 2: "gadget"}
#: Requests made while Jaeger is down (for about 2.5 s: several export intervals).
OUTAGE_REQUESTS = 5
#: Spans of one order request: SERVER, its SQL CLIENT and its HTTP CLIENT.
SPANS_PER_ORDER = 3
#: Tags Jaeger adds of its own to every span (the OTLP scope, the span kind).
JAEGER_TAGS = {"otel.scope.name", "otel.scope.version", "span.kind"}


@dataclass
class Stock:
    """The stock service the app calls: a plain HTTP server that records
    the ``traceparent`` of each request."""

    port: int
    seen: list[Optional[str]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Shop:
    """The app under ``pulsetrace-run``, exporting to ``jaeger``."""

    service: Service
    name: str
    port: int
    protocol: str
    jaeger: Jaeger
    stock: Stock

    def get(self, path: str, headers: Optional[dict[str, str]] = None) -> tuple[int, Any]:
        """A request from outside any instrumented client (``http.client``)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers={"User-Agent": USER_AGENT, **(headers or {})})
            reply = conn.getresponse()
            body = reply.read()
            is_json = reply.getheader("Content-Type", "").startswith("application/json")
            return reply.status, json.loads(body) if is_json else body.decode(errors="replace")
        finally:
            conn.close()

    def counters(self) -> dict[str, int]:
        status, body = self.get("/health/counters")
        assert status == 200, body
        return dict(body)

    def logs(self) -> str:
        app, jaeger = self.service.output(), self.jaeger.output(tail=1500)
        return f"--- {self.name} ---\n{app}\n--- jaeger ---\n{jaeger}"


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    server = Jaeger(tmp_path_factory.mktemp("jaeger"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stock() -> Iterator[Stock]:
    seen: list[Optional[str]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append(self.headers.get("traceparent"))
            body = json.dumps({"stock": 7, "traceparent": seen[-1]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Stock(server.server_address[1], seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shop") / "shop.db"
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute("CREATE TABLE orders (id integer PRIMARY KEY, item text, quantity int)")
            conn.executemany(
                "INSERT INTO orders VALUES (?, ?, 1)", [(i, item) for i, item in ITEMS.items()]
            )
    finally:
        conn.close()
    return path


@contextlib.contextmanager
def shop(
    jaeger: Jaeger, protocol: str, name: str, stock: Stock, database: Path, folder: Path
) -> Iterator[Shop]:
    port = free_port()
    endpoint = jaeger.grpc_endpoint if protocol == GRPC else jaeger.http_endpoint
    env = clean_env(
        OTEL_SERVICE_NAME=name,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        PULSETRACE_SAMPLE_RATE="1",
        JAEGER_E2E_DB=str(database),
        JAEGER_E2E_STOCK_URL=stock.url,
        PYTHONPATH=str(HERE),
        PYTHONUNBUFFERED="1",
    )
    # No control socket: it would be a Unix socket in $HOME, shared by every
    # gunicorn on the machine.
    args = [GUNICORN, "-w", "1", "-b", f"127.0.0.1:{port}", "--no-control-socket"]
    service = Service(name, [*args, "jaeger_app:app"], env, folder / f"{name}.log")
    try:
        service.wait_for_port(port, timeout=30)
        yield Shop(service, name, port, protocol, jaeger, stock)
    finally:
        service.stop()


@pytest.fixture(scope="module", params=[GRPC, HTTP], ids=["grpc", "http"])
def app(
    request: pytest.FixtureRequest,
    jaeger: Jaeger,
    stock: Stock,
    database: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Shop]:
    name = "shop-" + ("grpc" if request.param == GRPC else "http")
    folder = tmp_path_factory.mktemp(name)
    with shop(jaeger, request.param, name, stock, database, folder) as running:
        yield running


# -- what Jaeger must show ---------------------------------------------------------


def semantic(span: JaegerSpan) -> dict[str, Any]:
    """The span's attributes: its tags without the ones Jaeger adds and the
    status (``otel.status_*``, ``error``)."""
    return {
        k: v
        for k, v in span.tags.items()
        if k not in JAEGER_TAGS and not k.startswith("otel.status_") and k != "error"
    }


def only(spans: list[JaegerSpan], what: str, **match: Any) -> JaegerSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"{what}: {len(found)} spans match {match} among {spans}"
    return found[0]


def ids_of(traceparent: Optional[str]) -> tuple[str, str]:
    """The trace id and parent id a ``traceparent`` header carries."""
    assert traceparent is not None, "the outbound request carried no traceparent"
    version, trace_id, parent_id, _flags = traceparent.split("-")
    assert version == "00", traceparent
    return trace_id, parent_id


def check_order_trace(
    app: Shop, spans: list[JaegerSpan], trace_id: str, order_id: int, sent: Optional[str]
) -> dict[str, JaegerSpan]:
    """One order request as Jaeger shows it; ``sent`` is the ``traceparent``
    the stock service got. Returns the spans by role."""
    context = f"\nspans: {spans}\n{app.logs()}"
    assert len(spans) == SPANS_PER_ORDER, context
    assert len({s.span_id for s in spans}) == SPANS_PER_ORDER, f"a span arrived twice{context}"
    assert all(s.trace_id == trace_id for s in spans), context
    assert all(s.service == app.name for s in spans), context
    # Jaeger found every parent in the trace (it warns of one it did not,
    # as of the caller's span when a traceparent came in).
    ids = {s.span_id for s in spans}
    assert all(not s.warnings for s in spans if s.parent_id in ids), context

    server = only(spans, "the SERVER span", kind="server")
    assert server.name == f"GET {ORDER_ROUTE}"
    assert semantic(server) == {
        "http.request.method": "GET",
        "http.route": ORDER_ROUTE,
        "http.response.status_code": 200,
        "url.path": f"/orders/{order_id}",
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "server.port": app.port,
        "client.address": "127.0.0.1",
        "user_agent.original": USER_AGENT,
        "network.protocol.version": "1.1",
    }, context

    children = [s for s in spans if s is not server]
    assert all(s.kind == "client" for s in children), context
    assert all(s.parent_id == server.span_id and s.parent_trace_id == trace_id for s in children)
    sql = only(children, "the SQL span", name="SELECT orders")
    assert semantic(sql) == {
        "db.system.name": "sqlite",
        "db.query.text": ORDER_QUERY_TEXT,
        "db.operation.name": "SELECT",
        "db.collection.name": "orders",
        "db.namespace": "shop.db",
    }, context
    outbound = only(children, "the HTTP client span", name="GET")
    assert semantic(outbound) == {
        "http.request.method": "GET",
        "url.full": f"{app.stock.url}/stock/{ITEMS[order_id]}",
        "server.address": "127.0.0.1",
        "server.port": app.stock.port,
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
    }, context
    # The stock service was called in this trace, from the HTTP client span.
    assert ids_of(sent) == (trace_id, outbound.span_id), context

    for s in spans:
        assert "otel.status_code" not in s.tags and "error" not in s.tags, s.tags
        assert s.duration_us > 0, s
    # The calls happen within the request (Jaeger truncates start and
    # duration to microseconds each: an end may move by one).
    server_end = server.start_us + server.duration_us
    for child in children:
        assert server.start_us <= child.start_us, context
        assert child.start_us + child.duration_us <= server_end + 1, context
    log = app.service.output(tail=None)
    assert "pulsetrace internal error" not in log, log[-4000:]
    return {"server": server, "sql": sql, "http": outbound}


# -- the tests ---------------------------------------------------------------------


def test_a_request_is_one_trace_in_jaeger(app: Shop, jaeger: Jaeger) -> None:
    status, body = app.get("/orders/1")
    assert status == 200, f"{body}\n{app.logs()}"
    assert body["item"] == "widget" and body["stock"] == 7
    trace_id, _ = ids_of(body["traceparent"])

    spans = jaeger.wait_for_trace(trace_id, SPANS_PER_ORDER)
    roles = check_order_trace(app, spans, trace_id, 1, body["traceparent"])
    # A request that came with no traceparent starts the trace: the SERVER
    # span is its root.
    assert roles["server"].parent_id == "", spans
    # Jaeger lists the service and finds the trace by its operation.
    assert app.name in jaeger.services()
    found = jaeger.find(app.name, f"GET {ORDER_ROUTE}")
    assert trace_id in {t[0].trace_id for t in found}, found


def test_a_failing_request_is_an_error_in_jaeger(app: Shop, jaeger: Jaeger) -> None:
    status, body = app.get("/orders/2/refund")
    assert status == 500, f"{body}\n{app.logs()}"

    def found() -> list[list[JaegerSpan]]:
        return jaeger.find(app.name, f"GET {REFUND_ROUTE}")

    deadline = time.monotonic() + 20
    while not found() and time.monotonic() < deadline:
        time.sleep(0.1)
    traces = found()
    assert len(traces) == 1, f"{traces}\n{app.logs()}"
    # The SERVER span and its SQL span.
    spans = jaeger.wait_for_trace(traces[0][0].trace_id, 2)
    assert len(spans) == 2, spans
    server = only(spans, "the SERVER span", kind="server")
    assert server.parent_id == "" and server.service == app.name
    assert semantic(server) == {
        "http.request.method": "GET",
        "http.route": REFUND_ROUTE,
        "http.response.status_code": 500,
        "url.path": "/orders/2/refund",
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "server.port": app.port,
        "client.address": "127.0.0.1",
        "user_agent.original": USER_AGENT,
        "network.protocol.version": "1.1",
    }, spans
    # Jaeger shows it as an error, and why: the exception, as an event.
    assert server.tags.get("otel.status_code") == "ERROR", server.tags
    assert server.tags.get("error") is True, server.tags
    (event,) = [log for log in server.logs if log.get("event") == "exception"]
    assert event["exception.type"] == "RuntimeError", event
    assert event["exception.message"] == "refunds are closed", event
    assert "raise RuntimeError" in event["exception.stacktrace"], event
    # The query before the failure succeeded: not an error.
    sql = only(spans, "the SQL span", kind="client")
    assert sql.parent_id == server.span_id and sql.name == "SELECT orders"
    assert "otel.status_code" not in sql.tags and "error" not in sql.tags, sql.tags


def test_the_callers_traceparent_is_the_trace_in_jaeger(app: Shop, jaeger: Jaeger) -> None:
    # A trace id of each protocol's own: Jaeger keeps both.
    trace_id = TRACE_ID[:-1] + ("1" if app.protocol == GRPC else "2")
    traceparent = f"00-{trace_id}-{REMOTE_PARENT}-01"
    status, body = app.get("/orders/1", {"traceparent": traceparent})
    assert status == 200, f"{body}\n{app.logs()}"

    spans = jaeger.wait_for_trace(trace_id, SPANS_PER_ORDER)
    roles = check_order_trace(app, spans, trace_id, 1, body["traceparent"])
    # The SERVER span is the caller's span's child: Jaeger shows that
    # reference (and that the caller's span is not in the trace).
    server = roles["server"]
    assert (server.parent_trace_id, server.parent_id) == (trace_id, REMOTE_PARENT), server


@pytest.mark.timeout(300)
@pytest.mark.parametrize("protocol", [GRPC, HTTP], ids=["grpc", "http"])
def test_spans_ended_while_jaeger_is_down_arrive_once_it_is_back(
    protocol: str, stock: Stock, database: Path, tmp_path: Path
) -> None:
    # A Jaeger of this test's own: it is restarted, and its memory storage
    # starts empty then.
    jaeger = Jaeger(tmp_path)
    name = "outage-" + ("grpc" if protocol == GRPC else "http")
    with contextlib.ExitStack() as cleanup:
        jaeger.start()
        cleanup.callback(jaeger.stop)
        app = cleanup.enter_context(shop(jaeger, protocol, name, stock, database, tmp_path))
        status, body = app.get("/orders/1")
        assert status == 200, f"{body}\n{app.logs()}"
        first, _ = ids_of(body["traceparent"])
        assert len(jaeger.wait_for_trace(first, SPANS_PER_ORDER)) == SPANS_PER_ORDER, app.logs()
        assert app.counters()["otlp_spans_sent"] == SPANS_PER_ORDER

        jaeger.stop()
        # Down for several export intervals (1 s by default): the app answers
        # as usual, its exporter's attempts fail and are kept for a retry.
        sent: dict[str, tuple[int, str]] = {}
        for i in range(OUTAGE_REQUESTS):
            order_id = 1 + i % 2
            status, body = app.get(f"/orders/{order_id}")
            assert status == 200, f"{body}\n{app.logs()}"
            sent[ids_of(body["traceparent"])[0]] = (order_id, body["traceparent"])
            time.sleep(0.5)
        held = SPANS_PER_ORDER * OUTAGE_REQUESTS

        def pending() -> bool:
            c = app.counters()
            return c["otlp_queued_spans"] == held and c["otlp_spans_retried"] > 0

        assert wait_until(pending, timeout=10), f"{app.counters()}\n{app.logs()}"
        assert app.counters()["otlp_spans_sent"] == SPANS_PER_ORDER
        assert "cannot reach the OTLP collector" in app.service.output(tail=None), app.logs()

        # Back, on the same ports, with nothing in it: every trace ended
        # during the outage arrives, with no new request to push it.
        jaeger.start()
        deadline = time.monotonic() + 60
        while not all(len(jaeger.trace(t)) >= SPANS_PER_ORDER for t in sent):
            assert (
                time.monotonic() < deadline
            ), f"{ {t: jaeger.trace(t) for t in sent} }\n{app.counters()}\n{app.logs()}"
            time.sleep(0.2)
        time.sleep(1.5)  # nothing sent twice arrives after
        for trace_id, (order_id, traceparent) in sent.items():
            check_order_trace(app, jaeger.trace(trace_id), trace_id, order_id, traceparent)

        # And the counters account for every span: all delivered, none dropped.
        c = app.counters()
        total = SPANS_PER_ORDER * (1 + OUTAGE_REQUESTS)
        assert {
            k: c[k]
            for k in (
                "spans_delivered",
                "spans_delivery_failed",
                "otlp_spans_sent",
                "otlp_spans_lost",
                "otlp_spans_dropped_pending_full",
                "otlp_queued_spans",
            )
        } == {
            "spans_delivered": total,
            "spans_delivery_failed": 0,
            "otlp_spans_sent": total,
            "otlp_spans_lost": 0,
            "otlp_spans_dropped_pending_full": 0,
            "otlp_queued_spans": 0,
        }, c
