"""Celery against a real broker (RabbitMQ, and Redis) and a real worker
process: sending a task and running it form one trace (PRODUCER ->
CONSUMER), a retry shows as a second publish and run in the same trace, a
failed task's span is an error and its trace is kept by the worker's tail
sampler at a sample rate of 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pulsetrace
from pulsetrace import contrib

from conftest import finished, fresh

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "export"))


#: ``celery`` started after ``import pulsetrace.auto`` (as pulsetrace-run does).
WORKER = (
    "import sys, pulsetrace.auto; from celery.__main__ import main; "
    "sys.argv[0] = 'celery'; main()"
)


@pytest.fixture
def tasks(monkeypatch):
    """The test's Celery app, instrumented in this process."""
    contrib.instrument(pulsetrace.Config(), ["celery"])
    import celery_tasks

    yield celery_tasks
    contrib.uninstrument(["celery"])


def _spans(receiver) -> list:
    return [
        s
        for r in receiver.requests()
        for rs in r.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]


def _broker_url(request, system: str) -> str:
    """The URL of a real broker of ``system`` (its server started by the session fixture)."""
    if system == "rabbitmq":
        server = request.getfixturevalue("rabbitmq_server")
        return f"amqp://guest:guest@{server.host}:{server.port}//"
    server = request.getfixturevalue("redis_server")
    return f"redis://{server.host}:{server.port}/5"


@pytest.mark.slow
@pytest.mark.parametrize("system", ["rabbitmq", "redis"])
def test_tasks_sent_and_run_by_a_worker_form_one_trace_with_retries_and_failures(
    system, request, http_receiver, added, tasks, tmp_path
):
    from celery import Celery

    from pulsetrace.export.otlp import config_from_env
    from pulsetrace.export.otlp_exporter import OtlpSpanExporter

    broker = _broker_url(request, system)
    fresh()
    otlp = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    exp = OtlpSpanExporter(config_from_env(otlp))
    added.append(exp)
    pulsetrace.add_exporter(exp)
    # The sending service's own app (tasks sent by name), for this broker only.
    sender = Celery("shop-web", broker=broker, set_as_current=False)
    sender.conf.task_default_queue = "shop-tasks"
    with sender:
        with pulsetrace.start_span("checkout", kind="server") as root:
            sender.send_task("celery_tasks.add", (2, 3))
            sender.send_task("celery_tasks.flaky")
        with pulsetrace.start_span("audit", kind="server") as quiet:
            # A trace neither failing nor matched: the worker drops it.
            sender.send_task("celery_tasks.noop")
        with pulsetrace.start_span("cancel", kind="server") as failing:
            sender.send_task("celery_tasks.broken")
    assert pulsetrace.flush(5)

    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("APM_", "OTEL_", "PULSETRACE_"))
    }
    # The worker keeps no trace by chance (sample rate 0): the checkout
    # trace is kept by an attribute rule on its tasks, the failing one by
    # its error alone.
    env.update(
        otlp,
        CELERY_BROKER=broker,
        PULSETRACE_SAMPLE_RATE="0",
        PULSETRACE_ADAPTIVE_PERCENTILE="0",
        PULSETRACE_KEEP_ATTRIBUTES=(
            "celery.task.name=celery_tasks.add,celery.task.name=celery_tasks.flaky"
        ),
        OTEL_SERVICE_NAME="worker",
    )
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            "-A",
            "celery_tasks",
            "worker",
            "--pool=solo",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "warning",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wanted = {"process celery_tasks.add", "process celery_tasks.broken"}
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            spans = _spans(http_receiver)
            names = [s.name for s in spans]
            if wanted <= set(names) and names.count("process celery_tasks.flaky") >= 2:
                break
            if worker.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            out, _ = worker.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
    spans = _spans(http_receiver)
    by_name: dict[str, list] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    assert "process celery_tasks.add" in by_name, (sorted(by_name), out[-3000:])
    trace = root.trace_id.to_bytes(16, "big")
    # Every span (both processes) is in the trace of a request that sent tasks.
    traces = {t.trace_id.to_bytes(16, "big") for t in (root, quiet, failing)}
    assert {s.trace_id for s in spans} <= traces, sorted((s.name, s.trace_id.hex()) for s in spans)
    checkout = [s.name for s in spans if s.trace_id == trace]
    assert sorted(set(checkout)) == [
        "checkout",
        "process celery_tasks.add",
        "process celery_tasks.flaky",
        "publish celery_tasks.add",
        "publish celery_tasks.flaky",
        "sum",
    ], checkout
    # The quiet trace ran (its task came before the failing one) and was
    # not kept by the worker: only the sender's spans arrived.
    assert "process celery_tasks.noop" not in by_name
    assert "publish celery_tasks.noop" in by_name
    (send_add,) = by_name["publish celery_tasks.add"]
    (run_add,) = by_name["process celery_tasks.add"]
    assert send_add.parent_span_id == root.span_id.to_bytes(8, "big")
    assert run_add.parent_span_id == send_add.span_id
    assert by_name["sum"][0].parent_span_id == run_add.span_id
    attrs = {a.key: a.value for a in run_add.attributes}
    assert attrs["messaging.system"].string_value == system
    assert attrs["messaging.destination.name"].string_value == "shop-tasks"
    send_attrs = {a.key: a.value for a in send_add.attributes}
    assert send_attrs["messaging.system"].string_value == system
    assert send_attrs["messaging.destination.name"].string_value == "shop-tasks"
    assert attrs["celery.task.state"].string_value == "SUCCESS"

    # The retry: the first run asks for it and sends it, the second run is its child.
    runs = sorted(by_name["process celery_tasks.flaky"], key=lambda s: s.start_time_unix_nano)
    first, second = runs
    sends = {s.parent_span_id: s for s in by_name["publish celery_tasks.flaky"]}
    retry_send = sends[first.span_id]
    assert second.parent_span_id == retry_send.span_id
    state = {a.key: a.value.string_value for a in first.attributes if a.key == "celery.task.state"}
    assert state == {"celery.task.state": "RETRY"}
    assert [e.name for e in first.events] == ["celery.retry"]

    (failed,) = by_name["process celery_tasks.broken"]
    (send_broken,) = by_name["publish celery_tasks.broken"]
    assert failed.trace_id == failing.trace_id.to_bytes(16, "big")
    assert failed.parent_span_id == send_broken.span_id
    assert failed.status.code == 2  # STATUS_CODE_ERROR
    attrs = {a.key: a.value.string_value for a in failed.attributes}
    assert attrs["error.type"] == "ValueError"


def test_a_failed_task_keeps_its_trace_at_sample_rate_zero(tasks, exporter):
    fresh(sample_rate=0.0, adaptive_percentile=0.0)
    assert tasks.add.apply((1, 2)).get() == 3
    result = tasks.broken.apply()
    assert result.failed()
    names = {s.name: s for s in finished(exporter)}
    assert "process celery_tasks.add" not in names
    failed = names["process celery_tasks.broken"]
    assert failed.status == "error"
    assert failed.attributes["celery.task.state"] == "FAILURE"
    assert failed.attributes["error.type"] == "ValueError"


def test_a_task_sent_through_a_redis_broker_carries_its_context(tasks, exporter, redis_server):
    """The Redis broker: the send span is a ``redis`` messaging span and the
    task message stored in the queue's list carries its ``traceparent``;
    with the Redis integration on too, kombu's own commands (the push) are
    not Redis spans, while the application's own Redis calls are."""
    import json

    import redis
    from celery import Celery

    contrib.instrument(pulsetrace.Config(), ["redis"])
    app = Celery("orders", broker=f"redis://{redis_server.host}:{redis_server.port}/3")
    app.conf.task_default_queue = "order-tasks"

    @app.task(name="orders.confirm")
    def confirm(order: int) -> int:
        return order

    client = redis.Redis(host=redis_server.host, port=redis_server.port, db=3)
    client.delete("order-tasks")
    try:
        with pulsetrace.start_span("checkout", kind="server"):
            result = confirm.delay(7)
        (raw,) = client.lrange("order-tasks", 0, -1)
    finally:
        client.delete("order-tasks")
        client.close()
        app.close()
        contrib.uninstrument(["redis"])
    spans = finished(exporter)
    send = next(s for s in spans if s.name == "publish orders.confirm")
    assert sorted(s.name for s in spans if s.trace_id == send.trace_id) == [
        "checkout",
        "publish orders.confirm",
    ]
    assert [s.name for s in spans if s.name.startswith("LRANGE")], [s.name for s in spans]
    assert send.attributes["messaging.system"] == "redis"
    assert send.attributes["messaging.destination.name"] == "order-tasks"
    assert send.attributes["messaging.message.id"] == result.id
    headers = json.loads(raw)["headers"]
    assert headers["traceparent"].startswith(f"00-{send.trace_id:032x}-{send.span_id:016x}-")
