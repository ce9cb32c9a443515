//! The `SpanContext` class: the immutable identity of a span (trace id,
//! span id, flags, trace state), what a child or another process needs.
//!
//! GIL and locks: its methods run with the GIL and take no lock; the value
//! is immutable once built.

use crate::guard::guard;
use pulsetrace_core::propagation::{format_traceparent, normalize_tracestate};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

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
