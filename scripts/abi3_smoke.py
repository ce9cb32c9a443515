"""The abi3 wheel on the oldest and newest CPython it claims: spans, the
vectorcall entry points and their argument errors, zero-copy str reads, the
native WSGI path, the live page's files (package data).

Run by ``make abi3-check`` in a fresh virtual environment per interpreter,
with the wheel installed (not the source tree). Exits non-zero on the first
difference."""

from __future__ import annotations

import io
import sys

import pulsetrace
from pulsetrace import _runtime
from pulsetrace._native import wsgi_call


def main() -> None:
    assert "site-packages" in pulsetrace.__file__, f"not the wheel: {pulsetrace.__file__}"
    pulsetrace.configure(sample_rate=1.0)
    exporter = pulsetrace.InMemorySpanExporter()
    pulsetrace.add_exporter(exporter)

    with pulsetrace.start_span("root", kind="server", attributes={"a": 1, "s": "x\u00e9"}) as root:
        root.set_attribute("k", "v")
        with pulsetrace.start_span(name="child", kind="client") as child:
            child.set_attribute(key="n", value=2)
            child.set_attribute("lone", "a\udcffb")  # not UTF-8: one U+FFFD
    try:
        with pulsetrace.start_span("boom"):
            raise ValueError("bad")
    except ValueError:
        pass
    for call, message in (
        (lambda: pulsetrace.start_span(), "missing 1 required positional argument: 'name'"),
        (lambda: pulsetrace.start_span("a", nope=1), "unexpected keyword argument 'nope'"),
    ):
        try:
            call()
        except TypeError as e:
            assert message in str(e), e
        else:
            raise AssertionError(f"no TypeError ({message})")

    def app(environ: dict, start_response: object) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
        return [b"ok"]

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/p",
        "QUERY_STRING": "token=abc&x=1",
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "h:81",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.input": io.BytesIO(),
        "HTTP_TRACEPARENT": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }
    body = wsgi_call(_runtime.tracer(), app, environ, lambda *a: None, None)
    assert list(body) == [b"ok"]
    body.close()
    pulsetrace.flush()

    spans = {s.name: s for s in exporter.spans()}
    assert sorted(spans) == ["GET", "boom", "child", "root"], sorted(spans)
    assert spans["root"].attributes == {"a": 1, "s": "x\u00e9", "k": "v"}, spans["root"].attributes
    assert spans["child"].attributes == {"n": 2, "lone": "a\ufffdb"}, spans["child"].attributes
    assert spans["boom"].status == "error"
    g = spans["GET"].attributes
    assert g["url.query"] == "token=REDACTED&x=1", g
    assert (g["server.address"], g["server.port"], g["http.response.status_code"]) == ("h", 81, 200)
    assert spans["GET"].trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    from pulsetrace._router import Request
    from pulsetrace.monitoring import endpoints, page

    served = [e for e in endpoints.ENDPOINTS if e.path in page.FILES]
    assert sorted(e.path for e in served) == sorted(page.FILES), served
    for e in served:
        status, _, content = e.handler(Request("GET", e.path, "", {}))
        assert status == 200 and len(content) > 100, (e.path, status, content[:100])
    print(f"abi3 wheel on CPython {sys.version.split()[0]}: ok")


if __name__ == "__main__":
    main()
