"""W3C trace context: extraction, injection, remote parents."""

from __future__ import annotations

import pytest

import pulsetrace

from conftest import finished

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_remote_parent_is_continued(exporter):
    ctx = pulsetrace.extract({"traceparent": TP, "tracestate": "rojo=00f067aa0ba902b7"})
    assert ctx is not None and ctx.is_remote and ctx.sampled
    assert ctx.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    with pulsetrace.use_context(ctx):
        with pulsetrace.start_span("GET /", kind="server") as server:
            with pulsetrace.start_span("child"):
                pass
    spans = {s.name: s for s in finished(exporter)}
    root = spans["GET /"]
    assert root.trace_id == ctx.trace_id
    assert root.parent_span_id == 0x00F067AA0BA902B7
    assert root.local_root and root.remote_parent
    assert root.trace_state == "rojo=00f067aa0ba902b7"
    assert spans["child"].parent_span_id == server.span_id
    assert not spans["child"].local_root


@pytest.mark.parametrize(
    "carrier",
    [
        {"TraceParent": TP},
        {"HTTP_TRACEPARENT": TP},
        {b"traceparent": TP.encode()},
        {"traceparent": [TP]},
    ],
)
def test_carriers_of_any_shape(carrier, exporter):
    ctx = pulsetrace.extract(carrier)
    assert ctx is not None and ctx.span_id == 0x00F067AA0BA902B7


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\udcff",
        b"\xff\xfe",
    ],
)
def test_a_malformed_traceparent_starts_a_new_trace_and_is_counted(header, exporter):
    ctx = pulsetrace.extract({"traceparent": header})
    assert ctx is None
    assert pulsetrace.counters()["traceparent_malformed"] == 1
    with pulsetrace.use_context(ctx), pulsetrace.start_span("root") as span:
        assert span.parent_span_id is None


def test_a_malformed_tracestate_is_dropped_alone(exporter):
    ctx = pulsetrace.extract({"traceparent": TP, "tracestate": "Not Valid=="})
    assert ctx is not None and ctx.trace_state == ""
    assert pulsetrace.counters()["tracestate_malformed"] == 1


def test_strange_carriers_never_raise(exporter):
    class Exploding:
        def get(self, key):
            raise RuntimeError("boom")

    assert pulsetrace.extract(Exploding()) is None
    assert pulsetrace.extract(None) is None
    assert pulsetrace.extract({}) is None


def test_inject_writes_the_current_span_and_respects_caller_headers(exporter):
    headers: dict[str, str] = {}
    pulsetrace.inject(headers)
    assert headers == {}  # no current span: nothing to propagate
    with pulsetrace.start_span("client", kind="client") as span:
        pulsetrace.inject(headers)
        # 03: sampled, and the trace id is random (W3C Trace Context level 2).
        assert headers["traceparent"] == f"00-{span.trace_id:032x}-{span.span_id:016x}-03"
        mine = {"Traceparent": "00-11111111111111111111111111111111-2222222222222222-01"}
        pulsetrace.inject(mine)
        assert mine == {"Traceparent": "00-11111111111111111111111111111111-2222222222222222-01"}
    # Round trip: what we inject, another service extracts.
    ctx = pulsetrace.extract(headers)
    assert ctx is not None and (ctx.trace_id, ctx.span_id) == (span.trace_id, span.span_id)
