"""The agent of this process: one native tracer, its exporters and the
export thread, started on first use, flushed at exit, renewed after fork.

The export chain: kept traces wait in the core's one bounded export queue;
the one export thread sleeps in the core (``Tracer.wait_export``, without
the GIL) until a batch is ready, and hands each batch (a
:class:`~pulsetrace.export.SpanBatch`) to every exporter, one batch at a
time and in order. The OTLP exporter sends a batch without waiting for the
collector's answer (a gRPC future, or one of its HTTP sender threads; at
most ``PULSETRACE_OTLP_MAX_IN_FLIGHT`` requests at once), and an answer
wakes the export thread; an exporter that keeps a failed request asks for a
timed wake of the thread to retry it (``retry_due``). ``flush`` asks the
export thread to hand over everything queued and waits for it, within its
timeout. ``shutdown`` bounds the batch
being exported (:meth:`~pulsetrace.export.SpanBatch.finish_by`), stops the
export thread and hands what is left over on its own thread as one batch:
at the same time as the export thread's last batch if a slow receiver
still holds that one up, both within the shutdown's deadline."""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

from pulsetrace import _diag, scrub
from pulsetrace._native import Tracer
from pulsetrace._suppress import is_suppressed
from pulsetrace.config import Config, environment
from pulsetrace.export import ExportResult, SpanBatch, SpanExporter, check_exporter

# Re-exported: exporters, the counters and the health checks read them here.
from pulsetrace.export._outcomes import count_export_failure as count_export_failure
from pulsetrace.export._outcomes import deliveries as deliveries
from pulsetrace.export._outcomes import export_failures as export_failures
from pulsetrace.export._outcomes import note_oversized, reset_deliveries
from pulsetrace.export._outcomes import oversized_spans as oversized_spans
from pulsetrace.export._outcomes import record_delivery as record_delivery
from pulsetrace.export._thread import ExportThread

#: The ``X-Request-ID`` header of the request a Python server hook serves in
#: this context, with its trace id: ``(trace_id, value)``, trace id 0 for
#: the WSGI middleware (set before its native path starts the span) (the log
#: lines' ``requestId``; Flask's native path is read from Flask's request).
REQUEST_ID: contextvars.ContextVar[Optional[tuple[int, str]]] = contextvars.ContextVar(
    "pulsetrace_request_id", default=None
)

#: The current span (a Span) or remote parent (a SpanContext) of a context.
CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "pulsetrace_current_span", default=None
)

_lock = threading.RLock()
_config: Optional[Config] = None
#: The tracer once it is configured (None before): hooks test this first.
_tracer: Optional[Tracer] = None
_starting = False
_start_failed = False
_exporters: list[SpanExporter] = []
_worker: Optional[ExportThread] = None
_pid = os.getpid()


def _first_use() -> None:
    """Configure the process's tracer from the environment (read once), the
    first time anything uses it; the native tracer calls this from its first
    ``start_span``. Never raises: an unusable value already gave its warning
    and was replaced; should the agent still fail to start, that is logged
    once and tracing stays off (spans are no-ops)."""
    global _starting, _start_failed
    with _lock:
        if _tracer is not None or _starting or _start_failed:
            return  # configured, failed, or re-entered (a log handler) while configuring
        _starting = True
        try:
            _apply(environment())
        except Exception as exc:
            _start_failed = True
            _diag.internal_error("start", exc)
        finally:
            _starting = False


#: The process's tracer: it exists from import on, unconfigured and without
#: threads; it configures itself (``_first_use``) when it is first used.
TRACER = Tracer(CURRENT, _first_use)


#: Spans per batch: the export thread is woken as soon as this many wait
#: (or half the export queue, if that is smaller).
BATCH_SPANS = 4096


def batch_spans() -> int:
    """Spans per batch: ``BATCH_SPANS``, at most half the export queue, so
    that what an exporter holds (the batch it sends) stays within half the
    queue's bound too."""
    cfg = _config
    size = cfg.export_queue_size if cfg is not None else Config.export_queue_size
    return max(1, min(BATCH_SPANS, size // 2))


def tracer() -> Tracer:
    """The process's tracer, configured from the environment on first use."""
    if _tracer is None:
        _first_use()
    return TRACER


def hook_tracer() -> Optional[Tracer]:
    """The tracer a library hook starts its span on, or None when the call
    must run untraced: pulsetrace's own work (:func:`pulsetrace._suppress.suppressed`)
    or tracing turned off. May raise on first use (a hook's own ``try``
    reports it)."""
    if is_suppressed():
        return None
    t = _tracer or tracer()
    return t if t.enabled else None


def current_config() -> Optional[Config]:
    """The configuration in use, or None before the agent started (starts
    nothing)."""
    return _config


def config() -> Config:
    """The configuration in use (the environment's, on first use)."""
    tracer()
    return _config if _config is not None else Config()


class _StderrUnlessConfigured(logging.Handler):
    """pulsetrace's records on stderr while the application has not
    configured logging (no handler on the root logger). Python's own last
    resort does the same but only from WARNING up, so ``PULSETRACE_LOG_LEVEL=info``
    would show nothing; once the application has a handler, it gets the
    records instead (no line twice)."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _apply_log_level(cfg: Config) -> None:
    logger = logging.getLogger("pulsetrace")
    logger.setLevel(cfg.diag_log_level.upper())
    if not any(isinstance(h, _StderrUnlessConfigured) for h in logger.handlers):
        logger.addHandler(_StderrUnlessConfigured())


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


def _apply(cfg: Config) -> None:
    """With ``_lock`` held: hand ``cfg`` to the native tracer (a new core,
    its worker thread started) and restart the export thread."""
    global _tracer, _config
    _apply_log_level(cfg)
    first = _tracer is None
    TRACER.configure(cfg)
    scrub.configure(cfg)
    # A new configuration counts afresh, as the core's counters do.
    reset_deliveries()
    TRACER.set_resource(resource(cfg))
    _config = cfg
    _tracer = TRACER
    _set_final_deadline(None)  # exporting again (after a shutdown)
    if first:
        # A reconfigured core keeps the previous one's export switch.
        _sync_exporting()
    _restart_worker()


def _sync_exporting() -> None:
    """Kept traces are queued for export only while an exporter is set:
    with none, nothing would ever take them from the queue."""
    if _tracer is not None:
        _tracer.exporting = bool(_exporters)


def configure(cfg: Config) -> None:
    """Apply a new configuration (fresh histograms and buffers)."""
    with _lock:
        _apply(cfg)


def add_exporter(exporter: SpanExporter) -> None:
    check_exporter(exporter)
    with _lock:
        tracer()
        # The running export thread finishes its batch first, so traces
        # drained before this call never reach the new exporter.
        _stop_worker()
        if exporter not in _exporters:
            _exporters.append(exporter)
            # Exporters that send over the network last (stable otherwise):
            # their requests take time even when answered (a silent
            # collector: up to the request timeout), the others need not
            # wait for that.
            _exporters.sort(key=lambda e: bool(getattr(e, "remote", False)))
        _sync_exporting()
        _restart_worker()


def remove_exporter(exporter: SpanExporter) -> None:
    with _lock:
        if exporter in _exporters:
            _exporters.remove(exporter)
        _sync_exporting()
        if not _exporters:
            # Not waited for: it may be in the middle of a batch that a slow
            # receiver holds up (it leaves once that batch is done).
            _stop_worker(timeout=0)


def exporters() -> Sequence[SpanExporter]:
    return tuple(_exporters)


def _stop_worker(timeout: float = 5.0) -> None:
    global _worker
    w = _worker
    _worker = None
    if w is not None:
        w.stop()
        if w is not threading.current_thread() and timeout > 0:
            w.join(timeout)


def _restart_worker() -> None:
    global _worker
    _stop_worker()
    if _exporters and _config is not None:
        _worker = ExportThread(
            TRACER,
            _config.export_interval_ms / 1000.0,
            batch_spans(),
            lambda max_spans, batches: export_pending(max_spans, batches=batches),
            retry_due,
        )
        _worker.start()


_export_lock = threading.Lock()
#: The batch being handed to the exporters, and the deadline a shutdown set
#: (every batch made after it carries it): guarded by ``_batch_lock``.
_current_batch: Optional[SpanBatch] = None
_final_deadline: Optional[float] = None
_batch_lock = threading.Lock()


def _set_final_deadline(deadline: Optional[float]) -> None:
    """A shutdown began (``deadline``) or is over (None): the batch being
    exported, and every later one, must be done by ``deadline``."""
    global _final_deadline
    with _batch_lock:
        _final_deadline = deadline
        batch = _current_batch
    if batch is not None and deadline is not None:
        batch.finish_by(deadline)


def export_pending(
    max_spans: Optional[int] = None, timeout: Optional[float] = None, batches: Optional[int] = None
) -> int:
    """Hand kept traces to every exporter, in batches of about ``max_spans``
    spans: all of them, or the first ``batches``. Returns spans handed over.
    With ``timeout``, gives up (returns 0) if another export (a slow
    receiver) holds the export lock longer than that."""
    t = _tracer
    if t is None or not _exporters:
        return 0
    if max_spans is None:
        max_spans = batch_spans()
    if not _export_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
        return 0
    global _export_owner
    _export_owner = threading.get_ident()
    try:
        return _export_locked(t, max_spans, batches)
    finally:
        _export_owner = None
        _export_lock.release()


#: The thread holding ``_export_lock`` (its ident), if any.
_export_owner: Optional[int] = None


def _final_hand_over(t: Tracer) -> None:
    """At shutdown, with the deadline set: everything queued, as one batch,
    so that an exporter sends all of it at once. When the export thread is
    still busy with its batch (a slow receiver), this does not wait for it:
    the two batches go on at the same time, both bound by the deadline."""
    if _export_owner == threading.get_ident():
        return  # a signal handler inside this thread's own export: not reentrant
    held = _export_lock.acquire(timeout=0.05)
    try:
        _export_locked(t, sys.maxsize, None)
    finally:
        if held:
            _export_lock.release()


def _export_locked(t: Tracer, max_spans: int, batches: Optional[int]) -> int:
    global _current_batch
    total = 0
    limit = _config.export_max_request_bytes if _config is not None else None
    while batches is None or batches > 0:
        if batches is not None:
            batches -= 1
        if _final_deadline is not None and isinstance(threading.current_thread(), ExportThread):
            return total  # a shutdown began: it hands the rest over itself
        try:
            native = t.drain_batch(max_spans)
        except Exception as exc:
            _diag.internal_error("export.drain", exc)
            return total
        if native is None:
            _warn_if_randomness_presumed(t)
            return total
        with _batch_lock:
            batch = SpanBatch(native, limit, lambda n: note_oversized(n, limit), _final_deadline)
            _current_batch = batch
        try:
            total += _hand_over(batch)
        finally:
            with _batch_lock:
                _current_batch = None
    return total


def retry_due() -> Optional[float]:
    """On the export thread, after each wake-up: every exporter whose
    ``next_wake`` has passed retries what it kept (``retry``); returns the
    earliest ``next_wake`` still asked for (a :func:`time.monotonic` value),
    or None (the thread then sleeps until a batch, a flush or a stop)."""
    if _final_deadline is not None:
        return None  # a shutdown sends what is left itself
    earliest: Optional[float] = None
    with _export_lock:
        for exporter in tuple(_exporters):
            next_wake = getattr(exporter, "next_wake", None)
            if next_wake is None:
                continue
            try:
                at = next_wake()
                if at is not None and at <= time.monotonic():
                    exporter.retry()
                    at = next_wake()
            except Exception as exc:
                _diag.internal_error(f"export.{type(exporter).__name__}.retry", exc)
                continue
            if at is not None and (earliest is None or at < earliest):
                earliest = at
    return earliest


def _hand_over(batch: SpanBatch) -> int:
    """Give ``batch`` to every exporter in turn, counting the outcomes."""
    spans = batch.spans
    for exporter in tuple(_exporters):
        try:
            result = exporter.export(batch)
        except Exception as exc:
            _diag.internal_error(f"export.{type(exporter).__name__}", exc)
            result = ExportResult.FAILURE
        if result is ExportResult.QUEUED:
            continue  # the exporter reports each span's outcome itself
        if result is ExportResult.SUCCESS:
            record_delivery(spans, 0)
        else:
            record_delivery(0, spans)
            count_export_failure()
    return spans


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


def flush(timeout: float = 5.0) -> bool:
    """Process every ended span now and export what is kept (on the export
    thread, this one waiting for it). Traces whose root has not ended stay
    open. Returns False if the deadline passed (what was asked goes on:
    ``flush(0)`` hands everything over without waiting)."""
    deadline = time.monotonic() + max(timeout, 0.0)
    t = _tracer
    if t is None:
        return True
    try:
        t.process(False)
        w = _worker
        done = None
        if w is not None and w is not threading.current_thread():
            done = w.flush(max(deadline - time.monotonic(), 0.0))
        if done is None:  # no export thread running: this thread hands over
            export_pending(timeout=max(deadline - time.monotonic(), 0.0))
        elif not done:
            return False
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


def shutdown_timeout() -> float:
    """Seconds :func:`shutdown` waits at most by default (at exit, on
    SIGTERM): ``PULSETRACE_SHUTDOWN_TIMEOUT_MS``."""
    cfg = _config
    return (cfg.shutdown_timeout_ms if cfg is not None else Config.shutdown_timeout_ms) / 1000.0


_shutdown_hooks: list[Callable[[], None]] = []


def on_shutdown(hook: Callable[[], None]) -> None:
    """Call ``hook`` at the end of :func:`shutdown` (at exit, on SIGTERM),
    once the last spans are processed (the workers' last published copy)."""
    if hook not in _shutdown_hooks:
        _shutdown_hooks.append(hook)


def shutdown(timeout: Optional[float] = None) -> bool:
    """Decide every open trace, export it, stop the exporters, within
    ``timeout`` seconds (default :func:`shutdown_timeout`). Idempotent."""
    global _worker
    t = _tracer
    if t is None:
        return True
    if timeout is None:
        timeout = shutdown_timeout()
    deadline = time.monotonic() + max(timeout, 0.0)
    try:
        # The batch being exported ends by the deadline (a receiver that
        # fails gets one last attempt, not retries), and so do later ones.
        _set_final_deadline(deadline)
        worker = _worker
        _stop_worker(timeout=0)
        t.shutdown()
        _final_hand_over(t)
        for exporter in tuple(_exporters):
            remaining = max(deadline - time.monotonic(), 0.0)
            exporter.shutdown(remaining)
        if worker is not None and worker is not threading.current_thread():
            # Gone before the interpreter finalizes (a thread still inside
            # the core then could not come back to Python), within the bound.
            worker.join(max(deadline - time.monotonic(), 0.0))
        for hook in tuple(_shutdown_hooks):
            hook()
        return time.monotonic() <= deadline
    except Exception as exc:
        _diag.internal_error("shutdown", exc)
        return False


def _after_fork_in_child() -> None:
    global _worker, _export_lock, _lock, _pid, _batch_lock, _current_batch
    _pid = os.getpid()
    _lock = threading.RLock()
    _export_lock = threading.Lock()
    _batch_lock = threading.Lock()
    _current_batch = None  # the parent's
    global _export_owner
    _export_owner = None
    reset_deliveries(after_fork=True)  # the child's own, as the core's
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
        shutdown()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
