"""sqlite3.connect under the hook: the connection an application gets behaves
as sqlite3's own (attributes, audit events, arguments), whichever way the
hook builds it, and a ``connect`` that something else wrapped first is
still called."""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import pulsetrace
from pulsetrace.contrib import sqlite3 as sqlite3_hook

from conftest import finished

SQL = "SELECT 1"


@pytest.fixture
def hooked(exporter: pulsetrace.InMemorySpanExporter) -> Iterator[pulsetrace.InMemorySpanExporter]:
    sqlite3_hook.patch()
    yield exporter
    sqlite3_hook.unpatch()


def statements(exporter: pulsetrace.InMemorySpanExporter) -> list[str]:
    return [s.attributes["db.query.text"] for s in finished(exporter) if s.kind == "client"]


def test_a_traced_connection_takes_no_attributes_sqlite3s_own_would_not(hooked, tmp_path):
    path = str(tmp_path / "slots.db")
    for _ in range(2):  # the first connect to a path, then a path seen before
        with pytest.raises(AttributeError):
            sqlite3.connect(":memory:").anything = 1  # what sqlite3 itself does
        conn = sqlite3.connect(path)
        with pytest.raises(AttributeError):
            conn.anything = 1
        conn.row_factory = sqlite3.Row  # sqlite3's own settable attributes still are
        assert conn.execute(SQL).fetchone()[0] == 1
        conn.close()
    assert statements(hooked) == ["SELECT ?", "SELECT ?"]


def test_connect_raises_the_audit_events_of_sqlite3s_own(hooked, tmp_path):
    path = str(tmp_path / "audit.db")
    seen: list[tuple[str, Any]] = []
    recording = threading.local()

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event.startswith("sqlite3.") and getattr(recording, "on", False):
            seen.append((event, args[0] if event == "sqlite3.connect" else None))

    sys.addaudithook(hook)  # cannot be removed: it records only while asked to

    def events(connect: Any) -> list[tuple[str, Any]]:
        seen.clear()
        recording.on = True
        try:
            connect(path).close()
            connect(path, check_same_thread=False).close()
        finally:
            recording.on = False
        return list(seen)

    traced = events(sqlite3.connect)
    sqlite3_hook.unpatch()
    try:
        bare = events(sqlite3.connect)
    finally:
        sqlite3_hook.patch()
    assert traced == bare
    assert ("sqlite3.connect", path) in traced


def test_connect_arguments_reach_the_traced_connection(hooked, tmp_path):
    path = str(tmp_path / "args.db")
    sqlite3.connect(path).close()  # the path is known from now on
    shared = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    assert isinstance(shared, sqlite3_hook.TracedConnection)
    assert shared.isolation_level is None
    done = []
    worker = threading.Thread(target=lambda: done.append(shared.execute(SQL).fetchone()))
    worker.start()
    worker.join()
    assert done == [(1,)]  # check_same_thread=False was honoured
    named = sqlite3.connect(database=path, timeout=1.0)
    assert isinstance(named, sqlite3_hook.TracedConnection)
    named.execute(SQL)
    for c in (shared, named):
        c.close()
    assert statements(hooked) == ["SELECT ?", "SELECT ?"]


def test_a_connect_wrapped_before_pulsetrace_is_still_called(exporter, monkeypatch, tmp_path):
    native = sqlite3.connect
    calls = []

    def app_connect(*args: Any, **kwargs: Any) -> Any:  # another library's wrapper
        calls.append(args)
        return native(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", app_connect)
    sqlite3_hook.patch()
    try:
        path = str(tmp_path / "wrapped.db")
        for _ in range(3):  # the first connect to a path, then a path seen before
            conn = sqlite3.connect(path)
            assert isinstance(conn, sqlite3_hook.TracedConnection)
            conn.execute(SQL)
            conn.close()
    finally:
        sqlite3_hook.unpatch()
    assert len(calls) == 3
    assert statements(exporter) == ["SELECT ?"] * 3


def test_a_connection_made_from_a_traced_connections_class_runs_untraced(hooked, tmp_path):
    path = str(tmp_path / "clone.db")
    first = sqlite3.connect(path)
    clone = type(first)(path)  # what code that copies a connection's class does
    assert clone.execute(SQL).fetchone() == (1,)
    assert clone.cursor().execute(SQL).fetchone() == (1,)
    clone.executescript("CREATE TABLE t (a);")
    clone.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    first.execute(SQL)
    for c in (first, clone):
        c.close()
    assert statements(hooked) == ["SELECT ?"]
