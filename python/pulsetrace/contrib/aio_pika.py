"""RabbitMQ through aio-pika: every publish a PRODUCER span, every message
a ``Queue.consume`` callback handles a CONSUMER span in the publisher's trace.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_AIO_PIKA_ENABLED=false``). Supported: aio-pika 9 and later
(the oldest verified: 9.0.0).

``Exchange.publish`` is a PRODUCER span ``publish <destination>`` with the
attributes of the pika integration (:mod:`pulsetrace.contrib.pika`: the
destination is the exchange, or the routing key on the default exchange;
``messaging.system=rabbitmq``, ``messaging.operation.type=send``, routing
key, message id, conversation id, body size; never the body). The span's
context goes out in the message's ``headers`` (``traceparent``,
``tracestate``), set on the message being published, as aio-pika sends
it; a locked message (an ``IncomingMessage`` already acknowledged) is sent
as a copy carrying them. A refused publish (``DeliveryError``,
``PublishError``) or a failed one sets ``error.type``.

A callback given to ``Queue.consume`` runs inside a CONSUMER span
``process <queue>`` whose parent is the publisher's span when the message
carries a ``traceparent``; spans it starts are its children; an exception
it raises marks the span failed and propagates unchanged (aio-pika then
handles it as before). Messages taken with ``Queue.get`` or
``Queue.iterator()`` are not traced: the application decides there where
processing ends; a batch of them handled as one unit is traced with
:func:`pulsetrace.messaging.process_batch` (one CONSUMER span linked to
each message's producer).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Optional

from pulsetrace import _diag, messaging
from pulsetrace.contrib import _amqp
from pulsetrace.contrib._patcher import Patcher, Target
from pulsetrace.propagation import use_context

SUPPORTED = ">=9.0"


def _server(exchange: Any) -> Optional[tuple[str, int]]:
    try:
        url = exchange.channel._connection.url
        return str(url.host), int(url.port)
    except Exception:
        return None


async def _publish(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    span = None
    try:
        message = args[0] if args else kwargs.get("message")
        routing_key = args[1] if len(args) > 1 else kwargs.get("routing_key")
        exchange = getattr(instance, "name", "")
        if not exchange and isinstance(routing_key, str):
            messaging.note_queue(routing_key)
        span = _amqp.start_publish(
            "aio_pika",
            exchange,
            routing_key,
            getattr(message, "body", None),
            getattr(message, "message_id", None),
            getattr(message, "correlation_id", None),
            _server(instance),
        )
        if span is not None:
            headers = _amqp.headers_with_context(getattr(message, "headers", None), span)
            if getattr(message, "locked", False):
                message = copy.copy(message)
                args = (message, *args[1:]) if args else args
                if not args:
                    kwargs = {**kwargs, "message": message}
            message.headers = headers
    except Exception as exc:
        _diag.internal_error("aio_pika.publish", exc)
    if span is None:
        return await wrapped(*args, **kwargs)
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as exc:
        _amqp.fail(span, exc)
        raise
    _amqp.done(span)
    return result


def _traced_callback(callback: Any, queue: Any) -> Any:
    async def on_message(message: Any) -> Any:
        if not _PATCHER.active:
            return await callback(message)
        span = _amqp.start_process(
            "aio_pika",
            queue,
            getattr(message, "routing_key", None),
            getattr(message, "body", None),
            getattr(message, "headers", None),
            getattr(message, "message_id", None),
            getattr(message, "correlation_id", None),
            getattr(message, "delivery_tag", None),
            getattr(message, "exchange", None),
        )
        if span is None:
            return await callback(message)
        try:
            with use_context(span):
                result = await callback(message)
        except BaseException as exc:
            _amqp.fail(span, exc)
            raise
        _amqp.done(span)
        return result

    on_message.__wrapped__ = callback  # type: ignore[attr-defined]
    return on_message


def _awaitable(callback: Any) -> Any:
    """``callback`` as a coroutine function: aio-pika's own
    ``ensure_awaitable`` (9.1 and later; it warns about a plain function as
    aio-pika does), or, before it, a coroutine that awaits what the callback
    returns when that is awaitable."""
    try:
        from aio_pika.tools import ensure_awaitable
    except ImportError:
        pass
    else:
        return ensure_awaitable(callback)

    async def call(message: Any) -> Any:
        result = callback(message)
        return await result if inspect.isawaitable(result) else result

    return call


def _feeds_iterator(callback: Any) -> bool:
    from aio_pika.queue import QueueIterator

    return isinstance(getattr(callback, "__self__", None), QueueIterator)


async def _consume(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        callback = args[0] if args else kwargs.get("callback")
        # ``Queue.iterator()`` consumes through its own callback, which only
        # hands each message to the iterator: processing happens where the
        # application reads it (a ``process_batch`` span, or its own).
        if callable(callback) and not _feeds_iterator(callback):
            queue = getattr(instance, "name", None)
            if isinstance(queue, str):
                messaging.note_queue(queue)
            traced = _traced_callback(_awaitable(callback), queue)
            if args:
                args = (traced, *args[1:])
            else:
                kwargs = {**kwargs, "callback": traced}
    except Exception as exc:
        _diag.internal_error("aio_pika.consume", exc)
    return await wrapped(*args, **kwargs)


_PATCHER = Patcher(
    "aio_pika",
    SUPPORTED,
    (
        Target("aio_pika.exchange", "Exchange.publish", _publish),
        Target("aio_pika.queue", "Queue.consume", _consume),
    ),
    distributions=("aio-pika",),
)
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
