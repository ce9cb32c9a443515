"""What the cross-service end-to-end test needs around the services: real
processes under ``pulsetrace-run`` (each in its own process group, stopped by
id however the test ends) and the spans a recording OTLP receiver got,
flattened with the service that sent them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

HERE = Path(__file__).resolve().parent
RUN = shutil.which("pulsetrace-run") or str(Path(sys.executable).with_name("pulsetrace-run"))

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
#: ``Span.flags``: the W3C trace flags, then bit 8 (whether the parent is
#: remote is known) and bit 9 (it is remote).
FLAG_SAMPLED = 0x01
#: W3C level 2: the trace id's last 56 bits are random (set on traces pulsetrace starts).
FLAG_RANDOM = 0x02
FLAG_REMOTE_KNOWN = 0x100
FLAG_REMOTE = 0x200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any pulsetrace or OpenTelemetry setting, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PULSETRACE_", "OTEL_", "FASTAPI_OTEL_"))
        and k not in ("APM_ENABLED", "LOG_LEVEL", "PYTHONPATH")
    }
    env.update(extra)
    return env


class Service:
    """One command under ``pulsetrace-run``, its output in a log file."""

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "wb") as out:
            # Its own session: the workers it forks can be found (and killed)
            # by the group id, which is this process's id.
            self.proc = subprocess.Popen(
                [RUN, *args],
                cwd=HERE,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self, tail: Optional[int] = 4000) -> str:
        """What it wrote so far (the last ``tail`` characters)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return text if tail is None else text[-tail:]

    def wait_for_port(self, port: int, timeout: float) -> None:
        """Until something accepts connections on 127.0.0.1:``port`` (a
        connection only: an HTTP probe would leave traces of its own)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.output()}"
                )
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: nothing on 127.0.0.1:{port}\n{self.output()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to whatever is left of its process group
        (workers that outlived their master, or all of it after ``timeout``)."""
        pid = self.proc.pid
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            self._exited(timeout)
            # Not reaped yet (at most a zombie): its id, the group's, cannot
            # have been reused, so the group is still the one it started.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def _exited(self, timeout: float) -> bool:
        """Wait until it exits, without reaping it (``WNOWAIT``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # reaped already
                return True
            if info is not None or time.monotonic() > deadline:
                return info is not None
            time.sleep(0.02)


# -- what the receiver got ---------------------------------------------------------


def value_of(v: common_pb2.AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return tuple(value_of(x) for x in v.array_value.values)
    return None if which is None else getattr(v, which)


def attributes_of(kvs: Sequence[common_pb2.KeyValue]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        assert kv.key not in out, f"attribute {kv.key} twice"
        out[kv.key] = value_of(kv.value)
    return out


@dataclass(frozen=True)
class Received:
    """One span as a receiver got it, with its resource's attributes."""

    service: str
    resource: dict[str, Any]
    span: trace_pb2.Span

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def kind(self) -> int:
        return self.span.kind

    @property
    def attrs(self) -> dict[str, Any]:
        return attributes_of(self.span.attributes)

    def __repr__(self) -> str:
        return (
            f"<{self.service} {trace_pb2.Span.SpanKind.Name(self.kind)} {self.name!r} "
            f"{self.span_id} parent={self.parent_id or '-'}>"
        )


def received_spans(requests: Sequence[Any]) -> list[Received]:
    out = []
    for request in requests:
        for rs in request.resource_spans:
            resource = attributes_of(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    out.append(Received(str(resource.get("service.name")), resource, span))
    return out


def wait_for_trace(
    receiver: Any, trace_id: str, services: Mapping[str, int], timeout: float = 10.0
) -> list[Received]:
    """The spans of ``trace_id``, once at least ``services[name]`` came from
    each service (or the timeout passed); then a few more export intervals,
    so that a duplicate sent late would be seen too."""
    deadline = time.monotonic() + timeout
    while True:
        spans = [s for s in received_spans(receiver.requests()) if s.trace_id == trace_id]
        complete = all(sum(s.service == name for s in spans) >= n for name, n in services.items())
        if complete or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if complete:
        time.sleep(0.5)
        spans = [s for s in received_spans(receiver.requests()) if s.trace_id == trace_id]
    return spans


def wait_for_span(
    receiver: Any, service: str, kind: int, path: str, timeout: float = 10.0
) -> list[Received]:
    """The SERVER (or other) spans of ``service`` whose ``url.path`` is
    ``path``, once there is one (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            s
            for s in received_spans(receiver.requests())
            if s.service == service and s.kind == kind and s.attrs.get("url.path") == path
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)
