"""Writes the Grafana dashboards of deploy/grafana/dashboards/ (the committed
JSON is what Grafana loads; edit this file, then run
``python deploy/grafana/generate.py``; tests/deploy checks they match).

Every PromQL expression reads pulsetrace's series or the recording rules of
deploy/prometheus/rules/recording.yml, filtered by the dashboard variables
``$job`` and ``$service`` (the ``service_name`` label, OTEL_SERVICE_NAME).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROM = {"type": "prometheus", "uid": "prometheus"}
JAEGER = {"type": "jaeger", "uid": "jaeger"}
SEL = 'job=~"$job", service_name=~"$service"'
RATE = "$__rate_interval"


def _target(expr: str, legend: str, ref: str, exemplar: bool = False) -> dict[str, Any]:
    return {
        "datasource": PROM,
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
        "exemplar": exemplar,
    }


def panel(
    title: str,
    targets: list[tuple[str, str]],
    unit: str = "short",
    kind: str = "timeseries",
    width: int = 12,
    exemplar: bool = False,
    description: str = "",
) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": PROM,
        "gridPos": {"h": 8, "w": width, "x": 0, "y": 0},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}}
        if kind == "timeseries"
        else {},
        "targets": [
            _target(expr, legend, chr(ord("A") + i), exemplar)
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def traces_panel() -> dict[str, Any]:
    return {
        "type": "table",
        "title": "Recent traces of the service (Jaeger)",
        "description": "Kept traces, as the tail sampler kept them (errors, slow, sampled).",
        "datasource": JAEGER,
        "gridPos": {"h": 8, "w": 24, "x": 0, "y": 0},
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {},
        "targets": [
            {
                "datasource": JAEGER,
                "queryType": "search",
                "service": "$service",
                "limit": 20,
                "refId": "A",
            }
        ],
    }


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        p["id"] = i
        x, row_h = x + w, max(row_h, h)
    return panels


def variables() -> dict[str, Any]:
    def var(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": PROM,
            "query": {"query": query, "refId": f"{name}-values"},
            "definition": query,
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"text": "All", "value": "$__all"},
            "sort": 1,
        }

    return {
        "list": [
            var("job", "job", "label_values(http_server_requests_total, job)"),
            var(
                "service",
                "service",
                'label_values(http_server_requests_total{job=~"$job"}, service_name)',
            ),
        ]
    }


def dashboard(uid: str, title: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["pulsetrace"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": variables(),
        "annotations": {"list": []},
        "links": [],
        "panels": layout(panels),
    }


def overview() -> dict[str, Any]:
    return dashboard(
        "pulsetrace-overview",
        "pulsetrace / Service overview",
        [
            panel(
                "Throughput",
                [(f"service:http_server_requests:rate5m{{{SEL}}}", "{{service_name}}")],
                "reqps",
                "stat",
                6,
            ),
            panel(
                "Error ratio",
                [(f"service:http_server_errors:ratio_rate5m{{{SEL}}}", "{{service_name}}")],
                "percentunit",
                "stat",
                6,
                description="5xx responses and unhandled exceptions over all requests (5 min).",
            ),
            panel(
                "Firing alerts",
                [('count by (severity) (ALERTS{alertstate="firing"})', "{{severity}}")],
                "short",
                "stat",
                6,
            ),
            panel(
                "Targets up",
                [('sum(up{job=~"$job"})', "up"), ('count(up{job=~"$job"})', "targets")],
                "short",
                "stat",
                6,
            ),
            panel(
                "Requests per second by route",
                [(f"operation:http_server_requests:rate5m{{{SEL}}}", "{{operation}}")],
                "reqps",
            ),
            panel(
                "Error ratio by route",
                [(f"operation:http_server_errors:ratio_rate5m{{{SEL}}}", "{{operation}}")],
                "percentunit",
            ),
            panel(
                "p50 latency by route",
                [
                    (
                        f"operation:http_server_request_duration_seconds:p50_5m{{{SEL}}}",
                        "{{operation}}",
                    )
                ],
                "s",
            ),
            panel(
                "p99 latency by route",
                [
                    (
                        f"operation:http_server_request_duration_seconds:p99_5m{{{SEL}}}",
                        "{{operation}}",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (le) (rate("
                        f"http_server_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                        "all routes",
                    ),
                ],
                "s",
                exemplar=True,
                description="Exemplars link a bucket to a kept trace in Jaeger.",
            ),
            panel(
                "Responses by status class",
                [
                    (
                        "sum by (status_class) (rate("
                        f"http_server_request_duration_seconds_count{{{SEL}}}[{RATE}]))",
                        "{{status_class}}",
                    )
                ],
                "reqps",
                width=24,
            ),
            traces_panel(),
        ],
    )


def dependencies() -> dict[str, Any]:
    return dashboard(
        "pulsetrace-dependencies",
        "pulsetrace / Dependencies",
        [
            panel(
                "Database p99 by operation",
                [
                    (
                        f"operation:db_client_operation_duration_seconds:p99_5m{{{SEL}}}",
                        "{{db_system_name}} {{operation}}",
                    )
                ],
                "s",
                exemplar=True,
            ),
            panel(
                "Database operations per second",
                [
                    (
                        "sum by (db_system_name, operation) (rate("
                        f"db_client_operations_total{{{SEL}}}[{RATE}]))",
                        "{{db_system_name}} {{operation}}",
                    )
                ],
                "ops",
            ),
            panel(
                "Database error ratio",
                [
                    (
                        f"operation:db_client_errors:ratio_rate5m{{{SEL}}}",
                        "{{db_system_name}} {{operation}}",
                    )
                ],
                "percentunit",
            ),
            panel(
                "Redis p99 by command",
                [
                    (
                        "histogram_quantile(0.99, sum by (operation, le) (rate("
                        "db_client_operation_duration_seconds_bucket"
                        f'{{{SEL}, db_system_name="redis"}}[{RATE}])))',
                        "{{operation}}",
                    )
                ],
                "s",
            ),
            panel(
                "Outbound HTTP p99 by server",
                [
                    (
                        f"server:http_client_request_duration_seconds:p99_5m{{{SEL}}}",
                        "{{server_address}}",
                    )
                ],
                "s",
                exemplar=True,
            ),
            panel(
                "Outbound HTTP requests by server and status",
                [
                    (
                        "sum by (server_address, http_response_status_code) (rate("
                        f"http_client_request_duration_seconds_count{{{SEL}}}[{RATE}]))",
                        "{{server_address}} {{http_response_status_code}}",
                    )
                ],
                "reqps",
            ),
            panel(
                "Messaging p99 (publish, process)",
                [
                    (
                        "histogram_quantile(0.99, sum by (messaging_destination_name, le) (rate("
                        f"messaging_client_operation_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                        "publish {{messaging_destination_name}}",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (messaging_destination_name, le) (rate("
                        f"messaging_process_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                        "process {{messaging_destination_name}}",
                    ),
                ],
                "s",
            ),
            panel(
                "RabbitMQ queue depth",
                [
                    (f"rabbitmq_queue_messages_ready{{{SEL}}}", "{{vhost}} {{queue}} ready"),
                    (f"rabbitmq_queue_consumers{{{SEL}}}", "{{vhost}} {{queue}} consumers"),
                ],
                "short",
            ),
        ],
    )


def business() -> dict[str, Any]:
    return dashboard(
        "pulsetrace-business",
        "pulsetrace / Business metrics",
        [
            panel(
                "Messages per minute by status",
                [
                    (
                        "sum by (status) (rate("
                        f"pulsetrace_business_messages_total{{{SEL}}}[{RATE}])) * 60",
                        "{{status}}",
                    )
                ],
                "short",
            ),
            panel(
                "Delivery success (1 h) and failure (15 min) ratios",
                [
                    (
                        f"service:pulsetrace_business_messages_delivered:ratio_rate1h{{{SEL}}}",
                        "delivered, 1 h",
                    ),
                    (
                        f"service:pulsetrace_business_messages_failed:ratio_rate15m{{{SEL}}}",
                        "failed, 15 min",
                    ),
                ],
                "percentunit",
                description="Per-campaign success rates: /health/business-metrics.",
            ),
            panel(
                "Messages by type (total in range)",
                [
                    (
                        "sum by (message_type) (increase("
                        f"pulsetrace_business_messages_total{{{SEL}}}[$__range]))",
                        "{{message_type}}",
                    )
                ],
                "short",
                "bargauge",
            ),
            panel(
                "External API calls by outcome",
                [
                    (
                        "sum by (api, outcome) (rate("
                        f"pulsetrace_business_api_calls_total{{{SEL}}}[{RATE}]))",
                        "{{api}} {{outcome}}",
                    )
                ],
                "reqps",
            ),
            panel(
                "External API p99",
                [
                    (
                        "histogram_quantile(0.99, sum by (api, operation, le) (rate("
                        f"pulsetrace_business_api_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                        "{{api}} {{operation}}",
                    )
                ],
                "s",
            ),
            panel(
                "Authentication events",
                [
                    (
                        "sum by (event, outcome) (rate("
                        f"pulsetrace_business_auth_events_total{{{SEL}}}[{RATE}]))",
                        "{{event}} {{outcome}}",
                    )
                ],
                "ops",
            ),
            panel(
                "Contacts added and removed (in range)",
                [
                    (
                        "sum by (change) (increase("
                        f"pulsetrace_business_contacts_total{{{SEL}}}[$__range]))",
                        "{{change}}",
                    )
                ],
                "short",
                "stat",
            ),
            panel(
                "Top templates (in range)",
                [
                    (
                        "topk(10, sum by (template) (increase("
                        f"pulsetrace_business_template_uses_total{{{SEL}}}[$__range])))",
                        "{{template}}",
                    )
                ],
                "short",
                "bargauge",
            ),
        ],
    )


def agent() -> dict[str, Any]:
    def counter(name: str, legend: str) -> tuple[str, str]:
        return (f"sum by (instance) (rate({name}{{{SEL}}}[{RATE}]))", f"{legend} {{{{instance}}}}")

    return dashboard(
        "pulsetrace-agent",
        "pulsetrace / Agent health",
        [
            panel(
                "Spans handed to exporters, and lost",
                [
                    counter("pulsetrace_spans_handed_to_exporters_total", "handed"),
                    counter("pulsetrace_spans_delivery_failed_total", "delivery failed"),
                ],
                "ops",
            ),
            panel(
                "Spans and traces dropped, by reason",
                [
                    counter("pulsetrace_spans_dropped_intake_full_total", "intake full"),
                    counter("pulsetrace_spans_dropped_export_full_total", "export queue full"),
                    counter("pulsetrace_spans_dropped_trace_limit_total", "spans per trace"),
                    counter("pulsetrace_traces_dropped_export_full_total", "traces, queue full"),
                ],
                "ops",
            ),
            panel(
                "Export failures",
                [counter("pulsetrace_export_failures_total", "failures")],
                "ops",
            ),
            panel(
                "Export queue fill",
                [
                    (
                        f"pulsetrace_export_queue_spans{{{SEL}}} / "
                        f"pulsetrace_export_queue_max_spans{{{SEL}}}",
                        "{{instance}}",
                    )
                ],
                "percentunit",
            ),
            panel(
                "Traces kept, by policy",
                [
                    counter("pulsetrace_traces_kept_error_total", "error"),
                    counter("pulsetrace_traces_kept_slow_total", "slow"),
                    counter("pulsetrace_traces_kept_adaptive_total", "adaptive"),
                    counter("pulsetrace_traces_kept_probabilistic_total", "probabilistic"),
                    counter("pulsetrace_traces_dropped_sampled_out_total", "sampled out"),
                ],
                "ops",
            ),
            panel(
                "Metric keys used",
                [
                    (
                        f"pulsetrace_registry_keys{{{SEL}}}"
                        f" / pulsetrace_registry_max_keys{{{SEL}}}",
                        "{{instance}}",
                    ),
                ],
                "percentunit",
                description="Beyond PULSETRACE_MAX_METRIC_KEYS new keys fold into (overflow).",
            ),
            panel(
                "Open traces",
                [(f"pulsetrace_open_traces{{{SEL}}}", "{{instance}}")],
                "short",
            ),
            panel(
                "Process resident memory",
                [(f"process_resident_memory_bytes{{{SEL}}}", "rss {{instance}}")],
                "bytes",
            ),
            panel(
                "Process CPU",
                [counter("process_cpu_seconds_total", "cpu")],
                "percentunit",
            ),
        ],
    )


DASHBOARDS = {
    "overview.json": overview,
    "dependencies.json": dependencies,
    "business.json": business,
    "agent.json": agent,
}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main() -> None:
    out = HERE / "dashboards"
    out.mkdir(exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text)


if __name__ == "__main__":
    main()
