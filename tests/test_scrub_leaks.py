"""Personal data that reached the exported spans before the scrubber, one
test per leak, and an end-to-end request through a Flask app to a real OTLP
receiver whose exported bytes, and whose JSON log lines, hold none of what
the request carried.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

import pulsetrace
import pulsetrace.logging as plog
from export.otlp_receivers import start_http_receiver
from pulsetrace.contrib import _sql
from pulsetrace.contrib import flask as flask_hook
from pulsetrace.contrib import redis as redis_hook
from pulsetrace.contrib import requests as requests_hook
from pulsetrace.contrib import sqlite3 as sqlite3_hook
from pulsetrace.export.otlp import config_from_env
from pulsetrace.export.otlp_exporter import OtlpSpanExporter

from conftest import finished, fresh
from contrib.http_echo_server import EchoServer

flask = pytest.importorskip("flask")

PHONE = "+5511987654321"
EMAIL = "maria.silva@example.com"
CARD = "4111111111111111"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXZhbHVl"
LEAKED_QUERY = "email=a@b.com&ssn=123-45-6789&credit_card=4111111111111111&pass=shortpass"
#: What must appear nowhere in an export (the phone's digits, the address's
#: local part, the query's values).
SECRETS = (
    "5511987654321",
    "maria.silva",
    CARD,
    TOKEN,
    "eyJzdWIiOiIxMjMifQ",
    "a@b.com",
    "123-45-6789",
    "shortpass",
)


def assert_clean(text: str) -> None:
    found = [s for s in SECRETS if s in text]
    assert not found, f"{found} in {text!r}"


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    s = EchoServer().start()
    yield s
    s.stop()


@pytest.fixture
def hooks(redis_server) -> Iterator[None]:
    for hook in (flask_hook, requests_hook, sqlite3_hook, redis_hook):
        hook.patch()
    yield
    for hook in (flask_hook, requests_hook, sqlite3_hook, redis_hook):
        hook.unpatch()


def make_app(echo: EchoServer, redis_server: Any) -> Any:
    app = flask.Flask("scrub_leaks")

    @app.route("/contacts/<path:who>")
    def contact(who: str) -> Any:
        db = sqlite3.connect(":memory:")
        db.execute("CREATE TABLE users (email TEXT, phone TEXT)")
        db.execute(f"SELECT * FROM users WHERE email = \"{EMAIL}\" AND phone = '{PHONE}'")
        db.close()
        requests.get(
            echo.url(f"/status/200?email={EMAIL}&card={CARD}&to=%2B5511987654321"),
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        )
        r = redis.Redis(host=redis_server.host, port=redis_server.port)
        r.get(f"session:{TOKEN}")
        r.close()
        logging.getLogger("contacts").warning(
            "contact %s reached at %s, card %s",
            EMAIL,
            PHONE,
            CARD,
            extra={"authorization": f"Bearer {TOKEN}", "query": LEAKED_QUERY},
        )
        with pulsetrace.start_span("notify", kind="internal") as span:
            try:
                raise ValueError(f"cannot deliver to {PHONE} ({EMAIL}), card {CARD}")
            except ValueError as exc:
                span.record_exception(exc)
                span.set_status("error", f"failed for {EMAIL} with token {TOKEN}")
        return {"ok": True}

    return app


def request(app: Any) -> int:
    with app.test_client() as c:
        r = c.get(
            f"/contacts/{EMAIL}/{PHONE}?{LEAKED_QUERY}&phone=%2B5511987654321",
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "User-Agent": f"WhatsAppBot/2.0 (ops {EMAIL}; {PHONE}) token {TOKEN}",
            },
        )
        r.close()
        return r.status_code


def attrs(span: Any) -> dict[str, Any]:
    return {kv.key: kv.value.string_value or kv.value.int_value for kv in span.attributes}


def test_end_to_end_a_flask_request_exports_none_of_its_personal_data(hooks, echo, redis_server):
    receiver = start_http_receiver()
    exporter = OtlpSpanExporter(
        config_from_env(
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            }
        )
    )
    logs = io.StringIO()
    try:
        fresh(redis_obfuscate_keys=True)
        plog.configure(stream=logs)
        pulsetrace.add_exporter(exporter)
        assert request(make_app(echo, redis_server)) == 200
        assert pulsetrace.flush(5)
        bodies = [r.body for r in receiver.received]
        assert bodies, "the receiver got the trace"
        # Nothing, anywhere in the bytes sent.
        assert_clean(b"".join(bodies).decode("utf-8", "replace"))
        spans = [
            s
            for r in receiver.received
            for rs in r.request.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
        ]
    finally:
        plog.unconfigure()
        pulsetrace.remove_exporter(exporter)
        exporter.shutdown(1)
        receiver.stop()
        pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0)
    # The log line: written, with its trace, and none of the data.
    (line,) = [json.loads(x) for x in logs.getvalue().splitlines() if "contact" in x]
    assert_clean(json.dumps(line))
    assert line["message"] == (
        "contact m**********@example.com reached at +55*********21, card ************1111"
    )
    assert line["metadata"]["authorization"] == "REDACTED"
    assert line["trace_id"] == f"{spans[0].trace_id.hex()}"
    # And what each span carries is still there, scrubbed.
    by_name = {s.name: s for s in spans}
    server = attrs(by_name["GET /contacts/<path:who>"])
    assert server["url.path"] == "/contacts/m**********@example.com/+55*********21"
    assert server["url.query"] == (
        "email=*@b.com&ssn=REDACTED&credit_card=REDACTED&pass=REDACTED&phone=%2B55*********21"
    )
    assert server["user_agent.original"].startswith("WhatsAppBot/2.0 (ops m**********@example")
    client = attrs(next(s for s in spans if s.kind == 3 and attrs(s).get("url.full")))
    assert "email=m**********@example.com&card=************1111" in client["url.full"]
    sql = next(
        attrs(s)
        for s in spans
        if attrs(s).get("db.system.name") == "sqlite" and "SELECT" in attrs(s)["db.query.text"]
    )
    assert sql["db.query.text"] == "SELECT * FROM users WHERE email = ? AND phone = ?"
    cache = next(attrs(s) for s in spans if attrs(s).get("db.system.name") == "redis")
    assert cache["db.query.text"] == "GET ?"
    notify = by_name["notify"]
    assert notify.status.message == "failed for m**********@example.com with token REDACTED"
    (event,) = notify.events
    message = attrs(event)["exception.message"]
    assert (
        message
        == "cannot deliver to +55*********21 (m**********@example.com), card ************1111"
    )
    assert "ValueError" in attrs(event)["exception.stacktrace"]


# -- each leak on its own (in-memory exporter: the SpanData path) ----------------------


@pytest.fixture
def flask_app(exporter) -> Iterator[Any]:
    flask_hook.patch()
    app = flask.Flask("scrub_leak")

    @app.route("/users/<int:uid>")
    def user(uid: int) -> Any:
        return {"id": uid}

    yield app
    flask_hook.unpatch()


def test_query_values_are_caught_by_their_content(flask_app, exporter):
    with flask_app.test_client() as c:
        c.get(f"/users/1?{LEAKED_QUERY}").close()
    (span,) = [s for s in finished(exporter) if s.kind == "server"]
    assert span.attributes["url.query"] == (
        "email=*@b.com&ssn=REDACTED&credit_card=REDACTED&pass=REDACTED"
    )


def test_user_agent_is_scrubbed(flask_app, exporter):
    with flask_app.test_client() as c:
        c.get("/users/1", headers={"User-Agent": f"bot/1 ({EMAIL}) {TOKEN}"}).close()
    (span,) = [s for s in finished(exporter) if s.kind == "server"]
    assert span.attributes["user_agent.original"] == "bot/1 (m**********@example.com) REDACTED"


def test_outbound_url_full_values_are_caught_by_their_content(exporter, echo):
    requests_hook.patch()
    try:
        requests.get(echo.url(f"/status/200?{LEAKED_QUERY}"), timeout=5).close()
    finally:
        requests_hook.unpatch()
    (span,) = [s for s in finished(exporter) if s.kind == "client"]
    assert span.attributes["url.full"] == echo.url(
        "/status/200?email=*@b.com&ssn=REDACTED&credit_card=REDACTED&pass=REDACTED"
    )


def test_sqlite_double_quoted_literal_is_obfuscated(exporter):
    sqlite3_hook.patch()
    try:
        db = sqlite3.connect(":memory:")
        db.execute("CREATE TABLE users (email TEXT)")
        db.execute('SELECT * FROM "users" WHERE email = "a@b.com"').fetchall()
        db.close()
    finally:
        sqlite3_hook.unpatch()
    texts = [s.attributes["db.query.text"] for s in finished(exporter)]
    assert 'SELECT * FROM "users" WHERE email = ?' in texts


def test_mysql_double_quoted_literal_is_obfuscated():
    text, op, table = _sql.summarize('SELECT id FROM users WHERE email = "a@b.com"', "mysql")
    assert (text, op, table) == ("SELECT id FROM users WHERE email = ?", "SELECT", "users")
    # PostgreSQL reads "x" as an identifier: kept.
    text, _, _ = _sql.summarize('SELECT "email" FROM users', "postgresql")
    assert text == 'SELECT "email" FROM users'


@pytest.mark.parametrize(
    ("obfuscate", "key", "want"),
    [
        (True, "session:abc", "GET ?"),
        (True, "user:42", "GET ?"),
        # Without the option the scrubber still reads a session key as a secret.
        (False, "session:abc", "GET session:REDACTED"),
        (False, "user:42", "GET user:42"),
    ],
)
def test_redis_key_names_can_be_obfuscated(redis_server, obfuscate, key, want):
    fresh(redis_obfuscate_keys=obfuscate)
    exp = pulsetrace.InMemorySpanExporter()
    pulsetrace.add_exporter(exp)
    redis_hook.patch()
    try:
        r = redis.Redis(host=redis_server.host, port=redis_server.port)
        r.get(key)
        r.close()
        (span,) = [s for s in finished(exp) if s.kind == "client"]
    finally:
        redis_hook.unpatch()
        pulsetrace.remove_exporter(exp)
        pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0)
    assert span.attributes["db.query.text"] == want
