"""Log records to Fluentd over the Forward protocol.

Neither fluentd nor fluent-bit can be installed from the package registries
this project uses, so the receiver is written here from the protocol's
specification (Forward protocol v1): a real TCP server that decodes the
MessagePack stream (with the msgpack library, not pulsetrace's encoder) and
accepts the Message, Forward and PackedForward modes, EventTime included.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

import msgpack
import pytest

import pulsetrace
import pulsetrace.logging as plog

from conftest import fresh

log = logging.getLogger("campaigns")


class ForwardReceiver:
    """A Forward-protocol input on a free loopback port."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.events: list[tuple[str, float, dict]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _ext(code: int, data: bytes) -> float:
        assert code == 0 and len(data) == 8, (code, data)  # EventTime
        sec, nsec = struct.unpack(">II", data)
        return sec + nsec / 1e9

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(ext_hook=self._ext, raw=False, strict_map_key=False)
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                unpacker.feed(data)
                for message in unpacker:
                    self._message(message)

    def _message(self, m: list) -> None:
        tag = m[0]
        if isinstance(m[1], (int, float)):  # Message mode: [tag, time, record, option?]
            entries = [(m[1], m[2])]
        elif isinstance(m[1], list):  # Forward mode: [tag, [[time, record], ...], option?]
            entries = [(t, r) for t, r in m[1]]
        else:  # PackedForward: [tag, bin/str of concatenated entries, option?]
            entries = list(msgpack.Unpacker(ext_hook=self._ext, raw=False))
        with self.lock:
            self.events += [(tag, t, r) for t, r in entries]

    def wait(self, n: int, timeout: float = 5.0) -> list[tuple[str, float, dict]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.events) >= n:
                    return list(self.events)
            time.sleep(0.01)
        with self.lock:
            return list(self.events)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def receiver():
    fresh(service_name="api")
    r = ForwardReceiver()
    yield r
    plog.unconfigure()
    r.close()


def test_records_arrive_as_forward_events_with_the_line_s_fields(receiver):
    plog.configure(fluentd=f"127.0.0.1:{receiver.port}")
    with pulsetrace.start_span("send campaign") as span:
        log.info("Campaign started", extra={"campaignId": "camp_123", "jobs": 1500})
    for i in range(40):  # a map and an array longer than their short forms
        log.warning("message %d", i, extra={f"k{j}": j for j in range(20)})
    events = receiver.wait(41)
    assert len(events) == 41
    tag, at, first = events[0]
    assert tag == "app"
    assert abs(at - time.time()) < 60 and at != int(at)  # EventTime: sub-second
    assert first["message"] == "Campaign started" and first["service"] == "api"
    assert first["metadata"] == {"campaignId": "camp_123", "jobs": 1500}
    assert first["trace_id"] == f"{span.trace_id:032x}"
    assert first["@timestamp"].endswith("Z") and first["level"] == "info"
    assert events[-1][2]["metadata"] == {f"k{j}": j for j in range(20)}
    assert plog.counters()["logs_sent"] == 41 and plog.counters()["logs_dropped"] == 0


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_with_the_collector_down_records_are_dropped_and_counted_never_blocking(capfd):
    fresh(logs_queue_size=50)  # a small queue, so it fills
    try:
        plog.configure(fluentd=f"127.0.0.1:{closed_port()}")
        t0 = time.perf_counter()
        for i in range(5000):
            log.info("record %d", i)
        took = time.perf_counter() - t0
        # Never waits for the collector: 5000 records in well under a second
        # each (connect refused happens on the sender thread).
        assert took < 5, took
        # Every record is dropped: most find the queue full, the rest fail
        # to be sent.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and plog.counters()["logs_dropped"] < 5000:
            time.sleep(0.05)
        c = pulsetrace.counters()
        assert c["logs_dropped"] == 5000 and c["logs_sent"] == 0
    finally:
        plog.unconfigure()
    assert capfd.readouterr().err.count("are being dropped") == 1


FORKED = """
import logging, os, sys
import pulsetrace.logging as plog
plog.configure(fluentd=sys.argv[1])
log = logging.getLogger("worker")
log.info("from the parent")
pid = os.fork()
if pid == 0:  # a pre-fork worker: its records are sent by its own thread
    log.info("from the child")
    plog.unconfigure()  # sends what is queued
    os._exit(0)
os.waitpid(pid, 0)
plog.unconfigure()
"""


def test_a_forked_worker_sends_its_own_records(receiver):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", FORKED, f"127.0.0.1:{receiver.port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    got = sorted(e[2]["message"] for e in receiver.wait(2))
    assert got == ["from the child", "from the parent"]
