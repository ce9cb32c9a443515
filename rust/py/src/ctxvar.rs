//! The current-span `ContextVar`, driven through CPython's C API.
//!
//! `PyContextVar_Get/Set/Reset` are public CPython API since 3.7 but not
//! part of the limited API, so pyo3's abi3 bindings do not declare them. A
//! call through the Python-level methods (`var.set(span)`) costs about
//! 150 ns more per span enter/exit (measured with benchmarks/micro), so we
//! declare the three functions ourselves: every CPython this wheel loads in
//! (>= 3.9) exports them with these exact signatures.
//!
//! GIL and locks: every call runs with the GIL (CPython's `ContextVar`
//! functions require it) and takes no lock.

use pyo3::ffi;
use pyo3::prelude::*;
use std::os::raw::c_int;

extern "C" {
    fn PyContextVar_Get(
        var: *mut ffi::PyObject,
        default_value: *mut ffi::PyObject,
        value: *mut *mut ffi::PyObject,
    ) -> c_int;
    fn PyContextVar_Set(var: *mut ffi::PyObject, value: *mut ffi::PyObject) -> *mut ffi::PyObject;
    fn PyContextVar_Reset(var: *mut ffi::PyObject, token: *mut ffi::PyObject) -> c_int;
}

/// A `contextvars.ContextVar` object, checked at construction.
pub struct ContextVar {
    var: Py<PyAny>,
}

impl ContextVar {
    pub fn new(var: &Bound<'_, PyAny>) -> PyResult<Self> {
        let py = var.py();
        let cls = py.import("contextvars")?.getattr("ContextVar")?;
        if !var.is_instance(&cls)? {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "context_var must be a contextvars.ContextVar",
            ));
        }
        Ok(ContextVar {
            var: var.clone().unbind(),
        })
    }

    /// The value in the current context (the var's default if unset; None if
    /// it has no default).
    #[allow(unsafe_code)]
    pub fn get<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let mut value: *mut ffi::PyObject = std::ptr::null_mut();
        // SAFETY: we hold the GIL (`py`), `self.var` is a live ContextVar
        // (checked in `new`), a null default means "use the var's default",
        // and `value` is a valid out-pointer.
        let rc = unsafe { PyContextVar_Get(self.var.as_ptr(), std::ptr::null_mut(), &mut value) };
        if rc < 0 {
            return Err(PyErr::fetch(py));
        }
        if value.is_null() {
            return Ok(py.None().into_bound(py));
        }
        // SAFETY: on success `value` is a new (owned) reference.
        Ok(unsafe { Bound::from_owned_ptr(py, value) })
    }

    /// Set the value; returns the token that `reset` takes.
    #[allow(unsafe_code)]
    pub fn set<'py>(&self, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = value.py();
        // SAFETY: GIL held (bound value), both pointers are live objects;
        // the result is a new reference or null with an exception set.
        unsafe {
            let token = PyContextVar_Set(self.var.as_ptr(), value.as_ptr());
            Bound::from_owned_ptr_or_err(py, token)
        }
    }

    /// Restore the value a `set` replaced. Fails (ValueError) if the token
    /// was made in another context or already used.
    #[allow(unsafe_code)]
    pub fn reset(&self, token: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = token.py();
        // SAFETY: GIL held, both pointers are live objects; the function
        // checks the token's type itself and sets an exception on error.
        let rc = unsafe { PyContextVar_Reset(self.var.as_ptr(), token.as_ptr()) };
        if rc < 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(())
    }
}
