"""Starlette and FastAPI: route-named SERVER spans, errors, streaming,
mounts, propagation, patch life cycle, and a real uvicorn under pulsetrace-run."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import subprocess
import sys
import time
import weakref

import pytest

import pulsetrace
from pulsetrace import _diag
from pulsetrace.contrib import starlette as starlette_hook
from pulsetrace.contrib.asgi import PulsetraceASGIMiddleware

from conftest import finished, fresh

starlette = pytest.importorskip("starlette")
fastapi = pytest.importorskip("fastapi")

from fastapi import APIRouter, FastAPI, HTTPException  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.middleware.errors import ServerErrorMiddleware  # noqa: E402
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse  # noqa: E402
from starlette.routing import Mount, Route  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HERE = os.path.dirname(os.path.abspath(__file__))


async def _chunks():
    for i in range(3):
        await asyncio.sleep(0.05)
        yield f"chunk {i}\n"


def starlette_app() -> Starlette:
    async def user(request):
        with pulsetrace.start_span("load user"):
            pass
        return JSONResponse({"id": request.path_params["user_id"]})

    async def boom(request):
        raise RuntimeError("handler failed")

    async def missing(request):
        return PlainTextResponse("no", status_code=404)

    async def stream(request):
        return StreamingResponse(_chunks(), media_type="text/plain")

    async def item(request):
        return PlainTextResponse(request.path_params["item_id"])

    api = Starlette(routes=[Route("/items/{item_id}", item)])
    return Starlette(
        routes=[
            Route("/users/{user_id}", user),
            Route("/boom", boom),
            Route("/missing", missing),
            Route("/stream", stream),
            Mount("/api/{version}", app=api),
        ]
    )


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/users/{user_id}")
    def user(user_id: int):  # sync: runs in the thread pool
        with pulsetrace.start_span("load user"):
            pass
        return {"id": user_id}

    @app.get("/boom")
    async def boom():
        raise RuntimeError("handler failed")

    @app.get("/missing")
    async def missing():
        raise HTTPException(status_code=404)

    @app.get("/stream")
    async def stream():
        return StreamingResponse(_chunks(), media_type="text/plain")

    api = APIRouter(prefix="/api/{version}")

    @api.get("/items/{item_id}")
    async def item(version: str, item_id: int):
        return {"item": item_id}

    app.include_router(api)
    return app


BUILDERS = {"starlette": starlette_app, "fastapi": fastapi_app}


@pytest.fixture
def patched(exporter):
    starlette_hook.patch()
    yield
    starlette_hook.unpatch()


@pytest.fixture(params=sorted(BUILDERS))
def app(request, patched):
    return BUILDERS[request.param]()


def get(app, path, **kw):
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get(path, **kw)
        return r.status_code, r.content


def server_spans(exporter):
    return [s for s in finished(exporter) if s.kind == "server"]


def test_spans_are_named_after_the_route_template(app, exporter):
    status, _ = get(app, "/users/42?token=s3cret&page=2", headers={"User-Agent": "t/1"})
    assert status == 200
    (s,) = server_spans(exporter)
    assert s.name == "GET /users/{user_id}"
    a = s.attributes
    assert a["http.route"] == "/users/{user_id}"
    assert a["http.request.method"] == "GET"
    assert a["http.response.status_code"] == 200
    assert a["url.path"] == "/users/42"
    assert a["url.query"] == "token=REDACTED&page=2"
    assert a["server.address"] == "testserver"
    assert a["user_agent.original"] == "t/1"
    assert s.status == "unset"
    (child,) = [x for x in finished(exporter) if x.name == "load user"]
    assert child.parent_span_id == s.span_id and child.trace_id == s.trace_id


def test_mounted_and_included_routes_keep_their_prefix(app, exporter):
    assert get(app, "/api/v2/items/7")[0] == 200
    (s,) = server_spans(exporter)
    assert s.name == "GET /api/{version}/items/{item_id}"
    assert s.attributes["http.route"] == "/api/{version}/items/{item_id}"


def test_errors_and_client_errors(app, exporter):
    assert get(app, "/boom")[0] == 500
    assert get(app, "/missing")[0] == 404
    assert get(app, "/no/such/route")[0] == 404
    assert get(app, "/api/v2/nothing")[0] == 404
    spans = server_spans(exporter)
    names = [s.name for s in spans]
    assert names == ["GET /boom", "GET /missing", "GET", "GET"]
    boom = spans[0]
    assert boom.status == "error"
    assert boom.attributes["http.response.status_code"] == 500
    (event,) = boom.events
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "RuntimeError"
    assert event["attributes"]["exception.message"] == "handler failed"
    for s in spans[1:]:
        assert s.status == "unset"
        assert s.attributes["http.response.status_code"] == 404
        assert not s.events
    # Never the raw path.
    assert "http.route" not in spans[2].attributes


def test_the_exception_still_reaches_the_server(app, exporter):
    with TestClient(app) as client:
        with pytest.raises(RuntimeError, match="handler failed"):
            client.get("/boom")
    (s,) = server_spans(exporter)
    assert s.status == "error"


def test_streaming_responses_are_timed_whole(app, exporter):
    status, body = get(app, "/stream")
    assert status == 200 and body.count(b"chunk") == 3
    (s,) = server_spans(exporter)
    assert s.name == "GET /stream"
    assert s.duration_ns >= 140_000_000


def test_incoming_traceparent_is_continued(app, exporter):
    get(app, "/users/1", headers={"traceparent": TP, "tracestate": "k=v"})
    (s,) = server_spans(exporter)
    assert f"{s.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert s.parent_span_id == 0x00F067AA0BA902B7
    assert s.remote_parent and s.trace_state == "k=v"


def test_patching_twice_is_harmless_and_unpatch_removes_it(app, exporter):
    starlette_hook.patch()
    get(app, "/users/1")
    assert len(server_spans(exporter)) == 1
    starlette_hook.unpatch()
    exporter.clear()
    # Neither an app built while patched, nor one built after.
    get(app, "/users/1")
    get(starlette_app(), "/users/1")
    get(fastapi_app(), "/users/1")
    assert server_spans(exporter) == []
    assert not hasattr(Starlette.build_middleware_stack, "__wrapped__")
    assert not hasattr(FastAPI.build_middleware_stack, "__wrapped__")
    assert "__init_subclass__" not in Starlette.__dict__
    starlette_hook.patch()
    get(app, "/users/1")
    assert len(server_spans(exporter)) == 1


def test_a_generic_middleware_around_the_app_makes_one_well_named_span(app, exporter):
    outer = PulsetraceASGIMiddleware(app)
    assert get(outer, "/api/v2/items/7")[0] == 200
    assert get(outer, "/boom")[0] == 500
    spans = server_spans(exporter)
    assert [s.name for s in spans] == ["GET /api/{version}/items/{item_id}", "GET /boom"]
    assert spans[1].events[0]["attributes"]["exception.message"] == "handler failed"


def test_subclasses_defined_after_patch_are_instrumented(patched, exporter):
    class Custom(Starlette):
        # Overrides without calling Starlette's method, as FastAPI does.
        def build_middleware_stack(self):
            return ServerErrorMiddleware(self.router)

    async def hello(request):
        return PlainTextResponse("hi")

    class Inheriting(Custom):
        # Calls Starlette's (wrapped) method: still one layer of pulsetrace.
        def build_middleware_stack(self):
            return Starlette.build_middleware_stack(self)

    for cls in (Custom, Inheriting):
        app = cls(routes=[Route("/hello/{who}", hello)])
        assert get(app, "/hello/you")[0] == 200
        assert isinstance(app.middleware_stack, PulsetraceASGIMiddleware)
        assert isinstance(app.middleware_stack.app, ServerErrorMiddleware)
    assert [s.name for s in server_spans(exporter)] == ["GET /hello/{who}"] * 2
    starlette_hook.unpatch()
    assert not hasattr(Custom.build_middleware_stack, "__wrapped__")
    assert not hasattr(Inheriting.build_middleware_stack, "__wrapped__")


def test_lifespan_is_not_a_request(patched, exporter):
    events = []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        events.append("startup")
        yield
        events.append("shutdown")

    with TestClient(Starlette(lifespan=lifespan)):
        pass
    assert events == ["startup", "shutdown"]
    assert server_spans(exporter) == []


def test_pulsetrace_failures_never_change_the_response(app, exporter, monkeypatch):
    paths = ("/users/7", "/boom", "/stream", "/api/v1/items/3", "/no/such/route")
    baseline = [get(app, p) for p in paths]

    def broken(*a, **k):
        raise RuntimeError("pulsetrace bug")

    monkeypatch.setattr(starlette_hook, "_find", broken)
    monkeypatch.setattr(starlette_hook, "_path", broken)
    _diag.reset()
    assert [get(app, p) for p in paths] == baseline
    # Every routed path (the unmatched one looks nothing up).
    assert _diag.internal_errors() == {"asgi.route": len(paths) - 1}
    monkeypatch.setattr("pulsetrace.contrib.asgi.http_server_span", broken)
    _diag.reset()
    assert [get(app, p) for p in paths] == baseline
    assert _diag.internal_errors() == {"asgi.start": len(paths)}


def test_tracing_off_means_no_spans(app, exporter):
    fresh(enabled=False)
    assert get(app, "/users/1")[0] == 200
    assert server_spans(exporter) == []


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_the_app_is_freed_when_dropped(patched, exporter, kind):
    app = BUILDERS[kind]()
    assert get(app, "/users/1")[0] == 200
    assert app.middleware_stack is not None
    ref = weakref.ref(app)
    del app
    gc.collect()
    assert ref() is None


# A real server: uvicorn under pulsetrace-run, instrumented from the
# environment alone.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def uvicorn_server():
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    bindir = os.path.dirname(sys.executable)
    port = _free_port()
    env = dict(os.environ, PULSETRACE_SAMPLE_RATE="1", OTEL_SERVICE_NAME="uvicorn-test")
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)
    command = [
        os.path.join(bindir, "pulsetrace-run"),
        "uvicorn",
        "asgi_app_for_uvicorn:app",
        "--app-dir",
        HERE,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=HERE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"uvicorn exited: {proc.stdout.read().decode(errors='replace')}")
            try:
                httpx.get(base + "/_spans", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()


def test_a_real_uvicorn_under_pulsetrace_run(uvicorn_server):
    import httpx

    def get(path, **kw):
        # A connection each: uvicorn closes one whose request raised.
        return httpx.get(uvicorn_server + path, timeout=10, **kw)

    assert get("/users/5", headers={"traceparent": TP}).status_code == 200
    assert get("/boom").status_code == 500
    assert get("/stream").text.count("chunk") == 3
    assert get("/legacy/items/9").text == "9"
    assert get("/no/such/route").status_code == 404
    spans = get("/_spans").json()["spans"]
    server = {s["name"]: s for s in spans if s["kind"] == "server" and s["name"] != "GET /_spans"}
    assert set(server) == {
        "GET /users/{user_id}",
        "GET /boom",
        "GET /stream",
        "GET /legacy/items/{item_id}",
        "GET",
    }
    user = server["GET /users/{user_id}"]
    assert user["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert user["parent_span_id"] == "00f067aa0ba902b7"
    (child,) = [s for s in spans if s["name"] == "load user"]
    assert child["parent_span_id"] == user["span_id"]
    assert server["GET /boom"]["status"] == "error"
    assert server["GET /boom"]["status_code"] == 500
    assert server["GET"]["status_code"] == 404 and server["GET"]["status"] == "unset"
    assert server["GET /stream"]["duration_ns"] >= 140_000_000
    assert server["GET /legacy/items/{item_id}"]["route"] == "/legacy/items/{item_id}"
