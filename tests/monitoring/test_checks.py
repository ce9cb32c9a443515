"""Health checks against real servers: the built-ins pass against live
PostgreSQL, MariaDB, Redis and SQLite and fail against a closed port; a
Redis stopped mid-test turns /health/ready to 503 and back when it returns;
a probe storm runs a check once per TTL; a hanging check is reported as
timed out and the endpoint answers within its timeout; passwords never
appear; the checks' own queries are never traced."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from monitoring_support import OwnRedis, monitoring_server, pg_url

import pulsetrace
import pulsetrace.health
from pulsetrace import _runtime
from pulsetrace.contrib import psycopg as psycopg_hook
from pulsetrace.contrib import redis as redis_hook
from pulsetrace.monitoring import health as _health
from servers import free_port

from conftest import finished


@pytest.fixture
def own_redis():
    server = OwnRedis()
    server.start()
    yield server
    server.close()


@pytest.fixture
def registry():
    _health.REGISTRY.clear()
    yield _health.REGISTRY
    _health.REGISTRY.clear()


def by_name(results):
    return {r.name: r for r in results}


def test_the_built_in_checks_pass_against_real_servers(
    registry, postgres_server, mysql_server, redis_server, tmp_path
):
    db = tmp_path / "app.db"
    sqlite3.connect(db).close()
    my = mysql_server
    pulsetrace.health.check_postgresql(pg_url(postgres_server))
    pulsetrace.health.check_mysql(
        f"mysql://{my.extra['user']}@{my.host}:{my.port}/{my.extra['database']}"
    )
    pulsetrace.health.check_redis(f"redis://{redis_server.host}:{redis_server.port}/0")
    pulsetrace.health.check_sqlite(str(db))
    pulsetrace.health.check_disk(str(tmp_path))
    pulsetrace.health.check_memory()
    pulsetrace.health.check_cpu()
    results = by_name(pulsetrace.health.results())
    assert {n: r.status for n, r in results.items()} == {
        n: "pass" for n in ("postgresql", "mysql", "redis", "sqlite", "disk", "memory", "cpu")
    }, {n: r.error for n, r in results.items()}
    assert results["memory"].details["rss_bytes"] > 1 << 20
    assert results["disk"].details["free_bytes"] > 0
    assert not results["disk"].critical and results["postgresql"].critical


def test_the_built_in_checks_fail_against_nothing(registry, tmp_path):
    port = free_port()  # nothing listens there
    pulsetrace.health.check_postgresql(f"postgresql://u@127.0.0.1:{port}/d")
    pulsetrace.health.check_mysql(f"mysql://u@127.0.0.1:{port}/d")
    pulsetrace.health.check_redis(f"redis://127.0.0.1:{port}/0")
    pulsetrace.health.check_sqlite(str(tmp_path / "absent.db"))
    pulsetrace.health.check_disk(str(tmp_path), min_free_ratio=1.0)
    pulsetrace.health.check_memory(max_rss_bytes=1)
    results = by_name(pulsetrace.health.results())
    assert {n: r.status for n, r in results.items()} == {
        n: "fail" for n in ("postgresql", "mysql", "redis", "sqlite", "disk", "memory")
    }
    assert "Connection refused" in results["redis"].error
    assert "below the threshold" in results["disk"].error
    assert not (tmp_path / "absent.db").exists()  # the check does not create it


def test_a_password_is_never_reported(postgres_server, redis_server):
    # The test server trusts every client, so a password is accepted (and ignored).
    url = pg_url(postgres_server, password="hunter2-secret")
    with monitoring_server() as client:
        pulsetrace.health.check_postgresql(url)
        pulsetrace.health.check_redis(
            f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0", critical=False
        )
        status, _, body = client.get("/health")
        text = json.dumps(body)
        assert status == 200, text
        assert "hunter2" not in text
        target = by_name(pulsetrace.health.results())["postgresql"].details["target"]
        assert target == url.replace(":hunter2-secret", "")
    assert pulsetrace.health.redact_url("host=db user=app password='a b' dbname=x") == (
        "host=db user=app  dbname=x"
    )


def test_a_password_in_a_custom_checks_error_is_removed(registry):
    def failing():
        raise ConnectionError("cannot reach amqp://queue:hunter2-secret@mq:5672/ (refused)")

    pulsetrace.health.register("queue", failing)
    pulsetrace.health.register("dsn", lambda: {"status": "fail", "error": "password=hunter2 x"})
    results = by_name(pulsetrace.health.results())
    assert results["queue"].error == "ConnectionError: cannot reach amqp://queue@mq:5672/ (refused)"
    assert "hunter2" not in results["dsn"].error


def test_a_redis_stopped_mid_test_turns_ready_to_503_and_back(own_redis):
    with monitoring_server() as client:
        pulsetrace.health.check_redis(own_redis.url, ttl=0.2, timeout=2.0)
        pulsetrace.health.register("always", lambda: True, critical=False)
        status, _, body = client.get("/health/ready")
        assert status == 200, body
        own_redis.stop()
        time.sleep(0.3)  # the cached result expires
        status, _, body = client.get("/health/ready")
        assert status == 503 and body["failing"] == ["redis"]
        # Liveness is the process alone: a dependency never fails it.
        assert client.get("/health/live")[0] == 200
        own_redis.start()
        time.sleep(0.3)
        status, _, body = client.get("/health/ready")
        assert status == 200 and body["failing"] == []


def test_a_probe_storm_runs_the_query_once_per_ttl(postgres_server):
    """Fifty concurrent probes within the TTL open one PostgreSQL session."""
    reader = psycopg.connect(pg_url(postgres_server), autocommit=True)
    sql = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"

    def sessions() -> int:
        reader.execute("SELECT pg_stat_clear_snapshot()")
        return reader.execute(sql).fetchone()[0]

    def settled(at_least: int) -> int:
        """Sessions since ``before`` once at least ``at_least`` are counted
        (a session is counted when it ends, shortly after), and a moment
        more for any extra one to show."""
        deadline = time.monotonic() + 10
        while sessions() - before < at_least and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        return sessions() - before

    try:
        with monitoring_server() as client:
            pulsetrace.health.check_postgresql(pg_url(postgres_server), ttl=30)
            time.sleep(1.2)  # the reader's own session is counted by now
            before = sessions()
            with ThreadPoolExecutor(10) as pool:
                statuses = list(pool.map(lambda _: client.get("/health/ready")[0], range(50)))
            assert statuses == [200] * 50
            assert settled(1) == 1
            # Asked for a fresh run (as past the TTL), the check runs again.
            pulsetrace.health.results(fresh=True)
            assert settled(2) == 2
    finally:
        reader.close()


def test_a_hanging_check_is_reported_timed_out_within_its_timeout(registry):
    release = threading.Event()
    started = []

    def hangs():
        started.append(1)
        release.wait(30)
        return True

    with monitoring_server() as client:
        pulsetrace.health.register("hangs", hangs, timeout=0.5, ttl=0)
        pulsetrace.health.register("fine", lambda: True)
        try:
            t0 = time.monotonic()
            status, _, body = client.get("/health/ready")
            elapsed = time.monotonic() - t0
            assert status == 503 and body["failing"] == ["hangs"]
            # Answered at its timeout, not after the 30 s hang (slack for a loaded machine).
            assert 0.45 <= elapsed < 0.5 + 3.0, elapsed
            check = {c["name"]: c for c in body["checks"]}["hangs"]
            assert check["status"] == "timeout" and check["error"] == "no answer within 0.5 s"
            # While it hangs it is not started again (one pool thread at most).
            for _ in range(3):
                assert client.get("/health/ready")[0] == 503
            assert started == [1]
            release.set()
            time.sleep(0.1)
            assert client.get("/health/ready")[0] == 200
        finally:
            release.set()


def test_health_checks_are_never_traced(exporter, postgres_server, redis_server):
    """With psycopg and redis instrumented, a health check's query and PING
    make no span; the same calls made by the application do."""
    psycopg_hook.patch()
    redis_hook.patch()
    try:
        _health.REGISTRY.clear()
        url = f"redis://{redis_server.host}:{redis_server.port}/0"
        pulsetrace.health.check_postgresql(pg_url(postgres_server))
        pulsetrace.health.check_redis(url)
        results = pulsetrace.health.results(fresh=True)
        assert [r.status for r in results] == ["pass", "pass"]
        assert finished(exporter) == []
        # The application's own calls are traced (the hooks are on).
        import redis

        with psycopg.connect(pg_url(postgres_server)) as conn:
            conn.execute("SELECT 1").fetchone()
        client = redis.Redis.from_url(url)
        client.ping()
        client.close()
        names = sorted(s.name for s in finished(exporter))
        assert names == ["PING", "SELECT"], names
    finally:
        psycopg_hook.unpatch()
        redis_hook.unpatch()
        _health.REGISTRY.clear()


def test_the_exporter_check_reports_failures_but_never_fails_readiness():
    with monitoring_server() as client:
        pulsetrace.health.check_exporter(ttl=0)
        _runtime.record_delivery(0, 7)  # an export that failed
        status, _, body = client.get("/health/ready")
        assert status == 200 and body["failing"] == []
        status, _, body = client.get("/health")
        assert status == 200 and body["status"] == "degraded"
        (check,) = body["checks"]
        assert check["critical"] is False and check["status"] == "fail"
        assert check["details"]["failed_since_last_delivery"] == 7
        _runtime.record_delivery(3, 0)
        assert client.get("/health")[2]["status"] == "pass"


def test_the_event_loop_check_measures_lag():
    import asyncio

    async def main():
        pulsetrace.health.check_event_loop(max_lag_s=0.2, ttl=0)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, pulsetrace.health.results, ["event_loop"])
        # A blocked loop: the callback waits for the blocking call to end.
        blocked = loop.run_in_executor(None, pulsetrace.health.results, ["event_loop"])
        time.sleep(0.5)  # blocks the loop
        slow = await blocked
        return ok[0], slow[0]

    _health.REGISTRY.clear()
    try:
        ok, slow = asyncio.run(main())
    finally:
        _health.REGISTRY.clear()
    assert ok.status == "pass" and ok.details["lag_ms"] < 200
    assert slow.status == "fail" and "event-loop lag" in slow.error


def test_register_rejects_bad_arguments_naming_them(registry):
    with pytest.raises(ValueError, match="timeout=0 is not within"):
        pulsetrace.health.register("x", lambda: True, timeout=0)
    with pytest.raises(ValueError, match="must be callable"):
        pulsetrace.health.register("x", "not a function")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        pulsetrace.health.register("", lambda: True)
    with pytest.raises(ValueError, match="no health check for the database URL scheme 'oracle'"):
        pulsetrace.health.check_database("oracle://db/x")
    assert registry.names() == []


def test_liveness_answers_at_once_while_readiness_probes_wait_on_a_hung_check():
    """Every handler thread busy with a readiness probe that waits for a hung
    database: the liveness probe is still answered at once (a database
    outage never fails liveness, not even by delaying it)."""
    release = threading.Event()
    with monitoring_server() as client:
        pulsetrace.health.register("hung-db", lambda: release.wait(30), timeout=3.0, ttl=0)
        try:
            with ThreadPoolExecutor(8) as pool:
                waiting = [pool.submit(client.get, "/health/ready") for _ in range(8)]
                time.sleep(0.3)
                t0 = time.monotonic()
                status, _, body = client.get("/health/live")
                elapsed = time.monotonic() - t0
                assert status == 200 and body["status"] == "pass"
                assert elapsed < 0.5, elapsed  # 2.7 s when it queued behind them
                assert not any(f.done() for f in waiting)
                assert [f.result()[0] for f in waiting] == [503] * 8
        finally:
            release.set()


def test_an_async_check_is_awaited(registry):
    import asyncio

    async def reachable():
        await asyncio.sleep(0.01)
        return {"awaited": True}

    async def unreachable():
        await asyncio.sleep(0)
        raise ConnectionError("no route to the queue")

    pulsetrace.health.register("async-ok", reachable)
    pulsetrace.health.register("async-down", unreachable)
    results = by_name(pulsetrace.health.results())
    assert results["async-ok"].status == "pass"
    assert results["async-ok"].details == {"awaited": True}
    assert results["async-down"].status == "fail"
    assert results["async-down"].error == "ConnectionError: no route to the queue"


def test_a_forked_worker_runs_its_checks_on_a_pool_of_its_own(registry):
    """Under a pre-fork server the parent's pool threads are not in the
    worker: the worker's checks still run (and do not hang)."""
    import os

    pulsetrace.health.register("ok", lambda: True, ttl=0)
    assert pulsetrace.health.results()[0].status == "pass"  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            code = 0 if pulsetrace.health.results()[0].status == "pass" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_check_hanging_forever_does_not_keep_the_application_from_exiting():
    import subprocess
    import sys

    code = (
        "import threading, pulsetrace.health as h\n"
        "h.register('stuck', threading.Event().wait, timeout=0.2)\n"
        "print(h.results()[0].status, flush=True)\n"
    )
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True
    )
    assert out.stdout == "timeout\n"
    assert time.monotonic() - t0 < 5


def test_a_hanging_check_never_holds_up_another_one_behind_an_idle_thread():
    """A pool thread left idle by an earlier run takes the hanging check;
    the other check gets a thread of its own and passes (it waited behind
    the hanging one before: an idle thread was counted for both)."""
    reg = _health.Registry(pool_size=4)
    release = threading.Event()
    try:
        reg.register("warm", lambda: True, critical=True, timeout=2.0, ttl=0)
        assert reg.run()[0].status == "pass"  # leaves one idle pool thread
        time.sleep(0.05)
        reg.clear()

        def hangs():
            release.wait(30)
            return True

        reg.register("hangs", hangs, critical=True, timeout=0.5, ttl=0)
        reg.register("fine", lambda: True, critical=True, timeout=2.0, ttl=0)
        results = {r.name: r for r in reg.run()}
        assert results["hangs"].status == "timeout"
        assert results["fine"].status == "pass", results["fine"]
    finally:
        release.set()
