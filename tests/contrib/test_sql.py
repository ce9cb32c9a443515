"""SQL drivers (sqlite3, psycopg 3, psycopg2, PyMySQL) against real servers:
one CLIENT span per statement, obfuscated text, errors, proxies, safety."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

import psycopg
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import psycopg2.sql
import pymysql
import pymysql.cursors
import pytest

import pulsetrace
from pulsetrace import _diag
from pulsetrace.contrib import INTEGRATIONS, _sql, dbapi
from pulsetrace.contrib import psycopg as psycopg_hook
from pulsetrace.contrib import psycopg2 as psycopg2_hook
from pulsetrace.contrib import pymysql as pymysql_hook
from pulsetrace.contrib import sqlite3 as sqlite3_hook

from conftest import finished, fresh

MYSQL_DB = "pulsetrace_test"
SECRET = "bob@x.com"


@dataclass
class Driver:
    name: str
    hook: Any
    system: str
    p: str  # the driver's placeholder
    connect: Callable[[], Any]  # through the module attribute, as applications do
    namespace: str
    host: Optional[str]
    port: Optional[int]
    syntax_error: tuple[type, Optional[str]]
    unique_error: tuple[type, Optional[str]]
    select_rows: bool  # does rowcount report the rows of a SELECT

    @property
    def table(self) -> str:
        return f"users_{self.name}"

    def attrs(self, text: str, operation: str, collection: Optional[str], **extra: Any) -> dict:
        a = {"db.system.name": self.system, "db.query.text": text, "db.operation.name": operation}
        if collection:
            a["db.collection.name"] = collection
        a["db.namespace"] = self.namespace
        if self.host:
            a["server.address"] = self.host
            a["server.port"] = self.port
        a.update(extra)
        return a


def _sqlite_code(code: str) -> Optional[str]:
    return code if sys.version_info >= (3, 11) else None  # sqlite_errorcode is 3.11+


def make_driver(name: str, request: Any, tmp_path: Any) -> Driver:
    if name == "sqlite3":
        path = str(tmp_path / "app.db")
        return Driver(
            name,
            sqlite3_hook,
            "sqlite",
            "?",
            lambda: sqlite3.connect(path),
            "app.db",
            None,
            None,
            (sqlite3.OperationalError, _sqlite_code("1")),
            (sqlite3.IntegrityError, _sqlite_code("2067")),
            False,
        )
    if name in ("psycopg", "psycopg2"):
        pg = request.getfixturevalue("postgres_server")
        kw = {"host": pg.host, "port": pg.port, "user": pg.extra["user"]}
        dbname = pg.extra["dbname"]
        if name == "psycopg":
            return Driver(
                name,
                psycopg_hook,
                "postgresql",
                "%s",
                lambda: psycopg.connect(dbname=dbname, **kw),
                dbname,
                pg.host,
                pg.port,
                (psycopg.errors.SyntaxError, "42601"),
                (psycopg.errors.UniqueViolation, "23505"),
                True,
            )
        return Driver(
            name,
            psycopg2_hook,
            "postgresql",
            "%s",
            lambda: psycopg2.connect(dbname=dbname, **kw),
            dbname,
            pg.host,
            pg.port,
            (psycopg2.errors.SyntaxError, "42601"),
            (psycopg2.errors.UniqueViolation, "23505"),
            True,
        )
    my = request.getfixturevalue("mysql_server")
    kw = {"host": my.host, "port": my.port, "user": my.extra["user"]}
    return Driver(
        name,
        pymysql_hook,
        "mysql",
        "%s",
        lambda: pymysql.connect(database=MYSQL_DB, **kw),
        MYSQL_DB,
        my.host,
        my.port,
        (pymysql.err.ProgrammingError, "1064"),
        (pymysql.err.IntegrityError, "1062"),
        True,
    )


def traced(obj: Any) -> bool:
    """A proxy (sqlite3, psycopg, PyMySQL), or a traced psycopg2 subclass."""
    if isinstance(obj, (dbapi.TracedConnection, dbapi.TracedCursor)):
        return True
    if isinstance(obj, (sqlite3_hook.TracedConnection, sqlite3_hook.TracedCursor)):
        return True
    return isinstance(obj, psycopg2_hook._Cursor) or hasattr(obj, "_pulsetrace_db")


def prepare(d: Driver) -> None:
    """Drop the test table with an untraced connection (before patching)."""
    if d.name == "pymysql":
        with pymysql.connect(host=d.host, port=d.port, user="root", database="mysql") as c:
            c.cursor().execute(f"CREATE DATABASE IF NOT EXISTS {MYSQL_DB}")
    conn = d.connect()
    assert not traced(conn)
    conn.cursor().execute(f"DROP TABLE IF EXISTS {d.table}")
    conn.commit()
    conn.close()


@pytest.fixture(params=["sqlite3", "psycopg", "psycopg2", "pymysql"])
def driver(request, tmp_path, exporter):
    d = make_driver(request.param, request, tmp_path)
    prepare(d)
    d.hook.patch()
    yield d
    d.hook.unpatch()


@pytest.fixture
def conn(driver):
    c = driver.connect()
    yield c
    if not getattr(c, "closed", False) and getattr(c, "open", True):
        c.close()


def create(d: Driver, conn: Any) -> None:
    """The test table, created untraced through the real connection."""
    raw = getattr(conn, "__wrapped__", conn)
    if d.name == "psycopg2":
        cur = psycopg2.extensions.cursor(raw)
    elif d.name == "sqlite3":
        cur = sqlite3.Cursor(raw)  # the C type check accepts the traced connection
    else:
        cur = raw.cursor()
    assert not traced(cur)
    cur.execute(f"CREATE TABLE {d.table} (id INTEGER PRIMARY KEY, email VARCHAR(100) UNIQUE)")
    cur.execute(f"INSERT INTO {d.table} (id, email) VALUES (1, 'bob@x.com')")
    conn.commit()


def client_spans(exporter) -> list:
    spans = [s for s in finished(exporter) if s.kind == "client"]
    return sorted(spans, key=lambda s: s.start_time_unix_nano)


def test_statements_are_client_spans_with_exact_attributes(driver, conn, exporter):
    d, t, p = driver, driver.table, driver.p
    assert traced(conn)
    with pulsetrace.start_span("request") as root:
        cur = conn.cursor()
        assert traced(cur)
        cur.execute(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, email VARCHAR(100) UNIQUE)")
        cur.execute(f"INSERT INTO {t} (id, email) VALUES ({p}, {p})", (1, SECRET))
        cur.executemany(f"INSERT INTO {t} (id, email) VALUES ({p}, {p})", [(2, "a"), (3, "b")])
        cur.execute(f"SELECT email FROM {t} WHERE email = '{SECRET}' -- by mail")
        assert [tuple(r) for r in cur.fetchall()] == [(SECRET,)]
        cur.execute(f"SELECT id FROM {t} WHERE id IN (1, 2, 3) ORDER BY id")
        assert [r[0] for r in cur] == [1, 2, 3]
        conn.commit()
    spans = client_spans(exporter)
    assert [s.name for s in spans] == [f"CREATE {t}", f"INSERT {t}", f"INSERT {t}"] + [
        f"SELECT {t}"
    ] * 2
    rows = "db.response.rows_affected"
    create_text = f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, email VARCHAR(?) UNIQUE)"
    insert = f"INSERT INTO {t} (id, email) VALUES ({p}, {p})"
    expected = [
        d.attrs(create_text, "CREATE", t, **({rows: 0} if d.name == "pymysql" else {})),
        d.attrs(insert, "INSERT", t, **{rows: 1}),
        d.attrs(insert, "INSERT", t, **{rows: 2}),
        d.attrs(
            f"SELECT email FROM {t} WHERE email = ?",
            "SELECT",
            t,
            **({rows: 1} if d.select_rows else {}),
        ),
        d.attrs(
            f"SELECT id FROM {t} WHERE id IN (?) ORDER BY id",
            "SELECT",
            t,
            **({rows: 3} if d.select_rows else {}),
        ),
    ]
    assert [dict(s.attributes) for s in spans] == expected
    for s in spans:
        assert s.parent_span_id == root.span_id
        assert s.status == "unset"
        assert SECRET not in repr(s.attributes)


def test_context_managers_and_chaining(driver, conn, exporter):
    d = driver
    create(d, conn)
    # A transaction (sqlite3, psycopg2) or connection (psycopg, PyMySQL: closed
    # at the end) context: the proxy comes back from __enter__.
    with conn as same:
        assert same is conn
        if d.name == "sqlite3":  # sqlite3 cursors are no context managers
            cur = conn.cursor()
            assert cur.execute(f"SELECT email FROM {d.table}") is cur  # chained: the proxy
            assert cur.connection is conn
            assert cur.fetchone() == (SECRET,)
        else:
            with conn.cursor() as cur:
                assert traced(cur)
                assert cur.connection is conn
                cur.execute(f"SELECT email FROM {d.table}")
                assert tuple(cur.fetchone()) == (SECRET,)
    (span,) = client_spans(exporter)
    assert span.name == f"SELECT {d.table}"


@pytest.mark.parametrize("kind", ["syntax", "unique"])
def test_failed_statement_is_an_error_span_and_the_exception_is_unchanged(
    driver, conn, exporter, kind
):
    d, p = driver, driver.p
    create(d, conn)
    cls, code = d.syntax_error if kind == "syntax" else d.unique_error
    cur = conn.cursor()
    statement = (
        "SELEC email FROM nowhere"
        if kind == "syntax"
        else f"INSERT INTO {d.table} (id, email) VALUES ({p}, {p})"
    )
    with pytest.raises(cls) as info:
        cur.execute(statement, None if kind == "syntax" else (9, SECRET))
    assert type(info.value) is cls
    assert info.value.__traceback__ is not None
    conn.rollback()
    (span,) = client_spans(exporter)
    assert span.status == "error"
    assert span.attributes["error.type"] == cls.__name__
    assert span.attributes.get("db.response.status_code") == code
    assert span.events[0]["name"] == "exception"
    assert span.events[0]["attributes"]["exception.type"].endswith(cls.__name__)
    assert span.attributes["db.query.text"] == statement
    assert SECRET not in repr(span.attributes)


def test_patching_twice_is_one_span_and_unpatch_silences_every_connection(driver, exporter):
    d = driver
    d.hook.patch()
    conn = d.connect()
    conn.cursor().execute("SELECT 1")
    assert [s.name for s in client_spans(exporter)] == ["SELECT"]
    d.hook.unpatch()
    conn.cursor().execute("SELECT 2")  # a connection made while patched goes quiet
    conn.close()
    fresh_conn = d.connect()
    assert not traced(fresh_conn)
    fresh_conn.cursor().execute("SELECT 3")
    fresh_conn.close()
    assert [s.attributes["db.query.text"] for s in client_spans(exporter)] == ["SELECT ?"]
    d.hook.patch()  # the fixture's unpatch must find it patched


def test_failures_inside_pulsetrace_never_change_results(driver, conn, exporter, monkeypatch):
    create(driver, conn)

    def boom(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(_sql, "attributes", boom)
    cur = conn.cursor()
    cur.execute(f"SELECT id, email FROM {driver.table}")
    assert [tuple(r) for r in cur.fetchall()] == [(1, SECRET)]
    with pytest.raises(driver.unique_error[0]):
        cur.execute(
            f"INSERT INTO {driver.table} (id, email) VALUES ({driver.p}, {driver.p})", (1, "x")
        )
    conn.rollback()
    assert client_spans(exporter) == []
    assert _diag.internal_errors()["dbapi.start"] == 2


def test_disabled_tracer_passes_through(driver, conn, exporter):
    fresh(enabled=False)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    assert tuple(cur.fetchone()) == (1,)
    assert client_spans(exporter) == []


def test_pulsetrace_own_work_is_not_traced(driver, conn, exporter):
    from pulsetrace._suppress import suppressed

    with suppressed():  # a health check's query, say
        cur = conn.cursor()
        cur.execute("SELECT 1")
        assert tuple(cur.fetchone()) == (1,)
    assert client_spans(exporter) == []


def test_no_current_span_starts_a_trace_of_its_own(driver, conn, exporter):
    conn.cursor().execute("SELECT 1")
    (span,) = client_spans(exporter)
    assert span.parent_span_id is None


# -- sqlite3 --------------------------------------------------------------


@pytest.fixture
def sqlite_hooked(exporter):
    sqlite3_hook.patch()
    yield exporter
    sqlite3_hook.unpatch()


def test_sqlite3_connection_shortcuts_are_traced(sqlite_hooked, tmp_path):
    conn = sqlite3.connect(str(tmp_path / "shortcuts.sqlite"))
    assert isinstance(conn, sqlite3.Connection)
    with pulsetrace.start_span("request"):
        conn.executescript("CREATE TABLE t (a TEXT); CREATE TABLE u (b TEXT);")
        cur = conn.execute("INSERT INTO t (a) VALUES ('secret')")
        assert isinstance(cur, sqlite3_hook.TracedCursor) and isinstance(cur, sqlite3.Cursor)
        conn.executemany("INSERT INTO t (a) VALUES (?)", [("x",), ("y",)])
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (3,)
        with conn:
            conn.execute("DELETE FROM t WHERE a = 'x'")
    conn.close()
    spans = client_spans(sqlite_hooked)
    assert [(s.name, s.attributes["db.query.text"]) for s in spans] == [
        ("CREATE t", "CREATE TABLE t (a TEXT); CREATE TABLE u (b TEXT);"),
        ("INSERT t", "INSERT INTO t (a) VALUES (?)"),
        ("INSERT t", "INSERT INTO t (a) VALUES (?)"),
        ("SELECT t", "SELECT count(*) FROM t"),
        ("DELETE t", "DELETE FROM t WHERE a = ?"),
    ]
    assert {s.attributes["db.namespace"] for s in spans} == {"shortcuts.sqlite"}
    assert [s.attributes.get("db.response.rows_affected") for s in spans] == [None, 1, 2, None, 1]


def test_sqlite3_memory_namespace_backup_and_dbapi2(sqlite_hooked):
    import sqlite3.dbapi2

    src = sqlite3.dbapi2.connect(":memory:")  # SQLAlchemy's entry point
    dst = sqlite3.connect(":memory:")
    src.execute("CREATE TABLE t (a)")
    src.backup(dst)  # the C type check accepts the traced connection
    assert dst.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
    src.close()
    dst.close()
    spans = client_spans(sqlite_hooked)
    assert len(spans) == 2
    assert {s.attributes["db.namespace"] for s in spans} == {":memory:"}


def test_sqlite3_connections_are_real_so_c_type_checks_pass(sqlite_hooked, tmp_path):
    class AppConnection(sqlite3.Connection):
        def hello(self):
            return "hello"

        def execute(self, *args):  # the application's own override stays in charge
            self.executed = getattr(self, "executed", 0) + 1
            return super().execute(*args)

    class AppCursor(sqlite3.Cursor):
        pass

    path = str(tmp_path / "real.db")
    conn = sqlite3.connect(path, factory=AppConnection)
    assert isinstance(conn, AppConnection) and conn.hello() == "hello"
    plain = sqlite3.Cursor(conn)  # the C constructor checks the connection's type
    plain.execute("CREATE TABLE t (a)")  # a cursor made so is not traced
    cur = conn.cursor(AppCursor)
    assert isinstance(cur, AppCursor) and cur.connection is conn
    assert cur.execute("INSERT INTO t VALUES (1)") is cur
    conn.commit()
    positional = sqlite3.connect(path, 5.0, 0, "DEFERRED", True, AppConnection)
    assert positional.hello() == "hello"
    assert positional.execute("SELECT a FROM t").fetchall() == [(1,)]
    assert positional.executed == 1
    for c in (conn, positional):
        c.close()
    spans = client_spans(sqlite_hooked)
    assert [s.attributes["db.query.text"] for s in spans] == [
        "INSERT INTO t VALUES (?)",
        "SELECT a FROM t",
    ]
    assert spans[0].attributes["db.response.rows_affected"] == 1


def test_connect_imported_by_name_before_patching_is_not_traced(exporter):
    from sqlite3 import connect  # what the dbapi docstring warns about

    sqlite3_hook.patch()
    try:
        early = connect(":memory:")
        assert type(early) is sqlite3.Connection
        early.execute("SELECT 1")
        early.close()
        late = sqlite3.connect(":memory:")
        late.execute("SELECT 1")
        late.close()
    finally:
        sqlite3_hook.unpatch()
    assert len(client_spans(exporter)) == 1


def test_connect_failure_inside_pulsetrace_returns_the_real_connection(
    sqlite_hooked, monkeypatch, tmp_path
):
    def boom(path):
        raise RuntimeError("injected")

    monkeypatch.setattr(sqlite3_hook, "file_namespace", boom)
    conn = sqlite3.connect(str(tmp_path / "new.db"))  # a path not seen before
    assert type(conn) is sqlite3.Connection
    assert conn.execute("SELECT 1").fetchone() == (1,)
    conn.close()
    assert _diag.internal_errors()["sqlite3.connect"] == 1
    assert client_spans(sqlite_hooked) == []


def test_real_driver_modules_are_patched_not_shadowed():
    assert sqlite3_hook.__name__ == "pulsetrace.contrib.sqlite3"
    sqlite3_hook.patch()
    try:
        assert "pulsetrace" not in sqlite3.__file__
        assert isinstance(vars(sqlite3)["connect"], dbapi.wrapt.FunctionWrapper)
    finally:
        sqlite3_hook.unpatch()
    assert not isinstance(vars(sqlite3)["connect"], dbapi.wrapt.FunctionWrapper)
    names = {i.name: (i.module, i.hook) for i in INTEGRATIONS}
    for hook, module in [
        (sqlite3_hook, "sqlite3"),
        (psycopg_hook, "psycopg"),
        (psycopg2_hook, "psycopg2"),
        (pymysql_hook, "pymysql"),
    ]:
        assert names[module] == (module, hook.__name__)
        # A PEP 440 range; the standard library's sqlite3 has none to check.
        assert hook.SUPPORTED if module != "sqlite3" else hook.SUPPORTED is None


# -- psycopg 3 ------------------------------------------------------------


@pytest.fixture
def pg(exporter, postgres_server):
    kw = {
        "host": postgres_server.host,
        "port": postgres_server.port,
        "user": "postgres",
        "dbname": "postgres",
    }
    with psycopg.connect(**kw, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS items")
        c.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    yield kw


def test_psycopg_connection_execute_and_composed_sql(pg, exporter):
    psycopg_hook.patch()
    try:
        with psycopg.connect(**pg) as conn:
            assert isinstance(conn, psycopg.Connection)
            with pulsetrace.start_span("request") as root:
                cur = conn.execute("INSERT INTO items VALUES (%s, %s)", (1, SECRET))
                assert isinstance(cur, dbapi.TracedCursor)
                q = psycopg.sql.SQL("SELECT {} FROM {} WHERE name = {}").format(
                    psycopg.sql.Identifier("id"),
                    psycopg.sql.Identifier("items"),
                    psycopg.sql.Literal(SECRET),
                )
                assert conn.execute(q).fetchall() == [(1,)]
                with psycopg.Connection.connect(**pg) as pool_style:  # psycopg_pool's call
                    assert isinstance(pool_style, dbapi.TracedConnection)
                    pool_style.execute("SELECT 1")
    finally:
        psycopg_hook.unpatch()
    spans = client_spans(exporter)
    assert [(s.name, s.attributes["db.query.text"]) for s in spans] == [
        ("INSERT items", "INSERT INTO items VALUES (%s, %s)"),
        ("SELECT items", 'SELECT "id" FROM "items" WHERE name = ?'),
        ("SELECT", "SELECT ?"),
    ]
    assert all(s.parent_span_id == root.span_id for s in spans)


def test_psycopg_async(pg, exporter):
    psycopg_hook.patch()

    async def main():
        with pulsetrace.start_span("request") as root:
            conn = await psycopg.AsyncConnection.connect(**pg)
            assert isinstance(conn, psycopg.AsyncConnection)
            async with conn:
                async with conn.cursor() as cur:
                    assert isinstance(cur, psycopg_hook.AsyncTracedCursor)
                    await cur.execute("INSERT INTO items VALUES (%s, %s)", (1, SECRET))
                    await cur.executemany("INSERT INTO items VALUES (%s, %s)", [(2, "a"), (3, "b")])
                    await cur.execute("SELECT id FROM items WHERE id IN (1, 2) ORDER BY id")
                    assert [r[0] async for r in cur] == [1, 2]
                    with pytest.raises(psycopg.errors.UniqueViolation):
                        await cur.execute("INSERT INTO items VALUES (1, 'dup')")
                await conn.rollback()
                res = await conn.execute("SELECT count(*) FROM items")
                assert await res.fetchone() == (0,)
        return root

    try:
        root = asyncio.run(main())
    finally:
        psycopg_hook.unpatch()
    spans = client_spans(exporter)
    assert [s.name for s in spans] == ["INSERT items"] * 2 + ["SELECT items"] + [
        "INSERT items",
        "SELECT items",
    ]
    assert all(s.parent_span_id == root.span_id for s in spans)
    err = spans[3]
    assert err.status == "error"
    assert err.attributes["db.response.status_code"] == "23505"
    assert err.attributes["error.type"] == "UniqueViolation"
    assert err.attributes["db.query.text"] == "INSERT INTO items VALUES (?, ?)"
    assert spans[1].attributes["db.response.rows_affected"] == 2


# -- psycopg2 -------------------------------------------------------------


def test_psycopg2_objects_are_real_so_its_c_type_checks_pass(pg, exporter):
    psycopg2_hook.patch()
    try:
        conn = psycopg2.connect(cursor_factory=psycopg2.extras.RealDictCursor, **pg)
        # A subclass of psycopg2's own class, not a proxy: what SQLAlchemy and
        # Django call on connect (register_uuid, register_default_jsonb) works.
        assert isinstance(conn, psycopg2.extensions.connection)
        assert type(conn).__name__ == "connection"
        psycopg2.extras.register_uuid(conn_or_curs=conn)
        psycopg2.extras.register_default_jsonb(conn_or_curs=conn, loads=lambda x: x)
        ident = psycopg2.sql.Identifier("items").as_string(conn)
        with conn.cursor() as cur:
            assert isinstance(cur, psycopg2.extras.RealDictCursor) and traced(cur)
            cur.execute(f"INSERT INTO {ident} VALUES (%s, %s)", (1, SECRET))
            cur.execute("SELECT id, name FROM items")
            assert cur.fetchall() == [{"id": 1, "name": SECRET}]
            assert psycopg2.extensions.quote_ident("x", cur) == '"x"'
        with conn.cursor(cursor_factory=psycopg2.extras.NamedTupleCursor) as cur:
            psycopg2.extras.execute_values(
                cur, "INSERT INTO items (id, name) VALUES %s", [(2, "a"), (3, "b")]
            )
            query = psycopg2.sql.SQL("SELECT {} FROM items WHERE id = {}").format(
                psycopg2.sql.Identifier("name"), psycopg2.sql.Literal(2)
            )
            cur.execute(query)
            assert cur.fetchone().name == "a"
            assert query.as_string(cur) == 'SELECT "name" FROM items WHERE id = 2'
        conn.rollback()
        conn.close()
        # A connection class with its own cursor(): its choice of cursor is kept.
        conn = psycopg2.connect(connection_factory=psycopg2.extras.DictConnection, **pg)
        assert isinstance(conn, psycopg2.extras.DictConnection)
        cur = conn.cursor()
        assert isinstance(cur, psycopg2.extras.DictCursor) and traced(cur)
        cur.execute("SELECT 1 AS one")
        assert cur.fetchone()["one"] == 1
        conn.close()
    finally:
        psycopg2_hook.unpatch()
    spans = client_spans(exporter)
    assert [(s.name, s.attributes["db.query.text"]) for s in spans] == [
        ("INSERT items", 'INSERT INTO "items" VALUES (%s, %s)'),
        ("SELECT items", "SELECT id, name FROM items"),
        ("INSERT items", "INSERT INTO items (id, name) VALUES (?,?)"),  # rows collapsed
        ("SELECT items", 'SELECT "name" FROM items WHERE id = ?'),
        ("SELECT", "SELECT ? AS one"),
    ]


@pytest.mark.parametrize("name", ["psycopg2", "pymysql"])
def test_callproc(name, request, tmp_path, exporter):
    d = make_driver(name, request, tmp_path)
    prepare(d)
    d.hook.patch()
    try:
        conn = d.connect()
        cur = conn.cursor()
        if name == "psycopg2":
            cur.execute(
                "CREATE OR REPLACE FUNCTION add_one(i int) RETURNS int"
                " AS $$ SELECT i + 1 $$ LANGUAGE sql"
            )
        else:
            cur.execute("DROP PROCEDURE IF EXISTS add_one")
            cur.execute("CREATE PROCEDURE add_one(IN i INT) SELECT i + 1")
        cur.callproc("add_one", (41,))
        assert cur.fetchone()[0] == 42
        conn.rollback()
        conn.close()
    finally:
        d.hook.unpatch()
    span = client_spans(exporter)[-1]
    assert span.name == "CALL"
    assert span.attributes["db.query.text"] == "CALL add_one"


# -- PyMySQL --------------------------------------------------------------


def test_pymysql_dict_cursor_and_aliases(request, tmp_path, exporter):
    d = make_driver("pymysql", request, tmp_path)
    prepare(d)
    pymysql_hook.patch()
    try:
        assert pymysql.Connection is pymysql.connections.Connection  # isinstance still works
        conn = pymysql.Connect(host=d.host, port=d.port, user="root", database=MYSQL_DB)
        assert isinstance(conn, pymysql.connections.Connection)
        create(d, conn)
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(f"SELECT id, email FROM {d.table} WHERE id = %(id)s", {"id": 1})
            assert cur.fetchall() == [{"id": 1, "email": SECRET}]
        conn.close()
    finally:
        pymysql_hook.unpatch()
    (span,) = client_spans(exporter)
    assert span.attributes == d.attrs(
        f"SELECT id, email FROM {d.table} WHERE id = %(id)s",
        "SELECT",
        d.table,
        **{"db.response.rows_affected": 1},
    )


def test_registry_switches_them_on(exporter, tmp_path):
    names = ["sqlite3", "psycopg", "psycopg2", "pymysql"]
    assert pulsetrace.contrib.instrument(pulsetrace.get_config(), names) == names
    try:
        assert set(names) <= set(pulsetrace.contrib.instrumented())
        conn = sqlite3.connect(str(tmp_path / "registry.db"))
        conn.execute("SELECT 1")
        conn.close()
    finally:
        pulsetrace.contrib.uninstrument(names)
    assert not isinstance(vars(psycopg2)["connect"], dbapi.wrapt.FunctionWrapper)
    conn = sqlite3.connect(":memory:")
    conn.execute("SELECT 2")
    conn.close()
    assert [s.attributes["db.namespace"] for s in client_spans(exporter)] == ["registry.db"]
