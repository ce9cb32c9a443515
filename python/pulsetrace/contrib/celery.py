"""Celery: sending a task is a PRODUCER span, running it a CONSUMER span in
the sender's trace; retries and failures are visible on that trace.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` in the
application that sends tasks and in the worker (toggle:
``PULSETRACE_CELERY_ENABLED=false``). Supported: Celery 5.0.5 and later
(verified: 5.0.5 with kombu 5.0.2 on Python 3.10, 5.3.0 with kombu 5.3.0
on Python 3.11, where Celery before 5.3 does not run a worker; 5.0.0's
worker refuses its own ``--without-*`` flags), with a RabbitMQ or Redis
broker (any kombu transport works; its name is the ``messaging.system``).

``Celery.send_task`` (and so ``delay``/``apply_async``) is a PRODUCER span
``publish <task name>``: ``messaging.system`` (``rabbitmq`` for the
``amqp``/``pyamqp`` transports, ``redis`` for ``redis``/``rediss``, the
transport's name otherwise), ``messaging.operation.type=send``,
``messaging.operation.name=publish``, ``messaging.destination.name`` (the
queue, or the exchange when the task goes to a named exchange),
``messaging.rabbitmq.destination.routing_key`` on RabbitMQ,
``messaging.message.id`` (the task id), ``celery.task.name`` and
``celery.task.retries``. Its context travels in the task message's headers
(``traceparent``, ``tracestate``, through Celery's ``before_task_publish``
signal). A send that fails (the broker is unreachable) sets ``error.type``.

In the worker, each task run is a CONSUMER span ``process <task name>``
(Celery's ``task_prerun``/``task_postrun`` signals): the child of the
sender's span, with ``messaging.operation.type=process``, the queue, the
task id, ``celery.task.name``, ``celery.task.retries`` (how many times it
was retried before this run) and ``celery.task.state``, the outcome
(``SUCCESS``, ``FAILURE``, ``RETRY``...). Spans the task starts are its
children. A failing task records its exception and sets the error status
and ``error.type`` (so the tail sampler keeps its trace); a task that asks
for a retry gets state ``RETRY`` and a ``celery.retry`` event with the
reason, and the retry it sends is a ``publish`` span inside it, so the next
run continues the same trace. Task arguments and results never become
attributes. ``task.apply()`` (eager) runs are traced the same way, without
a publish.

On the Redis broker, kombu's own Redis commands (pushing task messages,
acknowledgements, its Lua scripts) are not traced as the application's
Redis commands: the publish and process spans stand for them, as on
RabbitMQ. Redis used otherwise (a result backend, the application's own
clients) is traced as usual.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
from typing import Any, Optional

from pulsetrace import _diag, _runtime, propagation
from pulsetrace._suppress import suppressed
from pulsetrace.contrib import _amqp
from pulsetrace.contrib._patcher import Patcher, Target

SUPPORTED = ">=5.0.5"

_SYSTEMS = {
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "pyamqp": "rabbitmq",
    "librabbitmq": "rabbitmq",
}
_SYSTEMS.update({"redis": "redis", "rediss": "redis", "sentinel": "redis"})
#: Task runs in flight, by task id (bounded: a run whose postrun never came is dropped).
_MAX_RUNNING = 10_000

#: The PRODUCER span of the ``send_task`` running in this context.
_SENDING: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "pulsetrace_celery_sending", default=None
)
_lock = threading.Lock()
_running: dict[str, tuple[Any, Any]] = {}


def _system(app: Any) -> str:
    try:
        url = app.conf.broker_url or "amqp://"
        scheme = str(url).split("://", 1)[0].split("+", 1)[0].lower()
    except Exception:
        return "celery"
    return _SYSTEMS.get(scheme, scheme[:32] or "celery")


def _start_send(instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        tracer = _runtime.hook_tracer()
        if tracer is None:
            return None
        name = str(args[0] if args else kwargs.get("name", ""))[:255]
        span = tracer.start_span(
            f"publish {name}",
            kind="producer",
            attributes={
                "messaging.system": _system(instance),
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "celery.task.name": name,
            },
        )
        return span, _SENDING.set(span)
    except Exception as exc:
        _diag.internal_error("celery.publish", exc)
        return None


def _send_done(state: Any, _result: Any) -> None:
    span, token = state
    _SENDING.reset(token)
    _amqp.done(span)


def _send_failed(state: Any, exc: BaseException) -> None:
    span, token = state
    _SENDING.reset(token)
    _amqp.fail(span, exc)


def _send_task(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    state = _start_send(instance, args, kwargs)
    if state is None:
        return wrapped(*args, **kwargs)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        _send_failed(state, exc)
        raise
    _send_done(state, result)
    return result


def _before_publish(
    sender: Any = None,
    exchange: Any = None,
    routing_key: Any = None,
    headers: Any = None,
    **_kwargs: Any,
) -> None:
    """Celery is about to send the message: its headers get the send span's context."""
    span = _SENDING.get()
    if span is None or not isinstance(headers, dict):
        return
    try:
        propagation.inject(headers, span, overwrite=True)
        dest = _amqp.destination(exchange, routing_key)
        span.set_attribute("messaging.destination.name", dest)
        if routing_key and span.attributes.get("messaging.system") == "rabbitmq":
            span.set_attribute("messaging.rabbitmq.destination.routing_key", str(routing_key))
        if headers.get("id"):
            span.set_attribute("messaging.message.id", str(headers["id"]))
        if isinstance(headers.get("retries"), int):
            span.set_attribute("celery.task.retries", headers["retries"])
    except Exception as exc:
        _diag.internal_error("celery.publish", exc)


def _request_value(request: Any, key: str) -> Optional[Any]:
    value = getattr(request, key, None)
    if value is None:
        headers = getattr(request, "headers", None)
        if isinstance(headers, dict):
            value = headers.get(key)
    return value


def _prerun(task_id: Any = None, task: Any = None, **_kwargs: Any) -> None:
    if task_id is None or task is None:
        return
    try:
        tracer = _runtime.hook_tracer()
        if tracer is None:
            return
        request = task.request
        name = str(getattr(task, "name", "") or "")[:255]
        delivery = getattr(request, "delivery_info", None) or {}
        queue = delivery.get("routing_key") or delivery.get("exchange") or ""
        attrs: dict[str, Any] = {
            "messaging.system": _system(task.app),
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": str(queue)[:255],
            "messaging.message.id": str(task_id),
            "celery.task.name": name,
            "celery.task.retries": int(getattr(request, "retries", 0) or 0),
        }
        parent = None
        traceparent = _request_value(request, "traceparent")
        if traceparent:
            parent = tracer.extract(traceparent, _request_value(request, "tracestate"))
        span = tracer.start_span(
            f"process {name}", kind="consumer", attributes=attrs, parent=parent
        )
        token = _runtime.CURRENT.set(span)
        with _lock:
            if len(_running) < _MAX_RUNNING:
                _running[str(task_id)] = (span, token)
                return
        _runtime.CURRENT.reset(token)
        span.end()
    except Exception as exc:
        _diag.internal_error("celery.process", exc)


def _current(task_id: Any) -> Any:
    with _lock:
        found = _running.get(str(task_id))
    return found[0] if found else None


def _failure(task_id: Any = None, exception: Any = None, **_kwargs: Any) -> None:
    span = _current(task_id)
    if span is None or not isinstance(exception, BaseException):
        return
    try:
        span.record_exception(exception, escaped=True)
        span.set_status("error", f"{type(exception).__qualname__}: {exception}")
        span.set_attribute("error.type", _amqp.error_type(exception))
    except Exception as exc:
        _diag.internal_error("celery.process", exc)


def _retry(request: Any = None, reason: Any = None, **_kwargs: Any) -> None:
    span = _current(getattr(request, "id", None))
    if span is None:
        return
    try:
        span.add_event("celery.retry", {"celery.retry.reason": str(reason)[:1000]})
    except Exception as exc:
        _diag.internal_error("celery.process", exc)


def _postrun(task_id: Any = None, state: Any = None, **_kwargs: Any) -> None:
    with _lock:
        found = _running.pop(str(task_id), None)
    if found is None:
        return
    span, token = found
    with contextlib.suppress(ValueError):  # another context: leave its current span
        _runtime.CURRENT.reset(token)
    try:
        if state:
            span.set_attribute("celery.task.state", str(state)[:32])
    except Exception as exc:
        _diag.internal_error("celery.process", exc)
    _amqp.done(span)


# -- the Redis broker's own traffic -------------------------------------------
# kombu's Redis transport talks to Redis through redis-py: its LPUSH, MULTI
# and Lua-script calls (an EVALSHA answered NOSCRIPT, then loaded) would be
# traced as the application's Redis commands, each poll a trace of its own
# and each script load an error. That traffic is the broker's, shown by the
# publish and process spans (as py-amqp's frames are on RabbitMQ): the client
# class kombu's channel uses runs its commands under the suppression context.


class _QuietPipeline:
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        with suppressed():
            return super().execute(*args, **kwargs)  # type: ignore[misc]

    def immediate_execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with suppressed():
            return super().immediate_execute_command(*args, **kwargs)  # type: ignore[misc]


class _QuietClient:
    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with suppressed():
            return super().execute_command(*args, **kwargs)  # type: ignore[misc]

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = super().pipeline(*args, **kwargs)  # type: ignore[misc]
        try:
            pipe.__class__ = _quiet(type(pipe), _QuietPipeline)
        except Exception as exc:
            _diag.internal_error("celery.redis_broker", exc)
        return pipe


_quiet_classes: dict[tuple[type, type], type] = {}


def _quiet(cls: type, mixin: type) -> type:
    """``cls`` with ``mixin``'s methods first (one class per pair)."""
    if issubclass(cls, mixin):
        return cls
    with _lock:
        made = _quiet_classes.get((cls, mixin))
        if made is None:
            made = _quiet_classes[(cls, mixin)] = type(cls.__name__, (mixin, cls), {})
    return made


def _broker_client(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """kombu's ``redis.Channel._get_client``: the client class (or a
    ``functools.partial`` of one), made quiet."""
    client = wrapped(*args, **kwargs)
    try:
        if isinstance(client, type):
            return _quiet(client, _QuietClient)
        if isinstance(client, functools.partial) and isinstance(client.func, type):
            return functools.partial(
                _quiet(client.func, _QuietClient), *client.args, **client.keywords
            )
    except Exception as exc:
        _diag.internal_error("celery.redis_broker", exc)
    return client


_HANDLERS = (
    ("before_task_publish", _before_publish),
    ("task_prerun", _prerun),
    ("task_failure", _failure),
    ("task_retry", _retry),
    ("task_postrun", _postrun),
)


def _connect() -> None:
    from celery import signals  # type: ignore[import-untyped]  # ships no type hints

    for name, handler in _HANDLERS:
        getattr(signals, name).connect(handler, weak=False)


def _disconnect() -> None:
    from celery import signals

    for name, handler in _HANDLERS:
        getattr(signals, name).disconnect(handler)


_PATCHER = Patcher(
    "celery",
    SUPPORTED,
    (
        Target("celery.app.base", "Celery.send_task", _send_task),
        Target("kombu.transport.redis", "Channel._get_client", _broker_client, optional=True),
    ),
    on_patch=_connect,
    on_unpatch=_disconnect,
)
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
