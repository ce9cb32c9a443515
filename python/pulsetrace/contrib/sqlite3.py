"""sqlite3 (standard library): every statement a CLIENT span.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_SQLITE3_ENABLED=false``). ``sqlite3.connect`` and
``sqlite3.dbapi2.connect`` (what SQLAlchemy calls) return a real
``sqlite3.Connection`` of a traced subclass (``factory=``; a factory of the
caller's gets a traced subclass of its own), whose cursors are of a traced
``sqlite3.Cursor`` subclass: cursor ``execute``/``executemany``/
``executescript`` and the connection shortcuts (which run on such a cursor)
are spans. No proxy: ``type()`` checks of the C code (``sqlite3.Cursor(conn)``,
``backup``) pass, and a statement costs little more than its span.
``db.system.name`` is ``sqlite``; ``db.namespace`` is the database file's
basename (``:memory:`` for an in-memory database); there is no server
address. A failed statement carries ``sqlite_errorcode`` (Python 3.11+) as
``db.response.status_code``.

A ``connect`` imported by name before patching is not wrapped; a cursor made
by a ``cursor(factory)`` that is not a ``sqlite3.Cursor`` subclass is not
traced.
"""

from __future__ import annotations

import _sqlite3
import os
import sqlite3
import sys
from typing import Any, Callable, Optional

from pulsetrace import _diag, _runtime
from pulsetrace._native import ClientCall
from pulsetrace._suppress import is_suppressed
from pulsetrace.contrib import dbapi
from pulsetrace.contrib._patcher import Patcher, Target
from pulsetrace.contrib.dbapi import is_active

#: The standard library: no version check.
SUPPORTED = None

_SWITCH = dbapi.Switch()


def file_namespace(path: Any) -> Optional[str]:
    """``db.namespace`` of a SQLite database: the file's basename, ``:memory:``."""
    if path is None:
        return None
    p = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    if p.startswith("file:"):
        p = p[5:].split("?", 1)[0]
    if p in ("", ":memory:"):
        return p or None
    return os.path.basename(p.rstrip("/\\")) or p


_execute = sqlite3.Cursor.execute
_executemany = sqlite3.Cursor.executemany
_executescript = sqlite3.Cursor.executescript
_cursor = sqlite3.Connection.cursor


def _failed(span: Any, exc: BaseException) -> None:
    dbapi.finish(span, "sqlite", error=exc)


#: ``_execute`` in its span, natively: the span started, the statement run,
#: its row count set, the span ended, in one call (a failure goes to
#: :func:`dbapi.finish`, like every SQL hook's). The tracer configures itself
#: on first use.
_traced = ClientCall(_runtime.TRACER, _execute, dbapi.ROWS_AFFECTED, _failed).call


def _database_of(cursor: Any) -> Optional[dbapi.Database]:
    """The Database of a traced cursor's connection; None for a connection
    that ``connect`` did not make (``type(conn)(path)`` leaves the slot of
    :class:`_Connection` unset): its statements are not traced."""
    return getattr(cursor.connection, "_pulsetrace_db", None)


def _traced_execute(on_connection: bool) -> Callable[..., Any]:
    """``execute`` of a traced cursor, or (``on_connection``) of a traced
    connection: on a new traced cursor, as sqlite3's own shortcut. One body
    for both, and no Python call between the method and the span (the
    checks of :func:`dbapi.statement_span`, inline; the span itself is
    :data:`_traced`, native): a Python call costs about 500 instructions,
    and this code runs cold between requests."""

    def execute(self: Any, sql: Any, parameters: Any = (), /) -> Any:
        cur = _cursor(self, TracedCursor) if on_connection else self
        try:
            db = cur.connection._pulsetrace_db
        except AttributeError:  # a connection not made by connect (see _database_of)
            db = None
        if db is None or not db.switch.on or is_active() or is_suppressed():
            return _execute(cur, sql, parameters)
        try:
            name, attrs = db.statements.get(sql) or db.describe(sql)
        except Exception as exc:
            _diag.internal_error("dbapi.start", exc)
            return _execute(cur, sql, parameters)
        return _traced(cur, sql, parameters, name, attrs)

    return execute


class TracedCursor(sqlite3.Cursor):
    """A cursor whose statements are spans (its connection is traced)."""

    __slots__ = ()
    connection: TracedConnection  # for type checkers: sqlite3's own read-only attribute

    execute = _traced_execute(on_connection=False)

    def executemany(self, sql: Any, parameters: Any, /) -> Any:
        span = dbapi.statement_span(_database_of(self), sql)
        if span is None:
            return _executemany(self, sql, parameters)
        try:
            _executemany(self, sql, parameters)
        except BaseException as exc:
            dbapi.finish(span, "sqlite", error=exc)
            raise
        dbapi.finish(span, "sqlite", self)
        return self

    def executescript(self, sql_script: Any, /) -> Any:
        span = dbapi.statement_span(_database_of(self), sql_script)
        if span is None:
            return _executescript(self, sql_script)
        try:
            _executescript(self, sql_script)
        except BaseException as exc:
            dbapi.finish(span, "sqlite", error=exc)
            raise
        dbapi.finish(span, "sqlite", self)
        return self


class TracedConnection(sqlite3.Connection):
    """A connection whose cursors are :class:`TracedCursor` (subclasses of
    the caller's cursor class, when one is given). No instance dict, as
    sqlite3's own: the subclass of a caller's factory keeps the database in
    its instance dict, the default one in a slot (:class:`_Connection`)."""

    __slots__ = ()
    #: Set right after ``connect`` (a factory's ``__init__`` runs untraced).
    _pulsetrace_db: Optional[dbapi.Database] = None

    def cursor(self, factory: Any = TracedCursor) -> Any:
        return _cursor(self, factory if factory is TracedCursor else _cursor_class(factory))

    # The shortcuts run on a traced cursor, as sqlite3's own run on a new cursor.
    execute = _traced_execute(on_connection=True)

    def executemany(self, sql: Any, parameters: Any, /) -> Any:
        return _cursor(self, TracedCursor).executemany(sql, parameters)

    def executescript(self, sql_script: Any, /) -> Any:
        return _cursor(self, TracedCursor).executescript(sql_script)


class _Connection(TracedConnection):
    """The traced connection of a ``connect`` without a factory of the
    caller's (no Python code runs between its creation and the database
    being set): the database in a slot, no instance dict (about 1,200
    instructions less per connection, callgrind)."""

    __slots__ = ("_pulsetrace_db",)


# Named as sqlite3's own classes: reprs and name checks look the same.
for _cls, _base in (
    (TracedCursor, sqlite3.Cursor),
    (TracedConnection, sqlite3.Connection),
    (_Connection, sqlite3.Connection),
):
    _cls.__module__, _cls.__name__, _cls.__qualname__ = (
        _base.__module__,
        _base.__name__,
        _base.__name__,
    )

#: The traced subclass of each connection and cursor class seen.
_subclasses: dict[type, type] = {sqlite3.Connection: _Connection, sqlite3.Cursor: TracedCursor}


def _subclass(base: type, traced: type) -> type:
    cls = _subclasses.get(base)
    if cls is None:
        # Same name and module: reprs and name checks look the same. The
        # caller's class first: its own overrides win, and reach the traced
        # methods through super().
        cls = type(base.__name__, (base, traced), {"__module__": base.__module__})
        _subclasses[base] = cls
    return cls


def _cursor_class(factory: Any) -> Any:
    """The traced subclass of a ``cursor(factory)``; a factory that is not a
    ``sqlite3.Cursor`` class as is (its cursors are not traced)."""
    if not isinstance(factory, type) or not issubclass(factory, sqlite3.Cursor):
        return factory
    if issubclass(factory, TracedCursor):
        return factory
    return _subclass(factory, TracedCursor)


#: The Database of each database path (a repeated statement is described once).
_databases: dict[Any, dbapi.Database] = {}
_MAX_DATABASES = 256
_FACTORY = 5  # ``factory``'s position in ``connect``'s arguments
#: sqlite3's own ``connect``, where calling it is calling its factory with the
#: same arguments: from Python 3.11 the connection's ``__init__`` raises the
#: ``sqlite3.connect`` audit events, and a single positional argument draws
#: no deprecation warning. Calling the factory directly skips parsing a
#: ``factory`` keyword twice (``connect``'s, then ``__init__``'s: about 2,200
#: instructions, callgrind). A ``connect`` patched by something else before
#: pulsetrace is called as it is.
_NATIVE_CONNECT = _sqlite3.connect if sys.version_info >= (3, 11) else None


def _database(path: Any) -> dbapi.Database:
    db = _databases.get(path) if isinstance(path, str) else None
    if db is None:
        db = dbapi.Database("sqlite", _SWITCH, file_namespace(path))
        if isinstance(path, str):
            if len(_databases) >= _MAX_DATABASES:
                _databases.clear()
            _databases[path] = db
    return db


def _connect(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    # The common case first, inline (each call saved is ~1,000 instructions on
    # a connect): a database path seen before, no factory of the caller's.
    path = args[0] if args else kwargs.get("database")
    if type(path) is str and len(args) <= _FACTORY and "factory" not in kwargs:
        db = _databases.get(path)
        if db is not None and db.switch.on:
            if wrapped is _NATIVE_CONNECT and len(args) == 1:
                conn = _Connection(path, **kwargs) if kwargs else _Connection(path)
            else:
                conn = wrapped(*args, factory=_Connection, **kwargs)
            conn._pulsetrace_db = db
            return conn
    if not _SWITCH.on:
        return wrapped(*args, **kwargs)
    try:
        db = _database(path)
        positional = len(args) > _FACTORY
        base = args[_FACTORY] if positional else kwargs.get("factory", sqlite3.Connection)
        if not isinstance(base, type) or not issubclass(base, sqlite3.Connection):
            return wrapped(*args, **kwargs)  # a factory function: left alone
        traced = base if issubclass(base, TracedConnection) else _subclass(base, TracedConnection)
        if positional:
            args = (*args[:_FACTORY], traced, *args[_FACTORY + 1 :])
        else:
            kwargs["factory"] = traced
    except Exception as exc:
        _diag.internal_error("sqlite3.connect", exc)
        return wrapped(*args, **kwargs)
    conn = wrapped(*args, **kwargs)
    conn._pulsetrace_db = db
    return conn


# ``sqlite3.dbapi2.connect`` is what SQLAlchemy calls.
_PATCHER = Patcher(
    "sqlite3",
    SUPPORTED,
    (Target("sqlite3", "connect", _connect), Target("sqlite3.dbapi2", "connect", _connect)),
    on_patch=_SWITCH.turn_on,
    on_unpatch=_SWITCH.turn_off,
)
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
