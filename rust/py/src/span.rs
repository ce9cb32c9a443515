//! The `Span` class (its Python methods in [`methods`]) and the
//! `SpanContext` class ([`context`]). A span is `frozen` with its mutable
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
use pulsetrace_core::inflight::IN_FLIGHT;
use pulsetrace_core::span::{AttrValue, Attributes, Event, Link, SpanKind, SpanRecord, StatusCode};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyString};
use std::sync::atomic::Ordering;
use std::sync::Arc;

mod context;
mod methods;

pub use context::SpanContext;

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
    /// Its context went out on a call and is listed in
    /// `pulsetrace_core::inflight` until it ends.
    pub propagated: bool,
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
            propagated: false,
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

    /// A response's status code: recorded as `http.response.status_code`,
    /// and a 5xx makes the span an error with the message `HTTP 503`,
    /// unless its status is final (ok) or it already is an error with a
    /// message of its own (an exception the framework recorded says more
    /// than the code). The one rule of every server integration: the
    /// native WSGI path and, through `http_response_status`, the Python
    /// ones.
    pub(crate) fn record_response_status(&self, code: u16) {
        let (limits, counters) = self.limits(self.tracer.get());
        let mut inner = self.inner.lock();
        if inner.ended {
            return;
        }
        Span::set_one(
            &mut inner,
            crate::http::keys().status.clone(),
            AttrValue::Int(i64::from(code)),
            &limits,
            counters,
        );
        let unexplained = match inner.status {
            StatusCode::Unset => true,
            StatusCode::Error => inner.status_message.is_empty(),
            StatusCode::Ok => false,
        };
        if unexplained {
            if let Some(message) = pulsetrace_core::http::status_error(code) {
                inner.status = StatusCode::Error;
                inner.status_message = message;
            }
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
        if inner.propagated {
            IN_FLIGHT.remove(self.span_id);
        }
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
