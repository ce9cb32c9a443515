"""Prometheus metrics of the agent, rendered by the native core.

``exposition(accept)`` returns ``(body, content_type)``: the latency
histograms of every inbound request, outbound call, SQL statement and Redis
command (request and error counters, duration histograms in seconds,
quantile gauges read exactly from the HDR histograms; OpenMetrics exemplars
link slow buckets to kept traces when the scraper asks for OpenMetrics),
process metrics and pulsetrace's own health. Calls out of the process are
series of the system they reach, named as OpenTelemetry names them
(``http_client_request_duration_seconds``,
``db_client_operation_duration_seconds``, ...; the README's "Metrics: from
span to series" has the mapping, the core's ``target`` module the rule).
The monitoring endpoints serve it; with ``PROMETHEUS_ENABLED=true`` a small
server also serves it at ``http://PULSETRACE_METRICS_ADDR/metrics`` (default
``127.0.0.1:9464``) through
``pulsetrace._server``, a plain socket server (never traced by pulsetrace's
hooks) with a head deadline (``PULSETRACE_METRICS_READ_TIMEOUT_MS``), a
connection bound (``PULSETRACE_METRICS_MAX_CONNECTIONS``) and a fixed pool
of handler threads, so slow or abusive clients cannot delay a scrape. It
gzips the exposition for scrapers that accept it.
"""

from __future__ import annotations

import gc
import logging
import os
import resource as _resource
import threading
import time
from typing import Optional

from pulsetrace import _diag, _runtime
from pulsetrace._router import Request, Response, Router, text_response
from pulsetrace._server import Server

log = logging.getLogger("pulsetrace")

Family = tuple[str, str, str, list[tuple[dict[str, str], float]]]

_START_TIME = time.time()


def _proc_status(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_families() -> list[Family]:
    """The standard process metrics (CPU, memory, file descriptors,
    threads) and Python's garbage collector."""
    t = os.times()
    out: list[Family] = [
        (
            "process_cpu_seconds_total",
            "user and system CPU time spent",
            "counter",
            [({}, t.user + t.system)],
        ),
        (
            "process_start_time_seconds",
            "start time of the process since the Unix epoch",
            "gauge",
            [({}, _START_TIME)],
        ),
        (
            "process_threads",
            "threads of the process",
            "gauge",
            [({}, float(_proc_status("Threads") or threading.active_count()))],
        ),
    ]
    try:
        with open("/proc/self/statm") as f:
            rss_pages = int(f.read().split()[1])
        out.append(
            (
                "process_resident_memory_bytes",
                "resident memory size",
                "gauge",
                [({}, float(rss_pages * os.sysconf("SC_PAGE_SIZE")))],
            )
        )
    except (OSError, ValueError, IndexError):
        pass
    try:
        out.append(
            (
                "process_open_fds",
                "open file descriptors",
                "gauge",
                [({}, float(len(os.listdir("/proc/self/fd"))))],
            )
        )
        out.append(
            (
                "process_max_fds",
                "maximum open file descriptors",
                "gauge",
                [({}, float(_resource.getrlimit(_resource.RLIMIT_NOFILE)[0]))],
            )
        )
    except OSError:
        pass
    stats = gc.get_stats()
    out.append(
        (
            "python_gc_collections_total",
            "garbage collections, by generation",
            "counter",
            [({"generation": str(i)}, float(s["collections"])) for i, s in enumerate(stats)],
        )
    )
    out.append(
        (
            "python_gc_objects_collected_total",
            "objects collected, by generation",
            "counter",
            [({"generation": str(i)}, float(s["collected"])) for i, s in enumerate(stats)],
        )
    )
    return out


def exposition(accept: str = "") -> tuple[bytes, str]:
    """``(body, content_type)``: OpenMetrics when ``accept`` asks for it,
    the Prometheus 0.0.4 text format otherwise."""
    cfg = _runtime.config()
    labels = {"service_name": cfg.service_name}
    extra = process_families()
    extra.append(
        (
            "pulsetrace_export_failures_total",
            "exporter calls that failed",
            "counter",
            [({}, float(_runtime.export_failures()))],
        )
    )
    delivery = _runtime.deliveries()
    extra.append(
        (
            "pulsetrace_spans_delivered_total",
            "spans an exporter delivered (for OTLP: the receiver accepted them)",
            "counter",
            [({}, float(delivery["spans_delivered"]))],
        )
    )
    extra.append(
        (
            "pulsetrace_spans_delivery_failed_total",
            "spans an exporter could not deliver (refused, lost, timed out)",
            "counter",
            [({}, float(delivery["spans_delivery_failed"]))],
        )
    )
    # Not ``pulsetrace_internal_errors_total``: that is the error counter of
    # INTERNAL spans, which the renderer lists first (an extra family with a
    # taken name is skipped), so this counter would vanish once the
    # application records an internal span.
    extra.append(
        (
            "pulsetrace_agent_errors_total",
            "exceptions pulsetrace caught in its own code (never the application's)",
            "counter",
            [({}, float(sum(_diag.internal_errors().values())))],
        )
    )
    from pulsetrace import messaging
    from pulsetrace.monitoring import metrics_business, metrics_custom

    # Every worker's, merged (this process's own when it is alone).
    extra.extend(metrics_custom.families(metrics_custom.merged()))
    extra.extend(metrics_business.families(metrics_business.merged()))
    extra.extend(messaging.families())  # queue depth, read at most every few seconds
    from pulsetrace.monitoring import workers

    return workers.render_metrics(accept, extra, labels)  # every worker's histograms


def _serve_metrics(request: Request) -> Response:
    try:
        body, content_type = exposition(request.headers.get("accept", ""))
    except Exception as exc:
        _diag.internal_error("prometheus.render", exc)
        return text_response(500, "cannot render the metrics\n")
    return Response(200, [("Content-Type", content_type), ("Vary", "Accept")], body)


def routes(
    monitoring: bool = False, host: str = "127.0.0.1", token: Optional[str] = None
) -> Router:
    """The metrics server's routes: the exposition at ``/metrics`` and ``/``;
    with ``monitoring``, every monitoring endpoint instead (``/metrics``
    among them; ``/`` is then the live page), behind their access rule for
    a server bound to ``host``."""
    router = Router()
    if monitoring:
        from pulsetrace.monitoring import endpoints

        endpoints.add_routes(router, host, token)
        return router
    router.add("/metrics", _serve_metrics)
    router.add("/", _serve_metrics)
    return router


_server: Optional[Server] = None
_server_lock = threading.Lock()


def parse_addr(raw: str) -> tuple[str, int]:
    host, _, port = raw.rpartition(":")
    return (host or "127.0.0.1").strip("[]"), int(port)


def start_server(
    addr: str = "127.0.0.1:9464", monitoring: Optional[bool] = None
) -> Optional[tuple[str, int]]:
    """Serve ``/metrics`` on ``addr`` from daemon threads (idempotent), with
    the configuration's connection bound and head deadline; with
    ``monitoring`` (default: ``MONITORING_ENABLED``) the monitoring
    endpoints too, and the health checks the configuration names are
    registered. Returns the bound address, or None (with one warning) if it
    cannot bind.

    The application's server (at ``PULSETRACE_METRICS_ADDR``) is served by
    one process (``pulsetrace.monitoring.workers``): in a process that is not
    elected this returns None and the process publishes its histograms for
    the one that serves, taking over when that one exits. Another address
    (a worker's own port) is this process's server, as it asks."""
    global _server
    with _server_lock:
        if _server is not None:
            return _server.address
        cfg = _runtime.config()
        if monitoring is None:
            monitoring = cfg.monitoring_enabled
        from pulsetrace.monitoring import workers

        try:
            if addr == cfg.metrics_addr and not workers.claim(addr, monitoring):
                return None
        except OSError as exc:  # no usable directory: this process serves alone
            log.warning("pulsetrace: cannot share metrics between workers (%s)", exc)
        try:
            host, port = parse_addr(addr)
            server = Server(
                host,
                port,
                routes(monitoring, host, cfg.monitoring_token),
                max_connections=cfg.metrics_max_connections,
                read_timeout=cfg.metrics_read_timeout_ms / 1000,
                name="pulsetrace-metrics",
            )
        except (OSError, ValueError) as exc:
            log.warning(
                "pulsetrace: cannot serve metrics on %r (%s); metrics server off", addr, exc
            )
            return None
        if monitoring:
            _register_checks()
            from pulsetrace.monitoring import apm

            apm.install()  # the traces ring buffer and the windows' copies
        server.start()
        _server = server
        return server.address


_checks_registered = False


def _register_checks() -> None:
    """Once per process: the health checks the configuration names."""
    global _checks_registered
    if _checks_registered:
        return
    _checks_registered = True
    try:
        from pulsetrace.monitoring import endpoints

        endpoints.register_from_config()
    except Exception as exc:
        _diag.internal_error("prometheus.health_checks", exc)


def serving() -> Optional[tuple[str, int]]:
    """The address this process serves metrics on, or None."""
    server = _server
    return server.address if server is not None else None


def stop_server() -> None:
    """Stop the metrics server, if one runs; its port is closed on return."""
    global _server
    with _server_lock:
        from pulsetrace.monitoring import workers

        workers.release()  # no takeover of a server stopped on purpose
        if _server is not None:
            _server.stop()
            _server = None
            from pulsetrace.monitoring import apm

            apm.uninstall()


def _after_fork_in_child() -> None:
    """A forked worker does not serve its parent's metrics server (that
    server's thread is not in the child, and it shows the parent's
    histograms): close the inherited sockets so ``start_server`` can be
    called again in the worker (e.g. from gunicorn's ``post_fork`` hook
    with a port of its own)."""
    global _server, _server_lock
    _server_lock = threading.Lock()  # another thread may have held it at the fork
    if _server is not None:
        _server.abandon()
        _server = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
