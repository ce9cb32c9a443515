"""Flask: every request a SERVER span named after its route.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_FLASK_ENABLED=false``). The span is named ``GET /users/<int:id>``
from the matched URL rule (never the raw path); a request that matches no
rule is named after its method alone. Errors are recorded as Flask handles
them: a 500 from an error handler or an unhandled exception is an error, a
4xx is not. pulsetrace keeps no reference to the application, so it is freed
when the application drops it.

The hook is a ``wrapt`` wrapper of ``Flask.wsgi_app``. A class-level wrapper
is bound anew on every request, which costs more than the span itself, so
the first request an application serves through it installs a native bound
method (``pulsetrace._native.TracedWsgiApp``) as ``app.wsgi_app``, where Flask
documents WSGI middleware goes: later requests run Flask's ``wsgi_app``
inside the span with no Python frame of pulsetrace's in between. It is not
installed when the application (or a subclass's own ``wsgi_app``) already
put something there; ``unpatch()`` removes it.

Excluded URLs: ``OTEL_PYTHON_FLASK_EXCLUDED_URLS``, when set, replaces
``OTEL_PYTHON_EXCLUDED_URLS`` (and the default) for Flask's requests;
``PULSETRACE_EXCLUDED_URLS`` holds for every framework and wins over both.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any

import wrapt

from pulsetrace import _diag, _runtime
from pulsetrace._native import RouteNamer, TracedWsgiApp, wsgi_call
from pulsetrace.contrib._patcher import Patcher, Target

SUPPORTED = ">=2.2"
#: Whose excluded URLs apply (``OTEL_PYTHON_FLASK_EXCLUDED_URLS``).
_INTEGRATION = "flask"

#: The matched URL rule of the current request, read natively from Flask's
#: context variable (``_cv_request.get().request.url_rule.rule``; the
#: ``flask.request`` proxy costs several times more), or None.
_route: Any = None
#: Applications given a TracedWsgiApp (weakly: they stay collectable).
_fast: weakref.WeakSet[Any] = weakref.WeakSet()


def _install_fast_path(app: Any) -> None:
    """Make ``app.wsgi_app`` a native traced bound method, if the class's
    ``wsgi_app`` is this hook's wrapper and nothing else is there yet."""
    try:
        attrs = getattr(app, "__dict__", None)
        if attrs is None or "wsgi_app" in attrs:
            return
        wrapper = inspect.getattr_static(type(app), "wsgi_app", None)
        if not isinstance(wrapper, wrapt.FunctionWrapper) or wrapper._self_wrapper is not _wsgi_app:
            return  # a subclass defines its own wsgi_app: keep the class path
        attrs["wsgi_app"] = TracedWsgiApp(
            _runtime.tracer(), wrapper.__wrapped__, app, _route, _INTEGRATION
        )
        _fast.add(app)
    except Exception as exc:
        _diag.internal_error("flask.fast_path", exc)


def _wsgi_app(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if len(args) != 2 or kwargs:
        return wrapped(*args, **kwargs)
    if instance is not None and not isinstance(instance, type):
        _install_fast_path(instance)
    # wsgi.traced_call's body, inlined.
    return wsgi_call(_runtime.tracer(), wrapped, args[0], args[1], _route, _INTEGRATION)


def _record_exception(sender: Any, exception: BaseException, **_: Any) -> None:
    """Flask turned an exception into a 500: keep it on the request span."""
    try:
        span = _runtime.CURRENT.get()
        if span is not None and span.kind == "server":
            span.record_exception(exception, escaped=False)
            span.set_status("error", f"{type(exception).__qualname__}: {exception}")
    except Exception as exc:
        _diag.internal_error("flask.exception", exc)


def _connect() -> None:
    global _route
    import flask
    from flask.globals import _cv_request

    _route = RouteNamer(_cv_request, ["request", "url_rule", "rule"])
    flask.got_request_exception.connect(_record_exception, weak=False)


def _disconnect() -> None:
    import flask

    for app in list(_fast):
        if isinstance(vars(app).get("wsgi_app"), TracedWsgiApp):
            del vars(app)["wsgi_app"]
    _fast.clear()
    flask.got_request_exception.disconnect(_record_exception)


# Every Flask app.
_PATCHER = Patcher(
    "flask",
    SUPPORTED,
    (Target("flask", "Flask.wsgi_app", _wsgi_app),),
    on_patch=_connect,
    on_unpatch=_disconnect,
)
patch = _PATCHER.patch
unpatch = _PATCHER.unpatch
