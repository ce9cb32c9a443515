"""What the RabbitMQ integrations (pika, aio-pika) share: the attributes of
a publish and of a delivery, trace context in and out of message headers,
and the span lifecycle. The rules live here once; ``pika`` and
``aio_pika`` only find the values in their library's objects.

A publish is a PRODUCER span ``publish <destination>``; a delivery handled
by a consumer callback is a CONSUMER span ``process <queue>`` whose parent
is the publisher's span (the ``traceparent``/``tracestate`` message
headers), or a new trace when the message carries none. The destination of
a publish is its exchange, or, on the default exchange (``""``), the
routing key (the queue the default exchange delivers to), so that series
are per queue in the common case. Message bodies never become attributes:
only their size.
"""

from __future__ import annotations

from typing import Any, Optional

from pulsetrace import _diag, _runtime, propagation

SYSTEM = "rabbitmq"
_MAX_NAME = 255  # AMQP short strings (exchange, queue, routing key) are at most 255 bytes


def _text(value: Any) -> str:
    if type(value) is str and len(value) <= _MAX_NAME:  # the common case, first
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value)[:_MAX_NAME] if value is not None else ""


def destination(exchange: Any, routing_key: Any) -> str:
    """The destination of a publish: the exchange, or the routing key on the default exchange."""
    exchange = _text(exchange)
    return exchange if exchange else _text(routing_key)


def _size(body: Any) -> Optional[int]:
    try:
        return len(body) if isinstance(body, (bytes, bytearray, memoryview, str)) else None
    except Exception:
        return None


def _common(
    attrs: dict[str, Any],
    key: str,
    body: Any,
    message_id: Any,
    correlation_id: Any,
    server: Optional[tuple[str, int]],
) -> None:
    """The attributes a publish and a delivery share (``key``: the routing key, as text)."""
    if key:
        attrs["messaging.rabbitmq.destination.routing_key"] = key
    size = _size(body)
    if size is not None:
        attrs["messaging.message.body.size"] = size
    if message_id:
        attrs["messaging.message.id"] = _text(message_id)
    if correlation_id:
        attrs["messaging.message.conversation_id"] = _text(correlation_id)
    if server is not None:
        attrs["server.address"], attrs["server.port"] = server


def start_publish(
    system_name: str,
    exchange: Any,
    routing_key: Any,
    body: Any,
    message_id: Any = None,
    correlation_id: Any = None,
    server: Optional[tuple[str, int]] = None,
) -> Any:
    """A PRODUCER span for one publish, or None (tracing off, pulsetrace's
    own work, or a pulsetrace failure: the publish then runs untraced)."""
    try:
        tracer = _runtime.hook_tracer()
        if tracer is None:
            return None
        key = _text(routing_key)
        dest = _text(exchange) or key
        attrs: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": dest,
        }
        _common(attrs, key, body, message_id, correlation_id, server)
        return tracer.start_span(f"publish {dest}", kind="producer", attributes=attrs)
    except Exception as exc:
        _diag.internal_error(f"{system_name}.publish", exc)
        return None


def headers_with_context(headers: Any, span: Any) -> dict[str, Any]:
    """A copy of ``headers`` (None: none) with the span's trace context; the
    caller's mapping is never changed (it may be reused for other messages)."""
    out = dict(headers) if headers else {}
    propagation.inject(out, span, overwrite=True)
    return out


def start_process(
    system_name: str,
    queue: Any,
    routing_key: Any,
    body: Any,
    headers: Any,
    message_id: Any = None,
    correlation_id: Any = None,
    delivery_tag: Any = None,
    exchange: Any = None,
) -> Any:
    """A CONSUMER span for processing one delivery, child of the publisher's
    span when the headers carry its context; or None."""
    try:
        tracer = _runtime.hook_tracer()
        if tracer is None:
            return None
        queue_name = _text(queue) or destination(exchange, routing_key)
        attrs: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue_name,
        }
        if exchange is not None:
            attrs["messaging.rabbitmq.exchange"] = _text(exchange)
        if isinstance(delivery_tag, int):
            attrs["messaging.rabbitmq.message.delivery_tag"] = delivery_tag
        _common(attrs, _text(routing_key), body, message_id, correlation_id, None)
        parent = propagation.extract(headers) if headers else None
        return tracer.start_span(
            f"process {queue_name}", kind="consumer", attributes=attrs, parent=parent
        )
    except Exception as exc:
        _diag.internal_error(f"{system_name}.process", exc)
        return None


def error_type(exc: BaseException) -> str:
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def fail(span: Any, exc: BaseException) -> None:
    """Mark ``span`` failed by ``exc`` and end it (never raises)."""
    try:
        span.record_exception(exc, escaped=True)
        span.set_status("error", f"{type(exc).__qualname__}: {exc}")
        span.set_attribute("error.type", error_type(exc))
    except Exception as err:
        _diag.internal_error("amqp.end", err)
    done(span)


def done(span: Any, _result: Any = None) -> None:
    try:
        span.end()
    except Exception as err:
        _diag.internal_error("amqp.end", err)
