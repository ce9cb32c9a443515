"""The monitoring endpoints: one table of routes, from which the router
and the OpenAPI document (``/openapi.json``) are both built, so the
document describes exactly what is served.

Access (``PULSETRACE_MONITORING_TOKEN``):

- A mutating endpoint (``POST``) needs ``Authorization: Bearer <token>``
  and refuses every request while no token is configured.
- When the server is bound beyond loopback, every endpoint but
  ``/health/live`` and ``/health/ready`` (what a load balancer or an
  orchestrator probes) needs it too.
- The token is compared in constant time; a refusal is 401 with a JSON
  error and ``WWW-Authenticate: Bearer``.

(The rules: ``pulsetrace.monitoring.access``.)

Handlers run under pulsetrace's suppression context (nothing they call is
traced), on the server's handler threads; health checks run on their own
bounded pool (``pulsetrace.monitoring.health``).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from pulsetrace import _diag, _runtime
from pulsetrace._router import HttpError, Request, Response, Router, json_response
from pulsetrace.monitoring import health as _health
from pulsetrace.monitoring import page as _page
from pulsetrace.monitoring import reuse
from pulsetrace.monitoring.access import guarded, guarded_quick, is_loopback
from pulsetrace.monitoring.alerts import api as _alerts_api

_START = time.time()
_CHECK_NAME = {"type": "string", "minLength": 1, "maxLength": 100}


def _error_schema() -> dict[str, Any]:
    return {"$ref": "#/components/schemas/Error"}


@dataclass(frozen=True)
class Endpoint:
    """One route: how it is served and how the OpenAPI document shows it."""

    method: str
    path: str
    handler: Callable[[Request], Response]
    summary: str
    responses: dict[int, dict[str, Any]]
    public: bool = False  # served without a token even beyond loopback
    parameters: list[dict[str, Any]] = field(default_factory=list)
    body: Optional[dict[str, Any]] = None  # the JSON body's schema
    inline: bool = False  # O(1): answered on the server's I/O thread
    #: A rendering still fresh, or None (the handler runs): answered on the
    #: server's I/O thread, O(1), never waiting (``Router.add``'s ``quick``).
    quick: Optional[Callable[[Request], Optional[Response]]] = None

    @property
    def mutating(self) -> bool:
        return self.method != "GET"


# --- handlers -----------------------------------------------------------------


def _report(results: list[_health.Result]) -> tuple[int, dict[str, Any]]:
    out = _health.summary(results)
    out["service"] = _runtime.config().service_name
    out["timestamp"] = time.time()
    return (503 if out["status"] == _health.FAIL else 200), out


def health(request: Request) -> Response:
    return _health_response(_health.REGISTRY.run())


def _health_response(results: list[_health.Result]) -> Response:
    status, out = _report(results)
    return json_response(status, out)


def live(request: Request) -> Response:
    """The process answers: no dependency is consulted."""
    # Numbers and a constant: nothing for the scrubber (json_response's
    # pass), and JSON as json.dumps writes it (a float's repr).
    uptime = round(time.time() - _START, 3)
    body = b'{"status":"pass","pid":%d,"uptime_s":%r}' % (os.getpid(), uptime)
    return Response(200, _JSON_TYPE, body)


_JSON_TYPE = (("Content-Type", "application/json"),)


def ready(request: Request) -> Response:
    """503 while a critical check does not pass."""
    return _ready_response(_health.REGISTRY.run())


def _ready_response(results: list[_health.Result]) -> Response:
    failing = [r.name for r in results if r.critical and not r.ok]
    out = {
        "status": "fail" if failing else "pass",
        "failing": failing,
        "checks": [r.to_json() for r in results],
    }
    return json_response(503 if failing else 200, out)


def one_check(request: Request) -> Response:
    name = request.params["name"]
    try:
        (result,) = _health.REGISTRY.run([name])
    except KeyError:
        raise HttpError(404, f"no health check named {name[:100]!r}") from None
    return json_response(200 if result.ok else 503, result.to_json())


def run_checks(request: Request) -> Response:
    """Run checks now, bypassing their cached results."""
    body = request.json() if request.body else {}
    if not isinstance(body, dict):
        raise HttpError(400, f"the body must be a JSON object, not {_json_type(body)}")
    unknown = set(body) - {"checks"}
    if unknown:
        raise HttpError(400, f"unknown field in the body: {sorted(unknown)[0][:50]!r}")
    names = body.get("checks")
    if "checks" in body:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise HttpError(400, "the field 'checks' must be an array of check names (strings)")
        if len(names) > 1000:
            raise HttpError(400, "the field 'checks' names at most 1000 checks")
    try:
        results = _health.REGISTRY.run(names, fresh=True)
    except KeyError as exc:
        raise HttpError(404, f"no health check named {str(exc.args[0])[:100]!r}") from None
    status, out = _report(results)
    return json_response(status, out)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else type(value).__name__


#: How long /health/metrics reuses its snapshot: reading every histogram's
#: percentiles costs tens of ms with 1,000 operations, and a probe storm must
#: not turn that into a core's worth of work.
METRICS_TTL_S = 1.0
_metrics_lock = threading.Lock()
_metrics_cache: tuple[float, bytes] = (float("-inf"), b"")


def metrics_json(request: Request) -> Response:
    """The application's metrics as JSON (a snapshot at most
    ``METRICS_TTL_S`` old; concurrent requests wait for one rendering)."""
    global _metrics_cache
    with _metrics_lock:
        at, body = _metrics_cache
        now = time.monotonic()
        if now - at >= METRICS_TTL_S:
            body = json_response(200, _metrics()).body
            _metrics_cache = (now, body)
    return Response(200, [("Content-Type", "application/json")], body)


def _after_fork_in_child() -> None:
    """A forked worker renders its own metrics: a lock a thread of its
    parent held at the fork (rendering) would otherwise stay held for ever."""
    global _metrics_lock, _metrics_cache
    _metrics_lock = threading.Lock()
    _metrics_cache = (float("-inf"), b"")


os.register_at_fork(after_in_child=_after_fork_in_child)


def metrics_json_cached(request: Request) -> Optional[Response]:
    """/health/metrics' snapshot while it is fresh, else None."""
    global _metrics_response
    at, body = _metrics_cache
    if time.monotonic() - at >= METRICS_TTL_S:
        return None
    response = _metrics_response
    if response is None or response.body is not body:  # the same object: encoded once
        response = _metrics_response = Response(200, _JSON_TYPE, body)
    return response


_metrics_response: Optional[Response] = None


def _metrics() -> dict[str, Any]:
    """The native histograms' statistics per operation, the agent's
    counters, process figures."""
    from pulsetrace import messaging, prometheus
    from pulsetrace.monitoring import metrics_custom, workers

    process = {
        name: samples[0][1]
        for name, _, _, samples in prometheus.process_families()
        if len(samples) == 1 and not samples[0][0]  # the unlabelled ones
    }
    return {
        "service": _runtime.config().service_name,
        "timestamp": time.time(),
        "operations": workers.latency(),  # every worker's
        "counters": workers.counters(),
        "process": process,
        "custom": metrics_custom.to_json(metrics_custom.merged()),  # every worker's
        "queues": messaging.queues(),
    }


def exposition(request: Request) -> Response:
    from pulsetrace import prometheus

    body, content_type = prometheus.exposition(request.headers.get("accept", ""))
    return Response(200, [("Content-Type", content_type), ("Vary", "Accept")], body)


def openapi(request: Request) -> Response:
    from pulsetrace.monitoring import openapi as _openapi

    return json_response(200, _openapi.document(ENDPOINTS))


# --- the table ----------------------------------------------------------------

_JSON = "application/json"


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description)


_EXPOSITION = {
    "description": "the exposition (OpenMetrics when the Accept header asks for it)",
    "content": {
        "text/plain": {"schema": {"type": "string"}},
        "application/openmetrics-text": {"schema": {"type": "string"}},
    },
}
_REPORT = {200: _json("Report", "every check passed (or only non-critical ones failed)")}
_REPORT[503] = _json("Report", "a critical check failed")

ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "GET",
        "/health",
        health,
        "Overall health with each check's result",
        dict(_REPORT),
        quick=reuse.from_cached_checks("/health", _health_response),
    ),
    Endpoint(
        "GET",
        "/health/live",
        live,
        "Liveness: the process answers (no dependency is checked)",
        {200: _json("Live", "the process is alive")},
        public=True,
        inline=True,
        quick=live,  # always answers: no hand-over, no suppression context
    ),
    Endpoint(
        "GET",
        "/health/ready",
        ready,
        "Readiness: 503 while a critical check fails",
        {
            200: _json("Ready", "every critical check passes"),
            503: _json("Ready", "a critical check fails"),
        },
        public=True,
        quick=reuse.from_cached_checks("/health/ready", _ready_response),
    ),
    Endpoint(
        "GET",
        "/health/checks/{name}",
        one_check,
        "One health check's result",
        {
            200: _json("CheckResult", "the check passed"),
            503: _json("CheckResult", "the check failed or timed out"),
            404: _error("no check of that name"),
        },
        parameters=[{"name": "name", "in": "path", "required": True, "schema": _CHECK_NAME}],
    ),
    Endpoint(
        "POST",
        "/health/run",
        run_checks,
        "Run health checks now, bypassing their cached results",
        {
            **_REPORT,
            400: _error("the body is not JSON, or not of the documented shape"),
            404: _error("no check of a given name"),
            413: _error("the body is too large"),
            415: _error("the body is not JSON"),
        },
        body={
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "checks": {"type": "array", "maxItems": 1000, "items": {"type": "string"}}
            },
        },
    ),
    Endpoint(
        "GET",
        "/health/metrics",
        metrics_json,
        "The application's metrics as JSON",
        {200: _json("Metrics", "per-operation latency statistics, counters, process figures")},
        quick=metrics_json_cached,
    ),
    Endpoint(
        "GET",
        "/health/prometheus",
        exposition,
        "The metrics in the Prometheus text format (OpenMetrics when asked for)",
        {200: _EXPOSITION},
    ),
    Endpoint(
        "GET",
        "/metrics",
        exposition,
        "The metrics in the Prometheus text format (what Prometheus scrapes)",
        {200: _EXPOSITION},
    ),
    Endpoint(
        "GET",
        "/openapi.json",
        openapi,
        "This document",
        {
            200: {
                "description": "the OpenAPI 3 document",
                "content": {_JSON: {"schema": {"type": "object"}}},
            }
        },
    ),
]
ENDPOINTS += _alerts_api.endpoints(Endpoint)
ENDPOINTS += _page.endpoints(Endpoint)  # GET / and its script, style sheet, icon


def _apm_rows() -> list[Endpoint]:
    from pulsetrace.monitoring import apm

    return apm.endpoint_rows(Endpoint, _json, _error)


def business_metrics(request: Request) -> Response:
    from pulsetrace.monitoring import metrics_business

    out = metrics_business.summary(metrics_business.merged())  # every worker's
    out["timestamp"] = time.time()
    return json_response(200, out)


ENDPOINTS.append(
    Endpoint(
        "GET",
        "/health/business-metrics",
        business_metrics,
        "Business metrics: messages, campaigns, contacts, templates, external APIs, auth",
        {
            200: {
                "description": "the business aggregates",
                "content": {_JSON: {"schema": {"type": "object"}}},
            }
        },
    )
)


ENDPOINTS.extend(_apm_rows())


def add_routes(router: Router, host: str, token: Optional[str]) -> None:
    """Add every monitoring endpoint to ``router`` for a server bound to ``host``."""
    loopback = is_loopback(host)
    for ep in ENDPOINTS:
        router.add(
            ep.path,
            guarded(ep, token, loopback),
            ep.method,
            inline=ep.inline,
            quick=guarded_quick(ep, token, loopback),
        )


def register_from_config() -> list[str]:
    """The health checks the configuration asks for (``DATABASE_URL``,
    ``REDIS_URL``) and the ones always on (disk, memory, CPU, the trace
    exporter; not critical); returns their names. Starts the alert
    evaluator too."""
    from pulsetrace import health as public

    cfg = _runtime.config()
    names = []
    try:
        if cfg.database_url:
            names.append(public.check_database(cfg.database_url))
        if cfg.redis_url:
            names.append(public.check_redis(cfg.redis_url))
    except ValueError as exc:
        _diag.log.warning("pulsetrace: %s; that health check is not registered", exc)
    for helper in (public.check_disk, public.check_memory, public.check_cpu, public.check_exporter):
        names.append(helper())
    from pulsetrace.monitoring import alerts  # the alert evaluator runs with the server

    alerts.start()
    return names
