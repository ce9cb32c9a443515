"""Built-in rules for the alert categories, thresholds configurable:
``pulsetrace.monitoring.alerts.add_builtin_rules(error_ratio=0.02)``.

What a process can see of itself: its health checks (the database of
``DATABASE_URL``, memory and CPU with the thresholds given to
``pulsetrace.health.check_memory``/``check_cpu``), its operations' error
ratios by span kind, and gauges the application sets
(``pulsetrace.monitoring.set_gauge``). "Service down" cannot be seen from
inside the process (Prometheus's ``up`` does).
"""

from __future__ import annotations

from typing import Union

from pulsetrace.monitoring.alerts.rules import Rule, Threshold, duration, make_rule

Duration = Union[int, float, str]


def builtin_rules(
    error_ratio: float = 0.05,
    consumer_error_ratio: float = 0.10,
    queue_backlog: float = 1000,
    campaign_success_rate: float = 0.90,
    window: Duration = "5m",
    min_count: int = 20,
) -> list[Rule]:
    """The built-in rules (ids ``builtin.*``)."""
    seconds = duration(window, "window")

    def health(check: str) -> Threshold:
        return Threshold("health", check, threshold=0)

    def errors(kind: str, ratio: float) -> Threshold:
        return Threshold(
            "error_ratio", "*", ratio, window=seconds, min_count=min_count, span_kind=kind
        )

    return [
        make_rule(
            "builtin.database-connection",
            "Database connection failures",
            health("database"),
            severity="critical",
            team="dba",
            description="the database health check fails",
            for_="1m",
        ),
        make_rule(
            "builtin.critical-memory",
            "Critical memory use",
            health("memory"),
            severity="critical",
            description="memory use is above the memory check's limit",
            for_="2m",
        ),
        make_rule(
            "builtin.critical-cpu",
            "Critical CPU use",
            health("cpu"),
            severity="critical",
            description="CPU use is above the CPU check's limit",
            for_="5m",
        ),
        make_rule(
            "builtin.high-error-rate",
            "High error rate",
            errors("server", error_ratio),
            severity="high",
            description="the share of failed requests",
            for_="2m",
        ),
        make_rule(
            "builtin.queue-backlog",
            "Queue backlog",
            Threshold("gauge", "queue.backlog", threshold=queue_backlog),
            severity="high",
            description="messages waiting (gauge queue.backlog)",
            for_="5m",
        ),
        make_rule(
            "builtin.message-processing",
            "Message processing failures",
            errors("consumer", consumer_error_ratio),
            severity="business",
            description="the share of failed message processing",
            for_="5m",
        ),
        make_rule(
            "builtin.campaign-success",
            "Low campaign success rate",
            Threshold("gauge", "campaign.success_rate", campaign_success_rate, op="<"),
            severity="business",
            description="campaign success rate (gauge campaign.success_rate)",
            for_="10m",
        ),
    ]
