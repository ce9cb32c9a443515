"""Queue depth and consumer count of the RabbitMQ queues an application
uses, as metrics: ``rabbitmq_queue_messages`` (ready and unacknowledged),
``rabbitmq_queue_messages_ready`` and ``rabbitmq_queue_consumers``, labelled
``queue`` (and ``vhost``), in the Prometheus exposition and under
``queues`` in ``/health/metrics``.

They are read at scrape time, never on the request path, at most once per
:data:`REFRESH_S` (a scrape in between gets the last reading):

- with ``RABBITMQ_MANAGEMENT_URL`` set (``http://user:password@host:15672``),
  from the management API's queue list (every queue of the broker, the
  first :data:`MAX_QUEUES` by name);
- otherwise by a passive ``queue_declare`` (which reports a queue's message
  and consumer counts without creating it) for each queue the application
  consumed from or published to through the default exchange (the first
  :data:`MAX_QUEUES` seen), on a pika connection of the agent's own, opened
  with the parameters of the application's first connection.

Both run under pulsetrace's suppression context, so they are never traced.
A broker that cannot be reached leaves the last reading in place for one
more interval and is counted (``pulsetrace_agent_errors_total``) and logged
once; the families are then empty. Publish and consume rates, processing
durations and failures per queue are the span series
(``messaging_client_*``, ``messaging_process_*``).

A consumer that handles several messages as one unit wraps that work in
:func:`process_batch`: one CONSUMER span for the batch, linked to the
producer of each message instead of continuing one of them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any, Optional

from pulsetrace import _diag, _runtime, propagation
from pulsetrace._native import Span, SpanContext
from pulsetrace._suppress import suppressed
from pulsetrace.contrib import _amqp

__all__ = [
    "MAX_QUEUES",
    "REFRESH_S",
    "families",
    "note_queue",
    "process_batch",
    "queues",
    "reset",
]

#: Queues reported at most (labels are bounded).
MAX_QUEUES = 100
#: The broker is asked at most this often.
REFRESH_S = 5.0
#: Timeout of one reading (the management API call, or each passive declare).
TIMEOUT_S = 2.0

_lock = threading.Lock()
_seen: dict[str, None] = {}  # insertion-ordered set of queue names
_params: list[Any] = [None]  # the application's first pika ConnectionParameters
_reading: tuple[float, list[dict[str, Any]]] = (float("-inf"), [])
_connection: list[Any] = [None]


def note_queue(queue: str, params: Any = None) -> None:
    """Remember ``queue`` (and the broker's connection parameters, the
    first ones given) for the passive readings. Called by the integrations;
    O(1), bounded."""
    if queue and queue not in _seen and len(_seen) < MAX_QUEUES:
        _seen[queue] = None
    if params is not None and _params[0] is None:
        _params[0] = params


def reset() -> None:
    """Forget the queues, the parameters and the last reading; close the agent's connection."""
    global _reading
    with _lock:
        _seen.clear()
        _params[0] = None
        _reading = (float("-inf"), [])
        _close()


def _close() -> None:
    conn, _connection[0] = _connection[0], None
    if conn is not None:
        with contextlib.suppress(Exception):  # already closed, or the broker is gone
            conn.close()


def _from_management(url: str) -> list[dict[str, Any]]:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    api = urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path.rstrip("/") + "/api/queues", "", "")
    )
    query = "columns=name,vhost,messages,messages_ready,messages_unacknowledged,consumers"
    request = urllib.request.Request(f"{api}?{query}")
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        rows = json.loads(response.read())
    out = [
        {
            "queue": str(row.get("name", "")),
            "vhost": str(row.get("vhost", "/")),
            "messages": int(row.get("messages") or 0),
            "messages_ready": int(row.get("messages_ready") or 0),
            "consumers": int(row.get("consumers") or 0),
        }
        for row in rows
        if isinstance(row, dict)
    ]
    out.sort(key=lambda r: (r["vhost"], r["queue"]))
    return out[:MAX_QUEUES]


def _from_passive_declare() -> list[dict[str, Any]]:
    params = _params[0]
    names = list(_seen)
    if params is None or not names:
        return []
    import pika  # type: ignore[import-untyped]  # ships no type hints

    conn = _connection[0]
    if conn is None or not conn.is_open:
        params = pika.ConnectionParameters(  # also from URLParameters: the same fields
            host=params.host,
            port=params.port,
            virtual_host=params.virtual_host,
            credentials=params.credentials,
            ssl_options=params.ssl_options,
            socket_timeout=TIMEOUT_S,
            blocked_connection_timeout=TIMEOUT_S,
        )
        conn = _connection[0] = pika.BlockingConnection(params)
    vhost = str(getattr(params, "virtual_host", "/"))
    out = []
    deadline = time.monotonic() + 2 * TIMEOUT_S  # a slow broker delays a scrape this much at most
    for name in names:
        if time.monotonic() > deadline:
            break
        channel = conn.channel()
        try:
            frame = channel.queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            continue  # no such queue (any more): the broker closed the channel
        ready = int(frame.method.message_count)
        out.append(
            {
                "queue": name,
                "vhost": vhost,
                "messages": ready,  # a passive declare reports ready messages only
                "messages_ready": ready,
                "consumers": int(frame.method.consumer_count),
            }
        )
        if channel.is_open:
            channel.close()
    return out


def queues() -> list[dict[str, Any]]:
    """The last reading (taken now if older than :data:`REFRESH_S`): one
    dict per queue with ``queue``, ``vhost``, ``messages``,
    ``messages_ready`` and ``consumers``. Never raises."""
    global _reading
    with _lock:
        at, rows = _reading
        now = time.monotonic()
        if now - at < REFRESH_S:
            return rows
        url: Optional[str] = None
        try:
            url = _runtime.config().rabbitmq_management_url
        except Exception:
            url = None
        try:
            with suppressed():
                rows = _from_management(url) if url else _from_passive_declare()
        except Exception as exc:
            _diag.internal_error("messaging.queues", exc)
            _close()
            rows = []
        _reading = (now, rows)
        return rows


def families() -> list[tuple[str, str, str, list[tuple[dict[str, str], float]]]]:
    """The queue families for the Prometheus exposition (empty when no
    queue is known)."""
    rows = queues()
    if not rows:
        return []

    def labels(row: dict[str, Any]) -> dict[str, str]:
        return {"queue": row["queue"], "vhost": row["vhost"]}

    return [
        (
            "rabbitmq_queue_messages",
            "messages in a RabbitMQ queue (ready and unacknowledged; "
            "ready only without the management API)",
            "gauge",
            [(labels(r), float(r["messages"])) for r in rows],
        ),
        (
            "rabbitmq_queue_messages_ready",
            "messages ready for delivery in a RabbitMQ queue",
            "gauge",
            [(labels(r), float(r["messages_ready"])) for r in rows],
        ),
        (
            "rabbitmq_queue_consumers",
            "consumers of a RabbitMQ queue",
            "gauge",
            [(labels(r), float(r["consumers"])) for r in rows],
        ),
    ]


def _headers(message: Any) -> Any:
    """The headers of one message of a batch: a mapping is the headers
    themselves; pika's ``(method, properties, body)`` triple has them on its
    properties; other messages (aio-pika's, kombu's, pika's
    ``BasicProperties``) carry a ``headers`` attribute."""
    if isinstance(message, Mapping):
        return message
    if isinstance(message, tuple) and len(message) == 3:
        return getattr(message[1], "headers", None)
    return getattr(message, "headers", None)


def _producer_contexts(messages: Any) -> Iterator[SpanContext]:
    """The producer context of each message that carries one, lazily: the
    span's link limit stops the iteration once it is reached."""
    for message in messages:
        try:
            headers = _headers(message)
            context = propagation.extract(headers) if headers else None
        except Exception as exc:
            _diag.internal_error("messaging.process_batch", exc)
            return
        if context is not None:
            yield context


def _start_batch(messages: Any, count: int, system: str, destination: str) -> Optional[Span]:
    try:
        tracer = _runtime.hook_tracer()
        if tracer is None:
            return None
        return tracer.start_span(
            f"process {destination}" if destination else "process",
            kind="consumer",
            attributes={
                "messaging.system": system,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": destination,
                "messaging.batch.message_count": count,
            },
            links=_producer_contexts(messages),
        )
    except Exception as exc:
        _diag.internal_error("messaging.process_batch", exc)
        return None


@contextlib.contextmanager
def process_batch(messages: Any, *, system: str, destination: str) -> Iterator[Optional[Span]]:
    """One CONSUMER span ``process <destination>`` around the handling of
    ``messages`` as one unit::

        from pulsetrace.messaging import process_batch

        batch = [channel.basic_get("orders") for _ in range(10)]
        batch = [m for m in batch if m[0] is not None]
        with process_batch(batch, system="rabbitmq", destination="orders"):
            handle(batch)

    ``messages`` is a list or tuple (any sized collection) whose items are
    pika's ``(method, properties, body)`` triples (what ``basic_get`` and
    ``BlockingChannel.consume`` return), messages with a ``headers``
    attribute (aio-pika's ``IncomingMessage``, kombu's ``Message``) or the
    headers mappings themselves. The span links to the producer context of
    each message that carries one (W3C ``traceparent``/``tracestate``
    headers), at most ``PULSETRACE_MAX_EVENTS`` links (the span's link
    limit; the rest are dropped and counted); it does not continue any of
    them: its parent is the current span, if any. Attributes:
    ``messaging.system``, ``messaging.operation.type=process``,
    ``messaging.operation.name=process``, ``messaging.destination.name`` and
    ``messaging.batch.message_count`` (every message, linked or not).

    The span is the current span inside the block and is yielded (None when
    tracing is off); an exception raised in the block marks it failed and
    passes through unchanged. Works in ``async`` code as well (a plain
    ``with`` around awaits). ``system`` must be a non-empty string and
    ``destination`` a string, else ``TypeError``/``ValueError``; so must
    ``messages`` have a length (a generator would be consumed by the count).
    """
    if not isinstance(system, str) or not isinstance(destination, str):
        raise TypeError(
            "process_batch: system and destination must be strings, not "
            f"{type(system).__name__} and {type(destination).__name__}"
        )
    if not system:
        raise ValueError("process_batch: system must name the messaging system, e.g. 'rabbitmq'")
    try:
        count = len(messages)
    except TypeError:
        raise TypeError(
            "process_batch: messages must be a list or tuple of messages (it is counted, "
            f"then read), not {type(messages).__name__}"
        ) from None
    span = _start_batch(messages, count, system[:255], destination[:255])
    if span is None:
        yield None
        return
    try:
        with propagation.use_context(span):
            yield span
    except BaseException as exc:
        _amqp.fail(span, exc)
        raise
    _amqp.done(span)


def _after_fork_in_child() -> None:
    # The parent's connection is the parent's: a child opens its own.
    global _lock
    _lock = threading.Lock()
    _connection[0] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
