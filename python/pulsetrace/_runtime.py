"""The agent of this process: one native tracer, its exporters and the
export thread, started on first use, flushed at exit, renewed after fork."""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional

from pulsetrace import _diag
from pulsetrace._native import Tracer
from pulsetrace.config import Config, from_env
from pulsetrace.export import ExportResult, SpanExporter

#: The current span (a Span) or remote parent (a SpanContext) of a context.
CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "pulsetrace_current_span", default=None
)

_lock = threading.RLock()
_tracer: Optional[Tracer] = None
_config: Optional[Config] = None
_exporters: list[SpanExporter] = []
_export_failures = 0
_worker: Optional[_ExportThread] = None
_pid = os.getpid()


class _ExportThread(threading.Thread):
    """Drains kept traces and hands them to the exporters, off the request path."""

    def __init__(self, interval_s: float) -> None:
        super().__init__(name="pulsetrace-export", daemon=True)
        self.interval_s = interval_s
        self.wake = threading.Event()
        self.stopping = False

    def run(self) -> None:
        while True:
            self.wake.wait(self.interval_s)
            self.wake.clear()
            if self.stopping:
                return
            export_pending()


def tracer() -> Tracer:
    """The process's tracer, created from the environment on first use."""
    t = _tracer
    if t is not None:
        return t
    with _lock:
        if _tracer is None:
            _start(from_env())
        assert _tracer is not None
        return _tracer


def config() -> Config:
    tracer()
    assert _config is not None
    return _config


def _apply_log_level(cfg: Config) -> None:
    logging.getLogger("pulsetrace").setLevel(cfg.log_level.upper())


def resource(cfg: Config) -> dict[str, Any]:
    """The resource of this process: the configured attributes, then what
    pulsetrace knows (SDK, host, pid)."""
    import socket

    from pulsetrace._native import __version__

    out: dict[str, Any] = {
        "telemetry.sdk.name": "pulsetrace",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": __version__,
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": ".".join(map(str, sys.version_info[:3])),
    }
    out.update(cfg.resource_attributes)
    return out


def _start(cfg: Config) -> None:
    global _tracer, _config
    # Every request path takes its tracer from here: the native query
    # redaction list is set (from PULSETRACE_REDACT_QUERY_PARAMS) first.
    from pulsetrace.contrib import _http  # noqa: F401

    _config = cfg
    _apply_log_level(cfg)
    _tracer = Tracer(cfg.to_native(), CURRENT)
    _tracer.set_resource(resource(cfg))


def configure(cfg: Config) -> None:
    """Apply a new configuration (fresh histograms and buffers)."""
    global _config
    with _lock:
        if _tracer is None:
            _start(cfg)
        else:
            _tracer.configure(cfg.to_native())
            _tracer.set_resource(resource(cfg))
            _config = cfg
            _apply_log_level(cfg)
        _restart_worker()


def add_exporter(exporter: SpanExporter) -> None:
    with _lock:
        tracer()
        # The running export thread finishes its batch first, so traces
        # drained before this call never reach the new exporter.
        _stop_worker()
        if exporter not in _exporters:
            _exporters.append(exporter)
        _restart_worker()


def remove_exporter(exporter: SpanExporter) -> None:
    with _lock:
        if exporter in _exporters:
            _exporters.remove(exporter)


def exporters() -> Sequence[SpanExporter]:
    return tuple(_exporters)


def _stop_worker(timeout: float = 5.0) -> None:
    global _worker
    w = _worker
    _worker = None
    if w is not None:
        w.stopping = True
        w.wake.set()
        if w is not threading.current_thread():
            w.join(timeout)


def _restart_worker() -> None:
    global _worker
    _stop_worker()
    if _exporters and _config is not None:
        _worker = _ExportThread(_config.export_interval_ms / 1000.0)
        _worker.start()


_export_lock = threading.Lock()


def export_pending(max_spans: int = 4096, timeout: Optional[float] = None) -> int:
    """Drain kept traces into every exporter; returns spans handed over.
    With ``timeout``, gives up (returns 0) if another export (a slow
    receiver) holds the export lock longer than that."""
    t = _tracer
    if t is None or not _exporters:
        return 0
    if not _export_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
        return 0
    try:
        return _export_locked(t, max_spans)
    finally:
        _export_lock.release()


def _export_locked(t: Tracer, max_spans: int) -> int:
    global _export_failures
    total = 0
    while True:
        try:
            batch = t.drain_batch(max_spans)
        except Exception as exc:
            _diag.internal_error("export.drain", exc)
            return total
        if batch is None:
            _warn_if_randomness_presumed(t)
            return total
        total += len(batch)
        for exporter in tuple(_exporters):
            try:
                # An OTLP exporter takes the natively encoded request;
                # the others get SpanData objects (built once per batch).
                export_otlp = getattr(exporter, "export_otlp", None)
                if export_otlp is not None:
                    result = export_otlp(batch.otlp(), len(batch))
                else:
                    result = exporter.export(batch.traces())
                if result is not ExportResult.SUCCESS:
                    _export_failures += 1
            except Exception as exc:
                _export_failures += 1
                _diag.internal_error(f"export.{type(exporter).__name__}", exc)


_randomness_warned = False


def _warn_if_randomness_presumed(t: Tracer) -> None:
    """Warn once, as OpenTelemetry's probability sampling asks, when a
    sampling decision used the bits of a trace id not flagged random."""
    global _randomness_warned
    if _randomness_warned or not t.randomness_presumed:
        return
    _randomness_warned = True
    _diag.log.warning(
        "probability sampling decided on trace ids whose traceparent does not set the W3C "
        "random flag (and no ot=rv in tracestate): their last 56 bits were presumed random. "
        "Traces started by older tracers may be sampled inconsistently; counted as "
        "sampling_randomness_presumed"
    )


def export_failures() -> int:
    return _export_failures


def flush(timeout: float = 5.0) -> bool:
    """Process every ended span now and export what is kept. Traces whose
    root has not ended stay open. Returns False if the deadline passed."""
    deadline = time.monotonic() + max(timeout, 0.0)
    t = _tracer
    if t is None:
        return True
    try:
        t.process(False)
        export_pending(timeout=max(deadline - time.monotonic(), 0.0))
        ok = True
        for exporter in tuple(_exporters):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ok = bool(exporter.force_flush(remaining)) and ok
        return ok and time.monotonic() <= deadline
    except Exception as exc:
        _diag.internal_error("flush", exc)
        return False


def shutdown(timeout: float = 5.0) -> bool:
    """Decide every open trace, export it, stop the exporters. Idempotent."""
    global _worker
    deadline = time.monotonic() + max(timeout, 0.0)
    t = _tracer
    if t is None:
        return True
    try:
        _stop_worker(timeout=max(deadline - time.monotonic(), 0.0))
        t.shutdown()
        # With a deadline: a SIGTERM can arrive while this very thread holds
        # the export lock (inside flush), and the lock is not reentrant.
        export_pending(timeout=max(deadline - time.monotonic(), 0.0))
        for exporter in tuple(_exporters):
            remaining = max(deadline - time.monotonic(), 0.0)
            exporter.shutdown(remaining)
        return time.monotonic() <= deadline
    except Exception as exc:
        _diag.internal_error("shutdown", exc)
        return False


def _after_fork_in_child() -> None:
    global _worker, _export_lock, _lock, _pid
    _pid = os.getpid()
    _lock = threading.RLock()
    _export_lock = threading.Lock()
    _worker = None
    t = _tracer
    if t is not None:
        try:
            t.reset_after_fork()
            if _config is not None:
                t.set_resource(resource(_config))  # the child's own pid
        except Exception as exc:
            _diag.internal_error("fork", exc)
    if _exporters and _config is not None:
        _restart_worker()


def _at_exit() -> None:
    if os.getpid() == _pid:
        shutdown(timeout=5.0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
