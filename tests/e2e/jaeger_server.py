"""A real Jaeger v2 for the tests: the binary ``make jaeger`` builds from its
Go module (``scripts/peers/jaeger/build.sh``), started with a configuration
of the tests' own (in-memory storage; the OTLP gRPC and HTTP receivers and
the query API on free 127.0.0.1 ports), and what its query API answers
(``/api/traces``, the JSON the Jaeger UI shows) as plain span records.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "scripts" / "peers" / "jaeger" / "build.sh"

CONFIG = """\
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: memstore
    # On by default in Jaeger v2: its own traces to localhost:4317, which
    # may be anything on this machine (and it waits for them at exit).
    enable_tracing: false
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
"""


def binary() -> Path:
    """Where ``make jaeger`` puts the binary (the build script says)."""
    out = subprocess.run([str(BUILD), "--path"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class JaegerSpan:
    """One span as Jaeger's query API gives it."""

    trace_id: str
    span_id: str
    name: str
    #: The span id of its ``CHILD_OF`` reference ("" for a root).
    parent_id: str
    #: The trace id of that reference.
    parent_trace_id: str
    service: str
    #: ``span.kind`` and the other tags (attributes, status), by key.
    tags: dict[str, Any]
    #: Events: each a dict of its fields (``event`` is the name).
    logs: list[dict[str, Any]]
    start_us: int
    duration_us: int
    warnings: list[str] = field(default_factory=list)

    @property
    def kind(self) -> Optional[str]:
        return self.tags.get("span.kind")

    def __repr__(self) -> str:
        return (
            f"<{self.service} {self.kind} {self.name!r} {self.span_id} "
            f"parent={self.parent_id or '-'}>"
        )


def _fields(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        assert item["key"] not in out, f"tag {item['key']} twice in {items}"
        out[item["key"]] = item["value"]
    return out


def parse_trace(trace: dict[str, Any]) -> list[JaegerSpan]:
    processes = trace["processes"]
    spans = []
    for s in trace["spans"]:
        refs = [r for r in s.get("references") or [] if r["refType"] == "CHILD_OF"]
        assert len(refs) <= 1, s
        spans.append(
            JaegerSpan(
                trace_id=s["traceID"],
                span_id=s["spanID"],
                name=s["operationName"],
                parent_id=refs[0]["spanID"] if refs else "",
                parent_trace_id=refs[0]["traceID"] if refs else "",
                service=processes[s["processID"]]["serviceName"],
                tags=_fields(s.get("tags") or []),
                logs=[_fields(log["fields"]) for log in s.get("logs") or []],
                start_us=s["startTime"],
                duration_us=s["duration"],
                warnings=s.get("warnings") or [],
            )
        )
    return spans


class Jaeger:
    """One Jaeger process; ``restart`` gives a new one on the same ports
    (its memory storage starts empty)."""

    def __init__(
        self,
        folder: Path,
        config: Optional[Callable[[dict[str, int]], str]] = None,
        env: Optional[dict[str, str]] = None,
    ) -> None:
        """``config``: the configuration's text for the ports chosen (default:
        the tests' own, ``CONFIG``); ``env``: variables added to Jaeger's."""
        self.binary = binary()
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(
                f"Jaeger is not built ({self.binary} is missing): run `make jaeger` "
                f"(scripts/peers/jaeger/build.sh; it needs the Go toolchain)"
            )
        self.folder = folder
        names = ("otlp_grpc", "otlp_http", "query", "query_grpc", "metrics", "health")
        self.ports = {name: free_port() for name in names}
        while len(set(self.ports.values())) < len(self.ports):
            self.ports = {name: free_port() for name in self.ports}
        self.config = folder / "jaeger.yaml"
        self.config.write_text(config(self.ports) if config else CONFIG.format(**self.ports))
        self.env = {**os.environ, **(env or {})}
        self.log = folder / "jaeger.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.starts = 0

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['otlp_grpc']}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['otlp_http']}"

    def output(self, tail: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"--- start {self.starts} ---\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [str(self.binary), "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        # Ready: the query API answers and both receivers accept connections.
        while not (
            self._answers() and all(listening(self.ports[p]) for p in ("otlp_grpc", "otlp_http"))
        ):
            if self.proc.poll() is not None:
                raise RuntimeError(f"jaeger exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"jaeger not ready in {timeout} s:\n{self.output()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 15 s), and until every port is free again."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        deadline = time.monotonic() + 10
        while any(listening(p) for p in self.ports.values()):
            assert time.monotonic() < deadline, f"jaeger's ports still taken: {self.ports}"
            time.sleep(0.05)

    def _answers(self) -> bool:
        with contextlib.suppress(OSError):
            return self.get("/api/services") is not None
        return False

    def get(self, path: str, **query: str) -> Optional[Any]:
        """The query API's JSON for ``path`` (None on a 404)."""
        url = f"http://127.0.0.1:{self.ports['query']}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 404:
                return None
            raise

    def services(self) -> list[str]:
        answer = self.get("/api/services")
        return list((answer or {}).get("data") or [])

    def trace(self, trace_id: str) -> list[JaegerSpan]:
        """The spans of one trace ([] while Jaeger has none of it)."""
        answer = self.get(f"/api/traces/{trace_id}")
        if answer is None or not answer.get("data"):
            return []
        (trace,) = answer["data"]
        return parse_trace(trace)

    def find(self, service: str, operation: str) -> list[list[JaegerSpan]]:
        """The traces Jaeger's search finds for ``service`` and ``operation``."""
        answer = self.get("/api/traces", service=service, operation=operation, limit="100")
        return [parse_trace(t) for t in (answer or {}).get("data") or []]

    def wait_for_trace(self, trace_id: str, spans: int, timeout: float = 20.0) -> list[JaegerSpan]:
        """The spans of ``trace_id`` once there are at least ``spans`` (or the
        timeout passed); then a few export intervals more, so that a span
        sent twice, or late, would be seen too."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.trace(trace_id)
            if len(found) >= spans:
                time.sleep(1.5)
                return self.trace(trace_id)
            if time.monotonic() > deadline:
                return found
            time.sleep(0.1)
