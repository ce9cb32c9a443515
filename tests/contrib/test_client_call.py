"""The native client call (``_native.ClientCall``) the sqlite3 hook runs its
statements through: one span per call, the row count, the method's own
exception passed through unchanged, pulsetrace's errors kept from the caller."""

from __future__ import annotations

from typing import Any

import pytest

from pulsetrace import _diag, _native, _runtime

from conftest import finished


class Target:
    def __init__(self, rowcount: Any) -> None:
        self.rowcount = rowcount


class StatementError(Exception):
    pass


def make(method: Any, on_error: Any = None) -> Any:
    seen: list[tuple[Any, BaseException]] = []

    def failed(span: Any, exc: BaseException) -> None:
        seen.append((span, exc))
        span.set_status("error", str(exc))
        span.end()

    call = _native.ClientCall(_runtime.TRACER, method, "rows", on_error or failed)
    return call.call, seen


@pytest.mark.parametrize(
    ("rowcount", "expected"), [(5, {"rows": 5}), (0, {"rows": 0}), (-1, {}), ("5", {}), (None, {})]
)
def test_the_call_is_a_client_span_with_a_non_negative_int_row_count(exporter, rowcount, expected):
    call, _ = make(lambda t, s, p: ("ran", s, p))
    pairs = (("db.system.name", "sqlite"),)
    assert call(Target(rowcount), "SELECT 1", (2,), "SELECT t", pairs) == ("ran", "SELECT 1", (2,))
    (span,) = finished(exporter)
    assert (span.name, span.kind, span.status) == ("SELECT t", "client", "unset")
    assert span.attributes == {"db.system.name": "sqlite", **expected}


def test_the_methods_exception_reaches_the_caller_unchanged_and_the_span_records_it(exporter):
    raised = StatementError("no such table")

    def method(t: Any, s: Any, p: Any) -> Any:
        raise raised

    call, seen = make(method)
    with pytest.raises(StatementError) as info:
        call(Target(-1), "SELECT x", (), "SELECT x", ())
    assert info.value is raised
    assert [exc for _, exc in seen] == [raised]
    (span,) = finished(exporter)
    assert (span.name, span.status) == ("SELECT x", "error")


def test_an_error_handler_that_fails_is_reported_and_the_methods_exception_still_passes(exporter):
    def method(t: Any, s: Any, p: Any) -> Any:
        raise StatementError("boom")

    def broken(span: Any, exc: BaseException) -> None:
        raise RuntimeError("handler bug")

    call, _ = make(method, on_error=broken)
    with pytest.raises(StatementError):
        call(Target(-1), "SELECT x", (), "SELECT x", ())
    assert _diag.internal_errors() == {"client.error": 1}


def test_attributes_are_converted_as_start_span_converts_them(exporter):
    runs: list[Any] = []
    call, _ = make(lambda t, s, p: runs.append(s) or "ok")
    value = object()
    assert call(Target(1), "SELECT 1", (), "SELECT", {"k": value, "n": 2}) == "ok"
    assert runs == ["SELECT 1"]
    (span,) = finished(exporter)
    assert span.attributes == {"k": str(value), "n": 2, "rows": 1}


@pytest.mark.parametrize(
    ("rowcount", "expected"),
    [(3, 3), (0, 0), (-1, None), (True, None), (2.0, None), ("3", None), (2**70, None)],
)
def test_the_row_count_rule_every_sql_hook_shares(rowcount, expected):
    # dbapi.finish (psycopg, psycopg2, PyMySQL, sqlite3's executemany) and
    # ClientCall (sqlite3's execute) both read it here.
    assert _native.sql_row_count(Target(rowcount)) == expected
    assert _native.sql_row_count(None) is None
