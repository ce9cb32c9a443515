from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import pulsetrace
from pulsetrace import _diag, _runtime

# Real servers (Redis, PostgreSQL, MariaDB) as session fixtures.
pytest_plugins = ["servers"]


def fresh(**overrides: object) -> None:
    """Reconfigure (defaults, every trace kept) and discard what earlier
    tests left in the export queue."""
    # Spans of earlier tests still waiting for garbage collection (a response
    # body a test client dropped) end now, not in the middle of this test.
    gc.collect()
    settings = {"sample_rate": 1.0, "adaptive_percentile": 0.0, **overrides}
    pulsetrace.configure(pulsetrace.Config(), **settings)
    _runtime.tracer().drain(10**9)
    _diag.reset()


@contextlib.contextmanager
def queued_without_exporter() -> Iterator[None]:
    """Kept traces are queued although no exporter is set (normally they
    are discarded then), for a test that takes them itself
    (``_runtime.tracer().drain``) or fills the export queue."""
    # An exporter left by an earlier test would take the traces first: the
    # export thread wakes as soon as a trace is kept. Detached meanwhile.
    left = list(_runtime.exporters())
    for exp in left:
        pulsetrace.remove_exporter(exp)
    t = _runtime.tracer()
    t.exporting = True
    try:
        yield
    finally:
        for exp in left:
            pulsetrace.add_exporter(exp)
        t.exporting = bool(_runtime.exporters())


@pytest.fixture
def queued() -> Iterator[None]:
    """See :func:`queued_without_exporter`."""
    with queued_without_exporter():
        yield


@pytest.fixture
def exporter() -> Iterator[pulsetrace.InMemorySpanExporter]:
    """A fresh agent that keeps every trace, with an in-memory exporter."""
    fresh()
    exp = pulsetrace.InMemorySpanExporter()
    pulsetrace.add_exporter(exp)
    yield exp
    pulsetrace.remove_exporter(exp)
    pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0)


def finished(exp: pulsetrace.InMemorySpanExporter) -> list[pulsetrace.SpanData]:
    """Every span exported so far, after a flush."""
    assert pulsetrace.flush(timeout=5)
    return exp.spans()


# -- shared by the export tests (tests/export/) ------------------------------------------
# The receivers live beside those tests (tests/export/otlp_receivers.py, on
# the import path while they run): imported when a fixture is used.


@pytest.fixture
def grpc_receiver() -> Iterator[Any]:
    """A real OTLP/gRPC receiver on a free loopback port."""
    from otlp_receivers import start_grpc_receiver

    r = start_grpc_receiver()
    yield r
    r.stop()


@pytest.fixture
def http_receiver() -> Iterator[Any]:
    """A real OTLP/HTTP receiver on a free loopback port."""
    from otlp_receivers import start_http_receiver

    r = start_http_receiver()
    yield r
    r.stop()


def export_over_http(receiver: Any, added: list[Any]) -> Any:
    """A pulsetrace OTLP/HTTP exporter to ``receiver``, added (and put in
    ``added``, the fixture that removes it afterwards)."""
    from pulsetrace.export.otlp import config_from_env
    from pulsetrace.export.otlp_exporter import OtlpSpanExporter

    exp = OtlpSpanExporter(
        config_from_env(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            }
        )
    )
    added.append(exp)
    pulsetrace.add_exporter(exp)
    return exp


@pytest.fixture
def added() -> Iterator[list[Any]]:
    """Exporters a test adds, the only ones while it runs (exporters other
    tests' modules added are put back afterwards); removed and shut down
    afterwards."""
    others = list(_runtime.exporters())
    for exp in others:
        pulsetrace.remove_exporter(exp)
    made: list[Any] = []
    yield made
    for exp in made:
        pulsetrace.remove_exporter(exp)
        exp.shutdown(1)
    for exp in others:
        pulsetrace.add_exporter(exp)
    pulsetrace.configure(pulsetrace.Config(), sample_rate=1.0)


def wait_until(check: Callable[[], Any], timeout: float = 5.0, step: float = 0.01) -> Any:
    """Poll ``check`` until it returns something true or ``timeout`` seconds
    pass; its last value (false on a timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)
