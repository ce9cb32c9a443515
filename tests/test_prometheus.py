"""Prometheus metrics, checked with the real Prometheus tooling: promtool
lints the 0.0.4 exposition and imports the OpenMetrics one, the values
match the recorded durations, the metrics server serves both formats, and a
real Prometheus scrapes a real instrumented app and answers PromQL with the
right quantiles (``promtool`` and ``prometheus``: Debian package
``prometheus``, installed by ``make test``)."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional

import pytest

import pulsetrace
import three_systems
from pulsetrace import _diag, _runtime, prometheus

from conftest import fresh, queued_without_exporter

T0 = 1_800_000_000_000_000_000
TESTS = Path(__file__).parent
RUN = shutil.which("pulsetrace-run") or str(Path(sys.executable).with_name("pulsetrace-run"))
PROM_004 = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# What Prometheus 2.x sends when it scrapes.
SCRAPE_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
# OpenTelemetry's default explicit bucket bounds, in seconds.
BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]


@pytest.fixture(autouse=True)
def default_config() -> Iterator[None]:
    yield
    pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is required (Debian package `prometheus`: make system-deps)")
    return path


# ---------------------------------------------------------------------------
# A strict parser of both text formats.
# ---------------------------------------------------------------------------


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float
    raw_value: str
    #: (labels, value, timestamp) of an OpenMetrics exemplar.
    exemplar: Optional[tuple[dict[str, str], float, Optional[float]]]
    #: Offset in the line just after the value (where a timestamp goes).
    value_end: int


@dataclass
class Exposition:
    samples: list[Sample] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)

    def find(self, name: str, **labels: str) -> list[Sample]:
        return [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        found = self.find(name, **labels)
        assert len(found) == 1, (name, labels, found)
        return found[0].value


NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]Inf|NaN")


def _labels(line: str, i: int) -> tuple[dict[str, str], int]:
    """``{a="x",b="y"}`` at ``i`` (a label value escapes only \\\\, \\" and \\n)."""
    out: dict[str, str] = {}
    if i >= len(line) or line[i] != "{":
        return out, i
    i += 1
    while line[i] != "}":
        m = LABEL_NAME.match(line, i)
        assert m, f"label name expected at {i}: {line!r}"
        name, i = m.group(), m.end()
        assert line[i : i + 2] == '="', line
        i += 2
        value = []
        while line[i] != '"':
            if line[i] == "\\":
                escaped = {"\\": "\\", '"': '"', "n": "\n"}.get(line[i + 1])
                assert escaped is not None, f"bad escape in {line!r}"
                value.append(escaped)
                i += 2
            else:
                value.append(line[i])
                i += 1
        i += 1
        assert name not in out, f"duplicate label {name}: {line!r}"
        out[name] = "".join(value)
        if line[i] == ",":
            i += 1
    return out, i + 1


def _number(line: str, i: int) -> tuple[str, int]:
    m = NUMBER.match(line, i)
    assert m, f"number expected at {i}: {line!r}"
    end = m.end()
    assert end == len(line) or line[end] == " ", line
    return m.group(), end


def parse(text: str, om: bool) -> Exposition:
    out = Exposition()
    lines = text.split("\n")
    assert lines[-1] == "", "the exposition ends with a newline"
    lines = lines[:-1]
    if om:
        assert lines[-1] == "# EOF", "OpenMetrics ends with # EOF"
        lines = lines[:-1]
    for line in lines:
        assert line, "no blank lines"
        if line.startswith("# "):
            keyword, name, *rest = line[2:].split(" ", 2)
            assert NAME.fullmatch(name), line
            table = {"HELP": out.helps, "TYPE": out.types, "UNIT": out.units}[keyword]
            assert name not in table, f"metadata repeated: {line!r}"
            table[name] = rest[0] if rest else ""
            continue
        assert not line.startswith("#"), line
        m = NAME.match(line)
        assert m, line
        labels, i = _labels(line, m.end())
        assert line[i] == " ", line
        raw, end = _number(line, i + 1)
        exemplar = None
        if end < len(line):
            assert om and line[end:].startswith(" # {"), f"exemplar outside OpenMetrics: {line!r}"
            ex_labels, j = _labels(line, end + 3)
            ex_raw, j = _number(line, j + 1)
            ts = None
            if j < len(line):
                ts_raw, j = _number(line, j + 1)
                ts = float(ts_raw)
            assert j == len(line), line
            exemplar = (ex_labels, float(ex_raw), ts)
        out.samples.append(Sample(m.group(), labels, float(raw), raw, exemplar, end))
    # Every sample belongs to the family whose metadata precedes it.
    for s in out.samples:
        family = re.sub(r"_(bucket|sum|count|total)$", "", s.name)
        assert s.name in out.types or family in out.types, f"sample without TYPE: {s.name}"
    return out


def histograms(exp: Exposition, family: str) -> dict[tuple[tuple[str, str], ...], dict]:
    """Series of a histogram family by labels (without ``le``): buckets
    ``[(le, count)]``, ``sum`` (exact decimal) and ``count``; checks that
    buckets are cumulative and end with ``+Inf == _count``."""
    series: dict[tuple[tuple[str, str], ...], dict] = {}
    for s in exp.samples:
        if not s.name.startswith(family + "_"):
            continue
        suffix = s.name[len(family) + 1 :]
        labels = {k: v for k, v in s.labels.items() if k != "le"}
        entry = series.setdefault(tuple(sorted(labels.items())), {"buckets": []})
        if suffix == "bucket":
            entry["buckets"].append((float(s.labels["le"]), s.value, s))
        elif suffix == "sum":
            entry["sum"] = Decimal(s.raw_value)
        elif suffix == "count":
            entry["count"] = s.value
    for key, entry in series.items():
        les = [b[0] for b in entry["buckets"]]
        counts = [b[1] for b in entry["buckets"]]
        assert les == [*BOUNDS, float("inf")], key
        assert counts == sorted(counts), f"buckets are cumulative: {key}"
        assert counts[-1] == entry["count"], key
    return series


def exact_rank(q: float, n: int) -> int:
    """Index of the ``q`` quantile in ``n`` sorted values (nearest rank)."""
    return max(0, int(q * n + 0.999999) - 1)


def exact_quantile(values: list[int], q: float) -> int:
    return sorted(values)[exact_rank(q, len(values))]


def promtool(*args: str, stdin: Optional[bytes] = None) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], input=stdin, capture_output=True, timeout=60)


# ---------------------------------------------------------------------------
# 1. promtool accepts both formats of a varied registry.
# ---------------------------------------------------------------------------

NAMES = [
    "GET /users/{id}",
    "POST /orders",
    "SELECT \"users\" WHERE a = '\\x'",
    "multi\nline",
    "ünïcödé ✓ 🚀",
    'back\\slash "quoted" \\n',
    'a # {b="c"} 1 }',
    "",
]
KINDS = ["server", "client", "internal", "producer", "consumer"]
# (http.response.status_code or None, explicit error status)
STATUSES = [
    (200, False),
    (404, False),
    (503, False),
    (None, False),
    (None, True),
    (302, True),
    (301, False),
]


def varied_registry() -> tuple[dict[int, Any], set[int]]:
    """Spans of every kind, status class and awkward name, one trace each,
    more keys than the registry's bound (some fold into ``(overflow)``).
    Keeps only error traces; returns the kept spans by span id and the
    trace ids of the dropped traces."""
    with queued_without_exporter():  # the kept traces are taken here
        fresh(sample_rate=0.0, max_metric_keys=150)
        rng = random.Random(7)
        dropped: set[int] = set()
        n = 0
        for name in NAMES:
            for kind in KINDS:
                for _ in range(3):
                    code, error = STATUSES[n % len(STATUSES)]
                    n += 1
                    for _ in range(4):
                        d = rng.choice([rng.randrange(1, 15 * 10**9), rng.randrange(1, 10**8)])
                        span = pulsetrace.start_span(name, kind=kind, start_time=T0)
                        if code is not None:
                            span.set_attribute("http.response.status_code", code)
                        if error:
                            span.set_status("error")
                        span.end(end_time=T0 + d)
                        if not error and (code is None or code < 500):
                            dropped.add(span.trace_id)
        for i in range(60):
            span = pulsetrace.start_span(f"GET /items/{i}", kind="server", start_time=T0)
            span.set_attribute("http.response.status_code", 200 if i % 5 else 500)
            span.end(end_time=T0 + (i + 1) * 7_654_321)
            if i % 5:
                dropped.add(span.trace_id)
        _runtime.tracer().process(force=True)
        kept = {s.span_id: s for trace in _runtime.tracer().drain(10**9) for s in trace}
    assert kept and dropped and not {s.trace_id for s in kept.values()} & dropped
    return kept, dropped


def test_promtool_lints_the_prometheus_exposition_clean():
    varied_registry()
    body, content_type = prometheus.exposition()
    assert content_type == PROM_004
    assert prometheus.exposition("text/plain;version=0.0.4")[1] == PROM_004
    assert prometheus.exposition("*/*")[1] == PROM_004
    exp = parse(body.decode(), om=False)
    assert all(s.exemplar is None for s in exp.samples)
    assert b" # {" not in body.replace(b'a # {b=\\"c\\"} 1 }', b"")
    for family, kind in [
        ("http_server_request_duration_seconds", "histogram"),
        ("pulsetrace_client_operation_duration_seconds", "histogram"),
        ("pulsetrace_internal_operation_duration_seconds", "histogram"),
        ("pulsetrace_messaging_operation_duration_seconds", "histogram"),
        ("http_server_requests_total", "counter"),
        ("http_server_errors_total", "counter"),
        ("http_server_request_duration_quantile_seconds", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_threads", "gauge"),
        ("python_gc_collections_total", "counter"),
        ("pulsetrace_export_failures_total", "counter"),
        ("pulsetrace_agent_errors_total", "counter"),
        ("pulsetrace_registry_overflowed_total", "counter"),
        ("pulsetrace_export_queue_spans", "gauge"),
    ]:
        assert exp.types.get(family) == kind, family
    # The agent's own error counter is not shadowed by the INTERNAL spans'
    # error counter (a family of that name already exists).
    assert exp.find("pulsetrace_agent_errors_total")[0].labels == {
        "service_name": "unknown_service"
    }
    assert exp.value("pulsetrace_agent_errors_total") == 0
    _diag.internal_error("test_prometheus", RuntimeError("counted"))
    again = parse(prometheus.exposition()[0].decode(), om=False)
    assert again.value("pulsetrace_agent_errors_total") == 1
    generations = {s.labels["generation"] for s in exp.find("python_gc_collections_total")}
    assert generations == {"0", "1", "2"}
    ops = {s.labels.get("operation") for s in exp.samples}
    assert set(NAMES) | {"(overflow)", "GET /items/0"} <= ops
    classes = {s.labels.get("status_class") for s in exp.samples} - {None}
    assert classes == {"2xx", "3xx", "4xx", "5xx", "ok", "error"}
    for family in [
        "http_server_request_duration_seconds",
        "pulsetrace_client_operation_duration_seconds",
        "pulsetrace_messaging_operation_duration_seconds",
    ]:
        assert histograms(exp, family)

    r = promtool("check", "metrics", stdin=body)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b""), r
    # The check can fail: a lint problem (a counter without `_total`) does.
    bad = body + b"# HELP jobs done\n# TYPE jobs counter\njobs 1\n"
    r = promtool("check", "metrics", stdin=bad)
    assert r.returncode != 0 and b"jobs" in r.stdout + r.stderr, r


def test_promtool_imports_the_openmetrics_exposition(tmp_path):
    varied_registry()
    body, content_type = prometheus.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type == OPENMETRICS
    assert prometheus.exposition(SCRAPE_ACCEPT)[1] == OPENMETRICS
    text = body.decode()
    exp = parse(text, om=True)
    assert exp.units["http_server_request_duration_seconds"] == "seconds"
    assert exp.types["http_server_requests"] == "counter"
    assert sum(s.exemplar is not None for s in exp.samples) > 10
    # The importer needs a timestamp on every sample: add one after each value.
    stamped = []
    lines = iter(exp.samples)
    for line in text.split("\n")[:-1]:
        if not line.startswith("#"):
            at = next(lines).value_end
            line = f"{line[:at]} 1700000000{line[at:]}"
        stamped.append(line)
    path = tmp_path / "metrics.om"
    path.write_text("\n".join(stamped) + "\n")
    r = promtool("tsdb", "create-blocks-from", "openmetrics", str(path), str(tmp_path / "blocks"))
    out = r.stdout.decode()
    assert r.returncode == 0 and r.stderr == b"", r
    # The block table's NUM SAMPLES: every sample line was imported.
    header, row = out.splitlines()[:2]
    columns = [c.strip() for c in re.split(r"\s{2,}", header.strip())]
    assert int(row.split()[columns.index("NUM SAMPLES")]) == len(exp.samples), out

    # A line promtool cannot parse fails the import: the check can fail.
    path.write_text("\n".join([*stamped[:-1], "bad{ 1 1700000000", "# EOF"]) + "\n")
    bad = promtool("tsdb", "create-blocks-from", "openmetrics", str(path), str(tmp_path / "b2"))
    assert bad.returncode != 0


FAMILY_OF_KIND = {
    "server": "http_server_request_duration_seconds",
    "client": "pulsetrace_client_operation_duration_seconds",
    "internal": "pulsetrace_internal_operation_duration_seconds",
    "producer": "pulsetrace_messaging_operation_duration_seconds",
    "consumer": "pulsetrace_messaging_operation_duration_seconds",
}


def status_class(span: Any) -> str:
    code = span.attributes.get("http.response.status_code")
    if span.status == "error" and (code is None or code < 500):
        return "error"
    return f"{code // 100}xx" if code is not None else span.status


def test_exemplars_link_buckets_to_kept_traces_only():
    kept, dropped = varied_registry()
    om = parse(prometheus.exposition("application/openmetrics-text")[0].decode(), om=True)
    # Every bucket a kept span falls in (its key has a series of its own,
    # not folded into `(overflow)`; at most 10 s: there is no `+Inf`
    # exemplar) carries an exemplar of one of the kept spans in it.
    series = {
        (s.name, s.labels["operation"], s.labels["status_class"], s.labels.get("kind"))
        for s in om.samples
        if s.name.endswith("_bucket")
    }
    expected: dict[tuple, set[int]] = {}
    for span in kept.values():
        family = FAMILY_OF_KIND[span.kind] + "_bucket"
        kind = span.kind if "messaging" in family else None
        key = (family, span.name, status_class(span), kind)
        if key in series and span.duration_ns <= 10 * 10**9:
            le = next(b for b in BOUNDS if span.duration_ns <= round(b * 1e9))
            expected.setdefault((*key, le), set()).add(span.span_id)
    seen: dict[tuple, int] = {}
    for s in om.samples:
        if s.exemplar is None:
            continue
        labels, value, ts = s.exemplar
        assert set(labels) == {"trace_id", "span_id"}
        assert re.fullmatch("[0-9a-f]{32}", labels["trace_id"]), labels
        assert re.fullmatch("[0-9a-f]{16}", labels["span_id"]), labels
        span = kept.get(int(labels["span_id"], 16))
        assert span is not None, f"exemplar of a trace that was not kept: {s}"
        assert int(labels["trace_id"], 16) == span.trace_id
        assert span.trace_id not in dropped
        assert s.name == FAMILY_OF_KIND[span.kind] + "_bucket", s
        assert s.labels.get("kind", span.kind) == span.kind
        assert (s.labels["operation"], s.labels["status_class"]) == (span.name, status_class(span))
        assert value == pytest.approx(span.duration_ns / 1e9, abs=1e-9)
        assert ts == pytest.approx(span.end_time_unix_nano / 1e9)
        # In the bucket its value falls in.
        le = float(s.labels["le"])
        below = [b for b in BOUNDS if b < le]
        assert (below[-1] if below else 0.0) < value <= le
        key = (s.name, s.labels["operation"], s.labels["status_class"], s.labels.get("kind"), le)
        assert key not in seen, "one exemplar per bucket"
        seen[key] = span.span_id
    assert len(expected) > 50
    assert set(seen) == set(expected)
    assert all(seen[k] in expected[k] for k in seen)
    # None in the Prometheus 0.0.4 format.
    assert all(
        s.exemplar is None for s in parse(prometheus.exposition()[0].decode(), False).samples
    )


# ---------------------------------------------------------------------------
# 2. The values are right.
# ---------------------------------------------------------------------------


QUANTILES = "http_server_request_duration_quantile_seconds"


def record(name: str, durations_ns: list[int], code: int = 200, kind: str = "server") -> None:
    for d in durations_ns:
        span = pulsetrace.start_span(name, kind=kind, start_time=T0)
        span.set_attribute("http.response.status_code", code)
        span.end(end_time=T0 + d)


def test_histogram_values_match_the_recorded_durations():
    fresh()
    exact = [i * 1_000_000 for i in range(1, 1001)]  # 1..1000 ms
    rng = random.Random(3)
    spread = [int(rng.lognormvariate(18, 1.5)) + 1 for _ in range(3000)]
    # Each bound itself (counts in it) and 2% on either side of it.
    edges = [int(b * 1e9 * f) for b in BOUNDS for f in (0.98, 1.0, 1.02)]
    record("GET /exact", exact)
    record("GET /spread", spread)
    record("GET /edges", edges)
    record("GET /exact", exact[:7], code=503)
    exp = parse(prometheus.exposition()[0].decode(), om=False)
    family = "http_server_request_duration_seconds"
    series = histograms(exp, family)

    def one(op: str, cls: str = "2xx") -> dict:
        key = (("operation", op), ("service_name", "unknown_service"), ("status_class", cls))
        return series[key]

    for op, values in [("GET /exact", exact), ("GET /spread", spread), ("GET /edges", edges)]:
        h = one(op)
        assert h["count"] == len(values), op
        assert h["sum"] == Decimal(sum(values)) / 10**9, op
        for le, got, _ in h["buckets"][:-1]:
            bound_ns = Decimal(str(le)) * 10**9
            at_most = sum(v <= bound_ns for v in values)
            # HDR slot granularity (2 significant digits): under 1% above.
            slack = sum(v <= bound_ns * Decimal("1.01") for v in values)
            assert at_most <= got <= slack, (op, le, got, at_most)
        qs = {s.labels["q"]: s.value for s in exp.find(QUANTILES, operation=op)}
        assert set(qs) == {"0.5", "0.9", "0.99", "0.999"}
        both = values + (exact[:7] if op == "GET /exact" else [])
        for q, v in qs.items():
            assert v == pytest.approx(exact_quantile(both, float(q)) / 1e9, rel=0.01), (op, q)
    edges_buckets = [got for _, got, _ in one("GET /edges")["buckets"]]
    assert edges_buckets == [2 + 3 * i for i in range(len(BOUNDS))] + [len(edges)]
    assert one("GET /exact")["sum"] == Decimal("500.5")
    errors = one("GET /exact", "5xx")
    assert errors["count"] == 7 and errors["sum"] == Decimal("0.028")
    assert exp.value("http_server_requests_total", operation="GET /exact") == 1007
    assert exp.value("http_server_errors_total", operation="GET /exact") == 7
    assert exp.value("http_server_errors_total", operation="GET /spread") == 0
    p99 = exp.value(QUANTILES, operation="GET /exact", q="0.99")
    assert p99 == pytest.approx(0.990, rel=0.01)


# ---------------------------------------------------------------------------
# 2b. Client spans by the system they talk to, named as OpenTelemetry does.
# ---------------------------------------------------------------------------

HTTP_CLIENT = "http_client_request_duration_seconds"
DB_CLIENT = "db_client_operation_duration_seconds"


def by_items(dicts: Any) -> list[dict[str, str]]:
    return sorted(dicts, key=lambda d: sorted(d.items()))


def labels_of(series: dict) -> list[dict[str, str]]:
    return by_items(dict(key) for key in series)


def lint(body: bytes) -> None:
    r = promtool("check", "metrics", stdin=body)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b""), r


def test_one_name_three_systems_three_series_with_their_own_counts(redis_server):
    fresh()
    three_systems.calls_named_get(redis_server, http=5, redis_gets=3, sql=2)
    body = prometheus.exposition()[0]
    exp = parse(body.decode(), om=False)
    svc = {"service_name": "unknown_service"}
    http = histograms(exp, HTTP_CLIENT)
    assert labels_of(http) == [
        {
            "operation": "GET",
            "http_request_method": "GET",
            "server_address": "127.0.0.1",
            "http_response_status_code": "2xx",
            "status_class": "2xx",
            **svc,
        }
    ]
    assert [h["count"] for h in http.values()] == [5]
    db = histograms(exp, DB_CLIENT)
    redis_key = {"operation": "GET", "db_system_name": "redis", "db_operation_name": "GET"}
    sqlite_key = {"operation": "GET", "db_system_name": "sqlite", "db_operation_name": "GET"}
    assert labels_of(db) == by_items(
        [
            {**redis_key, "status_class": "ok", **svc},
            {**sqlite_key, "status_class": "error", **svc},
        ]
    )
    assert sorted(h["count"] for h in db.values()) == [2, 3]
    assert exp.value("http_client_requests_total", operation="GET") == 5
    assert exp.value("http_client_errors_total", operation="GET") == 0
    assert exp.value("db_client_operations_total", **redis_key) == 3
    assert exp.value("db_client_operations_total", **sqlite_key) == 2
    assert exp.value("db_client_errors_total", **sqlite_key) == 2
    assert len(exp.find("db_client_operation_duration_quantile_seconds", **redis_key)) == 4
    # Nothing of them left in the catch-all CLIENT family.
    assert not [s for s in exp.samples if s.name.startswith("pulsetrace_client_")]
    for family in (HTTP_CLIENT, DB_CLIENT):
        assert exp.types[family] == "histogram"
        assert exp.helps[family]
    lint(body)
    om = parse(prometheus.exposition("application/openmetrics-text")[0].decode(), om=True)
    assert om.units[HTTP_CLIENT] == om.units[DB_CLIENT] == "seconds"
    assert om.value("db_client_operations_total", **sqlite_key) == 2


def test_messaging_spans_get_the_messaging_families():
    fresh()
    queue = {"messaging.system": "rabbitmq", "messaging.destination.name": "orders"}
    for kind, op, n in [("producer", "publish", 4), ("consumer", "process", 3)]:
        attributes = {**queue, "messaging.operation.name": op}
        for _ in range(n):
            pulsetrace.start_span(f"{op} orders", kind=kind, attributes=attributes).end()
    pulsetrace.start_span("emit", kind="producer").end()  # no messaging.system
    body = prometheus.exposition()[0]
    exp = parse(body.decode(), om=False)
    labels = {"messaging_system": "rabbitmq", "messaging_destination_name": "orders"}
    sent = exp.find(
        "messaging_client_operation_duration_seconds_count",
        operation="publish orders",
        messaging_operation_name="publish",
        **labels,
    )
    assert [s.value for s in sent] == [4]
    processed = exp.find(
        "messaging_process_duration_seconds_count",
        operation="process orders",
        messaging_operation_name="process",
        **labels,
    )
    assert [s.value for s in processed] == [3]
    assert exp.value("messaging_process_operations_total", operation="process orders") == 3
    other = exp.find("pulsetrace_messaging_operation_duration_seconds_count")
    assert [(s.labels["operation"], s.labels["kind"], s.value) for s in other] == [
        ("emit", "producer", 1)
    ]
    lint(body)


def test_system_overflow_stays_in_its_family_bounded_and_counted(redis_server):
    fresh(max_metric_keys=3)
    three_systems.calls_named_get(redis_server, http=5, redis_gets=3, sql=2)
    three_systems.refused_gets(free_port(), hosts=20)
    body = prometheus.exposition()[0]
    exp = parse(body.decode(), om=False)
    http = histograms(exp, HTTP_CLIENT)
    overflow = {"operation": "(overflow)", "status_class": "error"}
    assert labels_of(http) == by_items(
        [
            {**overflow, "service_name": "unknown_service"},
            {
                "operation": "GET",
                "http_request_method": "GET",
                "server_address": "127.0.0.1",
                "http_response_status_code": "2xx",
                "status_class": "2xx",
                "service_name": "unknown_service",
            },
        ]
    )
    assert exp.value(HTTP_CLIENT + "_count", **overflow) == 20
    assert exp.value("http_client_errors_total", operation="(overflow)") == 20
    addresses = {s.labels.get("server_address") for s in exp.samples} - {None}
    assert addresses == {"127.0.0.1"}, "the refused hosts have no series of their own"
    assert exp.value("pulsetrace_registry_keys") == 3
    assert exp.value("pulsetrace_registry_overflowed_total") == 20
    lint(body)


def test_a_long_server_address_is_a_bounded_label():
    fresh()
    host = "é" * 200 + ".example.com"
    attributes = {"http.request.method": "GET", "server.address": host}
    pulsetrace.start_span("GET", kind="client", attributes=attributes).end()
    body = prometheus.exposition()[0]
    exp = parse(body.decode(), om=False)
    (sample,) = exp.find("http_client_requests_total")
    # 128 bytes at most, cut on a character boundary.
    assert sample.labels["server_address"] == "é" * 64
    lint(body)


# ---------------------------------------------------------------------------
# 3. The metrics server.
# ---------------------------------------------------------------------------


def get(url: str, accept: str = "") -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers["Content-Type"], e.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_server() -> Iterator[None]:
    prometheus.stop_server()
    yield
    prometheus.stop_server()


def test_metrics_server_serves_both_formats(no_server):
    fresh()
    record("GET /served", [5_000_000, 30_000_000], code=200)
    addr = prometheus.start_server("127.0.0.1:0")
    assert addr is not None and addr[0] == "127.0.0.1" and addr[1] > 0
    base = f"http://127.0.0.1:{addr[1]}"
    status, ctype, body = get(base + "/metrics")
    assert (status, ctype) == (200, PROM_004)
    exp = parse(body.decode(), om=False)
    direct = parse(prometheus.exposition()[0].decode(), om=False)
    http = [s for s in exp.samples if s.name.startswith("http_server_")]
    # requests, errors, 4 quantiles, 15 buckets + _sum + _count.
    assert len(http) == 1 + 1 + 4 + 17 and http == [
        s for s in direct.samples if s.name.startswith("http_server_")
    ]
    assert exp.value("http_server_requests_total", operation="GET /served") == 2
    status, ctype, body = get(base + "/metrics", SCRAPE_ACCEPT)
    assert (status, ctype) == (200, OPENMETRICS)
    om = parse(body.decode(), om=True)
    assert om.value("http_server_requests_total", operation="GET /served") == 2
    assert get(base + "/metrics?name[]=x")[0] == 200
    for path in ("/other", "/metrics/x", "/favicon.ico"):
        assert get(base + path)[0] == 404, path
    # Idempotent: the running server's address, no second server.
    assert prometheus.start_server("127.0.0.1:0") == addr
    prometheus.stop_server()
    with pytest.raises(OSError):
        get(base + "/metrics")


def test_metrics_server_on_a_busy_port_warns_once_and_returns_none(no_server, caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="pulsetrace"):
            assert prometheus.start_server(f"127.0.0.1:{port}") is None
        warnings = [r for r in caplog.records if r.name == "pulsetrace"]
        assert len(warnings) == 1 and str(port) in warnings[0].getMessage()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pulsetrace"):
            assert prometheus.start_server("not an address") is None
        assert len(caplog.records) == 1
    # Nothing was left half-started: a free port works afterwards.
    assert prometheus.start_server("127.0.0.1:0") is not None


# ---------------------------------------------------------------------------
# 3b/4. An instrumented app under pulsetrace-run, scraped by a real Prometheus.
# ---------------------------------------------------------------------------


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def wait_for(what: str, check: Any, timeout: float, proc: subprocess.Popen) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        assert proc.poll() is None, f"{what}: the process exited ({proc.returncode})"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@dataclass
class App:
    proc: subprocess.Popen
    url: str
    metrics_port: int


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))}
    env.update(
        PROMETHEUS_ENABLED="true",
        PULSETRACE_METRICS_ADDR=f"127.0.0.1:{metrics_port}",
        OTEL_TRACES_EXPORTER="none",
        PULSETRACE_SAMPLE_RATE="1",
    )
    proc = subprocess.Popen(
        [RUN, sys.executable, str(TESTS / "prometheus_app.py"), str(port)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["ready", f"127.0.0.1:{metrics_port}"]
        wait_for(
            "the metrics server",
            lambda: get(f"http://127.0.0.1:{metrics_port}/metrics")[0] == 200,
            20,
            proc,
        )
        yield App(proc, f"http://127.0.0.1:{port}", metrics_port)
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def test_pulsetrace_run_serves_the_metrics_of_the_app(app):
    assert get(app.url + "/fast")[2] == b"ok"
    metrics = f"http://127.0.0.1:{app.metrics_port}/metrics"
    # The span ends when the server closes the response, just after the
    # client has read it.
    fast = 'http_server_requests_total{operation="GET /fast"'
    wait_for("the /fast span", lambda: fast.encode() in get(metrics)[2], 5, app.proc)
    status, ctype, body = get(metrics)
    assert (status, ctype) == (200, PROM_004)
    exp = parse(body.decode(), om=False)
    assert exp.value("http_server_requests_total", operation="GET /fast") == 1
    assert exp.value("process_open_fds") > 0
    assert exp.value("process_resident_memory_bytes") > 1e6
    status, ctype, body = get(metrics, SCRAPE_ACCEPT)
    assert (status, ctype) == (200, OPENMETRICS)
    assert parse(body.decode(), om=True).value("http_server_requests_total", operation="GET /fast")
    assert get(f"http://127.0.0.1:{app.metrics_port}/nope")[0] == 404
    r = promtool("check", "metrics", stdin=get(metrics)[2])
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b""), r


def bucket_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' ``histogram_quantile`` on classic buckets (promql
    ``bucketQuantile``): linear interpolation inside the bucket of the rank."""
    bs = sorted(buckets.items())
    assert bs[-1][0] == float("inf") and bs[-1][1] > 0
    rank = q * bs[-1][1]
    b = next((i for i, (_, c) in enumerate(bs[:-1]) if c >= rank), len(bs) - 1)
    if b == len(bs) - 1:
        return bs[-2][0]
    start, end, count = 0.0, bs[b][0], bs[b][1]
    if b > 0:
        start = bs[b - 1][0]
        count -= bs[b - 1][1]
        rank -= bs[b - 1][1]
    return start + (end - start) * (rank / count)


def answer_bucket(answer: float) -> float:
    """The upper bound of the bucket an interpolated quantile lies in."""
    return next(b for b in [*BOUNDS, float("inf")] if answer <= b)


class Prometheus:
    def __init__(self, port: int, proc: subprocess.Popen) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1/"
        self.proc = proc

    def api(self, path: str, **params: Any) -> Any:
        url = self.base + path + "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            data = json.load(r)
        assert data["status"] == "success", data
        return data["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    def scalar(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def buckets(self, expr: str) -> dict[float, float]:
        return {float(r["metric"]["le"]): float(r["value"][1]) for r in self.query(expr)}


@pytest.fixture
def prom(app, tmp_path) -> Iterator[Prometheus]:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: app\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{app.metrics_port}']\n"
    )
    r = promtool("check", "config", str(config))
    assert r.returncode == 0, r
    proc = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield Prometheus(port, proc)
    finally:
        stop(proc)


def test_real_prometheus_scrapes_a_custom_histogram_as_a_histogram(app, prom):
    """A custom histogram (``create_custom_histogram``) is a Prometheus
    histogram: Prometheus stores its cumulative buckets, sum and count, and
    ``histogram_quantile`` works on it."""
    values = [0.003, 0.02, 0.02, 0.3, 4.0, 12.0]
    for v in values:
        assert get(f"{app.url}/measure?v={v}")[2] == b"ok"
    count = 'app_measured_seconds_count{source="test"}'
    wait_for("the scrape", lambda: prom.query(count) and prom.scalar(count) == 6, 30, prom.proc)
    buckets = prom.buckets('app_measured_seconds_bucket{source="test"}')
    assert sorted(buckets) == [*BOUNDS, float("inf")]
    for le, got in buckets.items():
        assert got == sum(v <= le for v in values), (le, got)
    assert prom.scalar('app_measured_seconds_sum{source="test"}') == pytest.approx(sum(values))
    (meta,) = prom.api("metadata", metric="app_measured_seconds")["app_measured_seconds"]
    assert meta["type"] == "histogram"
    median = prom.scalar('histogram_quantile(0.5, app_measured_seconds_bucket{source="test"})')
    assert median == pytest.approx(bucket_quantile(0.5, buckets))
    assert 0.01 < median <= 0.025  # the 3rd of 6 values is in the (0.01, 0.025] bucket


SLOW = 'operation="GET /slow"'
SLOW_BUCKETS = f"http_server_request_duration_seconds_bucket{{{SLOW}}}"


def test_real_prometheus_scrapes_the_app_and_computes_quantiles(app, prom):
    t0 = time.time()
    # One request before the first scrape, so the series exist and rate()
    # sees the later ones as an increase.
    status, _, body = get(app.url + "/slow")
    assert status == 200
    warm_up = json.loads(body)["trace_id"]
    trace_ids = {warm_up}
    wait_for("the first scrape", lambda: prom.query("up") and prom.scalar("up") == 1, 30, prom.proc)
    with ThreadPoolExecutor(5) as pool:
        replies = list(pool.map(lambda _: get(app.url + "/slow"), range(50)))
    assert all(status == 200 for status, _, _ in replies)
    trace_ids |= {json.loads(body)["trace_id"] for _, _, body in replies}
    count = f"sum(http_server_request_duration_seconds_count{{{SLOW}}})"
    wait_for(
        "the scrape of every request",
        lambda: prom.query(count) and prom.scalar(count) == 51,
        20,
        prom.proc,
    )
    (target,) = prom.api("targets")["activeTargets"]
    assert (target["health"], target["lastError"]) == ("up", ""), target
    # The truth: how long each request really slept, and its span's duration.
    with urllib.request.urlopen(app.url + "/_truth", timeout=10) as r:
        truth = json.load(r)
    assert set(truth["slept"]) == set(truth["spans"]) == trace_ids
    assert all(truth["spans"][t] >= truth["slept"][t] for t in trace_ids), "spans contain sleeps"
    durations = sorted(truth["spans"].values())
    slept = sorted(truth["slept"].values())

    # Prometheus stored the buckets the durations fall in (HDR slot
    # granularity: a value under 1% above a bound may count in it).
    raw = prom.buckets(f"sum by (le) ({SLOW_BUCKETS})")
    assert sorted(raw) == [*BOUNDS, float("inf")] and raw[float("inf")] == 51
    for le, got in raw.items():
        assert sum(d <= le for d in durations) <= got <= sum(d <= le * 1.01 for d in durations)
    assert raw[0.1] == 0

    # histogram_quantile interpolates linearly inside the bucket of the rank:
    # exactly what the bucket counts give, in the bucket of the real p99.
    # rate() sees the 50 requests made after the first scrape.
    later = sorted(d for t, d in truth["spans"].items() if t != warm_up)
    for q, population, expr in [
        (0.99, durations, f"sum by (le) ({SLOW_BUCKETS})"),
        (0.5, durations, f"sum by (le) ({SLOW_BUCKETS})"),
        (0.99, later, f"sum by (le) (rate({SLOW_BUCKETS}[1m]))"),
    ]:
        buckets = prom.buckets(expr)
        assert buckets[0.1] == 0 and buckets[float("inf")] > 0, buckets
        answer = prom.scalar(f"histogram_quantile({q}, {expr})")
        assert answer == pytest.approx(bucket_quantile(q, buckets), abs=1e-9), expr
        real = population[exact_rank(q, len(population))]
        lower = max([b for b in BOUNDS if b < answer], default=0.0)
        assert lower < answer and lower < real <= answer_bucket(answer) * 1.01, (q, answer, real)
    # The median request (no scheduling outliers): around 0.2 s.
    assert 0.1 < prom.scalar(f"histogram_quantile(0.5, sum by (le) ({SLOW_BUCKETS}))") <= 0.25

    # The exact quantile gauges: the HDR value (2 significant digits) of the
    # real durations, not a bucket interpolation.
    gauge = f"http_server_request_duration_quantile_seconds{{{SLOW},q="
    p99 = prom.scalar(gauge + '"0.99"}')
    assert p99 == pytest.approx(durations[exact_rank(0.99, 51)], rel=0.01)
    assert p99 >= slept[exact_rank(0.99, 51)] * 0.99
    p50 = prom.scalar(gauge + '"0.5"}')
    assert p50 == pytest.approx(slept[exact_rank(0.5, 51)], rel=0.02)

    # Exemplars scraped from OpenMetrics link the bucket to real traces.
    def exemplars() -> list[tuple[str, dict]]:
        data = prom.api("query_exemplars", query=SLOW_BUCKETS, start=t0 - 60, end=time.time() + 60)
        return [(s["seriesLabels"]["le"], e) for s in data for e in s["exemplars"]]

    found = wait_for("exemplars", exemplars, 10, prom.proc)
    for le, e in found:
        assert e["labels"]["trace_id"] in trace_ids, e
        assert truth["spans"][e["labels"]["trace_id"]] == pytest.approx(float(e["value"]))
        assert float(e["value"]) <= float(le)
