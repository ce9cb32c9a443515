"""Built-in rules for the alert categories, thresholds configurable:
``pulsetrace.monitoring.alerts.add_builtin_rules(error_ratio=0.02)``.

What a process can see of itself: its health checks (the database of
``DATABASE_URL``, memory and CPU with the thresholds given to
``pulsetrace.health.check_memory``/``check_cpu``), its resident memory,
its operations' error ratios by span kind, 429 responses and latency
histograms over windows (:mod:`.conditions`), and gauges: those the
application sets (``pulsetrace.monitoring.set_gauge``), and where it sets
none, :func:`derived_gauges` from what pulsetrace records itself (the
queue backlog from the queue depths it reads, the campaign success rate
from the business metrics of every worker). "Service down" cannot be seen
from inside the process (Prometheus's ``up`` does).
"""

from __future__ import annotations

from typing import Optional, Union

from pulsetrace.monitoring.alerts.conditions import (
    HighMemory,
    LatencyDegradation,
    RateLimited,
    SlowQueries,
    UnusualTraffic,
)
from pulsetrace.monitoring.alerts.rules import Rule, Threshold, duration, make_rule

Duration = Union[int, float, str]

#: Messages of a campaign, delivered or failed, before its success rate
#: is judged (a campaign's first failures alone do not fire the rule).
MIN_CAMPAIGN_MESSAGES = 20
QUEUE_BACKLOG, CAMPAIGN_SUCCESS = "queue.backlog", "campaign.success_rate"


def derived_gauges() -> dict[str, float]:
    """The gauges the built-in rules read, from what pulsetrace records
    (each used only where the application sets no such gauge itself):

    - ``queue.backlog``: the most messages ready in one queue, of those
      pulsetrace reads (:func:`pulsetrace.messaging.queues`; none: absent);
    - ``campaign.success_rate``: the lowest success rate (delivered over
      delivered and failed, since the figures started) among the campaigns
      with at least :data:`MIN_CAMPAIGN_MESSAGES` such messages, over every
      worker of the application (``record_message(..., campaign_id=...)``;
      none: absent).
    """
    from pulsetrace import messaging
    from pulsetrace.monitoring import metrics_business

    out: dict[str, float] = {}
    ready = [int(q.get("messages_ready") or 0) for q in messaging.queues()]
    if ready:
        out[QUEUE_BACKLOG] = float(max(ready))
    campaigns = metrics_business.summary(metrics_business.merged())["campaigns"]
    rates = [
        c["success_rate"]
        for c in campaigns.values()
        if c.get("success_rate") is not None
        and c.get("delivered", 0) + c.get("failed", 0) >= MIN_CAMPAIGN_MESSAGES
    ]
    if rates:
        out[CAMPAIGN_SUCCESS] = float(min(rates))
    return out


def builtin_rules(
    error_ratio: float = 0.05,
    consumer_error_ratio: float = 0.10,
    queue_backlog: float = 1000,
    campaign_success_rate: float = 0.90,
    window: Duration = "5m",
    min_count: int = 20,
    latency_factor: float = 2.0,
    latency_baseline: Duration = "1h",
    latency_min_baseline: int = 100,
    latency_min: Duration = "100ms",
    slow_query: Duration = "1s",
    slow_queries: int = 10,
    memory_warning_bytes: Optional[int] = None,
    memory_warning_share: float = 0.8,
    rate_limited: int = 10,
    traffic_spike: float = 3.0,
    traffic_drop: float = 0.1,
    traffic_baseline: Duration = "1h",
    traffic_min_baseline: int = 100,
) -> list[Rule]:
    """The built-in rules (ids ``builtin.*``); ValueError naming a bad
    threshold. ``window``: the recent window of every windowed rule;
    ``min_count``: requests a window needs before its ratio or percentile
    is judged. See the README's alert section for each threshold."""
    seconds = duration(window, "window")
    degradation = LatencyDegradation(
        factor=latency_factor,
        window=seconds,
        baseline=duration(latency_baseline, "latency_baseline"),
        min_count=min_count,
        min_baseline=latency_min_baseline,
        min_s=duration(latency_min, "latency_min"),
    )
    traffic = UnusualTraffic(
        spike=traffic_spike,
        drop=traffic_drop,
        window=seconds,
        baseline=duration(traffic_baseline, "traffic_baseline"),
        min_baseline=traffic_min_baseline,
    )

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
            Threshold("gauge", QUEUE_BACKLOG, threshold=queue_backlog),
            severity="high",
            description="messages ready in the deepest queue (gauge queue.backlog)",
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
            Threshold("gauge", CAMPAIGN_SUCCESS, campaign_success_rate, op="<"),
            severity="business",
            description="the lowest campaign's success rate (gauge campaign.success_rate)",
            for_="10m",
        ),
        make_rule(
            "builtin.latency-degradation",
            "Performance degradation",
            degradation,
            severity="high",
            description="an operation's p99 against its own baseline",
            for_="5m",
        ),
        make_rule(
            "builtin.slow-queries",
            "Slow queries",
            SlowQueries(duration(slow_query, "slow_query"), slow_queries, seconds),
            severity="medium",
            team="dba",
            description="database calls slower than the slow-query duration",
        ),
        make_rule(
            "builtin.high-memory",
            "High memory use",
            HighMemory(memory_warning_bytes, memory_warning_share),
            severity="warning",
            description="resident memory (bytes) above the warning level",
            for_="5m",
        ),
        make_rule(
            "builtin.rate-limited",
            "Rate limit violations",
            RateLimited(rate_limited, seconds),
            severity="medium",
            description="requests refused with 429 (too many requests)",
        ),
        make_rule(
            "builtin.unusual-traffic",
            "Unusual traffic",
            traffic,
            severity="business",
            description="the request rate against its own baseline",
            for_="5m",
        ),
    ]
