"""psycopg2: every statement a CLIENT span.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_PSYCOPG2_ENABLED=false``). Cursor ``execute``, ``executemany``
and ``callproc`` are spans, whatever the cursor class (``cursor_factory=
psycopg2.extras.RealDictCursor`` on ``connect`` or ``cursor()``, a
``connection_factory`` such as ``extras.LoggingConnection``);
``extras.execute_values`` / ``execute_batch`` give one span per page.
``db.system.name`` is ``postgresql``; ``db.namespace``, ``server.address`` and
``server.port`` come from ``conn.info`` at connect time. A failed statement
carries its SQLSTATE (``pgcode``) as ``db.response.status_code``.

Unlike the other drivers, psycopg2 gets no proxies: its C functions check the
exact type (``extensions.register_type``, ``extras.register_uuid`` /
``register_default_jsonb``, which SQLAlchemy and Django call on connect,
``quote_ident``, ``sql.Literal``). ``psycopg2.connect`` is wrapped to pass a
``connection_factory`` that subclasses the one asked for (default
``extensions.connection``), and its ``cursor()`` a ``cursor_factory`` that
subclasses the cursor class asked for: the objects are real psycopg2
connections and cursors (``type(conn)`` is the subclass, ``isinstance`` holds).
A cursor factory that is not a class, and connections not made by
``psycopg2.connect``, are not traced. ``copy_*`` methods are not traced.
"""

from __future__ import annotations

from typing import Any, Optional

from pulsetrace import _diag
from pulsetrace.contrib import dbapi
from pulsetrace.contrib._patcher import Patcher, Target

SUPPORTED = ">=2.8,<3"

_SWITCH = dbapi.Switch()
_KEY = "_pulsetrace_db"
#: A connection or cursor class -> its traced subclass.
_traced: dict[type, type] = {}
_mixin: Optional[type[Any]] = None  # psycopg2's connection with our cursor(), built on first use


class _Cursor:
    """First in a traced cursor class's MRO: its statements are spans."""

    __slots__ = ()

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return _run(self, super().execute, args, kwargs)  # type: ignore[misc]

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return _run(self, super().executemany, args, kwargs)  # type: ignore[misc]

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        sql = f"CALL {args[0] if args else kwargs.get('procname', '')}"
        return _run(self, super().callproc, args, kwargs, sql)  # type: ignore[misc]


def _run(cursor: Any, method: Any, args: Any, kwargs: Any, sql: Any = None) -> Any:
    db = getattr(cursor.connection, _KEY, None)
    if db is None:
        return method(*args, **kwargs)
    return dbapi.run(db, method, args, kwargs, cursor, cursor, sql)


def _subclass(base: type, bases: tuple[type, ...]) -> type:
    cls = _traced.get(base)
    if cls is None:  # same name and module: reprs and name checks look the same
        cls = type(base.__name__, bases, {"__module__": base.__module__, "__slots__": ()})
        _traced[base] = cls
    return cls


def _cursor_class(factory: Any) -> Optional[type]:
    """The traced subclass of a cursor class; ``None``: leave ``factory`` as is."""
    if not isinstance(factory, type) or issubclass(factory, _Cursor):
        return None
    return _subclass(factory, (_Cursor, factory))


def _connection_class(base: Any) -> Optional[type]:
    """The traced subclass of a connection class, our ``cursor()`` right above
    psycopg2's (so ``DictConnection.cursor`` picks its factory first)."""
    global _mixin
    import psycopg2.extensions as ext  # type: ignore[import-untyped]  # ships no type hints

    if _mixin is None:

        class connection(ext.connection):  # type: ignore[misc]
            def cursor(self, *args: Any, **kwargs: Any) -> Any:
                try:
                    positional = len(args) > 1
                    factory = args[1] if positional else kwargs.get("cursor_factory")
                    traced = _cursor_class(factory or self.cursor_factory or ext.cursor)
                    if traced is not None and positional:
                        args = (args[0], traced, *args[2:])
                    elif traced is not None:
                        kwargs["cursor_factory"] = traced
                except Exception as exc:
                    _diag.internal_error("psycopg2.cursor", exc)
                return super().cursor(*args, **kwargs)

        connection.__module__ = ext.connection.__module__
        _mixin = connection
    if base is ext.connection:
        return _mixin
    if not isinstance(base, type) or issubclass(base, _mixin):
        return None
    return _subclass(base, (base, _mixin))


def _connect(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if not _SWITCH.on:
        return wrapped(*args, **kwargs)
    try:
        import psycopg2.extensions as ext

        positional = len(args) > 1
        base = args[1] if positional else kwargs.get("connection_factory")
        traced = _connection_class(base or ext.connection)
        if traced is not None and positional:
            args = (args[0], traced, *args[2:])
        elif traced is not None:
            kwargs = {**kwargs, "connection_factory": traced}
    except Exception as exc:
        _diag.internal_error("psycopg2.connect", exc)
    conn = wrapped(*args, **kwargs)
    try:
        if _mixin is not None and isinstance(conn, _mixin):
            info = conn.info
            db = dbapi.Database("postgresql", _SWITCH, info.dbname, info.host, info.port)
            setattr(conn, _KEY, db)
    except Exception as exc:
        _diag.internal_error("psycopg2.connect", exc)
    return conn


_PATCHER = Patcher(
    "psycopg2",
    SUPPORTED,
    (Target("psycopg2", "connect", _connect),),
    distributions=("psycopg2", "psycopg2-binary"),
    on_patch=_SWITCH.turn_on,
    on_unpatch=_SWITCH.turn_off,
)
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
