"""End to end: a Flask application under ``pulsetrace-run`` with an
error-rate rule from ``PULSETRACE_ALERT_RULES`` and every channel from the
environment; failing traffic fires the alert, delivered to each channel in
the escalation's order as the clock advances; acknowledged through the
endpoint; the process killed and restarted: the alert is still
acknowledged and escalates no further."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from alert_support import SECRET, Receiver, smtp_server

from pulsetrace.monitoring.alerts.store import Store
from servers import free_port

HERE = Path(__file__).resolve().parent
RUN = str(Path(sys.executable).with_name("pulsetrace-run"))
TOKEN = "e2e-token"


def _call(port, method, path, body=None, token=TOKEN):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, data=data, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _until(cond, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


class App:
    def __init__(self, env, log, gunicorn=False):
        self.port, self.env, self.log = free_port(), env, log
        args = [sys.executable, str(HERE / "alert_app.py"), str(self.port)]
        if gunicorn:
            gunicorn_bin = str(Path(sys.executable).with_name("gunicorn"))
            args = [gunicorn_bin, "-w", "2", "-b", f"127.0.0.1:{self.port}", "alert_app:app"]
        with open(log, "ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [RUN, *args],
                env=env,
                cwd=HERE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        mport = int(env["PULSETRACE_METRICS_ADDR"].rsplit(":", 1)[1])
        try:
            _until(lambda: self._answers(self.port, "/orders"), "the app")
            _until(lambda: self._answers(mport, "/health/live"), "the monitoring server")
        except AssertionError as exc:
            self.kill()
            raise AssertionError(f"{exc}: {self.output()}") from None

    def _answers(self, port, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def output(self):
        return Path(self.log).read_text(errors="replace")[-3000:]

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def rx():
    r = Receiver()
    yield r
    r.close()


def _rules(tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            {
                "rules": [
                    {
                        "id": "pay-errors",
                        "name": "Payments failing",
                        "severity": "critical",
                        "condition": {
                            "kind": "error_ratio",
                            "operation": "GET /pay",
                            "threshold": 0.05,
                            "window": "5m",
                            "min_count": 5,
                        },
                    }
                ]
            }
        )
    )
    return rules


def _env(tmp_path, rx, mport, clock_file, smtp_port=None, cert=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))}
    env.update(
        MONITORING_ENABLED="true",
        PULSETRACE_METRICS_ADDR=f"127.0.0.1:{mport}",
        PULSETRACE_MONITORING_TOKEN=TOKEN,
        OTEL_TRACES_EXPORTER="console",  # kept traces queued: the /apm ring holds them
        PULSETRACE_EXPORT_INTERVAL_MS="50",  # within 50 ms
        PULSETRACE_ALERT_DIR=str(tmp_path / "state"),
        PULSETRACE_ALERT_RULES=str(_rules(tmp_path)),
        PULSETRACE_ALERT_INTERVAL_MS="100",
        SLACK_WEBHOOK_URL=rx.url + "/slack",
        ALERT_WEBHOOK_URL=rx.url + "/webhook",
        ALERT_WEBHOOK_SECRET=SECRET,
        PAGERDUTY_ROUTING_KEY="pd-key",
        PULSETRACE_PAGERDUTY_URL=rx.url + "/pagerduty",
        PULSETRACE_SMS_WEBHOOK_URL=rx.url + "/sms",
        PULSETRACE_PHONE_WEBHOOK_URL=rx.url + "/phone",
        ALERT_TEST_CLOCK=str(clock_file),
    )
    if smtp_port is not None:
        env.update(
            SMTP_HOST="localhost",
            SMTP_PORT=str(smtp_port),
            PULSETRACE_SMTP_CERTIFICATE=cert,
            ALERT_FROM_EMAIL="alerts@example.com",
            CRITICAL_ALERT_EMAILS="oncall@example.com",
            PULSETRACE_MANAGER_EMAILS="cto@example.com",
        )
    return env


def test_flask_error_rate_alert_escalates_is_acknowledged_and_survives_a_restart(tmp_path, rx):
    clock_file = tmp_path / "clock"
    t0 = time.time()
    clock_file.write_text(repr(t0))
    mport = free_port()
    with smtp_server(tmp_path) as (inbox, smtp_port, cert):
        env = _env(tmp_path, rx, mport, clock_file, smtp_port, cert)
        app = App(env, tmp_path / "app.log")
        try:
            for _ in range(20):
                assert app.get("/orders") == 200
                assert app.get("/pay") == 500
            # At once: Slack, the webhook (signed), e-mail.
            _until(
                lambda: len(rx.paths()) >= 2 and inbox.messages,
                lambda: f"the first step: {_call(mport, 'GET', '/monitoring/rules')}, "
                f"{_call(mport, 'GET', '/health/metrics')}, "
                f"{rx.got}, {inbox.messages}, {app.output()}",
            )
            assert sorted(rx.paths()) == ["/slack", "/webhook"]
            assert inbox.messages[0]["to"] == ["oncall@example.com"] and inbox.messages[0]["tls"]
            text = rx.of("/slack")[0]["json"]["text"]
            assert "GET /pay" in text and "against a threshold of 0.05" in text
            clock_file.write_text(repr(t0 + 15 * 60))
            _until(lambda: len(rx.paths()) >= 4, "PagerDuty and SMS")
            assert sorted(rx.paths()[2:]) == ["/pagerduty", "/sms"]
            # A link to an example kept trace of the operation, served by the
            # monitoring server (by now the failed requests' traces are kept).
            link = rx.of("/sms")[0]["json"]["trace_url"]
            assert link.startswith(f"http://127.0.0.1:{mport}/apm/traces/")
            assert link in rx.of("/sms")[0]["json"]["text"]
            status, trace = _call(mport, "GET", link.split(str(mport), 1)[1])
            assert status == 200 and "GET /pay" in json.dumps(trace)
            clock_file.write_text(repr(t0 + 30 * 60))
            _until(lambda: len(rx.paths()) >= 5, "the phone call")
            assert rx.paths()[4] == "/phone"
            status, body = _call(mport, "GET", "/monitoring/alerts?state=firing")
            (alert,) = body["alerts"]
            path = f"/monitoring/alerts/{alert['id']}/acknowledge"
            status, body = _call(mport, "POST", path, {"by": "oncall"})
            assert status == 200 and body["state"] == "acknowledged"
            # The alert state's SQL and the deliveries are never traced.
            _, metrics = _call(mport, "GET", "/health/metrics")
            names = sorted({op["name"] for op in metrics["operations"]})
            assert names == ["GET /orders", "GET /pay"], names
        finally:
            app.kill()
        # Restarted an hour and a half later: no managers' e-mail, nothing more.
        clock_file.write_text(repr(t0 + 120 * 60))
        app = App(env, tmp_path / "app.log")
        try:
            _until(
                lambda: _call(mport, "GET", "/monitoring/status")[1]["evaluator"]["cycles"] >= 5,
                "the restarted evaluator",
            )
            status, body = _call(mport, "GET", "/monitoring/alerts")
            (alert,) = body["alerts"]
            assert alert["state"] == "acknowledged" and alert["acked_by"] == "oncall"
            assert alert["step"] == 2
            assert len(rx.paths()) == 5 and len(inbox.messages) == 1
            assert all(not g["bad_signature"] for g in rx.got)
        finally:
            app.kill()


def test_under_gunicorn_one_worker_evaluates_and_the_alert_fires_once(tmp_path, rx):
    """The master serves the monitoring endpoints but no request: a worker
    that serves is elected; the other stays quiet (one alert, one step)."""
    pytest.importorskip("gunicorn")
    clock_file = tmp_path / "clock"
    clock_file.write_text(repr(time.time()))
    mport = free_port()
    app = App(_env(tmp_path, rx, mport, clock_file), tmp_path / "app.log", gunicorn=True)
    try:
        for _ in range(40):
            assert app.get("/orders") == 200
            assert app.get("/pay") == 500
        _until(lambda: len(rx.paths()) >= 2, f"the first step ({app.output()})")
        time.sleep(1.0)  # ten more cycles of every process
        assert sorted(rx.paths()) == ["/slack", "/webhook"]
        alerts = Store(str(tmp_path / "state" / "alerts.db")).alerts()
        assert [(a["rule_id"], a["step"]) for a in alerts] == [("pay-errors", 0)]
    finally:
        app.kill()
