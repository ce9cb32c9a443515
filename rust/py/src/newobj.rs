//! New instances of the classes made on every span or request (`Span`,
//! `SpanContext`, the WSGI wrappers), through pyo3's public path.
//!
//! This module used to allocate them with pyo3's private
//! `impl_::pyclass_init::PyObjectInit::into_new_object` and a type-object
//! pointer cached per class, to skip pyo3's lazy type-object lookup. That
//! tied the binding to one exact pyo3 version for no measurable gain with
//! pyo3 0.25: instructions per span (callgrind, `benchmarks/gate/run.py`)
//! 5,494 with the private path, 5,496 with `Bound::new`; one Flask `/json`
//! request 385,308 and 385,526 (the Flask count moves by about 0.5% from
//! run to run). `benchmarks/micro/run.py --quick --rounds 11`, median of 3
//! runs, CPU ns per span: 1,110 and 1,030 (within this machine's noise).
//! So the public path is used, and kept as this one function so that its
//! callers stay as they are.
//!
//! GIL and locks: runs with the GIL (`py`). No lock.

use pyo3::prelude::*;
use pyo3::PyClass;

/// `Bound::new(py, value)`: a new instance of `T` holding `value`.
#[inline]
pub(crate) fn new_bound<T>(py: Python<'_>, value: T) -> PyResult<Bound<'_, T>>
where
    T: PyClass,
    PyClassInitializer<T>: From<T>,
{
    Bound::new(py, value)
}
