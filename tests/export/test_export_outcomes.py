"""What a user is told about export, and what the counters say happened:
a dead collector is reported at its first failed attempt, shutdown keeps to
``PULSETRACE_SHUTDOWN_TIMEOUT_MS`` (and does not wait for a collector that
refuses connections), ``OTEL_TRACES_EXPORTER=none`` queues nothing, and the
counters tell delivered spans from failed ones. Real processes and real
receivers (otlp_receivers), no mocks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

import grpc
import pytest
from otlp_receivers import (
    GrpcAnswer,
    HttpAnswer,
    closed_port,
    free_port,
)

import pulsetrace
from pulsetrace.export.otlp import config_from_env
from pulsetrace.export.otlp_exporter import OtlpSpanExporter

from conftest import fresh

RUN = shutil.which("pulsetrace-run") or str(Path(sys.executable).with_name("pulsetrace-run"))
HTTP = "http/protobuf"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))}
    env.update(extra)
    return env


# An application under pulsetrace-run: one kept trace, then it idles and
# exits. Each pulsetrace log record, and the moments the trace ended and the
# application began to exit, are printed as JSON lines with time.monotonic()
# (one clock for every process on the machine).
APP = """
import json, logging, sys, time
import pulsetrace

def say(**what):
    print(json.dumps({"at": time.monotonic(), **what}), flush=True)

class Stamp(logging.Handler):
    def emit(self, record):
        say(level=record.levelname, message=record.getMessage())

logging.getLogger("pulsetrace").addHandler(Stamp())
with pulsetrace.start_span("job", kind="consumer"):
    pass
say(ended=True)
time.sleep(float(sys.argv[1]))
say(exiting=True)
"""


def run_app(tmp_path: Path, idle_s: float, **env: str) -> tuple[list[dict[str, Any]], str, float]:
    """Run APP; its JSON lines, its stderr, and when it had exited."""
    script = tmp_path / "app.py"
    script.write_text(APP)
    proc = subprocess.run(
        [RUN, sys.executable, str(script), str(idle_s)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(PULSETRACE_SAMPLE_RATE="1", **env),
    )
    exited = time.monotonic()
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr, exited


def moment(lines: list[dict[str, Any]], key: str) -> float:
    return next(line["at"] for line in lines if line.get(key))


def test_a_dead_collector_is_said_at_once_and_shutdown_does_not_wait_for_it(tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    lines, stderr, exited = run_app(
        tmp_path,
        idle_s=3.0,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        # The first export attempt comes about 0.1 s after the trace ended.
        PULSETRACE_EXPORT_INTERVAL_MS="100",
        PULSETRACE_SHUTDOWN_TIMEOUT_MS="5000",
    )
    ended = moment(lines, "ended")
    said = [
        x for x in lines if "message" in x and "cannot reach the OTLP collector" in x["message"]
    ]
    # Said once (the sender retries for 10 s meanwhile), naming the endpoint
    # and the error, within about a second of the first attempt.
    assert len(said) == 1, lines
    assert said[0]["level"] == "WARNING" and endpoint in said[0]["message"]
    assert "UNAVAILABLE" in said[0]["message"] and "Connection refused" in said[0]["message"]
    assert said[0]["at"] - ended < 1.5, said[0]["at"] - ended
    # A user sees it with the default LOG_LEVEL (warning), on stderr.
    assert stderr.count("cannot reach the OTLP collector") == 1, stderr
    # At exit, the pending export gets one more attempt, refused at once:
    # no waiting for the 5 s bound.
    took = exited - moment(lines, "exiting")
    assert took < 1.5, took


def test_start_up_says_where_traces_go_at_info():
    endpoint = f"http://127.0.0.1:{closed_port()}"
    said = "pulsetrace: kept traces go to " + endpoint + " (OTLP over grpc)"
    for level, shown in (("info", True), ("", False)):
        r = subprocess.run(
            [RUN, sys.executable, "-c", "pass"],
            capture_output=True,
            text=True,
            timeout=30,
            env=clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, LOG_LEVEL=level),
        )
        # No logging configured by the application: LOG_LEVEL=info still shows.
        assert (said in r.stderr.splitlines()) is shown, r.stderr


class Silent:
    """A TCP port that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("protocol", ["grpc", HTTP])
def test_shutdown_waits_at_most_the_configured_bound(protocol, tmp_path):
    silent = Silent()
    try:
        lines, stderr, exited = run_app(
            tmp_path,
            idle_s=0.2,
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{silent.port}",
            PULSETRACE_EXPORT_INTERVAL_MS="60000",  # only the exit sends
            PULSETRACE_SHUTDOWN_TIMEOUT_MS="1500",
        )
    finally:
        silent.close()
    took = exited - moment(lines, "exiting")
    # The export would wait 10 s for an answer (OTEL_EXPORTER_OTLP_TIMEOUT).
    assert 1.0 < took < 2.5, took


@pytest.mark.parametrize(("raw", "used"), [("soon", "5000.0"), ("-3", "0.0"), ("1e30", "600000.0")])
def test_a_bad_shutdown_timeout_is_one_warning_and_a_usable_value(raw, used):
    code = "import pulsetrace; print(pulsetrace.get_config().shutdown_timeout_ms)"
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=clean_env(PULSETRACE_SHUTDOWN_TIMEOUT_MS=raw),
    )
    assert r.stdout == f"{used}\n"
    assert r.stderr.count(f"PULSETRACE_SHUTDOWN_TIMEOUT_MS='{raw}'") == 1, r.stderr


# -- OTEL_TRACES_EXPORTER=none ---------------------------------------------------------

IDLE_APP = """
import time
import pulsetrace

for i in range(20):
    with pulsetrace.start_span(f"job {i}"):
        pass
print("ready", flush=True)
time.sleep(60)
"""


def metric(body: str, name: str) -> float:
    (value,) = [
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith((name + "{", name + " "))
    ]
    return value


def test_with_no_exporter_nothing_is_queued(tmp_path):
    port = free_port()
    script = tmp_path / "app.py"
    script.write_text(IDLE_APP)
    proc = subprocess.Popen(
        [RUN, sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(
            OTEL_TRACES_EXPORTER="none",
            PULSETRACE_SAMPLE_RATE="1",
            PROMETHEUS_ENABLED="true",
            PULSETRACE_METRICS_ADDR=f"127.0.0.1:{port}",
        ),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        # Well past the export interval and the worker's rounds.
        time.sleep(1.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    assert metric(body, "pulsetrace_traces_kept_probabilistic_total") == 20
    assert metric(body, "pulsetrace_export_queue_spans") == 0
    assert metric(body, "pulsetrace_traces_discarded_no_exporter_total") == 20
    assert metric(body, "pulsetrace_traces_handed_to_exporters_total") == 0
    assert stderr == ""


# -- delivered and failed ----------------------------------------------------------------


def record(n: int, name: str) -> None:
    for i in range(n):
        with pulsetrace.start_span(f"{name} {i}"):
            pass


def delta(before: dict[str, int], *names: str) -> tuple[int, ...]:
    c = pulsetrace.counters()
    return tuple(c[n] - before[n] for n in names)


COUNTED = ("spans_handed_to_exporters", "spans_delivered", "spans_delivery_failed")


@pytest.mark.parametrize("protocol", ["grpc", HTTP])
def test_delivered_and_failed_spans_are_counted_apart(
    protocol, grpc_receiver, http_receiver, added
):
    fresh(export_interval_ms=60_000)  # only the flushes below export
    if protocol == "grpc":
        receiver: Any = grpc_receiver
        grpc_receiver.script(
            GrpcAnswer(grpc.StatusCode.INVALID_ARGUMENT),  # refused: not retried
            GrpcAnswer(rejected_spans=1),  # partial success: one span refused
        )
    else:
        receiver = http_receiver
        http_receiver.script(HttpAnswer(400), HttpAnswer(rejected_spans=1))
    exp = OtlpSpanExporter(
        config_from_env(
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            }
        )
    )
    added.append(exp)
    pulsetrace.add_exporter(exp)
    before = pulsetrace.counters()

    record(5, "refused")
    assert pulsetrace.flush(5)
    assert delta(before, *COUNTED) == (5, 0, 5)
    record(4, "partly")
    assert pulsetrace.flush(5)
    assert delta(before, *COUNTED) == (9, 3, 6)
    record(3, "accepted")
    assert pulsetrace.flush(5)
    assert delta(before, *COUNTED) == (12, 6, 6)
    assert len(receiver.requests()) == 2
    c = pulsetrace.counters()
    assert c["otlp_spans_sent"] == 6 and c["internal_errors"] == 0


class Failing:
    """An exporter of the application's own whose deliveries fail."""

    def __init__(self) -> None:
        self.calls = 0

    def export(self, traces: Any) -> pulsetrace.ExportResult:
        self.calls += 1
        return pulsetrace.ExportResult.FAILURE

    def force_flush(self, timeout: float = 30.0) -> bool:
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        pass


def test_an_exporter_result_is_what_is_counted(added):
    fresh(export_interval_ms=60_000)
    failing, memory = Failing(), pulsetrace.InMemorySpanExporter()
    added.extend([failing, memory])
    pulsetrace.add_exporter(failing)
    pulsetrace.add_exporter(memory)
    before = pulsetrace.counters()
    record(4, "twice")
    assert pulsetrace.flush(5)
    # Each span went to two exporters: delivered by one, failed by the other.
    assert delta(before, *COUNTED) == (4, 4, 4)
    assert failing.calls >= 1 and len(memory.spans()) == 4


def metric_or_none(body: str, name: str) -> Optional[float]:
    try:
        return metric(body, name)
    except ValueError:
        return None


def test_the_exposition_has_the_delivery_counters(added):
    from pulsetrace import prometheus

    fresh(export_interval_ms=60_000)
    failing = Failing()
    added.append(failing)
    pulsetrace.add_exporter(failing)
    body = prometheus.exposition()[0].decode()
    delivered = metric(body, "pulsetrace_spans_delivered_total")
    failed = metric(body, "pulsetrace_spans_delivery_failed_total")
    record(2, "failing")
    assert pulsetrace.flush(5)
    body = prometheus.exposition()[0].decode()
    assert metric(body, "pulsetrace_spans_delivered_total") == delivered
    assert metric(body, "pulsetrace_spans_delivery_failed_total") == failed + 2
    assert metric(body, "pulsetrace_spans_handed_to_exporters_total") == 2
    assert metric_or_none(body, "pulsetrace_spans_exported_total") is None
