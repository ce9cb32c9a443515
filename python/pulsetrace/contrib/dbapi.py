"""DB-API 2.0 (PEP 249): the connection and cursor proxies the SQL hooks share.

A hook wraps the driver's ``connect``: each connection is a ``wrapt.ObjectProxy``
(attributes, ``isinstance``, equality as for the real object) whose cursors are
proxies too. ``execute``, ``executemany``, ``callproc`` and the connection-level
helpers are CLIENT spans (children of the current span) named ``SELECT users``:
``db.system.name``, ``db.query.text`` (obfuscated natively: literals become
``?``; parameters are never read), ``db.operation.name``, ``db.collection.name``,
``db.namespace``, ``server.address``, ``server.port``, and
``db.response.rows_affected`` (pulsetrace's name; no stable convention exists):
``rowcount`` when >= 0 (DML: rows changed; SELECT: what the driver reports).
A failure adds the exception, an error status, ``error.type`` (the driver's
exception class) and ``db.response.status_code`` (SQLSTATE, MySQL error number,
``sqlite_errorcode``); it is re-raised unchanged. While a span is open here or
in the SQLAlchemy hook, ``ACTIVE`` is set and nested DB-API calls pass through:
one span per statement.

Limits: a ``connect`` imported by name before patching is the original; C code
checking the exact type rejects a proxy (pass ``conn.__wrapped__``; psycopg2
gets real subclasses instead); fetching is not timed.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable, Optional

import wrapt

from pulsetrace import _diag, _runtime
from pulsetrace._native import sql_row_count
from pulsetrace._suppress import is_suppressed
from pulsetrace.contrib import _sql

#: True while a SQL span is open in this context: nested DB-API calls pass through.
ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pulsetrace_sql_active", default=False
)
#: ``ACTIVE.get``, bound once (see :data:`pulsetrace._suppress.is_suppressed`).
is_active = ACTIVE.get
_KEYWORDS = ("query", "sql", "operation", "statement", "procname")
#: Where a statement's row count goes (``_native.sql_row_count``: a
#: non-negative int ``rowcount``).
ROWS_AFFECTED = "db.response.rows_affected"


class Switch:
    """On while an integration is patched: its proxies go quiet after ``unpatch()``."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = False

    def turn_on(self) -> None:
        self.on = True

    def turn_off(self) -> None:
        self.on = False


#: A statement span's attributes: ``(key, value)`` pairs in a tuple, which
#: the native side converts once while the same tuple is passed again.
Pairs = tuple[tuple[str, Any], ...]


class Database:
    """What a connection's spans share, read once at connect time, and the
    span name and attributes of the statements it ran (a repeated statement
    costs one dict lookup, and its attributes are converted once)."""

    __slots__ = ("host", "namespace", "port", "statements", "switch", "system")

    def __init__(
        self,
        system: str,
        switch: Switch,
        namespace: Optional[str] = None,
        host: Optional[str] = None,
        port: Optional[int] = None,
    ) -> None:
        self.system, self.switch, self.namespace = system, switch, namespace
        self.host, self.port = host, port
        self.statements: dict[str, tuple[str, Pairs]] = {}

    def describe(self, text: Any) -> tuple[str, Pairs]:
        """(span name, attributes) of a statement's text."""
        hit = self.statements.get(text) if type(text) is str else None
        if hit is None:
            name, attrs = _sql.attributes(text, self.system, self.namespace, self.host, self.port)
            hit = (name, tuple(attrs.items()))
            if type(text) is str:
                if len(self.statements) >= _MAX_STATEMENTS:
                    self.statements.clear()
                self.statements[text] = hit
        return hit


#: Statements a connection remembers the attributes of (then it starts afresh).
_MAX_STATEMENTS = 256


def error_code(exc: BaseException, system: str) -> Optional[str]:
    """The MySQL error number, else the SQLSTATE, else ``sqlite_errorcode``."""
    args = getattr(exc, "args", ())
    if system in ("mysql", "mariadb") and args and isinstance(args[0], int):
        return str(args[0])
    for attr in ("sqlstate", "pgcode", "sqlite_errorcode"):
        code = getattr(exc, attr, None)
        if code is not None:
            return str(code)
    return None


def text_of(statement: Any, context: Any) -> Any:
    """The SQL of a statement; psycopg ``sql.Composed`` is rendered (then obfuscated)."""
    if isinstance(statement, (str, bytes)):
        return statement
    as_string = getattr(statement, "as_string", None)
    if as_string is not None:
        return as_string(context)
    strings = getattr(statement, "strings", None)  # a t-string Template (psycopg 3.3)
    return "?".join(strings) if isinstance(strings, tuple) else str(statement)


Started = tuple[Any, Any, str]


def start(db: Database, statement: Any, context: Any) -> Optional[Started]:
    """Open the span of one statement (``context``: the real cursor or
    connection); ``None`` when it is not traced."""
    if not db.switch.on or is_active() or is_suppressed():
        return None
    try:
        tracer = _runtime.tracer()
        if not tracer.enabled:
            return None
        name, attrs = db.describe(text_of(statement, context))
        span = tracer.start_span(name, kind="client", attributes=attrs)
    except Exception as exc:
        _diag.internal_error("dbapi.start", exc)
        return None
    return span, ACTIVE.set(True), db.system


def end(started: Started, rows: Any = None, error: Any = None) -> None:
    """End a statement's span: ``rows`` has the ``rowcount``; ``error`` is the
    exception, or the description of an outcome never reported."""
    span, token, system = started
    try:
        ACTIVE.reset(token)
    except Exception:  # another context: the flag must not stay set
        ACTIVE.set(False)
    finish(span, system, rows, error)


def statement_span(db: Optional[Database], statement: Any) -> Any:
    """The span of one statement (str or bytes), or None: not traced (no
    database, off, inside another SQL span, a failure). Sets no flag: for
    hooks on the driver's own classes, whose statements cannot nest.
    The sqlite3 hook's ``execute`` runs these steps inline (a Python call
    less on its most frequent statement): a change here goes there too."""
    if db is None or not db.switch.on or is_active() or is_suppressed():
        return None
    try:
        # No ``enabled`` check: a disabled tracer's span is a shared no-op.
        tracer = _runtime._tracer or _runtime.tracer()
        described = db.statements.get(statement) or db.describe(statement)
        return tracer.start_span(described[0], kind="client", attributes=described[1])
    except Exception as exc:
        _diag.internal_error("dbapi.start", exc)
        return None


def finish(span: Any, system: str, rows: Any = None, error: Any = None) -> None:
    """End a statement's span (see :func:`end`)."""
    try:
        if isinstance(error, BaseException):
            kind = type(error).__qualname__
            span.record_exception(error, escaped=True)
            span.set_attribute("error.type", kind)
            code = error_code(error, system)
            if code is not None:
                span.set_attribute("db.response.status_code", code)
            span.set_status("error", f"{kind}: {error}")
        elif error is not None:
            span.set_status("error", str(error))
        else:
            rowcount = sql_row_count(rows)
            if rowcount is not None:
                span.set_attribute(ROWS_AFFECTED, rowcount)
    except Exception as exc:
        _diag.internal_error("dbapi.end", exc)
    try:
        span.end()
    except Exception as exc:
        _diag.internal_error("dbapi.end", exc)


def statement_of(args: Any, kwargs: Any) -> Any:
    """The statement of ``execute(...)`` arguments, positional or named."""
    return args[0] if args else next((kwargs[k] for k in _KEYWORDS if k in kwargs), "")


def run(
    db: Database, method: Any, args: Any, kwargs: Any, context: Any, rows: Any, sql: Any = None
) -> Any:
    """``method(*args, **kwargs)`` in a span. ``rows`` has the rowcount (``None``:
    the result has it); ``sql`` replaces the statement found in the arguments."""
    if sql is None:
        sql = args[0] if args else statement_of(args, kwargs)
    started = start(db, sql, context)
    if started is None:
        return method(*args, **kwargs)
    try:
        result = method(*args, **kwargs)
    except BaseException as exc:
        end(started, error=exc)
        raise
    end(started, result if rows is None else rows)
    return result


class _Proxy(wrapt.ObjectProxy[Any]):
    # A Python subclass of wrapt's proxy gets CPython's generic __getattr__
    # hook, which calls wrapt's C lookup through a method wrapper and an
    # argument tuple on every attribute access (about 1,100 instructions;
    # a statement makes a dozen). The C lookup is the generic one followed by
    # ``__getattr__`` (forwarding to the wrapped object), which is what this
    # does, on CPython's fast path and without raising for a miss.
    __getattribute__ = object.__getattribute__

    def _self_same(self, result: Any) -> Any:
        """The proxy instead of the wrapped object (``with``, chained calls)."""
        return self if result is self.__wrapped__ else result

    def __enter__(self) -> Any:
        return self._self_same(self.__wrapped__.__enter__())

    def __exit__(self, *exc_info: Any) -> Any:
        return self.__wrapped__.__exit__(*exc_info)

    async def __aenter__(self) -> Any:
        return self._self_same(await self.__wrapped__.__aenter__())

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self.__wrapped__.__aexit__(*exc_info)


class TracedCursor(_Proxy):
    """A cursor whose statements are spans; everything else is the driver's."""

    def __init__(self, cursor: Any, db: Database, connection: Any = None) -> None:
        super().__init__(cursor)
        self._self_db = db
        self._self_connection = connection

    @property
    def connection(self) -> Any:
        """The (proxied) connection that made this cursor."""
        c = self._self_connection
        return self.__wrapped__.connection if c is None else c

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        w = self.__wrapped__
        r = run(self._self_db, w.execute, args, kwargs, w, w)
        return self if r is w else r

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        w = self.__wrapped__
        r = run(self._self_db, w.executemany, args, kwargs, w, w)
        return self if r is w else r

    # The methods every statement's caller uses, forwarded explicitly: a
    # wrapt proxy forwards any other attribute only after its own lookup
    # fails, which raises and clears an AttributeError each time (about 1,700
    # instructions, valgrind). Async drivers' coroutines pass through as is.
    def fetchone(self) -> Any:
        return self.__wrapped__.fetchone()

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__.fetchmany(*args, **kwargs)

    def fetchall(self) -> Any:
        return self.__wrapped__.fetchall()

    def close(self) -> Any:
        return self.__wrapped__.close()

    def __iter__(self) -> Any:
        return iter(self.__wrapped__)

    def __next__(self) -> Any:
        return next(self.__wrapped__)


class CallprocCursor(TracedCursor):
    """A cursor of a driver with ``callproc`` (psycopg2, PyMySQL)."""

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        w, name = self.__wrapped__, args[0] if args else kwargs.get("procname", "")
        return run(self._self_db, w.callproc, args, kwargs, w, w, f"CALL {name}")


class TracedConnection(_Proxy):
    """A connection whose cursors (and connection-level helpers) are traced."""

    _self_cursor_class: type[TracedCursor] = TracedCursor

    def __init__(self, connection: Any, db: Database) -> None:
        super().__init__(connection)
        self._self_db = db

    def _self_cursor(self, cursor: Any) -> Any:
        return cursor if cursor is None else self._self_cursor_class(cursor, self._self_db, self)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_cursor(self.__wrapped__.cursor(*args, **kwargs))

    # Forwarded explicitly, as the cursor's fetch methods are (see there).
    def commit(self) -> Any:
        return self.__wrapped__.commit()

    def rollback(self) -> Any:
        return self.__wrapped__.rollback()

    def close(self) -> Any:
        return self.__wrapped__.close()

    def _self_run(self, name: str, args: Any, kwargs: Any) -> Any:
        """A connection-level helper that returns a cursor (sqlite3, psycopg)."""
        w = self.__wrapped__
        return self._self_cursor(run(self._self_db, getattr(w, name), args, kwargs, w, None))


def connect_wrapper(switch: Switch, proxy: Callable[[Any, Any, Any], Any], where: str) -> Any:
    """A wrapt wrapper of ``connect``: its connection goes through :func:`proxied`."""

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return proxied(switch, wrapped(*args, **kwargs), proxy, args, kwargs, where)

    return wrapper


def proxied(switch: Switch, conn: Any, proxy: Any, args: Any, kwargs: Any, where: str) -> Any:
    """``proxy(conn, args, kwargs)``, or ``conn`` when off, proxied or failing."""
    if not switch.on or isinstance(conn, TracedConnection):
        return conn
    try:
        return proxy(conn, args, kwargs)
    except Exception as exc:
        _diag.internal_error(where, exc)
        return conn
