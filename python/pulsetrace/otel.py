"""OpenTelemetry API bridge: spans made with ``opentelemetry.trace`` are pulsetrace spans.

pulsetrace calls :func:`install` at start when ``opentelemetry-api`` is
importable (by hand: ``pulsetrace.otel.install()``). From then on tracers from
``opentelemetry.trace.get_tracer(...)``, in your code or in OpenTelemetry's
instrumentation packages, make pulsetrace spans: the same histograms, tail
sampler and exporters as all others. The two APIs share one current span: an
OpenTelemetry span started inside a pulsetrace span is its child, pulsetrace's
hooks (Flask, requests, SQL...) parent under ``start_as_current_span`` and
``use_span``, and ``trace.get_current_span()`` sees a current pulsetrace span.

What :func:`install` changes (:func:`uninstall` gives it back):

* the global ``TracerProvider``; one configured before (the SDK's, or
  ``OTEL_PYTHON_TRACER_PROVIDER``) is kept with a warning unless ``force=True``.
* the runtime context of ``opentelemetry.context``, wrapped: the span of each
  ``attach``-ed context (``use_span``, instrumentations...) becomes pulsetrace's
  current span too, ``detach`` restores both, and a pulsetrace span made
  current since is OpenTelemetry's current span. After ``uninstall`` it passes
  straight through, so tokens handed out before still detach cleanly.
* the W3C ``tracecontext`` member of the global propagator (``propagate.inject``
  / ``extract``) uses pulsetrace's parser and formatter: the same headers, ids
  and malformed-header counters. ``baggage`` and other members stay.

Limits: the instrumentation scope (tracer name, version, schema URL,
attributes) is kept on each :class:`Tracer`, not exported yet. A parent that
pulsetrace did not record (another SDK's span) counts by its ids only. As in the
OpenTelemetry API, ``start_span(context=ctx)`` with no span in ``ctx`` starts a
new trace. With tracing off every span is ``trace.INVALID_SPAN``. Tracers handed
out keep working after ``uninstall``. Nothing here raises into the application:
failures are counted and logged.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, Optional, TypeVar, Union

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context.context import Context, _RuntimeContext
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.propagators import textmap
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util._decorator import _agnosticcontextmanager

from pulsetrace import _diag, _runtime
from pulsetrace._native import Span as NativeSpan
from pulsetrace._native import SpanContext

__all__ = ["RuntimeContext", "TraceContextPropagator", "Tracer", "TracerProvider"]
__all__ += ["install", "installed", "uninstall"]

log = logging.getLogger("pulsetrace")
F = TypeVar("F", bound=Callable[..., Any])
Attrs = Optional[Mapping[str, Any]]
Ns = Optional[int]  # a Unix time in nanoseconds
StatusLike = Union[Status, StatusCode]

_KINDS = {k: k.name.lower() for k in SpanKind}  # SpanKind.SERVER -> "server"
_OTEL_KINDS = {v: k for k, v in _KINDS.items()}


def _safe(default: Any = None) -> Callable[[F], F]:
    """A failure inside pulsetrace is counted, logged and answered with ``default``."""

    def decorate(fn: F) -> F:
        where = f"otel.{fn.__name__}"

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                _diag.internal_error(where, exc)
                return default

        return guarded  # type: ignore[return-value]

    return decorate


def _dict(attributes: Attrs) -> Optional[dict[str, Any]]:
    return dict(attributes) if attributes else None


def _otel_context(ctx: SpanContext) -> trace.SpanContext:
    """pulsetrace's SpanContext as OpenTelemetry's: same ids, flags and state."""
    state = trace.TraceState.from_header([ctx.trace_state]) if ctx.trace_state else None
    flags = trace.TraceFlags(ctx.trace_flags)
    return trace.SpanContext(ctx.trace_id, ctx.span_id, ctx.is_remote, flags, state)


def _native_context(ctx: trace.SpanContext) -> Optional[SpanContext]:
    if not ctx.is_valid:
        return None
    state = ctx.trace_state.to_header() if ctx.trace_state else ""
    return SpanContext(ctx.trace_id, ctx.span_id, int(ctx.trace_flags), state, ctx.is_remote)


def _native_parent(span: Any) -> Optional[Union[NativeSpan, SpanContext]]:
    """pulsetrace's parent for an OpenTelemetry span (None: no valid span)."""
    if isinstance(span, _BridgeSpan):
        return span.pulsetrace_span
    if isinstance(span, trace.Span):
        return _native_context(span.get_span_context())
    return None


class _BridgeSpan(trace.Span):
    """An OpenTelemetry span backed by a pulsetrace span (``pulsetrace_span``)."""

    def __init__(
        self, span: NativeSpan, kind: Optional[SpanKind] = None,
        record_exception: bool = True, set_status_on_exception: bool = True,
    ) -> None:  # fmt: skip
        self.pulsetrace_span = span
        self._kind = kind
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception
        self._context: Optional[trace.SpanContext] = None

    @property
    def kind(self) -> SpanKind:  # as on the SDK's spans: instrumentations read it
        if self._kind is None:
            self._kind = _OTEL_KINDS.get(self.pulsetrace_span.kind, SpanKind.INTERNAL)
        return self._kind

    @property
    def name(self) -> str:
        return self.pulsetrace_span.name

    @property
    def attributes(self) -> dict[str, Any]:
        return self.pulsetrace_span.attributes

    @_safe(trace.INVALID_SPAN_CONTEXT)
    def get_span_context(self) -> trace.SpanContext:
        if self._context is None:
            self._context = _otel_context(self.pulsetrace_span.context)
        return self._context

    @_safe(False)
    def is_recording(self) -> bool:
        return self.pulsetrace_span.is_recording()

    @_safe()
    def set_attribute(self, key: str, value: Any) -> None:
        self.pulsetrace_span.set_attribute(key, value)

    @_safe()
    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.pulsetrace_span.set_attributes(dict(attributes))

    @_safe()
    def add_event(self, name: str, attributes: Attrs = None, timestamp: Ns = None) -> None:
        self.pulsetrace_span.add_event(name, _dict(attributes), timestamp)

    @_safe()
    def add_link(self, context: trace.SpanContext, attributes: Attrs = None) -> None:
        ctx = _native_context(context)
        if ctx is not None:
            self.pulsetrace_span.add_link(ctx, _dict(attributes))

    @_safe()
    def update_name(self, name: str) -> None:
        self.pulsetrace_span.update_name(name)

    @_safe()
    def set_status(self, status: StatusLike, description: Optional[str] = None) -> None:
        if isinstance(status, Status):  # as the SDK: a Status carries its own description
            description = status.description
            status = status.status_code
        self.pulsetrace_span.set_status(status.name.lower(), description)

    @_safe()
    def record_exception(
        self, exception: BaseException, attributes: Attrs = None, timestamp: Ns = None,
        escaped: bool = False,
    ) -> None:  # fmt: skip
        self.pulsetrace_span.record_exception(exception, _dict(attributes), timestamp, escaped)

    @_safe()
    def end(self, end_time: Ns = None) -> None:
        self.pulsetrace_span.end(end_time)

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        # `with tracer.start_span(...)`: as the SDK, ends it (no context change).
        if isinstance(exc_val, Exception) and self.is_recording():
            if self._record_exception:
                self.record_exception(exc_val, escaped=True)
            if self._set_status_on_exception:
                self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        self.end()

    def __repr__(self) -> str:
        return f"_BridgeSpan({self.pulsetrace_span!r})"


class Tracer(trace.Tracer):
    """Starts pulsetrace spans for one instrumentation scope."""

    def __init__(
        self, name: str, version: Optional[str] = None, schema_url: Optional[str] = None,
        attributes: Attrs = None,
    ) -> None:  # fmt: skip
        self.name = name
        self.version = version
        self.schema_url = schema_url
        self.attributes = dict(attributes) if attributes else {}

    @_safe(trace.INVALID_SPAN)
    def start_span(
        self, name: str, context: Optional[Context] = None,
        kind: SpanKind = SpanKind.INTERNAL, attributes: Attrs = None,
        links: Optional[Sequence[trace.Link]] = None, start_time: Ns = None,
        record_exception: bool = True, set_status_on_exception: bool = True,
    ) -> trace.Span:  # fmt: skip
        tracer = _runtime.tracer()
        if not tracer.enabled:  # the kill switch: nothing recorded, nothing propagated
            return trace.INVALID_SPAN
        parent = _native_parent(trace.get_current_span(context))
        # An explicit context without a span starts a new trace, whatever is current.
        token = _runtime.CURRENT.set(None) if parent is None and context is not None else None
        try:
            span = tracer.start_span(
                name, kind=_KINDS.get(kind, "internal"), attributes=_dict(attributes),
                parent=parent, start_time=start_time,
            )  # fmt: skip
        finally:
            if token is not None:
                _runtime.CURRENT.reset(token)
        for link in links or ():
            ctx = _native_context(link.context)
            if ctx is not None:
                span.add_link(ctx, _dict(link.attributes))
        return _BridgeSpan(span, kind, record_exception, set_status_on_exception)

    @_agnosticcontextmanager
    def start_as_current_span(
        self, name: str, context: Optional[Context] = None,
        kind: SpanKind = SpanKind.INTERNAL, attributes: Attrs = None,
        links: Optional[Sequence[trace.Link]] = None, start_time: Ns = None,
        record_exception: bool = True, set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:  # fmt: skip
        span = self.start_span(
            name, context, kind, attributes, links, start_time,
            record_exception, set_status_on_exception,
        )  # fmt: skip
        # The runtime context makes it pulsetrace's current span on attach; set
        # here too, pulsetrace's hooks parent right even without install().
        token = None
        if isinstance(span, _BridgeSpan):
            token = _runtime.CURRENT.set(span.pulsetrace_span)
        try:
            with trace.use_span(
                span, end_on_exit=end_on_exit, record_exception=record_exception,
                set_status_on_exception=set_status_on_exception,
            ) as current:  # fmt: skip
                yield current
        finally:
            if token is not None:
                with contextlib.suppress(ValueError):  # closed in another context
                    _runtime.CURRENT.reset(token)


class TracerProvider(trace.TracerProvider):
    """Hands out :class:`Tracer` objects; flush and shutdown are pulsetrace's."""

    def get_tracer(
        self, instrumenting_module_name: str, instrumenting_library_version: Optional[str] = None,
        schema_url: Optional[str] = None, attributes: Attrs = None,
    ) -> Tracer:  # fmt: skip
        return Tracer(
            instrumenting_module_name, instrumenting_library_version, schema_url, attributes
        )

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return _runtime.flush(timeout_millis / 1000.0)

    def shutdown(self) -> None:
        _runtime.shutdown()


class _Token(tuple):  # type: ignore[type-arg]  # (OpenTelemetry's token, pulsetrace's)
    __slots__ = ()


class RuntimeContext(_RuntimeContext):
    """OpenTelemetry's runtime context (``inner``) in step with pulsetrace's current span."""

    def __init__(self, inner: Optional[_RuntimeContext] = None) -> None:
        self.inner = inner if inner is not None else ContextVarsRuntimeContext()
        self.active = True

    def attach(self, context: Context) -> Any:
        token = self.inner.attach(context)
        if not self.active:
            return token
        try:
            parent = _native_parent(context.get(_SPAN_KEY))
            return _Token((token, _runtime.CURRENT.set(parent)))
        except Exception as exc:
            _diag.internal_error("otel.attach", exc)
            return token

    def get_current(self) -> Context:
        ctx = self.inner.get_current()
        current = _runtime.CURRENT.get() if self.active else None
        if current is None:
            return ctx
        try:
            span = ctx.get(_SPAN_KEY)
            if isinstance(current, NativeSpan):
                if isinstance(span, _BridgeSpan) and span.pulsetrace_span is current:
                    return ctx
                return trace.set_span_in_context(_BridgeSpan(current), ctx)
            if isinstance(current, SpanContext):
                sc = span.get_span_context() if isinstance(span, trace.Span) else None
                if sc is None or (sc.trace_id, sc.span_id) != (current.trace_id, current.span_id):
                    remote = trace.NonRecordingSpan(_otel_context(current))
                    return trace.set_span_in_context(remote, ctx)
            return ctx
        except Exception as exc:
            _diag.internal_error("otel.get_current", exc)
            return ctx

    def detach(self, token: Any) -> None:
        if not isinstance(token, _Token):
            self.inner.detach(token)
            return
        try:
            self.inner.detach(token[0])
        finally:
            with contextlib.suppress(ValueError):  # another context's: OpenTelemetry logs it
                _runtime.CURRENT.reset(token[1])


class TraceContextPropagator(TraceContextTextMapPropagator):
    """W3C ``traceparent``/``tracestate`` through pulsetrace's parser and formatter."""

    def extract(
        self, carrier: textmap.CarrierT, context: Optional[Context] = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:  # fmt: skip
        context = Context() if context is None else context
        try:
            traceparent = getter.get(carrier, "traceparent")
            tracestate = getter.get(carrier, "tracestate") if traceparent else None
            remote = traceparent and _runtime.tracer().extract(
                traceparent[0], ",".join(tracestate) if tracestate else None
            )
            if not remote:  # none, or malformed (counted)
                return context
            span = trace.NonRecordingSpan(_otel_context(remote))
            return trace.set_span_in_context(span, context)
        except Exception as exc:
            _diag.internal_error("otel.extract", exc)
            return context

    @_safe()
    def inject(
        self, carrier: textmap.CarrierT, context: Optional[Context] = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:  # fmt: skip
        span = trace.get_current_span(context)
        if not isinstance(span, _BridgeSpan):
            super().inject(carrier, context, setter)
            return
        native = span.pulsetrace_span
        if native.trace_id != 0:  # 0: tracing is off, nothing to propagate
            setter.set(carrier, "traceparent", native.traceparent)
            if native.trace_state:
                setter.set(carrier, "tracestate", native.trace_state)


def _with_pulsetrace(prop: textmap.TextMapPropagator) -> textmap.TextMapPropagator:
    """``prop`` with each W3C tracecontext member replaced by pulsetrace's."""
    if isinstance(prop, TraceContextTextMapPropagator):
        return prop if isinstance(prop, TraceContextPropagator) else TraceContextPropagator()
    if isinstance(prop, CompositePropagator):
        return CompositePropagator([_with_pulsetrace(p) for p in prop._propagators])
    return prop


_lock = threading.Lock()
#: (provider, previous provider, previous was set, propagator, previous propagator)
_installed: Optional[tuple[Any, ...]] = None


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _installed is not None


def install(force: bool = False) -> bool:
    """Make pulsetrace the OpenTelemetry API's implementation (see the module
    docs). Idempotent; returns whether pulsetrace's provider is in place."""
    global _installed
    with _lock:
        if _installed is not None:
            return True
        try:
            previous = trace._TRACER_PROVIDER
            configured = previous or os.environ.get("OTEL_PYTHON_TRACER_PROVIDER")
            if configured and not force and not isinstance(previous, TracerProvider):
                log.warning(
                    "pulsetrace: OpenTelemetry's TracerProvider is already set (%r): "
                    "its spans bypass pulsetrace (install(force=True) replaces it)",
                    configured,
                )
                return False
            provider = TracerProvider()
            once = trace._TRACER_PROVIDER_SET_ONCE
            was_set = once._done
            old_textmap = propagate.get_global_textmap()
            textmap_ = _with_pulsetrace(old_textmap)
            runtime = otel_context._RUNTIME_CONTEXT
            if isinstance(runtime, RuntimeContext):
                runtime.active = True
            else:
                otel_context._RUNTIME_CONTEXT = RuntimeContext(runtime)
            trace._TRACER_PROVIDER, once._done = provider, True
            propagate.set_global_textmap(textmap_)
            _installed = (provider, previous, was_set, textmap_, old_textmap)
            return True
        except Exception as exc:
            _diag.internal_error("otel.install", exc)
            return False


def uninstall() -> None:
    """Undo :func:`install`: the previous provider and propagator come back,
    and the runtime context passes straight through."""
    global _installed
    with _lock:
        state, _installed = _installed, None
        if state is None:
            return
        provider, previous, was_set, textmap_, old_textmap = state
        try:
            if trace._TRACER_PROVIDER is provider:
                trace._TRACER_PROVIDER = previous
                trace._TRACER_PROVIDER_SET_ONCE._done = was_set
            runtime = otel_context._RUNTIME_CONTEXT
            if isinstance(runtime, RuntimeContext):
                runtime.active = False
            if propagate.get_global_textmap() is textmap_:
                propagate.set_global_textmap(old_textmap)
        except Exception as exc:
            _diag.internal_error("otel.uninstall", exc)
