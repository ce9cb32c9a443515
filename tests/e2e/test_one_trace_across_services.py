"""One trace across two real services, as a collector sees it.

Service A (Flask under ``pulsetrace-run gunicorn -w 2``) queries PostgreSQL
with psycopg, Redis with redis-py and service B with requests; service B
(FastAPI under ``pulsetrace-run uvicorn``) queries SQLite. Both export over
OTLP/gRPC to one recording receiver in this process. A request that comes in
with a known ``traceparent`` must give one trace, with that trace id and
remote parent, whose spans from both processes form the expected tree, each
span once, with the attributes of its conventions; a request without one
starts a trace of its own.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import psycopg
import pytest
import redis
from e2e_helpers import (
    CLIENT,
    FLAG_RANDOM,
    FLAG_REMOTE,
    FLAG_REMOTE_KNOWN,
    FLAG_SAMPLED,
    HERE,
    SERVER,
    Received,
    Service,
    clean_env,
    free_port,
    wait_for_span,
    wait_for_trace,
)
from opentelemetry.proto.trace.v1 import trace_pb2

from export.otlp_receivers import GrpcReceiver, start_grpc_receiver

pytestmark = pytest.mark.slow

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
REMOTE_PARENT = "00f067aa0ba902b7"
TRACESTATE = "e2e=1"
USER_AGENT = "pulsetrace-e2e/1"
#: Kept in Redis as the order's status: it comes back in the reply, and must
#: never be on a span.
SECRET_STATUS = "shipped-s3cr3t-7f3a"
#: What the obfuscator makes of service A's statement (``service_a.ORDER_SQL``):
#: the ``%s`` placeholder stays as it is, the literal becomes ``?``.
ORDER_QUERY_TEXT = "SELECT id, item, quantity FROM e2e_orders WHERE id = %s AND status <> ?"
#: Spans FastAPI's own OpenTelemetry instrumentation makes, through
#: pulsetrace's OpenTelemetry bridge, around the route's work: allowed between
#: B's SERVER span and its SQL span, each at most once, nothing else.
FASTAPI_OPERATION_SPANS = {"fastapi.dependencies", "fastapi.endpoint", "fastapi.serialization"}
#: Service B's SERVER span may be FastAPI's (through the bridge) or
#: pulsetrace's own: these attributes both have.
SERVER_B_KEYS = (
    "http.request.method",
    "http.route",
    "http.response.status_code",
    "url.path",
    "url.scheme",
    "server.address",
    "server.port",
    "network.protocol.version",
)
#: At least this many spans from each (B: more with FastAPI's operation spans).
SPANS_PER_SERVICE = {"service-a": 4, "service-b": 2}
UNSET = trace_pb2.Status.STATUS_CODE_UNSET


@dataclass
class Stack:
    receiver: GrpcReceiver
    a: Service
    b: Service
    pa: int
    pb: int
    pg_port: int
    redis_port: int

    def logs(self) -> str:
        return f"--- service-a ---\n{self.a.output()}\n--- service-b ---\n{self.b.output()}"


def setup_data(postgres_server: Any, redis_server: Any, sqlite_path: Path) -> None:
    pg = postgres_server
    with psycopg.connect(host=pg.host, port=pg.port, autocommit=True, **pg.extra) as conn:
        conn.execute("DROP TABLE IF EXISTS e2e_orders")
        conn.execute(
            "CREATE TABLE e2e_orders (id int PRIMARY KEY, item text, quantity int, status text)"
        )
        conn.execute(
            "INSERT INTO e2e_orders VALUES (1, 'widget', 3, 'paid'), (2, 'gadget', 1, 'paid')"
        )
    with redis.Redis(host=redis_server.host, port=redis_server.port) as r:
        r.set("order:1", SECRET_STATUS)
        r.delete("order:2")
    conn = sqlite3.connect(sqlite_path)
    try:
        with conn:
            conn.execute("CREATE TABLE inventory (item text PRIMARY KEY, stock int)")
            conn.execute("INSERT INTO inventory VALUES ('widget', 42), ('gadget', 7)")
    finally:
        conn.close()


def drop_data(postgres_server: Any, redis_server: Any) -> None:
    pg = postgres_server
    with contextlib.suppress(Exception):
        with psycopg.connect(host=pg.host, port=pg.port, autocommit=True, **pg.extra) as conn:
            conn.execute("DROP TABLE IF EXISTS e2e_orders")
    with contextlib.suppress(Exception):
        with redis.Redis(host=redis_server.host, port=redis_server.port) as r:
            r.delete("order:1", "order:2")


@pytest.fixture(scope="module")
def stack(
    postgres_server: Any, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("e2e")
    sqlite_path = folder / "inventory.db"
    setup_data(postgres_server, redis_server, sqlite_path)
    pa = free_port()
    pb = free_port()
    while pb == pa:
        pb = free_port()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(drop_data, postgres_server, redis_server)
        receiver = start_grpc_receiver()
        cleanup.callback(receiver.stop)
        common = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "PULSETRACE_SAMPLE_RATE": "1",
            "PULSETRACE_ADAPTIVE_PERCENTILE": "0",
            "PULSETRACE_EXPORT_INTERVAL_MS": "100",
            "PYTHONPATH": str(HERE),
            "PYTHONUNBUFFERED": "1",
        }
        b = Service(
            "service-b",
            ["uvicorn", "service_b:app", "--host", "127.0.0.1", "--port", str(pb)],
            clean_env(**common, OTEL_SERVICE_NAME="service-b", E2E_SQLITE_PATH=str(sqlite_path)),
            folder / "service-b.log",
        )
        cleanup.callback(b.stop)
        a = Service(
            "service-a",
            # No control socket: it would be a Unix socket in $HOME, shared by
            # every gunicorn on the machine.
            [
                "gunicorn",
                "-w",
                "2",
                "-b",
                f"127.0.0.1:{pa}",
                "--no-control-socket",
                "service_a:app",
            ],
            clean_env(
                **common,
                OTEL_SERVICE_NAME="service-a",
                E2E_PG_HOST=postgres_server.host,
                E2E_PG_PORT=str(postgres_server.port),
                E2E_PG_USER=postgres_server.extra["user"],
                E2E_PG_DBNAME=postgres_server.extra["dbname"],
                E2E_REDIS_HOST=redis_server.host,
                E2E_REDIS_PORT=str(redis_server.port),
                E2E_SERVICE_B_PORT=str(pb),
            ),
            folder / "service-a.log",
        )
        cleanup.callback(a.stop)
        b.wait_for_port(pb, timeout=20)
        a.wait_for_port(pa, timeout=20)
        yield Stack(receiver, a, b, pa, pb, postgres_server.port, redis_server.port)


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """A request from outside any instrumented client (``http.client``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"User-Agent": USER_AGENT, **headers})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def by_service(spans: list[Received], service: str) -> list[Received]:
    return [s for s in spans if s.service == service]


def only(spans: list[Received], what: str, **match: Any) -> Received:
    """The one span with these properties (``kind``, ``name``, ``parent_id``...)."""
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"{what}: {len(found)} spans match {match} among {spans}"
    return found[0]


def check_trace(
    stack: Stack,
    spans: list[Received],
    trace_id: str,
    order_id: int,
    item: str,
    remote_parent: Optional[str],
    trace_state: str,
) -> dict[str, Received]:
    """Everything the collector must hold for one request to service A; returns
    the spans by role."""
    context = f"\nspans: {spans}\n{stack.logs()}"
    a_spans, b_spans = by_service(spans, "service-a"), by_service(spans, "service-b")
    assert {s.service for s in spans} == {"service-a", "service-b"}, context
    assert all(s.trace_id == trace_id for s in spans)
    ids = [s.span_id for s in spans]
    assert len(ids) == len(set(ids)), f"a span arrived twice{context}"
    assert all(len(s.span_id) == 16 and int(s.span_id, 16) != 0 for s in spans)

    # -- service A: the SERVER span and its three CLIENT children -------------------
    assert len(a_spans) == SPANS_PER_SERVICE["service-a"], context
    a_server = only(a_spans, "A's SERVER span", kind=SERVER)
    assert a_server.name == "GET /orders/<int:order_id>"
    assert a_server.parent_id == (remote_parent or "")
    assert a_server.attrs == {
        "http.request.method": "GET",
        "http.route": "/orders/<int:order_id>",
        "http.response.status_code": 200,
        "url.path": f"/orders/{order_id}",
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "server.port": stack.pa,
        "client.address": "127.0.0.1",
        "user_agent.original": USER_AGENT,
        "network.protocol.version": "1.1",
    }
    children = [s for s in a_spans if s is not a_server]
    assert all(s.parent_id == a_server.span_id and s.kind == CLIENT for s in children), context

    postgres = only(children, "the PostgreSQL span", name="SELECT e2e_orders")
    assert postgres.attrs == {
        "db.system.name": "postgresql",
        "db.query.text": ORDER_QUERY_TEXT,
        "db.operation.name": "SELECT",
        "db.collection.name": "e2e_orders",
        "db.namespace": "postgres",
        "server.address": "127.0.0.1",
        "server.port": stack.pg_port,
        "db.response.rows_affected": 1,
    }
    redis_span = only(
        [s for s in children if s.attrs.get("db.system.name") == "redis"], "the Redis span"
    )
    assert redis_span.name == "GET"
    assert redis_span.attrs == {
        "db.system.name": "redis",
        "db.operation.name": "GET",
        "db.query.text": f"GET order:{order_id}",
        "db.namespace": "0",
        "server.address": "127.0.0.1",
        "server.port": stack.redis_port,
    }
    # requests runs over urllib3, which is instrumented too: still one span.
    http_client = only(
        [s for s in children if "http.request.method" in s.attrs], "the HTTP client span"
    )
    assert http_client.name == "GET"
    assert http_client.attrs == {
        "http.request.method": "GET",
        "url.full": f"http://127.0.0.1:{stack.pb}/inventory/{item}",
        "server.address": "127.0.0.1",
        "server.port": stack.pb,
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
    }
    assert {postgres.span_id, redis_span.span_id, http_client.span_id} == {
        s.span_id for s in children
    }

    # -- service B: its SERVER span, child of A's HTTP client span, and the SQL span --
    b_server = only(b_spans, "B's SERVER span", kind=SERVER)
    assert b_server.name == "GET /inventory/{item_id}"
    assert b_server.parent_id == http_client.span_id, f"not A's client span{context}"
    b_attrs = b_server.attrs
    assert {k: b_attrs.get(k) for k in SERVER_B_KEYS} == {
        "http.request.method": "GET",
        "http.route": "/inventory/{item_id}",
        "http.response.status_code": 200,
        "url.path": f"/inventory/{item}",
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "server.port": stack.pb,
        "network.protocol.version": "1.1",
    }, context
    sql = only(b_spans, "B's SQL span", kind=CLIENT)
    assert sql.name == "SELECT inventory"
    assert sql.attrs == {
        "db.system.name": "sqlite",
        # sqlite3's ``?`` placeholders are kept as they are.
        "db.query.text": "SELECT item, stock FROM inventory WHERE item = ?",
        "db.operation.name": "SELECT",
        "db.collection.name": "inventory",
        "db.namespace": "inventory.db",
    }
    # Nothing else in B but FastAPI's own operation spans, each once, all in
    # the tree under B's SERVER span; the SQL span under it, directly or
    # through ``fastapi.endpoint``.
    others = [s for s in b_spans if s is not b_server and s is not sql]
    assert all(s.kind == trace_pb2.Span.SPAN_KIND_INTERNAL for s in others), context
    names = [s.name for s in others]
    assert set(names) <= FASTAPI_OPERATION_SPANS and len(names) == len(set(names)), context
    assert all(s.parent_id == b_server.span_id for s in others), context
    endpoint = [s.span_id for s in others if s.name == "fastapi.endpoint"]
    assert sql.parent_id == (endpoint[0] if endpoint else b_server.span_id), context

    # -- both: flags, trace state, status, resources, no secret ---------------------
    for s in spans:
        remote = (s is a_server and remote_parent is not None) or s is b_server
        # A trace A started itself has a random trace id (and says so).
        random = FLAG_RANDOM if remote_parent is None else 0
        flags = FLAG_SAMPLED | random | FLAG_REMOTE_KNOWN | (FLAG_REMOTE if remote else 0)
        assert s.span.flags == flags, (s, hex(s.span.flags))
        assert s.span.trace_state == trace_state, s
        assert s.span.status.code == UNSET, (s, s.span.status)
        assert s.span.end_time_unix_nano >= s.span.start_time_unix_nano > 0, s
        assert s.resource["service.name"] == s.service
        assert SECRET_STATUS not in repr(s.span), f"Redis value on {s}"
        assert "cancelled" not in repr(s.span), f"SQL literal on {s}"
    # A's calls happen within A's request.
    for child in children:
        assert a_server.span.start_time_unix_nano <= child.span.start_time_unix_nano
        assert child.span.end_time_unix_nano <= a_server.span.end_time_unix_nano
    # pulsetrace caught nothing of its own on the way (it logs each case).
    for service in (stack.a, stack.b):
        log = service.output(tail=None)
        assert "pulsetrace internal error" not in log, f"{service.name}:\n{log[-4000:]}"
    return {
        "a_server": a_server,
        "postgres": postgres,
        "redis": redis_span,
        "http_client": http_client,
        "b_server": b_server,
        "sql": sql,
    }


def test_one_trace_across_both_services(stack: Stack) -> None:
    traceparent = f"00-{TRACE_ID}-{REMOTE_PARENT}-01"
    status, body = get(
        stack.pa, "/orders/1", {"traceparent": traceparent, "tracestate": TRACESTATE}
    )
    assert status == 200, f"{body}\n{stack.logs()}"
    assert body["item"] == "widget" and body["stock"] == 42 and body["status"] == SECRET_STATUS

    spans = wait_for_trace(stack.receiver, TRACE_ID, SPANS_PER_SERVICE)
    roles = check_trace(stack, spans, TRACE_ID, 1, "widget", REMOTE_PARENT, TRACESTATE)

    # Each span comes from the process that made it: a gunicorn worker (not
    # the master), the uvicorn process (pulsetrace-run exec'd it: same pid).
    a_pid = roles["a_server"].resource["process.pid"]
    assert a_pid == body["pid"] != stack.a.proc.pid
    assert roles["b_server"].resource["process.pid"] == body["inventory_pid"] == stack.b.proc.pid
    for s in spans:
        assert s.resource["process.pid"] == (
            a_pid if s.service == "service-a" else body["inventory_pid"]
        )


def test_a_request_without_traceparent_starts_its_own_trace(stack: Stack) -> None:
    status, body = get(stack.pa, "/orders/2", {})
    assert status == 200, f"{body}\n{stack.logs()}"
    assert body["item"] == "gadget" and body["status"] is None

    found = wait_for_span(stack.receiver, "service-a", SERVER, "/orders/2")
    assert len(found) == 1, f"{found}\n{stack.logs()}"
    # A new trace (nothing left over from the first request in the worker),
    # whose root has no parent.
    trace_id = found[0].trace_id
    assert trace_id != TRACE_ID and int(trace_id, 16) != 0
    spans = wait_for_trace(stack.receiver, trace_id, SPANS_PER_SERVICE)
    check_trace(stack, spans, trace_id, 2, "gadget", None, "")
