//! The `Span` and `SpanContext` classes. A span is `frozen` with its mutable
//! state behind a mutex, so it can be shared between threads (and works
//! without the GIL's protection). Ending a span crosses into the core once,
//! with one boxed record.
//!
//! GIL and locks: every method runs with the GIL. The span's state (`inner`,
//! a `parking_lot` mutex) is locked only with the GIL held, and never across
//! a call into Python code or a release of the GIL: attribute values and
//! exception texts are converted before it is taken, dicts are built after
//! it is released, a context token is dropped after. So under the GIL no
//! thread ever waits for it, and Python code that runs meanwhile (a
//! finaliser, a `__str__` that touches the same span) never finds it held by
//! its own thread. (`start_span` converts attributes into a span no other
//! code can reach yet: `set_many`.) Ending a span (`end`, `__exit__`, a WSGI
//! body's end) hands one record to `Core::submit_span` with the GIL held:
//! that call waits for no drain, trace shard or export queue, even with the
//! intake full (`pulsetrace_core::pipeline`'s docs). The tracer's state it
//! reads (the current core, limits, counters) is atomics and an `ArcSwap`.

use crate::attrs::{self, AttrCounters, Limits};
use crate::tracer::Tracer;
use parking_lot::Mutex;
use pulsetrace_core::clock;
use pulsetrace_core::propagation::format_traceparent;
use pulsetrace_core::span::{AttrValue, Attributes, Event, Link, SpanKind, SpanRecord, StatusCode};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyString, PyTuple};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// An immutable span context: what a child or another process needs.
#[pyclass(frozen, module = "pulsetrace._native", name = "SpanContext")]
#[derive(Clone)]
pub struct SpanContext {
    #[pyo3(get)]
    pub trace_id: u128,
    #[pyo3(get)]
    pub span_id: u64,
    #[pyo3(get)]
    pub trace_flags: u8,
    #[pyo3(get)]
    pub trace_state: String,
    #[pyo3(get)]
    pub is_remote: bool,
}

#[pymethods]
impl SpanContext {
    #[new]
    #[pyo3(signature = (trace_id, span_id, trace_flags=1, trace_state=String::new(), is_remote=true))]
    fn new(
        trace_id: u128,
        span_id: u64,
        trace_flags: u8,
        trace_state: String,
        is_remote: bool,
    ) -> PyResult<Self> {
        if trace_id == 0 || span_id == 0 {
            return Err(PyValueError::new_err(
                "trace_id and span_id must be non-zero",
            ));
        }
        Ok(SpanContext {
            trace_id,
            span_id,
            trace_flags,
            trace_state,
            is_remote,
        })
    }

    /// The W3C `traceparent` header value of this context.
    #[getter]
    fn traceparent(&self) -> String {
        format_traceparent(self.trace_id, self.span_id, self.trace_flags)
    }

    /// Whether the upstream asked for this trace to be sampled.
    #[getter]
    fn sampled(&self) -> bool {
        self.trace_flags & 1 == 1
    }

    fn __repr__(&self) -> String {
        format!(
            "SpanContext(trace_id={:032x}, span_id={:016x}, trace_flags={:02x}, is_remote={})",
            self.trace_id,
            self.span_id,
            self.trace_flags,
            if self.is_remote { "True" } else { "False" }
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.downcast::<SpanContext>().is_ok_and(|o| {
            let o = o.get();
            o.trace_id == self.trace_id
                && o.span_id == self.span_id
                && o.trace_flags == self.trace_flags
        })
    }

    fn __hash__(&self) -> u64 {
        (self.trace_id as u64) ^ self.span_id
    }
}

pub(crate) struct Inner {
    pub name: Arc<str>,
    pub kind: SpanKind,
    pub attributes: Attributes,
    pub events: Vec<Event>,
    pub links: Vec<Link>,
    pub status: StatusCode,
    pub status_message: String,
    pub http_status: u16,
    pub dropped_attributes: u32,
    pub dropped_events: u32,
    pub ended: bool,
    pub token: Option<PyObject>,
    /// A WSGI request span: the token of the context switch that made it
    /// current for the application call, until its body ends and gives
    /// the context its previous value back.
    pub request_token: Option<PyObject>,
}

/// A span. Use it as a context manager (it becomes the current span inside
/// the block) or call `end()`.
#[pyclass(frozen, module = "pulsetrace._native", name = "Span")]
pub struct Span {
    pub(crate) tracer: Py<Tracer>,
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) parent_span_id: u64,
    pub(crate) trace_flags: u8,
    pub(crate) trace_state: String,
    pub(crate) local_root: bool,
    pub(crate) remote_parent: bool,
    pub(crate) start_mono: u64,
    /// False only for the shared no-op span handed out while tracing is off.
    pub(crate) recording: bool,
    /// A WSGI request span while its application call runs (a hook nested
    /// inside that call names this span instead of starting its own).
    pub(crate) serving: AtomicBool,
    pub(crate) inner: Mutex<Inner>,
}

const HTTP_STATUS_KEY: &str = "http.response.status_code";

impl Span {
    pub(crate) fn noop(tracer: Py<Tracer>) -> Self {
        Span {
            tracer,
            trace_id: 0,
            span_id: 0,
            parent_span_id: 0,
            trace_flags: 0,
            trace_state: String::new(),
            local_root: false,
            remote_parent: false,
            start_mono: 0,
            recording: false,
            serving: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                name: Arc::from(""),
                kind: SpanKind::Internal,
                attributes: Vec::new(),
                events: Vec::new(),
                links: Vec::new(),
                status: StatusCode::Unset,
                status_message: String::new(),
                http_status: 0,
                dropped_attributes: 0,
                dropped_events: 0,
                ended: true,
                token: None,
                request_token: None,
            }),
        }
    }

    fn limits<'a>(&self, tracer: &'a Tracer) -> (Limits, &'a AttrCounters) {
        (tracer.limits.get(), &tracer.attr_counters)
    }

    pub(crate) fn set_one(
        inner: &mut Inner,
        key: Arc<str>,
        value: AttrValue,
        limits: &Limits,
        counters: &AttrCounters,
    ) {
        if &*key == HTTP_STATUS_KEY {
            if let AttrValue::Int(code) = value {
                inner.http_status = u16::try_from(code).unwrap_or(0);
            }
        }
        if let Some(slot) = inner.attributes.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
            return;
        }
        if inner.attributes.len() >= limits.max_attributes {
            inner.dropped_attributes += 1;
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        inner.attributes.push((key, value));
    }

    /// Set the attributes of a mapping on a span that no other code can
    /// reach yet (`start_span`'s): converting them may run Python code
    /// (`items()`, `str()` of an odd key or value), which must never run
    /// while a reachable span's lock is held (module docs);
    /// [`Span::set_attributes`] converts first, then locks.
    pub(crate) fn set_many(
        &self,
        inner: &mut Inner,
        attributes: &Bound<'_, PyAny>,
        tracer: &Tracer,
    ) {
        let (limits, counters) = self.limits(tracer);
        if let Ok(d) = attributes.downcast::<PyDict>() {
            inner.attributes.reserve(d.len());
        }
        each_attribute(attributes, &limits, counters, |k, v| {
            Span::set_one(inner, k, v, &limits, counters);
        });
    }

    pub(crate) fn span_context(&self) -> SpanContext {
        SpanContext {
            trace_id: self.trace_id,
            span_id: self.span_id,
            trace_flags: self.trace_flags,
            trace_state: self.trace_state.clone(),
            is_remote: false,
        }
    }

    pub(crate) fn end_at(&self, py: Python<'_>, end_mono: u64) {
        if !self.recording {
            return;
        }
        let tracer = self.tracer.get();
        let mut inner = self.inner.lock();
        if inner.ended {
            tracer.counters.double_end.fetch_add(1, Ordering::Relaxed);
            return;
        }
        inner.ended = true;
        let rec = SpanRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent_span_id,
            name: inner.name.clone(),
            kind: inner.kind,
            start_unix_ns: clock::mono_to_unix_ns(self.start_mono),
            duration_ns: end_mono.saturating_sub(self.start_mono),
            status: inner.status,
            status_message: std::mem::take(&mut inner.status_message),
            http_status: inner.http_status,
            attributes: std::mem::take(&mut inner.attributes),
            events: std::mem::take(&mut inner.events),
            links: std::mem::take(&mut inner.links),
            dropped_attributes: inner.dropped_attributes,
            dropped_events: inner.dropped_events,
            local_root: self.local_root,
            remote_parent: self.remote_parent,
            trace_flags: self.trace_flags,
            trace_state: self.trace_state.clone(),
        };
        let token = inner.token.take();
        drop(inner);
        drop(token.map(|t| t.into_bound(py)));
        // The worker records its latency and, if it is sampled (head-sampled
        // out spans only count in the histograms), groups it into its trace.
        // A span exists only once its tracer is configured: there is a core.
        if let Some(core) = &*tracer.core.load() {
            core.submit_span(rec);
        }
    }

    pub(crate) fn exception_event(
        &self,
        py: Python<'_>,
        exc: &Bound<'_, PyAny>,
        attributes: Option<&Bound<'_, PyAny>>,
        timestamp: Option<u64>,
        escaped: bool,
    ) -> PyResult<Event> {
        let tracer = self.tracer.get();
        let (limits, counters) = self.limits(tracer);
        let limits = &limits;
        let ty = exc.get_type();
        let qualname = ty
            .qualname()
            .map(|q| q.to_string())
            .unwrap_or_else(|_| "Exception".into());
        let module = ty.module().map(|m| m.to_string()).unwrap_or_default();
        let type_name = if module.is_empty() || module == "builtins" {
            qualname
        } else {
            format!("{module}.{qualname}")
        };
        let message = exc
            .str()
            .map(|s| attrs::text(&s, counters))
            .unwrap_or_default();
        let stack = format_exception(py, exc)
            .map(|s| attrs::truncate(s, limits.max_value_len.saturating_mul(8), counters))
            .unwrap_or_default();
        let mut event_attrs: Attributes = vec![
            ("exception.type".into(), AttrValue::Str(type_name.into())),
            (
                "exception.message".into(),
                AttrValue::Str(attrs::truncate(message, limits.max_value_len, counters).into()),
            ),
            ("exception.stacktrace".into(), AttrValue::Str(stack.into())),
            ("exception.escaped".into(), AttrValue::Bool(escaped)),
        ];
        if let Some(extra) = attributes {
            if let Ok(d) = extra.downcast::<PyDict>() {
                for (k, v) in d.iter() {
                    if let (Some(k), Some(v)) = (
                        attrs::key(&k, limits, counters),
                        attrs::convert(&v, limits, counters),
                    ) {
                        event_attrs.push((k, v));
                    }
                }
            }
        }
        Ok(Event {
            name: "exception".into(),
            time_unix_ns: timestamp.unwrap_or_else(clock::now_unix_ns),
            attributes: event_attrs,
        })
    }

    pub(crate) fn push_event(&self, inner: &mut Inner, event: Event) {
        let tracer = self.tracer.get();
        if inner.events.len() >= tracer.limits.get().max_events {
            inner.dropped_events += 1;
            tracer.attr_counters.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            inner.events.push(event);
        }
    }
}

/// Convert each item of an attribute mapping (a dict, or anything with
/// `items()`; anything else is dropped and counted) and hand it to `f`.
/// May run Python code: call it with no span locked.
fn each_attribute(
    attributes: &Bound<'_, PyAny>,
    limits: &Limits,
    counters: &AttrCounters,
    mut f: impl FnMut(Arc<str>, AttrValue),
) {
    if let Ok(d) = attributes.downcast::<PyDict>() {
        for (k, v) in d.iter() {
            if let (Some(k), Some(v)) = (
                attrs::key(&k, limits, counters),
                attrs::convert(&v, limits, counters),
            ) {
                f(k, v);
            }
        }
    } else if let Ok(items) = attributes.call_method0("items") {
        if let Ok(iter) = items.try_iter() {
            for item in iter.flatten() {
                if let Ok((k, v)) = item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>() {
                    if let (Some(k), Some(v)) = (
                        attrs::key(&k, limits, counters),
                        attrs::convert(&v, limits, counters),
                    ) {
                        f(k, v);
                    }
                }
            }
        }
    } else {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

fn format_exception(py: Python<'_>, exc: &Bound<'_, PyAny>) -> Option<String> {
    static FORMAT: GILOnceCell<PyObject> = GILOnceCell::new();
    let f = FORMAT
        .get_or_try_init(py, || -> PyResult<PyObject> {
            Ok(py
                .import("traceback")?
                .getattr("format_exception")?
                .unbind())
        })
        .ok()?;
    let tb = exc.getattr("__traceback__").ok()?;
    let lines = f.bind(py).call1((exc.get_type(), exc, tb)).ok()?;
    let joined = PyString::new(py, "").call_method1("join", (lines,)).ok()?;
    joined.extract::<String>().ok()
}

fn parse_status(status: &Bound<'_, PyAny>) -> PyResult<StatusCode> {
    if let Ok(s) = status.downcast::<PyString>() {
        return match s.to_cow()?.to_ascii_lowercase().as_str() {
            "unset" => Ok(StatusCode::Unset),
            "ok" => Ok(StatusCode::Ok),
            "error" => Ok(StatusCode::Error),
            other => Err(PyValueError::new_err(format!(
                "status must be 'unset', 'ok' or 'error', not {other:?}"
            ))),
        };
    }
    // An int or an IntEnum (OpenTelemetry's StatusCode values are 0, 1, 2),
    // or an object with a `status_code` (OpenTelemetry's Status).
    let value = if let Ok(code) = status.getattr("status_code") {
        code.getattr("value").unwrap_or(code).extract::<i64>()
    } else {
        status.extract::<i64>()
    };
    match value {
        Ok(0) => Ok(StatusCode::Unset),
        Ok(1) => Ok(StatusCode::Ok),
        Ok(2) => Ok(StatusCode::Error),
        _ => Err(PyValueError::new_err(format!(
            "not a span status: {status}"
        ))),
    }
}

#[pymethods]
impl Span {
    #[getter]
    fn trace_id(&self) -> u128 {
        self.trace_id
    }

    #[getter]
    fn span_id(&self) -> u64 {
        self.span_id
    }

    /// The parent's span id, or None for a root span.
    #[getter]
    fn parent_span_id(&self) -> Option<u64> {
        (self.parent_span_id != 0).then_some(self.parent_span_id)
    }

    #[getter]
    fn name(&self) -> String {
        self.inner.lock().name.to_string()
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.lock().kind.as_str()
    }

    #[getter]
    fn context(&self) -> SpanContext {
        self.span_context()
    }

    /// The `traceparent` header that makes this span the parent downstream.
    #[getter]
    fn traceparent(&self) -> String {
        format_traceparent(self.trace_id, self.span_id, self.trace_flags)
    }

    #[getter]
    fn trace_state(&self) -> String {
        self.trace_state.clone()
    }

    #[getter]
    fn ended(&self) -> bool {
        self.inner.lock().ended
    }

    #[getter]
    fn status(&self) -> &'static str {
        self.inner.lock().status.as_str()
    }

    /// The attributes set so far (a copy), before the span ends.
    #[getter]
    fn attributes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        // Copied out first: building the dict may run Python code (a
        // collection's finalisers), which must not find the span locked.
        let attributes = self.inner.lock().attributes.clone();
        attributes_dict(py, &attributes)
    }

    fn is_recording(&self) -> bool {
        self.recording && !self.inner.lock().ended
    }

    /// Whether this span's trace is sampled (W3C flag): False when head
    /// sampling rejected it, or while tracing is off.
    #[getter]
    fn sampled(&self) -> bool {
        self.trace_flags & 1 == 1
    }

    pub(crate) fn set_attribute(&self, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) {
        let tracer = self.tracer.get();
        let (limits, counters) = self.limits(tracer);
        let limits = &limits;
        let Some(k) = attrs::key(key, limits, counters) else {
            return;
        };
        let Some(v) = attrs::convert(value, limits, counters) else {
            return;
        };
        let mut inner = self.inner.lock();
        if !inner.ended {
            Span::set_one(&mut inner, k, v, limits, counters);
        }
    }

    fn set_attributes(&self, attributes: &Bound<'_, PyAny>) {
        let tracer = self.tracer.get();
        let (limits, counters) = self.limits(tracer);
        let mut converted = Vec::new();
        each_attribute(attributes, &limits, counters, |k, v| converted.push((k, v)));
        let mut inner = self.inner.lock();
        if !inner.ended {
            for (k, v) in converted {
                Span::set_one(&mut inner, k, v, &limits, counters);
            }
        }
    }

    /// Set the status: 'ok', 'error' or 'unset' (or OpenTelemetry's codes).
    /// 'ok' is final; 'unset' changes nothing.
    #[pyo3(signature = (status, description=None))]
    fn set_status(
        &self,
        status: &Bound<'_, PyAny>,
        description: Option<&Bound<'_, PyString>>,
    ) -> PyResult<()> {
        let code = parse_status(status)?;
        let desc = status
            .getattr("description")
            .ok()
            .and_then(|d| d.downcast_into::<PyString>().ok());
        let tracer = self.tracer.get();
        let message = match description.cloned().or(desc) {
            Some(d) if code == StatusCode::Error => {
                let t = attrs::text(&d, &tracer.attr_counters);
                Some(attrs::truncate(
                    t,
                    tracer.limits.get().max_value_len,
                    &tracer.attr_counters,
                ))
            }
            _ => None,
        };
        let mut inner = self.inner.lock();
        if inner.ended || inner.status == StatusCode::Ok || code == StatusCode::Unset {
            return Ok(());
        }
        inner.status = code;
        if let Some(m) = message {
            inner.status_message = m;
        }
        Ok(())
    }

    fn update_name(&self, name: &Bound<'_, PyString>) {
        let tracer = self.tracer.get();
        let t = attrs::text(name, &tracer.attr_counters);
        let mut inner = self.inner.lock();
        if !inner.ended {
            inner.name =
                attrs::truncate(t, tracer.limits.get().max_value_len, &tracer.attr_counters).into();
        }
    }

    #[pyo3(signature = (name, attributes=None, timestamp=None))]
    fn add_event(
        &self,
        name: &Bound<'_, PyString>,
        attributes: Option<&Bound<'_, PyAny>>,
        timestamp: Option<u64>,
    ) {
        let tracer = self.tracer.get();
        let (limits, counters) = self.limits(tracer);
        let limits = &limits;
        let mut event = Event {
            name: attrs::truncate(attrs::text(name, counters), limits.max_value_len, counters),
            time_unix_ns: timestamp.unwrap_or_else(clock::now_unix_ns),
            attributes: Vec::new(),
        };
        if let Some(a) = attributes.and_then(|a| a.downcast::<PyDict>().ok()) {
            for (k, v) in a.iter() {
                if let (Some(k), Some(v)) = (
                    attrs::key(&k, limits, counters),
                    attrs::convert(&v, limits, counters),
                ) {
                    event.attributes.push((k, v));
                }
            }
        }
        let mut inner = self.inner.lock();
        if !inner.ended {
            self.push_event(&mut inner, event);
        }
    }

    /// Link this span to another span's context.
    #[pyo3(signature = (context, attributes=None))]
    fn add_link(&self, context: &Bound<'_, SpanContext>, attributes: Option<&Bound<'_, PyDict>>) {
        let tracer = self.tracer.get();
        let (limits, counters) = self.limits(tracer);
        let limits = &limits;
        let c = context.get();
        let mut link = Link {
            trace_id: c.trace_id,
            span_id: c.span_id,
            trace_state: c.trace_state.clone(),
            attributes: Vec::new(),
        };
        if let Some(a) = attributes {
            for (k, v) in a.iter() {
                if let (Some(k), Some(v)) = (
                    attrs::key(&k, limits, counters),
                    attrs::convert(&v, limits, counters),
                ) {
                    link.attributes.push((k, v));
                }
            }
        }
        let mut inner = self.inner.lock();
        if !inner.ended && inner.links.len() < limits.max_events {
            inner.links.push(link);
        }
    }

    /// Record an exception as an `exception` event (type, message, stack trace).
    #[pyo3(signature = (exception, attributes=None, timestamp=None, escaped=false))]
    fn record_exception(
        &self,
        py: Python<'_>,
        exception: &Bound<'_, PyAny>,
        attributes: Option<&Bound<'_, PyAny>>,
        timestamp: Option<u64>,
        escaped: bool,
    ) -> PyResult<()> {
        let event = self.exception_event(py, exception, attributes, timestamp, escaped)?;
        let mut inner = self.inner.lock();
        if !inner.ended {
            self.push_event(&mut inner, event);
        }
        Ok(())
    }

    /// End the span (at `end_time`, Unix nanoseconds, if given). Ending twice
    /// is harmless and counted.
    #[pyo3(signature = (end_time=None))]
    pub(crate) fn end(&self, py: Python<'_>, end_time: Option<u64>) {
        let end_mono = match end_time {
            Some(t) => clock::unix_to_mono_ns(t),
            None => clock::now_mono_ns(),
        };
        self.end_at(py, end_mono);
    }

    fn __enter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, Self>> {
        let span = slf.get();
        if !span.recording {
            return Ok(slf.clone());
        }
        let tracer = span.tracer.get();
        let token = tracer.current.set(slf.as_any())?;
        span.inner.lock().token = Some(token.unbind());
        Ok(slf.clone())
    }

    /// `(exc_type, exc_value, traceback)`, taken as one tuple: parsing three
    /// optional parameters costs more than the rest of the call.
    #[pyo3(signature = (*args))]
    fn __exit__(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> bool {
        self.exit_with(py, args.get_item(1).ok().as_ref())
    }

    fn __repr__(&self) -> String {
        let inner = self.inner.lock();
        format!(
            "<Span {:?} kind={} trace_id={:032x} span_id={:016x}{}>",
            inner.name,
            inner.kind,
            self.trace_id,
            self.span_id,
            if inner.ended { " ended" } else { "" }
        )
    }
}

impl Span {
    /// An exception escaped the span's code: record it as an event and make
    /// the span an error (`Type: message`) unless its status is final.
    pub(crate) fn fail_with(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) {
        let Ok(event) = self.exception_event(py, exc, None, None, true) else {
            return;
        };
        let tracer = self.tracer.get();
        // `str(exc)` runs Python code: before the span is locked.
        let ty = exc
            .get_type()
            .qualname()
            .map(|q| q.to_string())
            .unwrap_or_default();
        let msg = exc
            .str()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = if msg.is_empty() {
            ty
        } else {
            format!("{ty}: {msg}")
        };
        let mut inner = self.inner.lock();
        if inner.ended {
            return;
        }
        self.push_event(&mut inner, event);
        if inner.status != StatusCode::Ok {
            inner.status = StatusCode::Error;
            inner.status_message = attrs::truncate(
                text,
                tracer.limits.get().max_value_len,
                &tracer.attr_counters,
            );
        }
    }

    /// The with-statement's exit: record `exc_value` (if any) and end.
    pub(crate) fn exit_with(&self, py: Python<'_>, exc_value: Option<&Bound<'_, PyAny>>) -> bool {
        if !self.recording {
            return false;
        }
        let end_mono = clock::now_mono_ns();
        let tracer = self.tracer.get();
        if let Some(exc) = exc_value.filter(|e| !e.is_none()) {
            self.fail_with(py, exc);
        }
        let token = self.inner.lock().token.take();
        if let Some(token) = token {
            // A token made in another context (a generator resumed elsewhere)
            // cannot be reset there: count it, the span still ends.
            if tracer.current.reset(token.bind(py)).is_err() {
                tracer
                    .counters
                    .context_reset_failed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.end_at(py, end_mono);
        false
    }
}

/// Build the tuple form used by `SpanData.attributes` helpers.
pub(crate) fn attributes_dict<'py>(
    py: Python<'py>,
    a: &Attributes,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in a {
        d.set_item(&**k, attrs::to_py(py, v)?)?;
    }
    Ok(d)
}
