"""The metrics server against bad clients: slow heads are cut off at a
deadline, connections are bounded (slow ones make room for a scraper, the
rest are refused at once), and hundreds of slow clients neither hold
threads nor delay scrapes. Clients here are raw sockets, so that the tests
control every byte and its timing."""

from __future__ import annotations

import gzip
import logging
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import pytest

import pulsetrace
from pulsetrace import _diag, prometheus
from pulsetrace.config import from_env

from conftest import fresh

TESTS = Path(__file__).parent
RUN = shutil.which("pulsetrace-run") or str(Path(sys.executable).with_name("pulsetrace-run"))
GET = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse_response(data: bytes, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names, repeated ones joined) and body of a
    complete response; the body is as long as Content-Length says."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:200]!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version in ("HTTP/1.0", "HTTP/1.1"), status_line
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        name = name.lower()
        headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    expected = 0 if head_only else int(headers["content-length"])
    assert len(body) == expected, (len(body), headers)
    return int(status), headers, body


def request(
    port: int, data: bytes, timeout: float = 10, head_only: bool = False
) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return parse_response(read_all(s), head_only)


@pytest.fixture
def server() -> Iterator[Callable[[], int]]:
    """The metrics server of this process, on a free port, with the settings
    the test gave ``fresh`` (call ``fresh`` before using the port)."""
    prometheus.stop_server()

    def start() -> int:
        addr = prometheus.start_server("127.0.0.1:0")
        assert addr is not None
        return addr[1]

    yield start
    prometheus.stop_server()
    pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0)


class Trickler:
    """A client that sends a request head one byte at a time and never
    finishes it; ``closed_after`` is when the server closed the connection
    (seconds after the connect), ``answer`` what it said before."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.connected = time.monotonic()
        self.sock.setblocking(False)
        self.sent = 0
        self.answer = b""
        self.closed_after: Optional[float] = None

    HEAD = b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 10_000

    def send_byte(self) -> None:
        try:
            self.sock.send(self.HEAD[self.sent : self.sent + 1])
            self.sent += 1
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            pass

    def on_readable(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(4096)
                if not chunk:
                    break
                self.answer += chunk
        except BlockingIOError:
            return
        except ConnectionResetError:
            pass
        self.closed_after = time.monotonic() - self.connected


def trickle(clients: list[Trickler], every: float, stop: threading.Event) -> None:
    """Each client sends a byte every ``every`` seconds; server closes are
    noted as they happen."""
    sel = selectors.DefaultSelector()
    for c in clients:
        sel.register(c.sock, selectors.EVENT_READ, c)
    next_send = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_send:
            for c in clients:
                if c.closed_after is None:
                    c.send_byte()
            next_send = now + every
        for key, _ in sel.select(max(0.0, min(next_send - now, 0.05))):
            c = key.data
            c.on_readable()
            if c.closed_after is not None:
                sel.unregister(c.sock)
    sel.close()


def test_the_settings_come_from_the_environment(caplog):
    cfg = from_env(
        {"PULSETRACE_METRICS_MAX_CONNECTIONS": "64", "PULSETRACE_METRICS_READ_TIMEOUT_MS": "2000"}
    )
    assert (cfg.metrics_max_connections, cfg.metrics_read_timeout_ms) == (64, 2000.0)
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        cfg = from_env(
            {"PULSETRACE_METRICS_MAX_CONNECTIONS": "0", "PULSETRACE_METRICS_READ_TIMEOUT_MS": "x"}
        )
    # Below the range: clamped to its minimum; not a number: the default.
    assert (cfg.metrics_max_connections, cfg.metrics_read_timeout_ms) == (1, 5000.0)
    assert [r.getMessage().split("=")[0] for r in caplog.records] == [
        "pulsetrace: PULSETRACE_METRICS_MAX_CONNECTIONS",
        "pulsetrace: PULSETRACE_METRICS_READ_TIMEOUT_MS",
    ]


def test_a_head_sent_byte_by_byte_is_cut_off_at_the_deadline(server):
    # One byte every 0.1 s never leaves the connection idle for long, so only
    # a deadline for the whole head (not a timeout per read) ends it.
    fresh(metrics_read_timeout_ms=1000)
    port = server()
    clients = [Trickler(port) for _ in range(5)]
    stop = threading.Event()
    t = threading.Thread(target=trickle, args=(clients, 0.1, stop))
    t.start()
    try:
        time.sleep(0.5)
        # Meanwhile a scraper is served.
        assert request(port, GET)[0] == 200
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(c.closed_after is None for c in clients):
            time.sleep(0.05)
    finally:
        stop.set()
        t.join()
        for c in clients:
            c.sock.close()
    for c in clients:
        assert c.closed_after is not None and 0.95 <= c.closed_after <= 1.5, c.closed_after
        assert c.sent >= 8
        assert parse_response(c.answer)[0] == 408


def test_an_oversized_request_head_gets_431(server):
    fresh()
    port = server()
    fits = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 8000 + b"\r\n\r\n"
    assert len(fits) <= 8192 and request(port, fits)[0] == 200
    # Over the limit in one header or in many; with 1 MiB still coming, the
    # client reads the 431 rather than a reset.
    for head in (
        b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: aaaaaaaaaaaaaaaa\r\n" * 400 + b"\r\n",
        b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * (1 << 20),
    ):
        status, _, body = request(port, head)
        assert status == 431 and b"8192" in body


def test_only_get_and_head_are_served(server):
    fresh()
    port = server()
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        data = f"{method} /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".encode()
        status, headers, _ = request(port, data)
        assert (status, headers["allow"]) == (405, "GET, HEAD"), method
    status, headers, body = request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n", head_only=True)
    assert status == 200 and body == b""
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) > 1000
    for bad in (b"GET\r\n\r\n", b"GET /metrics\r\n\r\n", b"GET metrics HTTP/1.1\r\n\r\n"):
        assert request(port, bad)[0] == 400, bad


def type_lines(body: bytes) -> list[bytes]:
    return [line for line in body.split(b"\n") if line.startswith(b"# TYPE ")]


def test_gzip_when_the_scraper_accepts_it(server):
    fresh()
    port = server()
    status, headers, plain = request(port, GET)
    assert status == 200 and "content-encoding" not in headers
    asks = b"GET /metrics HTTP/1.1\r\nAccept-Encoding: gzip, deflate\r\n\r\n"
    status, headers, body = request(port, asks)
    assert (status, headers["content-encoding"]) == (200, "gzip")
    assert "Accept-Encoding" in headers["vary"]
    text = gzip.decompress(body)
    assert len(body) < len(text) / 2
    assert type_lines(text) == type_lines(plain) and len(type_lines(text)) > 5
    refuses = b"GET /metrics HTTP/1.1\r\nAccept-Encoding: gzip;q=0\r\n\r\n"
    assert "content-encoding" not in request(port, refuses)[1]


def test_slow_heads_make_room_for_a_scraper_when_the_server_is_full(server):
    fresh(metrics_max_connections=4)
    port = server()
    clients = [Trickler(port) for _ in range(4)]
    stop = threading.Event()
    t = threading.Thread(target=trickle, args=(clients, 0.1, stop))
    t.start()
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        assert request(port, GET)[0] == 200
        assert time.monotonic() - t0 < 0.5
        time.sleep(0.2)
    finally:
        stop.set()
        t.join()
        for c in clients:
            c.sock.close()
    # The oldest unfinished head was closed (told 503) to make room; the
    # others were still being read.
    assert clients[0].closed_after is not None
    assert parse_response(clients[0].answer)[0] == 503
    assert [c.closed_after for c in clients[1:]] == [None, None, None]


def test_a_full_server_refuses_at_once_and_serves_added_routes():
    from pulsetrace._router import Response, Router
    from pulsetrace._server import Server

    release = threading.Event()

    def block(request):
        release.wait(10)
        return Response(200, [("Content-Type", "text/plain")], b"done\n")

    def boom(request):
        raise RuntimeError("handler bug")

    router = Router()
    router.add("/block", block)
    router.add("/hello", lambda r: (200, [], f"hi {r.query}".encode()))
    router.add("/boom", boom)
    router.add("/bad-header", lambda r: (200, [("X-A", "b\r\nX-Injected: 1")], b""))
    with pytest.raises(ValueError, match="already routed"):
        router.add("/hello", boom)
    _diag.reset()
    srv = Server("127.0.0.1", 0, router, max_connections=3, workers=3, read_timeout=2.0)
    srv.start()
    port = srv.address[1]
    try:
        assert request(port, b"GET /hello?x=1 HTTP/1.1\r\n\r\n")[2] == b"hi x=1"
        assert request(port, b"GET /nope HTTP/1.1\r\n\r\n")[0] == 404
        assert request(port, b"GET /boom HTTP/1.1\r\n\r\n")[0] == 500
        assert request(port, b"GET /bad-header HTTP/1.1\r\n\r\n")[0] == 500
        assert _diag.internal_errors() == {"server/boom": 1, "server/bad-header": 1}
        # Three requests being handled fill the server: a fourth client is
        # answered 503 at once, not queued.
        with ThreadPoolExecutor(3) as pool:
            blocked = [pool.submit(request, port, b"GET /block HTTP/1.1\r\n\r\n") for _ in range(3)]
            time.sleep(0.3)
            t0 = time.monotonic()
            status, headers, _ = request(port, b"GET /hello HTTP/1.1\r\n\r\n")
            assert (status, headers["retry-after"]) == (503, "1")
            assert time.monotonic() - t0 < 0.5
            release.set()
            assert [f.result()[2] for f in blocked] == [b"done\n"] * 3
        assert request(port, b"GET /hello HTTP/1.1\r\n\r\n")[0] == 200
    finally:
        release.set()
        srv.stop()
        _diag.reset()
    with pytest.raises(OSError):
        request(port, b"GET /hello HTTP/1.1\r\n\r\n")


@pytest.mark.skipif(sys.platform != "linux", reason="fork semantics checked on Linux")
def test_a_forked_child_leaves_the_parents_server_serving(server):
    fresh()
    port = server()
    # A connection the parent's server is reading when the process forks.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as pending:
        pending.sendall(b"GET /metrics HTTP/1.1\r\n")
        time.sleep(0.2)
        pid = os.fork()
        if pid == 0:  # child: the server is not inherited; a new one works
            code = 1
            try:
                addr = prometheus.start_server("127.0.0.1:0")
                if addr is not None and request(addr[1], GET)[0] == 200:
                    code = 0
                prometheus.stop_server()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent still watches the connection it was reading.
        t0 = time.monotonic()
        pending.sendall(b"\r\n")
        assert parse_response(read_all(pending))[0] == 200
        assert time.monotonic() - t0 < 1
    assert request(port, GET)[0] == 200


# ---------------------------------------------------------------------------
# Hundreds of slow clients and a burst of scrapes, against an app under
# pulsetrace-run with PROMETHEUS_ENABLED and the default settings.
# ---------------------------------------------------------------------------

SLOW_CLIENTS = 300
SCRAPES = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app() -> Iterator[tuple[int, int]]:
    """(pid, metrics port) of tests/prometheus_app.py under pulsetrace-run."""
    metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))}
    env.update(
        PROMETHEUS_ENABLED="true",
        PULSETRACE_METRICS_ADDR=f"127.0.0.1:{metrics_port}",
        OTEL_TRACES_EXPORTER="none",
    )
    proc = subprocess.Popen(
        [RUN, sys.executable, str(TESTS / "prometheus_app.py"), str(free_port())],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["ready", f"127.0.0.1:{metrics_port}"]
        yield proc.pid, metrics_port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def counts(pid: int) -> tuple[int, int]:
    """(threads, open descriptors) of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def scrape(port: int, start: threading.Barrier) -> tuple[float, int, int]:
    """(seconds, status, body length) of one complete scrape."""
    start.wait()
    t0 = time.monotonic()
    status, _, body = request(port, GET)
    return time.monotonic() - t0, status, len(body)


@pytest.mark.skipif(sys.platform != "linux", reason="counts threads and descriptors in /proc")
def test_slow_clients_hold_no_threads_and_do_not_delay_scrapes(app):
    pid, port = app
    # This process holds the slow clients and the scrapers' sockets.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    defaults = pulsetrace.Config()
    deadline = defaults.metrics_read_timeout_ms / 1000
    assert request(port, GET)[0] == 200
    threads0, fds0 = counts(pid)
    peak = [threads0, fds0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            with_fds = counts(pid)
            peak[0], peak[1] = max(peak[0], with_fds[0]), max(peak[1], with_fds[1])
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = [Trickler(port) for _ in range(SLOW_CLIENTS)]
    stop = threading.Event()
    trickler = threading.Thread(target=trickle, args=(clients, 0.5, stop))
    trickler.start()
    try:
        time.sleep(1.0)
        start = threading.Barrier(SCRAPES, timeout=30)
        with ThreadPoolExecutor(SCRAPES) as pool:
            results = list(pool.map(lambda _: scrape(port, start), range(SCRAPES)))
        # Every slow client is closed by the server by its deadline (those
        # beyond the connection bound earlier, to make room).
        until = max(c.connected for c in clients) + deadline + 1.0
        while time.monotonic() < until and any(c.closed_after is None for c in clients):
            time.sleep(0.1)
    finally:
        stop.set()
        trickler.join()
        sampling.set()
        sampler.join()
        for c in clients:
            c.sock.close()
    assert all(status == 200 and length > 1000 for _, status, length in results)
    took = sorted(seconds for seconds, _, _ in results)
    assert took[-1] < 1.0, f"scrapes took {took[0]:.3f} to {took[-1]:.3f} s"
    late = [c.closed_after for c in clients if (c.closed_after or 1e9) > deadline + 1]
    assert late == [], f"{len(late)} slow clients not closed by the deadline"
    # The server's threads are a fixed pool, started with it. Its descriptors
    # grow by one per connection up to the bound, plus one accepted just
    # before an older connection is closed to make room, plus one per
    # handler thread (4) reading /proc while rendering the process metrics.
    assert peak[0] <= threads0, (peak, threads0)
    assert peak[1] <= fds0 + defaults.metrics_max_connections + 1 + 4, (peak, fds0)
