"""Redis (redis-py): every command a CLIENT span, every pipeline one span.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_REDIS_ENABLED=false``). Supported: redis-py 5.0 and later, sync
``redis.Redis`` and asyncio ``redis.asyncio.Redis``; importing ``redis`` patches
both (``patch()`` imports ``redis.asyncio``, part of the same package).

A command span is named after the command (``GET``, ``CLIENT SETNAME``), never
a key. ``db.query.text`` keeps the command and its key and replaces every other
argument by ``?`` (``SET user:1 ?``, ``HSET h ? ?``); a command without a key
(``PING``, ``AUTH``, ``CONFIG SET``, ``EVAL``) keeps its name alone; at most
1000 characters. With ``PULSETRACE_REDIS_OBFUSCATE_KEYS=true`` the key is a
``?`` too (``GET ?``); otherwise personal data in a key (``user:a@b.com``) is
masked by the scrubber at export like any attribute. Also
``db.system.name=redis``, ``db.operation.name``, ``db.namespace`` (the
database index, ``"0"``), ``server.address`` and ``server.port`` (or the Unix
socket path).

A pipeline is one span when executed, ``PIPELINE`` or, for a transaction,
``MULTI``, with ``db.operation.batch.size`` (its command count),
``db.redis.commands`` (the first 128 command names) and the commands' query
texts joined by ``; ``; queued commands get no span of their own, commands a
pipeline sends at once (``WATCH``, reads before ``MULTI``) do. ``publish`` is
a command; subscribing and listening are not traced. Errors (server error,
lost connection, timeout, ``WatchError``; a failed command in a pipeline run
with ``raise_on_error=False``) set ``error.type``; exceptions are re-raised
unchanged, their messages kept as redis-py writes them. Redis Cluster clients
are not traced.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Optional

from pulsetrace import _diag, _runtime
from pulsetrace.contrib._patcher import Patcher, Target, twins

SUPPORTED = ">=5.0"

MAX_QUERY_LENGTH = 1000
_MAX_KEY_LENGTH = 256
_MAX_BATCH_NAMES = 128

_NAME = re.compile(r"[A-Za-z][A-Za-z_.|-]{0,39}\Z")
_SUBCOMMAND = re.compile(r"[A-Za-z][A-Za-z_-]{0,31}\Z")
#: Commands whose second word names the operation (``CLIENT SETNAME``).
_CONTAINERS = frozenset(
    "ACL CLIENT CLUSTER COMMAND CONFIG DEBUG FUNCTION LATENCY MEMORY MODULE OBJECT "
    "PUBSUB SCRIPT SLOWLOG XGROUP XINFO".split()
)
#: Operations whose first argument is a key, although their first word is a container.
_KEYED = frozenset({"MEMORY USAGE", "OBJECT", "XGROUP", "XINFO"})
#: Commands whose first argument is not a key (a password, a script, a cursor...).
_KEYLESS = frozenset(
    "AUTH BGREWRITEAOF BGSAVE DBSIZE DISCARD ECHO EVAL EVALSHA EVALSHA_RO EVAL_RO EXEC "
    "FAILOVER FCALL FCALL_RO FLUSHALL FLUSHDB HELLO INFO LASTSAVE LOLWUT MIGRATE MONITOR "
    "MULTI PING PSYNC QUIT RANDOMKEY READONLY READWRITE REPLICAOF RESET ROLE SAVE SCAN "
    "SELECT SHUTDOWN SLAVEOF SWAPDB SYNC TIME UNWATCH WAIT WAITAOF XREAD XREADGROUP".split()
)


def _text(value: Any, limit: int = _MAX_KEY_LENGTH) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value[:limit]).decode("utf-8", "replace")[:limit]
    return (value if isinstance(value, str) else str(value))[:limit]


def _split(args: tuple[Any, ...]) -> tuple[Optional[str], Any, int]:
    """The operation name, its first argument (or None) and the count of its
    arguments, as redis-py sends them: the first element may hold several
    words (``"CLIENT SETNAME"``); the arguments are not copied."""
    words = _text(args[0], MAX_QUERY_LENGTH).split() if args else []
    total = len(words) + max(len(args) - 1, 0)

    def at(i: int) -> Any:
        return words[i] if i < len(words) else args[i - len(words) + 1]

    first = _text(at(0), 41) if total else ""
    if not _NAME.match(first):
        return None, None, total
    op, used = first.upper(), 1
    if op in _CONTAINERS and total > 1:
        sub = _text(at(1), 33)
        if _SUBCOMMAND.match(sub):
            op, used = f"{op} {sub.upper()}", 2
    return op, at(used) if total > used else None, total - used


def _has_key(op: str) -> bool:
    first = op.split(" ", 1)[0]
    if first in _CONTAINERS:
        return first in _KEYED or op in _KEYED
    return first not in _KEYLESS


def _query(op: str, first: Any, n: int, keyed: Optional[bool] = None) -> str:
    """``SET user:1 ?``: the command, its key if it has one, a ``?`` for every other argument."""
    text = op
    if n and (_has_key(op) if keyed is None else keyed):
        cfg = _runtime._config
        if cfg is not None and cfg.redis_obfuscate_keys:
            key = "?"
        else:
            key = first[:_MAX_KEY_LENGTH] if type(first) is str else _text(first)
        text, n = f"{op} {key}", n - 1
    return (text + " ?" * min(n, MAX_QUERY_LENGTH // 2))[:MAX_QUERY_LENGTH]


_BASE_ATTR = "_pulsetrace_base_attributes"


def _base(instance: Any) -> dict[str, Any]:
    """The attributes every command of a client shares, read from its
    connection pool once and kept on the pool (shared: callers copy)."""
    pool = getattr(instance, "connection_pool", None)
    cached: Optional[dict[str, Any]] = getattr(pool, _BASE_ATTR, None)
    if cached is not None:
        return cached
    attrs: dict[str, Any] = {"db.system.name": "redis"}
    kw = getattr(pool, "connection_kwargs", None) or {}
    attrs["db.namespace"] = str(kw.get("db", 0))
    if kw.get("path"):
        attrs["server.address"] = str(kw["path"])
    elif kw.get("host"):
        attrs["server.address"] = str(kw["host"])
        attrs["server.port"] = int(kw.get("port", 6379))
    if pool is not None:
        with contextlib.suppress(AttributeError, TypeError):  # no __dict__: no cache
            setattr(pool, _BASE_ATTR, attrs)
    return attrs


#: One-word command names as redis-py sends them (``"GET"``) -> (operation,
#: whether its first argument is a key): a repeated command is not parsed again.
_SIMPLE: dict[str, tuple[str, bool]] = {}
_MAX_SIMPLE = 512


def _command(instance: Any, args: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
    attrs = dict(_base(instance))
    head = args[0] if args else None
    hit = _SIMPLE.get(head) if type(head) is str else None
    if hit is not None:
        op: Optional[str] = hit[0]
        keyed = hit[1]
        n = len(args) - 1
        first = args[1] if n else None
    else:
        op, first, n = _split(args)
        keyed = op is not None and _has_key(op)
        if (
            op is not None
            and type(head) is str
            and op == head.upper()
            and op not in _CONTAINERS
            and len(_SIMPLE) < _MAX_SIMPLE
        ):
            _SIMPLE[head] = (op, keyed)
    if op is not None:
        attrs["db.operation.name"] = op
        attrs["db.query.text"] = _query(op, first, n, keyed)
    return op or "redis", attrs


def _pipeline(instance: Any, _args: Any) -> Optional[tuple[str, dict[str, Any]]]:
    stack = instance.command_stack
    if not stack and not instance.watching:
        return None  # redis-py sends nothing
    tx = getattr(instance, "is_transaction", None)  # asyncio; sync: ``transaction``
    tx = instance.transaction if tx is None else tx
    op = "MULTI" if tx is True or instance.explicit_transaction else "PIPELINE"
    names: list[str] = []
    texts: list[str] = []
    length = 0
    for args, _options in stack:
        if len(names) >= _MAX_BATCH_NAMES and length >= MAX_QUERY_LENGTH:
            break
        name, first, n = _split(args)
        if len(names) < _MAX_BATCH_NAMES:
            names.append(name or "?")
        if length < MAX_QUERY_LENGTH:
            texts.append(_query(name, first, n) if name else "?")
            length += len(texts[-1]) + 2
    attrs = dict(_base(instance))
    attrs["db.operation.name"] = op
    attrs["db.operation.batch.size"] = len(stack)
    attrs["db.redis.commands"] = tuple(names)
    if texts:
        attrs["db.query.text"] = "; ".join(texts)[:MAX_QUERY_LENGTH]
    return op, attrs


def _start(describe: Any, instance: Any, args: Any) -> Any:
    """A CLIENT span named and described by ``describe``, or None (tracing off,
    nothing sent, pulsetrace's own work, or a pulsetrace failure: the call
    then runs untraced)."""
    try:
        tracer = _runtime.hook_tracer()
        if tracer is None:
            return None
        described = describe(instance, args)
        if described is None:
            return None
        return tracer.start_span(described[0], kind="client", attributes=described[1])
    except Exception as exc:
        _diag.internal_error("redis.start", exc)
        return None


def _start_command(instance: Any, args: Any, _kwargs: Any) -> Any:
    return _start(_command, instance, args)


def _start_pipeline(instance: Any, args: Any, _kwargs: Any) -> Any:
    return _start(_pipeline, instance, args)


def _error_type(exc: BaseException) -> str:
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _finish(span: Any, exc: Optional[BaseException] = None, result: Any = None) -> None:
    """End the span; an exception raised, or the first error among a
    pipeline's replies, makes it an error."""
    try:
        escaped = exc is not None
        if exc is None and isinstance(result, list):
            exc = next((r for r in result if isinstance(r, Exception)), None)
        if exc is not None:
            span.record_exception(exc, escaped=escaped)
            span.set_status("error", f"{type(exc).__qualname__}: {exc}")
            span.set_attribute("error.type", _error_type(exc))
    except Exception as err:
        _diag.internal_error("redis.end", err)
    try:
        span.end()
    except Exception as err:
        _diag.internal_error("redis.end", err)


def _command_done(span: Any, _result: Any) -> None:
    try:
        span.end()
    except Exception as err:
        _diag.internal_error("redis.end", err)


def _pipeline_done(span: Any, result: Any) -> None:
    _finish(span, None, result)


_sync_command, _async_command = twins(_start_command, _command_done, _finish)
_sync_execute, _async_execute = twins(_start_pipeline, _pipeline_done, _finish)


def _targets(module: str, command: Any, execute: Any, optional: bool) -> tuple[Target, ...]:
    """The command and pipeline methods of one of redis-py's client modules."""
    return (
        Target(module, "Redis.execute_command", command, optional),
        Target(module, "Pipeline.immediate_execute_command", command, optional),
        Target(module, "Pipeline.execute", execute, optional),
    )


# Sync and asyncio clients (``redis.asyncio`` is part of the same package;
# a redis-py without it is traced sync only).
_PATCHER = Patcher(
    "redis",
    SUPPORTED,
    (
        *_targets("redis.client", _sync_command, _sync_execute, False),
        *_targets("redis.asyncio.client", _async_command, _async_execute, True),
    ),
)
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
