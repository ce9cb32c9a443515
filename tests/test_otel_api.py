"""The OpenTelemetry API bridge: spans made with ``opentelemetry.trace`` go
through pulsetrace (context both ways, propagation, instrumentation packages)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

import pulsetrace
import pulsetrace.otel as otel
from pulsetrace import _diag, _runtime

from conftest import finished

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def by_name(spans: list[pulsetrace.SpanData]) -> dict[str, pulsetrace.SpanData]:
    return {s.name: s for s in spans}


@pytest.fixture
def tracer(exporter) -> Iterator[trace.Tracer]:
    """pulsetrace installed as OpenTelemetry's implementation; a tracer from
    the global API, as an application or an instrumentation gets it."""
    assert otel.install()
    yield trace.get_tracer("tests.otel", "1.2.3")
    otel.uninstall()


def test_a_span_goes_through_pulsetrace(tracer, exporter):
    other = pulsetrace.SpanContext(0xABC, 0xDEF, 1, "k=v", True)
    other_otel = trace.SpanContext(0x123, 0x456, True, trace.TraceFlags(1))
    with tracer.start_as_current_span(
        "work",
        kind=SpanKind.CLIENT,
        attributes={"a": 1, "tags": ("x", "y")},
        links=[Link(other_otel, {"why": "batch"})],
    ) as span:
        assert trace.get_current_span() is span and span.is_recording()
        assert pulsetrace.current_span() is span.pulsetrace_span
        span.set_attribute("b", 2.5)
        span.set_attributes({"c": True})
        span.add_event("step", {"n": 1}, timestamp=1_700_000_000_000_000_000)
        span.add_link(otel._otel_context(other), {"l": 1})
        span.add_link(trace.INVALID_SPAN_CONTEXT)  # dropped, as the SDK
        span.update_name("work renamed")
        span.set_status(Status(StatusCode.ERROR, "bad input"))
        assert span.name == "work renamed" and span.kind is SpanKind.CLIENT
        assert span.attributes["b"] == 2.5  # read back, as on the SDK's spans
    assert not span.is_recording()
    assert trace.get_current_span() is trace.INVALID_SPAN

    (s,) = finished(exporter)
    assert s.name == "work renamed" and s.kind == "client"
    assert s.attributes == {"a": 1, "tags": ("x", "y"), "b": 2.5, "c": True}
    assert s.status == "error" and s.status_message == "bad input"
    assert [(e["name"], e["attributes"]) for e in s.events] == [("step", {"n": 1})]
    assert s.events[0]["time_unix_nano"] == 1_700_000_000_000_000_000
    links = [(ln["trace_id"], ln["span_id"], ln["attributes"]) for ln in s.links]
    assert links == [(0x123, 0x456, {"why": "batch"}), (0xABC, 0xDEF, {"l": 1})]
    ctx = span.get_span_context()
    assert (ctx.trace_id, ctx.span_id) == (s.trace_id, s.span_id)
    assert ctx.trace_flags.sampled and not ctx.is_remote
    stats = {(st["name"], st["kind"]): st for st in pulsetrace.latency()}
    assert stats[("work renamed", "client")]["count"] == 1
    assert stats[("work renamed", "client")]["errors"] == 1


def test_every_kind_maps(tracer, exporter):
    for kind in SpanKind:
        tracer.start_span(kind.name, kind=kind).end()
    kinds = {s.name: s.kind for s in finished(exporter)}
    assert kinds == {k.name: k.name.lower() for k in SpanKind}


def test_exceptions_are_recorded_and_pass_through(tracer, exporter):
    with pytest.raises(ValueError, match="boom"):
        with tracer.start_as_current_span("fails"):
            raise ValueError("boom")
    with pytest.raises(KeyError):
        with tracer.start_as_current_span(
            "quiet", record_exception=False, set_status_on_exception=False
        ):
            raise KeyError("k")
    with pytest.raises(RuntimeError):
        with tracer.start_span("plain") as plain:  # ended, never made current
            assert trace.get_current_span() is not plain
            raise RuntimeError("x")
    with tracer.start_as_current_span("ok") as span:
        span.set_status(StatusCode.OK)
        span.set_status(StatusCode.ERROR, "ignored: OK is final")
    spans = by_name(finished(exporter))
    fails = spans["fails"]
    assert fails.status == "error" and fails.status_message == "ValueError: boom"
    (event,) = fails.events
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"].endswith("ValueError")
    assert event["attributes"]["exception.message"] == "boom"
    assert spans["quiet"].status == "unset" and spans["quiet"].events == []
    assert spans["plain"].status == "error" and spans["plain"].events[0]["name"] == "exception"
    assert spans["ok"].status == "ok"


def test_explicit_times_and_manual_end(tracer, exporter):
    span = tracer.start_span("timed", start_time=1_700_000_000_000_000_000)
    span.end(end_time=1_700_000_000_250_000_000)
    span.end()  # twice: harmless
    (s,) = finished(exporter)
    assert s.duration_ns == 250_000_000


def test_mixed_nesting_both_ways_is_one_trace(tracer, exporter):
    with pulsetrace.start_span("pt-root") as root:
        # OpenTelemetry sees pulsetrace's current span.
        current = trace.get_current_span()
        assert current.get_span_context().span_id == root.span_id
        with tracer.start_as_current_span("otel-1") as o1:
            assert pulsetrace.current_span() is o1.pulsetrace_span
            with pulsetrace.start_span("pt-2") as p2:
                assert trace.get_current_span().get_span_context().span_id == p2.span_id
                with tracer.start_as_current_span("otel-3"):
                    with pulsetrace.start_span("pt-4"):
                        pass
                manual = tracer.start_span("otel-manual")  # parent: the current span
                manual.end()
            assert trace.get_current_span() is o1
        assert pulsetrace.current_span() is root
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert pulsetrace.current_span() is None

    spans = by_name(finished(exporter))
    assert len({s.trace_id for s in spans.values()}) == 1
    parent = {n: s.parent_span_id for n, s in spans.items()}
    ids = {n: s.span_id for n, s in spans.items()}
    assert parent["pt-root"] is None
    assert parent["otel-1"] == ids["pt-root"]
    assert parent["pt-2"] == ids["otel-1"]
    assert parent["otel-3"] == ids["pt-2"]
    assert parent["pt-4"] == ids["otel-3"]
    assert parent["otel-manual"] == ids["pt-2"]


def test_use_span_attach_and_explicit_contexts(tracer, exporter):
    outer = tracer.start_span("outer")
    with trace.use_span(outer, end_on_exit=True):
        with pulsetrace.start_span("under-use-span"):
            pass
    span = tracer.start_span("attached")
    token = context.attach(trace.set_span_in_context(span))
    try:
        with pulsetrace.start_span("under-attach"):
            pass
        child = tracer.start_span("explicit", context=trace.set_span_in_context(outer))
        child.end()
    finally:
        context.detach(token)
        span.end()
    assert pulsetrace.current_span() is None
    with pulsetrace.start_span("pt"):
        # As the OpenTelemetry API: a context without a span starts a new trace.
        tracer.start_span("new-root", context=Context()).end()
    spans = by_name(finished(exporter))
    assert spans["under-use-span"].parent_span_id == spans["outer"].span_id
    assert spans["under-attach"].parent_span_id == spans["attached"].span_id
    assert spans["explicit"].parent_span_id == spans["outer"].span_id
    assert spans["new-root"].parent_span_id is None
    assert spans["new-root"].trace_id != spans["pt"].trace_id


def test_inject_gives_pulsetraces_traceparent_and_extract_continues(tracer, exporter):
    with tracer.start_as_current_span("client") as client:
        ctx = baggage.set_baggage("user", "u1")
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=ctx)
        native = client.pulsetrace_span
        assert carrier["traceparent"] == native.traceparent
        assert carrier["baggage"] == "user=u1"  # the baggage member stays
        with pulsetrace.start_span("pt-child") as pt_child:
            mine: dict[str, str] = {}
            pulsetrace.inject(mine)
            theirs: dict[str, str] = {}
            propagate.inject(theirs)
            assert theirs == mine == {"traceparent": pt_child.traceparent}

    incoming = {"traceparent": TP, "tracestate": "rojo=00f067aa0ba902b7", "baggage": "k=v"}
    remote = propagate.extract(incoming)
    assert baggage.get_baggage("k", remote) == "v"
    rctx = trace.get_current_span(remote).get_span_context()
    assert rctx.is_remote and rctx.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    with tracer.start_as_current_span("server", context=remote, kind=SpanKind.SERVER) as srv:
        assert srv.get_span_context().trace_state.to_header() == "rojo=00f067aa0ba902b7"
        out: dict[str, str] = {}
        propagate.inject(out)
        assert out["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        assert out["tracestate"] == "rojo=00f067aa0ba902b7"
    # An instrumentation's `context.attach(extract(...))`: pulsetrace's hooks see it.
    token = context.attach(remote)
    try:
        with pulsetrace.start_span("pt-under-remote") as pt_remote:
            assert pt_remote.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    finally:
        context.detach(token)
    assert pulsetrace.current_span() is None and _runtime.CURRENT.get() is None
    # pulsetrace's own extract, continued through the OpenTelemetry API.
    with pulsetrace.use_context(pulsetrace.extract({"traceparent": TP})):
        assert trace.get_current_span().get_span_context().is_remote
        tracer.start_span("via-pulsetrace-extract").end()

    before = pulsetrace.counters()["traceparent_malformed"]
    assert propagate.extract({"traceparent": "garbage"}) == Context()
    assert pulsetrace.counters()["traceparent_malformed"] == before + 1

    spans = by_name(finished(exporter))
    server = spans["server"]
    assert server.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert server.parent_span_id == 0x00F067AA0BA902B7
    assert server.remote_parent and server.local_root and server.kind == "server"
    assert server.trace_state == "rojo=00f067aa0ba902b7"
    assert spans["via-pulsetrace-extract"].parent_span_id == 0x00F067AA0BA902B7
    under = spans["pt-under-remote"]
    assert under.parent_span_id == 0x00F067AA0BA902B7 and under.remote_parent
    assert under.trace_state == "rojo=00f067aa0ba902b7"


def test_threads_with_copied_context_keep_the_parent(tracer, exporter):
    def work(name: str) -> None:
        with tracer.start_as_current_span(name):
            with pulsetrace.start_span(f"{name}/pt"):
                pass

    def attach_and_work(ctx: Context) -> None:  # OpenTelemetry's own idiom
        token = context.attach(ctx)
        try:
            work("attached")
        finally:
            context.detach(token)

    with tracer.start_as_current_span("parent") as parent:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(contextvars.copy_context().run, work, f"t{i}") for i in range(4)]
            futures.append(pool.submit(attach_and_work, context.get_current()))
            for f in futures:
                f.result()
        t = threading.Thread(target=work, args=("no-context",))  # a fresh context
        t.start()
        t.join()
    spans = by_name(finished(exporter))
    pid = parent.get_span_context().span_id
    for name in ("t0", "t1", "t2", "t3", "attached"):
        assert spans[name].parent_span_id == pid
        assert spans[f"{name}/pt"].parent_span_id == spans[name].span_id
    assert spans["no-context"].parent_span_id is None
    assert spans["no-context"].trace_id != spans["parent"].trace_id


def test_asyncio_tasks_keep_the_parent(tracer, exporter):
    @tracer.start_as_current_span("decorated")
    async def decorated(i: int) -> None:
        await asyncio.sleep(0.001)
        with pulsetrace.start_span(f"pt{i}"):
            await asyncio.sleep(0)

    async def leaf(i: int) -> None:
        with tracer.start_as_current_span(f"task{i}"):
            await asyncio.sleep(0.001)
            await decorated(i)

    async def main() -> None:
        with tracer.start_as_current_span("root"):
            await asyncio.gather(*(asyncio.create_task(leaf(i)) for i in range(3)))

    asyncio.run(main())
    spans = finished(exporter)
    assert len(spans) == 10 and len({s.trace_id for s in spans}) == 1
    named = by_name(spans)
    ids = {s.span_id: s for s in spans}
    for i in range(3):
        assert named[f"task{i}"].parent_span_id == named["root"].span_id
        deco = ids[named[f"pt{i}"].parent_span_id]
        assert deco.name == "decorated"
        assert deco.parent_span_id == named[f"task{i}"].span_id
        assert deco.duration_ns >= 1_000_000  # the whole coroutine, not its creation


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_opentelemetry_instrumentations_go_through_pulsetrace(tracer, exporter):
    requests = pytest.importorskip("requests")
    otel_requests = pytest.importorskip("opentelemetry.instrumentation.requests")
    otel_wsgi = pytest.importorskip("opentelemetry.instrumentation.wsgi")

    def app(environ, start_response):
        with pulsetrace.start_span("handler"):  # pulsetrace's own span
            # OpenTelemetry's current span is pulsetrace's.
            trace.get_current_span().set_attribute("seen.by.otel", "handler")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    server: WSGIServer = make_server(
        "127.0.0.1", 0, otel_wsgi.OpenTelemetryMiddleware(app), handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    instrumentor = otel_requests.RequestsInstrumentor()
    instrumentor.instrument()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hello?x=1"
        with pulsetrace.start_span("job"):
            assert requests.get(url, timeout=10).text == "hello"
    finally:
        instrumentor.uninstrument()
        server.shutdown()
        server.server_close()
        thread.join(10)

    spans = finished(exporter)
    assert len(spans) == 4 and len({s.trace_id for s in spans}) == 1
    job = next(s for s in spans if s.name == "job")
    client = next(s for s in spans if s.kind == "client")
    srv = next(s for s in spans if s.kind == "server")
    handler = next(s for s in spans if s.name == "handler")
    assert client.parent_span_id == job.span_id
    assert srv.parent_span_id == client.span_id and srv.remote_parent
    assert handler.parent_span_id == srv.span_id
    assert handler.attributes["seen.by.otel"] == "handler"
    assert client.name == "GET" and srv.name == "GET /hello"
    c, s = client.attributes, srv.attributes
    assert c["http.method"] == "GET" and c["http.status_code"] == 200
    assert c["http.url"] == url
    assert s["http.method"] == "GET" and s["http.status_code"] == 200
    assert s["http.url"] == url and s["http.scheme"] == "http"
    assert s["net.host.port"] == server.server_port
    assert ("GET /hello", "server") in {(st["name"], st["kind"]) for st in pulsetrace.latency()}


def test_provider_api(tracer, exporter):
    provider = trace.get_tracer_provider()
    assert isinstance(provider, otel.TracerProvider)
    scoped = provider.get_tracer("lib", "2.0", "https://schema", {"scope.attr": 1})
    assert (scoped.name, scoped.version, scoped.schema_url) == ("lib", "2.0", "https://schema")
    assert scoped.attributes == {"scope.attr": 1}
    assert isinstance(trace.get_tracer("x", tracer_provider=provider), otel.Tracer)
    scoped.start_span("flushed").end()
    assert provider.force_flush(5000)
    assert [s.name for s in exporter.spans()] == ["flushed"]


def test_install_is_idempotent_and_uninstall_restores(exporter):
    previous_textmap = propagate.get_global_textmap()
    assert otel.install() and otel.install() and otel.installed()
    provider = trace.get_tracer_provider()
    textmap = propagate.get_global_textmap()
    assert otel.install()
    assert trace.get_tracer_provider() is provider and propagate.get_global_textmap() is textmap
    otel.uninstall()
    otel.uninstall()
    assert not otel.installed()
    assert not isinstance(trace.get_tracer_provider(), otel.TracerProvider)
    assert propagate.get_global_textmap() is previous_textmap
    # The runtime context passes straight through: pulsetrace's span is untouched.
    with pulsetrace.start_span("pt") as pt:
        token = context.attach(Context())
        assert pulsetrace.current_span() is pt
        context.detach(token)
    assert isinstance(trace.get_tracer("x").start_span("noop"), trace.NonRecordingSpan)


def test_a_configured_provider_is_kept_unless_forced(exporter, caplog):
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

    sdk = SdkTracerProvider()
    trace.set_tracer_provider(sdk)
    try:
        with caplog.at_level(logging.WARNING, logger="pulsetrace"):
            assert not otel.install()
        assert "already set" in caplog.text
        assert trace.get_tracer_provider() is sdk and not otel.installed()
        assert otel.install(force=True)
        assert isinstance(trace.get_tracer_provider(), otel.TracerProvider)
        otel.uninstall()
        assert trace.get_tracer_provider() is sdk
    finally:
        otel.uninstall()
        trace._TRACER_PROVIDER = None
        trace._TRACER_PROVIDER_SET_ONCE._done = False


def test_kill_switch_means_no_spans_and_no_errors(tracer, exporter):
    pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0, enabled=False)
    _diag.reset()
    with tracer.start_as_current_span("off") as span:
        assert span is trace.INVALID_SPAN and not span.is_recording()
        span.set_attribute("a", 1)
        with pulsetrace.start_span("pt-off"):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            assert carrier == {}
    tracer.start_span("off2").end()
    assert finished(exporter) == []
    assert _diag.internal_errors() == {}


def test_misuse_never_raises_into_the_application(tracer, exporter):
    _diag.reset()
    with tracer.start_as_current_span("odd") as span:
        span.set_status("no such status")  # type: ignore[arg-type]
        span.set_attribute("obj", object())
        span.add_event("e", {"k": object()})
        span.record_exception("not an exception")  # type: ignore[arg-type]
    span.set_attribute("late", 1)  # after end: ignored
    (s,) = finished(exporter)
    assert s.name == "odd" and "late" not in s.attributes
    assert set(_diag.internal_errors()) <= {"otel.set_status", "otel.record_exception"}


def test_tracer_without_install_still_sets_pulsetraces_context(exporter):
    provider = otel.TracerProvider()
    t = provider.get_tracer("direct")
    assert not otel.installed()
    with t.start_as_current_span("direct-otel") as span:
        assert pulsetrace.current_span() is span.pulsetrace_span
        with pulsetrace.start_span("pt-child"):
            pass
    spans = by_name(finished(exporter))
    assert spans["pt-child"].parent_span_id == spans["direct-otel"].span_id
    assert _runtime.CURRENT.get() is None


def test_without_opentelemetry_the_bridge_is_skipped_silently():
    # A None in sys.modules makes ``import opentelemetry`` fail with
    # ModuleNotFoundError, as in an environment without the package (a plain
    # install: tests/export/test_plain_install.py checks that one for real).
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "import pulsetrace.auto\n"
        "from pulsetrace import _diag\n"
        "print(_diag.internal_errors(), 'pulsetrace.otel' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSETRACE_", "OTEL_"))}
    env["OTEL_TRACES_EXPORTER"] = "none"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "{} False\n"
    assert r.stderr == ""
