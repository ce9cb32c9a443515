"""pulsetrace: a Python APM agent with a native hot path.

Spans go to lock-free latency histograms (live percentiles per operation)
and to a tail sampler that keeps whole traces: errors, slow ones, a
consistent baseline. Configuration comes from the environment (see the
README); :func:`configure` overrides it in code.

Importing pulsetrace starts nothing and reads nothing: the agent reads its
configuration and starts its threads on first use (the first span,
``latency()``, ``configure()``, ``add_exporter()``, or ``import
pulsetrace.auto``).
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from pulsetrace import _diag, _runtime
from pulsetrace._native import Histogram, Span, SpanContext, SpanData
from pulsetrace.config import Config
from pulsetrace.export import (
    ConsoleSpanExporter,
    ExportResult,
    InMemorySpanExporter,
    SpanExporter,
)
from pulsetrace.logging.identity import context, set_company, set_user
from pulsetrace.propagation import extract, inject, use_context
from pulsetrace.tracing import current_span, traced

__version__ = "0.1.0"

#: Start a span: ``start_span(name, *, kind="internal", attributes=None,
#: parent=None, links=None, start_time=None)``; use it as a context manager
#: or call ``end()``. Its parent is ``parent`` (a Span or SpanContext), else
#: the current span, else it starts a new trace. The process's tracer
#: exists from import on and lives as long as the process (``configure`` and
#: ``fork`` renew its state in place), so this is its native method itself:
#: no Python frame on the hot path. Its first call configures the agent from
#: the environment and starts its threads.
start_span = _runtime.TRACER.start_span

__all__ = [
    "Config",
    "ConsoleSpanExporter",
    "ExportResult",
    "Histogram",
    "InMemorySpanExporter",
    "Span",
    "SpanContext",
    "SpanData",
    "SpanExporter",
    "add_exporter",
    "configure",
    "context",
    "counters",
    "current_span",
    "extract",
    "flush",
    "get_config",
    "inject",
    "latency",
    "remove_exporter",
    "set_company",
    "set_user",
    "shutdown",
    "start_span",
    "traced",
    "use_context",
]


def configure(config: Optional[Config] = None, **overrides: Any) -> Config:
    """Reconfigure the agent: ``config`` (default: the environment's, read
    once per process) with ``overrides`` applied, e.g.
    ``configure(sample_rate=1.0)``. A bad override raises ValueError naming
    the setting (unknown names: TypeError). Histograms and buffers start
    afresh. Returns the configuration in use."""
    from pulsetrace.config import environment

    cfg = (config or environment()).replace(**overrides)
    _runtime.configure(cfg)
    return cfg


def get_config() -> Config:
    """The configuration in use."""
    return _runtime.config()


def add_exporter(exporter: SpanExporter) -> None:
    """Send kept traces to ``exporter`` (on the export thread)."""
    _runtime.add_exporter(exporter)


def remove_exporter(exporter: SpanExporter) -> None:
    _runtime.remove_exporter(exporter)


def latency() -> list[dict[str, Any]]:
    """Live statistics per operation from the native histograms: dicts with
    ``name``, ``kind``, ``count``, ``errors``, ``rate_limited`` (spans
    answered 429), ``min``, ``mean``, ``p50``, ``p90``, ``p99``, ``p999``
    and ``max`` (durations in seconds)."""
    return list(_runtime.tracer().latency())


def counters() -> dict[str, int]:
    """Every counter of the agent (sampler outcomes, drops, conversions,
    internal errors, integrations left unpatched for their version), by name."""
    out = dict(_runtime.tracer().counters())
    out["export_failures"] = _runtime.export_failures()
    out.update(_runtime.deliveries())
    out["spans_oversized"] = _runtime.oversized_spans()
    for exporter in _runtime.exporters():
        if isinstance(exporter, SpanExporter):  # counters() is optional for an application's own
            try:
                out.update(exporter.counters())
            except Exception as exc:
                _diag.internal_error("counters", exc)
    from pulsetrace import logging as _logging

    out.update(_logging.counters())
    out["internal_errors"] = sum(_diag.internal_errors().values())
    patcher = sys.modules.get("pulsetrace.contrib._patcher")  # loaded once anything is patched
    out["integrations_unsupported"] = len(patcher.unsupported()) if patcher else 0
    return out


def flush(timeout: float = 5.0) -> bool:
    """Process every ended span and export the kept traces now."""
    return _runtime.flush(timeout)


def shutdown(timeout: Optional[float] = None) -> bool:
    """Decide every open trace, export, stop exporters (also run at exit and
    on SIGTERM). Waits at most ``timeout`` seconds, by default
    ``PULSETRACE_SHUTDOWN_TIMEOUT_MS``; returns False if that was not enough."""
    return _runtime.shutdown(timeout)
