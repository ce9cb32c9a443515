"""The span API: context, nesting, threads, asyncio, exceptions, status."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import pulsetrace

from conftest import finished


def by_name(spans: list[pulsetrace.SpanData]) -> dict[str, pulsetrace.SpanData]:
    return {s.name: s for s in spans}


def test_nested_spans_form_one_trace(exporter):
    with pulsetrace.start_span("root", kind="server", attributes={"a": 1}) as root:
        assert pulsetrace.current_span() is root
        with pulsetrace.start_span("child", kind="client") as child:
            assert pulsetrace.current_span() is child
            assert child.trace_id == root.trace_id
            assert child.parent_span_id == root.span_id
        assert pulsetrace.current_span() is root
    assert pulsetrace.current_span() is None
    spans = by_name(finished(exporter))
    assert set(spans) == {"root", "child"}
    assert spans["child"].parent_span_id == spans["root"].span_id
    assert spans["root"].parent_span_id is None
    assert spans["root"].local_root and not spans["child"].local_root
    assert spans["root"].kind == "server" and spans["child"].kind == "client"
    assert spans["root"].attributes == {"a": 1}
    assert spans["root"].duration_ns >= spans["child"].duration_ns > 0
    assert spans["root"].start_time_unix_nano <= spans["child"].start_time_unix_nano
    assert spans["root"].trace_id.bit_length() > 64  # 128-bit ids


def test_ids_are_random_and_w3c_sized():
    spans = [pulsetrace.start_span("x") for _ in range(1000)]
    assert len({s.trace_id for s in spans}) == 1000
    assert all(0 < s.span_id < 2**64 and 0 < s.trace_id < 2**128 for s in spans)
    assert all(len(s.traceparent) == 55 for s in spans)
    for s in spans:
        s.end()


def test_explicit_end_and_ending_twice_is_harmless(exporter):
    span = pulsetrace.start_span("manual")
    assert span.is_recording()
    span.end()
    span.end()
    assert not span.is_recording() and span.ended
    span.set_attribute("late", 1)  # ignored, not raised
    assert len(finished(exporter)) == 1
    assert pulsetrace.counters()["spans_ended_twice"] == 1


def test_explicit_timestamps_give_exact_durations(exporter):
    span = pulsetrace.start_span("timed", start_time=1_700_000_000_000_000_000)
    span.end(end_time=1_700_000_000_250_000_000)
    (s,) = finished(exporter)
    assert s.duration_ns == 250_000_000
    assert s.start_time_unix_nano == 1_700_000_000_000_000_000


def test_application_exceptions_pass_through_unchanged(exporter):
    class Boom(Exception):
        pass

    cause = ValueError("cause")
    with pytest.raises(Boom) as info:
        with pulsetrace.start_span("fails"):
            try:
                raise cause
            except ValueError as e:
                raise Boom("boom") from e
    assert info.value.__cause__ is cause
    assert info.traceback[-1].name == "test_application_exceptions_pass_through_unchanged"
    (s,) = finished(exporter)
    assert s.status == "error"
    assert "Boom: boom" in s.status_message
    (event,) = s.events
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"].endswith("Boom")
    assert event["attributes"]["exception.message"] == "boom"
    assert "raise Boom" in event["attributes"]["exception.stacktrace"]
    assert event["attributes"]["exception.escaped"] is True
    assert s.keep_reason == "error"


def test_record_exception_and_status_rules(exporter):
    with pulsetrace.start_span("s") as span:
        span.record_exception(KeyError("k"), attributes={"extra": True})
        span.set_status("error", "went wrong")
        span.set_status("unset")  # ignored
    with pulsetrace.start_span("ok") as span:
        span.set_status("ok")
        span.set_status("error", "ignored: ok is final")
    with pytest.raises(ValueError, match="status must be"):
        pulsetrace.start_span("x").set_status("bogus")
    spans = by_name(finished(exporter))
    assert spans["s"].status == "error" and spans["s"].status_message == "went wrong"
    assert spans["s"].events[0]["attributes"]["exception.type"] == "KeyError"
    assert spans["s"].events[0]["attributes"]["extra"] is True
    assert spans["ok"].status == "ok"


def test_events_links_and_rename(exporter):
    with pulsetrace.start_span("other") as other:
        pass
    with pulsetrace.start_span("first name", links=[other]) as span:
        span.add_event("cache miss", {"key": "user:1"})
        span.update_name("GET /users/{id}")
    spans = by_name(finished(exporter))
    s = spans["GET /users/{id}"]
    assert s.events[0]["name"] == "cache miss"
    assert s.events[0]["attributes"] == {"key": "user:1"}
    assert s.links[0]["trace_id"] == other.trace_id
    assert s.links[0]["span_id"] == other.span_id


def test_traced_decorator_sync_and_async(exporter):
    @pulsetrace.traced
    def plain(x):
        return x + 1

    @pulsetrace.traced(name="custom", kind="client", attributes={"k": "v"})
    async def coro(x):
        await asyncio.sleep(0)
        return x * 2

    assert plain(1) == 2
    assert asyncio.run(coro(3)) == 6
    spans = by_name(finished(exporter))
    assert "test_traced_decorator_sync_and_async.<locals>.plain" in spans
    assert spans["custom"].kind == "client" and spans["custom"].attributes == {"k": "v"}


def test_context_follows_threads_that_copy_it(exporter):
    with pulsetrace.start_span("parent") as parent:
        ctx = contextvars.copy_context()
        t = threading.Thread(
            target=ctx.run, args=(lambda: pulsetrace.start_span("in thread").end(),)
        )
        t.start()
        t.join()
        with ThreadPoolExecutor(2) as pool:
            ctx2 = contextvars.copy_context()
            pool.submit(ctx2.run, lambda: pulsetrace.start_span("in pool").end()).result()
        # A thread that does not copy the context starts its own trace.
        t = threading.Thread(target=lambda: pulsetrace.start_span("detached").end())
        t.start()
        t.join()
    spans = by_name(finished(exporter))
    assert spans["in thread"].parent_span_id == parent.span_id
    assert spans["in pool"].parent_span_id == parent.span_id
    assert spans["detached"].trace_id != parent.trace_id


def test_context_follows_asyncio_tasks(exporter):
    async def child(name):
        with pulsetrace.start_span(name):
            await asyncio.sleep(0.001)
            return pulsetrace.current_span().parent_span_id

    async def main():
        with pulsetrace.start_span("request") as root:
            parents = await asyncio.gather(child("a"), child("b"), child("c"))
            return root.span_id, parents

    root_id, parents = asyncio.run(main())
    assert parents == [root_id] * 3
    spans = finished(exporter)
    assert len(spans) == 4
    assert len({s.trace_id for s in spans}) == 1


def test_spans_from_many_threads_lose_nothing(exporter):
    def work(i):
        with pulsetrace.start_span("root"):
            for _ in range(3):
                with pulsetrace.start_span("child"):
                    pass

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(2000)))
    spans = finished(exporter)
    assert len(spans) == 8000
    rows = {r["name"]: r for r in pulsetrace.latency()}
    assert rows["root"]["count"] == 2000 and rows["child"]["count"] == 6000


def test_kinds_are_validated():
    with pytest.raises(ValueError, match="span kind"):
        pulsetrace.start_span("x", kind="sideways")
    assert pulsetrace.start_span("x", kind="SERVER").kind == "server"


def test_arguments_by_position_or_keyword_and_bad_arguments_named(exporter):
    # The span methods take the interpreter's argument vector directly
    # (vectorcall): keyword forms work and bad calls raise TypeError naming
    # the argument, like any Python function.
    span = pulsetrace.start_span(name="kw", attributes={"a": 1}, kind="client")
    span.set_attribute(key="k", value="v")
    span.set_attribute("p", 2)
    span.end(end_time=None)
    (s,) = finished(exporter)
    assert (s.name, s.kind, s.attributes) == ("kw", "client", {"a": 1, "k": "v", "p": 2})
    bad = [
        (lambda: pulsetrace.start_span(), "missing 1 required positional argument: 'name'"),
        (lambda: pulsetrace.start_span(7), "argument 'name'"),
        (lambda: pulsetrace.start_span("a", "b"), "takes 1 positional argument"),
        (lambda: pulsetrace.start_span("a", sideways=1), "unexpected keyword argument 'sideways'"),
        (lambda: pulsetrace.start_span("a", name="b"), "multiple values for argument 'name'"),
        (lambda: pulsetrace.start_span("a", start_time="x"), "argument 'start_time'"),
        (lambda: span.set_attribute("k"), "missing 1 required positional argument: 'value'"),
        (lambda: span.end("soon"), "argument 'end_time'"),
        (lambda: type(span).end(object()), "doesn't apply to a 'object' object"),
    ]
    for call, message in bad:
        with pytest.raises(TypeError, match=message):
            call()
    assert str(inspect.signature(pulsetrace.start_span)).startswith("(name, *, kind=None")


def test_the_vectorcall_methods_signatures_start_with_self():
    # help(), inspect and type checkers' stub tests read these signatures;
    # as for any method, the unbound one takes the instance first.
    from pulsetrace._native import Span, Tracer

    for method, first in [
        (Tracer.start_span, "name"),
        (Span.__exit__, "exc_type"),
        (Span.set_attribute, "key"),
        (Span.end, "end_time"),
    ]:
        assert list(inspect.signature(method).parameters)[:2] == ["self", first], method


@pytest.mark.skipif(sys.platform != "linux", reason="fork semantics checked on Linux")
def test_fork_gives_the_child_fresh_ids_and_a_working_agent(exporter, tmp_path):
    import os

    with pulsetrace.start_span("before fork"):
        pass
    pulsetrace.flush()
    parent_ids = [pulsetrace.start_span("p").span_id for _ in range(5)]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            ids = [pulsetrace.start_span("c").span_id for _ in range(5)]
            with pulsetrace.start_span("in child"):
                pass
            pulsetrace.flush()
            names = [s.name for s in exporter.spans()]
            os.write(w, repr((ids, names)).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    child_ids, child_names = eval(data.decode())
    again = [pulsetrace.start_span("p").span_id for _ in range(5)]
    assert not set(child_ids) & (set(parent_ids) | set(again))
    assert "in child" in child_names


_REENTRANT = """
import sys

import pulsetrace

pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0)
exporter = pulsetrace.InMemorySpanExporter()
pulsetrace.add_exporter(exporter)
span = pulsetrace.start_span("reentrant")


class Chatty:
    def __str__(self):
        span.set_attribute("stringified", True)
        return "chatty"


class Loud(Exception):
    def __str__(self):
        span.set_attribute("message_read", True)
        return "loud"


if sys.argv[1] == "attribute":
    span.set_attributes({"value": Chatty()})
    span.end()
else:
    try:
        with span:
            raise Loud()
    except Loud:
        pass
pulsetrace.flush()
(s,) = exporter.spans()
print(sorted(s.attributes.items()), s.status, s.status_message)
"""


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("attribute", "[('stringified', True), ('value', 'chatty')] unset "),
        ("exception", "[('message_read', True)] error Loud: loud"),
    ],
    ids=["attribute", "exception"],
)
def test_application_code_run_by_the_span_api_may_use_the_same_span(case, expected):
    """Converting an attribute value, or reading an exception's message, runs
    the application's own ``__str__``, which may use the same span: the span
    is never locked meanwhile (its lock is not reentrant, and it is taken
    with the GIL held: the whole process would hang). In a subprocess, so
    that a hang fails this test instead of the run."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _REENTRANT, case], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == expected
