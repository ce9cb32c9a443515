//! No panic crosses into Python.
//!
//! pyo3 turns a panic that reaches one of its trampolines into
//! `pyo3_runtime.PanicException`, a `BaseException`: neither an
//! application's `except Exception` nor pulsetrace's own Python code (which
//! catches `Exception` around the native calls it makes) would stop it. So
//! every entry point of the binding runs its body under one of two guards:
//!
//! - [`guard`], for what the application calls (the span API, the request
//!   path, propagation): a panic is reported like any other internal error
//!   ([`report`]: `pulsetrace._diag.internal_error`, counted in
//!   `internal_errors`, logged once per place and then at most once a
//!   minute) and the call returns a harmless result instead: the value
//!   dropped, a no-op span, the request run untraced.
//! - [`or_error`], for the agent's own plumbing (export, configuration,
//!   counters, SQL obfuscation), whose Python callers catch `Exception`,
//!   count and log it: a panic becomes a `RuntimeError` naming the place.
//!
//! A guard never spans a call into the application's code (its WSGI app, a
//! response body), so that code never runs twice and its result is never
//! lost; only pulsetrace's work before and after such a call is guarded.
//! What runs unguarded has nothing that can panic: accessors that read or
//! format a field (ids, flags, names, counts, `__repr__`, `__eq__`), and
//! the WSGI wrappers' forwarding to the application's own objects.
//! Nor is a guard entered with a span's lock held: reporting runs Python
//! code (logging handlers), which may use that span.
//!
//! A panic's message and location go to that report, not to stderr: the
//! panic hook ([`install_hook`], at module initialisation) keeps them for
//! the guard when the panicking thread holds the GIL (every entry point
//! does); any other thread (the core's worker) gets the previous hook,
//! which prints.
//!
//! Fault injection, for tests: [`inject_panic`] makes the guards of one
//! place panic inside their body, so that a test can drive the recovery of
//! each entry point from Python. Otherwise it costs a relaxed load of one
//! flag per guarded call; `catch_unwind` itself costs nothing until a panic
//! unwinds (benchmarks/micro: no change in the span's figures).

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use std::any::Any;
use std::cell::RefCell;
use std::ffi::c_int;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

extern "C" {
    /// Whether the calling thread holds the GIL. Public CPython API since
    /// 3.4 (not in pyo3's abi3 declarations); callable from any thread.
    fn PyGILState_Check() -> c_int;
}

thread_local! {
    /// The last panic's message and location on this thread, for the guard
    /// that catches it.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Install the panic hook (once per process).
pub(crate) fn install_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            // SAFETY: PyGILState_Check only reads the calling thread's state
            // and may be called from any thread, with or without the GIL.
            #[allow(unsafe_code)]
            let holds_gil = unsafe { PyGILState_Check() } == 1;
            if holds_gil {
                let text = match info.location() {
                    Some(l) => {
                        format!("{} (at {}:{})", message(info.payload()), l.file(), l.line())
                    }
                    None => message(info.payload()),
                };
                LAST_PANIC.with(|last| {
                    if let Ok(mut last) = last.try_borrow_mut() {
                        *last = Some(text);
                    }
                });
            } else {
                previous(info);
            }
        }));
    });
}

fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// The description of the panic just caught on this thread.
fn caught(payload: Box<dyn Any + Send>) -> String {
    LAST_PANIC
        .with(|last| last.try_borrow_mut().ok().and_then(|mut l| l.take()))
        .unwrap_or_else(|| message(&*payload))
}

static INJECTING: AtomicBool = AtomicBool::new(false);
static INJECT_AT: Mutex<Option<String>> = Mutex::new(None);

/// Make the guards of `place` panic inside their body (None: stop). For
/// tests of the recovery of every entry point; the places are the names
/// `internal_errors` reports.
#[pyfunction]
#[pyo3(signature = (place=None))]
pub fn inject_panic(place: Option<String>) {
    INJECTING.store(place.is_some(), Ordering::Relaxed);
    *INJECT_AT.lock() = place;
}

#[inline]
fn injected(place: &str) {
    if INJECTING.load(Ordering::Relaxed) {
        injected_slow(place);
    }
}

#[cold]
#[inline(never)]
fn injected_slow(place: &str) {
    let hit = INJECT_AT.lock().as_deref() == Some(place);
    if hit {
        panic!("panic injected in {place}");
    }
}

/// Run an application-facing entry point's `body`; if it panics, report the
/// panic (counted and logged, rate limited) and return `fallback()`.
#[inline]
pub(crate) fn guard<T>(
    py: Python<'_>,
    place: &'static str,
    body: impl FnOnce() -> T,
    fallback: impl FnOnce() -> T,
) -> T {
    match panic::catch_unwind(AssertUnwindSafe(|| {
        injected(place);
        body()
    })) {
        Ok(v) => v,
        Err(payload) => {
            let text = caught(payload);
            report(
                py,
                place,
                PyRuntimeError::new_err(format!("pulsetrace panicked in {place}: {text}")),
            );
            fallback()
        }
    }
}

/// Run an internal entry point's `body`; a panic becomes a `RuntimeError`
/// naming the place (the Python caller counts and logs it).
#[inline]
pub(crate) fn or_error<T>(place: &'static str, body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match panic::catch_unwind(AssertUnwindSafe(|| {
        injected(place);
        body()
    })) {
        Ok(r) => r,
        Err(payload) => Err(PyRuntimeError::new_err(format!(
            "pulsetrace panicked in {place}: {}",
            caught(payload)
        ))),
    }
}

/// Report an error pulsetrace caused (counted and logged, rate limited, by
/// the Python side); never raises.
pub(crate) fn report(py: Python<'_>, place: &str, err: PyErr) {
    static DIAG: GILOnceCell<PyObject> = GILOnceCell::new();
    if let Ok(f) = DIAG.get_or_try_init(py, || -> PyResult<PyObject> {
        Ok(py
            .import("pulsetrace._diag")?
            .getattr("internal_error")?
            .unbind())
    }) {
        let _ = f.bind(py).call1((place, err.value(py)));
    }
}
