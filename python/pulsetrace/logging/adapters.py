"""The same JSON lines for structlog and loguru users.

structlog: make :func:`structlog_renderer` the last processor; the event
becomes the ``message``, the other keys the ``metadata``, and the line has
every field of the standard library's (trace, request, user, company)::

    structlog.configure(processors=[
        structlog.processors.add_log_level,
        pulsetrace.logging.adapters.structlog_renderer,
    ])

An ``exc_info`` key (``log.exception(...)``) gives the line its ``error``.

loguru: add :func:`loguru_sink` as a sink (it writes to stdout; the
``serialize``/``format`` options of loguru are not used)::

    from loguru import logger
    logger.configure(patcher=pulsetrace.logging.adapters.loguru_patcher)
    logger.add(pulsetrace.logging.adapters.loguru_sink)

The patcher reads the span and the user/company/request of the thread that
logs; it is needed only with ``enqueue=True`` (where the sink runs on
another thread). ``bind()``/``extra`` values become the ``metadata``.

Both go through :class:`~pulsetrace.logging.formatter.JsonFormatter`: one
schema, one encoder, the same scrubbing, and an ERROR record inside a span
keeps that trace as the standard library's does.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import IO, Any, Optional

from pulsetrace import _runtime
from pulsetrace.logging import identity as _context
from pulsetrace.logging.formatter import JsonFormatter

__all__ = ["loguru_patcher", "loguru_sink", "structlog_renderer"]

_formatter: Optional[JsonFormatter] = None


def _fmt() -> JsonFormatter:
    global _formatter
    if _formatter is None:
        _formatter = JsonFormatter()
    return _formatter


def _levelno(name: str) -> int:
    level = logging.getLevelName(name.upper())
    return level if isinstance(level, int) else logging.INFO


def _record(
    name: str,
    levelno: int,
    message: str,
    metadata: dict[str, Any],
    exc_info: Any = None,
    created: Optional[float] = None,
) -> logging.LogRecord:
    rec = logging.LogRecord(name, levelno, "", 0, message, None, exc_info)
    if created is not None:
        rec.created = created
    if metadata:
        rec.metadata = metadata
    return rec


def structlog_renderer(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    """A structlog processor, the last of the chain: the event as a JSON line."""
    fields = dict(event_dict)
    message = fields.pop("event", "")
    level = fields.pop("level", None) or method_name
    name = fields.pop("logger", None) or getattr(logger, "name", None) or "structlog"
    fields.pop("timestamp", None)
    exc_info = fields.pop("exc_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    elif not (isinstance(exc_info, tuple) and len(exc_info) == 3):
        exc_info = None
    rec = _record(str(name), _levelno(str(level)), str(message), fields, exc_info)
    return _fmt().format(rec)


def loguru_patcher(record: dict[str, Any]) -> None:
    """A loguru patcher: remembers the span and the user/company/request of
    the thread that logs, for :func:`loguru_sink`."""
    span = _runtime.CURRENT.get()
    record["extra"]["pulsetrace_span"] = span
    record["extra"]["pulsetrace_who"] = _context.current(span)


def loguru_sink(message: Any, stream: Optional[IO[str]] = None) -> None:
    """A loguru sink: writes the record as a JSON line to ``stream``
    (default: stdout)."""
    r = message.record
    extra = dict(r["extra"])
    span = extra.pop("pulsetrace_span", None)
    who = extra.pop("pulsetrace_who", None)
    exc = r["exception"]
    exc_info = (exc.type, exc.value, exc.traceback) if exc is not None else None
    rec = _record(
        r["name"] or "loguru",
        r["level"].no,
        r["message"],
        extra,
        exc_info,
        r["time"].timestamp(),
    )
    if span is not None:
        rec.pulsetrace_span = span
        rec.pulsetrace_who = who
    (stream or sys.stdout).write(_fmt().format(rec) + "\n")
