"""deploy/jaeger/config.yaml run by a real Jaeger v2 (the binary ``make
jaeger`` builds): it starts as written (its ports moved to free ones, its
Badger storage in a temporary folder), stores what pulsetrace exports to it
over OTLP/gRPC and OTLP/HTTP, serves it through the query API Grafana's
Jaeger data source reads, and answers its health check and metrics."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from jaeger_server import Jaeger

import pulsetrace
from pulsetrace.export.otlp import config_from_env
from pulsetrace.export.otlp_exporter import OtlpSpanExporter

from conftest import fresh

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "jaeger" / "config.yaml"
#: The ports the deploy configuration names, and the test's name for each.
PORTS = {
    4517: "otlp_grpc",
    4518: "otlp_http",
    16686: "query",
    16685: "query_grpc",
    8891: "metrics",
    13136: "health",
}


def deploy_config(ports: dict[str, int]) -> str:
    text = DEPLOY.read_text()
    for fixed, name in PORTS.items():
        # `host:port` endpoints, and the metrics reader's `port: N`.
        text, n = re.subn(rf"(:|port: ){fixed}\b", rf"\g<1>{ports[name]}", text)
        assert n, f"{DEPLOY} no longer listens on {fixed}"
    return text


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    folder = tmp_path_factory.mktemp("deploy-jaeger")
    j = Jaeger(folder, deploy_config, env={"JAEGER_BADGER_DIR": str(folder / "badger")})
    j.start()
    try:
        yield j
    finally:
        j.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_the_deploy_jaeger_stores_pulsetrace_traces(jaeger, protocol, added):
    fresh(sample_rate=1.0, service_name="deploy-check")
    endpoint = jaeger.grpc_endpoint if protocol == "grpc" else jaeger.http_endpoint
    exp = OtlpSpanExporter(
        config_from_env(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
        )
    )
    added.append(exp)
    pulsetrace.add_exporter(exp)
    with pulsetrace.start_span("GET /orders", kind="server") as root:
        with pulsetrace.start_span("SELECT orders", kind="client"):
            pass
    assert pulsetrace.flush(10)
    spans = jaeger.wait_for_trace(f"{root.trace_id:032x}", 2)
    assert sorted(s.name for s in spans) == ["GET /orders", "SELECT orders"]
    assert "deploy-check" in jaeger.services()
    (child,) = [s for s in spans if s.name == "SELECT orders"]
    assert child.parent_id == f"{root.span_id:016x}"
    assert {s.service for s in spans} == {"deploy-check"}


def test_the_deploy_jaeger_answers_its_health_check_and_metrics(jaeger):
    base = "http://127.0.0.1:{}"
    with urllib.request.urlopen(base.format(jaeger.ports["health"]) + "/status", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(base.format(jaeger.ports["metrics"]) + "/metrics", timeout=10) as r:
        text = r.read().decode()
    # What deploy/prometheus scrapes from it: the collector's own series.
    assert re.search(r"^otelcol_receiver_accepted_spans", text, re.M), text[:2000]
