"""Configuration from the environment: defaults, and bad values."""

from __future__ import annotations

import logging

import pytest

import pulsetrace
from pulsetrace.config import Config, from_env


def test_defaults_without_environment():
    assert from_env({}) == Config()


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
        }
    )
    assert cfg.sample_rate == 1.0 and cfg.slow_threshold_ms == 250.5
    assert cfg.adaptive_percentile == 95 and cfg.rate_limit == 100
    assert cfg.decision_wait_ms == 3000 and cfg.max_open_traces == 500
    assert cfg.max_spans_per_trace == 50 and cfg.export_queue_size == 1000
    assert cfg.intake_queue_size == 256 and cfg.intake_interval_ms == 20
    assert cfg.keep_errors is False
    assert cfg.keep_attributes == [("tenant", "vip"), ("debug", None)]


@pytest.mark.parametrize(
    ("var", "value", "why", "field", "used"),
    [
        ("PULSETRACE_SAMPLE_RATE", "abc", "not a number", "sample_rate", 0.1),
        ("PULSETRACE_SAMPLE_RATE", "1.5", "above the maximum", "sample_rate", 0.1),
        ("PULSETRACE_SAMPLE_RATE", "nan", "not a finite number", "sample_rate", 0.1),
        ("PULSETRACE_MAX_OPEN_TRACES", "-5", "below the minimum", "max_open_traces", 10_000),
        ("PULSETRACE_MAX_OPEN_TRACES", "1e3", "not an integer", "max_open_traces", 10_000),
        ("PULSETRACE_EXPORT_QUEUE_SIZE", "0", "below the minimum", "export_queue_size", 20_000),
        ("PULSETRACE_DECISION_WAIT_MS", "0", "below the minimum", "decision_wait_ms", 10_000),
        ("PULSETRACE_INTAKE_QUEUE_SIZE", "8", "below the minimum", "intake_queue_size", 4_096),
        ("PULSETRACE_INTAKE_INTERVAL_MS", "x", "not a number", "intake_interval_ms", 50.0),
        ("PULSETRACE_KEEP_ERRORS", "maybe", "not a boolean", "keep_errors", True),
    ],
)
def test_a_bad_value_gives_one_warning_naming_variable_value_and_default(
    caplog, var, value, why, field, used
):
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        cfg = from_env({var: value})
    assert getattr(cfg, field) == used
    (record,) = caplog.records
    msg = record.getMessage()
    assert var in msg and repr(value) in msg and why in msg and repr(used) in msg


def test_a_malformed_attribute_rule_is_skipped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pulsetrace"):
        cfg = from_env({"PULSETRACE_KEEP_ATTRIBUTES": "=x,ok=1"})
    assert cfg.keep_attributes == [("ok", "1")]
    assert len(caplog.records) == 1 and "PULSETRACE_KEEP_ATTRIBUTES" in caplog.text


def test_configure_rejects_unknown_settings():
    with pytest.raises(TypeError, match="unknown pulsetrace settings: nope"):
        pulsetrace.configure(nope=1)


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
    assert "PULSETRACE_RATE_LIMIT='oops' is not a number; using 0.0 instead" in out.stderr
