//! A client call inside its own CLIENT span, in one native call: what a SQL
//! hook's statement costs beyond the statement itself.
//!
//! [`ClientCall`] is made once per hook with the library's method (sqlite3's
//! `Cursor.execute`), the key its row count goes under and the hook's error
//! handler. Each call starts the span (a child of the current span, not made
//! current: nothing the call runs is traced inside it), calls the method,
//! sets the row count, ends the span. The span becomes a Python object only
//! when the error handler needs one. What the span is named and carries is
//! the hook's to decide (Python passes them in); this only runs the call.
//!
//! Failure rule: pulsetrace's own errors (reported through
//! `pulsetrace._diag.internal_error`) leave the call untraced or the span
//! without its row count; the method runs exactly once, and its exception
//! reaches the caller as the same object.
//!
//! GIL and locks: runs with the GIL (it calls the method); the span's lock
//! is taken only to set the row count, never across Python code.

use super::{Tracer, ON};
use crate::attrs;
use crate::guard::{guard, report};
use crate::span::Span;
use pulsetrace_core::clock;
use pulsetrace_core::span::{AttrValue, SpanKind};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString};
use pyo3::{PyTraverseError, PyVisit};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// `method(target, statement, parameters)` in a CLIENT span.
#[pyclass(module = "pulsetrace._native", name = "ClientCall", frozen)]
pub struct ClientCall {
    tracer: Py<Tracer>,
    method: PyObject,
    /// The attribute a non-negative int `target.rowcount` goes under.
    rows_key: Arc<str>,
    /// Called as `on_error(span, exception)` when the method raises.
    on_error: PyObject,
}

#[pymethods]
impl ClientCall {
    #[new]
    fn new(tracer: Py<Tracer>, method: PyObject, rows_key: &str, on_error: PyObject) -> Self {
        ClientCall {
            tracer,
            method,
            rows_key: Arc::from(rows_key),
            on_error,
        }
    }

    /// `method(target, statement, parameters)` in a CLIENT span named
    /// `name` with `attributes` (a mapping or a tuple of pairs, as
    /// `start_span` takes); returns what the method returns.
    #[pyo3(signature = (target, statement, parameters, name, attributes, /))]
    fn call<'py>(
        &self,
        py: Python<'py>,
        target: &Bound<'py, PyAny>,
        statement: &Bound<'py, PyAny>,
        parameters: &Bound<'py, PyAny>,
        name: &Bound<'py, PyString>,
        attributes: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let method = self.method.bind(py);
        let tracer = self.tracer.bind(py);
        let span = guard(
            py,
            "client.start",
            || self.start(tracer, name, attributes),
            || Ok(None),
        )
        .unwrap_or_else(|e| {
            report(py, "client.start", e);
            None
        });
        let Some(span) = span else {
            return method.call1((target, statement, parameters));
        };
        match method.call1((target, statement, parameters)) {
            Ok(result) => {
                guard(py, "client.end", || self.end(py, &span, target), || ());
                Ok(result)
            }
            Err(e) => {
                self.fail(py, span, &e);
                Err(e)
            }
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.tracer)?;
        visit.call(&self.method)?;
        visit.call(&self.on_error)
    }
}

impl ClientCall {
    /// The call's span, or None: the tracer is off (or configuring itself).
    fn start(
        &self,
        tracer: &Bound<'_, Tracer>,
        name: &Bound<'_, PyString>,
        attributes: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Span>> {
        let t = tracer.get();
        if t.state.load(Ordering::Relaxed) != ON && !(t.ready(tracer.py())? && t.is_enabled()) {
            return Ok(None);
        }
        let start_mono = clock::now_mono_ns();
        let (limits, counters) = t.limits();
        let name = attrs::shared(name, &limits, counters);
        let collected = attrs::collect(attributes, limits.max_attributes, &limits, counters);
        let mut span = t.new_span(tracer, name, SpanKind::Client, None, start_mono)?;
        Span::set_collected(span.inner.get_mut(), collected, &limits, counters);
        Ok(Some(span))
    }

    /// The row count ([`rows_of`]), and the end.
    fn end(&self, py: Python<'_>, span: &Span, target: &Bound<'_, PyAny>) {
        if let Some(rows) = rows_of(target) {
            let (limits, counters) = span.tracer.get().limits();
            let mut inner = span.inner.lock();
            Span::set_one(
                &mut inner,
                self.rows_key.clone(),
                AttrValue::Int(rows),
                &limits,
                counters,
            );
        }
        span.end_at(py, clock::now_mono_ns());
    }

    /// The method raised `err`: the hook's error handler describes it on
    /// the span (and ends it).
    fn fail(&self, py: Python<'_>, span: Span, err: &PyErr) {
        let handled = crate::newobj::new_bound(py, span)
            .and_then(|s| self.on_error.bind(py).call1((s, err.value(py))).map(drop));
        if let Err(e) = handled {
            report(py, "client.error", e);
        }
    }
}

/// What a statement's span reports as its row count: `target.rowcount`
/// when it is an int (not a bool) and not negative (DB-API's -1: unknown).
/// The one place this is decided, for every SQL hook.
fn rows_of(target: &Bound<'_, PyAny>) -> Option<i64> {
    target
        .getattr(pyo3::intern!(target.py(), "rowcount"))
        .ok()
        .filter(|r| r.is_exact_instance_of::<PyInt>())
        .and_then(|r| r.extract::<i64>().ok())
        .filter(|&r| r >= 0)
}

/// The row count a statement's span reports for `target` (the cursor, or
/// whatever has its `rowcount`), or None: what `ClientCall` sets, for the
/// hooks that end their spans in Python.
#[pyfunction]
pub fn sql_row_count(target: &Bound<'_, PyAny>) -> Option<i64> {
    rows_of(target)
}
