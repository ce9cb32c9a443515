"""Declarative percentile conditions over a window ("p99 of POST /checkout
over the last 5m > 500 ms"), computed from the kept copies of the native
histograms as the injectable clock moves: older slow requests leave the
window, ``for`` must hold, every window a rule names is its own, and a
window longer than the copies kept is refused naming the bound."""

from __future__ import annotations

import pytest
from alert_spans import timed
from alert_support import Clock, Receiver, manager, settle

import pulsetrace
from pulsetrace.monitoring.alerts.rules import Threshold, make_rule

from conftest import fresh


@pytest.fixture
def rx():
    r = Receiver()
    yield r
    r.close()


def p99_rule(rule_id, window, for_="0s"):
    cond = {
        "kind": "percentile",
        "operation": "POST /checkout",
        "threshold": 0.5,
        "window": window,
        "min_count": 10,
    }
    return make_rule(rule_id, "Slow checkout", cond, severity="high", for_=for_)


def test_p99_over_the_last_5m_fires_after_for_and_forgets_older_slow_requests(tmp_path, rx):
    fresh()
    clock = Clock()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    m.add(p99_rule("p99", "5m", for_="2m"))
    timed("POST /checkout", 50, ms=900)
    m.cycle()  # active, but not yet for 2 minutes
    assert m.store.open_alert("p99") is None
    for _ in range(2):
        clock.advance(1)
        timed("POST /checkout", 50, ms=900)
        m.cycle()
    alert = m.store.open_alert("p99")
    assert alert is not None and alert["operation"] == "POST /checkout"
    assert alert["value"] == pytest.approx(0.9, rel=0.02) and alert["threshold"] == 0.5
    # Fast requests from now on: while the last 5 minutes still hold slow
    # ones, the alert stays; once they left the window, it resolves (over
    # the process's whole life, the p99 stays slow: a third were).
    for _ in range(3):
        clock.advance(1)
        timed("POST /checkout", 50, ms=20)
        m.cycle()
    assert m.store.open_alert("p99") is not None
    for _ in range(3):
        clock.advance(1)
        timed("POST /checkout", 50, ms=20)
        m.cycle()
    assert m.store.open_alert("p99") is None
    assert m.store.get(alert["id"])["state"] == "resolved"
    assert m.rules["p99"].last_verdict.value == pytest.approx(0.02, rel=0.02)
    assert pulsetrace.latency()[0]["p99"] == pytest.approx(0.9, rel=0.02)
    settle(m)


def test_each_rule_judges_its_own_window(tmp_path, rx):
    fresh()
    clock = Clock()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    m.add(p99_rule("last-1m", "1m"))
    m.add(p99_rule("last-10m", "10m"))
    m.add(p99_rule("last-1h", "1h"))
    timed("POST /checkout", 30, ms=800)
    m.cycle()
    for _ in range(4):
        clock.advance(1)
        timed("POST /checkout", 30, ms=30)
        m.cycle()
    # The slow requests are 4 minutes old: outside the last minute only.
    assert m.store.open_alert("last-1m") is None
    assert m.store.open_alert("last-10m") is not None
    assert m.store.open_alert("last-1h") is not None
    assert m.rules["last-1m"].last_verdict.value == pytest.approx(0.03, rel=0.02)
    settle(m)


def test_too_few_samples_in_the_window_is_no_verdict(tmp_path, rx):
    fresh()
    clock = Clock()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    m.add(p99_rule("p99", "5m"))
    timed("POST /checkout", 50, ms=900)
    m.cycle()
    assert m.store.open_alert("p99") is not None
    # Ten minutes with one request a minute, all fast: each window holds too
    # few to judge, so the alert is neither resolved nor re-judged.
    for _ in range(10):
        clock.advance(1)
        timed("POST /checkout", 1, ms=20)
        m.cycle()
    verdict = m.rules["p99"].last_verdict
    assert verdict.known is False
    assert m.store.open_alert("p99") is not None
    settle(m)


def test_a_span_kind_limits_the_percentile_to_those_spans(tmp_path, rx):
    fresh()
    clock = Clock()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    for kind in ("server", "client"):
        cond = Threshold(
            "percentile", "GET /x", threshold=0.5, window="5m", min_count=5, span_kind=kind
        )
        m.add(make_rule(f"p99-{kind}", "Slow", cond))
    timed("GET /x", 20, ms=900, kind="client")
    timed("GET /x", 20, ms=10, kind="server")
    m.cycle()
    assert m.store.open_alert("p99-client") is not None
    assert m.store.open_alert("p99-server") is None
    settle(m)


@pytest.mark.parametrize("window", ["2h", "3601", "0"])
def test_a_window_beyond_the_kept_copies_is_refused_naming_the_bound(window):
    with pytest.raises(ValueError, match="percentile's window is more than 0 and at most 3600s"):
        Threshold("percentile", "GET /x", threshold=1.0, window=window)


def test_the_applications_evaluator_reads_the_monitoring_servers_copies(tmp_path):
    from monitoring_support import monitoring_server

    from pulsetrace.monitoring import alerts, apm

    alerts.reset()
    try:
        with monitoring_server(alert_dir=str(tmp_path)):
            m = alerts.manager()
            assert m.windows is apm.WINDOWS and apm.WINDOWS.running
            m.add(p99_rule("p99", "5m"))
            timed("POST /checkout", 30, ms=700)
            m.cycle()
            # The thread takes the copies: the evaluation took none itself.
            assert m.rules["p99"].last_verdict.value == pytest.approx(0.7, rel=0.02)
            assert m.store.open_alert("p99") is not None
    finally:
        alerts.reset()


def test_a_declarative_rate_limited_condition_counts_429s_over_its_window(tmp_path, rx):
    from alert_spans import answered

    from pulsetrace.monitoring.alerts.rules import from_dict

    fresh()
    clock = Clock()
    m = manager(str(tmp_path / "a.db"), rx, clock)
    spec = {
        "id": "throttled",
        "name": "Clients throttled",
        "severity": "medium",
        "condition": {
            "kind": "rate_limited",
            "operation": "*",
            "span_kind": "server",
            "threshold": 20,
            "op": ">=",
            "window": "2m",
        },
    }
    m.add(from_dict(spec, "rule"))
    answered("GET /a", 429, 12)
    answered("GET /b", 429, 7)
    answered("GET /b", 503, 30)
    m.cycle()
    assert m.store.open_alert("throttled") is None
    assert m.rules["throttled"].last_verdict.value == 19
    clock.advance(1)
    answered("GET /b", 429, 1)
    m.cycle()
    assert m.store.open_alert("throttled")["value"] == 20
    clock.advance(3)  # the 429s are older than the window
    m.cycle()
    assert m.store.open_alert("throttled") is None
    settle(m)
