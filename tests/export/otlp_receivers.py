"""Real OTLP receivers for the transport tests: a gRPC TraceService and an
HTTP ``/v1/traces`` endpoint on 127.0.0.1, both recording what they get and
answering as a test scripts them; TLS certificates made on the spot; the
rotel collector binary that the ``rotel`` wheel ships.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import ipaddress
import os
import select
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

ExportRequest = trace_service_pb2.ExportTraceServiceRequest
ExportResponse = trace_service_pb2.ExportTraceServiceResponse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections refused)."""
    return free_port()


def make_request(names: Iterable[str], service: str = "svc") -> ExportRequest:
    """An ExportTraceServiceRequest with one span per name (distinct ids)."""
    spans = []
    for i, name in enumerate(names):
        spans.append(
            trace_pb2.Span(
                trace_id=(0x0AF7651916CD43DD8448EB211C80319C + i).to_bytes(16, "big"),
                span_id=(0xB7AD6B7169203331 + i).to_bytes(8, "big"),
                name=name,
                kind=trace_pb2.Span.SPAN_KIND_SERVER,
                start_time_unix_nano=1_700_000_000_000_000_000 + i,
                end_time_unix_nano=1_700_000_000_100_000_000 + i,
                attributes=[
                    common_pb2.KeyValue(key="i", value=common_pb2.AnyValue(int_value=i)),
                ],
            )
        )
    resource = resource_pb2.Resource(
        attributes=[
            common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value=service))
        ]
    )
    return ExportRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource, scope_spans=[trace_pb2.ScopeSpans(spans=spans)]
            )
        ]
    )


def spans_of(request: ExportRequest) -> list[tuple[str, bytes, bytes]]:
    """(name, trace_id, span_id) of every span in a request."""
    return [
        (s.name, s.trace_id, s.span_id)
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]


def status_details(code: int, message: str, retry_delay_s: Optional[float]) -> bytes:
    """A serialized google.rpc.Status, with a RetryInfo when a delay is given."""
    details = []
    if retry_delay_s is not None:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(int(retry_delay_s * 1e9))
        packed = any_pb2.Any()
        packed.Pack(info)
        details.append(packed)
    return status_pb2.Status(code=code, message=message, details=details).SerializeToString()


# -- silence ----------------------------------------------------------------------


class Silence:
    """A receiver's silent mode: while silent it accepts connections and
    reads requests but neither answers nor records them; once told to
    answer again, a request whose client is still waiting is answered (and
    recorded) as usual, one whose client gave up (its deadline passed,
    connection closed) is dropped unrecorded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._silent = False
        self._stopping = False
        self._released = threading.Event()
        self.held = 0  # requests that arrived while silent
        self.dropped = 0  # of which dropped: their client had gone

    def go_silent(self) -> None:
        with self._lock:
            self._silent = True
            self._released.clear()

    def answer_again(self) -> None:
        with self._lock:
            self._silent = False
            self._released.set()

    def release_all(self) -> None:
        """At stop: every held request ends, unanswered."""
        with self._lock:
            self._stopping = True
            self._released.set()

    def hold(self, gone: Callable[[], bool]) -> bool:
        """In a request handler, before it answers: waits while silent.
        True when the request is not to be answered (its client gone)."""
        with self._lock:
            if not self._silent:
                return False
            self.held += 1
        while not self._released.wait(0.02):
            if gone():
                break
        drop = self._stopping or gone()
        if drop:
            with self._lock:
                self.dropped += 1
        return drop


def peer_closed(conn: socket.socket) -> bool:
    """The client closed (or reset) a connection that waits for an answer:
    it sends nothing more on it before the answer, so readable means EOF."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


# -- gRPC receiver ----------------------------------------------------------------


@dataclass
class GrpcAnswer:
    """One scripted answer: an error code (with an optional RetryInfo
    delay), a partial success, or a delay before answering OK."""

    code: Optional[grpc.StatusCode] = None
    message: str = "scripted failure"
    retry_delay_s: Optional[float] = None
    rejected_spans: int = 0
    sleep_s: float = 0.0


@dataclass
class GrpcReceived:
    request: ExportRequest
    metadata: dict[str, Any]
    at: float


@dataclass
class GrpcReceiver:
    port: int
    server: Any
    received: list[GrpcReceived] = field(default_factory=list)
    answers: list[GrpcAnswer] = field(default_factory=list)
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    silence: Silence = field(default_factory=Silence)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *answers: GrpcAnswer) -> None:
        with self.lock:
            self.answers.extend(answers)

    def requests(self) -> list[ExportRequest]:
        with self.lock:
            return [r.request for r in self.received]

    def wait_for_spans(self, count: int, timeout: float = 10.0) -> list[tuple[str, bytes, bytes]]:
        deadline = time.monotonic() + timeout
        while True:
            spans = [s for r in self.requests() for s in spans_of(r)]
            if len(spans) >= count or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)

    def stop(self) -> None:
        self.silence.release_all()
        self.server.stop(None).wait(5)


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: Callable[[], GrpcReceiver]) -> None:
        self._receiver = receiver

    def Export(self, request: ExportRequest, context: Any) -> ExportResponse:
        r = self._receiver()
        if r.silence.hold(lambda: not context.is_active()):
            context.abort(grpc.StatusCode.CANCELLED, "the client gave up")
        with r.lock:
            r.calls += 1
            answer = r.answers.pop(0) if r.answers else GrpcAnswer()
        if answer.sleep_s:
            time.sleep(answer.sleep_s)
        if answer.code is not None:
            if answer.retry_delay_s is not None:
                details = status_details(answer.code.value[0], answer.message, answer.retry_delay_s)
                context.set_trailing_metadata((("grpc-status-details-bin", details),))
            context.abort(answer.code, answer.message)
        with r.lock:
            r.received.append(
                GrpcReceived(
                    request=request,
                    metadata={m.key: m.value for m in context.invocation_metadata()},
                    at=time.monotonic(),
                )
            )
        partial = trace_service_pb2.ExportTracePartialSuccess(
            rejected_spans=answer.rejected_spans,
            error_message="some spans rejected" if answer.rejected_spans else "",
        )
        return ExportResponse(partial_success=partial)


def start_grpc_receiver(
    port: int = 0,
    credentials: Optional[grpc.ServerCredentials] = None,
    options: Optional[list[tuple[str, Any]]] = None,
) -> GrpcReceiver:
    holder: list[GrpcReceiver] = []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options or [])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(lambda: holder[0]), server)
    address = f"127.0.0.1:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    receiver = GrpcReceiver(port=bound, server=server)
    holder.append(receiver)
    server.start()
    return receiver


# -- HTTP receiver ----------------------------------------------------------------


@dataclass
class HttpAnswer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Optional[bytes] = None  # default: an ExportTraceServiceResponse
    rejected_spans: int = 0
    delay: float = 0.0  # seconds before answering (a slow collector)


@dataclass
class HttpReceived:
    path: str
    headers: dict[str, str]  # lowercased names
    raw_body: bytes
    body: bytes  # gunzipped when Content-Encoding: gzip
    at: float

    @property
    def request(self) -> ExportRequest:
        return ExportRequest.FromString(self.body)


class HttpReceiver:
    def __init__(self, server: ThreadingHTTPServer, tls: bool) -> None:
        self.server = server
        self.port = int(server.server_address[1])
        self.tls = tls
        self.lock = threading.Lock()
        self.received: list[HttpReceived] = []
        self.answers: list[HttpAnswer] = []
        self.calls = 0
        self.connections: set[tuple[str, int]] = set()
        self.silence = Silence()
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """The generic endpoint (the transport appends /v1/traces)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def traces_url(self) -> str:
        return self.endpoint + "/v1/traces"

    def script(self, *answers: HttpAnswer) -> None:
        with self.lock:
            self.answers.extend(answers)

    def requests(self) -> list[ExportRequest]:
        with self.lock:
            return [r.request for r in self.received]

    def stop(self) -> None:
        self.silence.release_all()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def _handler(
    receiver_ref: list[HttpReceiver], idle_timeout: Optional[float]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as collectors do
        timeout = idle_timeout  # then an idle kept-alive connection is closed

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            r = receiver_ref[0]
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            if r.silence.hold(lambda: peer_closed(self.connection)):
                self.close_connection = True
                return
            with r.lock:
                r.calls += 1
                r.connections.add(self.client_address)
                answer = r.answers.pop(0) if r.answers else HttpAnswer()
            if self.path != "/v1/traces":
                answer = HttpAnswer(status=404, body=b"not found")
            if answer.delay:
                time.sleep(answer.delay)
            if answer.status == 200:
                body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
                with r.lock:
                    r.received.append(
                        HttpReceived(self.path, headers, raw, body, at=time.monotonic())
                    )
            out = answer.body
            if out is None:
                partial = trace_service_pb2.ExportTracePartialSuccess(
                    rejected_spans=answer.rejected_spans
                )
                out = ExportResponse(partial_success=partial).SerializeToString()
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(out)))
            for k, v in answer.headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(out)

    return Handler


def start_http_receiver(
    tls_context: Optional[ssl.SSLContext] = None, idle_timeout: Optional[float] = None
) -> HttpReceiver:
    ref: list[HttpReceiver] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(ref, idle_timeout))
    server.daemon_threads = True
    if tls_context is not None:
        server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    receiver = HttpReceiver(server, tls=tls_context is not None)
    ref.append(receiver)
    return receiver


# -- TLS ------------------------------------------------------------------------


@dataclass
class Certs:
    ca_pem: bytes
    ca_file: Path
    cert_pem: bytes
    key_pem: bytes
    cert_file: Path
    key_file: Path


def make_certs(folder: Path) -> Certs:
    """A CA and a server certificate it signed, for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pulsetrace test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    paths = {name: folder / name for name in ("ca.pem", "server.pem", "server.key")}
    paths["ca.pem"].write_bytes(ca_pem)
    paths["server.pem"].write_bytes(cert_pem)
    paths["server.key"].write_bytes(key_pem)
    return Certs(
        ca_pem, paths["ca.pem"], cert_pem, key_pem, paths["server.pem"], paths["server.key"]
    )


def server_tls_context(certs: Certs) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.cert_file, certs.key_file)
    return ctx


# -- rotel ----------------------------------------------------------------------


def rotel_binary() -> Path:
    """The collector binary inside the ``rotel`` wheel (a missing wheel is a
    failure, not a skip)."""
    import rotel

    path = Path(rotel.__file__).parent / "rotel-agent"
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"rotel-agent is not an executable at {path}")
    return path


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rotel-agent exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


@contextlib.contextmanager
def run_rotel(forward_to: str, folder: Path) -> Iterator[tuple[int, int]]:
    """The real ``rotel-agent`` collector receiving OTLP on 127.0.0.1
    (gRPC port, HTTP port) and forwarding to ``forward_to``; stopped after."""
    grpc_port, http_port = free_port(), free_port()
    with open(folder / "rotel.out", "wb") as out:
        proc = subprocess.Popen(
            [
                str(rotel_binary()),
                "start",
                "--otlp-grpc-endpoint",
                f"127.0.0.1:{grpc_port}",
                "--otlp-http-endpoint",
                f"127.0.0.1:{http_port}",
                "--exporter",
                "otlp",
                "--otlp-exporter-endpoint",
                forward_to,
                "--batch-timeout",
                "100ms",
                "--pid-file",
                str(folder / "rotel.pid"),
                "--log-file",
                str(folder / "rotel.log"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for_port(grpc_port, proc)
        wait_for_port(http_port, proc)
        yield grpc_port, http_port
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


__all__ = [
    "Certs",
    "GrpcAnswer",
    "GrpcReceiver",
    "HttpAnswer",
    "HttpReceiver",
    "Silence",
    "closed_port",
    "code_pb2",
    "free_port",
    "make_certs",
    "make_request",
    "rotel_binary",
    "run_rotel",
    "server_tls_context",
    "spans_of",
    "start_grpc_receiver",
    "start_http_receiver",
    "status_details",
    "stop_process",
    "wait_for_port",
]
