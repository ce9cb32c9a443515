"""A collector that accepts connections and does not answer holds no
thread of the application's export chain: the OTLP exporter sends without
waiting for answers, so the export thread keeps draining the core's export
queue into the exporter's pending requests (bounded), nothing is dropped
that fits that bound, and once the collector answers again every span
arrives exactly once; a shutdown meanwhile returns within its bound with
every span accounted for. Real OTLP receivers (otlp_receivers) in their
silent mode, over HTTP and gRPC, spans produced through pulsetrace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import otlp_receivers
import pytest
from otlp_receivers import spans_of

import pulsetrace
from pulsetrace.export.otlp import config_from_env
from pulsetrace.export.otlp_exporter import OtlpSpanExporter

from conftest import fresh, wait_until

HTTP, GRPC = "http/protobuf", "grpc"
COUNTED = (
    "spans_handed_to_exporters",
    "spans_delivered",
    "spans_delivery_failed",
    "spans_dropped_export_full",
)


def start_receiver(protocol: str) -> Any:
    if protocol == GRPC:
        return otlp_receivers.start_grpc_receiver()
    return otlp_receivers.start_http_receiver()


def received(receiver: Any) -> list[str]:
    return [name for r in receiver.requests() for name, _, _ in spans_of(r)]


def delta(before: dict[str, int], *names: str) -> tuple[int, ...]:
    c = pulsetrace.counters()
    return tuple(c[n] - before[n] for n in names)


@pytest.mark.parametrize("protocol", [HTTP, GRPC])
def test_a_silent_collector_loses_no_span_that_fits_the_pending_bound(protocol, added):
    # A small export queue (40 spans) and a request timeout of 1 s: a
    # thread that waited for the collector would leave ~90 spans a second
    # to a queue of 40.
    fresh(export_interval_ms=50, export_queue_size=40, worker_interval_ms=50)
    receiver = start_receiver(protocol)
    receiver.silence.go_silent()
    try:
        exp = OtlpSpanExporter(
            config_from_env(
                {
                    "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                    "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                    "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
                }
            ),
            max_retry_delay_s=0.5,
            max_pending_spans=1_000,
        )
        added.append(exp)
        pulsetrace.add_exporter(exp)
        before = pulsetrace.counters()
        sent: list[str] = []
        started = time.monotonic()
        while time.monotonic() - started < 3.0:  # three request timeouts
            name = f"steady {len(sent)}"
            with pulsetrace.start_span(name):
                pass
            sent.append(name)
            time.sleep(0.01)
        # Every span handed to the exporters, or dropped from the queue.
        assert wait_until(
            lambda: sum(delta(before, "spans_handed_to_exporters", "spans_dropped_export_full"))
            == len(sent),
            timeout=5.0,
        )
        c = exp.counters()
        handed, delivered, failed, dropped = delta(before, *COUNTED)
        print(f"\n{protocol}: {len(sent)} spans; handed {handed}, dropped {dropped}; otlp {c}")
        # The collector got requests and answered none...
        assert receiver.silence.held > 0 and received(receiver) == []
        # ...and no span was lost: none dropped from the export queue, none
        # from the pending requests (in flight included), none given up.
        assert dropped == 0
        assert (handed, delivered, failed) == (len(sent), 0, 0)
        assert c["otlp_spans_dropped_pending_full"] == 0 and c["otlp_spans_lost"] == 0
        assert c["otlp_spans_sent"] == 0 and c["otlp_queued_spans"] == len(sent)
        assert c["otlp_spans_retried"] > 0  # attempts timed out and were kept
        # The collector answers again (between two attempts, so that no
        # request is answered just as its client gives up on it).
        assert wait_until(lambda: exp.counters()["otlp_requests_in_flight"] == 0, timeout=5.0)
        receiver.silence.answer_again()
        assert wait_until(lambda: len(received(receiver)) >= len(sent), timeout=15.0), (
            len(received(receiver)),
            exp.counters(),
        )
        time.sleep(0.3)  # nothing else (no request twice) arrives after
        got = received(receiver)
        assert sorted(got) == sorted(sent) and len(got) == len(set(got))
        assert delta(before, *COUNTED) == (len(sent), len(sent), 0, 0)
        c = exp.counters()
        assert (c["otlp_spans_sent"], c["otlp_queued_spans"], c["otlp_spans_lost"]) == (
            len(sent),
            0,
            0,
        )
    finally:
        receiver.stop()


APP = """
import json, sys, threading, time
import pulsetrace
from pulsetrace.export.otlp_exporter import OtlpSpanExporter

pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0, export_interval_ms=50)
pulsetrace.add_exporter(OtlpSpanExporter())  # the environment's OTLP settings
for i in range(40):
    with pulsetrace.start_span(f"job {i}"):
        pass
    time.sleep(0.01)
time.sleep(0.3)  # the requests are out, unanswered
for i in range(10):  # and these still in the export queue
    with pulsetrace.start_span(f"last {i}"):
        pass
started = time.monotonic()
ok = pulsetrace.shutdown(float(sys.argv[1]))
took = time.monotonic() - started
print(json.dumps({
    "took": took,
    "counters": pulsetrace.counters(),
    "threads": [t.name for t in threading.enumerate()],
}))
"""


@pytest.mark.parametrize("pending_full", [False, True], ids=["room", "pending-full"])
@pytest.mark.parametrize("protocol", [HTTP, GRPC])
def test_shutdown_with_a_silent_collector_returns_within_its_bound_every_span_counted(
    protocol, pending_full, tmp_path: Path
):
    receiver = start_receiver(protocol)
    receiver.silence.go_silent()
    script = tmp_path / "app.py"
    script.write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))}
    # The default request timeout (10 s): far longer than the shutdown's bound.
    env.update(OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    if pending_full:
        # No failure yet (the first answer is 10 s away) and the pending
        # bound reached: the export thread waits for room when the
        # shutdown begins, and the shutdown does not wait with it.
        env.update(PULSETRACE_OTLP_MAX_PENDING_SPANS="15")
    bound = 1.0
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(bound)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    finally:
        receiver.stop()
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    c = out["counters"]
    print(
        f"\n{protocol}: shutdown took {out['took']:.2f} s; "
        + ", ".join(f"{k} {c[k]}" for k in (*COUNTED, "otlp_spans_lost", "otlp_queued_spans"))
    )
    assert receiver.silence.held > 0 and received(receiver) == []
    # Within its bound, and the export thread is not left waiting for an answer.
    assert out["took"] < bound + 0.3, out["took"]
    assert "pulsetrace-export" not in out["threads"], out["threads"]
    # Every span accounted for when it returns: none was answered, so every
    # one (pending, or in flight and cancelled) is counted as lost.
    assert c["spans_handed_to_exporters"] == 50, c
    assert (c["spans_delivered"], c["spans_delivery_failed"]) == (0, 50), c
    assert (c["otlp_spans_lost"], c["otlp_queued_spans"], c["otlp_spans_sent"]) == (50, 0, 0), c
    assert proc.stderr.count("more were sent and not yet answered: cancelled") == 1, proc.stderr


FORK_APP = """
import json, os, sys, time
import pulsetrace
from pulsetrace.export.otlp_exporter import OtlpSpanExporter

pulsetrace.configure(
    pulsetrace.Config(), sample_rate=1.0, export_interval_ms=50, shutdown_timeout_ms=200
)
exp = OtlpSpanExporter()  # the environment's OTLP settings
pulsetrace.add_exporter(exp)
for i in range(10):
    with pulsetrace.start_span(f"job {i}"):
        pass
    time.sleep(0.01)
time.sleep(0.3)  # the requests are out, unanswered
parent = exp.counters()
pid = os.fork()
if pid == 0:
    child = exp.counters()
    started = time.monotonic()
    flushed = exp.force_flush(2.0)
    print(json.dumps({
        "parent": parent,
        "child": child,
        "flushed": flushed,
        "took": time.monotonic() - started,
    }), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


@pytest.mark.parametrize("protocol", [HTTP, GRPC])
def test_a_forked_child_starts_with_nothing_in_flight(protocol, tmp_path: Path):
    receiver = start_receiver(protocol)
    receiver.silence.go_silent()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))}
    env.update(OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", FORK_APP], capture_output=True, text=True, timeout=60, env=env
        )
    finally:
        receiver.stop()
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    # The parent had requests in flight at the fork; they are the parent's:
    # the child holds nothing, and its flush has nothing to wait for.
    assert out["parent"]["otlp_requests_in_flight"] > 0, out
    assert out["parent"]["otlp_queued_spans"] == 10, out
    child = out["child"]
    assert (child["otlp_requests_in_flight"], child["otlp_queued_spans"]) == (0, 0), out
    assert out["flushed"] and out["took"] < 0.5, out
