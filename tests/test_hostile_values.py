"""Hostile objects: whatever the application hands pulsetrace (a value whose
``__str__`` changes the dict being converted, raises, calls back into the
span or returns a huge string; recursive containers; str and int subclasses
with hostile methods; failing mappings, iterables and header carriers),
nothing but the application's own exceptions, raised by its own code,
reaches the caller. Panics included: ``pyo3_runtime.PanicException`` is a
``BaseException``, so every call here catches ``BaseException``."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import pytest

import pulsetrace
from pulsetrace import _diag
from pulsetrace.contrib.wsgi import PulsetraceMiddleware

from conftest import finished

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Hostile(Exception):
    """What the hostile objects' own methods raise."""


class AppError(Exception):
    """The application's own exception, raised by its own code."""


def _raise(*_: Any, **__: Any) -> Any:
    raise Hostile("hostile method")


class Raises:
    """Every method pulsetrace might call raises (it is still hashable)."""

    __str__ = __repr__ = __format__ = __len__ = __iter__ = __index__ = __bool__ = _raise
    __eq__ = __ne__ = __lt__ = __getitem__ = __getattr__ = _raise  # type: ignore[assignment]

    def __hash__(self) -> int:
        return 1


class Unhashable:
    __str__ = __repr__ = __eq__ = __hash__ = _raise  # type: ignore[assignment]


class HostileStr(str):
    """A str whose Python-level methods all raise (its text is fine)."""

    __str__ = __repr__ = __eq__ = __ne__ = __len__ = __iter__ = __getitem__ = _raise
    lower = upper = encode = split = strip = startswith = _raise  # type: ignore[assignment]
    __hash__ = str.__hash__


class HostileInt(int):
    __str__ = __repr__ = __index__ = __int__ = __float__ = __eq__ = _raise  # type: ignore[assignment]
    __hash__ = int.__hash__


class Mutates:
    """Its ``__str__`` adds to (and removes from) the dict being converted."""

    def __init__(self, target: dict[Any, Any]) -> None:
        self.target = target

    def __str__(self) -> str:
        self.target[f"added-{len(self.target)}"] = 1
        self.target.pop("gone", None)
        return "mutated"


class NotAStr:
    def __str__(self) -> Any:
        return 42


class StrSubclassStr:
    def __str__(self) -> str:
        return HostileStr("from a subclass")


@functools.cache
def huge_text() -> str:
    """64 Mi characters, not ASCII (made once)."""
    return "é" * (64 << 20)


class Huge:
    """Its ``__str__`` returns a 64 MiB string (the same object each time)."""

    def __str__(self) -> str:
        return huge_text()


class Reenters:
    """Its ``__str__`` uses the span being given attributes."""

    def __init__(self, span: Any) -> None:
        self.span = span

    def __str__(self) -> str:
        self.span.set_attribute("from inside", 1)
        self.span.add_event("event from inside")
        return "reentered"


class ItemsRaise(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise Hostile("getitem")

    def __iter__(self) -> Iterator[str]:
        raise Hostile("iter")

    def __len__(self) -> int:
        raise Hostile("len")

    def items(self) -> Any:
        raise Hostile("items")


class ItemsPartly(ItemsRaise):
    """``items()`` yields a pair, a non-pair, then raises."""

    def items(self) -> Any:
        yield ("kept", 1)
        yield "not a pair"
        raise Hostile("mid-way")


class EndlessItems(ItemsRaise):
    def items(self) -> Any:
        i = 0
        while True:
            yield (f"k{i}", i)
            i += 1


class DictWithHostileMethods(dict):  # type: ignore[type-arg]
    items = keys = values = __iter__ = __getitem__ = get = __len__ = _raise  # type: ignore[assignment]


def hostile_values(target: dict[Any, Any], span: Any) -> list[Any]:
    recursive_list: list[Any] = []
    recursive_list.append(recursive_list)
    recursive_dict: dict[str, Any] = {}
    recursive_dict["self"] = recursive_dict
    return [
        Raises(),
        Unhashable(),
        HostileStr("text"),
        HostileStr("lone \ud800 surrogate"),
        HostileInt(7),
        HostileInt(2**80),
        Mutates(target),
        NotAStr(),
        StrSubclassStr(),
        Huge(),
        huge_text(),
        Reenters(span),
        recursive_list,
        recursive_dict,
        [recursive_list, recursive_dict],
        [Raises(), 1],
        [Mutates(target), Reenters(span), HostileInt(3)],
        (HostileStr("a"), HostileInt(2**70)),
        10**5000,
        -(2**200),
        b"\xff\xfe" * 8,
        b"x" * (16 << 20),
        "\udcff",
        float("nan"),
        {1, 2, 3},
        object(),
        list(range(100_000)),
    ]


def hostile_mappings(span: Any) -> list[Any]:
    mutating: dict[Any, Any] = {"gone": 0}
    mutating["a"] = Mutates(mutating)
    mutating[HostileStr("hostile key")] = 1
    mutating[Raises()] = "a key whose str() raises"
    mutating[3] = "an int key"
    return [
        mutating,
        {"v": Reenters(span)},
        ItemsRaise(),
        ItemsPartly(),
        EndlessItems(),
        DictWithHostileMethods(a=Raises(), b=Mutates({})),
        Raises(),
        {f"k{i}": i for i in range(10_000)},
    ]


def rss() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def start_and_end(name: str, **options: Any) -> None:
    pulsetrace.start_span(name, **options).end()


class Survivor:
    """Runs calls, noting anything that reaches the caller."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, label: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except BaseException as exc:  # every exception, panics included, is a failure here
            name = f"{type(exc).__module__}.{type(exc).__qualname__}"
            self.failures.append(f"{label}: {name}: {str(exc)[:200]}")
            return None


def test_an_attribute_dict_mutated_during_conversion(exporter):
    # The issue's reproducer, both forms: pyo3's dict iterator panicked
    # (PanicException, a BaseException) when __str__ changed the dict.
    d: dict[str, Any] = {}

    class V:
        def __str__(self) -> str:
            d["new"] = 1
            return "v"

    d["a"] = V()
    with pulsetrace.start_span("x") as s:
        s.set_attributes(d)
    d.clear()
    d["a"] = V()
    with pulsetrace.start_span("y", attributes=d):
        pass
    spans = {s.name: s for s in finished(exporter)}
    # Converted from the dict as it was when the call was made.
    assert spans["x"].attributes == {"a": "v"}
    assert spans["y"].attributes == {"a": "v"}
    assert _diag.internal_errors() == {}


def test_hostile_objects_never_raise_through_the_span_api(exporter):
    survive = Survivor()
    context = pulsetrace.SpanContext(0x1234, 0x5678)

    class Status:
        status_code = 2
        description = property(_raise)

    with pulsetrace.start_span("sweep") as span:
        span.set_attribute("ok", 1)
        target: dict[Any, Any] = {"gone": 0}
        values = hostile_values(target, span)
        for i, value in enumerate(values):
            label = f"value {i} ({type(value).__name__})"
            attrs = {"ok": 1, "v": value}
            survive(f"start_span {label}", start_and_end, "v", attributes=attrs)
            survive(f"set_attribute {label}", span.set_attribute, "v", value)
            survive(f"set_attribute key {label}", span.set_attribute, value, 1)
            survive(f"set_attributes {label}", span.set_attributes, attrs)
            survive(f"add_event {label}", span.add_event, "e", attrs)
            survive(f"add_link {label}", span.add_link, context, attrs)
            survive(f"record_exception {label}", span.record_exception, AppError(), attrs)
        mappings = hostile_mappings(span)
        for i, mapping in enumerate(mappings):
            label = f"mapping {i} ({type(mapping).__name__})"
            survive(f"start_span {label}", start_and_end, "m", attributes=mapping)
            survive(f"set_attributes {label}", span.set_attributes, mapping)
            survive(f"add_event {label}", span.add_event, "e", mapping)
            survive(f"add_link {label}", span.add_link, context, mapping)
            survive(f"record_exception {label}", span.record_exception, AppError(), mapping)

        def endless() -> Iterator[Any]:
            while True:
                yield context

        def failing() -> Iterator[Any]:
            yield context
            raise Hostile("links")

        all_links = ([Raises(), context, Unhashable()], endless(), failing(), ItemsRaise())
        for links in all_links:
            survive(f"links {type(links).__name__}", start_and_end, "l", links=links)
        survive("start_span name", start_and_end, HostileStr("n"), kind="client")
        survive("update_name huge", span.update_name, huge_text())
        survive("update_name", span.update_name, HostileStr("renamed \ud800"))
        survive("set_status description", span.set_status, "error", HostileStr("d"))
        survive("set_status object", span.set_status, Status())
        survive("record_exception hostile", span.record_exception, HostileError())
        survive("record_exception not one", span.record_exception, Raises())
        survive("add_event name", span.add_event, HostileStr("event"), None, 5)
        survive("attributes", getattr, span, "attributes")
        survive("repr", repr, span)
    survive("end twice", span.end)

    assert survive.failures == []
    spans = finished(exporter)
    (sweep,) = [s for s in spans if s.name == "renamed \ufffd"]
    assert sweep.attributes["ok"] == 1 and sweep.status == "error"
    assert all(isinstance(v, (str, bool, int, float, tuple)) for v in sweep.attributes.values())
    # Every start_span gave a span that ended and was exported.
    assert len(spans) == 1 + len(values) + len(mappings) + len(all_links) + 1

    # Only the application's own exceptions, raised by its own code, pass,
    # as the same objects.
    for exc in (AppError("own"), HostileError(), KeyboardInterrupt()):
        try:
            with pulsetrace.start_span("raises", attributes={"v": Raises()}) as span:
                span.set_attribute("m", Mutates({}))
                raise exc
        except BaseException as caught:
            assert caught is exc
        else:
            raise AssertionError("the exception was swallowed")

    @pulsetrace.traced(attributes={"v": Raises()})
    def fails() -> None:
        raise AppError("from a traced function")

    with pytest.raises(AppError):
        fails()
    spans = [s for s in finished(exporter) if s.name == "raises" or s.name.endswith("fails")]
    assert len(spans) == 4 and all(s.status == "error" for s in spans)


class HostileError(Exception):
    """An exception whose own methods raise or misbehave."""

    __str__ = __repr__ = _raise  # type: ignore[assignment]

    @property
    def __traceback__(self) -> Any:  # type: ignore[override]
        raise Hostile("traceback")


def test_hostile_header_carriers_and_traced_never_raise(exporter):
    survive = Survivor()

    class ReadOnly(dict):  # type: ignore[type-arg]
        __setitem__ = _raise

    carriers = [
        Raises(),
        ItemsRaise(),
        DictWithHostileMethods(traceparent=TRACEPARENT),
        {"traceparent": Raises()},
        {"traceparent": HostileStr(TRACEPARENT), "tracestate": HostileStr("a=b")},
        {HostileStr("TraceParent"): TRACEPARENT},
        {"traceparent": [Raises()], "tracestate": [Raises(), Unhashable()]},
        {"traceparent": "0" * (64 << 20)},
        {"traceparent": TRACEPARENT, "tracestate": "k=" + "v" * (16 << 20)},
        {"traceparent": b"\xff" * 100},
    ]
    for i, carrier in enumerate(carriers):
        survive(f"extract {i}", pulsetrace.extract, carrier)
    with pulsetrace.start_span("outgoing"):
        for carrier in (Raises(), ReadOnly(), {HostileStr("k"): "v"}, ItemsRaise()):
            survive(f"inject {type(carrier).__name__}", pulsetrace.inject, carrier)

    def seven() -> int:
        return 7

    for name, attributes in (
        (None, Raises()),
        (HostileStr("hostile name"), {"v": Raises()}),
        (None, ItemsRaise()),
        (None, hostile_mappings(None)[0]),
    ):
        decorated = survive("traced", pulsetrace.traced(name=name, attributes=attributes), seven)
        assert survive(f"traced {type(attributes).__name__}", decorated) == 7
    assert survive.failures == []
    assert len(finished(exporter)) == 5
    assert "propagation.inject" in _diag.internal_errors()


def test_a_hostile_environ_never_breaks_a_wsgi_request(exporter):
    survive = Survivor()
    statuses: list[Any] = []

    def server_start_response(status: Any, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response(HostileStr("200 OK"), [])
        return [b"ok"]

    def failing_app(environ: Any, start_response: Any) -> list[bytes]:
        raise AppError("own")

    class HostileEnviron(dict):  # type: ignore[type-arg]
        __getitem__ = get = __iter__ = items = keys = __len__ = __contains__ = _raise  # type: ignore[assignment]

    environs = [
        {
            "REQUEST_METHOD": HostileStr("GET"),
            "SCRIPT_NAME": HostileStr("/mount"),
            "PATH_INFO": HostileStr("/p \ud800"),
            "QUERY_STRING": HostileStr("token=x&a=\udcff"),
            "HTTP_HOST": HostileStr("h:80"),
            "SERVER_PORT": HostileInt(80),
            "HTTP_TRACEPARENT": HostileStr(TRACEPARENT),
            "HTTP_TRACESTATE": HostileStr("a=b"),
            "HTTP_USER_AGENT": huge_text(),
            "HTTP_REFERER": huge_text(),
            "REMOTE_ADDR": Raises(),
            "wsgi.url_scheme": Raises(),
            "SERVER_PROTOCOL": HostileStr("HTTP/1.1"),
        },
        HostileEnviron(REQUEST_METHOD="GET", PATH_INFO="/x"),
        {"REQUEST_METHOD": "\ud800", "PATH_INFO": Raises(), "HTTP_TRACEPARENT": "0" * 10**6},
        {"PATH_INFO": huge_text(), "QUERY_STRING": huge_text(), "HTTP_HOST": huge_text()},
        {},
        Raises(),
    ]

    def request(environ: Any) -> list[bytes]:
        body = PulsetraceMiddleware(app)(environ, server_start_response)
        chunks = list(body)
        if hasattr(body, "close"):  # as a WSGI server does
            body.close()
        return chunks

    huge_text()
    before = rss()
    for i, environ in enumerate(environs):
        assert survive(f"environ {i}", request, environ) == [b"ok"]
        try:
            PulsetraceMiddleware(failing_app)(environ, server_start_response)
        except BaseException as exc:
            assert type(exc) is AppError, f"environ {i}: {exc!r}"
    # Values far over the length limit are read only up to it (not copied
    # whole, nor given a UTF-8 copy of 128 MiB inside the str).
    assert rss() - before < 32 << 20
    assert survive.failures == []
    assert len(statuses) == len(environs)
    # Every request whose environ is a dict was traced.
    assert len([s for s in finished(exporter) if s.kind == "server"]) == 2 * (len(environs) - 1)
