"""The access log: one ``access`` line per HTTP request.

With ``PULSETRACE_ACCESS_LOG=true`` (or ``configure(access_log=True)``)
every SERVER span that ends (Flask, Django, Starlette, the WSGI and ASGI
middleware) gives one record on the ``logs.access`` logger, at INFO (WARNING
for a 5xx or a failed request)::

    {"@timestamp": ..., "level": "info", "type": "access",
     "message": "GET /users/<int:user_id> 200 1.234 ms",
     "requestId": "00f067aa0ba902b7",
     "metadata": {"method": "GET", "route": "/users/<int:user_id>",
                  "path": "/users/42", "status": 200, "duration_ms": 1.234,
                  "client_address": "10.0.0.1"},
     "trace_id": ..., "span_id": ...}

Nothing of it runs on the request thread: the native core takes the
request's facts from the ended span where it processes spans (its worker
thread) and queues them (bounded: an entry that finds the queue full is
dropped and counted, ``access_log_dropped``); the thread
``pulsetrace-access-log`` is woken by the queue and writes the records.
The ``@timestamp`` is the request's start. ``requestId`` is the SERVER
span's id (an ``X-Request-ID`` header is not part of the span).

Switching it on after the agent started reconfigures the agent (fresh
histograms), as ``pulsetrace.configure(access_log=True)`` does.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Optional

from pulsetrace import _diag, _runtime
from pulsetrace.logging.identity import EndedSpan

__all__ = ["counters", "running", "start", "stop"]

log = logging.getLogger("logs.access")

_lock = threading.Lock()
_thread: Optional[_Writer] = None
_dropped = 0


def record(entry: tuple[Any, ...]) -> logging.LogRecord:
    """The access record of one native entry."""
    (trace_id, span_id, start_ns, duration_ns, name, method, route, path, status, client, error) = (
        entry
    )
    duration_ms = round(duration_ns / 1e6, 3)
    meta: dict[str, Any] = {"method": method or name.split(" ", 1)[0]}
    if route or path:
        meta["route"] = route or path
    if path:
        meta["path"] = path
    if status:
        meta["status"] = status
    meta["duration_ms"] = duration_ms
    if client:
        meta["client_address"] = client
    level = logging.WARNING if error else logging.INFO
    target = route or path or name
    message = f"{meta['method']} {target} {status or '-'} {duration_ms} ms"
    rec = log.makeRecord(
        log.name, level, "(access)", 0, message, (), None, extra={"metadata": meta}
    )
    rec.created = start_ns / 1e9
    rec.msecs = (start_ns // 1_000_000) % 1000
    rec.pulsetrace_span = EndedSpan(trace_id, span_id, "server")
    return rec


class _Writer(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="pulsetrace-access-log", daemon=True)
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            if not self.write(1.0):
                threading.Event().wait(1.0)
        self.write(0.0)  # what was queued when it was asked to stop

    def write(self, wait: float) -> bool:
        global _dropped
        try:
            entries, dropped = _runtime.tracer().drain_access(1024, wait)
            _dropped = dropped
            for entry in entries:
                rec = record(entry)
                if log.isEnabledFor(rec.levelno):
                    log.handle(rec)
            return True
        except Exception as exc:
            _diag.internal_error("logging.access", exc)
            return False


def running() -> bool:
    return _thread is not None and _thread.is_alive()


def start() -> None:
    """Write access lines from now on (idempotent)."""
    global _thread
    with _lock:
        cfg = _runtime.config()
        if not cfg.access_log:
            from pulsetrace import configure

            configure(cfg, access_log=True)
        if _thread is None or not _thread.is_alive():
            _thread = _Writer()
            _thread.start()


def stop(timeout: float = 2.0) -> None:
    """Stop writing access lines (what is queued now is written first)."""
    global _thread
    with _lock:
        t, _thread = _thread, None
    if t is None:
        return
    t.stopping = True
    try:
        _runtime.tracer().wake_access()
    except Exception as exc:
        _diag.internal_error("logging.access.stop", exc)
    if t is not threading.current_thread():
        t.join(timeout)


def counters() -> dict[str, int]:
    return {"access_log_dropped": _dropped}


def _after_fork_in_child() -> None:
    """A forked worker writes its own requests' lines: the parent's writer
    thread does not exist in the child."""
    global _thread, _lock
    _lock = threading.Lock()
    if _thread is not None:
        _thread = None
        try:
            start()
        except Exception as exc:
            _diag.internal_error("logging.access.fork", exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
