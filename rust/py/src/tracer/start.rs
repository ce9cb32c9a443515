//! Starting a span: the arguments of `start_span` converted (kind, links,
//! incoming header values), the parent found, and the head sampler's
//! decision applied ([`pulsetrace_core::head::HeadSampler::start`] places the
//! span in its trace; the binding reads the parent and builds the `Span`).
//!
//! GIL and locks: with the GIL, O(1) but for the links given; the tracer's
//! `head` mutex is held only to copy the sampler out (see [`super`]).

use super::Tracer;
use crate::attrs::{self, AttrCounters, Limits};
use crate::ids;
use crate::span::{Inner, Span, SpanContext};
use parking_lot::Mutex;
use pulsetrace_core::head::StartParent;
use pulsetrace_core::inflight::IN_FLIGHT;
use pulsetrace_core::span::SpanKind;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The longest header value `extract` reads (a W3C `tracestate` is at most
/// 512 characters, a `traceparent` 55); a longer one is malformed.
const MAX_HEADER_LEN: usize = 1024;

/// A header value as text: a str or bytes (None: anything else, ignored as
/// an absent header), or `Err` if it is longer than [`MAX_HEADER_LEN`]
/// (malformed; not copied).
pub(super) fn header_text(v: &Bound<'_, PyAny>) -> Option<Result<String, ()>> {
    if let Ok(s) = v.downcast::<PyString>() {
        if attrs::char_len(s) > MAX_HEADER_LEN {
            return Some(Err(()));
        }
        return Some(Ok(s.to_string_lossy().into_owned()));
    }
    let b = v.downcast::<pyo3::types::PyBytes>().ok()?.as_bytes();
    Some(if b.len() > MAX_HEADER_LEN {
        Err(())
    } else {
        Ok(String::from_utf8_lossy(b).into_owned())
    })
}

/// The links `start_span` was given: the contexts of the Spans and
/// SpanContexts among the first `max_events` items; anything else, and what
/// an exception in the iteration leaves out, is dropped and counted. Not an
/// iterable: a TypeError.
pub(super) fn links_of(
    links: &Bound<'_, PyAny>,
    limits: &Limits,
    counters: &AttrCounters,
) -> PyResult<Vec<pulsetrace_core::span::Link>> {
    let py = links.py();
    let iter = match links.try_iter() {
        Ok(iter) => iter,
        Err(e) if e.is_instance_of::<PyTypeError>(py) => {
            return Err(PyTypeError::new_err(
                "links must be an iterable of Span or SpanContext",
            ))
        }
        Err(_) => {
            AttrCounters::bump(&counters.dropped);
            return Ok(Vec::new());
        }
    };
    let mut out = Vec::new();
    for link in iter {
        if out.len() == limits.max_events {
            AttrCounters::bump(&counters.dropped);
            break;
        }
        let Ok(link) = link else {
            AttrCounters::bump(&counters.dropped);
            break;
        };
        let ctx = if let Ok(s) = link.downcast::<Span>() {
            s.get().span_context()
        } else if let Ok(c) = link.downcast::<SpanContext>() {
            c.get().clone()
        } else {
            AttrCounters::bump(&counters.dropped);
            continue;
        };
        out.push(pulsetrace_core::span::Link {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            trace_state: ctx.trace_state,
            attributes: Vec::new(),
        });
    }
    Ok(out)
}

pub(super) fn parse_kind(kind: Option<&Bound<'_, PyAny>>) -> PyResult<SpanKind> {
    let Some(kind) = kind else {
        return Ok(SpanKind::Internal);
    };
    if let Ok(s) = kind.downcast::<PyString>() {
        let s = crate::pystr::utf8(s).unwrap_or("");
        return SpanKind::parse(s)
            .or_else(|| SpanKind::parse(&s.to_ascii_lowercase()))
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                "span kind must be one of internal, server, client, producer, consumer, not {s:?}"
            ))
            });
    }
    if kind.is_instance_of::<PyInt>() {
        let v: u8 = kind.extract()?;
        return SpanKind::from_u8(v)
            .ok_or_else(|| PyValueError::new_err(format!("no span kind {v}")));
    }
    // An enum whose name is a kind (OpenTelemetry's SpanKind).
    if let Ok(name) = kind.getattr("name").and_then(|n| n.extract::<String>()) {
        if let Some(k) = SpanKind::parse(&name.to_ascii_lowercase()) {
            return Ok(k);
        }
    }
    Err(PyTypeError::new_err(
        "span kind must be a str such as 'server'",
    ))
}

impl Tracer {
    /// A new recording span (not yet current): its parent is `parent` (a
    /// Span or SpanContext) if given, else the current span, else none.
    pub(crate) fn new_span(
        &self,
        slf: &Bound<'_, Self>,
        name: Arc<str>,
        kind: SpanKind,
        parent: Option<&Bound<'_, PyAny>>,
        start_mono: u64,
    ) -> PyResult<Span> {
        let py = slf.py();
        let current;
        let parent = match parent {
            Some(p) => Some(p),
            None => {
                // Anything but a span or a context (what `use_context` may
                // have been given) is no parent.
                current = self.current.get(py)?;
                (current.is_instance_of::<Span>() || current.is_instance_of::<SpanContext>())
                    .then_some(&current)
            }
        };
        let Some(head) = *self.head.lock() else {
            return Err(PyRuntimeError::new_err(
                "pulsetrace: the tracer is not configured yet",
            ));
        };
        // The parent's fields are read in place (its tracestate borrowed):
        // the core decides, then copies what the span keeps.
        let span_parent;
        let context_parent;
        let parent = match parent.filter(|p| !p.is_none()) {
            None => None,
            Some(p) => {
                if let Ok(s) = p.downcast::<Span>() {
                    span_parent = s.get();
                    Some(StartParent {
                        trace_id: span_parent.trace_id,
                        span_id: span_parent.span_id,
                        flags: span_parent.trace_flags,
                        trace_state: &span_parent.trace_state,
                        foreign: false,
                        remote: false,
                        open_here: false,
                    })
                } else if let Ok(c) = p.downcast::<SpanContext>() {
                    context_parent = c.get();
                    Some(StartParent {
                        trace_id: context_parent.trace_id,
                        span_id: context_parent.span_id,
                        flags: context_parent.trace_flags,
                        trace_state: &context_parent.trace_state,
                        foreign: true,
                        remote: context_parent.is_remote,
                        // Looked up only for a remote context (a request
                        // that carried a traceparent).
                        open_here: context_parent.is_remote
                            && IN_FLIGHT.contains(context_parent.span_id),
                    })
                } else {
                    return Err(PyTypeError::new_err(
                        "parent must be a Span or a SpanContext",
                    ));
                }
            }
        };
        let start = head.start(parent, || ids::trace_id(py));
        if start.randomness_presumed {
            if let Some(core) = self.core.load().as_ref() {
                core.counters
                    .sampling_randomness_presumed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(Span {
            tracer: slf.clone().unbind(),
            trace_id: start.trace_id,
            span_id: ids::span_id(py),
            parent_span_id: start.parent_span_id,
            trace_flags: start.flags,
            trace_state: start.trace_state,
            local_root: start.local_root,
            remote_parent: start.remote_parent,
            start_mono,
            recording: true,
            inner: Mutex::new(Inner::new(name, kind, false)),
        })
    }

    /// The shared span handed out while tracing is off: every method is a
    /// no-op, entering it changes no context.
    pub(crate) fn noop_span(&self, slf: &Bound<'_, Self>) -> PyResult<Py<Span>> {
        if let Some(s) = self.noop.get() {
            return Ok(s.clone_ref(slf.py()));
        }
        let span = Py::new(slf.py(), Span::noop(slf.clone().unbind()))?;
        let _ = self.noop.set(span);
        Ok(self.noop.get().expect("set above").clone_ref(slf.py()))
    }
}
