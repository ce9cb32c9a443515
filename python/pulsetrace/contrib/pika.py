"""RabbitMQ through pika: every publish a PRODUCER span, every delivery a
consumer callback handles a CONSUMER span in the publisher's trace.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_PIKA_ENABLED=false``). Supported: pika 1.1 and later (the
oldest verified: 1.1.0), the blocking connection (``BlockingChannel``) and
the asynchronous ones (``SelectConnection`` and the other adapters,
``pika.channel.Channel``).

``basic_publish`` is a PRODUCER span ``publish <destination>``: the
destination (``messaging.destination.name``) is the exchange, or the
routing key when the message goes through the default exchange (``""``),
which delivers to the queue of that name. Attributes:
``messaging.system=rabbitmq``, ``messaging.operation.type=send``,
``messaging.operation.name=publish``,
``messaging.rabbitmq.destination.routing_key``,
``messaging.message.body.size`` (bytes; the body itself never becomes an
attribute), ``messaging.message.id`` and
``messaging.message.conversation_id`` (the ``message_id`` and
``correlation_id`` properties, when set), ``server.address`` and
``server.port``. The span's context goes out in the message headers
(``traceparent``, ``tracestate``): pika gets a copy of the properties with
the headers added, the caller's ``BasicProperties`` object is not changed.
On a blocking channel with publisher confirms, the span ends when the
broker confirmed the message; a refused (``UnroutableError``,
``NackError``) or failed publish sets ``error.type``.

A callback given to ``basic_consume`` runs inside a CONSUMER span
``process <queue>`` (``messaging.operation.type=process``,
``messaging.destination.name`` the queue, ``messaging.rabbitmq.exchange``,
``messaging.rabbitmq.message.delivery_tag``, and the attributes above); its
parent is the publisher's span when the message carries a ``traceparent``,
so the consumer continues the producer's trace, in this process or another.
Spans the callback starts are its children. An exception the callback
raises marks the span failed and propagates unchanged. ``basic_get`` and
the ``BlockingChannel.consume`` generator are not traced (the application
decides there where processing ends); messages read with them and handled
as one unit are traced with :func:`pulsetrace.messaging.process_batch`
(one CONSUMER span linked to each message's producer).

Publish and process spans become the series ``messaging_client_*`` and
``messaging_process_*`` per destination (rates, durations, errors);
queue depth and consumer counts come from :mod:`pulsetrace.messaging`.
"""

from __future__ import annotations

import contextvars
from typing import Any, Optional

from pulsetrace import _diag, messaging
from pulsetrace.contrib import _amqp
from pulsetrace.contrib._patcher import Patcher, Target
from pulsetrace.propagation import use_context

SUPPORTED = ">=1.1"

#: Set while a ``BlockingChannel.basic_publish`` traces its publish: the
#: ``Channel.basic_publish`` it calls inside is then not a second span.
_OUTER: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pulsetrace_pika_publish", default=False
)


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


def _params(channel: Any) -> Any:
    """The connection parameters of a ``Channel`` or a ``BlockingChannel``
    (no exception raised on the way: this runs for every publish)."""
    impl = getattr(channel, "_impl", channel)  # BlockingChannel wraps a Channel
    return getattr(getattr(impl, "connection", None), "params", None)


def _server(params: Any) -> Optional[tuple[str, int]]:
    try:
        return str(params.host), int(params.port)
    except (AttributeError, TypeError, ValueError):
        return None


_PROPERTIES: list[Any] = []


def _properties() -> Any:
    """pika's ``BasicProperties`` (imported once)."""
    if not _PROPERTIES:
        from pika.spec import BasicProperties  # type: ignore[import-untyped]  # no type hints

        _PROPERTIES.append(BasicProperties)
    return _PROPERTIES[0]


def _with_headers(
    args: tuple[Any, ...], kwargs: dict[str, Any], props: Any, span: Any
) -> tuple[Any, Any]:
    """``args``/``kwargs`` of ``basic_publish`` with the properties
    (``props``, found there) replaced by a copy carrying the span's context."""
    headers = _amqp.headers_with_context(getattr(props, "headers", None), span)
    if props is None:
        new = _properties()(headers=headers)
    else:  # a shallow copy (copy.copy goes through __reduce_ex__: slower)
        new = object.__new__(type(props))
        new.__dict__.update(props.__dict__)
        new.headers = headers
    if len(args) > 3:
        args = (*args[:3], new, *args[4:])
    else:
        kwargs = {**kwargs, "properties": new}
    return args, kwargs


def _publish(wrapped: Any, instance: Any, args: Any, kwargs: Any, outer: bool) -> Any:
    span = None
    try:
        # basic_publish(exchange, routing_key, body, properties=None, ...)
        n = len(args)
        exchange = args[0] if n > 0 else kwargs.get("exchange")
        routing_key = args[1] if n > 1 else kwargs.get("routing_key")
        props = args[3] if n > 3 else kwargs.get("properties")
        params = _params(instance)
        if not exchange and isinstance(routing_key, str):
            messaging.note_queue(routing_key, params)  # the default exchange's queue
        span = _amqp.start_publish(
            "pika",
            exchange,
            routing_key,
            args[2] if n > 2 else kwargs.get("body"),
            getattr(props, "message_id", None),
            getattr(props, "correlation_id", None),
            _server(params),
        )
        if span is not None:
            args, kwargs = _with_headers(args, kwargs, props, span)
    except Exception as exc:
        _diag.internal_error("pika.publish", exc)
    if span is None:
        return wrapped(*args, **kwargs)
    token = _OUTER.set(True) if outer else None
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        _amqp.fail(span, exc)
        raise
    finally:
        if token is not None:
            _OUTER.reset(token)
    _amqp.done(span)
    return result


def _blocking_publish(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return _publish(wrapped, instance, args, kwargs, True)


def _channel_publish(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if _OUTER.get():  # inside a BlockingChannel publish: traced there
        return wrapped(*args, **kwargs)
    return _publish(wrapped, instance, args, kwargs, False)


def _traced_callback(callback: Any, queue: Any) -> Any:
    """``callback(channel, method, properties, body)`` run inside a CONSUMER span."""

    def on_message(channel: Any, method: Any, properties: Any, body: Any) -> Any:
        if not _PATCHER.active:  # unpatched since the consumer was registered
            return callback(channel, method, properties, body)
        span = _amqp.start_process(
            "pika",
            queue,
            getattr(method, "routing_key", None),
            body,
            getattr(properties, "headers", None),
            getattr(properties, "message_id", None),
            getattr(properties, "correlation_id", None),
            getattr(method, "delivery_tag", None),
            getattr(method, "exchange", None),
        )
        if span is None:
            return callback(channel, method, properties, body)
        try:
            with use_context(span):
                result = callback(channel, method, properties, body)
        except BaseException as exc:
            _amqp.fail(span, exc)
            raise
        _amqp.done(span)
        return result

    on_message.__wrapped__ = callback  # type: ignore[attr-defined]
    on_message.__pulsetrace_traced__ = True  # type: ignore[attr-defined]
    return on_message


def _consume(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        callback = _arg(args, kwargs, 1, "on_message_callback")
        own = getattr(callback, "__self__", None)
        # BlockingChannel registers its own dispatcher with the channel it
        # wraps; the user's callback was wrapped by BlockingChannel's hook.
        if (
            callable(callback)
            and not getattr(callback, "__pulsetrace_traced__", False)
            and type(own).__name__ != "BlockingChannel"
        ):
            queue = _arg(args, kwargs, 0, "queue")
            if isinstance(queue, str):
                messaging.note_queue(queue, _params(instance))
            traced = _traced_callback(callback, queue)
            if len(args) > 1:
                args = (args[0], traced, *args[2:])
            else:
                kwargs = {**kwargs, "on_message_callback": traced}
    except Exception as exc:
        _diag.internal_error("pika.consume", exc)
    return wrapped(*args, **kwargs)


_PATCHER = Patcher(
    "pika",
    SUPPORTED,
    (
        Target("pika.channel", "Channel.basic_publish", _channel_publish),
        Target("pika.channel", "Channel.basic_consume", _consume),
        Target(
            "pika.adapters.blocking_connection", "BlockingChannel.basic_publish", _blocking_publish
        ),
        Target("pika.adapters.blocking_connection", "BlockingChannel.basic_consume", _consume),
    ),
)
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
