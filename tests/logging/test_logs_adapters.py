"""structlog and loguru users get the same lines."""

from __future__ import annotations

import io
import json

import pytest

import pulsetrace
from pulsetrace.logging import adapters

from conftest import fresh

structlog = pytest.importorskip("structlog")
loguru = pytest.importorskip("loguru")


@pytest.fixture(autouse=True)
def agent():
    fresh(service_name="api", resource_attributes={"service.version": "2.1"})
    adapters._formatter = None  # the formatter reads the configuration once


def test_structlog_lines_have_the_schema_and_the_trace():
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.add_log_level, adapters.structlog_renderer],
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    try:
        log = structlog.get_logger()
        with pulsetrace.start_span("GET /campaigns", kind="server") as span:
            pulsetrace.set_user("user_789")
            log.info("Campaign started successfully", campaignId="camp_123", jobsCreated=1500)
            try:
                raise KeyError("camp_9")
            except KeyError:
                log.exception("lookup failed")
        log.warning("outside", odd=object())
    finally:
        structlog.reset_defaults()
    ok, failed, outside = (json.loads(x) for x in out.getvalue().splitlines())
    assert ok["level"] == "info" and ok["service"] == "api" and ok["type"] == "application"
    assert ok["message"] == "Campaign started successfully"
    assert ok["metadata"] == {"campaignId": "camp_123", "jobsCreated": 1500}
    assert ok["userId"] == "user_789" and ok["tags"] == {"version": "2.1"}
    assert ok["trace_id"] == f"{span.trace_id:032x}" and ok["span_id"] == f"{span.span_id:016x}"
    assert ok["requestId"] == f"{span.span_id:016x}"
    assert failed["level"] == "error" and failed["error"]["type"] == "KeyError"
    assert "Traceback" in failed["error"]["stack"]
    assert "trace_id" not in outside and outside["metadata"]["odd"].startswith("<object")


def test_loguru_lines_have_the_schema_and_the_trace():
    from loguru import logger

    out = io.StringIO()
    logger.remove()
    logger.configure(patcher=adapters.loguru_patcher)
    sink_id = logger.add(lambda m: adapters.loguru_sink(m, out), level="DEBUG")
    try:
        with pulsetrace.start_span("worker job") as span:
            pulsetrace.set_company("comp_456")
            logger.bind(campaignId="camp_123").success("sent {n} messages", n=3)
            try:
                raise ZeroDivisionError("division by zero")
            except ZeroDivisionError:
                logger.exception("division")
        logger.debug("outside")
    finally:
        logger.remove(sink_id)
        logger.configure(patcher=None)
    ok, failed, outside = (json.loads(x) for x in out.getvalue().splitlines())
    assert ok["level"] == "info" and ok["service"] == "api"
    assert ok["message"] == "sent 3 messages"
    assert ok["metadata"]["campaignId"] == "camp_123"
    assert ok["companyId"] == "comp_456"
    assert ok["trace_id"] == f"{span.trace_id:032x}" and ok["span_id"] == f"{span.span_id:016x}"
    assert failed["level"] == "error" and failed["error"]["type"] == "ZeroDivisionError"
    assert outside["level"] == "debug" and "trace_id" not in outside
