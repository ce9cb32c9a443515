"""The native OTLP encoder: every field written decodes (with the reference
protobuf classes) to what was recorded."""

from __future__ import annotations

import pytest

import pulsetrace
from pulsetrace import _runtime

from conftest import fresh

trace_pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
# Each test takes the kept traces from the export queue itself.
pytestmark = pytest.mark.usefixtures("queued")

T0 = 1_800_000_000_000_000_000


def any_value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(any_value(x) for x in v.array_value.values)
    return getattr(v, kind)


def kv(attrs):
    return {a.key: any_value(a.value) for a in attrs}


def test_every_field_round_trips_through_the_reference_decoder():
    fresh()
    t = _runtime.tracer()
    t.set_resource(
        {"service.name": "api", "process.pid": 42, "deployment.environment.name": "test"}
    )
    remote = pulsetrace.SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, 1, "k=v")
    root = pulsetrace.start_span("GET /users/{id}", kind="server", parent=remote, start_time=T0)
    root.set_attributes(
        {
            "s": "x" * 300,
            "i": -7,
            "f": 1.5,
            "b": True,
            "sa": ["a", "b"],
            "ia": [1, 2],
            "fa": [0.5],
            "ba": [True, False],
            "http.response.status_code": 503,
        }
    )
    root.add_event("cache miss", {"key": "u:1"}, timestamp=T0 + 5)
    root.add_link(pulsetrace.SpanContext(0x1234, 0x5678, is_remote=False), {"why": "batch"})
    root.set_status("error", "upstream failed")
    child = pulsetrace.start_span("SELECT users", kind="client", parent=root, start_time=T0 + 10)
    child.end(end_time=T0 + 20)
    root.end(end_time=T0 + 1_000)
    batch = t.drain_batch(10_000)
    assert batch is not None and len(batch) == 2
    data = {s.name: s for tr in batch.traces() for s in tr}
    req = trace_pb2.ExportTraceServiceRequest.FromString(batch.otlp())

    (rs,) = req.resource_spans
    res = kv(rs.resource.attributes)
    assert res == {"service.name": "api", "process.pid": 42, "deployment.environment.name": "test"}
    (ss,) = rs.scope_spans
    assert ss.scope.name == "pulsetrace" and ss.scope.version
    spans = {s.name: s for s in ss.spans}
    assert set(spans) == {"GET /users/{id}", "SELECT users"}

    s, d = spans["GET /users/{id}"], data["GET /users/{id}"]
    assert s.trace_id.hex() == f"{d.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert s.span_id.hex() == f"{d.span_id:016x}"
    assert s.parent_span_id.hex() == "00f067aa0ba902b7"
    assert s.trace_state == "k=v"
    assert s.kind == 2  # SERVER
    assert (s.start_time_unix_nano, s.end_time_unix_nano) == (T0, T0 + 1_000)
    assert kv(s.attributes) == {
        "s": "x" * 300,
        "i": -7,
        "f": 1.5,
        "b": True,
        "sa": ("a", "b"),
        "ia": (1, 2),
        "fa": (0.5,),
        "ba": (True, False),
        "http.response.status_code": 503,
    }
    (ev,) = s.events
    assert (ev.name, ev.time_unix_nano, kv(ev.attributes)) == ("cache miss", T0 + 5, {"key": "u:1"})
    (ln,) = s.links
    assert ln.trace_id.hex() == f"{0x1234:032x}" and ln.span_id.hex() == f"{0x5678:016x}"
    assert kv(ln.attributes) == {"why": "batch"}
    assert (s.status.code, s.status.message) == (2, "upstream failed")
    assert s.flags == 0x1 | 0x100 | 0x200  # sampled, parent is remote

    c = spans["SELECT users"]
    assert c.kind == 3 and c.parent_span_id == s.span_id and c.trace_id == s.trace_id
    assert c.flags == 0x1 | 0x100
    assert c.status.code == 0 and not c.attributes


def test_exception_events_carry_type_message_and_stack():
    fresh()
    t = _runtime.tracer()
    try:
        with pulsetrace.start_span("job"):
            raise ValueError("bad input")
    except ValueError:
        pass
    req = trace_pb2.ExportTraceServiceRequest.FromString(t.drain_batch().otlp())
    (span,) = req.resource_spans[0].scope_spans[0].spans
    (ev,) = span.events
    a = kv(ev.attributes)
    assert ev.name == "exception"
    assert a["exception.type"] == "ValueError" and a["exception.message"] == "bad input"
    assert "raise ValueError" in a["exception.stacktrace"] and a["exception.escaped"] is True
    assert span.status.code == 2


def test_large_batches_encode_every_span():
    fresh(export_queue_size=100_000)
    t = _runtime.tracer()
    for i in range(5_000):
        with pulsetrace.start_span("op", attributes={"i": i}):
            pass
    batch = t.drain_batch(100_000)
    req = trace_pb2.ExportTraceServiceRequest.FromString(batch.otlp())
    spans = req.resource_spans[0].scope_spans[0].spans
    assert len(spans) == len(batch) == 5_000
    assert sorted(kv(s.attributes)["i"] for s in spans) == list(range(5_000))
