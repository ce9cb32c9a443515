"""Outbound HTTP: CLIENT spans for requests, urllib3, httpx (sync and async),
urllib.request and aiohttp, against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional

import aiohttp
import httpx
import pytest
import requests
import urllib3

import pulsetrace
from pulsetrace import _diag
from pulsetrace.config import from_env
from pulsetrace.contrib import _client
from pulsetrace.contrib import aiohttp as aiohttp_hook
from pulsetrace.contrib import httpx as httpx_hook
from pulsetrace.contrib import requests as requests_hook
from pulsetrace.contrib import urllib as urllib_hook
from pulsetrace.contrib import urllib3 as urllib3_hook
from servers import free_port

from conftest import finished, fresh
from contrib.http_echo_server import EchoServer

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ALL_HOOKS = (requests_hook, urllib3_hook, httpx_hook, urllib_hook, aiohttp_hook)

Result = tuple[int, dict[str, Any]]


def _json(raw: bytes) -> dict[str, Any]:
    return json.loads(raw) if raw else {}


def via_requests(
    url: str, headers: Any = None, timeout: float = 5.0, method: str = "GET"
) -> Result:
    with requests.Session() as s:
        r = s.request(method, url, headers=headers, timeout=timeout)
        return r.status_code, _json(r.content)


def via_urllib3(url: str, headers: Any = None, timeout: float = 5.0, method: str = "GET") -> Result:
    with urllib3.PoolManager() as pool:
        r = pool.request(method, url, headers=headers, timeout=timeout)
        return r.status, _json(r.data)


def via_httpx(url: str, headers: Any = None, timeout: float = 5.0, method: str = "GET") -> Result:
    with httpx.Client(timeout=timeout) as c:
        r = c.request(method, url, headers=headers)
        return r.status_code, _json(r.content)


def via_httpx_async(
    url: str, headers: Any = None, timeout: float = 5.0, method: str = "GET"
) -> Result:
    async def go() -> Result:
        async with httpx.AsyncClient(timeout=timeout) as c:
            r = await c.request(method, url, headers=headers)
            return r.status_code, _json(r.content)

    return asyncio.run(go())


def via_urllib(url: str, headers: Any = None, timeout: float = 5.0, method: str = "GET") -> Result:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, _json(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, _json(e.read())


def via_aiohttp(url: str, headers: Any = None, timeout: float = 5.0, method: str = "GET") -> Result:
    async def go() -> Result:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.request(method, url, headers=headers) as r:
                return r.status, _json(await r.read())

    return asyncio.run(go())


@dataclass(frozen=True)
class Client:
    name: str
    hook: Any
    fetch: Callable[..., Result]
    #: Whether the library sends a URL with ``user:password@`` (urllib cannot).
    userinfo: bool = True
    #: Spans for a request that is redirected once.
    redirect_spans: int = 1


CLIENTS = [
    Client("requests", requests_hook, via_requests),
    Client("urllib3", urllib3_hook, via_urllib3),
    Client("httpx", httpx_hook, via_httpx, redirect_spans=2),
    Client("httpx-async", httpx_hook, via_httpx_async, redirect_spans=2),
    Client("urllib", urllib_hook, via_urllib, userinfo=False),
    Client("aiohttp", aiohttp_hook, via_aiohttp),
]


@pytest.fixture(scope="module")
def server() -> Iterator[EchoServer]:
    s = EchoServer().start()
    yield s
    s.stop()


@pytest.fixture(params=CLIENTS, ids=lambda c: c.name)
def client(request: Any, exporter: Any, server: EchoServer) -> Iterator[Client]:
    c: Client = request.param
    server.received.clear()
    c.hook.patch()
    yield c
    for hook in ALL_HOOKS:
        hook.unpatch()


def take(exporter: Any, kind: Optional[str] = "client") -> list[Any]:
    """Client spans exported so far (then forgotten)."""
    spans = [s for s in finished(exporter) if kind is None or s.kind == kind]
    exporter.clear()
    return spans


def parent_id(traceparent: str) -> tuple[int, int]:
    """(trace id, parent span id) of a sampled W3C ``traceparent``."""
    version, trace_id, span_id, flags = traceparent.split("-")
    # 03 on a trace pulsetrace started: sampled, and its trace id is random.
    assert version == "00" and flags in ("01", "03"), traceparent
    return int(trace_id, 16), int(span_id, 16)


def failure(client: Client, url: str, timeout: float) -> Exception:
    try:
        client.fetch(url, timeout=timeout)
    except Exception as exc:
        return exc
    pytest.fail(f"{client.name}: no exception for {url}")


def everything_recorded(span: Any) -> str:
    values = [*span.attributes.values(), span.name, span.status_message]
    for event in span.events:
        values.extend(event["attributes"].values())
    return " ".join(str(v) for v in values)


def test_span_name_kind_and_attributes(client, server, exporter):
    url = server.url("/status/200?token=s3cret&page=2")
    if client.userinfo:
        url = url.replace("http://", "http://alice:hunter2@")
    status, body = client.fetch(url)
    assert status == 200
    (s,) = take(exporter)
    assert (s.name, s.kind, s.status) == ("GET", "client", "unset")
    a = s.attributes
    creds = "REDACTED:REDACTED@" if client.userinfo else ""
    assert a["url.full"] == (
        f"http://{creds}127.0.0.1:{server.port}/status/200?token=REDACTED&page=2"
    )
    assert a["http.request.method"] == "GET"
    assert a["server.address"] == "127.0.0.1"
    assert a["server.port"] == server.port
    assert a["http.response.status_code"] == 200
    assert a["network.protocol.version"] == "1.1"
    assert "error.type" not in a
    recorded = everything_recorded(s)
    assert "hunter2" not in recorded and "alice" not in recorded and "s3cret" not in recorded
    # The server did get the real query.
    assert body["path"] == "/status/200?token=s3cret&page=2"


def test_other_methods_are_bounded(client, server, exporter):
    assert client.fetch(server.url("/status/200"), method="PURGE")[0] == 200
    (s,) = take(exporter)
    assert s.name == "HTTP"
    assert s.attributes["http.request.method"] == "_OTHER"
    assert s.attributes["http.request.method_original"] == "PURGE"


def test_server_receives_the_client_span_as_parent(client, server, exporter):
    with pulsetrace.start_span("parent"):
        before = pulsetrace.current_span()
        status, body = client.fetch(server.url("/status/200"))
        assert pulsetrace.current_span() is before  # reset after the call
    assert pulsetrace.current_span() is None
    spans = take(exporter, kind=None)
    (parent,) = [s for s in spans if s.name == "parent"]
    (s,) = [s for s in spans if s.kind == "client"]
    assert s.parent_span_id == parent.span_id
    assert s.trace_id == parent.trace_id
    assert body["traceparent_count"] == 1
    assert parent_id(body["traceparent"]) == (s.trace_id, s.span_id)


def test_tracestate_of_a_remote_parent_goes_along(client, server, exporter):
    remote = pulsetrace.extract({"traceparent": TP, "tracestate": "k=v"})
    with pulsetrace.use_context(remote):
        _, body = client.fetch(server.url("/status/200"))
    (s,) = take(exporter)
    assert s.parent_span_id == 0x00F067AA0BA902B7
    assert parent_id(body["traceparent"]) == (0x4BF92F3577B34DA6A3CE929D0E0E4736, s.span_id)
    assert body["tracestate"] == "k=v"


def test_caller_set_traceparent_is_kept(client, server, exporter):
    headers = {"TraceParent": TP, "X-Other": "1"}
    status, body = client.fetch(server.url("/status/200"), headers=headers)
    assert status == 200
    assert body["traceparent"] == TP and body["traceparent_count"] == 1
    assert body["headers"]["x-other"] == "1"
    assert headers == {"TraceParent": TP, "X-Other": "1"}
    (s,) = take(exporter)  # still traced, just not propagated over the caller's header
    assert s.attributes["http.response.status_code"] == 200


def test_caller_headers_are_not_modified(client, server, exporter):
    headers = {"X-Other": "1"}
    _, body = client.fetch(server.url("/status/200"), headers=headers)
    assert body["traceparent"] is not None
    assert headers == {"X-Other": "1"}


@pytest.mark.parametrize("code", [404, 500])
def test_error_statuses(client, server, exporter, code):
    status, body = client.fetch(server.url(f"/status/{code}"))
    assert status == code
    (s,) = take(exporter)
    assert s.status == "error"
    assert s.attributes["http.response.status_code"] == code
    assert s.attributes["error.type"] == str(code)
    assert parent_id(body["traceparent"])[1] == s.span_id


@pytest.mark.parametrize("where", ["refused", "timeout"])
def test_network_failures_are_recorded_and_raised_unchanged(client, server, exporter, where):
    if where == "refused":
        url = f"http://127.0.0.1:{free_port()}/status/200"
    else:
        url = server.url("/slow")
    client.hook.unpatch()
    plain = failure(client, url, timeout=0.3)
    client.hook.patch()
    traced = failure(client, url, timeout=0.3)
    assert type(traced) is type(plain)
    assert type(traced.__cause__) is type(plain.__cause__)
    (s,) = take(exporter)
    assert s.status == "error"
    (event,) = s.events
    assert event["name"] == "exception"
    ev = event["attributes"]
    assert ev["exception.type"].rpartition(".")[2] == type(traced).__name__
    assert ev["exception.message"] == str(traced)
    assert ev["exception.escaped"] is True
    assert s.attributes["error.type"] == ev["exception.type"]
    assert "http.response.status_code" not in s.attributes


def test_redirects(client, server, exporter):
    if client.name.startswith("httpx"):
        status = _httpx_follow(client, server.url("/redirect"))
    else:
        status = client.fetch(server.url("/redirect"))[0]
    assert status == 200
    spans = take(exporter)
    assert len(spans) == client.redirect_spans
    assert spans[-1].attributes["http.response.status_code"] == 200
    hops = server.received[-2:]
    assert [h["path"] for h in hops] == ["/redirect", "/status/200"]
    # Each hop names a span of this request as its parent: the one span of
    # the request, or (httpx, one span per hop) its own.
    assert sorted(parent_id(h["traceparent"])[1] for h in hops) == sorted(
        [s.span_id for s in spans] * (2 // len(spans))
    )


def _httpx_follow(client: Client, url: str) -> int:
    if client.name == "httpx":
        with httpx.Client(follow_redirects=True) as c:
            return c.get(url).status_code

    async def go() -> int:
        async with httpx.AsyncClient(follow_redirects=True) as c:
            return (await c.get(url)).status_code

    return asyncio.run(go())


def test_patch_twice_gives_one_span_and_unpatch_none(client, server, exporter):
    client.hook.patch()
    client.fetch(server.url("/status/200"))
    assert len(take(exporter)) == 1
    client.hook.unpatch()
    client.hook.unpatch()
    _, body = client.fetch(server.url("/status/200"))
    assert body["traceparent"] is None
    assert take(exporter) == []


def test_tracing_off_injects_nothing(client, server, exporter):
    fresh(enabled=False)
    status, body = client.fetch(server.url("/status/200"))
    assert status == 200
    assert body["traceparent"] is None
    assert take(exporter) == []


@pytest.mark.parametrize("helper", ["attributes", "inject", "on_response"])
def test_a_pulsetrace_fault_never_changes_the_response(
    client, server, exporter, monkeypatch, helper
):
    client.hook.unpatch()
    plain = client.fetch(server.url("/status/404?x=1"))
    client.hook.patch()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("pulsetrace bug")

    monkeypatch.setattr(_client, helper, broken)
    traced = client.fetch(server.url("/status/404?x=1"))
    assert traced[0] == plain[0]
    for body in (plain[1], traced[1]):
        body.pop("traceparent")
        body.pop("traceparent_count")
        body["headers"].pop("traceparent", None)
    assert traced[1] == plain[1]
    assert sum(_diag.internal_errors().values()) >= 1
    assert pulsetrace.current_span() is None


def test_a_fault_while_recording_a_failure_keeps_the_exception(
    client, server, exporter, monkeypatch
):
    url = f"http://127.0.0.1:{free_port()}/"
    client.hook.unpatch()
    plain = failure(client, url, timeout=1.0)
    client.hook.patch()
    monkeypatch.setattr(_client, "on_exception", lambda *a: 1 / 0)
    traced = failure(client, url, timeout=1.0)
    assert type(traced) is type(plain)
    assert any(k.endswith(".exception") for k in _diag.internal_errors())
    assert len(take(exporter)) == 1  # still ended


# -- layering: one span per request ------------------------------------------


def test_requests_over_urllib3_is_one_span(exporter, server):
    requests_hook.patch()
    urllib3_hook.patch()
    try:
        _, body = via_requests(server.url("/status/200"))
        (s,) = take(exporter)
        assert parent_id(body["traceparent"])[1] == s.span_id
        # urllib3 alone still traces what requests sends through it.
        requests_hook.unpatch()
        _, body = via_requests(server.url("/status/200"))
        (s,) = take(exporter)
        assert parent_id(body["traceparent"])[1] == s.span_id
        assert s.attributes["url.full"] == server.url("/status/200")
    finally:
        requests_hook.unpatch()
        urllib3_hook.unpatch()


def test_urllib3_retries_are_one_span(exporter, server):
    urllib3_hook.patch()
    server.received.clear()
    retry = urllib3.Retry(total=2, status_forcelist=[500], backoff_factor=0, raise_on_status=False)
    try:
        with urllib3.HTTPConnectionPool("127.0.0.1", server.port) as pool:
            r = pool.request("GET", "/status/500", retries=retry, headers={"X-A": "1"})
        assert r.status == 500
    finally:
        urllib3_hook.unpatch()
    (s,) = take(exporter)
    assert s.attributes["url.full"] == server.url("/status/500")
    assert s.attributes["http.response.status_code"] == 500
    assert len(server.received) == 3
    assert {parent_id(h["traceparent"])[1] for h in server.received} == {s.span_id}


def test_every_library_at_once_still_one_span_each(exporter, server):
    for hook in ALL_HOOKS:
        hook.patch()
    try:
        for c in CLIENTS:
            c.fetch(server.url("/status/200"))
            assert len(take(exporter)) == 1, c.name
    finally:
        for hook in ALL_HOOKS:
            hook.unpatch()


# -- the span is current while the request runs ------------------------------


def test_requests_span_is_current_inside_the_request(exporter, server):
    requests_hook.patch()
    seen: list[Any] = []
    try:
        with requests.Session() as s:
            s.get(
                server.url("/status/200"),
                hooks={"response": lambda r, **kw: seen.append(pulsetrace.current_span().span_id)},
            )
    finally:
        requests_hook.unpatch()
    (span,) = take(exporter)
    assert seen == [span.span_id]


def test_urllib_span_is_current_inside_the_request(exporter, server):
    seen: list[Any] = []

    class Spy(urllib.request.BaseHandler):
        def http_response(self, req: Any, resp: Any) -> Any:
            seen.append(pulsetrace.current_span().span_id)
            return resp

    urllib_hook.patch()
    try:
        with urllib.request.build_opener(Spy()).open(server.url("/status/200")) as r:
            assert r.status == 200
    finally:
        urllib_hook.unpatch()
    (span,) = take(exporter)
    assert seen == [span.span_id]


def test_aiohttp_span_is_current_inside_the_request(exporter, server):
    seen: list[Any] = []

    async def spy(req: Any, handler: Any) -> Any:
        seen.append(pulsetrace.current_span().span_id)
        return await handler(req)

    async def go() -> None:
        async with aiohttp.ClientSession(middlewares=(spy,)) as s:
            async with s.get(server.url("/status/200")) as r:
                await r.read()

    aiohttp_hook.patch()
    try:
        asyncio.run(go())
    finally:
        aiohttp_hook.unpatch()
    (span,) = take(exporter)
    assert seen == [span.span_id]


def test_concurrent_async_requests_each_get_their_own_span(exporter, server):
    async def go() -> list[Result]:
        async with aiohttp.ClientSession() as s, httpx.AsyncClient() as h:

            async def one_aiohttp(i: int) -> Result:
                async with s.get(server.url(f"/status/200?i={i}")) as r:
                    return r.status, _json(await r.read())

            async def one_httpx(i: int) -> Result:
                r = await h.get(server.url(f"/status/200?j={i}"))
                return r.status_code, _json(r.content)

            with pulsetrace.start_span("fan-out"):
                return await asyncio.gather(
                    *(one_aiohttp(i) for i in range(3)), *(one_httpx(i) for i in range(3))
                )

    aiohttp_hook.patch()
    httpx_hook.patch()
    try:
        results = asyncio.run(go())
    finally:
        aiohttp_hook.unpatch()
        httpx_hook.unpatch()
    spans = take(exporter, kind=None)
    (parent,) = [s for s in spans if s.name == "fan-out"]
    clients = [s for s in spans if s.kind == "client"]
    assert len(clients) == 6
    assert {s.parent_span_id for s in clients} == {parent.span_id}
    by_url = {s.attributes["url.full"]: s.span_id for s in clients}
    for _, body in results:
        assert parent_id(body["traceparent"])[1] == by_url[server.url(body["path"])]


# -- request objects, schemes, registry --------------------------------------


def test_a_request_object_sent_twice_gets_a_fresh_traceparent(exporter, server):
    for hook in ALL_HOOKS:
        hook.patch()
    url = server.url("/status/200")
    try:
        with requests.Session() as s:
            prepared = s.prepare_request(requests.Request("GET", url))
            bodies = [s.send(prepared).json() for _ in range(2)]
        with httpx.Client() as c:
            built = c.build_request("GET", url)
            bodies += [c.send(built).json() for _ in range(2)]
        request = urllib.request.Request(url)
        for _ in range(2):
            with urllib.request.urlopen(request) as r:
                bodies.append(json.load(r))
    finally:
        for hook in ALL_HOOKS:
            hook.unpatch()
    spans = take(exporter)
    assert [parent_id(b["traceparent"])[1] for b in bodies] == [s.span_id for s in spans]
    assert len({s.span_id for s in spans}) == 6


def test_urllib_other_schemes_are_not_traced(exporter):
    urllib_hook.patch()
    try:
        with urllib.request.urlopen("data:text/plain,hello") as r:
            assert r.read() == b"hello"
    finally:
        urllib_hook.unpatch()
    assert take(exporter) == []


def test_aiohttp_raise_for_status_is_an_error_with_the_status(exporter, server):
    async def go() -> None:
        async with aiohttp.ClientSession(raise_for_status=True) as s:
            await s.get(server.url("/status/503"))

    aiohttp_hook.patch()
    try:
        with pytest.raises(aiohttp.ClientResponseError):
            asyncio.run(go())
    finally:
        aiohttp_hook.unpatch()
    (s,) = take(exporter)
    assert s.status == "error"
    assert s.attributes["http.response.status_code"] == 503
    assert s.attributes["error.type"] == "503"
    assert s.events[0]["attributes"]["exception.type"].endswith("ClientResponseError")


def test_url_redaction_helper():
    assert _client.url_parts("https://u:p@Example.com/x?a=1#f") == (
        "https://REDACTED:REDACTED@Example.com/x?a=1#f",
        "example.com",
        443,
    )
    assert _client.url_parts("http://[::1]:8080/?api_key=k&b=2")[0] == (
        "http://[::1]:8080/?api_key=REDACTED&b=2"
    )
    assert _client.url_parts("http://h/plain?x=1")[0] == "http://h/plain?x=1"


@pytest.mark.parametrize(
    "env",
    [
        {"PULSETRACE_REQUESTS_ENABLED": "false"},
        {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "requests"},
    ],
)
def test_registry_toggles(exporter, server, env):
    names = ["requests", "urllib3", "httpx", "urllib", "aiohttp"]
    chosen = pulsetrace.contrib.instrument(from_env(env), names)
    try:
        assert chosen == ["urllib3", "httpx", "urllib", "aiohttp"]
        assert not hasattr(requests.Session.__dict__["send"], "__wrapped__")
        assert set(chosen) <= set(pulsetrace.contrib.instrumented())
        # requests is off, so the request is urllib3's span alone.
        _, body = via_requests(server.url("/status/200"))
        (s,) = take(exporter)
        assert parent_id(body["traceparent"])[1] == s.span_id
        via_httpx(server.url("/status/200"))
        assert len(take(exporter)) == 1
    finally:
        pulsetrace.contrib.uninstrument(names)
    via_urllib3(server.url("/status/200"))
    assert take(exporter) == []
