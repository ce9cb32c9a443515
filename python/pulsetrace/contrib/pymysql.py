"""PyMySQL: every statement a CLIENT span.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_PYMYSQL_ENABLED=false``). ``pymysql.connect`` / ``pymysql.Connect``
(also reached as ``MySQLdb.connect`` after ``pymysql.install_as_MySQLdb()``,
and what SQLAlchemy calls) return a proxied connection (see
:mod:`pulsetrace.contrib.dbapi`): cursor ``execute``, ``executemany`` and
``callproc`` are spans, whatever the cursor class (``DictCursor``,
``SSCursor``). ``pymysql.Connection`` itself stays the real class, so
``isinstance`` checks hold, but a connection built by calling
``pymysql.connections.Connection(...)`` directly is not traced.
``db.system.name`` is ``mysql`` (MariaDB servers too); ``db.namespace``,
``server.address`` and ``server.port`` are the connection's ``db``, ``host``
and ``port``. A failed statement carries the MySQL error number as
``db.response.status_code``.
"""

from __future__ import annotations

from typing import Any

from pulsetrace.contrib import dbapi
from pulsetrace.contrib._patcher import Patcher, Target

SUPPORTED = ">=1.0,<2"

_SWITCH = dbapi.Switch()
_NAMES = ("connect", "Connect")


class PyMySQLConnection(dbapi.TracedConnection):
    _self_cursor_class = dbapi.CallprocCursor


def _proxy(conn: Any, args: Any, kwargs: Any) -> Any:
    name = conn.db
    if isinstance(name, bytes):
        name = name.decode(getattr(conn, "encoding", None) or "utf-8", "replace")
    db = dbapi.Database("mysql", _SWITCH, name, conn.host, conn.port)
    return PyMySQLConnection(conn, db)


_connect = dbapi.connect_wrapper(_SWITCH, _proxy, "pymysql.connect")


_PATCHER = Patcher(
    "pymysql",
    SUPPORTED,
    tuple(Target("pymysql", name, _connect) for name in _NAMES),
    distributions=("PyMySQL",),
    on_patch=_SWITCH.turn_on,
    on_unpatch=_SWITCH.turn_off,
)
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
