"""Attribute values: conversion, limits, bad input never raises."""

from __future__ import annotations

import pulsetrace

from conftest import finished


def test_supported_values_are_kept_exactly(exporter):
    with pulsetrace.start_span("s") as span:
        span.set_attributes(
            {
                "str": "x",
                "int": -5,
                "float": 1.5,
                "bool": True,
                "strs": ["a", "b"],
                "ints": (1, 2),
                "floats": [1.5, 2],
                "bools": [True, False],
            }
        )
    (s,) = finished(exporter)
    assert s.attributes == {
        "str": "x",
        "int": -5,
        "float": 1.5,
        "bool": True,
        "strs": ("a", "b"),
        "ints": (1, 2),
        "floats": (1.5, 2.0),
        "bools": (True, False),
    }
    assert pulsetrace.counters()["attributes_converted"] == 0


def test_other_values_are_converted_or_dropped_and_counted(exporter):
    class Weird:
        def __str__(self):
            return "weird!"

    class Hostile:
        def __str__(self):
            raise RuntimeError("no")

    with pulsetrace.start_span("s") as span:
        span.set_attribute("obj", Weird())
        span.set_attribute("huge", 2**80)
        span.set_attribute("bytes", b"caf\xc3\xa9")
        span.set_attribute("badbytes", b"\xff\xfe")
        span.set_attribute("none", None)
        span.set_attribute("hostile", Hostile())
        span.set_attribute("mixed", [1, "a", None])
        span.set_attribute(42, "non-str key")
    (s,) = finished(exporter)
    a = s.attributes
    assert a["obj"] == "weird!"
    assert a["huge"] == str(2**80)
    assert a["bytes"] == "café"
    assert a["badbytes"] == "\ufffd\ufffd"
    assert "none" not in a and "hostile" not in a
    assert a["mixed"] == ("1", "a")
    assert a["42"] == "non-str key"
    c = pulsetrace.counters()
    assert c["attributes_dropped"] == 2
    assert c["attributes_converted"] >= 5
    assert c["attributes_invalid_utf8"] == 1


def test_lone_surrogates_are_replaced_not_raised(exporter):
    with pulsetrace.start_span("bad \udcff name") as span:
        span.set_attribute("k", "value \ud800 here")
    (s,) = finished(exporter)
    assert s.name == "bad \ufffd name"
    assert s.attributes["k"] == "value \ufffd here"
    assert pulsetrace.counters()["attributes_invalid_utf8"] == 2


def test_a_wsgi_environ_with_lone_surrogates_is_replaced_not_raised(exporter):
    # WSGI servers decode the request line as latin-1, but an application or
    # middleware may put anything in the environ: the request still runs.
    from pulsetrace.contrib.wsgi import PulsetraceMiddleware

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/a\udcffb",
        "QUERY_STRING": "q=\ud800&token=x",
        "HTTP_USER_AGENT": "ua \udcff",
        "wsgi.url_scheme": "http",
    }
    body = PulsetraceMiddleware(app)(environ, lambda *a: None)
    assert list(body) == [b"ok"]
    body.close()
    (s,) = finished(exporter)
    assert s.attributes["url.path"] == "/a\ufffdb"
    assert s.attributes["url.query"] == "q=\ufffd&token=REDACTED"
    assert s.attributes["user_agent.original"] == "ua \ufffd"
    assert pulsetrace.counters()["attributes_invalid_utf8"] == 3


def test_oversized_values_are_truncated_on_a_character_boundary(exporter):
    pulsetrace.configure(pulsetrace.get_config(), max_attribute_length=16)
    pulsetrace.add_exporter(exporter)
    with pulsetrace.start_span("s") as span:
        span.set_attribute("long", "é" * 100)  # 2 bytes each
        span.set_attribute("short", "fine")
    (s,) = finished(exporter)
    assert s.attributes["long"] == "é" * 8
    assert s.attributes["short"] == "fine"
    assert pulsetrace.counters()["attributes_truncated"] == 1


def test_attribute_count_is_bounded(exporter):
    pulsetrace.configure(pulsetrace.get_config(), max_attributes=3)
    pulsetrace.add_exporter(exporter)
    with pulsetrace.start_span("s") as span:
        for i in range(10):
            span.set_attribute(f"k{i}", i)
        span.set_attribute("k0", "overwritten")  # existing keys still update
    (s,) = finished(exporter)
    assert s.attributes == {"k0": "overwritten", "k1": 1, "k2": 2}
    assert s.dropped_attributes == 7
