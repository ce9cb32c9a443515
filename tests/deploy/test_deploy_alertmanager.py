"""deploy/alertmanager/alertmanager.yml: amtool accepts it and routes each
severity to its receiver; a real Alertmanager started with it (secrets in
files, as deployed) pages a critical alert at once through the webhook
(with the bearer token of its file) and Slack (the URL of its file), and
inhibits the warning of the same alert."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from deploy_support import ALERTMANAGER, load_yaml, run, tool

from servers import free_port, stop, wait_for_port

CONFIG = ALERTMANAGER / "alertmanager.yml"
PLACEHOLDER_WEBHOOK = "http://127.0.0.1:9095/alerts"


def route(*labels: str) -> str:
    r = run(tool("amtool"), "config", "routes", "test", f"--config.file={CONFIG}", *labels)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip()


def test_amtool_accepts_the_configuration():
    r = run(tool("amtool"), "check-config", str(CONFIG))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_amtool_refuses_a_route_to_an_unknown_receiver(tmp_path):
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(CONFIG.read_text().replace("receiver: oncall-critical", "receiver: nobody"))
    assert run(tool("amtool"), "check-config", str(broken)).returncode != 0


def test_each_severity_goes_to_its_receiver():
    assert route("severity=critical", "alertname=PulsetraceTargetDown") == "oncall-critical"
    assert route("severity=critical", "category=business") == "oncall-critical"
    assert route("severity=warning", "alertname=PulsetraceHighLatency") == "team-warnings"
    assert route("severity=warning", "category=business") == "business-team"
    assert route("severity=warning", "team=dba") == "dba-team"
    # Escalation: a critical alert unresolved for 30 minutes reaches the managers.
    assert route("severity=critical", "escalation=managers") == "managers"
    # Escalation: critical pages within seconds and repeats; warnings wait,
    # grouped, and repeat slowly.
    tree = load_yaml(CONFIG)["route"]
    critical = next(r for r in tree["routes"] if r["receiver"] == "oncall-critical")
    warning = next(r for r in tree["routes"] if r["matchers"] == ['severity="warning"'])

    def seconds(d: str) -> int:
        return int(d[:-1]) * {"s": 1, "m": 60, "h": 3600}[d[-1]]

    assert seconds(critical["group_wait"]) <= 30 and seconds(critical["repeat_interval"]) <= 3600
    assert seconds(warning.get("group_wait", tree["group_wait"])) > seconds(critical["group_wait"])
    assert seconds(warning.get("repeat_interval", tree["repeat_interval"])) > seconds(
        critical["repeat_interval"]
    )


def test_no_secret_is_written_in_the_configuration():
    config = load_yaml(CONFIG)
    assert "smtp_auth_password" not in config["global"]
    assert config["global"]["smtp_auth_password_file"]
    for receiver in config["receivers"]:
        for slack in receiver.get("slack_configs", []):
            assert "api_url" not in slack and slack["api_url_file"]
        for hook in receiver.get("webhook_configs", []):
            auth = hook["http_config"]["authorization"]
            assert "credentials" not in auth and auth["credentials_file"]


class Recorder:
    """A webhook receiver recording each POST's path, headers and JSON body."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                )
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, path: str, timeout: float, proc: subprocess.Popen) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.requests:
                if r["path"] == path:
                    return r
            assert proc.poll() is None, "Alertmanager exited"
            time.sleep(0.2)
        raise AssertionError(f"nothing posted to {path}: {self.requests}")


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[str, Recorder, subprocess.Popen]]:
    recorder = Recorder()
    work = tmp_path / "alertmanager"
    shutil.copytree(ALERTMANAGER, work)
    secrets = work / "secrets"
    secrets.mkdir()
    (secrets / "smtp_password").write_text("smtp-secret\n")
    (secrets / "slack_webhook_url").write_text(f"{recorder.url}/slack\n")
    (secrets / "alert_webhook_token").write_text("hook-token-123\n")
    config = work / "alertmanager.yml"
    text = config.read_text()
    assert text.count(PLACEHOLDER_WEBHOOK) == 2  # on-call and managers
    config.write_text(text.replace(PLACEHOLDER_WEBHOOK, f"{recorder.url}/hook"))
    port = free_port()
    proc = subprocess.Popen(
        [
            tool("prometheus-alertmanager"),
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}", recorder, proc
    finally:
        stop(proc)
        recorder.server.shutdown()
        recorder.server.server_close()


def _alert(severity: str, operation: str) -> dict[str, Any]:
    return {
        "labels": {
            "alertname": "PulsetraceHighErrorRate",
            "severity": severity,
            "category": "errors",
            "job": "pulsetrace",
            "service_name": "api",
            "operation": operation,
        },
        "annotations": {"summary": f"{operation} fails ({severity})", "runbook": "see the docs"},
        "startsAt": datetime.now(timezone.utc).isoformat(),
    }


def _api(base: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read()
    return json.loads(text) if text else None


def test_a_real_alertmanager_pages_critical_and_inhibits_its_warning(alertmanager):
    base, recorder, proc = alertmanager
    _api(
        base,
        "/api/v2/alerts",
        [
            _alert("critical", "POST /messages"),
            _alert("warning", "POST /messages"),
            _alert("warning", "GET /orders"),
        ],
    )
    # Paged within the critical route's group_wait (10 s): the webhook, with
    # the token read from its file, and Slack, at the URL read from its file.
    hook = recorder.wait("/hook", 30, proc)
    assert hook["headers"]["Authorization"] == "Bearer hook-token-123"
    (paged,) = hook["body"]["alerts"]
    assert paged["labels"]["severity"] == "critical"
    assert paged["labels"]["operation"] == "POST /messages"
    assert hook["body"]["receiver"] == "oncall-critical"
    slack = recorder.wait("/slack", 30, proc)
    assert slack["body"]["channel"] == "#alerts-critical"
    assert "POST /messages fails (critical)" in json.dumps(slack["body"])

    states = {
        (a["labels"]["severity"], a["labels"]["operation"]): a["status"]
        for a in _api(base, "/api/v2/alerts")
    }
    assert states[("critical", "POST /messages")]["state"] == "active"
    # The warning of the same alert and operation is silenced by the
    # critical one; another operation's warning is not.
    assert states[("warning", "POST /messages")]["state"] == "suppressed"
    assert states[("warning", "POST /messages")]["inhibitedBy"]
    assert states[("warning", "GET /orders")]["state"] == "active"
    # Only the critical was paged.
    assert all(
        a["labels"]["severity"] == "critical"
        for r in recorder.requests
        if r["path"] == "/hook"
        for a in r["body"]["alerts"]
    )
