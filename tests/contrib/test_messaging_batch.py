"""Batch consumption (``pulsetrace.messaging.process_batch``) against a real
RabbitMQ broker: messages published in three different traces and then
handled as one unit become one CONSUMER span linked to exactly those three
producer spans (at a real OTLP receiver, and with aio-pika's queue iterator),
the links stay within the span's link limit, and bad input is refused with
an error naming it."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import pika
import pytest

import pulsetrace
from pulsetrace import contrib, messaging, propagation

from conftest import export_over_http, finished, fresh

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))


def _otlp_spans(receiver, wanted: set[str]) -> dict:
    deadline = time.monotonic() + 10
    spans: dict = {}
    while time.monotonic() < deadline:
        spans = {
            s.name: s
            for r in receiver.requests()
            for rs in r.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
        }
        if wanted <= set(spans):
            break
        time.sleep(0.1)
    return spans


def test_a_basic_get_batch_is_one_span_linked_to_each_producer_at_an_otlp_receiver(
    rabbitmq_server, http_receiver, added
):
    fresh()
    export_over_http(http_receiver, added)
    contrib.instrument(pulsetrace.Config(), ["pika"])
    try:
        conn = pika.BlockingConnection(
            pika.ConnectionParameters(host=rabbitmq_server.host, port=rabbitmq_server.port)
        )
        ch = conn.channel()
        ch.confirm_delivery()
        queue = f"batch-{uuid.uuid4().hex[:8]}"
        ch.queue_declare(queue)
        for i in range(3):  # three requests, three traces
            with pulsetrace.start_span(f"checkout {i}", kind="server"):
                ch.basic_publish("", queue, b"order %d" % i)
        batch = []
        while len(batch) < 3:
            method, props, body = ch.basic_get(queue)
            if method is not None:
                batch.append((method, props, body))
        with messaging.process_batch(batch, system="rabbitmq", destination=queue) as span:
            with pulsetrace.start_span("bulk insert"):
                pass
            ch.basic_ack(batch[-1][0].delivery_tag, multiple=True)
        assert span is not None
        ch.queue_delete(queue)
        conn.close()
        assert pulsetrace.flush(5)
    finally:
        contrib.uninstrument(["pika"])

    wanted = {f"checkout {i}" for i in range(3)} | {f"publish {queue}", f"process {queue}"}
    spans = _otlp_spans(http_receiver, wanted | {"bulk insert"})
    publishes = [
        s
        for r in http_receiver.requests()
        for rs in r.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
        if s.name == f"publish {queue}"
    ]
    assert len({p.trace_id for p in publishes}) == 3
    process = spans[f"process {queue}"]
    assert process.kind == 5  # SPAN_KIND_CONSUMER
    # One link per message, to exactly its producer's span context.
    assert sorted((link.trace_id, link.span_id) for link in process.links) == sorted(
        (p.trace_id, p.span_id) for p in publishes
    )
    # The batch continues none of them: a trace of its own.
    assert process.trace_id not in {p.trace_id for p in publishes}
    assert process.parent_span_id == b""
    attrs = {a.key: a.value for a in process.attributes}
    assert attrs["messaging.batch.message_count"].int_value == 3
    assert attrs["messaging.operation.type"].string_value == "process"
    assert attrs["messaging.system"].string_value == "rabbitmq"
    assert attrs["messaging.destination.name"].string_value == queue
    assert spans["bulk insert"].parent_span_id == process.span_id


def test_an_aio_pika_iterator_read_in_batches_links_each_message(rabbitmq_server, exporter):
    contrib.instrument(pulsetrace.Config(), ["aio_pika"])
    queue_name = f"aio-batch-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        conn = await aio_pika.connect(
            f"amqp://guest:guest@{rabbitmq_server.host}:{rabbitmq_server.port}/"
        )
        async with conn:
            channel = await conn.channel()
            queue = await channel.declare_queue(queue_name, auto_delete=True)
            for i in range(3):
                with pulsetrace.start_span(f"checkout {i}", kind="server"):
                    await channel.default_exchange.publish(
                        aio_pika.Message(b"order %d" % i), routing_key=queue_name
                    )
            async with queue.iterator() as it:
                batch = [await asyncio.wait_for(it.__anext__(), 10) for _ in range(3)]
                with messaging.process_batch(batch, system="rabbitmq", destination=queue_name):
                    await asyncio.sleep(0)  # the span stays current across an await
                    with pulsetrace.start_span("bulk insert"):
                        pass
                    for message in batch:
                        await message.ack()

    try:
        asyncio.run(main())
    finally:
        contrib.uninstrument(["aio_pika"])
    spans = finished(exporter)
    publishes = [s for s in spans if s.name == f"publish {queue_name}"]
    (process,) = [s for s in spans if s.name == f"process {queue_name}"]
    assert len({p.trace_id for p in publishes}) == 3
    assert sorted((link["trace_id"], link["span_id"]) for link in process.links) == sorted(
        (p.trace_id, p.span_id) for p in publishes
    )
    assert process.attributes["messaging.batch.message_count"] == 3
    (insert,) = [s for s in spans if s.name == "bulk insert"]
    assert insert.parent_span_id == process.span_id


def _headers_of_new_traces(n: int) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        with pulsetrace.start_span(f"send {i}", kind="producer") as span:
            headers: dict[str, str] = {}
            propagation.inject(headers, span)
            out.append(headers)
    return out


def test_links_stay_within_the_spans_link_limit(exporter):
    fresh(max_events=2)
    batch = [*_headers_of_new_traces(3), {"no": "context"}]
    with pulsetrace.start_span("job") as job:
        with messaging.process_batch(batch, system="kafka", destination="orders"):
            pass
    spans = {s.name: s for s in finished(exporter)}
    process = spans["process orders"]
    assert len(process.links) == 2
    assert [(link["trace_id"], link["span_id"]) for link in process.links] == [
        (spans[f"send {i}"].trace_id, spans[f"send {i}"].span_id) for i in range(2)
    ]
    assert process.attributes["messaging.batch.message_count"] == 4
    assert process.attributes["messaging.system"] == "kafka"
    # The parent is the current span, not a producer.
    assert process.parent_span_id == job.span_id


def test_an_exception_in_the_batch_fails_its_span_and_passes_through(exporter):
    batch = _headers_of_new_traces(1)
    with pytest.raises(KeyError, match="sku"):
        with messaging.process_batch(batch, system="rabbitmq", destination="orders"):
            raise KeyError("sku")
    (process,) = [s for s in finished(exporter) if s.name == "process orders"]
    assert process.status == "error"
    assert process.attributes["error.type"] == "KeyError"
    assert len(process.links) == 1


def test_bad_arguments_are_refused_with_an_error_naming_them():
    with pytest.raises(TypeError, match="messages must be a list or tuple"):
        with messaging.process_batch((m for m in [{}]), system="rabbitmq", destination="orders"):
            pass
    with pytest.raises(TypeError, match="system and destination must be strings"):
        with messaging.process_batch([], system=None, destination="orders"):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValueError, match="system must name"):
        with messaging.process_batch([], system="", destination="orders"):
            pass
