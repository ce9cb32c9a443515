"""pulsetrace's own work is never traced by its own hooks.

While :data:`SUPPRESSED` is true in a context (``with suppressed():``), the
helpers that start the spans of instrumented libraries (outbound HTTP in
``contrib._client``, SQL in ``contrib.dbapi``, Redis in ``contrib.redis``)
pass the call through untraced. Health checks, deliveries and the
monitoring endpoints run under it: a check that opens a PostgreSQL
connection does not show up as the application's query, and a failing
alert channel cannot feed its own alert.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

SUPPRESSED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pulsetrace_suppressed", default=False
)
#: ``SUPPRESSED.get``, bound once: ``SUPPRESSED.get()`` binds the method anew
#: on each call (CPython 3.11: about 500 instructions more, callgrind), which
#: a hook checking it on every call can spare.
is_suppressed = SUPPRESSED.get


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """Calls made inside are not traced by pulsetrace's hooks."""
    token = SUPPRESSED.set(True)
    try:
        yield
    finally:
        SUPPRESSED.reset(token)
