"""deploy/prometheus checked by Prometheus' own tool: the configuration and
rules load, every alerting rule fires from synthetic series as
``alerts_test.yml`` expects (and does not fire where it must not), and a
rule whose threshold is broken fails those unit tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from deploy_support import PROMETHEUS, RULES, alerting_rules, load_yaml, run, tool

SEVERITIES = {"critical", "warning"}


def test_promtool_accepts_the_configuration_and_its_rule_files():
    r = run(tool("promtool"), "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(RULES)} rule files found" in r.stdout
    r = run(tool("promtool"), "check", "rules", *map(str, RULES))
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_unit_tests_fire_every_alerting_rule():
    r = run(tool("promtool"), "test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    assert r.returncode == 0, r.stdout + r.stderr
    # Every alerting rule has a test where it fires.
    tests = load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == {rule["alert"] for rule in alerting_rules()}
    # And a test where traffic that must not alert fires nothing.
    quiet = [
        test
        for test in tests
        if test.get("alert_rule_test")
        and all(not case.get("exp_alerts") for case in test["alert_rule_test"])
    ]
    assert quiet and {c["alertname"] for c in quiet[0]["alert_rule_test"]} >= {
        "PulsetraceHighErrorRate",
        "PulsetraceHighLatency",
        "PulsetraceMessageDeliveryFailures",
    }


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(PROMETHEUS, tmp_path / "prometheus")
    return tmp_path / "prometheus"


def test_a_broken_threshold_fails_the_unit_tests(tmp_path):
    """The unit tests judge the rules: raising the error-rate warning's
    threshold to 50% (so 10% failures no longer alert) makes them fail."""
    copy = _copy(tmp_path)
    alerts = copy / "rules" / "alerts.yml"
    text = alerts.read_text()
    assert text.count("operation:http_server_errors:ratio_rate5m > 0.05") == 1
    alerts.write_text(text.replace("ratio_rate5m > 0.05", "ratio_rate5m > 0.5"))
    r = run(tool("promtool"), "test", "rules", "alerts_test.yml", cwd=copy)
    assert r.returncode != 0
    assert "PulsetraceHighErrorRate" in r.stdout + r.stderr


def test_a_misspelled_series_fails_the_unit_tests(tmp_path):
    """A rule reading a series pulsetrace does not expose matches nothing:
    the unit tests catch it (promtool check rules cannot)."""
    copy = _copy(tmp_path)
    recording = copy / "rules" / "recording.yml"
    recording.write_text(
        recording.read_text().replace("rate(http_server_errors_total", "rate(http_errors_total")
    )
    assert run(tool("promtool"), "check", "rules", str(recording)).returncode == 0
    r = run(tool("promtool"), "test", "rules", "alerts_test.yml", cwd=copy)
    assert r.returncode != 0


def test_promtool_refuses_a_rule_file_that_does_not_parse(tmp_path):
    copy = _copy(tmp_path)
    (copy / "rules" / "broken.yml").write_text(
        yaml.safe_dump(
            {"groups": [{"name": "x", "rules": [{"record": "a:b", "expr": "rate(x[5m]"}]}]}
        )
    )
    r = run(tool("promtool"), "check", "config", str(copy / "prometheus.yml"))
    assert r.returncode != 0


def test_every_alert_has_a_severity_a_category_a_summary_and_a_runbook():
    rules = alerting_rules()
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["labels"]["category"], rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["runbook"].split()) >= 5, rule["alert"]
    # The alert categories of the stack: availability, errors, latency,
    # dependencies, business, the agent itself, and the escalation of a
    # critical alert left unresolved.
    assert {r["labels"]["category"] for r in rules} == {
        "availability",
        "errors",
        "latency",
        "dependencies",
        "business",
        "agent",
        "escalation",
    }
    # A warning and a critical of one alert share their labels but severity
    # (what Alertmanager's inhibition compares).
    by_name: dict[str, list[dict]] = {}
    for r in rules:
        by_name.setdefault(r["alert"], []).append(r)
    for name, pair in by_name.items():
        if len(pair) > 1:
            assert sorted(r["labels"]["severity"] for r in pair) == ["critical", "warning"], name
            assert {r["labels"]["category"] for r in pair} == {pair[0]["labels"]["category"]}
