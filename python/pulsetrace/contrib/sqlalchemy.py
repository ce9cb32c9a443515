"""SQLAlchemy (Core and ORM, sync; asyncio through its sync engine): every
statement sent to the database a CLIENT span.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_SQLALCHEMY_ENABLED=false``). Listeners on the ``Engine`` class
(``before_cursor_execute``, ``after_cursor_execute``, ``handle_error``) cover
every engine, also ones created before patching. The span has the attributes of
:mod:`pulsetrace.contrib.dbapi` (the statement is the SQL SQLAlchemy compiled,
obfuscated; parameters are never recorded): ``db.system.name`` from the dialect
(``postgresql``, ``sqlite``, ``mysql``, ``mariadb``, ...), ``db.namespace``,
``server.address`` and ``server.port`` from the engine URL (SQLite: the file's
basename or ``:memory:``). A failed statement records the DB-API exception
(``error.type`` is the driver's class, e.g. ``UniqueViolation``) and its code.

One span per statement: when the DB-API driver is patched too, SQLAlchemy's
span is the one kept; the driver's proxies see :data:`dbapi.ACTIVE` set and
pass through. Statements SQLAlchemy runs without events (the dialect's first
connect checks) get the driver's span, if the driver is patched. A statement
whose failure SQLAlchemy hides from ``handle_error`` (the
``skip_user_error_events`` option of MySQL table reflection) is ended with an
error status by the next statement of the same context.
"""

from __future__ import annotations

import contextvars
from typing import Any, Optional

from pulsetrace import _diag
from pulsetrace.contrib import dbapi
from pulsetrace.contrib._patcher import Patcher
from pulsetrace.contrib.sqlite3 import file_namespace

SUPPORTED = ">=2.0,<3"

_KEY = "_pulsetrace_sql_database"
_SWITCH = dbapi.Switch()
_SYSTEMS = {"mssql": "microsoft.sql_server", "oracle": "oracle.db"}

#: The statement span open in this context.
_OPEN: contextvars.ContextVar[Optional[dbapi.Started]] = contextvars.ContextVar(
    "pulsetrace_sqlalchemy_open", default=None
)


def _database(engine: Any) -> dbapi.Database:
    db: Optional[dbapi.Database] = engine.__dict__.get(_KEY)
    if db is None:
        url = engine.url
        system = _SYSTEMS.get(engine.dialect.name, engine.dialect.name)
        namespace = url.database
        if system == "sqlite":
            namespace = file_namespace(namespace or ":memory:")
        db = dbapi.Database(system, _SWITCH, namespace, url.host, url.port)
        engine.__dict__[_KEY] = db
    return db


def _before(
    conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: Any
) -> None:
    try:
        stale = _OPEN.get()
        if stale is not None:
            _OPEN.set(None)
            dbapi.end(stale, error="no outcome reported by SQLAlchemy")
        db = _database(conn.engine)
        started = dbapi.start(db, statement, cursor)
        if started is not None:
            _OPEN.set(started)
    except Exception as exc:
        _diag.internal_error("sqlalchemy.before", exc)


def _after(
    conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: Any
) -> None:
    opened = _OPEN.get()
    if opened is not None:
        _OPEN.set(None)
        dbapi.end(opened, cursor)


def _error(context: Any) -> None:
    opened = _OPEN.get()
    if opened is not None:
        _OPEN.set(None)
        dbapi.end(opened, error=context.original_exception)


_LISTENERS = (
    ("before_cursor_execute", _before),
    ("after_cursor_execute", _after),
    ("handle_error", _error),
)


def _listen() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    for name, fn in _LISTENERS:
        event.listen(Engine, name, fn)
    _SWITCH.turn_on()


def _unlisten() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    _SWITCH.turn_off()
    for name, fn in _LISTENERS:
        if event.contains(Engine, name, fn):
            event.remove(Engine, name, fn)


# No attribute to wrap: listeners on the Engine class cover every engine.
_PATCHER = Patcher(
    "sqlalchemy",
    SUPPORTED,
    (),
    distributions=("SQLAlchemy",),
    on_patch=_listen,
    on_unpatch=_unlisten,
    mark=("sqlalchemy.engine", "Engine"),
)
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
