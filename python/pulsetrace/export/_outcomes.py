"""What became of the spans handed to the exporters, counted for the
process: ``spans_delivered`` / ``spans_delivery_failed`` (a span sent to two
exporters counts twice), ``export_failures`` (batches an exporter could not
deliver in full) and ``spans_oversized`` (spans each too large for an OTLP
request). An exporter reports through its ``export`` result, or
(``ExportResult.QUEUED``) itself, once it knows (:func:`record_delivery`).
Reset with a new configuration and in a forked child, as the core's
counters are."""

from __future__ import annotations

import threading

from pulsetrace import _diag

_lock = threading.Lock()
_delivery = {"spans_delivered": 0, "spans_delivery_failed": 0}
_export_failures = 0
_oversized_spans = 0


def record_delivery(delivered: int, failed: int) -> None:
    """An exporter's outcome: ``delivered`` spans reached their destination,
    ``failed`` did not (refused, lost, timed out)."""
    with _lock:
        _delivery["spans_delivered"] += delivered
        _delivery["spans_delivery_failed"] += failed


def deliveries() -> dict[str, int]:
    """``spans_delivered`` and ``spans_delivery_failed`` so far."""
    with _lock:
        return dict(_delivery)


def count_export_failure() -> None:
    """An exporter failed to deliver some of a batch (``export_failures``)."""
    global _export_failures
    with _lock:
        _export_failures += 1


def export_failures() -> int:
    return _export_failures


def note_oversized(spans: int, limit: object) -> None:
    """``spans`` spans of a batch were each too large for an OTLP request of
    ``limit`` bytes (PULSETRACE_EXPORT_MAX_REQUEST_BYTES): counted, and the
    first time logged. The exporters count them as not delivered."""
    global _oversized_spans
    with _lock:
        first = _oversized_spans == 0
        _oversized_spans += spans
    if first:
        _diag.log.warning(
            "pulsetrace: %d spans were each larger than PULSETRACE_EXPORT_MAX_REQUEST_BYTES "
            "(%s bytes) once encoded and were dropped (further ones are only counted)",
            spans,
            limit,
        )


def oversized_spans() -> int:
    """Spans dropped because each alone exceeded the OTLP request bound."""
    return _oversized_spans


def reset_deliveries(after_fork: bool = False) -> None:
    """A new configuration (or a forked child) counts deliveries afresh."""
    global _lock
    if after_fork:
        _lock = threading.Lock()  # the parent's may have been held at the fork
    with _lock:
        _delivery.update(dict.fromkeys(_delivery, 0))
