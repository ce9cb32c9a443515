"""Nothing lost at the numbers users reported: 10,000 spans of a process
that exits normally while its collector takes 5 s a request, and 750 spans/s
through a 10 s collector outage. Real receivers (otlp_receivers), spans
produced through pulsetrace, counted on arrival against what was produced."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import otlp_receivers
import pytest
from otlp_receivers import HttpAnswer, HttpReceiver, closed_port, spans_of, start_http_receiver

import pulsetrace
from pulsetrace.export.otlp import config_from_env
from pulsetrace.export.otlp_exporter import OtlpSpanExporter

from conftest import fresh

pytestmark = pytest.mark.slow

HTTP = "http/protobuf"
COUNTED = ("spans_handed_to_exporters", "spans_delivered", "spans_delivery_failed")

# An application that records TRACES traces of 2 spans (at a pace its
# intake keeps up with), prints when it begins to exit, and exits normally:
# pulsetrace sends what is queued at exit. Its counters after that shutdown
# are printed last (atexit runs this handler after pulsetrace's).
APP = """
import atexit, json, sys, time

def counters():
    import pulsetrace
    print(json.dumps({"counters": pulsetrace.counters()}), flush=True)

atexit.register(counters)
import pulsetrace.auto
import pulsetrace

traces = int(sys.argv[1])
for i in range(traces):
    with pulsetrace.start_span("root %d" % i, kind="server"):
        with pulsetrace.start_span("child %d" % i):
            pass
    if i % 250 == 249:
        time.sleep(0.05)
print(json.dumps({"exiting": time.monotonic()}), flush=True)
"""

TRACES = 5_000
PRODUCED = 2 * TRACES
DELAY_S = 5.0  # the slow collector: every answer after 5 s


def names(receiver: HttpReceiver) -> list[str]:
    return [name for r in receiver.requests() for name, _, _ in spans_of(r)]


def run_app(
    tmp_path: Path, receiver: HttpReceiver, budget_ms: int, **env_extra: str
) -> tuple[Any, float]:
    """Run APP against ``receiver``; its output, and how long its exit took."""
    script = tmp_path / "app.py"
    script.write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))}
    env.update(
        OTEL_EXPORTER_OTLP_PROTOCOL=HTTP,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        PULSETRACE_SAMPLE_RATE="1",
        PULSETRACE_SHUTDOWN_TIMEOUT_MS=str(budget_ms),
        **env_extra,
    )
    proc = subprocess.run(
        [sys.executable, str(script), str(TRACES)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    exited = time.monotonic()
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    exiting = next(x["exiting"] for x in lines if "exiting" in x)
    return proc, exited - exiting


def app_counters(proc: Any) -> dict[str, int]:
    """The application's counters after its shutdown (APP prints them last)."""
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return next(x["counters"] for x in lines if "counters" in x)


def settled(receiver: HttpReceiver) -> None:
    """Wait until every request the receiver read has been answered."""
    deadline = time.monotonic() + DELAY_S + 5
    while time.monotonic() < deadline:
        with receiver.lock:
            answered = len(receiver.received)
            calls = receiver.calls
        if answered == calls:
            return
        time.sleep(0.1)
    raise AssertionError(f"{calls - answered} requests never answered")


def test_a_slow_collector_gets_every_span_of_a_normal_exit(tmp_path):
    receiver = start_http_receiver()
    receiver.script(*[HttpAnswer(delay=DELAY_S) for _ in range(1_000)])
    try:
        proc, took = run_app(tmp_path, receiver, budget_ms=20_000)
        settled(receiver)
        got = names(receiver)
        assert len(got) == PRODUCED, (len(got), receiver.calls, proc.stderr)
        assert len(set(got)) == PRODUCED
        # The requests went out at once, not one after another: one 5 s
        # answer, not several in a row.
        assert took < DELAY_S + 2.5, took
        assert "still queued" not in proc.stderr, proc.stderr
        # The application was told so too: every span delivered.
        c = app_counters(proc)
        assert (c["spans_delivered"], c["spans_delivery_failed"]) == (PRODUCED, 0), c
    finally:
        receiver.stop()


def test_a_too_short_exit_budget_says_how_many_spans_were_left(tmp_path):
    receiver = start_http_receiver()
    receiver.script(*[HttpAnswer(delay=DELAY_S) for _ in range(1_000)])
    try:
        # Requests of about 100 kB: more of them than are sent at once.
        proc, took = run_app(
            tmp_path, receiver, budget_ms=3_000, PULSETRACE_EXPORT_MAX_REQUEST_BYTES="100000"
        )
        assert took < 4.5, took
        warned = re.findall(
            r"(\d+) spans were still queued.*?(\d+) more were sent and not yet answered",
            proc.stderr,
            re.S,
        )
        assert len(warned) == 1, proc.stderr
        queued, in_flight = map(int, warned[0])
        settled(receiver)
        got = len(names(receiver))
        assert queued + in_flight > 0
        # The requests in flight when the time ran out were read in full by
        # the receiver (it answers them after its delay): they arrived; the
        # queued ones were counted as lost.
        assert got + queued == PRODUCED, (got, warned, proc.stderr)
    finally:
        receiver.stop()


def exporter(added: list[Any], endpoint: str) -> OtlpSpanExporter:
    exp = OtlpSpanExporter(
        config_from_env(
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": HTTP,
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            }
        )
    )
    added.append(exp)
    pulsetrace.add_exporter(exp)
    return exp


def bring_up(port: int) -> HttpReceiver:
    """A receiver on ``port``, where nothing listened until now."""
    ref: list[HttpReceiver] = []
    server = ThreadingHTTPServer(("127.0.0.1", port), otlp_receivers._handler(ref, None))
    server.daemon_threads = True
    receiver = HttpReceiver(server, tls=False)
    ref.append(receiver)
    return receiver


def test_a_10s_outage_at_750_spans_per_second_loses_nothing(added):
    fresh()  # the default export interval and queue bound
    port = closed_port()
    exp = exporter(added, f"http://127.0.0.1:{port}")
    before = pulsetrace.counters()
    rate, seconds, outage_s = 750, 14.0, 10.0
    started = time.monotonic()
    produced = 0
    receiver = None
    try:
        while True:
            now = time.monotonic() - started
            if now >= seconds:
                break
            if receiver is None and now >= outage_s:
                receiver = bring_up(port)
            due = int(now * rate)
            while produced < due:
                with pulsetrace.start_span(f"root {produced}", kind="server"):
                    with pulsetrace.start_span(f"child {produced}"):
                        pass
                produced += 2
            time.sleep(0.01)
        assert receiver is not None
        assert pulsetrace.flush(20)
        got = names(receiver)
        assert len(got) == produced, (len(got), produced, exp.counters())
        assert len(set(got)) == produced
        assert delta(before, *COUNTED) == (produced, produced, 0)
        c = exp.counters()
        assert (c["otlp_spans_lost"], c["otlp_batches_lost"]) == (0, 0), c
        # The outage was seen: attempts failed and were made again.
        assert c["otlp_retries"] + c["otlp_spans_retried"] > 0, c
    finally:
        if receiver is not None:
            receiver.stop()


def delta(before: dict[str, int], *keys: str) -> tuple[int, ...]:
    c = pulsetrace.counters()
    return tuple(c[k] - before[k] for k in keys)
