"""RabbitMQ through aio-pika against a real broker: ``Exchange.publish`` is
a PRODUCER span whose context travels in the message headers, and a
``Queue.consume`` callback runs in a CONSUMER span of the same trace."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest

import pulsetrace
from pulsetrace import contrib

from conftest import finished


@pytest.fixture
def traced_aio(exporter):
    contrib.instrument(pulsetrace.Config(), ["aio_pika"])
    yield exporter
    contrib.uninstrument(["aio_pika"])


def _url(server) -> str:
    return f"amqp://guest:guest@{server.host}:{server.port}/"


def test_publish_and_consume_form_one_trace(rabbitmq_server, traced_aio):
    queue_name = f"aio-{uuid.uuid4().hex[:8]}"
    seen = []

    async def main() -> None:
        conn = await aio_pika.connect(_url(rabbitmq_server))
        async with conn:
            channel = await conn.channel()
            queue = await channel.declare_queue(queue_name, auto_delete=True)
            with pulsetrace.start_span("checkout", kind="server"):
                await channel.default_exchange.publish(
                    aio_pika.Message(b"order 7", message_id="m-7", headers={"tenant": "b"}),
                    routing_key=queue_name,
                )
            done = asyncio.Event()

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                async with message.process():
                    seen.append((message.headers.get("tenant"), message.body))
                    with pulsetrace.start_span("pack"):
                        pass
                done.set()

            tag = await queue.consume(on_message)
            await asyncio.wait_for(done.wait(), 10)
            await queue.cancel(tag)

    asyncio.run(main())
    assert seen == [("b", b"order 7")]
    spans = {s.name: s for s in finished(traced_aio)}
    publish, process = spans[f"publish {queue_name}"], spans[f"process {queue_name}"]
    assert publish.kind == "producer" and process.kind == "consumer"
    assert publish.trace_id == process.trace_id == spans["checkout"].trace_id
    assert publish.parent_span_id == spans["checkout"].span_id
    assert process.parent_span_id == publish.span_id
    assert spans["pack"].parent_span_id == process.span_id
    assert publish.attributes["messaging.system"] == "rabbitmq"
    assert publish.attributes["messaging.message.id"] == "m-7"
    assert publish.attributes["messaging.message.body.size"] == 7
    assert process.attributes["messaging.destination.name"] == queue_name
    assert process.attributes["messaging.rabbitmq.destination.routing_key"] == queue_name


def test_a_failing_callback_fails_its_span(rabbitmq_server, traced_aio):
    queue_name = f"aio-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        conn = await aio_pika.connect(_url(rabbitmq_server))
        async with conn:
            channel = await conn.channel()
            queue = await channel.declare_queue(queue_name, auto_delete=True)
            await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue_name)
            called = asyncio.Event()

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                called.set()
                await message.ack()
                raise LookupError("no stock")

            tag = await queue.consume(on_message)
            await asyncio.wait_for(called.wait(), 10)
            await asyncio.sleep(0.1)
            await queue.cancel(tag)

    asyncio.run(main())
    process = next(s for s in finished(traced_aio) if s.name == f"process {queue_name}")
    assert process.status == "error"
    assert process.attributes["error.type"] == "LookupError"
