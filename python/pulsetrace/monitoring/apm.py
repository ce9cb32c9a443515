"""The APM endpoints: ``/apm/status``, ``/apm/transactions``,
``/apm/traces``, ``/apm/traces/{trace_id}``, ``/apm/metrics``,
``/apm/errors`` and ``POST /apm/control``.

Transactions come from the native histograms (windows: copies taken by
:mod:`pulsetrace.monitoring.apm_windows`); traces and errors from one
:class:`~pulsetrace.export.ring.RingBufferExporter`, added as one more
exporter while the monitoring server runs (:func:`install`, from
``pulsetrace.prometheus.start_server``; :func:`uninstall` when it stops). Tracing is
switched off and on at run time by the tracer's own switch: the histograms,
counters and buffered traces stay. Under a pre-fork server the traces and
errors are every worker's (:mod:`pulsetrace.monitoring.traces_merge`), as
the transactions are.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from typing import Any, Optional

from pulsetrace import _native, _runtime
from pulsetrace._router import HttpError, Request, Response, json_response
from pulsetrace.export.ring import RingBufferExporter
from pulsetrace.monitoring import apm_windows, traces_merge, workers
from pulsetrace.scrub import scrub_json

RING = RingBufferExporter()
_published = traces_merge.Published(RING)
workers.register_part(
    traces_merge.NAME,
    _published,
    traces_merge.merger(RING),
    traces_merge.fold,
    after_fork=_published.after_fork,
)
WINDOWS = apm_windows.Windows()
_START = time.time()
_install_lock = threading.Lock()
_TRACE_ID = re.compile(r"^[0-9a-fA-F]{32}$")
#: A query parameter's number, written as the OpenAPI document's ``number``
#: and ``integer`` are (ASCII digits; Python's ``float`` and ``int`` also
#: read ``1_0``, `` 5``, ``+5``, ``٣`` and ``inf``, which they are not).
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"-?[0-9]+")


def install() -> None:
    """Add the ring buffer exporter and start taking histogram copies
    (idempotent)."""
    with _install_lock:
        if RING not in _runtime.exporters():
            _runtime.add_exporter(RING)
        WINDOWS.start()


def uninstall() -> None:
    """Detach the ring buffer exporter, stop taking copies (idempotent)."""
    with _install_lock:
        if RING in _runtime.exporters():
            _runtime.remove_exporter(RING)
        WINDOWS.stop()


# --- kept traces and errors: the whole application's ---------------------------


def _merged() -> Optional[dict[str, Any]]:
    """Every process's traces and errors merged; None when this process is
    alone (its own ring is the application's)."""
    return workers.merged_part(traces_merge.NAME)


def find_traces(
    operation: Optional[str] = None,
    min_duration_ms: Optional[float] = None,
    error: Optional[bool] = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Summaries of the kept traces held, newest first, filtered."""
    merged = _merged()
    if merged is None:
        return RING.traces(operation, min_duration_ms, error, limit)
    return traces_merge.traces(merged, operation, min_duration_ms, error, limit)


def find_trace(trace_id: str) -> Optional[dict[str, Any]]:
    """One kept trace with its span tree, or None (the merged view first:
    a trace that crossed workers has all its spans there; then this
    process's ring, which holds more than it publishes)."""
    merged = _merged()
    found = None if merged is None else traces_merge.trace(merged, trace_id)
    return found if found is not None else RING.trace(trace_id)


def error_groups() -> tuple[list[dict[str, Any]], int]:
    """The error groups, the most frequent first; the errors overflowed."""
    merged = _merged()
    if merged is None:
        return RING.errors(), RING.counters()["error_groups_overflowed"]
    return traces_merge.errors(merged), int(merged["overflowed"])


def traces_held() -> int:
    merged = _merged()
    return RING.counters()["ring_traces"] if merged is None else len(merged["traces"])


# --- handlers -----------------------------------------------------------------


#: How long a rendering of /apm/status is reused while tracing's switch,
#: sample rate, exporters and configuration stay the same (its counts and
#: ``workers`` are then at most this old).
STATUS_TTL_S = 1.0
#: (monotonic time, what it depends on, response) of the last rendering.
_status_render: Optional[tuple[float, tuple[Any, ...], Response]] = None


def _status_key() -> tuple[Any, ...]:
    tracer = _runtime.tracer()
    return (
        _runtime.config(),
        tracer,
        tracer.enabled,
        _native.sample_rate(tracer),
        tuple(_runtime.exporters()),
    )


def status_cached(request: Request) -> Optional[Response]:
    """/apm/status' last rendering while it is fresh and what it depends
    on is unchanged, else None."""
    memo = _status_render
    if memo is None or time.monotonic() - memo[0] >= STATUS_TTL_S or memo[1] != _status_key():
        return None
    return memo[2]


def status(request: Request) -> Response:
    global _status_render
    key = _status_key()
    response = _status(*key[:2])
    _status_render = (time.monotonic(), key, response)
    return response


def _status(cfg: Any, tracer: Any) -> Response:
    return json_response(
        200,
        {
            "status": "enabled" if tracer.enabled else "disabled",
            "enabled": tracer.enabled,
            "service": cfg.service_name,
            "sample_rate": _native.sample_rate(tracer),
            "uptime_s": round(time.time() - _START, 3),
            "exporters": [type(e).__name__ for e in _runtime.exporters()],
            "traces_buffered": traces_held(),
            "window_interval_s": WINDOWS.interval_s,
            "workers": workers.processes(),
            "timestamp": time.time(),
        },
    )


_transactions_lock = threading.Lock()
#: window -> (monotonic time, body): a probe storm reuses one rendering.
_transactions_cache: dict[str, tuple[float, bytes]] = {}
TRANSACTIONS_TTL_S = 1.0


def transactions(request: Request) -> Response:
    q = request.query_params()
    _only(q, {"window"})
    window = q.get("window", "all")
    if window != "all" and window not in apm_windows.WINDOWS_S:
        raise HttpError(400, f"window must be one of 1m, 5m, 1h or all, not {window[:20]!r}")
    return Response(200, [("Content-Type", "application/json")], _cached(window))


def transactions_cached(request: Request) -> Optional[Response]:
    """The window's rendering while it is at most ``TRANSACTIONS_TTL_S``
    old, else None (the handler validates the query and renders)."""
    q = request.query
    if not q:
        window = "all"
    elif q.startswith("window=") and "&" not in q:
        window = q[7:]
    else:
        return None
    at, body = _transactions_cache.get(window, (float("-inf"), b""))
    if time.monotonic() - at >= TRANSACTIONS_TTL_S:
        return None
    response = _responses.get(window)
    if response is None or response.body is not body:  # the same object: encoded once
        response = _responses[window] = Response(200, _JSON_TYPE, body)
    return response


#: window -> the response of its cached rendering.
_responses: dict[str, Response] = {}
_JSON_TYPE = (("Content-Type", "application/json"),)


_rendering: set[str] = set()


def _after_fork_in_child() -> None:
    """A forked worker renders its own transactions: a lock a thread of its
    parent held at the fork (rendering) would otherwise stay held for ever."""
    global _transactions_lock, _install_lock
    _transactions_lock = threading.Lock()
    _install_lock = threading.Lock()
    _transactions_cache.clear()
    _rendering.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _cached(window: str) -> bytes:
    """The window's rendering, at most ``TRANSACTIONS_TTL_S`` old; while one
    request renders a fresh one, the others get the previous one."""
    now = time.monotonic()
    with _transactions_lock:
        at, body = _transactions_cache.get(window, (float("-inf"), b""))
        if now - at < TRANSACTIONS_TTL_S or (body and window in _rendering):
            return body
        _rendering.add(window)
    try:
        # Every figure is finite: json.dumps without json_response's pass
        # (operation names scrubbed, as json_response does).
        body = json.dumps(scrub_json(_transactions(window)), separators=(",", ":")).encode()
        with _transactions_lock:
            _transactions_cache[window] = (time.monotonic(), body)
        return body
    finally:
        with _transactions_lock:
            _rendering.discard(window)


def _transactions(window: str) -> dict[str, Any]:
    figures = apm_windows.read_all()
    uptime = time.time() - _START
    if window == "all":
        base, seconds = None, uptime
    else:
        base, age = WINDOWS.baseline(apm_windows.WINDOWS_S[window])
        seconds = age if age is not None else min(apm_windows.WINDOWS_S[window], uptime)
    rows = apm_windows.stats(figures, base, seconds)
    return {
        "window": window,
        "window_s": round(seconds, 3),
        "timestamp": time.time(),
        "operations": rows,
    }


def _only(q: dict[str, str], allowed: set[str]) -> None:
    unknown = set(q) - allowed
    if unknown:
        raise HttpError(400, f"unknown query parameter {sorted(unknown)[0][:50]!r}")


def _number(q: dict[str, str], name: str, integer: bool = False) -> Optional[float]:
    if name not in q:
        return None
    kind = "an integer" if integer else "a number"
    try:
        if not (_INTEGER if integer else _NUMBER).fullmatch(q[name]):
            raise ValueError(q[name])
        value = float(int(q[name]) if integer else q[name])
    except (ValueError, OverflowError):
        raise HttpError(400, f"{name} must be {kind}, not {q[name][:30]!r}") from None
    if not value >= 0 or value == float("inf"):
        raise HttpError(400, f"{name} must be a finite number >= 0, not {q[name][:30]!r}")
    return value


def traces(request: Request) -> Response:
    q = request.query_params()
    _only(q, {"operation", "min_duration_ms", "error", "limit"})
    error = q.get("error")
    if error is not None and error not in ("true", "false"):
        raise HttpError(400, f"error must be true or false, not {error[:20]!r}")
    if len(q.get("operation", "")) > 200:
        raise HttpError(400, "operation is at most 200 characters")
    limit = _number(q, "limit", integer=True)
    if limit is not None and not 1 <= limit <= 1000:
        raise HttpError(400, "limit must be an integer from 1 to 1000")
    found = find_traces(
        operation=q.get("operation"),
        min_duration_ms=_number(q, "min_duration_ms"),
        error=None if error is None else error == "true",
        limit=int(limit) if limit is not None else 100,
    )
    return json_response(200, {"traces": found, "buffered": traces_held()})


def one_trace(request: Request) -> Response:
    tid = request.params["trace_id"]
    if not _TRACE_ID.match(tid):
        raise HttpError(400, "a trace id is 32 hexadecimal digits")
    found = find_trace(tid)
    if found is None:
        raise HttpError(404, f"no buffered trace {tid.lower()}")
    return json_response(200, found)


def metrics(request: Request) -> Response:
    """Totals per span kind since start, the agent's counters (every
    worker's)."""
    kinds: dict[str, dict[str, Any]] = {}
    for (_, kind, _), (errors, snap) in apm_windows.read_all().items():
        k = kinds.setdefault(kind, {"operations": 0, "count": 0, "errors": 0, "max_ms": 0.0})
        k["operations"] += 1
        k["count"] += snap.count
        k["errors"] += errors
        k["max_ms"] = max(k["max_ms"], snap.max / 1e6)
    uptime = time.time() - _START
    for k in kinds.values():
        k["error_rate"] = round(k["errors"] / k["count"], 6) if k["count"] else 0.0
        k["throughput_per_s"] = round(k["count"] / uptime, 6) if uptime > 0 else 0.0
    return json_response(
        200,
        {
            "timestamp": time.time(),
            "uptime_s": round(uptime, 3),
            "by_kind": kinds,
            "counters": workers.counters(),
        },
    )


def errors(request: Request) -> Response:
    groups, overflowed = error_groups()
    return json_response(
        200,
        {"errors": groups, "groups": len(groups), "groups_overflowed": overflowed},
    )


def control(request: Request) -> Response:
    """``{"enabled": bool, "sample_rate": number}``: tracing on or off, the
    tail sampler's probability; the histograms, counters and buffered
    traces are kept."""
    body = request.json() if request.body else {}
    if not isinstance(body, dict):
        raise HttpError(400, 'the body must be a JSON object such as {"enabled": false}')
    unknown = set(body) - {"enabled", "sample_rate"}
    if unknown:
        raise HttpError(400, f"unknown field in the body: {sorted(unknown)[0][:50]!r}")
    if "enabled" in body and not isinstance(body["enabled"], bool):
        raise HttpError(400, "the field 'enabled' must be true or false")
    rate = body.get("sample_rate")
    if "sample_rate" in body and (
        isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1
    ):
        raise HttpError(400, "the field 'sample_rate' must be a number from 0 to 1")
    tracer = _runtime.tracer()
    if rate is not None:
        _native.set_sample_rate(tracer, float(rate))
    if "enabled" in body:
        tracer.enabled = body["enabled"]
    return status(request)


# --- the endpoint rows (added to endpoints.ENDPOINTS) ---------------------------


def endpoint_rows(endpoint: Any, json_schema: Any, error: Any) -> list[Any]:
    """This module's rows of the endpoint table."""
    obj = {"description": "", "content": {"application/json": {"schema": {"type": "object"}}}}

    def ok(description: str) -> dict[str, Any]:
        return dict(obj, description=description)

    string = {"type": "string", "maxLength": 200}
    return [
        endpoint(
            "GET",
            "/apm/status",
            status,
            "Whether tracing is on, sampling, buffers",
            {200: ok("the APM status")},
            quick=status_cached,
        ),
        endpoint(
            "GET",
            "/apm/transactions",
            transactions,
            "Per operation: count, error rate, throughput, p50/p90/p99/max",
            {200: ok("per-operation statistics"), 400: error("an unknown window")},
            parameters=[
                {
                    "name": "window",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["1m", "5m", "1h", "all"]},
                }
            ],
            quick=transactions_cached,
        ),
        endpoint(
            "GET",
            "/apm/traces",
            traces,
            "Recent kept traces, newest first",
            {200: ok("trace summaries"), 400: error("a malformed filter")},
            parameters=[
                {"name": "operation", "in": "query", "required": False, "schema": string},
                {
                    "name": "min_duration_ms",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "number", "minimum": 0},
                },
                {
                    "name": "error",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["true", "false"]},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
            ],
        ),
        endpoint(
            "GET",
            "/apm/traces/{trace_id}",
            one_trace,
            "One buffered trace with its span tree",
            {
                200: ok("the trace"),
                400: error("not a trace id"),
                404: error("no buffered trace with that id"),
            },
            parameters=[
                {
                    "name": "trace_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"},
                }
            ],
        ),
        endpoint(
            "GET",
            "/apm/metrics",
            metrics,
            "Totals per span kind, the agent's counters",
            {200: ok("performance metrics")},
        ),
        endpoint(
            "GET",
            "/apm/errors",
            errors,
            "Errors grouped by exception type and location",
            {200: ok("error groups")},
        ),
        endpoint(
            "POST",
            "/apm/control",
            control,
            "Turn tracing on or off, change the sample rate (histograms and counters are kept)",
            {
                200: ok("the APM status after the change"),
                400: error("the body is not of the documented shape"),
                413: error("the body is too large"),
                415: error("the body is not JSON"),
            },
            body={
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "enabled": {"type": "boolean"},
                    "sample_rate": {"type": "number", "minimum": 0, "maximum": 1},
                },
            },
        ),
    ]
