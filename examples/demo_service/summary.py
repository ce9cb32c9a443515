"""The demo's closing summary, read from the monitoring endpoints the way a
user (or a dashboard) would: operations with count, errors, p50 and p99
(every worker's histograms merged), the kept traces and why they were
kept, the health checks, the business metrics and the alerts fired."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from typing import Any


def get(port: int, path: str) -> Any:
    """The JSON of a GET on the monitoring server (its body even on an
    error status: ``/health`` answers 503 when a critical check fails)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"null")


def statuses_line(statuses: Counter[int]) -> str:
    """``120 requests: 2xx 100, 4xx 15, 5xx 5`` (0: no answer)."""
    classes: Counter[str] = Counter()
    for status, n in statuses.items():
        classes[f"{status // 100}xx" if status else "no answer"] += n
    parts = ", ".join(f"{k} {classes[k]}" for k in sorted(classes))
    return f"{sum(statuses.values())} requests: {parts}"


def _operations(port: int) -> list[str]:
    ops = get(port, "/apm/transactions?window=all")["operations"]
    lines = [
        f"  {'kind':6} {'operation':40} {'count':>6} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8}"
    ]
    for op in sorted(ops, key=lambda o: (o["kind"] != "server", o["kind"], -o["count"])):
        lines.append(
            f"  {op['kind']:6} {op['name'][:40]:40} {op['count']:6d} {op['errors']:6d} "
            f"{op['p50_ms']:8.1f} {op['p99_ms']:8.1f}"
        )
    return lines


def _span_reason(port: int, trace_id: str) -> str:
    """The keep reason a span of the trace carries. (A trace that came back
    into the process that started it, the service calling its provider stub
    in another thread, was decided when the provider's span ended: the
    spans that ended after it joined the kept trace without a reason.)"""
    pending = list(get(port, f"/apm/traces/{trace_id}").get("tree") or [])
    while pending:
        span = pending.pop()
        if span.get("keep_reason"):
            return str(span["keep_reason"])
        pending.extend(span.get("children") or [])
    return "unknown"


def _traces(port: int) -> list[str]:
    listed = get(port, "/apm/traces?limit=1000")["traces"]
    # A trace that crossed two processes (the service calling its provider
    # stub, served by the other worker) is listed once per process's part;
    # a part that only joined a trace decided elsewhere has no keep reason.
    reasons: dict[str, str] = {}
    for t in listed:
        if t["keep_reason"]:
            reasons[t["trace_id"]] = t["keep_reason"]
    for t in listed:
        if t["trace_id"] not in reasons:
            reasons[t["trace_id"]] = _span_reason(port, t["trace_id"])
    by_reason = Counter(reasons.values())
    why = ", ".join(f"{r} {n}" for r, n in by_reason.most_common())
    lines = [f"kept traces: {len(reasons)}" + (f" ({why})" if why else "")]
    sends = [t for t in listed if t["operation"] == "POST /messages"]
    # A failed send, and a successful one (the one with most spans: a send
    # with its SQL statements and its call to the provider).
    fine = sorted((t for t in sends if not t["error"]), key=lambda t: -int(t["spans"]))
    examples = [t for t in sends if t["error"]][:1] + fine[:1]
    for t in examples:
        lines.append(
            f"  e.g. {'a failed ' if t['error'] else ''}{t['operation']} "
            f"(trace of {t['duration_ms']:.1f} ms, "
            f"kept: {reasons[t['trace_id']]}): http://127.0.0.1:{port}/apm/traces/{t['trace_id']}"
        )
    return lines


def _health(port: int) -> str:
    health = get(port, "/health")
    checks = ", ".join(f"{c['name']} {c['status']}" for c in health["checks"])
    return f"health: {health['status']} ({checks})"


def _business(port: int) -> str:
    messages = get(port, "/health/business-metrics")["messages"]
    order = {"sent": 0, "delivered": 1, "read": 2, "failed": 3}
    by_status = sorted(messages["by_status"].items(), key=lambda kv: (order.get(kv[0], 9), kv[0]))
    counts = ", ".join(f"{k} {int(v)}" for k, v in by_status)
    rate = messages.get("success_rate")
    rate_text = f" (delivery success rate {rate:.1%})" if isinstance(rate, (int, float)) else ""
    return f"messages: {counts or 'none yet'}{rate_text}"


def _alerts(port: int) -> list[str]:
    alerts = get(port, "/monitoring/alerts")["alerts"]
    lines = [f"alerts fired: {len(alerts)}"]
    for a in alerts:
        lines.append(f"  [{a['severity']}] {a['name']} ({a['state']}): {a['message']}")
    return lines


def report(port: int, statuses: Counter[int]) -> str:
    """The summary, as printed at the end of the demo."""
    workers = get(port, "/apm/status").get("workers") or []
    lines = [
        "",
        "Summary, from the monitoring endpoints (all processes merged):",
        f"load generator: {statuses_line(statuses)}",
        f"processes seen: {len(workers)} (the master serving the endpoints, and the workers)",
        "",
        *_operations(port),
        "",
        *_traces(port),
        _health(port),
        _business(port),
        *_alerts(port),
    ]
    return "\n".join(lines)
