"""Structural checks of the deploy/ configuration whose servers cannot run
here (Grafana, the OpenTelemetry Collector, Jaeger, Fluent Bit, Docker):
each check is one that a broken file fails. Grafana dashboards: generated
from generate.py, every panel with a data source and queries, provisioned
data sources matching them. Collectors and Jaeger: every pipeline's
components defined, every listener on an explicit (loopback by default)
address, the tiers' ports agreeing with each other and with Prometheus'
scrape targets. Fluent Bit: a real pulsetrace log line parses with its
parser, and nothing drops trace_id/span_id. Everywhere: no secret written
in a file, no default password. Compose: every file it mounts exists and
every configuration file is mounted."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from deploy_support import DASHBOARDS, DEPLOY, PROMETHEUS, REPO, load_yaml, panels

import pulsetrace
import pulsetrace.logging as plog

from conftest import fresh

GRAFANA = DEPLOY / "grafana"
ENV_REF = re.compile(r"\$\{env:(\w+)(?::-([^}]*))?\}")


# ---------------------------------------------------------------------------
# Grafana
# ---------------------------------------------------------------------------


def test_the_committed_dashboards_are_what_generate_py_writes(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", "import generate, json; print(json.dumps(generate.render()))"],
        cwd=GRAFANA,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    rendered = json.loads(r.stdout)
    assert sorted(rendered) == sorted(p.name for p in DASHBOARDS)
    for path in DASHBOARDS:
        assert path.read_text() == rendered[path.name], f"{path.name}: run generate.py"


def datasources() -> dict[str, dict[str, Any]]:
    config = load_yaml(GRAFANA / "provisioning" / "datasources" / "datasources.yml")
    return {d["uid"]: d for d in config["datasources"]}


def test_provisioned_data_sources_are_prometheus_and_jaeger_on_their_ports():
    sources = datasources()
    assert {uid: d["type"] for uid, d in sources.items()} == {
        "prometheus": "prometheus",
        "jaeger": "jaeger",
    }
    assert sources["prometheus"]["url"] == "http://127.0.0.1:9090"
    jaeger = load_yaml(DEPLOY / "jaeger" / "config.yaml")
    query = jaeger["extensions"]["jaeger_query"]["http"]["endpoint"]
    assert sources["jaeger"]["url"] == f"http://{resolve(query)}"
    # Exemplars (trace_id on pulsetrace's buckets) open Jaeger.
    (dest,) = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert dest == {"name": "trace_id", "datasourceUid": "jaeger"}
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")
    (p,) = provider["providers"]
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{p['options']['path']}:ro" in mounts


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_panel_has_a_data_source_and_queries(path):
    board = json.loads(path.read_text())
    sources = datasources()
    assert board["uid"] and board["title"] and board["panels"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in panels(board):
        where = f"{path.name} / {p.get('title')}"
        assert p["datasource"]["uid"] in sources, where
        assert p["datasource"]["type"] == sources[p["datasource"]["uid"]]["type"], where
        assert p["targets"], where
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), where
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"], where
            if p["datasource"]["type"] == "prometheus":
                assert t["expr"].strip(), where
            else:
                assert t["queryType"] == "search" and t["service"], where
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, where
    # Variables read the service names pulsetrace exposes.
    names = {v["name"] for v in board["templating"]["list"]}
    assert names == {"job", "service"}


def test_the_four_dashboards_of_the_stack():
    titles = {json.loads(p.read_text())["title"] for p in DASHBOARDS}
    assert titles == {
        "pulsetrace / Service overview",
        "pulsetrace / Dependencies",
        "pulsetrace / Business metrics",
        "pulsetrace / Agent health",
    }


# ---------------------------------------------------------------------------
# No secrets, no default passwords
# ---------------------------------------------------------------------------

SECRET_KEYS = re.compile(
    r"(password|passwd|secret|token|api_key|apikey|credentials|auth_password)"
    r"[\"']?\s*[:=]\s*[\"']?([^\s\"',}]+)",
    re.IGNORECASE,
)
ALLOWED_VALUE = re.compile(
    r"^(\$\{[A-Z_]+(:\?[^}]*)?\}?|\$\{env:\w+\}|/run/secrets/\w+|secrets/\w+|"
    r"\|?|>-?|true|false|on|off|\[\]|\.\.\.|kibana_system)$"
)


def deploy_files() -> list[Path]:
    return [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix != ".pyc"]


def test_no_secret_or_default_password_is_written_in_deploy():
    """A key naming a secret has as its value a file path, an environment
    variable (never with a default), or nothing: no literal."""
    files = deploy_files()
    assert len(files) >= 15 and DEPLOY / "docker-compose.yml" in files  # not vacuous
    found = []
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith(("#", "//")):
                continue
            for m in SECRET_KEYS.finditer(line):
                key, value = m.group(1), m.group(2)
                if key.lower().endswith("_file") or ALLOWED_VALUE.match(value):
                    continue
                if m.group(0).lower().startswith(("password_file", "auth_password_file")):
                    continue
                found.append(f"{path.relative_to(DEPLOY)}:{n}: {line.strip()}")
    assert not found, found


def test_the_secret_scan_catches_a_written_password():
    assert SECRET_KEYS.search("  smtp_auth_password: hunter2")
    m = SECRET_KEYS.search("GF_SECURITY_ADMIN_PASSWORD: admin123")
    assert m and not ALLOWED_VALUE.match(m.group(2))
    m = SECRET_KEYS.search("ELASTIC_PASSWORD: ${ELASTIC_PASSWORD:-changeme}")
    assert m and not ALLOWED_VALUE.match(m.group(2))


def test_grafana_s_admin_password_comes_from_a_secret_file_only():
    grafana = load_yaml(DEPLOY / "docker-compose.yml")["services"]["grafana"]
    env = grafana["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    assert (DEPLOY / ".gitignore").read_text().split() == ["secrets/", "alertmanager/secrets/"]


# ---------------------------------------------------------------------------
# OpenTelemetry Collector tiers and Jaeger
# ---------------------------------------------------------------------------


def resolve(value: Any, env: dict[str, str] | None = None) -> str:
    """A collector value with ``${env:NAME:-default}`` references resolved
    (from ``env``, else their default; a reference without default fails)."""

    def sub(m: re.Match) -> str:
        if env and m.group(1) in env:
            return env[m.group(1)]
        assert m.group(2) is not None, f"${{env:{m.group(1)}}} has no default"
        return m.group(2)

    return ENV_REF.sub(sub, str(value))


COLLECTORS = {
    "agent": DEPLOY / "otel-collector" / "agent.yaml",
    "gateway": DEPLOY / "otel-collector" / "gateway.yaml",
    "jaeger": DEPLOY / "jaeger" / "config.yaml",
}


def listeners(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, host:port) of every server the configuration opens: receiver
    protocols, extensions, the telemetry endpoint."""
    out = []
    for kind in ("receivers", "extensions"):
        for name, comp in (config.get(kind) or {}).items():

            def walk(node: Any, where: str) -> None:
                if isinstance(node, dict):
                    for k, v in node.items():
                        if k == "endpoint":
                            out.append((where, v))
                        elif k not in ("storage", "backends"):
                            walk(v, f"{where}.{k}")

            walk(comp, f"{kind}.{name}")
    for reader in config["service"]["telemetry"]["metrics"]["readers"]:
        prom = reader["pull"]["exporter"]["prometheus"]
        out.append(("service.telemetry", f"{prom['host']}:{prom['port']}"))
    return out


def pipeline_problems(config: dict[str, Any]) -> list[str]:
    """What the collector would refuse, or what is wrong in a pipeline: an
    extension, receiver, processor or exporter used but not defined, one
    defined but unused, a pipeline without receivers or exporters, the
    memory limiter not first, no batching."""
    problems = []
    service = config["service"]
    for ext in service.get("extensions", []):
        if ext not in config.get("extensions", {}):
            problems.append(f"extension {ext} is not defined")
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipeline in service["pipelines"].items():
        if not pipeline.get("receivers") or not pipeline.get("exporters"):
            problems.append(f"pipeline {name} lacks receivers or exporters")
        for kind in used:
            for comp in pipeline.get(kind, []):
                if comp not in (config.get(kind) or {}):
                    problems.append(f"pipeline {name}: {kind[:-1]} {comp} is not defined")
                used[kind].add(comp)
        procs = pipeline.get("processors", [])
        if "memory_limiter" in procs and procs[0] != "memory_limiter":
            problems.append(f"pipeline {name}: memory_limiter is not first")
        if "batch" not in procs:
            problems.append(f"pipeline {name}: no batch processor")
    for kind, names in used.items():
        for unused in sorted(set(config.get(kind) or {}) - names):
            problems.append(f"{kind[:-1]} {unused} is defined but unused")
    return problems


@pytest.mark.parametrize("tier", COLLECTORS)
def test_every_pipeline_uses_components_that_are_defined(tier):
    config = load_yaml(COLLECTORS[tier])
    assert pipeline_problems(config) == []
    assert "memory_limiter" in config["processors"] or tier == "jaeger"


def test_the_pipeline_check_catches_undefined_and_misordered_components():
    config = load_yaml(COLLECTORS["agent"])
    traces = config["service"]["pipelines"]["traces"]
    traces["processors"] = ["batch", "memory_limiter", "attributes/missing"]
    del config["exporters"]["loadbalancing"]
    config["receivers"]["zipkin"] = {}
    assert pipeline_problems(config) == [
        "pipeline traces: processor attributes/missing is not defined",
        "pipeline traces: exporter loadbalancing is not defined",
        "pipeline traces: memory_limiter is not first",
        "receiver zipkin is defined but unused",
    ]


def listener_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    for where, endpoint in listeners(config):
        host, _, port = resolve(endpoint).rpartition(":")
        if host != "127.0.0.1" or not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"{where}: {endpoint}")
    return problems


@pytest.mark.parametrize("tier", COLLECTORS)
def test_every_listener_binds_an_explicit_loopback_address_by_default(tier):
    config = load_yaml(COLLECTORS[tier])
    assert len(listeners(config)) >= 3
    assert listener_problems(config) == []


def test_the_listener_check_catches_a_wildcard_or_implicit_address():
    config = load_yaml(COLLECTORS["agent"])
    config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] = "0.0.0.0:4317"
    config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] = ":4318"
    assert listener_problems(config) == [
        "receivers.otlp.protocols.grpc: 0.0.0.0:4317",
        "receivers.otlp.protocols.http: :4318",
    ]


def ports(tier: str, env: dict[str, str] | None = None) -> set[int]:
    return {
        int(resolve(e, env).rpartition(":")[2]) for _, e in listeners(load_yaml(COLLECTORS[tier]))
    }


def test_the_tiers_ports_agree_with_each_other_and_with_prometheus():
    agent = load_yaml(COLLECTORS["agent"])
    gateway = load_yaml(COLLECTORS["gateway"])
    jaeger = load_yaml(COLLECTORS["jaeger"])
    # pulsetrace's default OTLP endpoint (http://localhost:4317) is the agent.
    assert resolve(agent["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]).endswith(":4317")
    assert "`http://localhost:4317` (grpc)" in (REPO / "README.md").read_text()
    # The agent balances by trace id over the gateways compose starts.
    lb = agent["exporters"]["loadbalancing"]
    assert lb["routing_key"] == "traceID"
    compose = load_yaml(DEPLOY / "docker-compose.yml")["services"]
    gateways = [s for name, s in compose.items() if name.startswith("otel-gateway")]
    grpc = gateway["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert sorted(lb["resolver"]["static"]["hostnames"]) == sorted(
        resolve(grpc, g["environment"]) for g in gateways
    )
    # The gateways send to Jaeger's OTLP receiver.
    jaeger_grpc = resolve(jaeger["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])
    assert gateway["exporters"]["otlp/jaeger"]["endpoint"] == jaeger_grpc
    # Jaeger's query API and exporter use a storage backend it defines.
    backends = jaeger["extensions"]["jaeger_storage"]["backends"]
    assert jaeger["extensions"]["jaeger_query"]["storage"]["traces"] in backends
    assert jaeger["exporters"]["jaeger_storage_exporter"]["trace_storage"] in backends
    # No two servers on one host share a port (everything on 127.0.0.1).
    every = [
        *ports("agent"),
        *(p for g in gateways for p in ports("gateway", g["environment"])),
        *ports("jaeger"),
    ]
    assert len(every) == len(set(every)), sorted(every)
    assert not set(every) & {9090, 9093, 3001, 9464, 24224, 2020, 9200, 5601}
    # Prometheus scrapes each collector's and Jaeger's own metrics.
    scrape = load_yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"]
    targets = {
        t
        for job in scrape
        if job["job_name"] in ("otel-collector", "jaeger")
        for sc in job["static_configs"]
        for t in sc["targets"]
    }

    def telemetry(tier: str, env: dict[str, str] | None = None) -> str:
        return resolve(listeners(load_yaml(COLLECTORS[tier]))[-1][1], env)

    assert targets == {
        telemetry("agent"),
        *(telemetry("gateway", g["environment"]) for g in gateways),
        telemetry("jaeger"),
    }


# ---------------------------------------------------------------------------
# Fluent Bit
# ---------------------------------------------------------------------------

FLUENT = DEPLOY / "logs" / "fluent-bit.yaml"


def strftime_to_python(fmt: str) -> str:
    # Fluent Bit's %L is the fraction of a second; Python's %f reads it.
    return fmt.replace("%L", "%f")


@pytest.fixture
def log_line() -> Any:
    fresh(service_name="api")
    buf = io.StringIO()
    plog.configure(stream=buf, level="info")
    try:
        with pulsetrace.start_span("GET /orders", kind="server"):
            logging.getLogger("orders").error("order failed", extra={"orderId": 7})
    finally:
        plog.unconfigure()
    (line,) = buf.getvalue().splitlines()
    return json.loads(line)


def test_a_real_pulsetrace_log_line_parses_with_the_pipeline_s_parser(log_line):
    config = load_yaml(FLUENT)
    parsers = {p["name"]: p for p in config["parsers"]}
    inputs = config["pipeline"]["inputs"]
    tail = next(i for i in inputs if i["name"] == "tail")
    parser = parsers[tail["parser"]]
    assert parser["format"] == "json"
    stamp = log_line[parser["time_key"]]
    datetime.strptime(stamp, strftime_to_python(parser["time_format"]))
    assert parser["time_keep"] is True  # the record keeps its @timestamp
    assert re.fullmatch(r"[0-9a-f]{32}", log_line["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", log_line["span_id"])


def test_the_log_pipeline_routes_every_input_and_keeps_the_trace_fields():
    config = load_yaml(FLUENT)
    pipeline = config["pipeline"]
    tags = []
    for i in pipeline["inputs"]:
        tags.append(i.get("tag") or i.get("tag_prefix") + "app")
    for f in [*pipeline.get("filters", []), *pipeline["outputs"]]:
        pattern = re.compile(re.escape(f["match"]).replace(r"\*", ".*"))
        assert any(pattern.fullmatch(t) for t in tags), f
    for t in tags:
        assert any(
            re.fullmatch(re.escape(o["match"]).replace(r"\*", ".*"), t) for o in pipeline["outputs"]
        ), t
    for f in pipeline.get("filters", []):
        for key in ("remove", "remove_wildcard", "rename", "hard_rename", "remove_regex"):
            assert not re.search(r"\b(trace_id|span_id)\b", str(f.get(key, ""))), f
    # Listeners on an explicit address: the env default is loopback.
    env = config["env"]

    def value(v: Any) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], str(v))

    forward = next(i for i in pipeline["inputs"] if i["name"] == "forward")
    assert value(forward["listen"]) == "127.0.0.1"
    assert value(config["service"]["http_listen"]) == "127.0.0.1"
    # Every variable it reads is defined, but the password, which is required.
    used = set(re.findall(r"\$\{(\w+)\}", FLUENT.read_text()))
    assert used - set(env) == {"ELASTIC_PASSWORD"}
    # The default forward port is where PULSETRACE_LOGS_FLUENTD_ADDR points.
    assert forward["port"] == 24224


# ---------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------


def test_compose_mounts_every_configuration_file_and_only_files_that_exist():
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    mounted = set()
    for name, service in compose["services"].items():
        assert service["network_mode"] == "host", name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                path = DEPLOY / source
                assert path.exists(), (name, source)
                mounted.add(path)
    configs = [
        PROMETHEUS / "prometheus.yml",
        *COLLECTORS.values(),
        FLUENT,
        DEPLOY / "alertmanager" / "alertmanager.yml",
        GRAFANA / "provisioning" / "datasources" / "datasources.yml",
        *DASHBOARDS,
    ]
    for config in configs:
        assert any(config == m or m in config.parents for m in mounted), config
    # Required variables fail `up` when unset, with a message.
    text = (DEPLOY / "docker-compose.yml").read_text()
    for var in ("ELASTIC_PASSWORD", "KIBANA_SYSTEM_PASSWORD"):
        assert re.search(rf"\$\{{{var}:\?[^}}]+\}}", text), var
        assert not re.search(rf"\$\{{{var}:-", text), var


def test_compose_starts_prometheus_and_alertmanager_on_the_ports_of_the_configs():
    compose = load_yaml(DEPLOY / "docker-compose.yml")["services"]
    prometheus = load_yaml(PROMETHEUS / "prometheus.yml")
    self_target = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "prometheus")
    assert (
        f"--web.listen-address={self_target['static_configs'][0]['targets'][0]}"
        in compose["prometheus"]["command"]
    )
    am = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0]
    assert f"--web.listen-address={am}" in compose["alertmanager"]["command"]
    assert "--cluster.listen-address=" in compose["alertmanager"]["command"]
    # Alertmanager reads its secret files relative to its working directory.
    assert compose["alertmanager"]["working_dir"] == "/etc/alertmanager"
