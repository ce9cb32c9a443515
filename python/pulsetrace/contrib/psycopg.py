"""psycopg 3 (sync and asyncio): every statement a CLIENT span.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_PSYCOPG_ENABLED=false``). ``psycopg.connect``,
``psycopg.Connection.connect`` (what ``psycopg_pool`` calls) and
``psycopg.AsyncConnection.connect`` return proxied connections (see
:mod:`pulsetrace.contrib.dbapi`): cursor ``execute``/``executemany`` (awaited
ones too) and ``conn.execute`` are spans. ``sql.Composed`` statements are
rendered, then obfuscated like any other. ``db.system.name`` is
``postgresql``; ``db.namespace``, ``server.address`` and ``server.port`` come
from ``conn.info`` at connect time (``server.address`` is the socket folder for
a Unix-socket connection). A failed statement carries its SQLSTATE as
``db.response.status_code``. ``copy()`` and ``stream()`` are not traced; in a
pipeline a span times the queueing of its statement, not the round trip.
"""

from __future__ import annotations

from typing import Any

from pulsetrace.contrib import dbapi
from pulsetrace.contrib._patcher import Patcher, Target

SUPPORTED = ">=3.1,<4"

_SWITCH = dbapi.Switch()


class PsycopgConnection(dbapi.TracedConnection):
    """A psycopg connection: ``conn.execute`` returns a (traced) cursor."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_run("execute", args, kwargs)


async def _arun(proxy: Any, method: Any, args: Any, kwargs: Any, rows: Any) -> Any:
    """:func:`dbapi.run` for a coroutine method."""
    started = dbapi.start(proxy._self_db, dbapi.statement_of(args, kwargs), proxy.__wrapped__)
    if started is None:
        return await method(*args, **kwargs)
    try:
        result = await method(*args, **kwargs)
    except BaseException as exc:
        dbapi.end(started, error=exc)
        raise
    dbapi.end(started, result if rows is None else rows)
    return result


class AsyncTracedCursor(dbapi.TracedCursor):
    """An ``AsyncCursor``: ``await cur.execute(...)``, ``async with``, ``async for``."""

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        w = self.__wrapped__
        return self._self_same(await _arun(self, w.execute, args, kwargs, w))

    async def executemany(self, *args: Any, **kwargs: Any) -> Any:
        w = self.__wrapped__
        return self._self_same(await _arun(self, w.executemany, args, kwargs, w))

    def __aiter__(self) -> Any:
        return self.__wrapped__.__aiter__()


class AsyncTracedConnection(dbapi.TracedConnection):
    """An ``AsyncConnection``: ``await conn.execute(...)`` returns a traced cursor."""

    _self_cursor_class = AsyncTracedCursor

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        w = self.__wrapped__
        return self._self_cursor(await _arun(self, w.execute, args, kwargs, None))


def _database(conn: Any) -> dbapi.Database:
    info = conn.info
    try:
        port = info.port
    except Exception:  # no port in the connection string nor compiled in
        port = None
    return dbapi.Database("postgresql", _SWITCH, info.dbname, info.host, port)


def _proxy(conn: Any, args: Any, kwargs: Any) -> Any:
    return PsycopgConnection(conn, _database(conn))


def _async_proxy(conn: Any, args: Any, kwargs: Any) -> Any:
    return AsyncTracedConnection(conn, _database(conn))


_connect = dbapi.connect_wrapper(_SWITCH, _proxy, "psycopg.connect")


async def _proxied(coroutine: Any) -> Any:
    conn = await coroutine
    return dbapi.proxied(_SWITCH, conn, _async_proxy, (), {}, "psycopg.connect_async")


def _connect_async(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return _proxied(wrapped(*args, **kwargs))


_PATCHER = Patcher(
    "psycopg",
    SUPPORTED,
    (
        Target("psycopg", "connect", _connect),
        Target("psycopg", "Connection.connect", _connect),
        Target("psycopg", "AsyncConnection.connect", _connect_async),
    ),
    on_patch=_SWITCH.turn_on,
    on_unpatch=_SWITCH.turn_off,
)
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
