"""RabbitMQ through pika against a real broker (tests/servers.py starts
Debian's rabbitmq-server): a publish is a PRODUCER span whose context
travels in the message headers, the consumer's CONSUMER span continues that
trace, in this process and in another one, and the library behaves as
before (the caller's properties are not changed, callback exceptions pass
through)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pika
import pytest

import pulsetrace
from pulsetrace import contrib

from conftest import export_over_http, finished, fresh

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))


@pytest.fixture
def traced_pika(exporter):
    contrib.instrument(pulsetrace.Config(), ["pika"])
    yield exporter
    contrib.uninstrument(["pika"])


def _connect(server) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(host=server.host, port=server.port))


def _queue(channel) -> str:
    name = f"orders-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(name, auto_delete=False)
    return name


def test_publish_and_consume_form_one_trace(rabbitmq_server, traced_pika):
    conn = _connect(rabbitmq_server)
    ch = conn.channel()
    ch.confirm_delivery()
    queue = _queue(ch)
    props = pika.BasicProperties(message_id="m-1", headers={"tenant": "a"})
    with pulsetrace.start_span("checkout", kind="server"):
        ch.basic_publish("", queue, b'{"card": "4111 1111 1111 1111"}', props)
    # The caller's properties object is the caller's: no trace header added.
    assert props.headers == {"tenant": "a"}

    seen = []

    def on_message(channel, method, properties, body):
        seen.append((properties.headers.get("tenant"), body))
        with pulsetrace.start_span("charge"):
            pass
        channel.basic_ack(method.delivery_tag)
        channel.stop_consuming()

    ch.basic_consume(queue, on_message)
    ch.start_consuming()
    ch.queue_delete(queue)
    conn.close()
    assert seen == [("a", b'{"card": "4111 1111 1111 1111"}')]

    spans = {s.name: s for s in finished(traced_pika)}
    publish, process, charge = spans[f"publish {queue}"], spans[f"process {queue}"], spans["charge"]
    assert publish.kind == "producer" and process.kind == "consumer"
    assert publish.trace_id == process.trace_id == spans["checkout"].trace_id == charge.trace_id
    assert process.parent_span_id == publish.span_id
    assert charge.parent_span_id == process.span_id
    assert publish.attributes["messaging.system"] == "rabbitmq"
    assert publish.attributes["messaging.operation.type"] == "send"
    assert publish.attributes["messaging.destination.name"] == queue
    assert publish.attributes["messaging.rabbitmq.destination.routing_key"] == queue
    assert publish.attributes["messaging.message.id"] == "m-1"
    assert publish.attributes["messaging.message.body.size"] == 31
    assert publish.attributes["server.port"] == rabbitmq_server.port
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.destination.name"] == queue
    assert process.attributes["messaging.rabbitmq.message.delivery_tag"] == 1
    for span in (publish, process):
        assert not any("4111" in str(v) for v in span.attributes.values())


def test_a_failing_callback_fails_its_span_and_the_exception_passes(rabbitmq_server, traced_pika):
    conn = _connect(rabbitmq_server)
    ch = conn.channel()
    ch.confirm_delivery()
    queue = _queue(ch)
    ch.basic_publish("", queue, b"x")

    def on_message(channel, method, properties, body):
        raise KeyError("no such order")

    ch.basic_consume(queue, on_message, auto_ack=True)
    with pytest.raises(KeyError, match="no such order"):
        ch.start_consuming()
    ch.queue_delete(queue)
    conn.close()
    process = next(s for s in finished(traced_pika) if s.name == f"process {queue}")
    assert process.status == "error"
    assert process.attributes["error.type"] == "KeyError"
    # The failure is counted per queue, under the rabbitmq system.
    assert _series("messaging_process_errors_total", queue) == 1.0
    assert _series("messaging_process_operations_total", queue) == 1.0
    assert _series("messaging_client_operations_total", queue) == 1.0


def _series(family: str, queue: str) -> float:
    """The value of ``family``'s series for ``queue`` (messaging_system rabbitmq)."""
    from pulsetrace import prometheus

    text = prometheus.exposition()[0].decode()
    (line,) = [
        line
        for line in text.splitlines()
        if line.startswith(family + "{")
        and f'messaging_destination_name="{queue}"' in line
        and 'messaging_system="rabbitmq"' in line
    ]
    return float(line.rsplit(" ", 1)[1])


def test_a_refused_publish_is_an_error_span(rabbitmq_server, traced_pika):
    conn = _connect(rabbitmq_server)
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.basic_publish("no-such-exchange", "k", b"x")
    conn.close()
    publish = next(s for s in finished(traced_pika) if s.name == "publish no-such-exchange")
    assert publish.status == "error"
    assert publish.attributes["error.type"] == "pika.exceptions.ChannelClosedByBroker"


CONSUMER = textwrap.dedent(
    """
    import sys
    import pulsetrace.auto  # noqa: F401
    import pika
    import pulsetrace

    host, port, queue = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    conn = pika.BlockingConnection(pika.ConnectionParameters(host=host, port=port))
    ch = conn.channel()

    def on_message(channel, method, properties, body):
        with pulsetrace.start_span("ship order"):
            pass
        channel.basic_ack(method.delivery_tag)
        channel.stop_consuming()

    ch.basic_consume(queue, on_message)
    print("ready", flush=True)
    ch.start_consuming()
    conn.close()
    pulsetrace.flush(5)
    """
)


def test_flask_request_to_a_consumer_in_another_process_is_one_exported_trace(
    rabbitmq_server, http_receiver, added, tmp_path
):
    """A Flask request publishes; a consumer process handles the message;
    both export to a real OTLP receiver, and the spans form one trace:
    SERVER -> PRODUCER -> CONSUMER -> the consumer's own span."""

    import flask

    fresh()
    export_over_http(http_receiver, added)
    contrib.instrument(pulsetrace.Config(), ["flask", "pika"])
    try:
        setup = _connect(rabbitmq_server)
        queue = _queue(setup.channel())
        app = flask.Flask("shop")

        @app.post("/orders")
        def order():
            conn = _connect(rabbitmq_server)
            conn.channel().basic_publish("", queue, b"order 1")
            conn.close()
            return "queued"

        assert app.test_client().post("/orders").status_code == 200
        assert pulsetrace.flush(5)

        script = tmp_path / "consumer.py"
        script.write_text(CONSUMER)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("APM_", "OTEL_", "PULSETRACE_"))
        }
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            PULSETRACE_SAMPLE_RATE="1.0",
            OTEL_SERVICE_NAME="shipping",
        )
        proc = subprocess.run(
            [sys.executable, str(script), rabbitmq_server.host, str(rabbitmq_server.port), queue],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        setup.channel().queue_delete(queue)
        setup.close()
    finally:
        contrib.uninstrument(["flask", "pika"])

    deadline = time.monotonic() + 10
    spans = {}
    while time.monotonic() < deadline:
        spans = {
            s.name: s
            for r in http_receiver.requests()
            for rs in r.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
        }
        if {"POST /orders", f"publish {queue}", f"process {queue}", "ship order"} <= set(spans):
            break
        time.sleep(0.1)
    server, publish = spans["POST /orders"], spans[f"publish {queue}"]
    process, ship = spans[f"process {queue}"], spans["ship order"]
    assert len({s.trace_id for s in (server, publish, process, ship)}) == 1
    assert publish.parent_span_id == server.span_id
    assert process.parent_span_id == publish.span_id
    assert ship.parent_span_id == process.span_id


def _depth(text: str, queue: str, family: str = "rabbitmq_queue_messages") -> float:
    prefix = f'{family}{{queue="{queue}"'
    line = next(line for line in text.splitlines() if line.startswith(prefix))
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.parametrize("source", ["passive_declare", "management_api"])
def test_queue_depth_grows_while_the_consumer_is_stopped_and_falls_after(
    rabbitmq_server, traced_pika, monkeypatch, source
):
    from pulsetrace import messaging, prometheus

    if source == "management_api":
        fresh(rabbitmq_management_url=rabbitmq_server.extra["management_url"])
    messaging.reset()
    monkeypatch.setattr(messaging, "REFRESH_S", 0.0)
    conn = _connect(rabbitmq_server)
    ch = conn.channel()
    ch.confirm_delivery()
    queue = _queue(ch)

    def scrape(family: str = "rabbitmq_queue_messages") -> float:
        # The management API's counts lag the broker by up to its stats interval.
        deadline = time.monotonic() + (12 if source == "management_api" else 0)
        while True:
            text = prometheus.exposition()[0].decode()
            value = _depth(text, queue, family)
            if time.monotonic() >= deadline or value == expected[family]:
                return value
            time.sleep(0.5)

    for i in range(5):  # no consumer yet: the queue fills
        ch.basic_publish("", queue, b"job %d" % i)
    expected = {"rabbitmq_queue_messages": 5.0, "rabbitmq_queue_consumers": 0.0}
    assert scrape() == 5.0
    assert scrape("rabbitmq_queue_consumers") == 0.0
    # The built-in queue-backlog rule reads the deepest queue when the
    # application sets no gauge of its own.
    from pulsetrace.monitoring.alerts.builtin import derived_gauges

    assert derived_gauges()["queue.backlog"] == 5.0

    consumer = _connect(rabbitmq_server)
    cch = consumer.channel()
    handled = []

    def on_message(channel, method, properties, body):
        handled.append(body)
        channel.basic_ack(method.delivery_tag)

    cch.basic_consume(queue, on_message)
    deadline = time.monotonic() + 10
    while len(handled) < 5 and time.monotonic() < deadline:
        consumer.process_data_events(time_limit=0.1)
    assert len(handled) == 5
    expected = {"rabbitmq_queue_messages": 0.0, "rabbitmq_queue_consumers": 1.0}
    assert scrape() == 0.0
    assert scrape("rabbitmq_queue_consumers") == 1.0
    body = __import__("pulsetrace.monitoring.endpoints", fromlist=["x"])._metrics()
    assert {"queue": queue, "messages": 0, "consumers": 1}.items() <= next(
        q for q in body["queues"] if q["queue"] == queue
    ).items()
    consumer.close()
    ch.queue_delete(queue)
    conn.close()
    messaging.reset()


def test_publishes_under_pulsetraces_suppression_context_are_not_traced(
    rabbitmq_server, traced_pika
):
    from pulsetrace._suppress import suppressed

    conn = _connect(rabbitmq_server)
    ch = conn.channel()
    ch.confirm_delivery()
    queue = _queue(ch)
    with pulsetrace.start_span("health check"), suppressed():
        ch.basic_publish("", queue, b"ping")
    _method, props, _body = ch.basic_get(queue, auto_ack=True)
    ch.queue_delete(queue)
    conn.close()
    assert not (props.headers or {}).get("traceparent")
    assert [s.name for s in finished(traced_pika)] == ["health check"]


def test_select_connection_publish_and_consume_form_one_trace(rabbitmq_server, traced_pika):
    """The asynchronous adapter (``SelectConnection``, ``pika.channel.Channel``)."""
    queue = f"select-{uuid.uuid4().hex[:8]}"
    seen = []

    def on_message(channel, method, properties, body):
        seen.append(body)
        channel.basic_ack(method.delivery_tag)
        channel.connection.close()

    def on_declared(frame, channel):
        channel.basic_consume(queue, on_message)
        with pulsetrace.start_span("enqueue", kind="server"):
            channel.basic_publish("", queue, b"async order")

    def on_channel(channel):
        channel.queue_declare(queue, auto_delete=True, callback=lambda f: on_declared(f, channel))

    conn = pika.SelectConnection(
        pika.ConnectionParameters(host=rabbitmq_server.host, port=rabbitmq_server.port),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, reason: c.ioloop.stop(),
    )
    timer = conn.ioloop.call_later(10, conn.ioloop.stop)
    conn.ioloop.start()
    conn.ioloop.remove_timeout(timer)
    conn.ioloop.close()  # its wake-up socket pair
    assert seen == [b"async order"]
    spans = {s.name: s for s in finished(traced_pika)}
    publish, process = spans[f"publish {queue}"], spans[f"process {queue}"]
    assert publish.parent_span_id == spans["enqueue"].span_id
    assert process.parent_span_id == publish.span_id
    assert process.trace_id == spans["enqueue"].trace_id


def test_an_unreachable_management_api_leaves_the_scrape_working_and_is_counted(
    exporter, monkeypatch
):
    from pulsetrace import _diag, messaging, prometheus
    from servers import free_port

    fresh(rabbitmq_management_url=f"http://guest:guest@127.0.0.1:{free_port()}")
    messaging.reset()
    monkeypatch.setattr(messaging, "REFRESH_S", 0.0)
    text = prometheus.exposition()[0].decode()
    assert "process_cpu_seconds_total" in text
    assert "rabbitmq_queue_messages" not in text
    assert messaging.queues() == []
    assert _diag.internal_errors().get("messaging.queues", 0) >= 1
    messaging.reset()
