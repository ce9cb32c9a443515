"""What SQL hooks share: statement obfuscation (native, cached per
statement) and the span attributes of the database conventions."""

from __future__ import annotations

import threading
from typing import Any, Optional

from pulsetrace._native import obfuscate_sql

_cache: dict[tuple[str, str], tuple[str, Optional[str], Optional[str]]] = {}
_attr_cache: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}
_lock = threading.Lock()
_MAX_CACHED = 4096
MAX_QUERY_LENGTH = 4096


def summarize(statement: Any, system: str = "") -> tuple[str, Optional[str], Optional[str]]:
    """``(db.query.text, db.operation.name, db.collection.name)`` of a
    statement: literals replaced by ``?`` (double-quoted strings too where
    ``system`` reads them as strings: MySQL, SQLite). A repeated statement
    costs a dict lookup (its str hash is cached by Python), not a parse."""
    hit = _cache.get((statement, system)) if isinstance(statement, str) else None
    if hit is not None:
        return hit
    if isinstance(statement, bytes):
        text = statement.decode("utf-8", "replace")
    elif isinstance(statement, str):
        text = statement
    else:
        text = str(statement)
    result = obfuscate_sql(text, MAX_QUERY_LENGTH, system)
    if isinstance(statement, str):
        with _lock:
            if len(_cache) >= _MAX_CACHED:
                _cache.clear()
            _cache[(statement, system)] = result
    return result


def span_name(operation: Optional[str], collection: Optional[str], system: str) -> str:
    """``SELECT users`` (operation and table), ``SELECT``, or the system."""
    if operation and collection:
        return f"{operation} {collection}"
    return operation or system


def attributes(
    statement: Any,
    system: str,
    namespace: Optional[str] = None,
    host: Optional[str] = None,
    port: Optional[int] = None,
) -> tuple[str, dict[str, Any]]:
    """The span name and attributes of one statement. Cached per (statement,
    database): a repeated statement costs one dict lookup. The attributes
    dict returned is shared; callers must not change it."""
    key = (statement, system, namespace, host, port) if isinstance(statement, str) else None
    if key is not None:
        hit = _attr_cache.get(key)
        if hit is not None:
            return hit
    result = _attributes(statement, system, namespace, host, port)
    if key is not None:
        with _lock:
            if len(_attr_cache) >= _MAX_CACHED:
                _attr_cache.clear()
            _attr_cache[key] = result
    return result


def _attributes(
    statement: Any,
    system: str,
    namespace: Optional[str],
    host: Optional[str],
    port: Optional[int],
) -> tuple[str, dict[str, Any]]:
    text, operation, collection = summarize(statement, system)
    attrs: dict[str, Any] = {"db.system.name": system, "db.query.text": text}
    if operation:
        attrs["db.operation.name"] = operation
    if collection:
        attrs["db.collection.name"] = collection
    if namespace:
        attrs["db.namespace"] = namespace
    if host:
        attrs["server.address"] = host
    if port:
        attrs["server.port"] = port
    return span_name(operation, collection, system), attrs
