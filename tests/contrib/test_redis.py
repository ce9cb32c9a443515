"""Redis: CLIENT spans for commands and pipelines (sync and asyncio) against a
real redis-server; keys kept, values never; errors; safety."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pulsetrace
from pulsetrace import _diag
from pulsetrace.contrib import redis as redis_hook
from servers import free_port

from conftest import finished, fresh

redis = pytest.importorskip("redis")
aioredis = pytest.importorskip("redis.asyncio")

SECRET = "s3cret-value-7f3a"


@pytest.fixture
def hooked(exporter, redis_server):
    """Patched, with the test keys deleted first (untraced)."""
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    client.delete("user:1", "h", "counter", "w")
    client.close()
    redis_hook.patch()
    yield exporter
    redis_hook.unpatch()


@pytest.fixture
def r(redis_server):
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    yield client
    client.close()


def base(server, db="0"):
    return {
        "db.system.name": "redis",
        "db.namespace": db,
        "server.address": server.host,
        "server.port": server.port,
    }


def client_spans(exporter):
    return [s for s in finished(exporter) if s.kind == "client"]


def assert_no_secret(spans):
    for s in spans:
        assert SECRET not in s.name
        assert SECRET not in repr(s.attributes), s.attributes


def aclient(server, **kw):
    return aioredis.Redis(host=server.host, port=server.port, **kw)


async def aclose(client):
    await (client.aclose() if hasattr(client, "aclose") else client.close())


def expected_commands(server):
    b = base(server)
    return [
        ("SET", {**b, "db.operation.name": "SET", "db.query.text": "SET user:1 ?"}),
        ("GET", {**b, "db.operation.name": "GET", "db.query.text": "GET user:1"}),
        ("HSET", {**b, "db.operation.name": "HSET", "db.query.text": "HSET h ? ? ? ?"}),
        ("INCRBY", {**b, "db.operation.name": "INCRBY", "db.query.text": "INCRBY counter ?"}),
        ("PUBLISH", {**b, "db.operation.name": "PUBLISH", "db.query.text": "PUBLISH news ?"}),
        ("DEL", {**b, "db.operation.name": "DEL", "db.query.text": "DEL user:1 ? ?"}),
        ("PING", {**b, "db.operation.name": "PING", "db.query.text": "PING"}),
    ]


def test_commands_keep_keys_and_drop_values(hooked, r, redis_server):
    assert r.set("user:1", SECRET) is True
    assert r.get("user:1") == SECRET.encode()
    assert r.hset("h", mapping={"a": SECRET, "b": "x"}) == 2
    assert r.incr("counter") == 1
    assert r.publish("news", SECRET) == 0
    assert r.delete("user:1", "h", "counter") == 3
    assert r.ping() is True
    spans = client_spans(hooked)
    assert [(s.name, s.attributes) for s in spans] == expected_commands(redis_server)
    assert all(s.status == "unset" and s.kind == "client" for s in spans)
    assert_no_secret(spans)


def test_asyncio_commands_keep_keys_and_drop_values(hooked, redis_server):
    async def main():
        a = aclient(redis_server)
        try:
            assert await a.set("user:1", SECRET) is True
            assert await a.get("user:1") == SECRET.encode()
            assert await a.hset("h", mapping={"a": SECRET, "b": "x"}) == 2
            assert await a.incr("counter") == 1
            assert await a.publish("news", SECRET) == 0
            assert await a.delete("user:1", "h", "counter") == 3
            assert await a.ping() is True
        finally:
            await aclose(a)

    asyncio.run(main())
    spans = client_spans(hooked)
    assert [(s.name, s.attributes) for s in spans] == expected_commands(redis_server)
    assert_no_secret(spans)


def test_keyless_and_multiword_commands_keep_no_argument(hooked, r, redis_server):
    assert r.client_setname(SECRET) is True
    assert r.echo(SECRET) == SECRET.encode()
    with pytest.raises(redis.exceptions.AuthenticationError):  # no password is set
        r.execute_command("AUTH", SECRET)
    assert r.execute_command(f"SET user:1 {SECRET}") == b"OK"  # one string, split by redis-py
    assert r.execute_command(b"GET", "user:1") == SECRET.encode()
    spans = client_spans(hooked)
    texts = [(s.name, s.attributes["db.query.text"]) for s in spans]
    assert texts == [
        ("CLIENT SETNAME", "CLIENT SETNAME ?"),
        ("ECHO", "ECHO ?"),
        ("AUTH", "AUTH ?"),
        ("SET", "SET user:1 ?"),
        ("GET", "GET user:1"),
    ]
    assert_no_secret(spans)


def test_query_text_is_bounded(hooked, r):
    assert r.mset({f"k{i}": SECRET for i in range(2000)}) is True
    r.delete(*[f"k{i}" for i in range(2000)])
    mset = client_spans(hooked)[0]
    assert mset.name == "MSET"
    text = mset.attributes["db.query.text"]
    assert text.startswith("MSET k0 ? ? ?") and len(text) == redis_hook.MAX_QUERY_LENGTH
    assert_no_secret([mset])


def test_big_pipeline_attributes_are_bounded(hooked, r):
    pipe = r.pipeline(transaction=False)
    for i in range(300):
        pipe.set(f"k{i}", SECRET)
    pipe.execute()
    r.delete(*[f"k{i}" for i in range(300)])
    span = client_spans(hooked)[0]
    assert span.name == "PIPELINE"
    assert span.attributes["db.operation.batch.size"] == 300
    assert span.attributes["db.redis.commands"] == ("SET",) * 128
    text = span.attributes["db.query.text"]
    assert text.startswith("SET k0 ?; SET k1 ?") and len(text) == redis_hook.MAX_QUERY_LENGTH
    assert_no_secret([span])


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("GET", "k"), "GET k"),
        (("get", b"k"), "GET k"),
        (("CLIENT", "SETNAME", SECRET), "CLIENT SETNAME ?"),
        (("CONFIG SET", "requirepass", SECRET), "CONFIG SET ? ?"),
        (("OBJECT ENCODING", "k"), "OBJECT ENCODING k"),
        (("MEMORY USAGE", "k", "SAMPLES", 5), "MEMORY USAGE k ? ?"),
        (("XINFO STREAM", "s"), "XINFO STREAM s"),
        (("EVAL", SECRET, 1, "k"), "EVAL ? ? ?"),
        (("HELLO", 3, "AUTH", "u", SECRET), "HELLO ? ? ? ?"),
        (("JSON.SET", "doc", "$", SECRET), "JSON.SET doc ? ?"),
        ((f"SET k {SECRET}",), "SET k ?"),
        (("SET", "k" * 1000, SECRET), "SET " + "k" * 256 + " ?"),
    ],
)
def test_query_text_of_commands(args, text):
    op, first, n = redis_hook._split(args)
    assert redis_hook._query(op, first, n) == text


@pytest.mark.parametrize("args", [(), ("",), (SECRET + "1",), ("G\x00T", "k"), ("X" * 41,)])
def test_unnamed_commands_keep_nothing(args):
    assert redis_hook._split(args)[0] is None
    name, attrs = redis_hook._command(None, args)
    assert name == "redis" and "db.query.text" not in attrs


def check_pipeline(span, server, op, names):
    assert span.name == op
    assert span.kind == "client" and span.status == "unset"
    assert span.attributes == {
        **base(server),
        "db.operation.name": op,
        "db.operation.batch.size": len(names),
        "db.redis.commands": names,
        "db.query.text": "SET user:1 ?; GET user:1; HSET h ? ?",
    }


def test_pipelines_are_one_span(hooked, r, redis_server):
    for transaction in (False, True):
        with r.pipeline(transaction=transaction) as pipe:
            pipe.set("user:1", SECRET).get("user:1").hset("h", "f", SECRET)
            assert pipe.execute() == [True, SECRET.encode(), 1]
        r.delete("h")
    spans = client_spans(hooked)
    assert [s.name for s in spans] == ["PIPELINE", "DEL", "MULTI", "DEL"]
    check_pipeline(spans[0], redis_server, "PIPELINE", ("SET", "GET", "HSET"))
    check_pipeline(spans[2], redis_server, "MULTI", ("SET", "GET", "HSET"))
    assert_no_secret(spans)


def test_asyncio_pipelines_are_one_span(hooked, redis_server):
    async def main():
        a = aclient(redis_server)
        try:
            for transaction in (False, True):
                async with a.pipeline(transaction=transaction) as pipe:
                    pipe.set("user:1", SECRET).get("user:1").hset("h", "f", SECRET)
                    assert await pipe.execute() == [True, SECRET.encode(), 1]
                await a.delete("h")
        finally:
            await aclose(a)

    asyncio.run(main())
    spans = client_spans(hooked)
    assert [s.name for s in spans] == ["PIPELINE", "DEL", "MULTI", "DEL"]
    check_pipeline(spans[0], redis_server, "PIPELINE", ("SET", "GET", "HSET"))
    check_pipeline(spans[2], redis_server, "MULTI", ("SET", "GET", "HSET"))
    assert_no_secret(spans)


def test_empty_pipeline_sends_nothing_and_has_no_span(hooked, r):
    assert r.pipeline().execute() == []
    assert client_spans(hooked) == []


def test_watch_then_transaction_and_conflict(hooked, r, redis_server):
    r.set("w", "1")
    other = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        with r.pipeline() as pipe:
            pipe.watch("w")
            assert pipe.get("w") == b"1"
            pipe.multi()
            pipe.set("w", "2")
            assert pipe.execute() == [True]
        with r.pipeline() as pipe:
            pipe.watch("w")
            other.set("w", "3")  # a conflicting write
            pipe.multi()
            pipe.set("w", SECRET)
            with pytest.raises(redis.exceptions.WatchError):
                pipe.execute()
    finally:
        other.close()
    spans = client_spans(hooked)
    assert [s.name for s in spans] == ["SET", "WATCH", "GET", "MULTI", "WATCH", "SET", "MULTI"]
    assert spans[1].attributes["db.query.text"] == "WATCH w"
    assert spans[3].status == "unset"
    assert spans[3].attributes["db.redis.commands"] == ("SET",)
    conflict = spans[6]
    assert conflict.status == "error"
    assert conflict.attributes["error.type"] == "redis.exceptions.WatchError"
    assert conflict.events[0]["attributes"]["exception.type"] == "redis.exceptions.WatchError"
    assert_no_secret(spans)


def test_asyncio_watch_and_conflict(hooked, redis_server):
    async def main():
        a, other = aclient(redis_server), aclient(redis_server)
        try:
            async with a.pipeline() as pipe:
                await pipe.watch("w")
                assert await pipe.get("w") is None
                await other.set("w", "1")
                pipe.multi()
                pipe.set("w", SECRET)
                with pytest.raises(redis.exceptions.WatchError):
                    await pipe.execute()
        finally:
            await aclose(a)
            await aclose(other)

    asyncio.run(main())
    spans = client_spans(hooked)
    assert [s.name for s in spans] == ["WATCH", "GET", "SET", "MULTI"]
    assert spans[1].attributes["db.query.text"] == "GET w"
    assert spans[3].status == "error"
    assert spans[3].attributes["error.type"] == "redis.exceptions.WatchError"
    assert_no_secret(spans)


def test_error_reply_is_recorded_and_raised_unchanged(hooked, r, monkeypatch):
    r.set("user:1", SECRET)
    raised = []
    parse = r.parse_response

    def spy(*args, **kwargs):
        try:
            return parse(*args, **kwargs)
        except Exception as exc:
            raised.append(exc)
            raise

    monkeypatch.setattr(r, "parse_response", spy)
    with pytest.raises(redis.exceptions.ResponseError) as info:
        r.incr("user:1")
    assert raised == [info.value]  # the very exception redis-py raised
    span = client_spans(hooked)[-1]
    assert span.name == "INCRBY"
    assert span.status == "error"
    assert span.status_message == "ResponseError: value is not an integer or out of range"
    assert span.attributes["error.type"] == "redis.exceptions.ResponseError"
    (event,) = span.events
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "redis.exceptions.ResponseError"
    assert event["attributes"]["exception.message"] == "value is not an integer or out of range"
    assert event["attributes"]["exception.escaped"] is True


def test_asyncio_error_reply(hooked, redis_server):
    async def main():
        a = aclient(redis_server)
        try:
            await a.set("user:1", SECRET)
            with pytest.raises(redis.exceptions.ResponseError, match="not an integer"):
                await a.incr("user:1")
        finally:
            await aclose(a)

    asyncio.run(main())
    span = client_spans(hooked)[-1]
    assert (span.name, span.status) == ("INCRBY", "error")
    assert span.attributes["error.type"] == "redis.exceptions.ResponseError"
    assert span.events[0]["attributes"]["exception.type"] == "redis.exceptions.ResponseError"


def test_failed_command_in_pipeline_without_raise(hooked, r):
    r.set("user:1", SECRET)
    pipe = r.pipeline(transaction=False)
    pipe.incr("user:1").get("user:1")
    reply = pipe.execute(raise_on_error=False)
    assert isinstance(reply[0], redis.exceptions.ResponseError) and reply[1] == SECRET.encode()
    span = client_spans(hooked)[-1]
    assert (span.name, span.status) == ("PIPELINE", "error")
    assert span.attributes["error.type"] == "redis.exceptions.ResponseError"
    assert span.events[0]["attributes"]["exception.escaped"] is False


def refused(port):
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2)
    try:
        with pytest.raises(redis.exceptions.ConnectionError) as info:
            client.get("user:1")
        return info.value
    finally:
        client.close()


def test_connection_refused_is_an_error_and_unchanged(exporter):
    port = free_port()  # nothing listens there
    without = refused(port)
    redis_hook.patch()
    try:
        exc = refused(port)
    finally:
        redis_hook.unpatch()
    assert (type(exc), str(exc)) == (type(without), str(without))
    (span,) = client_spans(exporter)
    assert span.name == "GET" and span.status == "error"
    assert span.attributes["server.port"] == port
    assert span.attributes["error.type"] == "redis.exceptions.ConnectionError"
    assert span.events[0]["attributes"]["exception.message"] == str(exc)


# redis-py 5.0.0 leaks the socket of a failed Unix connect (its bug, with or without us).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unix_socket_path_is_the_server_address(hooked, tmp_path):
    path = str(tmp_path / "none.sock")
    client = redis.Redis(unix_socket_path=path)
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()
    finally:
        client.close()
    (span,) = client_spans(hooked)
    assert span.attributes["server.address"] == path
    assert "server.port" not in span.attributes


def test_database_index_is_the_namespace(hooked, redis_server):
    client = redis.Redis(host=redis_server.host, port=redis_server.port, db=3)
    try:
        client.set("user:1", SECRET)
        client.delete("user:1")
    finally:
        client.close()
    spans = client_spans(hooked)
    assert [s.attributes["db.namespace"] for s in spans] == ["3", "3"]
    assert spans[0].attributes == {
        **base(redis_server, db="3"),
        "db.operation.name": "SET",
        "db.query.text": "SET user:1 ?",
    }


def test_clients_of_two_databases_interleaved_keep_their_own_attributes(hooked, r, redis_server):
    # The attributes a client's commands share are read once per connection
    # pool, and a command name is parsed once: neither may leak between
    # clients or commands.
    other = redis.Redis(host=redis_server.host, port=redis_server.port, db=5)
    try:
        for i in range(3):
            r.set(f"k:{i}", SECRET)
            other.execute_command("get", f"o:{i}")
            r.execute_command("GET", f"k:{i}")
            other.execute_command("GET")  # a server error, raised unchanged below
    except redis.ResponseError:
        pass
    finally:
        other.close()
    got = [
        (s.attributes["db.namespace"], s.attributes.get("db.query.text"))
        for s in client_spans(hooked)
    ]
    assert got == [
        ("0", "SET k:0 ?"),
        ("5", "GET o:0"),
        ("0", "GET k:0"),
        ("5", "GET"),
    ]
    assert_no_secret(client_spans(hooked))


def test_spans_are_children_of_the_current_span(hooked, r, redis_server):
    with pulsetrace.start_span("request"):
        r.get("user:1")
        r.pipeline().set("user:1", "x").execute()

    async def main():
        a = aclient(redis_server)
        try:
            with pulsetrace.start_span("async request"):
                await a.get("user:1")
        finally:
            await aclose(a)

    asyncio.run(main())
    spans = {s.name: s for s in finished(hooked) if s.kind != "client"}
    children = client_spans(hooked)
    assert [c.name for c in children] == ["GET", "MULTI", "GET"]
    assert children[0].parent_span_id == spans["request"].span_id
    assert children[1].parent_span_id == spans["request"].span_id
    assert children[2].parent_span_id == spans["async request"].span_id
    assert children[0].trace_id == spans["request"].trace_id


def test_patch_twice_gives_one_span_per_command(hooked, r):
    redis_hook.patch()
    r.get("user:1")
    r.pipeline().get("user:1").execute()
    assert [s.name for s in client_spans(hooked)] == ["GET", "MULTI"]


def test_unpatch_removes_every_wrapper(exporter, r, redis_server):
    redis_hook.patch()
    redis_hook.unpatch()
    redis_hook.unpatch()
    for cls in (redis.Redis, aioredis.Redis):
        assert not hasattr(cls.execute_command, "__wrapped__")
    assert not hasattr(redis.client.Pipeline.execute, "__wrapped__")
    r.set("user:1", "x")
    r.pipeline().get("user:1").execute()

    async def main():
        a = aclient(redis_server)
        try:
            await a.get("user:1")
        finally:
            await aclose(a)

    asyncio.run(main())
    assert client_spans(exporter) == []


def test_tracing_off_means_no_spans(hooked, r, monkeypatch):
    fresh(enabled=False)
    seen = []
    monkeypatch.setattr(redis_hook, "_split", lambda args: seen.append(args))
    assert r.set("user:1", "x") is True
    assert r.pipeline().get("user:1").execute() == [b"x"]
    assert client_spans(hooked) == []
    assert seen == []  # passed through before any work


def test_pulsetrace_failures_never_break_the_call(hooked, r, monkeypatch, redis_server):
    r.set("user:1", SECRET)

    def broken(*a, **k):
        raise RuntimeError("pulsetrace bug")

    monkeypatch.setattr(redis_hook, "_base", broken)
    assert r.get("user:1") == SECRET.encode()
    assert r.pipeline().get("user:1").execute() == [SECRET.encode()]
    with pytest.raises(redis.exceptions.ResponseError):
        r.incr("user:1")

    async def main():
        a = aclient(redis_server)
        try:
            return await a.get("user:1")
        finally:
            await aclose(a)

    assert asyncio.run(main()) == SECRET.encode()
    assert _diag.internal_errors() == {"redis.start": 4}
    monkeypatch.undo()
    monkeypatch.setattr(redis_hook, "_error_type", broken)
    with pytest.raises(redis.exceptions.ResponseError, match="not an integer"):
        r.incr("user:1")
    assert _diag.internal_errors() == {"redis.start": 4, "redis.end": 1}
    assert [s.name for s in client_spans(hooked)] == ["SET", "INCRBY"]


def test_registry_switches_it_on(exporter, r):
    names = pulsetrace.contrib.instrument(pulsetrace.get_config(), ["redis"])
    try:
        assert names == ["redis"]
        assert "redis" in pulsetrace.contrib.instrumented()
        r.get("user:1")
    finally:
        pulsetrace.contrib.uninstrument(["redis"])
    r.get("user:1")
    assert [s.name for s in client_spans(exporter)] == ["GET"]


LAZY_SCRIPT = r"""
import asyncio, json, sys
import pulsetrace.auto
import pulsetrace
assert "redis" not in sys.modules
pulsetrace.configure(sample_rate=1.0, adaptive_percentile=0.0)
exporter = pulsetrace.InMemorySpanExporter()
pulsetrace.add_exporter(exporter)
import redis.asyncio  # the first import of redis: the hook patches both APIs

async def main():
    a = redis.asyncio.Redis(port=int(sys.argv[1]))
    await a.set("lazy", "1")
    await (a.aclose() if hasattr(a, "aclose") else a.close())

asyncio.run(main())
redis.Redis(port=int(sys.argv[1])).get("lazy")
pulsetrace.flush(timeout=5)
print(json.dumps([[s.name, s.kind] for s in exporter.spans()]))
"""


def test_importing_redis_asyncio_after_auto_patches_both(redis_server):
    env = {**os.environ, "PYTHONPATH": str(Path(pulsetrace.__file__).parents[1])}
    env.pop("PULSETRACE_REDIS_ENABLED", None)
    out = subprocess.run(
        [sys.executable, "-c", LAZY_SCRIPT, str(redis_server.port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == [["SET", "client"], ["GET", "client"]]
