"""A service that calls itself: the request that comes back into the same
process is part of the outer request's trace in this process, so the trace
is decided once, when the outer request ends, and an error there keeps
every span of it (the inner request's too)."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import pulsetrace
from pulsetrace.contrib import flask as flask_hook
from pulsetrace.contrib import requests as requests_hook

from conftest import finished, fresh, wait_until

flask = pytest.importorskip("flask")
requests = pytest.importorskip("requests")
serving = pytest.importorskip("werkzeug.serving")


def call_back_in(*, outer_fails: bool, client_ends_first: bool = False) -> None:
    """The span API alone: a SERVER span whose CLIENT child's context comes
    back into this process as the parent of another SERVER span."""
    with pulsetrace.start_span("POST /messages", kind="server") as root:
        headers: dict[str, str] = {}
        client = pulsetrace.start_span("POST", kind="client")
        pulsetrace.inject(headers, client)
        if client_ends_first:  # a message consumed after its producer ended
            client.end()
        with pulsetrace.use_context(pulsetrace.extract(headers)):
            with pulsetrace.start_span("POST /provider", kind="server"):
                pass
        client.end()
        if outer_fails:
            root.set_status("error", "upstream failed")


def test_an_error_after_the_call_came_back_keeps_the_whole_trace(exporter):
    fresh(sample_rate=0.0)
    pulsetrace.add_exporter(exporter)
    call_back_in(outer_fails=True)
    spans = {s.name: s for s in finished(exporter)}
    assert set(spans) == {"POST /messages", "POST", "POST /provider"}
    inner, client, outer = spans["POST /provider"], spans["POST"], spans["POST /messages"]
    assert inner.parent_span_id == client.span_id and inner.remote_parent
    assert not inner.local_root and outer.local_root
    assert outer.keep_reason == "error"
    c = pulsetrace.counters()
    assert c["traces_kept_error"] == 1
    assert c["traces_dropped_sampled_out"] == 0 and c["spans_late_dropped"] == 0


def test_a_trace_that_came_back_is_decided_once(exporter):
    fresh(sample_rate=0.0)
    pulsetrace.add_exporter(exporter)
    for _ in range(20):
        call_back_in(outer_fails=False)
    assert finished(exporter) == []
    c = pulsetrace.counters()
    # One decision per trace, not one for the inner request and one again
    # for the outer.
    assert c["traces_dropped_sampled_out"] == 20
    assert c["spans_late_dropped"] == 0


def test_a_context_whose_span_ended_starts_a_local_root_as_before(exporter):
    # The producer's span ended before its message was consumed here: the
    # consumer is the first span of the trace still running in this process.
    fresh(sample_rate=1.0)
    pulsetrace.add_exporter(exporter)
    call_back_in(outer_fails=False, client_ends_first=True)
    spans = {s.name: s for s in finished(exporter)}
    assert spans["POST /provider"].local_root
    assert spans["POST /provider"].parent_span_id == spans["POST"].span_id


@pytest.fixture
def self_calling_server(exporter) -> Iterator[tuple[str, Any]]:
    """A threaded HTTP server in this process whose /send route calls its
    own /provider route through requests, Flask and requests hooked."""
    fresh(sample_rate=0.0)
    pulsetrace.add_exporter(exporter)
    flask_hook.patch()
    requests_hook.patch()
    app = flask.Flask("calls_back_in")
    base: dict[str, str] = {}

    @app.post("/provider")
    def provider() -> Any:
        return {"accepted": True}

    @app.post("/send")
    def send() -> Any:
        r = requests.post(base["url"] + "/provider", timeout=5)
        # The provider accepted, but this service fails the request after it.
        return {"provider": r.status_code}, 502

    server = serving.make_server("127.0.0.1", 0, app, threaded=True)
    base["url"] = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base["url"], app
    finally:
        server.shutdown()
        thread.join(5)
        requests_hook.unpatch()
        flask_hook.unpatch()


def test_over_http_the_failed_request_keeps_its_call_back_in(self_calling_server, exporter):
    url, _ = self_calling_server
    # The test's own request is not traced (http.client is not hooked): the
    # /send request is the trace's root.
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    conn.request("POST", "/send")
    assert conn.getresponse().status == 502
    conn.close()
    # The client has the response before the server thread has closed its
    # body, which ends /send's span and decides the trace: wait for that.
    names = {"POST /send", "POST", "POST /provider"}
    wait_until(lambda: names <= {s.name for s in finished(exporter)})
    spans = finished(exporter)
    by_name = {s.name: s for s in spans}
    assert names <= set(by_name), sorted(by_name)
    outer, client, inner = by_name["POST /send"], by_name["POST"], by_name["POST /provider"]
    assert len({s.trace_id for s in spans}) == 1
    assert client.parent_span_id == outer.span_id
    assert inner.parent_span_id == client.span_id and inner.remote_parent
    assert outer.local_root and not inner.local_root
    assert outer.keep_reason == "error"
    assert pulsetrace.counters()["traces_dropped_sampled_out"] == 0
