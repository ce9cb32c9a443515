//! Zero-copy UTF-8 views of Python `str` objects.
//!
//! `PyUnicode_AsUTF8AndSize` entered the limited API in 3.10, so pyo3's
//! abi3-py39 bindings read a `str` by encoding it into a new `bytes` object
//! and copying that (about 300 instructions a string; a WSGI request reads a
//! dozen). CPython has exported the function with this signature since 3.3:
//! for an ASCII string it returns the string's own buffer, otherwise a UTF-8
//! copy cached in the object, valid as long as the object lives.
//!
//! GIL and locks: runs with the GIL (it reads a live `str`); no lock.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

extern "C" {
    fn PyUnicode_AsUTF8AndSize(s: *mut ffi::PyObject, size: *mut ffi::Py_ssize_t) -> *const u8;
}

/// The text of `s`, borrowed from the object; None (no exception left set)
/// if it cannot be UTF-8 (lone surrogates).
#[allow(unsafe_code)]
pub fn utf8<'a>(s: &'a Bound<'_, PyString>) -> Option<&'a str> {
    let mut len: ffi::Py_ssize_t = 0;
    // SAFETY: GIL held (bound object), `s` is a live str, `len` a valid
    // out-pointer.
    let data = unsafe { PyUnicode_AsUTF8AndSize(s.as_ptr(), &mut len) };
    if data.is_null() {
        // SAFETY: GIL held; the failed conversion set an exception (UnicodeEncodeError),
        // which the caller's fallback replaces.
        unsafe { ffi::PyErr_Clear() };
        return None;
    }
    let len = usize::try_from(len).ok()?;
    // SAFETY: CPython returns `len` bytes of valid UTF-8 owned by `s`, which
    // outlives the borrow `'a`; a str is immutable, so the bytes never change.
    Some(unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(data, len)) })
}
