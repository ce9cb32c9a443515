"""The monitoring server's endpoints and health checks.

With ``MONITORING_ENABLED=true`` the metrics server
(``pulsetrace.prometheus.start_server``, at ``PULSETRACE_METRICS_ADDR``)
also serves the endpoints of :mod:`pulsetrace.monitoring.endpoints`; the
health checks live in :mod:`pulsetrace.monitoring.health` (registry and
how they run) and :mod:`pulsetrace.monitoring.checks` (the built-ins);
``pulsetrace.health`` is their public API.
"""
