"""Structured JSON logs correlated with traces.

Switched on by ``import pulsetrace.auto`` with ``PULSETRACE_LOGS_JSON=true``
(integration toggle ``PULSETRACE_LOGGING_ENABLED``), or by one call::

    import pulsetrace.logging
    pulsetrace.logging.configure()

From then on every record of the standard library's ``logging`` (the
application's, its libraries', pulsetrace's own) is written as one JSON
object per line on stdout, or sent to Fluentd
(``PULSETRACE_LOGS_FLUENTD_ADDR``): ``@timestamp``, ``level``, ``service``,
``type``, ``message``, ``requestId``, ``userId``, ``companyId``,
``metadata``, ``tags``, and ``trace_id``/``span_id`` of the current span
(:mod:`pulsetrace.logging.formatter` describes each field). The root
logger's level is ``LOG_LEVEL`` (default ``info``); pulsetrace's own
diagnostics keep ``PULSETRACE_LOG_LEVEL``.

- who a line is about: :func:`pulsetrace.set_user`,
  :func:`pulsetrace.set_company`, :func:`pulsetrace.context`;
- the five log types and the business, performance and security helpers:
  :mod:`pulsetrace.logging.api`;
- one access line per HTTP request (``PULSETRACE_ACCESS_LOG=true``):
  :mod:`pulsetrace.logging.access`;
- structlog and loguru: :mod:`pulsetrace.logging.adapters`.

A record at ERROR or above written inside a span keeps that span's trace
(tail-sampler keep reason ``error_log``, counted as
``traces_kept_error_log``).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import IO, Optional

from pulsetrace import _diag, _runtime
from pulsetrace.logging.api import (
    LOG_TYPES,
    get_logger,
    log_business_metric,
    log_performance,
    log_security_event,
)
from pulsetrace.logging.formatter import JsonFormatter
from pulsetrace.logging.identity import context, set_company, set_user

__all__ = [
    "LOG_TYPES",
    "FluentdHandler",
    "JsonFormatter",
    "JsonHandler",
    "configure",
    "context",
    "counters",
    "get_logger",
    "log_business_metric",
    "log_performance",
    "log_security_event",
    "patch",
    "set_company",
    "set_user",
    "unconfigure",
    "unpatch",
]


class JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record as a JSON line to ``stream`` (default: stdout)."""

    def __init__(self, stream: Optional[IO[str]] = None, formatter: Optional[JsonFormatter] = None):
        super().__init__(stream if stream is not None else sys.stdout)
        self.setFormatter(formatter or JsonFormatter())


class FluentdHandler(logging.Handler):
    """Sends each record to a Fluentd ``forward`` input, never blocking
    (see :mod:`pulsetrace.logging.fluentd`)."""

    def __init__(
        self,
        addr: str,
        tag: str = "app",
        queue_size: int = 10_000,
        formatter: Optional[JsonFormatter] = None,
    ) -> None:
        from pulsetrace.logging.fluentd import ForwardSender

        super().__init__()
        self.setFormatter(formatter or JsonFormatter())
        self.sender = ForwardSender(addr, tag, queue_size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sender.submit(record.created, self.format(record))
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.sender.close()
        super().close()


_lock = threading.Lock()
_handler: Optional[logging.Handler] = None


def configure(
    *,
    level: Optional[str] = None,
    stream: Optional[IO[str]] = None,
    fluentd: Optional[str] = None,
    access_log: Optional[bool] = None,
) -> logging.Handler:
    """Write every log record as a JSON line: installs one handler on the
    root logger (replacing one installed before, and the plain console
    handlers of ``logging.basicConfig``, so no line is written twice; other
    handlers stay) and sets the root level to
    ``level`` (default ``LOG_LEVEL``). ``fluentd="host:port"`` (default
    ``PULSETRACE_LOGS_FLUENTD_ADDR``) sends the records there instead of to
    ``stream`` (default stdout). ``access_log`` (default
    ``PULSETRACE_ACCESS_LOG``) writes one line per HTTP request. Returns the
    handler."""
    global _handler
    cfg = _runtime.config()
    chosen = (level or cfg.log_level).upper()
    if chosen not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(
            f"pulsetrace: log level {level!r} is not one of debug, info, "
            "warning, error, critical"
        )
    addr = fluentd if fluentd is not None else cfg.logs_fluentd_addr
    handler: logging.Handler
    if addr:
        handler = FluentdHandler(addr, cfg.logs_fluentd_tag, cfg.logs_queue_size)
    else:
        handler = JsonHandler(stream)
    root = logging.getLogger()
    with _lock:
        old, _handler = _handler, handler
        for h in list(root.handlers):
            if h is old or type(h) is logging.StreamHandler:
                root.removeHandler(h)
        root.addHandler(handler)
        root.setLevel(chosen)
    if old is not None and old is not handler:
        old.close()
    from pulsetrace.logging import access

    if access_log if access_log is not None else cfg.access_log:
        access.start()
    else:
        access.stop()
    return handler


def unconfigure() -> None:
    """Remove the handler :func:`configure` installed and stop the access log."""
    global _handler
    from pulsetrace.logging import access

    access.stop()
    with _lock:
        old, _handler = _handler, None
    if old is not None:
        logging.getLogger().removeHandler(old)
        old.close()


def counters() -> dict[str, int]:
    """``logs_dropped``/``logs_sent`` of the Fluentd sender, and the access
    log's ``access_log_dropped`` (also in :func:`pulsetrace.counters`)."""
    from pulsetrace.logging import access

    out = access.counters()
    sender = getattr(_handler, "sender", None)
    if sender is not None:
        out.update(sender.counters())
    return out


# -- the integration (contrib registry entry "logging") -------------------------


def patch() -> None:
    """Called by ``import pulsetrace.auto``: JSON logs when
    ``PULSETRACE_LOGS_JSON=true``, the access log when
    ``PULSETRACE_ACCESS_LOG=true``."""
    cfg = _runtime.config()
    try:
        if cfg.logs_json:
            configure()
        elif cfg.access_log:
            from pulsetrace.logging import access

            access.start()
    except Exception as exc:
        _diag.internal_error("logging.patch", exc)


def unpatch() -> None:
    unconfigure()
