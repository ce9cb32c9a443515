//! The WSGI request path, native: a request's SERVER span is started from
//! the environ ([`crate::wsgi_environ`]), made current while the
//! application runs, named and given its status when the response starts,
//! and ended when the body is exhausted or closed
//! ([`crate::wsgi_response`]). The Python-level hook
//! (`pulsetrace.contrib.wsgi`) only forwards to [`wsgi_call`]; doing this in
//! Rust keeps the whole per-request cost to a few microseconds.
//!
//! Failure rule: an error inside pulsetrace is reported through
//! `pulsetrace._diag.internal_error` and the request proceeds untouched; the
//! application's exceptions pass through as the same objects. pulsetrace's
//! work before and after each call into the application (its WSGI call,
//! its body's iteration and `close()`, the server's `start_response`) runs
//! under a panic guard ([`crate::guard`]); the calls themselves do not, so
//! nothing the application does is ever repeated or lost.
//!
//! What a request span's application call leaves behind lives here, not on
//! the span: while the call runs, this thread's [`SERVING`] names its span,
//! so that a hook nested inside that call (a generic middleware around a
//! framework hook) names that span instead of starting a second one; and
//! the token of the context switch that made the span current waits in
//! [`TOKENS`] until the context gets its previous value back: when the body
//! ends in that context, or, if it ends elsewhere (or a server starts the
//! next request in the same context first), when the next request there
//! finds the span still current.
//!
//! GIL and locks: everything runs with the GIL (it calls the application).
//! `TOKENS` is a `GILProtected` cell, borrowed with `try_borrow_mut` and
//! never across Python code (a token is released after the borrow); the
//! response's and span's locks are `wsgi_response`'s.

use crate::ctxvar::ContextVar;
use crate::guard::{guard, report};
use crate::span::Span;
use crate::tracer::Tracer;
pub use crate::wsgi_response::TracedResponse;
use pulsetrace_core::clock;
use pulsetrace_core::http::Integration;
use pyo3::prelude::*;
use pyo3::sync::{GILOnceCell, GILProtected};
use pyo3::types::PyDict;
use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering;

thread_local! {
    /// The span whose application call runs innermost on this thread (its
    /// address; 0: none).
    static SERVING: Cell<usize> = const { Cell::new(0) };
}

/// At most this many tokens wait in [`TOKENS`] (one per request whose
/// context has not had its value back yet: about one per server thread or
/// connection); past it one is dropped, and its context keeps the ended
/// span as its current value.
const TOKENS_MAX: usize = 4096;

/// A request span and the token that made it current.
type HeldToken = (Py<Span>, PyObject);

/// Request spans made current for their application call, each with the
/// token of that context switch, until the context gets its previous value
/// back.
static TOKENS: GILProtected<RefCell<Vec<HeldToken>>> = GILProtected::new(RefCell::new(Vec::new()));

/// Keep `token`, which made `span` current, until the context it was made
/// in gets its previous value back.
pub(crate) fn hold_token(py: Python<'_>, span: Py<Span>, token: PyObject) {
    let dropped = match TOKENS.get(py).try_borrow_mut() {
        Ok(mut tokens) => {
            let dropped = (tokens.len() >= TOKENS_MAX).then(|| tokens.swap_remove(0));
            tokens.push((span, token));
            dropped
        }
        Err(_) => None,
    };
    // Released outside the borrow: freeing a context may run Python code.
    drop(dropped);
}

/// Give the context the value it had before `span`'s application call, if
/// `span` has a token waiting and it was made in this context. Returns
/// whether it did.
pub(crate) fn restore_context(span: &Bound<'_, Span>) -> bool {
    let py = span.py();
    let token = {
        let Ok(mut tokens) = TOKENS.get(py).try_borrow_mut() else {
            return false;
        };
        // The latest first: the request that just ended, most of the time.
        let Some(i) = tokens.iter().rposition(|(s, _)| s.is(span)) else {
            return false;
        };
        tokens.swap_remove(i).1
    };
    if span
        .get()
        .tracer
        .get()
        .current
        .reset(token.bind(py))
        .is_ok()
    {
        return true;
    }
    hold_token(py, span.clone().unbind(), token);
    false
}

pub(crate) fn fail(py: Python<'_>, span: &Span, err: &PyErr) {
    guard(
        py,
        "wsgi.error",
        || span.fail_with(py, err.value(py).as_any()),
        || (),
    );
}

/// Run a WSGI application for one request inside a SERVER span. `namer`,
/// if given, is called with the span when the response starts (to name it
/// after the route); `integration` is the framework hook's name, whose
/// excluded URLs apply (`crate::http::integration`; None: the common list).
#[pyfunction]
#[pyo3(signature = (tracer, app, environ, start_response, namer=None, integration=None))]
pub fn wsgi_call(
    py: Python<'_>,
    tracer: &Bound<'_, Tracer>,
    app: &Bound<'_, PyAny>,
    environ: &Bound<'_, PyAny>,
    start_response: &Bound<'_, PyAny>,
    namer: Option<&Bound<'_, PyAny>>,
    integration: Option<&str>,
) -> PyResult<PyObject> {
    let integration = crate::http::integration(integration)?;
    traced_request(
        py,
        tracer,
        environ,
        start_response,
        namer,
        integration,
        &|sr| app.call1((environ, sr)),
    )
}

/// What pulsetrace does around one application call.
enum Plan<'py> {
    /// Run the application untouched.
    Untraced,
    /// An excluded URL (`crate::http::excluded`): no span; the application
    /// call runs under pulsetrace's suppression context, so that the calls
    /// it makes are not traced either.
    Excluded,
    /// Inside an enclosing request's span: the application gets a
    /// `start_response` that names that span.
    Naming(Bound<'py, TracedResponse>),
    /// A new request span, made current, and the object the application
    /// gets as its `start_response` (and the server as its body).
    Traced(Py<Span>, Bound<'py, TracedResponse>),
}

/// Everything before the application call. A failure (reported) leaves the
/// request untraced; the context is switched last, when nothing can fail.
fn plan<'py>(
    py: Python<'py>,
    tracer: &Bound<'py, Tracer>,
    env: &Bound<'py, PyDict>,
    start_response: &Bound<'py, PyAny>,
    namer: Option<&Bound<'py, PyAny>>,
    integration: Integration,
) -> Plan<'py> {
    let t = tracer.get();
    // Inside the application call of this request's SERVER span (a generic
    // middleware around a framework hook): name that span, do not nest a
    // second one. (A span whose body is still being sent is not serving: a
    // request that starts meanwhile in the same context gets its own span.)
    if let Ok(outer) = t.current.get(py) {
        if let Ok(outer_span) = outer.downcast::<Span>() {
            if SERVING.get() == outer_span.as_ptr() as usize {
                let Some(namer) = namer else {
                    return Plan::Untraced;
                };
                let naming = TracedResponse::new(
                    outer_span.clone().unbind(),
                    start_response.clone().unbind(),
                    Some(namer.clone().unbind()),
                    false,
                );
                return match crate::newobj::new_bound(py, naming) {
                    Ok(wrapped) => Plan::Naming(wrapped),
                    Err(e) => {
                        report(py, "wsgi.start", e);
                        Plan::Untraced
                    }
                };
            }
            // A request span left current by a body that ended in another
            // context (or not yet): this context gets its value back.
            restore_context(outer_span);
        }
    }
    let span = match crate::wsgi_environ::start(py, tracer, env, None, integration)
        .and_then(|s| s.map(|s| crate::newobj::new_bound(py, s)).transpose())
    {
        Ok(Some(s)) => s.unbind(),
        Ok(None) => return Plan::Excluded,
        Err(e) => {
            report(py, "wsgi.start", e);
            return Plan::Untraced;
        }
    };
    let response = TracedResponse::new(
        span.clone_ref(py),
        start_response.clone().unbind(),
        namer.map(|n| n.clone().unbind()),
        true,
    );
    let response = match crate::newobj::new_bound(py, response) {
        Ok(r) => r,
        Err(e) => {
            report(py, "wsgi.start", e);
            return Plan::Untraced;
        }
    };
    match t.current.set(span.bind(py).as_any()) {
        Ok(token) => hold_token(py, span.clone_ref(py), token.unbind()),
        Err(e) => {
            // Never current, never ended: not recorded.
            response.get().finished.store(true, Ordering::Relaxed);
            report(py, "wsgi.start", e);
            return Plan::Untraced;
        }
    }
    Plan::Traced(span, response)
}

/// pulsetrace's suppression context variable
/// (`pulsetrace._suppress.SUPPRESSED`), looked up on first use.
static SUPPRESSED: GILOnceCell<ContextVar> = GILOnceCell::new();

/// Run the application call of an excluded request with the suppression
/// context variable set (the calls it makes are not traced), and reset
/// after it. If the variable cannot be set (reported), the call runs as it is.
#[cold]
#[inline(never)]
fn suppressed_call<'py>(
    py: Python<'py>,
    start_response: &Bound<'py, PyAny>,
    call: &dyn Fn(&Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<PyObject> {
    let set = guard(
        py,
        "wsgi.suppress",
        || {
            let var = SUPPRESSED.get_or_try_init(py, || {
                let v = py.import("pulsetrace._suppress")?.getattr("SUPPRESSED")?;
                ContextVar::new(&v)
            })?;
            let token = var.set(pyo3::types::PyBool::new(py, true).as_any())?;
            Ok::<_, PyErr>(Some((var, token)))
        },
        || Ok(None),
    );
    let set = set.unwrap_or_else(|e| {
        report(py, "wsgi.suppress", e);
        None
    });
    let result = call(start_response);
    if let Some((var, token)) = set {
        if let Err(e) = var.reset(&token) {
            report(py, "wsgi.suppress", e);
        }
    }
    Ok(result?.unbind())
}

/// The request path of every WSGI hook: `call(start_response)` runs the
/// application with the `start_response` it must see; the excluded URLs
/// are `integration`'s.
pub(crate) fn traced_request<'py>(
    py: Python<'py>,
    tracer: &Bound<'py, Tracer>,
    environ: &Bound<'py, PyAny>,
    start_response: &Bound<'py, PyAny>,
    namer: Option<&Bound<'py, PyAny>>,
    integration: Integration,
    call: &dyn Fn(&Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<PyObject> {
    let t = tracer.get();
    let Ok(env) = environ.downcast::<PyDict>() else {
        return Ok(call(start_response)?.unbind());
    };
    if !t.is_enabled() {
        return Ok(call(start_response)?.unbind());
    }
    let namer = namer.filter(|n| !n.is_none());
    let plan = guard(
        py,
        "wsgi.start",
        || plan(py, tracer, env, start_response, namer, integration),
        || Plan::Untraced,
    );
    let (span, response) = match plan {
        Plan::Untraced => return Ok(call(start_response)?.unbind()),
        Plan::Excluded => return suppressed_call(py, start_response, call),
        Plan::Naming(wrapped) => return Ok(call(wrapped.as_any())?.unbind()),
        Plan::Traced(span, response) => (span, response),
    };
    let outer = SERVING.replace(span.as_ptr() as usize);
    let result = call(response.as_any());
    SERVING.set(outer);
    match result {
        // The span stays current until the body ends (TracedResponse::restore).
        Ok(body) if !body.is(&response) => {
            response.get().state.lock().body = Some(body.unbind());
            Ok(response.into_any().unbind())
        }
        // The application returned its start_response as its body: passed
        // through, and the span ends now.
        Ok(body) => {
            response.get().finish(py);
            Ok(body.unbind())
        }
        Err(e) => {
            response.get().finished.store(true, Ordering::Relaxed);
            guard(
                py,
                "wsgi.restore",
                || response.get().restore(py, false),
                || (),
            );
            fail(py, span.get(), &e);
            guard(
                py,
                "wsgi.end",
                || span.get().end_at(py, clock::now_mono_ns()),
                || (),
            );
            Err(e)
        }
    }
}
