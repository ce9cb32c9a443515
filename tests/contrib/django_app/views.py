"""Views for the integration tests."""

from __future__ import annotations

import asyncio
import io
import time

from django.http import (
    FileResponse,
    Http404,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)

import pulsetrace

#: Pause between streamed chunks (two pauses per body).
CHUNK_PAUSE_S = 0.06


class ViewError(ValueError):
    pass


def user(request, pk):
    with pulsetrace.start_span("load user", kind="internal"):
        pass
    return JsonResponse({"id": pk, "q": request.GET.get("page")})


async def async_user(request, pk):
    with pulsetrace.start_span("load user", kind="internal"):
        await asyncio.sleep(0)
    return JsonResponse({"id": pk})


def probe(request):
    """One SQL statement (a client span, unless the request is excluded)."""
    import sqlite3

    sqlite3.connect(":memory:").execute("SELECT 1").fetchall()
    return HttpResponse(b"ok", content_type="text/plain")


def item(request, name):
    return JsonResponse({"name": name})


def legacy(request, pk):
    return JsonResponse({"id": int(pk)})


def boom(request):
    raise ViewError("view failed")


def missing(request, pk):
    raise Http404("no such thing")


def _chunks():
    yield b"a"
    time.sleep(CHUNK_PAUSE_S)
    yield b"b"
    time.sleep(CHUNK_PAUSE_S)
    yield b"c"


async def _achunks():
    yield b"a"
    await asyncio.sleep(CHUNK_PAUSE_S)
    yield b"b"
    await asyncio.sleep(CHUNK_PAUSE_S)
    yield b"c"


def stream(request):
    return StreamingHttpResponse(_chunks(), content_type="text/plain")


def astream(request):
    return StreamingHttpResponse(_achunks(), content_type="text/plain")


def file(request):
    return FileResponse(io.BytesIO(b"x" * 10_000), content_type="application/octet-stream")
