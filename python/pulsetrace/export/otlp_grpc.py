"""The OTLP/gRPC side of :class:`pulsetrace.export.otlp.OtlpTransport`: one
channel to the collector, one ``Export`` call per attempt, either waited
for (:meth:`GrpcChannel.attempt`) or left to run while the caller goes on
(:meth:`GrpcChannel.start`, grpcio's future API: the answer comes to a
callback on one of grpcio's own threads). The request is already encoded
and the answer is read by :mod:`pulsetrace.export.otlp_wire`."""

from __future__ import annotations

from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from pulsetrace.config import OtlpConfig
from pulsetrace.export.otlp_wire import Attempt, grpc_error_attempt, partial_success

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class GrpcChannel:
    """A gRPC channel to ``config.endpoint`` and its Export method. Raises
    RuntimeError (grpcio missing) or OSError (a CA file that cannot be
    read) when it cannot be set up."""

    def __init__(self, config: OtlpConfig, user_agent: str, max_backoff_s: float) -> None:
        try:
            import grpc  # type: ignore[import-untyped]  # grpcio ships no type hints
        except ImportError as exc:
            raise RuntimeError(
                "grpcio is not installed: pip install grpcio, "
                "or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
            ) from exc

        self._grpc = grpc
        endpoint = config.endpoint
        if "://" in endpoint:
            u = urlsplit(endpoint)
            port = u.port or (443 if u.scheme.lower() == "https" else 80)
            host = u.hostname or "localhost"
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        else:
            target = endpoint
        options = [
            ("grpc.primary_user_agent", user_agent),
            # Reconnect soon after a collector comes back (default: up to 2 min).
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", int(max_backoff_s * 1000)),
            ("grpc.max_send_message_length", -1),
        ]
        if config.insecure:
            channel = grpc.insecure_channel(target, options=options)
        else:
            roots = None
            if config.certificate:
                with open(config.certificate, "rb") as f:
                    roots = f.read()
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            channel = grpc.secure_channel(target, credentials, options=options)
        self._channel: Any = channel
        # Bytes in, bytes out: the request is already encoded, the answer is
        # read with the few lines of wire-format parsing in otlp_wire.
        self._export: Any = channel.unary_unary(
            EXPORT_METHOD, request_serializer=None, response_deserializer=None
        )
        self._metadata = tuple(
            (k, v.encode() if k.endswith("-bin") else v) for k, v in config.headers.items()
        )
        gzip = config.compression == "gzip"
        self._compression = grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression

    def attempt(self, payload: bytes, timeout: float, closed: Callable[[], bool]) -> Attempt:
        """One Export call, waited for (at most ``timeout`` seconds)."""
        export = self._export
        if export is None or self._channel is None:
            return _shut_down()
        try:
            response, _call = export.with_call(
                payload,
                timeout=timeout,
                metadata=self._metadata or None,
                compression=self._compression,
            )
        except self._grpc.RpcError as exc:
            return grpc_error_attempt(exc, closed())
        except ValueError as exc:  # a closed channel
            return Attempt(ok=False, error=f"gRPC: {exc}", kind="grpc error")
        rejected, message = partial_success(response or b"")
        return Attempt(ok=True, rejected_spans=rejected, partial_error=message)

    def start(
        self,
        payload: bytes,
        timeout: float,
        closed: Callable[[], bool],
        done: Callable[[Attempt], None],
    ) -> Optional[Callable[[], object]]:
        """One Export call, not waited for: ``done(attempt)`` is called once
        it is answered, failed or timed out (on a grpcio thread, or on this
        one when it fails at once). Returns how to cancel it."""
        export = self._export
        if export is None or self._channel is None:
            done(_shut_down())
            return None
        try:
            future = export.future(
                payload,
                timeout=timeout,
                metadata=self._metadata or None,
                compression=self._compression,
            )
        except ValueError as exc:  # a closed channel
            done(Attempt(ok=False, error=f"gRPC: {exc}", kind="grpc error"))
            return None
        future.add_done_callback(lambda f: done(self._answer(f, closed)))
        return future.cancel  # type: ignore[no-any-return]

    def _answer(self, future: Any, closed: Callable[[], bool]) -> Attempt:
        if future.cancelled():
            return Attempt(ok=False, error="gRPC: the call was cancelled", kind="cancelled")
        error = future.exception()
        if error is not None:
            if isinstance(error, self._grpc.RpcError):
                return grpc_error_attempt(error, closed())
            return Attempt(ok=False, error=f"gRPC: {error!r}", kind="grpc error")
        rejected, message = partial_success(future.result() or b"")
        return Attempt(ok=True, rejected_spans=rejected, partial_error=message)

    def close(self) -> None:
        channel, self._channel = self._channel, None
        self._export = None
        if channel is not None:
            channel.close()


def _shut_down() -> Attempt:
    return Attempt(ok=False, error="the transport is shut down", kind="shutdown")
