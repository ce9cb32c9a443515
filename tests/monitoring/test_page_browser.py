"""The live page (``GET /`` of the monitoring server) in a real headless
Chromium (Debian's ``chromium``, driven by Playwright): a Flask application
makes known operations (one failing, one slow, one named like an HTML tag),
an alert rule fires, and the page shows it all, opens a trace's waterfall
and acknowledges the alert through its button. A plain HTTP test checks the
page's headers (Content-Security-Policy, content types) and its token rule."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import pytest
from monitoring_support import Client, monitoring_server
from playwright.sync_api import Page, expect, sync_playwright

import pulsetrace
import pulsetrace.health
from pulsetrace.contrib import flask as flask_hook
from pulsetrace.monitoring import alerts, apm, page
from servers import require

TOKEN = "page-token"
HOSTILE = "<img src=x onerror=window.__pwned=1>"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking"]
expect.set_options(timeout=15_000)


def make_app() -> flask.Flask:
    app = flask.Flask("page_test")

    @app.route("/orders")
    def orders() -> str:
        with pulsetrace.start_span("SELECT orders", kind="client"):
            pass
        return "[]"

    def charge() -> None:
        raise ValueError("card declined")

    @app.route("/pay")
    def pay() -> str:
        charge()
        return "paid"

    @app.route("/slow")
    def slow() -> str:
        with pulsetrace.start_span("load report", kind="client"):
            time.sleep(0.15)
        with pulsetrace.start_span("render"):
            time.sleep(0.05)
        return "report"

    return app


def call(app: Any, path: str) -> int:
    with app.test_client() as c:
        r = c.get(path)
        r.get_data()
        r.close()
        return r.status_code


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Client]:
    """A monitoring server with a token, alert state of the test's own, the
    Flask hook on, nothing buffered from earlier tests."""
    alerts.reset()
    apm.RING.clear()
    try:
        with monitoring_server(token=TOKEN, alert_dir=str(tmp_path / "alerts")) as client:
            flask_hook.patch()
            try:
                yield client
            finally:
                flask_hook.unpatch()
    finally:
        alerts.reset()
        apm.RING.clear()


def traffic() -> None:
    app = make_app()
    for _ in range(7):
        assert call(app, "/orders") == 200
    for _ in range(3):
        assert call(app, "/pay") == 500
    for _ in range(2):
        assert call(app, "/slow") == 200
    with pulsetrace.start_span(HOSTILE, kind="server"):
        with pulsetrace.start_span("inner"):
            pass
    assert pulsetrace.flush(5)


def fire_alerts() -> list[dict[str, Any]]:
    """Two rules over the slow operation's p99 (seconds), evaluated once."""
    slow = {"kind": "percentile", "operation": "GET /slow", "threshold": 0.1}
    alerts.add_alert_rule(id="slow-report", name="Slow reports", condition=slow)
    alerts.add_alert_rule(id="very-slow", name="Very slow reports", condition=slow)
    alerts.manager().cycle()
    return list(alerts.manager().store.alerts(state="firing"))


def test_the_page_shows_operations_traces_errors_health_and_acknowledges_alerts(
    served: Client, tmp_path: Path
) -> None:
    traffic()
    pulsetrace.health.register("database", lambda: True)
    firing = fire_alerts()
    assert {a["rule_id"] for a in firing} == {"slow-report", "very-slow"}

    console: list[str] = []
    dialogs: list[tuple[str, str]] = []
    chromium = require("chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            tab.set_default_timeout(30_000)  # a loaded CI machine: the page polls every 2 s
            tab.on(
                "console",
                lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None,
            )
            tab.on("pageerror", lambda e: console.append(f"page error: {e}"))

            answers = ["wrong-token", TOKEN]  # what the token prompts are answered, in turn

            def answer(dialog: Any) -> None:
                dialogs.append((dialog.type, dialog.message))
                if dialog.type == "prompt" and answers:
                    dialog.accept(answers.pop(0))
                else:
                    dialog.dismiss()

            tab.on("dialog", answer)
            response = tab.goto(f"http://127.0.0.1:{served.port}/")
            assert response is not None and response.status == 200

            # The operations with their counts (since start).
            ops = {"GET /orders": ("7", "0"), "GET /pay": ("3", "3"), "GET /slow": ("2", "0")}
            for name, (count, errors) in ops.items():
                r = page_row(tab, "operations", name, ".op-name")
                expect(r.locator(".c-count")).to_have_text(count)
                expect(r.locator(".c-errors")).to_have_text(errors)
            expect(tab.locator("#connection")).to_have_class(re.compile(r"\bok\b"))
            # Over a window (younger than 5 minutes: everything so far).
            with tab.expect_response(lambda r: "window=5m" in r.url):
                tab.select_option("#window", "5m")
            r = page_row(tab, "operations", "GET /orders", ".op-name")
            expect(r.locator(".c-count")).to_have_text("7")
            tab.select_option("#window", "all")
            # A span named like an HTML tag is text, not markup.
            expect(page_row(tab, "operations", HOSTILE, ".op-name")).to_have_count(1)
            expect(page_row(tab, "traces", HOSTILE, ".c-operation")).to_have_count(1)
            assert tab.evaluate("document.querySelectorAll('img').length") == 0
            assert tab.evaluate("window.__pwned") is None

            # Errors grouped, health checks.
            group = page_row(tab, "errors", "ValueError", ".c-type")
            expect(group.locator(".c-count")).to_have_text("3")
            expect(group.locator(".c-message")).to_have_text("card declined")
            expect(page_row(tab, "health", "database").locator(".c-status")).to_have_text("pass")

            # Opening a trace shows its spans in the waterfall, parents first.
            names = tab.locator("#waterfall .wf-name")
            page_row(tab, "traces", HOSTILE, ".c-operation").first.click()
            expect(names).to_have_text([HOSTILE, "inner"])
            page_row(tab, "traces", "GET /pay", ".c-operation").first.click()
            expect(names).to_have_text(["GET /pay"])
            expect(tab.locator("#waterfall .wf-row.error")).to_have_count(1)
            page_row(tab, "traces", "GET /slow", ".c-operation").first.click()
            expect(names).to_have_text(["GET /slow", "load report", "render"])
            expect(tab.locator("#waterfall .wf-row:not(.wf-scale)")).to_have_count(3)
            # A span's row opens its attributes.
            tab.locator("#waterfall .wf-row").filter(has_text="load report").click()
            expect(tab.locator("#span-detail h3")).to_have_text("load report")
            expect(tab.locator("#span-detail dd").first).not_to_be_empty()

            assert console == [], console  # loaded and polled with no console error

            # The alerts panel: both firing. A refused token is forgotten
            # (the alert stays firing) and asked again; the right one is
            # kept for the session: the second acknowledgement asks nothing.
            firing_list = tab.locator("#alerts-firing li.alert")
            expect(firing_list).to_have_count(2)
            alert_item(tab, "firing", "Very slow reports").locator("button.ack").click()
            expect(tab.locator("#notice")).to_contain_text("The token was refused")
            _, _, body = served.get("/monitoring/alerts?state=firing", token=TOKEN)
            assert len(body["alerts"]) == 2
            for rule_name in ("Very slow reports", "Slow reports"):
                alert_item(tab, "firing", rule_name).locator("button.ack").click()
                expect(alert_item(tab, "acknowledged", rule_name)).to_have_count(1)
                expect(alert_item(tab, "acknowledged", rule_name)).to_contain_text(
                    "acknowledged by live page"
                )
            expect(firing_list).to_have_count(0)
            expect(tab.locator("#notice")).to_be_hidden()
            assert [d[0] for d in dialogs] == ["prompt", "prompt"], dialogs
            stored = tab.evaluate("sessionStorage.getItem('pulsetrace.monitoring.token')")
            assert stored == TOKEN

            shot = tmp_path / "live-page.png"
            tab.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
        finally:
            browser.close()

    # The acknowledgements reached the alert state, by the page's button.
    status, _, body = served.get("/monitoring/alerts", token=TOKEN)
    assert status == 200
    states = {a["rule_id"]: (a["state"], a["acked_by"]) for a in body["alerts"]}
    assert states == {
        "slow-report": ("acknowledged", "live page"),
        "very-slow": ("acknowledged", "live page"),
    }
    # No console error but the refused token's 401.
    assert len(console) == 1 and "status of 401" in console[0], console
    assert shot.stat().st_size > 10_000


def page_row(tab: Page, table: str, text: str, cell: str = ".c-name") -> Any:
    """The rows of ``#table`` whose ``cell`` says exactly ``text``."""
    return tab.locator(f"#{table} tbody tr").filter(
        has=tab.locator(cell).get_by_text(text, exact=True)
    )


def alert_item(tab: Page, state: str, name: str) -> Any:
    """The alert named exactly ``name`` in the list of ``state``."""
    return tab.locator(f"#alerts-{state} li.alert").filter(
        has=tab.locator(".alert-name").get_by_text(name, exact=True)
    )


# --- plain HTTP: headers, content types, the token rule -------------------------------


def test_the_page_and_its_files_are_served_with_a_strict_policy() -> None:
    with monitoring_server(token=TOKEN) as client:
        status, headers, body = client.get("/")
        assert status == 200
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers["x-content-type-options"] == "nosniff"
        policy = {
            d.split()[0]: d.split()[1:] for d in headers["content-security-policy"].split("; ")
        }
        assert policy["default-src"] == ["'none'"]
        assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
        assert policy["connect-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"]
        assert policy["require-trusted-types-for"] == ["'script'"]
        html = body.decode()
        # No inline script or style: every script is a file of its own.
        assert "<style" not in html and not re.search(r"\s(style|on[a-z]+)\s*=", html, re.I)
        assert html.count("<script") == 1 and '<script src="page/app.js"' in html
        for path, ctype in (
            ("/page/app.js", "text/javascript; charset=utf-8"),
            ("/page/app.css", "text/css; charset=utf-8"),
            ("/page/icon.svg", "image/svg+xml"),
        ):
            status, headers, body = client.get(path)
            assert (status, headers["content-type"]) == (200, ctype), path
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["content-security-policy"] == page.CSP
            assert body
        # HEAD answers too; other methods are refused.
        assert client.call("HEAD", "/")[0] == 200
        assert client.post("/", {})[0] == 405
        # The OpenAPI document lists the page's routes with their content types.
        _, _, doc = client.get("/openapi.json")
        assert list(doc["paths"]["/"]["get"]["responses"]["200"]["content"]) == ["text/html"]
        js = doc["paths"]["/page/app.js"]["get"]["responses"]["200"]["content"]
        assert list(js) == ["text/javascript"]


def test_beyond_loopback_the_page_needs_the_token_like_every_read_endpoint() -> None:
    with monitoring_server(host="0.0.0.0", token=TOKEN) as client:
        for path in ("/", "/page/app.js"):
            status, headers, body = client.get(path)
            assert status == 401 and "www-authenticate" in headers, path
            assert client.get(path, token=TOKEN)[0] == 200
            assert client.get(path, token="wrong")[0] == 401
