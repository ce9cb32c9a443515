"""sqlite3 (standard library): every statement a CLIENT span.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_SQLITE3_ENABLED=false``). ``sqlite3.connect`` and
``sqlite3.dbapi2.connect`` (what SQLAlchemy calls) return a proxied connection
(see :mod:`pulsetrace.contrib.dbapi`): cursor ``execute``/``executemany`` and
the connection shortcuts ``execute``, ``executemany`` and ``executescript`` are
spans. ``db.system.name`` is ``sqlite``; ``db.namespace`` is the database
file's basename (``:memory:`` for an in-memory database); there is no server
address. A failed statement carries ``sqlite_errorcode`` (Python 3.11+) as
``db.response.status_code``.

``src.backup(target)`` accepts a proxied target. ``sqlite3.Cursor(conn)``
checks the exact type: pass ``conn.__wrapped__``. A ``connect`` imported by
name before patching is not wrapped.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from pulsetrace.contrib import dbapi
from pulsetrace.contrib._patcher import Patcher, Target

#: The standard library: no version check.
SUPPORTED = None

_SWITCH = dbapi.Switch()


class SqliteConnection(dbapi.TracedConnection):
    """A sqlite3 connection: its shortcuts create (traced) cursors too."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_run("execute", args, kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_run("executemany", args, kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_run("executescript", args, kwargs)

    def backup(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        target = getattr(target, "__wrapped__", target)
        return self.__wrapped__.backup(target, *args, **kwargs)


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


def _proxy(conn: Any, args: Any, kwargs: Any) -> Any:
    path = args[0] if args else kwargs.get("database")
    db = dbapi.Database("sqlite", _SWITCH, file_namespace(path))
    return SqliteConnection(conn, db)


_connect = dbapi.connect_wrapper(_SWITCH, _proxy, "sqlite3.connect")


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
