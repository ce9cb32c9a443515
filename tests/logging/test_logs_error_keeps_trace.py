"""An ERROR line written inside a span keeps its trace, so the trace of an
error log line is always there: exported to a real OTLP/HTTP receiver even
at a sample rate of 0 (keep reason ``error_log``, counted)."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest

import pulsetrace
import pulsetrace.logging as plog

from conftest import export_over_http, fresh

# The receivers live beside the export tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))

log = logging.getLogger("payments")


@pytest.fixture
def receiver(http_receiver, added):
    fresh(sample_rate=0.0, export_interval_ms=60_000)
    export_over_http(http_receiver, added)
    buf = io.StringIO()
    plog.configure(stream=buf)
    yield http_receiver, buf
    plog.unconfigure()


def exported_trace_ids(http_receiver) -> set[str]:
    from otlp_receivers import spans_of

    return {t.hex() for r in http_receiver.requests() for _, t, _ in spans_of(r)}


def test_an_error_line_keeps_its_trace_and_a_warning_does_not(receiver):
    http_receiver, buf = receiver
    with pulsetrace.start_span("GET /pay", kind="server"):
        with pulsetrace.start_span("charge card"):
            log.error("card declined", extra={"orderId": "o_1"})
    with pulsetrace.start_span("GET /browse", kind="server"):
        log.warning("slow catalogue")
    assert pulsetrace.flush(5)
    error_line, warning_line = (json.loads(x) for x in buf.getvalue().splitlines())
    kept = exported_trace_ids(http_receiver)
    assert error_line["trace_id"] in kept
    assert warning_line["trace_id"] not in kept
    counters = pulsetrace.counters()
    assert counters["traces_kept_error_log"] == 1
    assert counters["traces_dropped_sampled_out"] == 1


def test_the_kept_span_carries_the_error_as_an_event(exporter):
    fresh(sample_rate=0.0)
    buf = io.StringIO()
    plog.configure(stream=buf)
    try:
        with pulsetrace.start_span("job"):
            log.critical("ledger out of balance")
        assert pulsetrace.flush(5)
        (span,) = exporter.spans()
    finally:
        plog.unconfigure()
    assert span.keep_reason == "error_log"
    (event,) = span.events
    assert event["name"] == "log"
    assert event["attributes"] == {
        "log.severity_number": 21,
        "log.message": "ledger out of balance",
    }
