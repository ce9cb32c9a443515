"""``import pulsetrace.auto`` at the top of an application: configure
pulsetrace from the environment and instrument every enabled integration.

Integrations are registered lazily: a library is patched when the
application imports it, before or after this import. With ``APM_ENABLED=false``
(or ``OTEL_SDK_DISABLED=true``) nothing is patched and spans cost next to
nothing. Kept traces are flushed at exit and on SIGTERM (when the
application has not set its own SIGTERM handler).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from pulsetrace import _diag, _runtime, contrib

log = logging.getLogger("pulsetrace")

_started = False


def _on_sigterm(signum: int, frame: Any) -> None:
    try:
        _runtime.shutdown()  # within PULSETRACE_SHUTDOWN_TIMEOUT_MS
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)


def _start_exporters() -> None:
    """The exporters the environment asks for (``OTEL_TRACES_EXPORTER``,
    default ``otlp``), and the metrics server (``PROMETHEUS_ENABLED``, or
    ``MONITORING_ENABLED`` with the monitoring endpoints)."""
    from pulsetrace.export import ConsoleSpanExporter

    cfg = _runtime.config()
    try:
        otlp = cfg.otlp
        if otlp.enabled:
            from pulsetrace.export.otlp_exporter import OtlpSpanExporter

            _runtime.add_exporter(OtlpSpanExporter(otlp))
            log.info(
                "pulsetrace: kept traces go to %s (OTLP over %s)", otlp.endpoint, otlp.protocol
            )
        if otlp.console:
            _runtime.add_exporter(ConsoleSpanExporter())
            log.info("pulsetrace: kept traces are written to stdout (OTEL_TRACES_EXPORTER)")
        if not otlp.enabled and not otlp.console:
            log.info("pulsetrace: kept traces are not exported (OTEL_TRACES_EXPORTER=none)")
    except Exception as exc:
        _diag.internal_error("auto.exporters", exc)
    if cfg.prometheus_enabled or cfg.monitoring_enabled:
        try:
            from pulsetrace import prometheus

            prometheus.start_server(cfg.metrics_addr)
        except Exception as exc:
            _diag.internal_error("auto.prometheus", exc)


def _otel_api_present() -> bool:
    """Whether opentelemetry-api can be imported. It is optional
    (``pip install pulsetrace[otel]``): its absence is not an error."""
    import importlib.util

    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except (ImportError, ValueError):
        # No ``opentelemetry`` package at all: find_spec imports the parent
        # package first, and that raises ModuleNotFoundError.
        return False


def _install_otel() -> None:
    """Make pulsetrace the OpenTelemetry API's tracer provider when the
    application has opentelemetry-api (spans made with
    ``opentelemetry.trace.get_tracer`` then share pulsetrace's pipeline).
    An SDK provider the application set itself is kept."""
    if not _otel_api_present():
        return
    try:
        from pulsetrace import otel

        otel.install()
    except Exception as exc:
        _diag.internal_error("auto.otel", exc)


def start() -> list[str]:
    """Configure from the environment and instrument (idempotent); returns
    the integrations switched on."""
    global _started
    cfg = _runtime.config()
    if not cfg.enabled:
        log.info("pulsetrace: tracing is off (APM_ENABLED / OTEL_SDK_DISABLED)")
        return []
    names = contrib.instrument(cfg)
    if not _started:
        _started = True
        _start_exporters()
        _install_otel()
        try:
            _install_sigterm()
        except Exception as exc:
            _diag.internal_error("auto.signal", exc)
        log.info("pulsetrace: service %s, integrations %s", cfg.service_name, ", ".join(names))
    return names


try:
    start()
except Exception as exc:
    _diag.internal_error("auto", exc)
