//! New instances of the classes made on every span or request (`Span`, the
//! WSGI wrappers) without pyo3's lazy type-object lookup on each one (about
//! 70 instructions each, several per request): the type object is looked up
//! once and its pointer kept.
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
