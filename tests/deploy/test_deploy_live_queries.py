"""deploy/prometheus and the Grafana dashboards against real servers: a real
Prometheus, started with deploy/prometheus/prometheus.yml and its rules,
scrapes a real pulsetrace-instrumented Flask app (stack_app.py under
``pulsetrace-run``: requests, a failing one, an SQL query, an outbound HTTP
call, business metrics). Every PromQL expression of the rules and of every
dashboard panel is then evaluated through Prometheus' HTTP query API: each
parses, every rule evaluates without error, the metric names they read are
ones pulsetrace exposes, and the core ones (request rate, error ratio, p50
and p99 per route, dependencies, delivery ratio) return the right data.

The copy of prometheus.yml Prometheus runs differs from the committed one
only where a test must: scrape and evaluation every second (not 15 s), the
target file pointing at the test app, Alertmanager and the jobs of the
other servers (collectors, Jaeger: not running here) left out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    PROMETHEUS,
    REPO,
    dashboard_expressions,
    grafana_to_promql,
    load_yaml,
    metric_names,
    rule_expressions,
    tool,
)

from servers import free_port, stop, wait_for_port

HERE = Path(__file__).parent
RUN = shutil.which("pulsetrace-run") or str(Path(sys.executable).with_name("pulsetrace-run"))
SERVICE = "deploy-test"
ORDERS = "GET /orders/<int:order_id>"


@dataclass
class Stack:
    app_url: str
    prom_url: str
    prom: subprocess.Popen
    app: subprocess.Popen

    def api(self, path: str, **params: Any) -> Any:
        url = f"{self.prom_url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                data = json.load(r)
        except urllib.error.HTTPError as e:
            data = json.load(e)
        return data

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["status"] == "success", (expr, data)
        return data["data"]["result"]

    def values(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def traffic(app_url: str) -> None:
    for path in ["/orders/1", "/orders/2", "/query", "/call", "/business"]:
        assert get(app_url + path) == 200, path
    assert get(app_url + "/fail") == 500


def wait_until(what: str, check: Any, stack: Stack, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert stack.prom.poll() is None, "Prometheus exited"
        assert stack.app.poll() is None, "the app exited"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def prometheus_config(work: Path, metrics_port: int) -> Path:
    config = load_yaml(work / "prometheus.yml")
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    closed = free_port()  # nothing listens: alerts go nowhere
    config["alerting"]["alertmanagers"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{closed}"]}
    ]
    config["scrape_configs"] = [
        j for j in config["scrape_configs"] if j["job_name"] == "pulsetrace"
    ]
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    (work / "targets" / "pulsetrace.yml").write_text(
        yaml.safe_dump([{"targets": [f"127.0.0.1:{metrics_port}"], "labels": {"env": "test"}}])
    )
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("deploy-prometheus")
    port, metrics_port, prom_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))}
    env.update(
        PROMETHEUS_ENABLED="true",
        PULSETRACE_METRICS_ADDR=f"127.0.0.1:{metrics_port}",
        OTEL_TRACES_EXPORTER="none",
        OTEL_SERVICE_NAME=SERVICE,
        PULSETRACE_WORKERS_DIR=str(tmp / "workers"),
    )
    app = subprocess.Popen(
        [RUN, sys.executable, str(HERE / "stack_app.py"), str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    prom = None
    try:
        assert app.stdout is not None
        assert app.stdout.readline().split() == ["ready", f"127.0.0.1:{metrics_port}"]
        app_url = f"http://127.0.0.1:{port}"
        traffic(app_url)  # the series exist before the first scrape
        work = tmp / "prometheus"
        shutil.copytree(PROMETHEUS, work)
        config = prometheus_config(work, metrics_port)
        r = subprocess.run(
            [tool("promtool"), "check", "config", str(config)], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stdout + r.stderr
        prom = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(prom_port, prom)
        s = Stack(app_url, f"http://127.0.0.1:{prom_port}", prom, app)
        # Listening is not ready: until its storage is open Prometheus
        # answers 503 to queries.
        wait_until("Prometheus to be ready", lambda: get(f"{s.prom_url}/-/ready") == 200, s)
        wait_until("the first scrape", lambda: s.values('up{job="pulsetrace"}', "job"), s)
        # Requests after the first scrape: rate() sees them as increases.
        for _ in range(3):
            traffic(app_url)
            time.sleep(1.2)
        wait_until(
            "the recorded p99 of every route",
            lambda: len(
                s.values("operation:http_server_request_duration_seconds:p99_5m", "operation")
            )
            >= 5
            and s.values("service:pulsetrace_business_messages_failed:ratio_rate15m", "job"),
            s,
        )
        yield s
    finally:
        if prom is not None:
            stop(prom)
        stop(app)
        if app.stdout is not None:
            app.stdout.close()


def test_prometheus_scrapes_the_app_with_the_deploy_configuration(stack):
    (target,) = stack.api("targets")["data"]["activeTargets"]
    assert (target["labels"]["job"], target["health"], target["lastError"]) == (
        "pulsetrace",
        "up",
        "",
    )
    assert target["labels"]["env"] == "test"


def test_every_rule_loads_and_evaluates_without_error(stack):
    groups = stack.api("rules")["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    assert loaded == {name for name, _ in rule_expressions()}

    def evaluated() -> bool:
        return all(r.get("lastEvaluation", "").startswith("20") for g in groups for r in g["rules"])

    wait_until("an evaluation of every rule", evaluated, stack, timeout=30)
    for g in stack.api("rules")["data"]["groups"]:
        for r in g["rules"]:
            assert (r["name"], r["health"], r.get("lastError", "")) == (r["name"], "ok", "")


@pytest.mark.parametrize("where, expr", rule_expressions() + dashboard_expressions())
def test_every_expression_parses_in_prometheus(stack, where, expr):
    data = stack.api("query", query=grafana_to_promql(expr))
    assert data["status"] == "success", (where, expr, data.get("error"))


def test_every_metric_an_expression_reads_is_one_pulsetrace_exposes(stack):
    """A misspelled series parses and silently returns nothing: every name
    is a recording rule's, one the app's scrape has, or a family the README
    documents (those the test app does not make: messaging, RabbitMQ)."""
    recorded = {name for name, _ in rule_expressions() if ":" in name}
    scraped = set(stack.api("label/__name__/values")["data"])
    readme = (REPO / "README.md").read_text()
    builtin = {"up", "ALERTS"}
    for where, expr in rule_expressions() + dashboard_expressions():
        for name in metric_names(grafana_to_promql(expr)):
            family = name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
            assert (
                name in recorded or name in scraped or name in builtin or f"`{family}`" in readme
            ), (where, name)


def test_the_core_series_return_the_app_s_traffic(stack):
    # Request rate per route and for the service.
    rate = stack.values(
        f'operation:http_server_requests:rate5m{{service_name="{SERVICE}"}}', "operation"
    )
    assert {ORDERS, "GET /query", "GET /call", "GET /fail", "GET /business"} <= set(rate)
    assert all(v > 0 for v in rate.values()), rate
    assert stack.values("service:http_server_requests:rate5m", "service_name")[SERVICE] > 0
    # Error ratio: /fail always fails, the others never.
    errors = stack.values("operation:http_server_errors:ratio_rate5m", "operation")
    assert errors["GET /fail"] == 1
    assert errors[ORDERS] == errors["GET /query"] == 0
    service_ratio = stack.values("service:http_server_errors:ratio_rate5m", "service_name")[SERVICE]
    assert 0 < service_ratio < 1
    # p50 and p99 per route: a latency, under the test's own timeout.
    for q in ("p50", "p99"):
        latency = stack.values(
            f"operation:http_server_request_duration_seconds:{q}_5m", "operation"
        )
        assert 0 < latency[ORDERS] < 5 and 0 < latency["GET /call"] < 5, latency
    # Dependencies: the SQL query, the outbound HTTP call.
    db = stack.values("operation:db_client_operation_duration_seconds:p99_5m", "operation")
    assert 0 < db["SELECT orders"] < 5, db
    http = stack.values("server:http_client_request_duration_seconds:p99_5m", "server_address")
    assert 0 < http["127.0.0.1"] < 5, http
    # Business: each /business records one delivered and one failed message.
    failed = stack.values(
        "service:pulsetrace_business_messages_failed:ratio_rate15m", "service_name"
    )
    assert failed[SERVICE] == pytest.approx(0.5)
    api = stack.values("api:pulsetrace_business_api_calls_failed:ratio_rate15m", "api")
    assert api["evolution"] == pytest.approx(0.5)


OVERVIEW_CORE = {
    "Throughput",
    "Error ratio",
    "Requests per second by route",
    "Error ratio by route",
    "p50 latency by route",
    "p99 latency by route",
}


def test_the_overview_dashboard_s_core_panels_show_data(stack):
    board = json.loads((REPO / "deploy/grafana/dashboards/overview.json").read_text())
    seen = set()
    for panel in board["panels"]:
        if panel["title"] not in OVERVIEW_CORE:
            continue
        seen.add(panel["title"])
        for target in panel["targets"]:
            result = stack.query(grafana_to_promql(target["expr"]))
            assert result, (panel["title"], target["expr"])
    assert seen == OVERVIEW_CORE
