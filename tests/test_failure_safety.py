"""pulsetrace's own failures never reach the application."""

from __future__ import annotations

import pulsetrace

from conftest import fresh


class Failing:
    def __init__(self):
        self.calls = 0

    def export(self, traces):
        self.calls += 1
        raise RuntimeError("exporter bug")

    def force_flush(self, timeout=30.0):
        return True

    def shutdown(self, timeout=30.0):
        return None


def test_a_raising_exporter_is_counted_and_the_others_still_get_traces(caplog):
    fresh()
    bad, good = Failing(), pulsetrace.InMemorySpanExporter()
    pulsetrace.add_exporter(bad)
    pulsetrace.add_exporter(good)
    try:
        for _ in range(3):
            with pulsetrace.start_span("request"):
                pass
        pulsetrace.flush()
        assert len(good.spans()) == 3
        assert bad.calls >= 1
        c = pulsetrace.counters()
        assert c["export_failures"] >= 1 and c["internal_errors"] >= 1
        # Logged once (with its traceback), then rate limited.
        assert len([r for r in caplog.records if "exporter bug" in r.getMessage()]) == 1
    finally:
        pulsetrace.remove_exporter(bad)
        pulsetrace.remove_exporter(good)


def test_a_token_reset_in_another_context_is_counted_not_raised():
    import contextvars

    fresh()
    span = pulsetrace.start_span("entered elsewhere")
    contextvars.copy_context().run(span.__enter__)
    assert span.__exit__(None, None, None) is False
    assert pulsetrace.counters()["context_reset_failed"] == 1
    assert span.ended


def test_a_wrong_parent_type_is_a_clear_error():
    import pytest

    with pytest.raises(TypeError, match="parent must be a Span or a SpanContext"):
        pulsetrace.start_span("x", parent="not a span")
