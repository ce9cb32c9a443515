"""``make demo`` as a user runs it: ``examples/demo_service/run.py`` with
``DEMO_SECONDS`` and free ports. The runner starts the messaging service
under ``pulsetrace-run gunicorn -w 2`` with its load generator; while it
runs, what the README promises is checked through the endpoints a user
opens (the service, ``/apm/transactions``, ``/apm/traces``, ``/health``,
the business metrics, the live page), then the runner must stop by itself,
exit 0 with its summary, and leave no process behind.

The tests share one run (a module fixture) and read it while it lasts; the
last one waits for its end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from e2e_helpers import clean_env, free_port
from playwright.sync_api import expect, sync_playwright

from servers import require

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "examples" / "demo_service" / "run.py"
#: Long enough for every check below on a loaded machine.
SECONDS = 45


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    port: int
    mport: int
    out: Path

    def output(self) -> str:
        return self.out.read_text(errors="replace")


def http(port: int, path: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    """(status, JSON or text) of a request to 127.0.0.1:``port``, on a new connection."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, json.loads(raw) if "json" in ctype else raw.decode(errors="replace")


#: ``GET /`` requests the tests made (the load generator never calls it).
index_calls = 0


def index(demo: Demo) -> dict[str, Any]:
    """The service's ``GET /`` (its routes, the worker that answered), counted."""
    global index_calls
    status, info = http(demo.port, "/")
    index_calls += 1
    assert status == 200, info
    return dict(info)


def until(cond: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except (OSError, KeyError, ValueError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def processes_with(text: str) -> list[int]:
    """Ids of the processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace"
            ):
                found.append(int(entry.name))
    return found


def start(tmp: Path, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp / "runner.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, str(RUNNER)],
            cwd=tmp,
            env=clean_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, out


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    port, mport = free_port(), free_port()
    proc, out = start(
        tmp_path_factory.mktemp("demo"),
        DEMO_PORT=str(port),
        PULSETRACE_METRICS_ADDR=f"127.0.0.1:{mport}",
        DEMO_SECONDS=str(SECONDS),
    )
    d = Demo(proc, port, mport, out)
    try:
        until(
            lambda: "live page" in d.output() or proc.poll() is not None, "the runner's banner", 90
        )
        assert proc.poll() is None, d.output()
        yield d
    finally:
        # Whatever the tests did: nothing of this run may outlive them.
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        for pid in processes_with(f"127.0.0.1:{port}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_the_service_answers(demo: Demo) -> None:
    info = index(demo)
    assert info["service"] == "messaging-demo"
    assert "POST /messages" in info["routes"]
    status, body = http(demo.port, "/contacts?company=comp_acme&limit=5")
    assert status == 200 and len(body["contacts"]) == 5
    status, body = http(demo.port, "/messages", "POST", {"contact_id": 1, "template": "welcome"})
    assert status in (201, 502, 504), body  # the provider stub times out now and then
    status, body = http(demo.port, "/messages", "POST", {"contact_id": "one"})
    assert status == 400 and "contact_id" in body["error"]


def test_transactions_count_every_workers_requests(demo: Demo) -> None:
    """``GET /`` (which the load generator never calls) answered by both
    workers: the merged count is exactly the number of requests sent."""
    pids: list[int] = []
    while len(set(pids)) < 2 and len(pids) < 400:
        pids.append(index(demo)["worker_pid"])
    assert len(set(pids)) == 2, f"one worker answered all {len(pids)} requests"
    # Each worker is listed once it has published its first copy (about a second).
    until(
        lambda: set(pids) <= {w["pid"] for w in http(demo.mport, "/apm/status")[1]["workers"]},
        f"workers {sorted(set(pids))} in /apm/status",
    )

    def operations() -> dict[tuple[str, str], dict[str, Any]]:
        ops = http(demo.mport, "/apm/transactions?window=all")[1]["operations"]
        return {(o["kind"], o["name"]): o for o in ops}

    until(
        lambda: operations().get(("server", "GET /"), {}).get("count", 0) >= index_calls,
        "every GET / counted in /apm/transactions",
    )
    time.sleep(1.5)  # one more copy from each worker: nothing counted twice
    found = operations()
    assert found[("server", "GET /")]["count"] == index_calls
    for route in (
        "POST /messages",
        "GET /contacts",
        "POST /contacts",
        "GET /campaigns",
        "POST /provider/v1/messages",
    ):
        assert found[("server", route)]["count"] > 0, route
    assert found[("server", "POST /contacts")]["p99_ms"] > 0
    assert found[("client", "INSERT messages")]["count"] > 0


def _tree_spans(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("children", []):
        yield from _tree_spans(child)


def test_a_kept_trace_holds_server_sql_and_http_client_spans(demo: Demo) -> None:
    """A message send: its SERVER span, its SQL spans, its call to the
    provider (an HTTP CLIENT span) and, under that span, the provider's
    SERVER span (the trace context went along with the request)."""

    def complete_send() -> Optional[list[dict[str, Any]]]:
        listed = http(demo.mport, "/apm/traces?operation=POST%20/messages&limit=50")[1]
        for t in listed["traces"]:
            trace = http(demo.mport, f"/apm/traces/{t['trace_id']}")[1]
            roots = trace["tree"]
            if len(roots) != 1 or roots[0]["name"] != "POST /messages":
                continue
            spans = list(_tree_spans(roots[0]))
            calls = [
                s
                for s in spans
                if s["kind"] == "client" and "http.request.method" in s["attributes"]
            ]
            has_sql = any(s["attributes"].get("db.system.name") == "sqlite" for s in spans)
            answered = [
                c
                for c in calls
                if any(
                    k["kind"] == "server" and k["name"] == "POST /provider/v1/messages"
                    for k in c.get("children", [])
                )
            ]
            if has_sql and answered:
                return spans
        return None

    spans = until(complete_send, "a kept POST /messages trace with its provider call", 40)
    root = spans[0]
    assert root["kind"] == "server" and root["attributes"]["http.route"] == "/messages"
    assert {s["trace_id"] for s in spans} == {root["trace_id"]}
    sql = [s for s in spans if s["attributes"].get("db.system.name") == "sqlite"]
    assert {s["attributes"]["db.operation.name"] for s in sql} >= {"SELECT", "INSERT"}
    assert all("?" in s["attributes"]["db.query.text"] for s in sql if "WHERE" in s["name"])


def test_health_passes_with_the_demo_checks(demo: Demo) -> None:
    status, health = http(demo.mport, "/health")
    assert status == 200 and health["status"] == "pass", health
    checks = {c["name"]: c for c in health["checks"]}
    assert checks["database"]["critical"] is True and checks["database"]["status"] == "pass"
    assert checks["provider"]["critical"] is False and checks["provider"]["status"] == "pass"
    assert http(demo.mport, "/health/ready")[0] == 200


def test_business_metrics_show_messages_sent(demo: Demo) -> None:
    def sent() -> Optional[dict[str, Any]]:
        business = http(demo.mport, "/health/business-metrics")[1]
        by_status = business["messages"]["by_status"]
        # Campaign batches are rarer than single sends: waited for too.
        ready = (
            by_status.get("sent", 0) > 0 and by_status.get("delivered") and business["campaigns"]
        )
        return business if ready else None

    business = until(sent, "messages sent in /health/business-metrics")
    assert business["templates"], business
    assert business["companies"] and set(business["companies"]) <= {"comp_acme", "comp_globex"}
    exposition = http(demo.mport, "/metrics")[1]
    assert re.search(r'pulsetrace_business_messages_total\{[^}]*status="sent"', exposition)
    assert "demo_message_body_bytes_bucket" in exposition


def test_alert_rules_are_registered(demo: Demo) -> None:
    rules = {r["id"]: r for r in http(demo.mport, "/monitoring/rules")[1]["rules"]}
    assert rules["send-errors"]["condition"]["operation"] == "POST /messages"
    assert rules["send-latency"]["condition"]["kind"] == "percentile"
    # Firing or not depends on the run's luck: the endpoint answers either way.
    assert isinstance(http(demo.mport, "/monitoring/alerts")[1]["alerts"], list)


def test_logs_are_json_lines_with_trace_ids_and_never_the_token(demo: Demo) -> None:
    output = demo.output()
    token = re.search(r"made for this run\): (\S+)", output)
    assert token is not None, output
    assert output.count(token.group(1)) == 1
    log = Path(re.search(r"tail -f (\S+)", output).group(1))  # type: ignore[union-attr]
    text = log.read_text(errors="replace")
    assert token.group(1) not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    sends = [x for x in lines if x["type"] == "application" and x.get("trace_id")]
    assert sends and all(re.fullmatch(r"[0-9a-f]{32}", x["trace_id"]) for x in sends)
    assert any(x["type"] == "business" and x.get("companyId") for x in lines)


def test_the_live_page_shows_the_demos_operations(demo: Demo) -> None:
    status, html = http(demo.mport, "/")
    assert status == 200 and "app.js" in html
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=require("chromium"),
            args=["--headless", "--no-sandbox", "--disable-background-networking"],
        )
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            tab.goto(f"http://127.0.0.1:{demo.mport}/")
            for name in ("POST /messages", "GET /contacts", "POST /provider/v1/messages"):
                row = tab.locator("#operations tbody tr").filter(
                    has=tab.locator(".op-name").get_by_text(name, exact=True)
                )
                expect(row).to_have_count(1, timeout=20_000)
                expect(row.locator(".c-count")).not_to_have_text("0")
        finally:
            browser.close()


def test_the_runner_stops_by_itself_and_leaves_nothing_behind(demo: Demo) -> None:
    code = demo.proc.wait(SECONDS + 90)
    output = demo.output()
    assert code == 0, output
    summary = output.split("Summary, from the monitoring endpoints", 1)
    assert len(summary) == 2, output
    assert re.search(r"server POST /messages +\d+", summary[1]), summary[1]
    assert "kept traces:" in summary[1] and "health: pass" in summary[1]
    assert "alerts fired:" in summary[1]
    assert processes_with(f"127.0.0.1:{demo.port}") == []
    workdir = Path(re.search(r"tail -f (\S+)", output).group(1)).parent  # type: ignore[union-attr]
    assert not workdir.exists()
    for port in (demo.port, demo.mport):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))  # free again


@pytest.mark.parametrize("variable", ["DEMO_PORT", "PULSETRACE_METRICS_ADDR"])
def test_a_taken_port_is_named_with_its_variable(tmp_path: Path, variable: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        env = {"DEMO_PORT": str(free_port()), "PULSETRACE_METRICS_ADDR": f"127.0.0.1:{free_port()}"}
        env[variable] = str(busy) if variable == "DEMO_PORT" else f"127.0.0.1:{busy}"
        proc, out = start(tmp_path, DEMO_SECONDS="5", **env)
        try:
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    text = out.read_text()
    assert code == 2, text
    assert f"port {busy} on 127.0.0.1 is not free" in text and f"set {variable}" in text
    assert "starting the service" not in text
