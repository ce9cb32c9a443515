"""A FastAPI app (with a mounted Starlette app) served by a real uvicorn
under ``pulsetrace-run`` in the Starlette integration tests.

``/_spans`` flushes pulsetrace and returns what this process exported.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import pulsetrace

exporter = pulsetrace.InMemorySpanExporter()
pulsetrace.add_exporter(exporter)

app = FastAPI()


@app.get("/users/{user_id}")
async def user(user_id: int) -> dict:
    with pulsetrace.start_span("load user", kind="internal"):
        pass
    return {"id": user_id, "pid": os.getpid()}


@app.get("/boom")
async def boom() -> dict:
    raise RuntimeError("handler failed")


@app.get("/stream")
async def stream() -> StreamingResponse:
    async def body():
        for i in range(3):
            await asyncio.sleep(0.05)
            yield f"chunk {i}\n"

    return StreamingResponse(body(), media_type="text/plain")


async def item(request):
    return PlainTextResponse(request.path_params["item_id"])


app.mount("/legacy", Starlette(routes=[Route("/items/{item_id}", item)]))


@app.get("/_spans")
def spans() -> dict:
    pulsetrace.flush()
    return {
        "pid": os.getpid(),
        "spans": [
            {
                "name": s.name,
                "kind": s.kind,
                "status": s.status,
                "duration_ns": s.duration_ns,
                "trace_id": f"{s.trace_id:032x}",
                "span_id": f"{s.span_id:016x}",
                "parent_span_id": None if s.parent_span_id is None else f"{s.parent_span_id:016x}",
                "route": s.attributes.get("http.route"),
                "status_code": s.attributes.get("http.response.status_code"),
            }
            for s in exporter.spans()
        ],
    }
