"""Flask: every request a SERVER span named after its route.

Switched on by ``import pulsetrace.auto`` or ``pulsetrace-run`` (toggle:
``PULSETRACE_FLASK_ENABLED=false``). The span is named ``GET /users/<int:id>``
from the matched URL rule (never the raw path); a request that matches no
rule is named after its method alone. Errors are recorded as Flask handles
them: a 500 from an error handler or an unhandled exception is an error, a
4xx is not. The application object is not referenced by pulsetrace, so it is
freed when the application drops it.
"""

from __future__ import annotations

from typing import Any, Optional

import wrapt

from pulsetrace import _diag, _runtime
from pulsetrace._native import wsgi_call

SUPPORTED = ">=2.2"

_MARK = "__pulsetrace_patched__"
_cv_request: Any = None


def _route() -> Optional[str]:
    """The matched URL rule of the current request (read straight from
    Flask's context variable: the ``flask.request`` proxy costs several
    times more), or None."""
    ctx = _cv_request.get(None)
    if ctx is None:
        return None
    rule = ctx.request.url_rule
    return None if rule is None else rule.rule


def _wsgi_app(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if len(args) != 2 or kwargs:
        return wrapped(*args, **kwargs)
    # wsgi.traced_call's body, inlined: this runs on every request.
    return wsgi_call(_runtime.tracer(), wrapped, args[0], args[1], _route)


def _record_exception(sender: Any, exception: BaseException, **_: Any) -> None:
    """Flask turned an exception into a 500: keep it on the request span."""
    try:
        span = _runtime.CURRENT.get()
        if span is not None and span.kind == "server":
            span.record_exception(exception, escaped=False)
            span.set_status("error", f"{type(exception).__qualname__}: {exception}")
    except Exception as exc:
        _diag.internal_error("flask.exception", exc)


def patch() -> None:
    """Instrument every Flask app (idempotent)."""
    global _cv_request
    import flask
    from flask.globals import _cv_request

    if getattr(flask.Flask, _MARK, False):
        return
    wrapt.wrap_function_wrapper(flask.Flask, "wsgi_app", _wsgi_app)
    flask.got_request_exception.connect(_record_exception, weak=False)
    setattr(flask.Flask, _MARK, True)


def unpatch() -> None:
    import flask

    if not getattr(flask.Flask, _MARK, False):
        return
    wrapper = flask.Flask.__dict__["wsgi_app"]
    flask.Flask.wsgi_app = wrapper.__wrapped__
    flask.got_request_exception.disconnect(_record_exception)
    delattr(flask.Flask, _MARK)
