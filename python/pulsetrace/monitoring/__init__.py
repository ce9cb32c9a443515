"""The monitoring server's endpoints and health checks.

With ``MONITORING_ENABLED=true`` the metrics server
(``pulsetrace.prometheus.start_server``, at ``PULSETRACE_METRICS_ADDR``)
also serves the endpoints of :mod:`pulsetrace.monitoring.endpoints`; the
health checks live in :mod:`pulsetrace.monitoring.health` (registry and
how they run) and :mod:`pulsetrace.monitoring.checks` (the built-ins);
``pulsetrace.health`` is their public API. Alerting lives in
:mod:`pulsetrace.monitoring.alerts` (``add_alert_rule`` is re-exported here).
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("add_alert_rule", "set_gauge"):  # imported on first use
        from pulsetrace.monitoring import alerts

        return getattr(alerts, name)
    raise AttributeError(f"module 'pulsetrace.monitoring' has no attribute {name!r}")
