"""Starlette and FastAPI: every HTTP request a SERVER span named after its route.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_STARLETTE_ENABLED=false``; it covers FastAPI, which is built on
Starlette). The span is named ``GET /users/{user_id}`` from the matched route
template (never the raw path), mount prefixes included
(``/api/{version}/items/{item_id}``; a mounted app without routes of its own,
such as ``StaticFiles``, gives ``/static/{path:path}``); a request that
matches no route is named after its method alone. The span is the outermost
layer of the application, so it also sees the 500 that Starlette sends for an
unhandled exception, and the exception itself (recorded on the span); a 4xx
is not an error. Streaming responses are timed until their last chunk has
been sent. Excluded URLs: ``OTEL_PYTHON_FASTAPI_EXCLUDED_URLS`` (a FastAPI
application) or ``OTEL_PYTHON_STARLETTE_EXCLUDED_URLS`` (any other), when
set, replaces ``OTEL_PYTHON_EXCLUDED_URLS`` and the default;
``PULSETRACE_EXCLUDED_URLS`` holds for every framework and wins over both.

The application object is not referenced by pulsetrace, so it is freed when
the application drops it. An application whose middleware stack was built
before ``patch()`` (one that has already served a request) is not traced.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Optional

import wrapt

from pulsetrace import _diag
from pulsetrace.contrib import asgi
from pulsetrace.contrib._patcher import Patcher, Target

if TYPE_CHECKING:
    from starlette.applications import Starlette

SUPPORTED = ">=0.37"

_METHOD = "build_middleware_stack"
_active = False


class _Middleware(asgi.PulsetraceASGIMiddleware):
    """The middleware added to every application's stack; it steps aside
    once ``unpatch()`` has run, for applications built before that.
    ``integration``: ``fastapi`` or ``starlette``, whose excluded URLs apply."""

    def __init__(self, app: asgi.ASGIApp, route_of: asgi.RouteOf, integration: str) -> None:
        super().__init__(app, route_of)
        self.integration = integration

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if _active:
            await asgi.traced_call(self.app, scope, receive, send, self.route_of, self.integration)
        else:
            await self.app(scope, receive, send)


def _integration(app: Any) -> str:
    """``fastapi`` for a FastAPI application, else ``starlette``."""
    fastapi = sys.modules.get("fastapi.applications")
    cls = getattr(fastapi, "FastAPI", None)
    return "fastapi" if cls is not None and isinstance(app, cls) else "starlette"


def _path(route: Any) -> Optional[str]:
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


def _find(routes: Any, scope: dict[str, Any]) -> Optional[str]:
    """The template of the route ``scope`` matches, the way Starlette's router
    picks it (the first full match, else the first partial one)."""
    from starlette.routing import Match

    partial = None
    for route in routes:
        try:
            match, child = route.matches(scope)
        except Exception:
            continue
        if match is Match.FULL:
            return _template(route, scope, child)
        if match is Match.PARTIAL and partial is None:
            partial = (route, child)
    return _template(partial[0], scope, partial[1]) if partial else None


def _template(route: Any, scope: dict[str, Any], child: Any) -> Optional[str]:
    from starlette.routing import Host, Mount

    if isinstance(route, (Mount, Host)):
        routes = route.routes
        prefix = route.path if isinstance(route, Mount) else ""
        if not routes:  # an opaque ASGI app owns everything below the mount
            return f"{prefix}/{{path:path}}" if prefix else None
        inner = _find(routes, {**scope, **child})
        return prefix + inner if inner else None
    return _path(route)


def route_of(scope: asgi.Scope) -> Optional[str]:
    """The route template of a routed request, mount prefixes included."""
    route = scope.get("route")
    if route is not None and "app_root_path" not in scope:
        # No Mount on the way (a Mount records the application's root path):
        # the route the router put in the scope has the whole template.
        return _path(route)
    if route is None and "endpoint" not in scope:
        return None  # nothing matched (an older router that matched sets only "endpoint")
    # Route again from the top, as the request entered: the scope now holds
    # the innermost route, relative to its mount.
    routes = getattr(scope.get("router"), "routes", None)
    if not routes:
        return None
    probe = dict(scope)
    probe["root_path"] = scope.get("app_root_path", scope.get("root_path", ""))
    probe["path_params"] = {}
    return _find(routes, probe)


def _build(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    stack = wrapped(*args, **kwargs)
    if isinstance(stack, asgi.PulsetraceASGIMiddleware):
        return stack
    try:
        return _Middleware(stack, route_of, _integration(instance))
    except Exception as exc:
        _diag.internal_error("starlette.build", exc)
        return stack


def _ours(cls: type) -> bool:
    attr = cls.__dict__.get(_METHOD)
    return isinstance(attr, wrapt.FunctionWrapper) and attr._self_wrapper is _build


def _wrap(cls: type) -> None:
    """Wrap ``cls.build_middleware_stack`` if ``cls`` defines its own (FastAPI
    does, without calling Starlette's)."""
    if _METHOD in cls.__dict__ and not _ours(cls):
        wrapt.wrap_function_wrapper(cls, _METHOD, _build)


def _family(cls: type) -> list[type]:
    out, todo = [], [cls]
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.__subclasses__())
    return out


def _on_subclass(cls: type[Starlette], /, **kwargs: Any) -> None:
    from starlette.applications import Starlette

    super(Starlette, cls).__init_subclass__(**kwargs)
    try:
        _wrap(cls)
    except Exception as exc:
        _diag.internal_error("starlette.subclass", exc)


def _legacy_otel(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """FastAPI skips its own OpenTelemetry middleware when it finds
    OpenTelemetry's ASGI middleware in the stack; it must do so for
    pulsetrace's too, or (with pulsetrace as the OpenTelemetry provider)
    every request would get two SERVER spans."""
    stack = args[0] if args else kwargs.get("stack")
    if _active and isinstance(stack, asgi.PulsetraceASGIMiddleware):
        return True
    return wrapped(*args, **kwargs)


def _patch_fastapi(module: Any) -> None:
    try:
        fn = getattr(module, "_legacy_otel", None)
        if fn is not None and not isinstance(fn, wrapt.FunctionWrapper):
            wrapt.wrap_function_wrapper(module, "_legacy_otel", _legacy_otel)
    except Exception as exc:
        _diag.internal_error("starlette.fastapi", exc)


def _patch_family() -> None:
    """Subclasses with a ``build_middleware_stack`` of their own, now and later."""
    global _active
    from starlette.applications import Starlette

    for cls in _family(Starlette):
        _wrap(cls)
    if "__init_subclass__" not in Starlette.__dict__:
        # Subclasses defined later: FastAPI's module imports Starlette's, which
        # triggers this patch, before it defines FastAPI.
        # Patching a method of a (typed) class.
        Starlette.__init_subclass__ = classmethod(_on_subclass)  # type: ignore[assignment]
    _active = True
    # FastAPI's own telemetry (recent versions) must defer to pulsetrace's span.
    wrapt.register_post_import_hook(_patch_fastapi, "fastapi.applications")


def _unpatch_family() -> None:
    global _active
    from starlette.applications import Starlette

    _active = False
    hook = Starlette.__dict__.get("__init_subclass__")
    if getattr(hook, "__func__", None) is _on_subclass:
        delattr(Starlette, "__init_subclass__")
    for cls in _family(Starlette)[1:]:  # Starlette's own: the patcher's
        if _ours(cls):
            setattr(cls, _METHOD, cls.__dict__[_METHOD].__wrapped__)


# Every Starlette (and FastAPI) app.
_PATCHER = Patcher(
    "starlette",
    SUPPORTED,
    (Target("starlette.applications", f"Starlette.{_METHOD}", _build),),
    on_patch=_patch_family,
    on_unpatch=_unpatch_family,
)
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
