"""Span attributes given as a tuple of ``(key, value)`` pairs (what the SQL
hooks pass, one tuple per statement, the same object every time): the same
attributes as the dict form, converted once while nothing could have
changed, and anew whenever something could (limits, mutable values)."""

from __future__ import annotations

import pulsetrace
from pulsetrace import _runtime

from conftest import finished, fresh

PAIRS = (
    ("db.system.name", "sqlite"),
    ("db.query.text", "SELECT id FROM items WHERE id = ?"),
    ("db.operation.name", "SELECT"),
    ("db.response.rows_affected", 3),
    ("ratio", 0.5),
    ("cached", True),
)


def spans_with(attributes, n=3):
    tracer = _runtime.tracer()
    for _ in range(n):
        tracer.start_span("SELECT items", kind="client", attributes=attributes).end()


def test_pairs_are_the_dict_form_every_time(exporter):
    spans_with(PAIRS)
    spans_with(dict(PAIRS))
    spans = finished(exporter)
    assert len(spans) == 6
    assert all(s.attributes == dict(PAIRS) for s in spans)
    assert pulsetrace.counters()["attributes_dropped"] == 0


def test_a_new_length_limit_applies_to_a_tuple_seen_before(exporter):
    spans_with(PAIRS)  # converted (and kept) under the default limit
    fresh(max_attribute_length=16)
    exp = pulsetrace.InMemorySpanExporter()
    pulsetrace.add_exporter(exp)
    try:
        spans_with(PAIRS)
        spans = finished(exp)
    finally:
        pulsetrace.remove_exporter(exp)
    assert [s.attributes["db.query.text"] for s in spans] == ["SELECT id FROM i"] * 3
    # Counted on every span, not once for the converted tuple (at least 3: in
    # the full suite a span an earlier test left open may end under the new
    # limit too; seen once as 5 on a loaded machine).
    assert pulsetrace.counters()["attributes_truncated"] >= 3


def test_mutable_values_are_read_anew(exporter):
    values = [1, 2]
    pairs = (("db.system.name", "sqlite"), ("ids", values))
    spans_with(pairs, 1)
    values.append(3)
    spans_with(pairs, 1)
    assert [s.attributes["ids"] for s in finished(exporter)] == [(1, 2), (1, 2, 3)]


def test_items_that_are_not_pairs_are_dropped_and_counted(exporter):
    spans_with((("a", "x"), "not a pair", ("b", 1, 2), ("c", 3)), 2)
    spans = finished(exporter)
    assert [s.attributes for s in spans] == [{"a": "x", "c": 3}] * 2
    assert pulsetrace.counters()["attributes_dropped"] == 4
