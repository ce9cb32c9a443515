"""The monitoring endpoints as a client sees them: JSON everywhere, bad input
answered 4xx with a JSON error naming the problem, bodies bounded, the
token rules (mutating endpoints always, the rest beyond loopback), and the
application's metrics as JSON and as an exposition."""

from __future__ import annotations

import socket
import time

import pytest
from monitoring_support import monitoring_server

import pulsetrace
import pulsetrace.health
from pulsetrace._router import Request, Router, json_response
from pulsetrace._server import Server

TOKEN = "t0ken-for-tests"


def raw_request(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_live_never_consults_a_check_and_ready_reports_each_one():
    calls = []
    with monitoring_server() as client:
        pulsetrace.health.register("db", lambda: calls.append(1) or {"rows": 1})
        status, headers, body = client.get("/health/live")
        assert status == 200 and headers["content-type"] == "application/json"
        assert body["status"] == "pass" and body["pid"] > 0
        assert calls == []
        status, _, body = client.get("/health/ready")
        assert status == 200 and calls == [1]
        assert body["status"] == "pass" and body["failing"] == []
        (check,) = body["checks"]
        assert check["name"] == "db" and check["critical"] is True
        assert check["details"] == {"rows": 1} and check["latency_ms"] >= 0


def test_health_reports_overall_status_and_each_check():
    with monitoring_server() as client:
        pulsetrace.health.register("ok", lambda: True)
        pulsetrace.health.register("optional", lambda: 1 / 0, critical=False)
        status, _, body = client.get("/health")
        assert status == 200 and body["status"] == "degraded"
        by_name = {c["name"]: c for c in body["checks"]}
        assert by_name["ok"]["status"] == "pass"
        assert by_name["optional"]["status"] == "fail"
        assert by_name["optional"]["error"] == "ZeroDivisionError: division by zero"
        pulsetrace.health.register("vital", lambda: False)
        status, _, body = client.get("/health")
        assert status == 503 and body["status"] == "fail"
        status, _, body = client.get("/health/ready")
        assert status == 503 and body["failing"] == ["vital"]


def test_one_check_by_path_parameter_and_unknown_names_are_404():
    with monitoring_server() as client:
        pulsetrace.health.register("cache", lambda: True)
        status, _, body = client.get("/health/checks/cache")
        assert status == 200 and body["name"] == "cache"
        pulsetrace.health.register("queue depth", lambda: True)
        status, _, body = client.get("/health/checks/queue%20depth")
        assert status == 200 and body["name"] == "queue depth"
        status, _, body = client.get("/health/checks/nothing-here")
        assert status == 404 and body == {
            "error": "no health check named 'nothing-here'",
            "status": 404,
        }
        status, _, body = client.get("/no/such/path")
        assert status == 404 and "no route" in body["error"]


def test_metrics_as_json_and_as_an_exposition():
    with monitoring_server() as client:
        for _ in range(3):
            with pulsetrace.start_span("checkout"):
                pass
        status, _, body = client.get("/health/metrics")
        assert status == 200
        (op,) = [o for o in body["operations"] if o["name"] == "checkout"]
        assert op["count"] == 3 and op["p99"] > 0
        assert body["counters"]["internal_errors"] == 0
        assert body["process"]["process_resident_memory_bytes"] > 0
        status, headers, text = client.get("/health/prometheus")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        assert b'pulsetrace_internal_errors_total{operation="checkout",' in text


def test_metrics_json_is_one_snapshot_per_second_however_many_probes(monkeypatch):
    from pulsetrace.monitoring import endpoints

    monkeypatch.setattr(endpoints, "METRICS_TTL_S", 0.5)
    with monitoring_server() as client:
        with pulsetrace.start_span("first"):
            pass
        first = client.get("/health/metrics")[2]
        with pulsetrace.start_span("second"):
            pass
        assert client.get("/health/metrics")[2] == first  # within the TTL
        time.sleep(0.6)
        names = {o["name"] for o in client.get("/health/metrics")[2]["operations"]}
        assert {"first", "second"} <= names


def test_a_post_needs_the_token_and_refuses_when_none_is_configured():
    with monitoring_server() as client:  # no token configured
        pulsetrace.health.register("ok", lambda: True)
        status, headers, body = client.post("/health/run", {})
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert "PULSETRACE_MONITORING_TOKEN" in body["error"]
        status, _, _ = client.post("/health/run", {}, token="anything")
        assert status == 401
    with monitoring_server(token=TOKEN) as client:
        pulsetrace.health.register("ok", lambda: True)
        assert client.post("/health/run", {})[0] == 401
        status, _, body = client.post("/health/run", {}, token="t0ken-for-testz")
        assert (status, body["error"]) == (401, "wrong token")
        status, _, body = client.post("/health/run", {"checks": ["ok"]}, token=TOKEN)
        assert status == 200 and [c["name"] for c in body["checks"]] == ["ok"]
        # Loopback: reading needs no token.
        assert client.get("/health")[0] == 200


def test_beyond_loopback_every_endpoint_but_live_and_ready_needs_the_token():
    with monitoring_server(host="0.0.0.0", token=TOKEN) as client:
        pulsetrace.health.register("ok", lambda: True)
        for path in ("/health/live", "/health/ready"):
            assert client.get(path)[0] == 200, path
        for path in (
            "/health",
            "/health/metrics",
            "/health/prometheus",
            "/metrics",
            "/openapi.json",
        ):
            status, _, body = client.get(path)
            assert status == 401 and body["status"] == 401, path
            assert client.get(path, token=TOKEN)[0] == 200, path
            assert client.get(path, token="nope")[0] == 401, path


@pytest.mark.parametrize(
    ("raw", "ctype", "status", "error"),
    [
        (b'{"checks": ["ok"', "application/json", 400, "malformed JSON body"),
        (b"\xff\xfe", "application/json", 400, "not valid UTF-8"),
        (b"[1, 2]", "application/json", 400, "must be a JSON object, not an array"),
        (b"null", "application/json", 400, "must be a JSON object, not null"),
        (b'{"checks": "ok"}', "application/json", 400, "'checks' must be an array"),
        (b'{"checks": [1]}', "application/json", 400, "'checks' must be an array"),
        (b'{"check": []}', "application/json", 400, "unknown field in the body: 'check'"),
        (b'{"checks": ["missing"]}', "application/json", 404, "no health check named 'missing'"),
        (b"checks=ok", "application/x-www-form-urlencoded", 415, "must be application/json"),
    ],
)
def test_bad_input_gets_a_4xx_with_a_json_error_naming_it(raw, ctype, status, error):
    with monitoring_server(token=TOKEN) as client:
        pulsetrace.health.register("ok", lambda: True)
        got, headers, body = client.call(
            "POST", "/health/run", raw=raw, headers={"Content-Type": ctype}, token=TOKEN
        )
        assert headers["content-type"] == "application/json"
        assert got == status and body["status"] == status
        assert error in body["error"], body


def test_a_body_beyond_the_bound_is_413_before_it_is_read_and_chunked_is_411():
    with monitoring_server(token=TOKEN) as client:
        head = (
            "POST /health/run HTTP/1.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: 10000000\r\n\r\n"
        ).encode()
        t0 = time.monotonic()
        answer = raw_request(client.port, head)  # no body sent at all
        assert answer.startswith(b"HTTP/1.1 413 ") and time.monotonic() - t0 < 2
        assert b'"request body larger than 65536 bytes"' in answer
        chunked = head.replace(b"Content-Length: 10000000", b"Transfer-Encoding: chunked")
        answer = raw_request(client.port, chunked + b"2\r\n{}\r\n0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 411 ")
        bad = head.replace(b"10000000", b"-1")
        assert raw_request(client.port, bad).startswith(b"HTTP/1.1 400 ")
        status, _, body = client.call("DELETE", "/health", token=TOKEN)
        assert status == 405 and body["error"] == "method DELETE not allowed"


def test_a_body_sent_in_pieces_is_read_whole_and_a_stalled_one_times_out():
    seen = []

    def echo(request: Request):
        seen.append(request.body)
        return json_response(200, {"n": len(request.body), "q": request.query_params()})

    router = Router()
    router.add("/echo/{what}", echo, "POST")
    srv = Server("127.0.0.1", 0, router, read_timeout=1.0)
    srv.start()
    try:
        port = srv.address[1]
        body = b'{"k": "' + b"x" * 30000 + b'"}'
        head = f"POST /echo/a?z=1&z=2 HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(head + body[:10])
            time.sleep(0.1)
            s.sendall(body[10:20000])
            time.sleep(0.1)
            s.sendall(body[20000:])
            answer = s.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b'{"n":%d,"q":{"z":"2"}}' % len(body))
        assert seen == [body]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(head + body[:100])  # and nothing more
            t0 = time.monotonic()
            answer = s.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - t0 < 2
        assert len(seen) == 1
    finally:
        srv.stop()
