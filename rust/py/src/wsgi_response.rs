//! The WSGI response object: one per request, it is both the
//! `start_response` the application gets and the body the server gets back
//! (see [`TracedResponse`]). It owns what only a WSGI request has: the
//! server's `start_response`, the application's body and its iterator,
//! whether the application call's context switch is still in place.
//!
//! GIL and locks: everything runs with the GIL (it calls the application).
//! A response's `state` and its span's `inner` are each taken only with the
//! GIL held and never across a call into Python code (the application,
//! `start_response`, the body, the namer run with none held; `__traverse__`
//! only tries `state`), so no thread waits for one. A span ends through
//! `Span::end_at`, which hands it to the core without waiting (`span`'s
//! docs).

use crate::guard::{guard, report};
use crate::span::Span;
use crate::wsgi_app::RouteNamer;
use crate::wsgi_route::name_after_route;
use parking_lot::Mutex;
use pulsetrace_core::clock;
use pyo3::prelude::*;
use pyo3::types::{PyIterator, PyList, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use std::sync::atomic::{AtomicBool, Ordering};

/// One request's response, as the application and the server see it.
///
/// Called, it is the `start_response` the application gets: it records the
/// status (5xx is an error), lets the framework name the span, then calls
/// the server's. Iterated and closed, it is the body the server gets back:
/// the span ends when the body is exhausted (if the application's has no
/// `close()`) or closed, or, as a last resort, when it is garbage-collected.
/// One object per request instead of two. An application may keep its
/// `start_response` inside its body (a generator that starts the response
/// lazily), which makes a reference cycle: the object takes part in GC.
///
/// The span stays current from the application call to the body's end, so
/// that the application's code producing chunks (a streaming generator, a
/// `close()` callback) runs inside it, with one context switch per request
/// rather than one per chunk. When the server iterates in another context
/// than the one the application ran in (where the span is not current),
/// each call into the application's body makes the span current for its
/// own duration.
#[pyclass(frozen, module = "pulsetrace._native", name = "TracedResponse")]
pub struct TracedResponse {
    pub(crate) span: Py<Span>,
    namer: Option<PyObject>,
    pub(crate) state: Mutex<ResponseState>,
    /// The span has been ended (exhausted, closed or failed), or is not
    /// this object's to end (it only names an enclosing request's span).
    pub(crate) finished: AtomicBool,
}

pub(crate) struct ResponseState {
    /// The server's `start_response`.
    start_response: Option<PyObject>,
    /// The application's body, once it has returned it.
    pub(crate) body: Option<PyObject>,
    iter: Option<Py<PyIterator>>,
    /// The body's close() (None: it has none), once looked up.
    close: Option<Option<PyObject>>,
    /// The application call made the span current in its context, and
    /// that has not been undone yet.
    live: bool,
}

impl TracedResponse {
    pub(crate) fn new(
        span: Py<Span>,
        start_response: PyObject,
        namer: Option<PyObject>,
        owned: bool,
    ) -> Self {
        TracedResponse {
            span,
            namer,
            state: Mutex::new(ResponseState {
                start_response: Some(start_response),
                body: None,
                iter: None,
                close: None,
                live: owned,
            }),
            finished: AtomicBool::new(!owned),
        }
    }

    /// The span is the current one in the running context.
    fn is_current(&self, py: Python<'_>) -> bool {
        let tracer = self.span.get().tracer.get();
        matches!(tracer.current.get(py), Ok(c) if c.is(self.span.bind(py)))
    }

    /// Run `f` (the application's code) with the span current: as it is,
    /// if the application call's switch is still in place here (`live` and
    /// the span current), else with the span made current for this call.
    fn in_span<R>(&self, py: Python<'_>, live: bool, f: impl FnOnce() -> R) -> R {
        if live && self.is_current(py) {
            return f();
        }
        let current = &self.span.get().tracer.get().current;
        let token = current.set(self.span.bind(py).as_any()).ok();
        let out = f();
        if let Some(t) = token {
            let _ = current.reset(&t);
        }
        out
    }

    /// Give the context the value it had before the application call, if
    /// this runs in that context (and, with `only_if_current`, the span is
    /// still current there: a reset would otherwise undo what was set after
    /// it). Otherwise the token waits for the next request in that context
    /// ([`crate::wsgi::restore_context`]).
    pub(crate) fn restore(&self, py: Python<'_>, only_if_current: bool) {
        self.state.lock().live = false;
        if !only_if_current || self.is_current(py) {
            crate::wsgi::restore_context(self.span.bind(py));
        }
    }

    /// The application body's close(), if it has one (looked up once). A
    /// list or tuple (what most WSGI apps return) has none: not looking it
    /// up saves raising and clearing an AttributeError.
    fn inner_close<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let body = {
            let state = self.state.lock();
            if let Some(close) = &state.close {
                return close.as_ref().map(|c| c.bind(py).clone());
            }
            state.body.as_ref()?.bind(py).clone()
        };
        let close =
            if body.is_exact_instance_of::<PyList>() || body.is_exact_instance_of::<PyTuple>() {
                None
            } else {
                body.getattr(pyo3::intern!(py, "close")).ok()
            };
        self.state.lock().close = Some(close.as_ref().map(|c| c.clone().unbind()));
        close
    }

    pub(crate) fn finish(&self, py: Python<'_>) {
        if !self.finished.swap(true, Ordering::Relaxed) {
            guard(py, "wsgi.restore", || self.restore(py, true), || ());
            guard(
                py,
                "wsgi.end",
                || self.span.get().end_at(py, clock::now_mono_ns()),
                || (),
            );
        }
    }

    /// The response starts: its status is recorded and the framework names
    /// the span.
    fn on_start_response(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) {
        if let Ok(status) = args.get_item(0) {
            self.record_status(&status);
        }
        if let Some(namer) = &self.namer {
            // The framework's route template (or None): the span becomes
            // `METHOD route` with `http.route`.
            let route = match namer.downcast_bound::<RouteNamer>(py) {
                Ok(native) => native.get().route(py),
                Err(_) => namer.bind(py).call0(),
            };
            match route {
                Ok(route) => {
                    if let Ok(route) = route.downcast::<PyString>() {
                        name_after_route(self.span.get(), route);
                    }
                }
                Err(e) => report(py, "wsgi.name", e),
            }
        }
    }

    /// The status line's code: recorded as the span's response status
    /// (`Span::record_response_status`).
    fn record_status(&self, status: &Bound<'_, PyAny>) {
        let code = status
            .downcast::<PyString>()
            .ok()
            .and_then(|s| crate::pystr::utf8(s).and_then(pulsetrace_core::http::status_code));
        if let Some(code) = code {
            self.span.get().record_response_status(code);
        }
    }
}

#[pymethods]
impl TracedResponse {
    /// `start_response(status, headers, exc_info=None)`, as the application
    /// calls it.
    #[pyo3(signature = (*args))]
    fn __call__(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> PyResult<PyObject> {
        guard(
            py,
            "wsgi.status",
            || self.on_start_response(py, args),
            || (),
        );
        let start_response = self
            .state
            .lock()
            .start_response
            .as_ref()
            .map(|s| s.bind(py).clone());
        match start_response {
            Some(sr) => Ok(sr.call1(args)?.unbind()),
            None => Err(pyo3::exceptions::PyRuntimeError::new_err(
                "start_response called after the response was released",
            )),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next chunk, or None at the end (the iterator protocol's
    /// exhaustion without a StopIteration object: PyIter_Next's way).
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyObject>> {
        let (it, body, live) = {
            let state = self.state.lock();
            (
                state.iter.as_ref().map(|i| i.bind(py).clone()),
                state.body.as_ref().map(|b| b.bind(py).clone()),
                state.live,
            )
        };
        let mut it = match (it, body) {
            (Some(it), _) => it,
            (None, Some(body)) => {
                // The body's own __iter__ is the application's code too.
                let it = self.in_span(py, live, || body.try_iter())?;
                self.state.lock().iter = Some(it.clone().unbind());
                it
            }
            (None, None) => return Ok(None),
        };
        let next = self.in_span(py, live, || it.next());
        match next {
            Some(Ok(chunk)) => Ok(Some(chunk.unbind())),
            None => {
                // A body with a close() of its own ends with it (the server
                // calls ours), so that the work close() does is part of the
                // request; any other ends now.
                if self.inner_close(py).is_none() {
                    self.finish(py);
                }
                Ok(None)
            }
            Some(Err(e)) => {
                crate::wsgi::fail(py, self.span.get(), &e);
                self.finish(py);
                Err(e)
            }
        }
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let closed = match self.inner_close(py) {
            Some(close) => {
                let live = self.state.lock().live;
                self.in_span(py, live, || close.call0().map(|_| ()))
            }
            None => Ok(()),
        };
        self.finish(py);
        closed
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(n) = &self.namer {
            visit.call(n)?;
        }
        // Held only briefly and never across Python code; if it is held
        // now, these references are simply not reported this time (the
        // collector then keeps the object: safe).
        if let Some(state) = self.state.try_lock() {
            let close = state.close.as_ref().and_then(|c| c.as_ref());
            for r in [state.start_response.as_ref(), state.body.as_ref(), close]
                .into_iter()
                .flatten()
            {
                visit.call(r)?;
            }
            if let Some(it) = &state.iter {
                visit.call(it)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        // Taken under the lock, released after it: releasing may run Python
        // code (a finaliser) that touches this object again.
        let taken = {
            let mut state = self.state.lock();
            (
                state.start_response.take(),
                state.body.take(),
                state.iter.take(),
                state.close.take(),
            )
        };
        drop(taken);
    }
}

impl Drop for TracedResponse {
    fn drop(&mut self) {
        if !self.finished.load(Ordering::Relaxed) {
            Python::with_gil(|py| self.finish(py));
        }
    }
}
