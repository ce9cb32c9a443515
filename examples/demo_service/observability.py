"""What the demo service asks of pulsetrace beyond the automatic
instrumentation (``pulsetrace-run`` traces Flask, sqlite3 and requests by
itself): health checks, alert rules, custom metrics and JSON logs.

Everything here is pulsetrace's public API as the README documents it. It
runs once, when gunicorn's master imports the application (``--preload``),
so the process that serves the monitoring endpoints knows the checks and
the rules; the workers it forks inherit them.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Union

import pulsetrace.health
import pulsetrace.logging
import pulsetrace.metrics
import pulsetrace.monitoring

#: The route whose errors and latency the alert rules watch (the span name
#: pulsetrace gives a Flask request: method and route).
SEND_ROUTE = "POST /messages"

#: Contacts per company, set by whichever worker changed them last.
CONTACTS = pulsetrace.metrics.create_custom_gauge(
    "demo_contacts", "contacts in the address book", ["company"], aggregate="last"
)
#: Campaign batches sent, by campaign name.
CAMPAIGN_BATCHES = pulsetrace.metrics.create_custom_counter(
    "demo_campaign_batches_total", "campaign send batches", ["campaign"], max_series=50
)
#: Size of the rendered message bodies.
BODY_BYTES = pulsetrace.metrics.create_custom_histogram(
    "demo_message_body_bytes",
    "size of rendered message bodies in bytes",
    ["message_type"],
    max_series=10,
    buckets=[16, 32, 64, 128, 256],
)

log = pulsetrace.logging.get_logger("application")


def _provider_check(url: str) -> Union[dict[str, object], bool]:
    """The provider's health endpoint answers ``{"status": "ok"}``."""
    with urllib.request.urlopen(url, timeout=1.5) as reply:
        body = json.loads(reply.read())
    return {"provider": body.get("status")} if body.get("status") == "ok" else False


def setup(db_path: str, provider_health_url: str) -> None:
    """Checks, rules and logs of the demo service (called once, at import)."""
    # One JSON line per log record, with the trace and span ids of the
    # request it was written in (and one access line per request when
    # PULSETRACE_ACCESS_LOG=true).
    pulsetrace.logging.configure()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    # /health: the database is critical (a failure turns /health/ready to
    # 503), the messaging provider is not (the service degrades).
    pulsetrace.health.check_sqlite(db_path, name="database", critical=True)
    pulsetrace.health.register(
        "provider",
        lambda: _provider_check(provider_health_url),
        critical=False,
        timeout=2.0,
        ttl=5.0,
    )

    # Alerts, evaluated by one worker every PULSETRACE_ALERT_INTERVAL_MS.
    # No channel is configured in the demo: they show on the live page and
    # at /monitoring/alerts, where they can be acknowledged.
    pulsetrace.monitoring.add_alert_rule(
        id="send-errors",
        name="Message sends failing",
        severity="high",
        description="More than 5% of POST /messages answered 5xx over the last minute",
        condition={
            "kind": "error_ratio",
            "operation": SEND_ROUTE,
            "threshold": 0.05,
            "window": "1m",
            "min_count": 10,
        },
        cooldown="5m",
    )
    pulsetrace.monitoring.add_alert_rule(
        id="send-latency",
        name="Message sends slow",
        severity="medium",
        description="p99 of POST /messages above 500 ms over the last minute",
        condition={
            "kind": "percentile",
            "operation": SEND_ROUTE,
            "span_kind": "server",
            "percentile": "p99",
            "threshold": 0.5,
            "window": "1m",
            "min_count": 20,
        },
        cooldown="5m",
    )
    pulsetrace.monitoring.add_alert_rule(
        id="provider-down",
        name="Messaging provider unhealthy",
        severity="critical",
        condition={"kind": "health", "operation": "provider"},
    )
    log.info("demo service ready", extra={"database": db_path})
