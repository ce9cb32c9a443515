//! The `Span` and `SpanContext` classes. A span is `frozen` with its mutable
//! state behind a mutex, so it can be shared between threads (and works
//! without the GIL's protection). Ending a span crosses into the core once,
//! with one boxed record.
//!
//! The mutex is never held while Python code runs: values are converted
//! (which may run the application's `__str__`, or a finaliser) before it is
//! taken, and Python objects are built after it is released. Otherwise that
//! code, or another thread it lets run, could use the same span and wait
//! forever for the lock. Every method runs under a panic guard
//! ([`crate::guard`]); what a span may hold is bounded as [`crate::attrs`]
//! describes.
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
use crate::guard::guard;
use crate::tracer::Tracer;
use parking_lot::Mutex;
use pulsetrace_core::clock;
use pulsetrace_core::propagation::{format_traceparent, normalize_tracestate};
use pulsetrace_core::span::{AttrValue, Attributes, Event, Link, SpanKind, SpanRecord, StatusCode};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyString};
use std::sync::atomic::Ordering;
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
        py: Python<'_>,
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
        // Every span of the trace copies it: a malformed or oversized one
        // (W3C: at most 32 members, 512 characters) is dropped.
        let trace_state = guard(
            py,
            "span_context.new",
            || normalize_tracestate(&trace_state),
            || None,
        )
        .unwrap_or_default();
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
    /// What the attributes are charged ([`attrs::attribute_cost`]).
    pub attribute_bytes: usize,
    /// What the events and links are charged, together.
    pub event_bytes: usize,
    pub ended: bool,
    pub token: Option<PyObject>,
}

impl Inner {
    /// A span's mutable part as it starts: no attributes, events or links,
    /// status unset. `ended`: true for the no-op span, which never records.
    #[inline]
    pub(crate) fn new(name: Arc<str>, kind: SpanKind, ended: bool) -> Self {
        Inner {
            name,
            kind,
            attributes: Vec::new(),
            events: Vec::new(),
            links: Vec::new(),
            status: StatusCode::Unset,
            status_message: String::new(),
            http_status: 0,
            dropped_attributes: 0,
            dropped_events: 0,
            attribute_bytes: 0,
            event_bytes: 0,
            ended,
            token: None,
        }
    }
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
            inner: Mutex::new(Inner::new(Arc::from(""), SpanKind::Internal, true)),
        }
    }

    fn limits<'a>(&self, tracer: &'a Tracer) -> (Limits, &'a AttrCounters) {
        (tracer.limits.get(), &tracer.attr_counters)
    }

    /// Store one converted attribute: an existing key is updated, a new one
    /// added within the count limit, both within the span's attribute
    /// budget; otherwise it is dropped and counted.
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
        let cost = attrs::attribute_cost(&key, &value);
        let budget = limits.attribute_budget();
        if let Some(slot) = inner.attributes.iter_mut().find(|(k, _)| *k == key) {
            let used = inner
                .attribute_bytes
                .saturating_sub(attrs::attribute_cost(&key, &slot.1));
            if used + cost <= budget {
                slot.1 = value;
                inner.attribute_bytes = used + cost;
                return;
            }
        } else if inner.attributes.len() < limits.max_attributes
            && inner.attribute_bytes + cost <= budget
        {
            inner.attributes.push((key, value));
            inner.attribute_bytes += cost;
            return;
        }
        inner.dropped_attributes = inner.dropped_attributes.saturating_add(1);
        AttrCounters::bump(&counters.dropped);
    }

    /// Store converted attributes (`collected` from a mapping).
    pub(crate) fn set_collected(
        inner: &mut Inner,
        collected: attrs::Collected,
        limits: &Limits,
        counters: &AttrCounters,
    ) {
        let over = u32::try_from(collected.over).unwrap_or(u32::MAX);
        inner.dropped_attributes = inner.dropped_attributes.saturating_add(over);
        let a = collected.attributes;
        // A new span given a few distinct keys that fit (`start_span`'s
        // attributes, the usual case): the vector becomes the span's own.
        if inner.attributes.is_empty() && a.len() <= limits.max_attributes.min(16) {
            let distinct = a
                .iter()
                .enumerate()
                .all(|(i, (k, _))| a[..i].iter().all(|(other, _)| other != k));
            let cost: usize = a.iter().map(|(k, v)| attrs::attribute_cost(k, v)).sum();
            if distinct && cost <= limits.attribute_budget() {
                if let Some((_, AttrValue::Int(code))) =
                    a.iter().find(|(k, _)| &**k == HTTP_STATUS_KEY)
                {
                    inner.http_status = u16::try_from(*code).unwrap_or(0);
                }
                inner.attributes = a;
                inner.attribute_bytes = cost;
                return;
            }
        }
        inner.attributes.reserve(a.len());
        for (k, v) in a {
            Span::set_one(inner, k, v, limits, counters);
        }
    }

    /// Add an event within the count limit and the events' budget;
    /// otherwise it is dropped and counted.
    pub(crate) fn push_event(
        inner: &mut Inner,
        event: Event,
        limits: &Limits,
        counters: &AttrCounters,
    ) {
        let cost = attrs::event_cost(&event);
        if inner.events.len() < limits.max_events
            && inner.event_bytes + cost <= limits.event_budget()
        {
            inner.event_bytes += cost;
            inner.events.push(event);
        } else {
            inner.dropped_events = inner.dropped_events.saturating_add(1);
            AttrCounters::bump(&counters.dropped);
        }
    }

    /// Add a link within the count limit (`max_events`, as for events) and
    /// the budget it shares with the events; otherwise it is dropped and
    /// counted.
    pub(crate) fn push_link(
        inner: &mut Inner,
        link: Link,
        limits: &Limits,
        counters: &AttrCounters,
    ) {
        let cost = attrs::link_cost(&link);
        if inner.links.len() < limits.max_events
            && inner.event_bytes + cost <= limits.event_budget()
        {
            inner.event_bytes += cost;
            inner.links.push(link);
        } else {
            AttrCounters::bump(&counters.dropped);
        }
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

    /// The `exception` event of `exc`: its type, message (within the length
    /// limit) and stack trace (within eight times that), and the
    /// converted `attributes`. Runs the exception's own code (`__str__`):
    /// call it without the span's lock.
    pub(crate) fn exception_event(
        &self,
        py: Python<'_>,
        exc: &Bound<'_, PyAny>,
        attributes: Option<&Bound<'_, PyAny>>,
        timestamp: Option<u64>,
        escaped: bool,
    ) -> Event {
        let tracer = self.tracer.get();
        let (limits, counters) = self.limits(tracer);
        let limits = &limits;
        let max = limits.max_value_len;
        let ty = exc.get_type();
        let qualname = ty
            .qualname()
            .map(|q| attrs::string(&q, max, counters))
            .unwrap_or_else(|_| "Exception".into());
        let module = ty
            .module()
            .map(|m| attrs::string(&m, max, counters))
            .unwrap_or_default();
        let type_name = if module.is_empty() || module == "builtins" {
            qualname
        } else {
            format!("{module}.{qualname}")
        };
        let message = exc
            .str()
            .map(|s| attrs::arc_text(&s, max, counters))
            .unwrap_or_else(|_| Arc::from(""));
        let stack = format_exception(py, exc)
            .map(|s| attrs::arc_text(&s, max.saturating_mul(8), counters))
            .unwrap_or_else(|| Arc::from(""));
        let mut event_attrs: Attributes = vec![
            (
                "exception.type".into(),
                AttrValue::Str(attrs::truncate(type_name, max, counters).into()),
            ),
            ("exception.message".into(), AttrValue::Str(message)),
            ("exception.stacktrace".into(), AttrValue::Str(stack)),
            ("exception.escaped".into(), AttrValue::Bool(escaped)),
        ];
        if let Some(extra) = attributes.filter(|a| !a.is_none()) {
            let c = attrs::collect(extra, limits.max_attributes, limits, counters);
            event_attrs.extend(c.attributes);
        }
        Event {
            name: "exception".into(),
            time_unix_ns: timestamp.unwrap_or_else(clock::now_unix_ns),
            attributes: event_attrs,
        }
    }
}

fn format_exception<'py>(py: Python<'py>, exc: &Bound<'py, PyAny>) -> Option<Bound<'py, PyString>> {
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
    joined.downcast_into::<PyString>().ok()
}

fn parse_status(status: &Bound<'_, PyAny>) -> PyResult<StatusCode> {
    if let Ok(s) = status.downcast::<PyString>() {
        let text = crate::pystr::utf8(s).unwrap_or("");
        return match text.to_ascii_lowercase().as_str() {
            "unset" => Ok(StatusCode::Unset),
            "ok" => Ok(StatusCode::Ok),
            "error" => Ok(StatusCode::Error),
            _ => Err(PyValueError::new_err(format!(
                "status must be 'unset', 'ok' or 'error', not {:?}",
                text.get(..64).unwrap_or(text)
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
            "not a span status: a {} object",
            status
                .get_type()
                .qualname()
                .map(|q| q.to_string_lossy().into_owned())
                .unwrap_or_default()
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
        guard(
            py,
            "span.attributes",
            || {
                // Copied under the lock, converted after it: building Python
                // objects may run a collection, and with it any finaliser.
                let copy = self.inner.lock().attributes.clone();
                attributes_dict(py, &copy)
            },
            || Ok(PyDict::new(py)),
        )
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
        guard(
            key.py(),
            "span.set_attribute",
            || {
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
            },
            || (),
        );
    }

    fn set_attributes(&self, attributes: &Bound<'_, PyAny>) {
        guard(
            attributes.py(),
            "span.set_attributes",
            || {
                let tracer = self.tracer.get();
                let (limits, counters) = self.limits(tracer);
                if self.inner.lock().ended {
                    return;
                }
                let collected =
                    attrs::collect(attributes, limits.max_attributes, &limits, counters);
                let mut inner = self.inner.lock();
                if !inner.ended {
                    Span::set_collected(&mut inner, collected, &limits, counters);
                }
            },
            || (),
        );
    }

    /// Set the status: 'ok', 'error' or 'unset' (or OpenTelemetry's codes).
    /// 'ok' is final; 'unset' changes nothing.
    #[pyo3(signature = (status, description=None))]
    fn set_status(
        &self,
        status: &Bound<'_, PyAny>,
        description: Option<&Bound<'_, PyString>>,
    ) -> PyResult<()> {
        guard(
            status.py(),
            "span.set_status",
            || {
                let code = parse_status(status)?;
                let tracer = self.tracer.get();
                let (limits, counters) = self.limits(tracer);
                let desc = description.cloned().or_else(|| {
                    status
                        .getattr("description")
                        .ok()
                        .and_then(|d| d.downcast_into::<PyString>().ok())
                });
                let message = desc.map(|d| attrs::string(&d, limits.max_value_len, counters));
                let mut inner = self.inner.lock();
                if inner.ended || inner.status == StatusCode::Ok || code == StatusCode::Unset {
                    return Ok(());
                }
                inner.status = code;
                if code == StatusCode::Error {
                    if let Some(m) = message {
                        inner.status_message = m;
                    }
                }
                Ok(())
            },
            || Ok(()),
        )
    }

    fn update_name(&self, name: &Bound<'_, PyString>) {
        guard(
            name.py(),
            "span.update_name",
            || {
                let tracer = self.tracer.get();
                let (limits, counters) = self.limits(tracer);
                let t = attrs::arc_text(name, limits.max_value_len, counters);
                let mut inner = self.inner.lock();
                if !inner.ended {
                    inner.name = t;
                }
            },
            || (),
        );
    }

    #[pyo3(signature = (name, attributes=None, timestamp=None))]
    fn add_event(
        &self,
        name: &Bound<'_, PyString>,
        attributes: Option<&Bound<'_, PyAny>>,
        timestamp: Option<u64>,
    ) {
        guard(
            name.py(),
            "span.add_event",
            || {
                let tracer = self.tracer.get();
                let (limits, counters) = self.limits(tracer);
                let mut event = Event {
                    name: attrs::string(name, limits.max_value_len, counters),
                    time_unix_ns: timestamp.unwrap_or_else(clock::now_unix_ns),
                    attributes: Vec::new(),
                };
                if let Some(a) = attributes.filter(|a| !a.is_none()) {
                    event.attributes =
                        attrs::collect(a, limits.max_attributes, &limits, counters).attributes;
                }
                let mut inner = self.inner.lock();
                if !inner.ended {
                    Span::push_event(&mut inner, event, &limits, counters);
                }
            },
            || (),
        );
    }

    /// Link this span to another span's context.
    #[pyo3(signature = (context, attributes=None))]
    fn add_link(&self, context: &Bound<'_, SpanContext>, attributes: Option<&Bound<'_, PyAny>>) {
        guard(
            context.py(),
            "span.add_link",
            || {
                let tracer = self.tracer.get();
                let (limits, counters) = self.limits(tracer);
                let c = context.get();
                let mut link = Link {
                    trace_id: c.trace_id,
                    span_id: c.span_id,
                    trace_state: c.trace_state.clone(),
                    attributes: Vec::new(),
                };
                if let Some(a) = attributes.filter(|a| !a.is_none()) {
                    link.attributes =
                        attrs::collect(a, limits.max_attributes, &limits, counters).attributes;
                }
                let mut inner = self.inner.lock();
                if !inner.ended {
                    Span::push_link(&mut inner, link, &limits, counters);
                }
            },
            || (),
        );
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
    ) {
        guard(
            py,
            "span.record_exception",
            || {
                let event = self.exception_event(py, exception, attributes, timestamp, escaped);
                let tracer = self.tracer.get();
                let (limits, counters) = self.limits(tracer);
                let mut inner = self.inner.lock();
                if !inner.ended {
                    Span::push_event(&mut inner, event, &limits, counters);
                }
            },
            || (),
        );
    }

    /// End the span (at `end_time`, Unix nanoseconds, if given). Ending twice
    /// is harmless and counted.
    #[pyo3(signature = (end_time=None))]
    pub(crate) fn end(&self, py: Python<'_>, end_time: Option<u64>) {
        guard(
            py,
            "span.end",
            || {
                let end_mono = match end_time {
                    Some(t) => clock::unix_to_mono_ns(t),
                    None => clock::now_mono_ns(),
                };
                self.end_at(py, end_mono);
            },
            || (),
        );
    }

    fn __enter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, Self>> {
        let span = slf.get();
        if !span.recording {
            return Ok(slf.clone());
        }
        guard(
            slf.py(),
            "span.enter",
            || {
                let tracer = span.tracer.get();
                let token = tracer.current.set(slf.as_any())?;
                span.inner.lock().token = Some(token.unbind());
                Ok(slf.clone())
            },
            || Ok(slf.clone()),
        )
    }

    /// End the span; an exception is recorded on it and makes it an error.
    /// After a panic the span still ends and gives the context back, without
    /// recording the exception (its argument is what could not be read).
    fn __exit__(
        &self,
        exc_type: &Bound<'_, PyAny>,
        exc_value: &Bound<'_, PyAny>,
        traceback: &Bound<'_, PyAny>,
    ) -> bool {
        let _ = (exc_type, traceback);
        let py = exc_value.py();
        guard(
            py,
            "span.exit",
            || self.exit_with(py, Some(exc_value)),
            || self.exit_with(py, None),
        )
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
        let event = self.exception_event(py, exc, None, None, true);
        let tracer = self.tracer.get();
        let (limits, counters) = self.limits(tracer);
        // Built before the lock is taken: the exception's `__str__` is its
        // own code.
        let status_message = {
            let ty = exc
                .get_type()
                .qualname()
                .map(|q| attrs::string(&q, limits.max_value_len, counters))
                .unwrap_or_default();
            let msg = exc
                .str()
                .map(|s| attrs::string(&s, limits.max_value_len, counters))
                .unwrap_or_default();
            let text = if msg.is_empty() {
                ty
            } else {
                format!("{ty}: {msg}")
            };
            attrs::truncate(text, limits.max_value_len, counters)
        };
        let mut inner = self.inner.lock();
        if inner.ended {
            return;
        }
        Span::push_event(&mut inner, event, &limits, counters);
        if inner.status != StatusCode::Ok {
            inner.status = StatusCode::Error;
            inner.status_message = status_message;
        }
    }

    /// The with-statement's exit: record `exc_value` (if any), give the
    /// context its previous span back, end. Each step is guarded on its own,
    /// so that a failure recording the exception still ends the span and
    /// restores the context.
    pub(crate) fn exit_with(&self, py: Python<'_>, exc_value: Option<&Bound<'_, PyAny>>) -> bool {
        if !self.recording {
            return false;
        }
        let end_mono = clock::now_mono_ns();
        let tracer = self.tracer.get();
        if let Some(exc) = exc_value.filter(|e| !e.is_none()) {
            guard(py, "span.exit.error", || self.fail_with(py, exc), || ());
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
        guard(py, "span.end", || self.end_at(py, end_mono), || ());
        // The application's exception always propagates.
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
