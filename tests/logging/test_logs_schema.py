"""The JSON line: its schema, trace correlation, values that JSON cannot
hold, the five log types and the helpers, the user/company context."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

import pulsetrace
import pulsetrace.logging as plog

from conftest import fresh

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def lines():
    """Every JSON line written from here on (the root logger's handler is
    pulsetrace's), parsed."""
    fresh(
        service_name="api",
        resource_attributes={
            "deployment.environment.name": "production",
            "service.version": "1.0.0",
        },
    )
    buf = io.StringIO()
    plog.configure(stream=buf, level="debug")

    def read() -> list[dict]:
        return [json.loads(x) for x in buf.getvalue().splitlines()]

    yield read
    plog.unconfigure()


def test_a_line_has_the_schema_of_the_description(lines):
    logging.getLogger("campaigns").info(
        "Campaign started successfully",
        extra={"campaignId": "camp_123", "jobsCreated": 1500, "estimatedTime": "15 minutes"},
    )
    (line,) = lines()
    assert list(line) == [
        "@timestamp",
        "level",
        "service",
        "type",
        "message",
        "metadata",
        "tags",
    ]
    assert TIMESTAMP.match(line["@timestamp"]), line["@timestamp"]
    assert line["level"] == "info"
    assert line["service"] == "api"
    assert line["type"] == "application"
    assert line["message"] == "Campaign started successfully"
    assert line["metadata"] == {
        "campaignId": "camp_123",
        "jobsCreated": 1500,
        "estimatedTime": "15 minutes",
    }
    assert line["tags"] == {"environment": "production", "version": "1.0.0"}


def test_the_timestamp_is_the_records_time_in_utc_with_milliseconds(lines):
    log = logging.getLogger("t")
    record = log.makeRecord("t", logging.INFO, "f", 1, "at a fixed time", (), None)
    record.created = 1705314600.0421  # 2024-01-15T10:30:00.042Z
    log.handle(record)
    assert lines()[0]["@timestamp"] == "2024-01-15T10:30:00.042Z"


def test_inside_a_span_the_line_names_its_trace_and_span_outside_it_does_not(lines):
    log = logging.getLogger("t")
    with pulsetrace.start_span("outer") as outer:
        with pulsetrace.start_span("inner") as inner:
            log.info("in inner")
        log.info("in outer")
    log.info("outside")
    a, b, c = lines()
    assert a["trace_id"] == f"{inner.trace_id:032x}" and a["span_id"] == f"{inner.span_id:016x}"
    assert b["trace_id"] == f"{outer.trace_id:032x}" and b["span_id"] == f"{outer.span_id:016x}"
    assert "trace_id" not in c and "span_id" not in c


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_values_json_cannot_hold_are_written_as_their_repr_and_never_raise(lines):
    import datetime

    cycle: list = []
    cycle.append(cycle)
    values = {
        "obj": object(),
        "day": datetime.date(2024, 1, 15),
        "nan": float("nan"),
        "keys": {(1, 2): "tuple key"},
        "cycle": cycle,
        "bad": Unprintable(),
        "bytes": b"\x00\xff",
    }
    logging.getLogger("t").warning("odd values", extra=values)
    (line,) = lines()
    meta = line["metadata"]
    assert meta["obj"].startswith("<object object at 0x")
    assert meta["day"] == "2024-01-15"
    assert meta["nan"] == "nan"
    assert meta["keys"] == {"(1, 2)": "tuple key"}
    assert meta["bytes"] == repr(b"\x00\xff")
    assert meta["bad"] == "<unrepresentable Unprintable>"
    assert isinstance(meta["cycle"], list)
    # A message whose arguments do not fit its format is still a line.
    record = logging.LogRecord("t", logging.INFO, "f", 1, "%d items", ("not a number",), None)
    assert "not a number" in json.loads(plog.JsonFormatter().format(record))["message"]


def test_an_exception_gives_the_error_type_message_and_stack(lines):
    try:
        raise ValueError("invalid campaign")
    except ValueError:
        logging.getLogger("t").exception("sending failed")
    (line,) = lines()
    assert line["level"] == "error" and line["type"] == "error"
    err = line["error"]
    assert err["type"] == "ValueError" and err["message"] == "invalid campaign"
    assert "Traceback" in err["stack"] and "raise ValueError" in err["stack"]


def test_the_five_log_types(lines):
    for t in plog.LOG_TYPES:
        plog.get_logger(t).info("a %s line", t)
    logging.getLogger("anything").info("plain")
    logging.getLogger("anything").error("failed")
    got = [(x["type"], x["message"]) for x in lines()]
    assert got == [
        ("application", "a application line"),
        ("access", "a access line"),
        ("error", "a error line"),
        ("security", "a security line"),
        ("business", "a business line"),
        ("application", "plain"),
        ("error", "failed"),
    ]
    with pytest.raises(ValueError, match="'audit' is not one of application, access"):
        plog.get_logger("audit")


def test_business_performance_and_security_helpers(lines):
    plog.log_business_metric(
        "conversion_rate", 0.15, "percentage", {"campaignId": "camp_123", "period": "daily"}
    )
    plog.log_performance("database_query", 12.5, {"query": "SELECT_CAMPAIGNS"})
    plog.log_security_event("authentication", "failure", {"userId": "user_789"})
    plog.log_security_event("authentication", "success")
    plog.log_security_event("authorization", "denied", {"resource": "/admin"})
    plog.log_security_event("rate_limit", "hit", {"client": "10.0.0.1"})
    business, perf, failed, ok, denied, limited = lines()
    assert business["type"] == "business" and business["level"] == "info"
    assert business["metadata"] == {
        "campaignId": "camp_123",
        "period": "daily",
        "metric": "conversion_rate",
        "value": 0.15,
        "unit": "percentage",
    }
    assert perf["type"] == "application"
    assert perf["metadata"] == {
        "query": "SELECT_CAMPAIGNS",
        "operation": "database_query",
        "duration": 12.5,
    }
    assert [x["type"] for x in (failed, ok, denied, limited)] == ["security"] * 4
    assert [x["level"] for x in (failed, ok, denied, limited)] == [
        "warning",
        "info",
        "warning",
        "warning",
    ]
    assert failed["metadata"] == {
        "userId": "user_789",
        "event": "authentication",
        "outcome": "failure",
    }
    assert limited["metadata"]["event"] == "rate_limit"
    with pytest.raises(ValueError, match="security event 'login' is not one of"):
        plog.log_security_event("login", "failure")
    with pytest.raises(ValueError, match="one of success, failure, not 'maybe'"):
        plog.log_security_event("authentication", "maybe")
    with pytest.raises(TypeError, match="value must be a number"):
        plog.log_business_metric("x", "high", "percentage")


def test_user_and_company_context(lines):
    log = logging.getLogger("t")
    pulsetrace.set_user("user_789")
    pulsetrace.set_company("comp_456")
    log.info("both")
    with pulsetrace.context(user_id="user_1", request_id="req_123456"):
        log.info("inside the block")
    log.info("after the block")
    pulsetrace.set_user(None)
    pulsetrace.set_company(None)
    log.info("cleared")
    both, inside, after, cleared = lines()
    assert (both["userId"], both["companyId"]) == ("user_789", "comp_456")
    assert (inside["userId"], inside["companyId"], inside["requestId"]) == (
        "user_1",
        "comp_456",
        "req_123456",
    )
    assert (after["userId"], after["companyId"]) == ("user_789", "comp_456")
    assert "requestId" not in after
    assert not {"userId", "companyId", "requestId"} & set(cleared)
    with pytest.raises(TypeError, match="user_id must be a str, an int or None, not list"):
        pulsetrace.set_user(["x"])  # type: ignore[arg-type]


def test_values_set_inside_a_trace_end_with_it(lines):
    log = logging.getLogger("t")
    with pulsetrace.start_span("request 1", kind="server"):
        pulsetrace.set_user("user_1")
        log.info("first")
    with pulsetrace.start_span("request 2", kind="server") as second:
        log.info("second")
    first, second_line = lines()
    assert first["userId"] == "user_1"
    assert "userId" not in second_line
    # Outside any request span the request id falls back to nothing; inside
    # one, to the SERVER span's id.
    assert second_line["requestId"] == f"{second.span_id:016x}"
