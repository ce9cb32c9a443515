"""Configuration: one frozen object with one set of defaults and ranges, read
from the environment in one place; bad values from the environment are
clamped or replaced with one warning, bad values in code raise."""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import re
import types
from pathlib import Path

import pytest

import pulsetrace
from pulsetrace._native import Tracer
from pulsetrace.config import Config, OtlpConfig, from_env, number_repr

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_without_environment():
    assert from_env({}) == Config()


def test_the_configuration_is_frozen():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sample_rate = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.resource_attributes["x"] = "y"  # type: ignore[index]


def test_values_are_read():
    cfg = from_env(
        {
            "PULSETRACE_SAMPLE_RATE": "1",
            "PULSETRACE_SLOW_THRESHOLD_MS": "250.5",
            "PULSETRACE_ADAPTIVE_PERCENTILE": "95",
            "PULSETRACE_RATE_LIMIT": "100",
            "PULSETRACE_DECISION_WAIT_MS": "3000",
            "PULSETRACE_MAX_OPEN_TRACES": "500",
            "PULSETRACE_MAX_SPANS_PER_TRACE": "50",
            "PULSETRACE_EXPORT_QUEUE_SIZE": "1000",
            "PULSETRACE_INTAKE_QUEUE_SIZE": "256",
            "PULSETRACE_INTAKE_INTERVAL_MS": "20",
            "PULSETRACE_KEEP_ERRORS": "false",
            "PULSETRACE_KEEP_ATTRIBUTES": "tenant=vip, debug",
            "PULSETRACE_REDACT_QUERY_PARAMS": "Token, apikey",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }
    )
    assert cfg.sample_rate == 1.0 and cfg.slow_threshold_ms == 250.5
    assert cfg.adaptive_percentile == 95 and cfg.rate_limit == 100
    assert cfg.decision_wait_ms == 3000 and cfg.max_open_traces == 500
    assert cfg.max_spans_per_trace == 50 and cfg.export_queue_size == 1000
    assert cfg.intake_queue_size == 256 and cfg.intake_interval_ms == 20
    assert cfg.keep_errors is False
    assert cfg.keep_attributes == (("tenant", "vip"), ("debug", None))
    assert cfg.redact_query_params == ("token", "apikey")
    assert cfg.otlp.protocol == "http/protobuf"


@pytest.mark.parametrize(
    ("var", "value", "message", "field", "used"),
    [
        ("PULSETRACE_SAMPLE_RATE", "abc", "is not a number; using 0.1", "sample_rate", 0.1),
        ("PULSETRACE_SAMPLE_RATE", "nan", "is not a number; using 0.1", "sample_rate", 0.1),
        ("PULSETRACE_SAMPLE_RATE", "1.5", "is above the maximum (1); using 1", "sample_rate", 1),
        ("PULSETRACE_SAMPLE_RATE", "-inf", "is below the minimum (0); using 0", "sample_rate", 0),
        (
            "PULSETRACE_MAX_EVENTS",
            "99999999999999999999999",
            "is above the maximum (10000); using 10000 instead",
            "max_events",
            10_000,
        ),
        (
            "PULSETRACE_MAX_OPEN_TRACES",
            "-5",
            "is below the minimum (1); using 1 instead",
            "max_open_traces",
            1,
        ),
        (
            "PULSETRACE_MAX_OPEN_TRACES",
            "1.5",
            "is not an integer; using 10000",
            "max_open_traces",
            10_000,
        ),
        (
            "PULSETRACE_INTAKE_QUEUE_SIZE",
            "9223372036854775807",
            "is above the maximum (65536); using 65536 instead",
            "intake_queue_size",
            65_536,
        ),
        (
            "PULSETRACE_INTAKE_QUEUE_SIZE",
            "8",
            "is below the minimum (16); using 16",
            "intake_queue_size",
            16,
        ),
        (
            "PULSETRACE_EXPORT_INTERVAL_MS",
            "1e30",
            "is above the maximum (3600000); using 3600000 instead",
            "export_interval_ms",
            3_600_000,
        ),
        (
            "PULSETRACE_DECISION_WAIT_MS",
            "0",
            "is below the minimum (1); using 1",
            "decision_wait_ms",
            1,
        ),
        ("PULSETRACE_INTAKE_INTERVAL_MS", "x", "is not a number", "intake_interval_ms", 50),
        ("PULSETRACE_KEEP_ERRORS", "maybe", "is not a boolean", "keep_errors", True),
        (
            "PULSETRACE_METRICS_ADDR",
            "127.0.0.1:99999",
            "is out of range: the port 99999 is not within 1 to 65535; using '127.0.0.1:9464'",
            "metrics_addr",
            "127.0.0.1:9464",
        ),
        (
            "PULSETRACE_METRICS_ADDR",
            "localhost",
            "is not host:port; using '127.0.0.1:9464'",
            "metrics_addr",
            "127.0.0.1:9464",
        ),
        (
            "PULSETRACE_REDACT_QUERY_PARAMS",
            "tok\udcffen",  # os.environ's form of the byte 0xff
            "is not valid UTF-8; using the default list instead",
            "redact_query_params",
            Config().redact_query_params,
        ),
    ],
)
def test_a_bad_value_gives_one_warning_naming_variable_value_and_value_used(
    caplog, var, value, message, field, used
):
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        cfg = from_env({var: value})
    assert getattr(cfg, field) == used
    (record,) = caplog.records
    msg = record.getMessage()
    try:
        shown = ascii(value.encode("utf-8").decode())
    except UnicodeEncodeError:  # bytes that are not UTF-8 are shown as bytes
        shown = ascii(value.encode("utf-8", "surrogateescape"))
    assert msg.startswith(f"pulsetrace: {var}={shown} ")
    assert message in msg


def test_the_port_out_of_range_is_not_called_malformed(caplog):
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        from_env({"PULSETRACE_METRICS_ADDR": "127.0.0.1:99999"})
    assert "not host:port" not in caplog.text
    assert "port 99999" in caplog.text and "out of range" in caplog.text


def test_a_warning_shows_at_most_64_characters_of_the_value(caplog):
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        cfg = from_env(
            {"PULSETRACE_MAX_EVENTS": "x" * 1_000_000, "OTEL_SERVICE_NAME": "s" * 70_000}
        )
    assert cfg.max_events == 128 and cfg.service_name == "unknown_service"
    assert len(caplog.records) == 2
    for record in caplog.records:
        assert len(record.getMessage()) < 250
    assert "(1000000 characters)" in caplog.text and "(70000 characters)" in caplog.text


def test_a_malformed_attribute_rule_is_skipped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        cfg = from_env({"PULSETRACE_KEEP_ATTRIBUTES": "=x,ok=1"})
    assert cfg.keep_attributes == (("ok", "1"),)
    assert len(caplog.records) == 1 and "PULSETRACE_KEEP_ATTRIBUTES" in caplog.text


def test_configure_rejects_unknown_settings():
    with pytest.raises(TypeError, match="unknown pulsetrace settings: nope"):
        pulsetrace.configure(nope=1)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"max_events": 10**30}, "max_events=1000000000000000000000000000000 is above"),
        ({"intake_queue_size": 4}, "intake_queue_size=4 is below the minimum (16)"),
        ({"sample_rate": float("nan")}, "sample_rate is not a number"),
        ({"export_interval_ms": "fast"}, "export_interval_ms='fast' is not a number"),
        ({"max_attributes": 2.5}, "max_attributes=2.5 is not an integer"),
        ({"metrics_addr": "127.0.0.1:99999"}, "metrics_addr='127.0.0.1:99999' is out of range"),
        ({"head_sampler": "sometimes"}, "head_sampler='sometimes' is not one of"),
        ({"redact_query_params": ("tok\udcffen",)}, "redact_query_params is not valid UTF-8"),
        ({"otlp": {"timeout_ms": 5}}, "otlp is not an OtlpConfig"),
    ],
)
def test_a_bad_value_in_code_raises_naming_the_setting(overrides, named):
    before = pulsetrace.get_config()
    with pytest.raises(ValueError) as info:
        pulsetrace.configure(Config(), **overrides)
    assert named in str(info.value)
    assert pulsetrace.get_config() == before
    with pytest.raises(ValueError, match="timeout_ms=0 is below the minimum"):
        OtlpConfig(timeout_ms=0)


def test_the_native_side_has_no_defaults_a_missing_field_is_an_error_naming_it():
    full = {f.name: getattr(Config(), f.name) for f in dataclasses.fields(Config)}
    tracer = Tracer(contextvars.ContextVar("t", default=None))
    tracer.configure(types.SimpleNamespace(**full))  # every field: accepted
    for name in ("sample_rate", "intake_queue_size", "redact_query_params", "enabled"):
        partial = {k: v for k, v in full.items() if k != name}
        with pytest.raises(ValueError, match=f"config field {name}: missing"):
            tracer.configure(types.SimpleNamespace(**partial))
    # None is not a way to ask for a native default either.
    with pytest.raises(ValueError, match="config field sample_rate"):
        tracer.configure(types.SimpleNamespace(**{**full, "sample_rate": None}))


def test_the_native_side_asserts_what_its_types_need():
    full = {f.name: getattr(Config(), f.name) for f in dataclasses.fields(Config)}
    tracer = Tracer(contextvars.ContextVar("t", default=None))
    for name, value in [("intake_queue_size", 0), ("sample_rate", 2.0), ("rate_limit", -1.0)]:
        with pytest.raises(ValueError, match=f"config field {name}"):
            tracer.configure(types.SimpleNamespace(**{**full, name: value}))


def _readme_rows() -> dict[str, list[str]]:
    """Each variable of the README's configuration table -> its row's cells
    (lines of the form ``| `VAR` ... |``; a row may name several variables)."""
    rows: dict[str, list[str]] = {}
    for line in README.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        names = re.findall(r"`([A-Z][A-Z0-9_<>]+)`", cells[0])
        if "`_TRACES_` form too" in cells[0]:
            names += [n.replace("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_") for n in names]
        for n in names:
            rows[n] = cells
    return rows


def _declared() -> dict[str, tuple[type, dataclasses.Field]]:
    """Each variable a Config or OtlpConfig field declares -> (class, field)."""
    out = {}
    for cls in (Config, OtlpConfig):
        for f in dataclasses.fields(cls):
            s = f.metadata.get("setting")
            for var in s.env if s else ():
                out[var] = (cls, f)
                if cls is OtlpConfig and var.startswith("OTEL_EXPORTER_OTLP_"):
                    out[var.replace("_OTLP_", "_OTLP_TRACES_")] = (cls, f)
    return out


def _states_default(cell: str, default: object) -> bool:
    """Whether the README's default cell states ``default``."""
    if isinstance(default, bool):
        return cell == f"`{str(default).lower()}`"
    if isinstance(default, (int, float)):
        return float(cell.strip("`")) == default
    if isinstance(default, tuple) and default:
        return cell == f"`{','.join(default)}`"
    if not default:
        return cell == "(none)"
    return cell == f"`{default}`"


# Rows whose default the README describes in words.
DESCRIBED = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "`http://localhost:4317` (grpc), ",
    "OTEL_EXPORTER_OTLP_INSECURE": "by scheme",
    "OTEL_EXPORTER_OTLP_CERTIFICATE": "system roots",
}


# Rows for variables that belong to another library, which reads them itself.
NOT_OURS = {
    # The OpenTelemetry API's own choice of provider; the bridge (otel.py)
    # only sets it when the application has not.
    "OTEL_PYTHON_TRACER_PROVIDER",
}


def test_the_readme_and_the_configuration_declare_the_same_settings_defaults_and_ranges():
    """One source: every variable in the README's table is declared by one
    field, whose default and range are the ones the table states."""
    rows, declared = _readme_rows(), _declared()
    assert set(rows) - NOT_OURS == set(declared)
    for var, (_cls, f) in declared.items():
        cells = rows[var]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        generic = var.replace("_TRACES_", "_")
        if generic in DESCRIBED:
            assert cells[2].startswith(DESCRIBED[generic]), var
        elif var == "OTEL_SDK_DISABLED":
            assert _states_default(cells[2], not default), var
        elif var == "OTEL_TRACES_EXPORTER":
            assert _states_default(cells[2], default[0]), var
        elif "<NAME>" not in var:  # one variable per integration, each `true`
            assert _states_default(cells[2], default), var
        s = f.metadata["setting"]
        if s.high is not None:
            stated = f"range `{number_repr(s.low)}` to `{number_repr(s.high)}`"
            assert stated in cells[1], var


def test_the_environment_reaches_a_new_process(tmp_path):
    import subprocess
    import sys

    code = "import pulsetrace; c = pulsetrace.get_config(); print(c.sample_rate, c.rate_limit)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PULSETRACE_SAMPLE_RATE": "0.5", "PULSETRACE_RATE_LIMIT": "oops", "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["0.5", "0.0"]
    assert "PULSETRACE_RATE_LIMIT='oops' is not a number; using 0 instead" in out.stderr
