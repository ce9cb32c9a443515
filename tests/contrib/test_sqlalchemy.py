"""SQLAlchemy Core and ORM on SQLite and PostgreSQL (psycopg 3), with the
DB-API driver patched too: exactly one CLIENT span per statement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pymysql
import pytest
import sqlalchemy as sa
import sqlalchemy.exc
import sqlalchemy.orm
from sqlalchemy import event

import pulsetrace
from pulsetrace import _diag
from pulsetrace.contrib import INTEGRATIONS, _sql, dbapi
from pulsetrace.contrib import psycopg as psycopg_hook
from pulsetrace.contrib import psycopg2 as psycopg2_hook
from pulsetrace.contrib import pymysql as pymysql_hook
from pulsetrace.contrib import sqlalchemy as sqlalchemy_hook
from pulsetrace.contrib import sqlite3 as sqlite3_hook

from conftest import finished

SECRET = "bob@x.com"


class Base(sa.orm.DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "sa_users"
    id: sa.orm.Mapped[int] = sa.orm.mapped_column(primary_key=True)
    email: sa.orm.Mapped[str] = sa.orm.mapped_column(sa.String(100), unique=True)


USERS = User.__table__


class Statements:
    """Counts what SQLAlchemy sends to the driver (a listener of the test's own)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.sent: list[str] = []
        event.listen(engine, "before_cursor_execute", self.record)

    def record(self, conn, cursor, statement, *args) -> None:
        self.sent.append(statement)


HOOKS = {
    "sqlite": sqlite3_hook,
    "psycopg": psycopg_hook,
    "psycopg2": psycopg2_hook,
    "pymysql": pymysql_hook,
}
#: backend -> (placeholder of the Core select, driver error class, its code)
EXPECTED = {
    "sqlite": ("?", "IntegrityError", "2067"),
    "psycopg": ("%(email_1)s::VARCHAR", "UniqueViolation", "23505"),
    "psycopg2": ("%(email_1)s", "UniqueViolation", "23505"),
    "pymysql": ("%(email_1)s", "IntegrityError", "1062"),
}


def url_of(backend: str, request, tmp_path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'orm.sqlite'}"
    if backend == "pymysql":
        my = request.getfixturevalue("mysql_server")
        with pymysql.connect(host=my.host, port=my.port, user="root") as c:
            c.cursor().execute("CREATE DATABASE IF NOT EXISTS pulsetrace_test")
        return f"mysql+pymysql://root@{my.host}:{my.port}/pulsetrace_test"
    pg = request.getfixturevalue("postgres_server")
    return f"postgresql+{backend}://postgres@{pg.host}:{pg.port}/postgres"


def expected_base(backend: str, engine: sa.Engine) -> dict:
    if backend == "sqlite":
        return {"db.system.name": "sqlite", "db.namespace": "orm.sqlite"}
    url = engine.url
    return {
        "db.system.name": "mysql" if backend == "pymysql" else "postgresql",
        "db.namespace": url.database,
        "server.address": url.host,
        "server.port": url.port,
    }


@pytest.fixture(params=list(HOOKS))
def setup(request, tmp_path, exporter):
    """An engine whose first connect (dialect checks, untraced by SQLAlchemy) is
    done, an empty table, both hooks patched, nothing exported yet."""
    backend = request.param
    driver_hook = HOOKS[backend]
    driver_hook.patch()  # first: the pool's connections are the driver's proxies
    sqlalchemy_hook.patch()
    engine = sa.create_engine(url_of(backend, request, tmp_path))
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, dbapi.TracedConnection) or hasattr(raw, "_pulsetrace_db")
    finished(exporter)
    exporter.clear()
    yield backend, engine, Statements(engine)
    sqlalchemy_hook.unpatch()
    driver_hook.unpatch()
    engine.dispose()


def client_spans(exporter) -> list:
    spans = [s for s in finished(exporter) if s.kind == "client"]
    return sorted(spans, key=lambda s: s.start_time_unix_nano)


def test_core_and_orm_one_span_per_statement(setup, exporter):
    backend, engine, statements = setup
    with pulsetrace.start_span("request") as root:
        with engine.begin() as conn:
            conn.execute(sa.insert(USERS), [{"email": SECRET}, {"email": "a@x"}])
            rows = conn.execute(sa.select(USERS.c.id).where(USERS.c.email == SECRET)).all()
            assert len(rows) == 1
        with sa.orm.Session(engine) as session:
            session.add(User(email="orm@x"))
            session.commit()
            found = session.scalars(sa.select(User).where(User.email.in_(["orm@x", "z"])))
            assert [u.email for u in found] == ["orm@x"]
    spans = client_spans(exporter)
    assert statements.sent  # the test's own listener saw every statement
    assert len(spans) == len(statements.sent)  # not twice (driver) nor zero
    assert all(s.parent_span_id == root.span_id for s in spans)
    names = [s.name for s in spans]
    assert names.count("SELECT sa_users") == 2
    assert "INSERT sa_users" in names
    base = expected_base(backend, engine)
    select = next(s for s in spans if "WHERE sa_users.email =" in s.attributes["db.query.text"])
    p = EXPECTED[backend][0]
    assert select.attributes == {
        **base,
        "db.query.text": f"SELECT sa_users.id FROM sa_users WHERE sa_users.email = {p}",
        "db.operation.name": "SELECT",
        "db.collection.name": "sa_users",
        **({} if backend == "sqlite" else {"db.response.rows_affected": 1}),
    }
    for s in spans:
        assert s.status == "unset"
        assert SECRET not in repr(s.attributes)


def test_literals_inlined_by_text_are_obfuscated(setup, exporter):
    _, engine, _ = setup
    with engine.connect() as conn:
        conn.execute(sa.text(f"SELECT id FROM sa_users WHERE email = '{SECRET}' AND id > 10"))
    (span,) = client_spans(exporter)
    assert span.attributes["db.query.text"] == "SELECT id FROM sa_users WHERE email = ? AND id > ?"


def test_orm_error_is_recorded_once_with_the_driver_error(setup, exporter):
    backend, engine, statements = setup
    with sa.orm.Session(engine) as session:
        session.add(User(id=1, email=SECRET))
        session.commit()
        session.add(User(id=2, email=SECRET))
        with pytest.raises(sa.exc.IntegrityError) as info:
            session.commit()
    spans = client_spans(exporter)
    assert len(spans) == len(statements.sent)
    (err,) = [s for s in spans if s.status == "error"]
    driver_error = type(info.value.orig).__name__
    assert driver_error == EXPECTED[backend][1]
    assert err.attributes["error.type"] == driver_error
    assert err.attributes["db.response.status_code"] == EXPECTED[backend][2]
    assert err.name == "INSERT sa_users"
    assert err.events[0]["name"] == "exception"
    assert SECRET not in repr(err.attributes)


def test_driver_alone_and_sqlalchemy_alone_each_trace_once(setup, exporter):
    _, engine, statements = setup
    query = sa.select(USERS.c.id)
    sqlalchemy_hook.unpatch()  # the driver's proxies take over
    with engine.connect() as conn:
        conn.execute(query).all()
    assert len(client_spans(exporter)) == len(statements.sent) == 1
    sqlalchemy_hook.patch()
    sqlalchemy_hook.patch()  # twice: still one span
    with engine.connect() as conn:
        conn.execute(query).all()
    assert len(client_spans(exporter)) == len(statements.sent) == 2
    sqlalchemy_hook.unpatch()
    for hook in HOOKS.values():
        hook.unpatch()
    engine.dispose()  # pooled connections are proxies, but quiet once unpatched
    with engine.connect() as conn:
        conn.execute(query).all()
    assert len(client_spans(exporter)) == 2
    sqlalchemy_hook.patch()  # the fixture unpatches


def test_failures_inside_pulsetrace_never_change_results(setup, exporter, monkeypatch):
    _, engine, _ = setup

    def boom(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(_sql, "attributes", boom)
    with engine.begin() as conn:
        conn.execute(sa.insert(USERS), {"email": SECRET})
        assert conn.execute(sa.select(USERS.c.email)).scalars().all() == [SECRET]
    assert client_spans(exporter) == []
    # Each statement: SQLAlchemy's span fails, then the driver's proxy tries its own.
    assert _diag.internal_errors()["dbapi.start"] == 4


def test_statement_hidden_from_handle_error_is_ended_by_the_next(setup, exporter):
    _, engine, statements = setup
    with engine.connect() as conn:
        hidden = conn.execution_options(skip_user_error_events=True)
        with pytest.raises(sa.exc.DBAPIError):
            hidden.exec_driver_sql("SELEC 1")
        conn.rollback()
        conn.exec_driver_sql("SELECT 2")
    spans = client_spans(exporter)
    assert [(s.name, s.status) for s in spans] == [("SELEC", "error"), ("SELECT", "unset")]
    assert spans[0].status_message == "no outcome reported by SQLAlchemy"
    assert len(statements.sent) == 2


def test_registered():
    (entry,) = [i for i in INTEGRATIONS if i.name == "sqlalchemy"]
    assert (entry.module, entry.hook) == ("sqlalchemy", sqlalchemy_hook.__name__)
    assert sqlalchemy_hook.SUPPORTED


LAZY_SCRIPT = r"""
import json, sys
import pulsetrace.auto
import pulsetrace
assert "sqlalchemy" not in sys.modules
pulsetrace.configure(sample_rate=1.0, adaptive_percentile=0.0)
exporter = pulsetrace.InMemorySpanExporter()
pulsetrace.add_exporter(exporter)
import sqlalchemy as sa  # first import: both SQLAlchemy and sqlite3 are patched

engine = sa.create_engine("sqlite://")
with engine.connect() as conn:  # the first connect's dialect checks: driver spans
    pulsetrace.flush(timeout=5)
    exporter.clear()
    conn.exec_driver_sql("SELECT 'secret' AS x").all()
pulsetrace.flush(timeout=5)
print(json.dumps([[s.name, s.kind, s.attributes["db.query.text"]] for s in exporter.spans()]))
"""


def test_importing_sqlalchemy_after_auto_gives_one_span_per_statement():
    env = {**os.environ, "PYTHONPATH": str(Path(pulsetrace.__file__).parents[1])}
    for name in ("SQLALCHEMY", "SQLITE3"):
        env.pop(f"PULSETRACE_{name}_ENABLED", None)
    out = subprocess.run(
        [sys.executable, "-c", LAZY_SCRIPT], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == [["SELECT", "client", "SELECT ? AS x"]]
