//! `Span`'s Python methods: the API an application calls (attributes,
//! events, links, status, the with-statement, `end`). Each converts its
//! arguments before taking the span's lock and builds Python objects after
//! releasing it, as the parent module's docs require; the span's own logic
//! is `Span`'s native methods (`crate::span`).
//!
//! GIL and locks: as `crate::span` says (every method runs with the GIL; the
//! span's mutex is never held across Python code).

use super::{attributes_dict, Span, SpanContext};
use crate::attrs;
use crate::guard::guard;
use pulsetrace_core::clock;
use pulsetrace_core::inflight::IN_FLIGHT;
use pulsetrace_core::propagation::format_traceparent;
use pulsetrace_core::span::{Event, Link, StatusCode};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

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
    /// Read to go out on a call: until the span ends, a request that comes
    /// back into this process with it is not a new local root of the trace
    /// (`pulsetrace_core::inflight`).
    #[getter]
    fn traceparent(&self) -> String {
        if self.recording {
            let mut inner = self.inner.lock();
            if !inner.ended && !inner.propagated {
                inner.propagated = IN_FLIGHT.insert(self.span_id);
            }
        }
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
