"""One JSON object per line: the log line's schema and how it is built.

A line holds, in this order: ``@timestamp`` (RFC 3339, UTC, milliseconds),
``level`` (``debug`` ... ``critical``), ``service``, ``type`` (one of the
five log types, see :mod:`pulsetrace.logging.api`), ``message``,
``requestId``, ``userId``, ``companyId`` (when known, see
:mod:`pulsetrace.logging.identity`), ``metadata`` (the values passed with
``extra=``), ``tags`` (``environment`` and ``version``, from
``OTEL_RESOURCE_ATTRIBUTES``' ``deployment.environment.name`` and
``service.version``), ``trace_id`` and ``span_id`` of the current span
(absent outside a span) and, for a record with an exception, ``error``
(``type``, ``message``, ``stack``).

A value of ``extra=`` that JSON cannot hold is written as its ``repr`` (a
date as its ISO form); formatting never raises for it. Messages, metadata
and errors pass through pulsetrace's scrubber when it is installed
(``pulsetrace.scrub``).

How it is built: the parts that never change (service, tags) are encoded
once; a line is the concatenation of those with the record's few strings,
each escaped by the standard library's C string encoder, and the metadata
encoded by one prebuilt C ``JSONEncoder`` (``benchmarks/logs/run.py``
compares it with python-json-logger and structlog's renderer).

A record at ERROR or above written inside a span adds one event named
``log`` to that span (``log.severity_number`` 17, or 21 for CRITICAL, and
the message): the tail sampler then keeps the trace (keep reason
``error_log``) so the error line's trace is always there to look at.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import time
from collections.abc import Mapping
from itertools import islice
from typing import Any, Callable, Optional

from pulsetrace import _diag, _runtime
from pulsetrace._native import Span
from pulsetrace.logging import identity as _context

__all__ = ["JsonFormatter", "dumps", "resource_tags"]

_enc: Callable[[str], str] = json.encoder.encode_basestring_ascii

#: Attributes every LogRecord has (and ours): the rest came with ``extra=``.
_STANDARD = frozenset(
    {
        *logging.LogRecord("", 0, "", 0, "", (), None).__dict__,
        "message",
        "asctime",
        "taskName",
        "_pulsetrace_logged",
        "pulsetrace_span",
        "pulsetrace_who",
    }
)
_N_PLAIN = len(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)

_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


def _level_name(levelno: int) -> str:
    """The level of a record at a level between the standard ones (loguru's
    SUCCESS, 25, is ``info``; TRACE, 5, ``debug``)."""
    for at, name in reversed(_LEVELS.items()):
        if levelno >= at:
            return name
    return "debug"


_ERROR = logging.ERROR
_CURRENT = _runtime.CURRENT
_current = _context.current
#: What the formatter reads as a line's span (the current one, or an ended
#: one the access log writes about).
_SPAN_TYPES = (Span, _context.EndedSpan)

#: Loggers named ``logs.<type>`` write lines of that type (api.py).
TYPE_PREFIX = "logs."

#: OpenTelemetry severity numbers of ERROR and FATAL.
SEVERITY_ERROR = 17
SEVERITY_FATAL = 21
#: At most this much of a message goes into the span event.
_EVENT_MESSAGE_CHARS = 1024


def _fallback(value: Any) -> Any:
    """What JSON cannot hold: a date as its ISO form, anything else as its
    ``repr`` (scrubbed: an object's repr can hold personal data), and a
    placeholder if even that fails."""
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    try:
        return _scrubbers()[0](repr(value))
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


_encoder = json.JSONEncoder(
    ensure_ascii=True, separators=(",", ":"), allow_nan=False, default=_fallback
)
#: The C encoder behind ``_encoder``, made once: ``JSONEncoder.encode``
#: makes a new one for every call, which costs more than encoding a small
#: dict. No cycle markers (a cycle ends in RecursionError, and the slow path
#: below writes it), so threads share nothing mutable.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_fast_encode: Optional[Callable[[Any, int], Any]] = (
    _c_make_encoder(
        None,
        _fallback,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        False,
    )
    if _c_make_encoder is not None
    else None
)


def _plain(value: Any, depth: int, seen: set[int]) -> Any:
    """``value`` with everything JSON cannot hold replaced (non-string keys,
    NaN, cycles, very deep nesting), for the rare line the fast path refused."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth > 32 or id(value) in seen:
        return _fallback(value) if depth <= 32 else "<too deep>"
    if isinstance(value, Mapping):
        seen.add(id(value))
        out = {
            (k if isinstance(k, str) else str(_fallback(k))): _plain(v, depth + 1, seen)
            for k, v in value.items()
        }
        seen.discard(id(value))
        return out
    if isinstance(value, (list, tuple)):
        seen.add(id(value))
        items = [_plain(v, depth + 1, seen) for v in value]
        seen.discard(id(value))
        return items
    return _fallback(value)


def dumps(value: Any) -> str:
    """``value`` as compact ASCII JSON; never raises."""
    try:
        if _fast_encode is not None:
            return "".join(_fast_encode(value, 0))
        return _encoder.encode(value)
    except Exception:
        try:
            return _encoder.encode(_plain(value, 0, set()))
        except Exception as exc:
            _diag.internal_error("logging.json", exc)
            return '"<unencodable>"'


def _no_scrub(value: Any) -> Any:
    return value


def _scrubbers() -> tuple[Callable[[str], str], Callable[[Any], Any]]:
    """``(scrub_text, scrub_value)`` of pulsetrace's scrubber, or identities
    where it is not part of this build."""
    try:
        from pulsetrace import scrub

        return scrub.scrub_text, scrub.scrub_value
    except ImportError:
        return _no_scrub, _no_scrub


def resource_tags(resource: Mapping[str, Any]) -> dict[str, str]:
    """The line's ``tags`` from the resource attributes."""
    tags = {}
    env = resource.get("deployment.environment.name") or resource.get("deployment.environment")
    if env:
        tags["environment"] = str(env)
    version = resource.get("service.version")
    if version:
        tags["version"] = str(version)
    return tags


def error_event(span: Any, levelno: int, message: str) -> None:
    """Mark ``span`` as having logged an error (the tail sampler keeps its
    trace)."""
    if levelno >= logging.ERROR and isinstance(span, Span):
        try:
            severity = SEVERITY_FATAL if levelno >= logging.CRITICAL else SEVERITY_ERROR
            span.add_event(
                "log",
                {
                    "log.severity_number": severity,
                    "log.message": message[:_EVENT_MESSAGE_CHARS],
                },
            )
        except Exception as exc:
            _diag.internal_error("logging.error_event", exc)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line (see the module docstring).

    ``service`` and ``tags`` default to the agent's configuration
    (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``).
    """

    def __init__(
        self,
        service: Optional[str] = None,
        tags: Optional[Mapping[str, str]] = None,
        *,
        scrub: bool = True,
    ) -> None:
        super().__init__()
        if service is None or tags is None:
            cfg = _runtime.config()
            service = cfg.service_name if service is None else service
            tags = resource_tags(cfg.resource_attributes) if tags is None else tags
        self._service = ',"service":' + _enc(service)
        self._tags = ',"tags":' + dumps(dict(tags))
        #: (millisecond, its text, second, its text): one tuple, swapped whole.
        self._stamp: tuple[int, str, int, str] = (-1, "", -1, "")
        #: The trace_id/span_id part of the last span written about: a
        #: request's lines share it (one tuple, swapped whole: thread-safe).
        self._ids: tuple[Any, str] = (None, "")
        scrubbers: tuple[Callable[[str], str], Callable[[Any], Any]] = (
            _scrubbers() if scrub else (_no_scrub, _no_scrub)
        )
        self._scrub_text, self._scrub_value = scrubbers

    def _timestamp(self, created: float) -> str:
        ms = int(created * 1000)
        stamp = self._stamp
        if stamp[0] == ms:
            return stamp[1]
        sec, rest = divmod(ms, 1000)
        prefix = (
            stamp[3] if stamp[2] == sec else time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        )
        text = f"{prefix}{rest:03d}Z"
        self._stamp = (ms, text, sec, prefix)
        return text

    def _error(self, record: logging.LogRecord) -> dict[str, str]:
        assert record.exc_info is not None
        exc = record.exc_info[1]
        error = {"type": type(exc).__name__}
        try:
            error["message"] = self._scrub_text(str(exc))
            error["stack"] = self._scrub_text(self.formatException(record.exc_info))
        except Exception:
            error.setdefault("message", _fallback(exc))
        return error

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:
            message = f"{record.msg!r} {record.args!r}"
        attrs = record.__dict__
        span = attrs.get("pulsetrace_span") or _CURRENT.get()
        levelno = record.levelno
        name = record.name
        if name.startswith(TYPE_PREFIX):
            log_type = _enc(name[len(TYPE_PREFIX) :])
        else:
            log_type = '"error"' if levelno >= _ERROR else '"application"'
        request, user, company = attrs.get("pulsetrace_who") or _current(span)
        who = ""
        if request is not None:
            who = f',"requestId":{_enc(request)}'
        if user is not None:
            who += f',"userId":{_enc(user)}'
        if company is not None:
            who += f',"companyId":{_enc(company)}'
        meta = ""
        if len(attrs) > _N_PLAIN:
            # ``extra=`` values come after the attributes every record has.
            extra = {k: attrs[k] for k in islice(attrs, _N_PLAIN, None) if k not in _STANDARD}
            if "metadata" in extra:
                nested = extra["metadata"]
                if isinstance(nested, Mapping):
                    del extra["metadata"]
                    extra = {**nested, **extra}
            if extra:
                # Message and metadata scrubbed in one call.
                both = self._scrub_value((message, extra))
                if type(both) is tuple and len(both) == 2:
                    message, cleaned = both
                else:  # the scrubber failed: it said so, and nothing unscrubbed leaves
                    message = cleaned = str(both)
                meta = f',"metadata":{dumps(cleaned)}'
            else:
                message = self._scrub_text(message)
        else:
            message = self._scrub_text(message)
        ids = ""
        if span is not None and type(span) in _SPAN_TYPES:
            cached = self._ids
            if cached[0] is span:
                ids = cached[1]
            else:
                ids = f',"trace_id":"{span.trace_id:032x}","span_id":"{span.span_id:016x}"'
                self._ids = (span, ids)
            if levelno >= _ERROR and not attrs.get("_pulsetrace_logged", False):
                record._pulsetrace_logged = True
                error_event(span, levelno, message)
        tail = ""
        if record.exc_info and record.exc_info[1] is not None:
            tail = f',"error":{dumps(self._error(record))}'
        elif record.stack_info:
            tail = f',"stack":{_enc(self._scrub_text(record.stack_info))}'
        return (
            f'{{"@timestamp":"{self._timestamp(record.created)}",'
            f'"level":"{_LEVELS.get(levelno) or _level_name(levelno)}"{self._service},'
            f'"type":{log_type},"message":{_enc(message)}{who}{meta}{self._tags}{ids}{tail}}}'
        )
