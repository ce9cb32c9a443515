//! New instances of the classes made on every span or request (`Span`,
//! `SpanContext`, the WSGI response wrapper) without pyo3's lazy
//! type-object lookup on each one: the type object is looked up once and
//! its pointer kept.
//!
//! This uses pyo3's private `impl_::pyclass_init::PyObjectInit`, which ties
//! the binding to the exact pyo3 pinned in `rust/py/Cargo.toml`; pyo3 0.25
//! has no public way to allocate an instance of a given type object.
//! Measured against the public path (`Bound::new`, whose lookup checks the
//! lazy type object on every call), built for `abi3-py310`: instructions
//! per operation on the request thread, callgrind (`benchmarks/gate/run.py
//! --repeat 3`, medians, CPython 3.11): a span 5,476 with this module,
//! 5,505 with `Bound::new` (0.5%); a Flask `/json` request 386,868 and
//! 388,171 (what pulsetrace adds to it: 14,300 and 15,417). Too small for
//! `benchmarks/micro/run.py` to show on a shared machine. It stays because
//! the span's instruction count may not grow; `Bound::new` is the drop-in
//! replacement the day that budget allows it or pyo3 exposes an allocation
//! from a cached type.
//!
//! GIL and locks: runs with the GIL; the type pointer is an atomic. No lock.

use pyo3::ffi;
use pyo3::impl_::pyclass_init::PyObjectInit;
use pyo3::prelude::*;
use pyo3::{PyClass, PyTypeInfo};
use std::sync::atomic::{AtomicPtr, Ordering};

/// A class whose type object pointer is kept after its first instance.
pub(crate) trait CachedType: PyClass + PyTypeInfo {
    fn type_cell() -> &'static AtomicPtr<ffi::PyTypeObject>;
}

macro_rules! cached_type {
    ($($t:ty),* $(,)?) => {
        $(impl CachedType for $t {
            fn type_cell() -> &'static AtomicPtr<ffi::PyTypeObject> {
                static CELL: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());
                &CELL
            }
        })*
    };
}

cached_type!(
    crate::span::Span,
    crate::span::SpanContext,
    crate::wsgi::TracedResponse,
);

/// `Bound::new(py, value)`, with the type object looked up once per class.
#[allow(unsafe_code)]
pub(crate) fn new_bound<T>(py: Python<'_>, value: T) -> PyResult<Bound<'_, T>>
where
    T: CachedType,
    PyClassInitializer<T>: From<T>,
{
    let cell = T::type_cell();
    let mut tp = cell.load(Ordering::Acquire);
    if tp.is_null() {
        tp = T::type_object_raw(py);
        cell.store(tp, Ordering::Release);
    }
    // SAFETY: the GIL is held (`py`). `tp` is `T`'s own type object, made by
    // pyo3's lazy type object, which keeps a strong reference to it for the
    // life of the process, so the pointer stays valid. `into_new_object`
    // allocates an instance of exactly that type, moves `value` into it and
    // returns a new (owned) reference, or an error with nothing leaked; an
    // owned pointer to a `T` instance is what `downcast_into_unchecked`
    // requires.
    unsafe {
        let obj = PyClassInitializer::from(value).into_new_object(py, tp)?;
        Ok(Bound::from_owned_ptr(py, obj).downcast_into_unchecked())
    }
}
