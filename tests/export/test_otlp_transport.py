"""The OTLP trace transport against real receivers: a gRPC TraceService and
an HTTP /v1/traces server on 127.0.0.1 (otlp_receivers), TLS with a CA made
on the spot, and the real rotel collector in between. No mocks.

Deadlines are time.monotonic() values, as OtlpTransport.send takes them.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest
from otlp_receivers import (
    Certs,
    GrpcAnswer,
    GrpcReceiver,
    HttpAnswer,
    closed_port,
    code_pb2,
    make_certs,
    make_request,
    run_rotel,
    server_tls_context,
    spans_of,
    start_grpc_receiver,
    start_http_receiver,
    status_details,
)

from pulsetrace.export.otlp import OtlpConfig, OtlpTransport, SendResult, config_from_env

HTTP = "http/protobuf"

# -- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def transport() -> Iterator[Callable[..., OtlpTransport]]:
    """Makes transports (from OtlpConfig fields) and shuts them all down."""
    made: list[OtlpTransport] = []

    def make(**fields: Any) -> OtlpTransport:
        t = OtlpTransport(OtlpConfig(**fields))
        made.append(t)
        return t

    yield make
    for t in made:
        t.shutdown()


def payload(*names: str) -> bytes:
    return make_request(names or ("GET /",)).SerializeToString()


def send(t: OtlpTransport, data: bytes, within: float = 5.0) -> tuple[SendResult, float]:
    """Send with a deadline ``within`` seconds away; (result, seconds taken)."""
    start = time.monotonic()
    result = t.send(data, start + within)
    return result, time.monotonic() - start


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "pulsetrace" and r.levelno == logging.WARNING
    ]


# -- configuration from the environment -------------------------------------------


def test_defaults_are_grpc_to_localhost_4317(caplog):
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        c = config_from_env({})
    assert c == OtlpConfig()
    assert (c.protocol, c.endpoint, c.timeout_ms, c.compression) == (
        "grpc",
        "http://localhost:4317",
        10_000.0,
        "none",
    )
    assert c.insecure and c.certificate is None and c.headers == {}
    assert c.exporters == ("otlp",) and c.enabled and not c.console
    assert warnings_of(caplog) == []


def test_empty_values_are_the_same_as_unset(caplog):
    names = ["PROTOCOL", "ENDPOINT", "HEADERS", "TIMEOUT", "COMPRESSION", "INSECURE"]
    env = {f"OTEL_EXPORTER_OTLP_{n}": " " for n in names}
    env.update({f"OTEL_EXPORTER_OTLP_TRACES_{n}": "" for n in names})
    env["OTEL_TRACES_EXPORTER"] = ""
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        assert config_from_env(env) == OtlpConfig()
    assert warnings_of(caplog) == []


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    assert config_from_env().compression == "gzip"


def test_http_protobuf_default_endpoint_is_4318_v1_traces():
    c = config_from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert (c.protocol, c.endpoint, c.insecure) == (HTTP, "http://localhost:4318/v1/traces", True)


@pytest.mark.parametrize(
    ("generic", "expected"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://collector.example/otlp", "https://collector.example/otlp/v1/traces"),
        ("https://collector.example/otlp/", "https://collector.example/otlp/v1/traces"),
    ],
)
def test_http_generic_endpoint_gets_v1_traces_appended(generic, expected):
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": HTTP, "OTEL_EXPORTER_OTLP_ENDPOINT": generic}
    assert config_from_env(env).endpoint == expected


def test_http_traces_endpoint_is_used_as_is_and_wins_over_the_generic_one():
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": HTTP,
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9999/custom/path",
    }
    assert config_from_env(env).endpoint == "http://traces:9999/custom/path"
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://traces:9999"
    assert config_from_env(env).endpoint == "http://traces:9999"


def test_grpc_traces_endpoint_wins_over_the_generic_one():
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4317",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces:4317",
    }
    c = config_from_env(env)
    assert (c.endpoint, c.insecure) == ("https://traces:4317", False)


@pytest.mark.parametrize(
    ("endpoint", "insecure", "plaintext"),
    [
        ("http://c:4317", None, True),
        ("https://c:4317", None, False),
        ("c:4317", None, False),  # no scheme: TLS unless insecure (the spec)
        ("c:4317", "true", True),
        ("c:4317", "FALSE", False),
        ("http://c:4317", "false", False),
        ("https://c:4317", "true", False),  # https:// always means TLS
    ],
)
def test_grpc_plaintext_or_tls(endpoint, insecure, plaintext, caplog):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    if insecure is not None:
        env["OTEL_EXPORTER_OTLP_INSECURE"] = insecure
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        c = config_from_env(env)
    assert (c.endpoint, c.insecure) == (endpoint, plaintext)
    assert warnings_of(caplog) == []


def test_http_protobuf_follows_the_scheme_whatever_insecure_says():
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": HTTP,
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_INSECURE": "false",
    }
    assert config_from_env(env).insecure
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "https://c:4318"
    env["OTEL_EXPORTER_OTLP_INSECURE"] = "true"
    assert not config_from_env(env).insecure


def test_headers_are_percent_decoded_and_lowercased():
    env = {"OTEL_EXPORTER_OTLP_HEADERS": " API-Key = s%3Dcr%2Ct , x-tenant=a%20b,,empty="}
    assert config_from_env(env).headers == {"api-key": "s=cr,t", "x-tenant": "a b", "empty": ""}


def test_traces_forms_win_over_the_generic_ones(certs, tmp_path):
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(certs.ca_pem)
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=generic,b=generic",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "a=traces",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(certs.ca_file),
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": str(other_ca),
    }
    c = config_from_env(env)
    assert c.protocol == HTTP
    assert c.endpoint == "http://localhost:4318/v1/traces"  # the protocol's default
    assert c.headers == {"a": "traces"}  # replaced, not merged
    assert c.timeout_ms == 2500.0
    assert c.compression == "gzip"
    assert c.certificate == str(other_ca)
    env2 = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317",
        "OTEL_EXPORTER_OTLP_INSECURE": "false",
        "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",
    }
    assert config_from_env(env2).insecure
    # Without the traces forms the generic ones are used.
    generic = {k: v for k, v in env.items() if "_TRACES_" not in k}
    c = config_from_env(generic)
    assert (c.protocol, c.headers, c.timeout_ms, c.compression, c.certificate) == (
        "grpc",
        {"a": "generic", "b": "generic"},
        1000.0,
        "none",
        str(certs.ca_file),
    )


@pytest.mark.parametrize(
    ("value", "exporters", "enabled", "console"),
    [
        ("otlp", ("otlp",), True, False),
        ("none", ("none",), False, False),
        ("console", ("console",), False, True),
        (" OTLP , console ", ("otlp", "console"), True, True),
    ],
)
def test_traces_exporter(value, exporters, enabled, console, caplog):
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        c = config_from_env({"OTEL_TRACES_EXPORTER": value})
    assert (c.exporters, c.enabled, c.console) == (exporters, enabled, console)
    assert warnings_of(caplog) == []


def _not_pem(tmp_path: Path) -> str:
    p = tmp_path / "not-a-cert.pem"
    p.write_text("hello\n")
    return str(p)


def _broken_pem(tmp_path: Path) -> str:
    p = tmp_path / "broken.pem"
    p.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    return str(p)


# (environment, the malformed variable, text of the warning saying what is
# used instead, the config field and its value)
MALFORMED: list[tuple[dict[str, Any], str, str, str, Any]] = [
    (
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "not a url"},
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "using 'http://localhost:4317' instead",
        "endpoint",
        "http://localhost:4317",
    ),
    (
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://collector:21"},
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "using 'http://localhost:4317' instead",
        "endpoint",
        "http://localhost:4317",
    ),
    (
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:99999"},
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "using 'http://localhost:4317' instead",
        "endpoint",
        "http://localhost:4317",
    ),
    (
        {"OTEL_EXPORTER_OTLP_PROTOCOL": HTTP, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://"},
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "using 'http://localhost:4318/v1/traces' instead",
        "endpoint",
        "http://localhost:4318/v1/traces",
    ),
    (
        {"OTEL_EXPORTER_OTLP_PROTOCOL": HTTP, "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "using 'http://collector:4318/v1/traces' instead",
        "endpoint",
        "http://collector:4318/v1/traces",
    ),
    (
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4317",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "::nonsense::",
        },
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "using 'http://generic:4317' (from OTEL_EXPORTER_OTLP_ENDPOINT) instead",
        "endpoint",
        "http://generic:4317",
    ),
    (
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "using 'http/protobuf' instead",
        "protocol",
        HTTP,
    ),
    (
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"},
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "using 'grpc' instead",
        "protocol",
        "grpc",
    ),
    (
        {"OTEL_EXPORTER_OTLP_HEADERS": "a=1,oops,b=2"},
        "OTEL_EXPORTER_OTLP_HEADERS",
        "entry 'oops' has no '='; using the headers a, b instead",
        "headers",
        {"a": "1", "b": "2"},
    ),
    (
        {"OTEL_EXPORTER_OTLP_HEADERS": "a b=1,c=2"},
        "OTEL_EXPORTER_OTLP_HEADERS",
        "header name 'a b' is not letters, digits, '-', '_', '.'; using the headers c instead",
        "headers",
        {"c": "2"},
    ),
    (
        {"OTEL_EXPORTER_OTLP_HEADERS": "x=1%0D%0Ainjected: yes"},
        "OTEL_EXPORTER_OTLP_HEADERS",
        "the value of 'x' has a control or non-ASCII character; using no headers instead",
        "headers",
        {},
    ),
    (
        {"OTEL_EXPORTER_OTLP_HEADERS": "g=1", "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "junk"},
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "using the headers g (from OTEL_EXPORTER_OTLP_HEADERS) instead",
        "headers",
        {"g": "1"},
    ),
    (
        {"OTEL_EXPORTER_OTLP_TIMEOUT": "abc"},
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "using 10000 ms instead",
        "timeout_ms",
        10_000.0,
    ),
    (
        {"OTEL_EXPORTER_OTLP_TIMEOUT": "-5"},
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "is below the minimum (1); using 1 ms instead",
        "timeout_ms",
        1.0,
    ),
    (
        {"OTEL_EXPORTER_OTLP_TIMEOUT": "1e30"},
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "is above the maximum (600000); using 600000 ms instead",
        "timeout_ms",
        600_000.0,
    ),
    (
        {"OTEL_EXPORTER_OTLP_TIMEOUT": "500", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "10s"},
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "using 500 ms (from OTEL_EXPORTER_OTLP_TIMEOUT) instead",
        "timeout_ms",
        500.0,
    ),
    (
        {"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"},
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "using 'none' instead",
        "compression",
        "none",
    ),
    (
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317", "OTEL_EXPORTER_OTLP_INSECURE": "yes"},
        "OTEL_EXPORTER_OTLP_INSECURE",
        "using the endpoint's scheme (TLS) instead",
        "insecure",
        False,
    ),
    (
        {"OTEL_EXPORTER_OTLP_INSECURE": "1"},
        "OTEL_EXPORTER_OTLP_INSECURE",
        "using the endpoint's scheme (plaintext) instead",
        "insecure",
        True,
    ),
    (
        {"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"},
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "using the system's trusted CA certificates instead",
        "certificate",
        None,
    ),
    (
        {"OTEL_EXPORTER_OTLP_CERTIFICATE": _not_pem},
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "no PEM certificate in it; using the system's trusted CA certificates instead",
        "certificate",
        None,
    ),
    (
        {"OTEL_EXPORTER_OTLP_CERTIFICATE": _broken_pem},
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "cannot be loaded",
        "certificate",
        None,
    ),
    (
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        "OTEL_TRACES_EXPORTER",
        "using 'otlp' instead",
        "exporters",
        ("otlp",),
    ),
    (
        {"OTEL_TRACES_EXPORTER": "none,jaeger"},
        "OTEL_TRACES_EXPORTER",
        "exporting off",
        "exporters",
        ("none",),
    ),
    (
        {"OTEL_TRACES_EXPORTER": "otlp,none"},
        "OTEL_TRACES_EXPORTER",
        "using 'otlp' instead",
        "exporters",
        ("otlp",),
    ),
]


@pytest.mark.parametrize(
    ("env", "var", "instead", "field", "used"),
    MALFORMED,
    ids=[f"{m[1]}={next(iter(m[0].values()))!s:.30}" for m in MALFORMED],
)
def test_a_malformed_value_is_one_warning_naming_it_and_what_is_used(
    env, var, instead, field, used, caplog, tmp_path
):
    env = {k: (v(tmp_path) if callable(v) else v) for k, v in env.items()}
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        c = config_from_env(env)
    assert getattr(c, field) == used
    (message,) = warnings_of(caplog)
    assert message.startswith(f"pulsetrace: {var}")
    if "HEADERS" not in var:
        assert repr(env[var]) in message
    assert instead in message


def test_header_values_never_appear_in_warnings(caplog):
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20s3cr3t-token,Bearer s3cr3t-2"}
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        c = config_from_env(env)
    assert c.headers == {"authorization": "Bearer s3cr3t-token"}
    (message,) = warnings_of(caplog)
    assert "s3cr3t" not in message
    assert "OTEL_EXPORTER_OTLP_HEADERS" in message and "'Bea… (15 characters)'" in message


def test_garbage_in_every_variable_never_raises(caplog):
    garbage = ["\x00", "=", "%", "%zz=%zz", "http://[::1", "http://[", "-1e999", "nan", "ünï"]
    names = ["PROTOCOL", "ENDPOINT", "HEADERS", "TIMEOUT", "COMPRESSION", "INSECURE", "CERTIFICATE"]
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        for g in garbage:
            env = {f"OTEL_EXPORTER_OTLP_{n}": g for n in names}
            env.update({f"OTEL_EXPORTER_OTLP_TRACES_{n}": g for n in names})
            env["OTEL_TRACES_EXPORTER"] = g
            c = config_from_env(env)
            assert c.protocol in ("grpc", HTTP) and c.timeout_ms > 0


# -- gRPC -------------------------------------------------------------------------


def test_grpc_delivers_the_bytes_intact(grpc_receiver, transport):
    t = transport(endpoint=grpc_receiver.endpoint)
    request = make_request(["GET /users", "SELECT users", "redis GET"])
    data = request.SerializeToString()
    result, _ = send(t, data)
    assert result == SendResult(ok=True)
    (got,) = grpc_receiver.requests()
    assert got == request
    assert got.SerializeToString() == data
    assert spans_of(got) == spans_of(request)
    assert spans_of(got)[1][0] == "SELECT users"
    assert t.counters() == {
        "requests_sent": 1,
        "requests_failed": 0,
        "retries": 0,
        "bytes_sent": len(data),
        "rejected_spans": 0,
    }


def test_grpc_user_agent_names_pulsetrace(grpc_receiver, transport):
    t = transport(endpoint=grpc_receiver.endpoint)
    assert send(t, payload())[0].ok
    assert grpc_receiver.received[0].metadata["user-agent"].startswith("pulsetrace/")


def test_grpc_gzip_is_sent_compressed(grpc_receiver, transport):
    data = make_request([f"span {i % 3}" for i in range(500)]).SerializeToString()
    t = transport(endpoint=grpc_receiver.endpoint, compression="gzip")
    assert send(t, data)[0].ok
    assert grpc_receiver.requests()[0].SerializeToString() == data
    # A receiver that refuses gzip tells compressed traffic from plain.
    no_gzip = start_grpc_receiver(options=[("grpc.compression_enabled_algorithms_bitset", 1)])
    try:
        gz = transport(endpoint=no_gzip.endpoint, compression="gzip")
        result, _ = send(gz, data)
        assert not result.ok and result.retries == 0
        assert "UNIMPLEMENTED" in result.error and "gzip" in result.error
        plain = transport(endpoint=no_gzip.endpoint, compression="none")
        assert send(plain, data)[0].ok
        assert len(no_gzip.requests()) == 1
    finally:
        no_gzip.stop()


def test_grpc_headers_arrive_as_metadata(grpc_receiver, transport):
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": grpc_receiver.endpoint,
        "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=abc%2C123,X-Tenant=team%20a",
    }
    t = OtlpTransport(config_from_env(env))
    try:
        assert send(t, payload())[0].ok
    finally:
        t.shutdown()
    md = grpc_receiver.received[0].metadata
    assert md["x-api-key"] == "abc,123"
    assert md["x-tenant"] == "team a"


def test_grpc_unavailable_is_retried_then_succeeds(grpc_receiver, transport):
    grpc_receiver.script(
        GrpcAnswer(grpc.StatusCode.UNAVAILABLE), GrpcAnswer(grpc.StatusCode.UNAVAILABLE)
    )
    t = transport(endpoint=grpc_receiver.endpoint)
    result, took = send(t, payload("retried"), within=10)
    assert result.ok and result.retries == 2
    assert grpc_receiver.calls == 3
    assert [s[0] for s in spans_of(grpc_receiver.requests()[0])] == ["retried"]
    # Full jitter: at most 0.5 s, then 1 s.
    assert took < 1.5 + 0.5
    assert t.counters()["retries"] == 2 and t.counters()["requests_sent"] == 1


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.CANCELLED,
    ],
)
def test_grpc_other_retryable_codes_are_retried(code, grpc_receiver, transport):
    grpc_receiver.script(GrpcAnswer(code, retry_delay_s=0.05))
    t = transport(endpoint=grpc_receiver.endpoint)
    result, _ = send(t, payload())
    assert result.ok and result.retries == 1 and grpc_receiver.calls == 2


def test_grpc_retry_info_delay_is_honoured(grpc_receiver, transport):
    grpc_receiver.script(
        GrpcAnswer(grpc.StatusCode.UNAVAILABLE, retry_delay_s=0.6),
        GrpcAnswer(grpc.StatusCode.UNAVAILABLE, retry_delay_s=0.6),
    )
    t = transport(endpoint=grpc_receiver.endpoint)
    result, took = send(t, payload(), within=10)
    assert result.ok and result.retries == 2
    assert 1.2 <= took < 1.2 + 0.5


def test_grpc_resource_exhausted_is_retried_only_with_retry_info(grpc_receiver, transport):
    t = transport(endpoint=grpc_receiver.endpoint)
    grpc_receiver.script(GrpcAnswer(grpc.StatusCode.RESOURCE_EXHAUSTED))
    result, _ = send(t, payload())
    assert not result.ok and result.retries == 0 and grpc_receiver.calls == 1
    assert "RESOURCE_EXHAUSTED" in result.error and not result.retryable
    grpc_receiver.script(GrpcAnswer(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay_s=0.1))
    result, _ = send(t, payload())
    assert result.ok and result.retries == 1 and grpc_receiver.calls == 3


def test_grpc_invalid_argument_fails_at_once(grpc_receiver, transport):
    grpc_receiver.script(GrpcAnswer(grpc.StatusCode.INVALID_ARGUMENT, message="bad spans"))
    t = transport(endpoint=grpc_receiver.endpoint)
    result, took = send(t, payload(), within=10)
    assert not result.ok and result.retries == 0 and not result.retryable
    assert result.error == "gRPC INVALID_ARGUMENT: bad spans"
    assert grpc_receiver.calls == 1 and took < 0.5
    assert t.counters()["requests_failed"] == 1 and t.counters()["requests_sent"] == 0


def test_grpc_partial_success_counts_rejected_spans(grpc_receiver, transport):
    grpc_receiver.script(GrpcAnswer(rejected_spans=2), GrpcAnswer(rejected_spans=3))
    t = transport(endpoint=grpc_receiver.endpoint)
    assert send(t, payload("a", "b"))[0] == SendResult(ok=True, rejected_spans=2)
    assert send(t, payload("a", "b", "c"))[0].rejected_spans == 3
    assert t.counters()["rejected_spans"] == 5


def test_grpc_receiver_down_fails_within_the_deadline(transport):
    t = transport(endpoint=f"http://127.0.0.1:{closed_port()}")
    result, took = send(t, payload(), within=1.5)
    assert not result.ok and result.retryable
    assert result.retries >= 1 and "UNAVAILABLE" in result.error
    assert took <= 1.5 + 0.5


def test_grpc_slow_receiver_times_out_within_the_deadline(grpc_receiver, transport):
    grpc_receiver.script(GrpcAnswer(sleep_s=3.0))
    t = transport(endpoint=grpc_receiver.endpoint)
    result, took = send(t, payload(), within=1.0)
    assert not result.ok and "DEADLINE_EXCEEDED" in result.error
    assert took <= 1.0 + 0.5


def test_grpc_per_attempt_timeout_then_retry(grpc_receiver, transport):
    grpc_receiver.script(GrpcAnswer(sleep_s=1.0))
    t = transport(endpoint=grpc_receiver.endpoint, timeout_ms=300)
    result, took = send(t, payload(), within=5)
    assert result.ok and result.retries >= 1
    assert took < 3.0


def test_grpc_receiver_that_comes_up_later_is_reached(transport):
    port = closed_port()
    t = transport(endpoint=f"http://127.0.0.1:{port}")
    started: list[GrpcReceiver] = []
    timer = threading.Timer(0.8, lambda: started.append(start_grpc_receiver(port)))
    timer.start()
    try:
        result, took = send(t, payload("late"), within=8)
        assert result.ok and result.retries >= 1, result
        assert took < 8
        assert [s[0] for s in spans_of(started[0].requests()[0])] == ["late"]
    finally:
        timer.join()
        for r in started:
            r.stop()


# -- HTTP/protobuf ----------------------------------------------------------------


def test_http_delivers_the_bytes_intact_with_headers(http_receiver, transport):
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": HTTP,
        "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint,
        # Content-Type is the transport's own: a configured one is ignored.
        "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=abc%2C123,X-Tenant=team%20a,content-type=text",
    }
    c = config_from_env(env)
    assert c.endpoint == http_receiver.traces_url
    t = OtlpTransport(c)
    request = make_request(["GET /", "child"])
    try:
        result, _ = send(t, request.SerializeToString())
    finally:
        t.shutdown()
    assert result == SendResult(ok=True)
    (got,) = http_receiver.received
    assert got.path == "/v1/traces"
    assert got.raw_body == request.SerializeToString()
    assert got.request == request and spans_of(got.request) == spans_of(request)
    assert got.headers["content-type"] == "application/x-protobuf"
    assert "content-encoding" not in got.headers
    assert got.headers["x-api-key"] == "abc,123" and got.headers["x-tenant"] == "team a"
    assert got.headers["user-agent"].startswith("pulsetrace/")


def test_http_gzip(http_receiver, transport):
    request = make_request([f"span {i % 3}" for i in range(300)])
    data = request.SerializeToString()
    t = transport(protocol=HTTP, endpoint=http_receiver.traces_url, compression="gzip")
    assert send(t, data)[0].ok
    (got,) = http_receiver.received
    assert got.headers["content-encoding"] == "gzip"
    assert got.raw_body[:2] == b"\x1f\x8b" and len(got.raw_body) < len(data) / 4
    assert gzip.decompress(got.raw_body) == data and got.request == request


def test_http_503_retry_after_is_honoured(http_receiver, transport):
    http_receiver.script(
        HttpAnswer(503, {"Retry-After": "1"}), HttpAnswer(503, {"Retry-After": "1"})
    )
    t = transport(protocol=HTTP, endpoint=http_receiver.traces_url)
    result, took = send(t, payload("after 503"), within=10)
    assert result.ok and result.retries == 2
    assert http_receiver.calls == 3
    assert 2.0 <= took < 2.0 + 0.5
    assert [s[0] for s in spans_of(http_receiver.requests()[0])] == ["after 503"]


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_http_retryable_statuses_are_retried(status, http_receiver, transport):
    http_receiver.script(HttpAnswer(status, {"Retry-After": "0"}))
    t = transport(protocol=HTTP, endpoint=http_receiver.traces_url)
    result, took = send(t, payload())
    assert result.ok and result.retries == 1 and http_receiver.calls == 2
    assert took < 0.5


def test_http_503_without_retry_after_backs_off_with_jitter(http_receiver, transport):
    http_receiver.script(HttpAnswer(503), HttpAnswer(503), HttpAnswer(503))
    t = transport(protocol=HTTP, endpoint=http_receiver.traces_url)
    result, took = send(t, payload(), within=10)
    assert result.ok and result.retries == 3
    assert took < 0.5 + 1.0 + 2.0 + 0.5


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 500])
def test_http_non_retryable_statuses_fail_at_once(status, http_receiver, transport):
    body = status_details(code_pb2.INVALID_ARGUMENT, "span 3 has no name", None)
    http_receiver.script(HttpAnswer(status, {"Retry-After": "0"}, body=body))
    t = transport(protocol=HTTP, endpoint=http_receiver.traces_url)
    result, took = send(t, payload(), within=10)
    assert not result.ok and result.retries == 0 and not result.retryable
    assert result.error.startswith(f"HTTP {status} ")
    assert result.error.endswith(": span 3 has no name")
    assert http_receiver.calls == 1 and took < 0.5


def test_http_retry_after_past_the_deadline_gives_up_at_once(http_receiver, transport):
    http_receiver.script(HttpAnswer(503, {"Retry-After": "30"}))
    t = transport(protocol=HTTP, endpoint=http_receiver.traces_url)
    result, took = send(t, payload(), within=3)
    assert not result.ok and result.retryable and result.retries == 0
    assert "HTTP 503" in result.error and "deadline" in result.error
    assert took < 0.5 and http_receiver.calls == 1


def test_http_retry_after_as_a_date(http_receiver, transport):
    import email.utils

    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    http_receiver.script(HttpAnswer(503, {"Retry-After": when}))
    t = transport(protocol=HTTP, endpoint=http_receiver.traces_url)
    result, took = send(t, payload(), within=10)
    assert result.ok and result.retries == 1
    assert 0.5 <= took < 2.5


def test_http_partial_success_counts_rejected_spans(http_receiver, transport):
    http_receiver.script(HttpAnswer(rejected_spans=4))
    t = transport(protocol=HTTP, endpoint=http_receiver.traces_url)
    assert send(t, payload("a", "b", "c", "d", "e"))[0] == SendResult(ok=True, rejected_spans=4)
    assert t.counters()["rejected_spans"] == 4


def test_http_receiver_down_fails_within_the_deadline(transport):
    t = transport(protocol=HTTP, endpoint=f"http://127.0.0.1:{closed_port()}/v1/traces")
    result, took = send(t, payload(), within=1.5)
    assert not result.ok and result.retryable and result.retries >= 1
    assert "refused" in result.error.lower()
    assert took <= 1.5 + 0.5


def test_http_slow_receiver_times_out_within_the_deadline(transport):
    import socket

    # Accepts connections and never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        t = transport(protocol=HTTP, endpoint=f"http://127.0.0.1:{port}/v1/traces")
        result, took = send(t, payload(), within=1.0)
    assert not result.ok and "timed out" in result.error
    assert took <= 1.0 + 0.5


def test_http_keeps_the_connection_alive(http_receiver, transport):
    t = transport(protocol=HTTP, endpoint=http_receiver.traces_url)
    for _ in range(3):
        assert send(t, payload())[0].ok
    assert len(http_receiver.received) == 3
    assert len(http_receiver.connections) == 1


def test_http_reconnects_when_the_server_closes_connections(http_receiver, transport):
    http_receiver.script(HttpAnswer(headers={"Connection": "close"}))
    t = transport(protocol=HTTP, endpoint=http_receiver.traces_url)
    for _ in range(3):
        result, _ = send(t, payload())
        assert result.ok and result.retries == 0
    assert len(http_receiver.connections) == 2


def test_http_a_kept_alive_connection_the_server_closed_is_replaced_at_once(transport):
    receiver = start_http_receiver(idle_timeout=0.2)
    try:
        t = transport(protocol=HTTP, endpoint=receiver.traces_url)
        assert send(t, payload("first"))[0].ok
        time.sleep(0.6)  # the server closes the idle connection
        result, took = send(t, payload("second"))
        assert result.ok and result.retries == 0 and took < 0.5
        assert [s[0] for r in receiver.requests() for s in spans_of(r)] == ["first", "second"]
        assert len(receiver.connections) == 2
    finally:
        receiver.stop()


# -- TLS --------------------------------------------------------------------------


def test_grpc_tls_needs_the_ca_certificate(certs, transport):
    creds = grpc.ssl_server_credentials([(certs.key_pem, certs.cert_pem)])
    receiver = start_grpc_receiver(credentials=creds)
    try:
        endpoint = f"https://127.0.0.1:{receiver.port}"
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
        without = OtlpTransport(config_from_env(env))
        try:
            result, took = send(without, payload(), within=5.0)
        finally:
            without.shutdown()
        # A certificate that does not verify is not retried.
        assert not result.ok and not result.retryable and result.retries == 0
        assert "CERTIFICATE_VERIFY_FAILED" in result.error and took < 1.0
        env["OTEL_EXPORTER_OTLP_CERTIFICATE"] = str(certs.ca_file)
        config = config_from_env(env)
        assert not config.insecure and config.certificate == str(certs.ca_file)
        with_ca = OtlpTransport(config)
        try:
            result, _ = send(with_ca, payload("over tls"))
        finally:
            with_ca.shutdown()
        assert result.ok, result
        assert [s[0] for s in spans_of(receiver.requests()[0])] == ["over tls"]
    finally:
        receiver.stop()


def test_grpc_plaintext_client_cannot_reach_a_tls_receiver(certs, transport):
    creds = grpc.ssl_server_credentials([(certs.key_pem, certs.cert_pem)])
    receiver = start_grpc_receiver(credentials=creds)
    try:
        t = transport(endpoint=f"http://127.0.0.1:{receiver.port}")
        result, took = send(t, payload(), within=1.0)
        assert not result.ok and took <= 1.5
        assert receiver.requests() == []
    finally:
        receiver.stop()


def test_http_tls_needs_the_ca_certificate(certs):
    receiver = start_http_receiver(server_tls_context(certs))
    try:
        env = {
            "OTEL_EXPORTER_OTLP_PROTOCOL": HTTP,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        }
        without = OtlpTransport(config_from_env(env))
        try:
            result, took = send(without, payload(), within=5.0)
        finally:
            without.shutdown()
        # A certificate that does not verify is not retried.
        assert not result.ok and not result.retryable and result.retries == 0
        assert "certificate" in result.error.lower() and took < 1.0
        env["OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"] = str(certs.ca_file)
        with_ca = OtlpTransport(config_from_env(env))
        try:
            result, _ = send(with_ca, payload("over tls"), within=5.0)
        finally:
            with_ca.shutdown()
        assert result.ok, result
        assert [s[0] for s in spans_of(receiver.requests()[0])] == ["over tls"]
    finally:
        receiver.stop()


# -- never raising, threads, shutdown, logging --------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", HTTP])
def test_send_never_raises(protocol, grpc_receiver, http_receiver, caplog):
    endpoint = grpc_receiver.endpoint if protocol == "grpc" else http_receiver.traces_url
    t = OtlpTransport(OtlpConfig(protocol=protocol, endpoint=endpoint))
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        for bad in (None, "text", 42):
            result = t.send(bad, time.monotonic() + 1)  # type: ignore[arg-type]
            assert not result.ok and result.error == "payload is not bytes"
        result = t.send(payload(), time.monotonic() - 1)
        assert not result.ok and result.error == "deadline passed before sending"
        t.shutdown()
        t.shutdown()
        result = t.send(payload(), time.monotonic() + 1)
        assert not result.ok and "shut down" in result.error
    assert t.counters()["requests_failed"] == 5


def test_a_transport_that_cannot_be_set_up_fails_each_send(tmp_path, caplog):
    config = OtlpConfig(
        endpoint="https://127.0.0.1:1", insecure=False, certificate=str(tmp_path / "gone.pem")
    )
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        t = OtlpTransport(config)
        result = t.send(payload(), time.monotonic() + 1)
    t.shutdown()
    assert not result.ok and "cannot set up" in result.error
    assert any("gone.pem" in m for m in warnings_of(caplog))


@pytest.mark.parametrize("protocol", ["grpc", HTTP])
def test_shutdown_ends_a_retry_wait(protocol, grpc_receiver, http_receiver):
    if protocol == "grpc":
        grpc_receiver.script(GrpcAnswer(grpc.StatusCode.UNAVAILABLE, retry_delay_s=20))
        endpoint = grpc_receiver.endpoint
    else:
        http_receiver.script(HttpAnswer(503, {"Retry-After": "20"}))
        endpoint = http_receiver.traces_url
    t = OtlpTransport(OtlpConfig(protocol=protocol, endpoint=endpoint))
    timer = threading.Timer(0.3, t.shutdown)
    timer.start()
    result, took = send(t, payload(), within=30)
    timer.join()
    assert not result.ok and "shut down" in result.error
    assert took < 1.5


@pytest.mark.parametrize("protocol", ["grpc", HTTP])
def test_sends_from_many_threads(protocol, grpc_receiver, http_receiver, transport):
    endpoint = grpc_receiver.endpoint if protocol == "grpc" else http_receiver.traces_url
    receiver = grpc_receiver if protocol == "grpc" else http_receiver
    t = transport(protocol=protocol, endpoint=endpoint, compression="gzip")
    results: list[SendResult] = []
    sizes: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(5):
            data = payload(f"thread {n} send {i}")
            r = t.send(data, time.monotonic() + 10)
            with lock:
                results.append(r)
                sizes.append(len(data))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(r.ok for r in results) and len(results) == 20
    names = sorted(s[0] for r in receiver.requests() for s in spans_of(r))
    assert names == sorted(f"thread {n} send {i}" for n in range(4) for i in range(5))
    c = t.counters()
    assert c["requests_sent"] == 20 and c["bytes_sent"] == sum(sizes)


def test_failures_are_logged_at_most_once_a_minute_per_kind(grpc_receiver, transport, caplog):
    grpc_receiver.script(*[GrpcAnswer(grpc.StatusCode.INVALID_ARGUMENT)] * 3)
    grpc_receiver.script(GrpcAnswer(grpc.StatusCode.PERMISSION_DENIED))
    t = transport(endpoint=grpc_receiver.endpoint)
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        for _ in range(4):
            assert not send(t, payload())[0].ok
    messages = warnings_of(caplog)
    assert len(messages) == 2
    assert "INVALID_ARGUMENT" in messages[0] and grpc_receiver.endpoint in messages[0]
    assert "PERMISSION_DENIED" in messages[1]
    assert t.counters()["requests_failed"] == 4


# -- through a real collector (rotel) ---------------------------------------------


@pytest.fixture
def rotel(grpc_receiver: GrpcReceiver, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """rotel-agent receiving OTLP on (grpc port, http port) and forwarding
    to the gRPC receiver fixture."""
    with run_rotel(grpc_receiver.endpoint, tmp_path) as ports:
        yield ports


def test_spans_reach_the_receiver_through_rotel(rotel, grpc_receiver, transport):
    grpc_port, http_port = rotel
    over_grpc = make_request(["via rotel grpc 1", "via rotel grpc 2"], service="grpc-svc")
    over_http = make_request(["via rotel http"], service="http-svc")
    g = transport(endpoint=f"http://127.0.0.1:{grpc_port}", compression="gzip")
    h = transport(
        protocol=HTTP, endpoint=f"http://127.0.0.1:{http_port}/v1/traces", compression="gzip"
    )
    assert send(g, over_grpc.SerializeToString())[0] == SendResult(ok=True)
    assert send(h, over_http.SerializeToString())[0] == SendResult(ok=True)
    arrived = grpc_receiver.wait_for_spans(3, timeout=15)
    assert sorted(arrived) == sorted(spans_of(over_grpc) + spans_of(over_http))
    services = {
        kv.value.string_value
        for r in grpc_receiver.requests()
        for rs in r.resource_spans
        for kv in rs.resource.attributes
        if kv.key == "service.name"
    }
    assert services == {"grpc-svc", "http-svc"}
