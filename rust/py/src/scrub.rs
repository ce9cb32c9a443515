//! The scrubber's binding: configure the process's scrubber, scrub a text
//! or a keyed value. Conversion only; the rules are the core's
//! (`pulsetrace_core::scrub`).
//!
//! GIL: texts over 2 KiB are scrubbed with the GIL released (they hold a
//! copy); shorter ones with it, where releasing would cost more than the scan.
//! A `str` is read without a copy (`pystr`) and returned as the same object
//! when nothing in it was found.

use crate::guard::or_error;
use crate::pystr;
use pulsetrace_core::scrub::{self, Mode};
use pyo3::prelude::*;
use pyo3::types::PyString;
use std::borrow::Cow;

const RELEASE_GIL_ABOVE: usize = 2048;

/// Set the process's scrubber: on or off, `"mask"` or `"redact"`, extra
/// secret field names. A bad mode raises ValueError naming it.
#[pyfunction]
pub fn scrub_configure(enabled: bool, mode: &str, fields: Vec<String>) -> PyResult<()> {
    let mode = Mode::parse(mode).map_err(pyo3::exceptions::PyValueError::new_err)?;
    or_error("scrub.configure", || {
        scrub::configure(enabled, mode, fields);
        Ok(())
    })
}

/// `text` with personal data and secrets replaced (the same object when
/// nothing was found).
#[pyfunction]
pub fn scrub_text<'py>(
    py: Python<'py>,
    text: Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyString>> {
    or_error("scrub.text", || {
        let Some(s) = pystr::utf8(&text) else {
            // Lone surrogates: the text with U+FFFD in their place, scrubbed.
            let lossy = text.to_string_lossy().into_owned();
            let out = scrub::current().scrub(&lossy).into_owned();
            return Ok(PyString::new(py, &out));
        };
        if s.len() > RELEASE_GIL_ABOVE {
            let owned = s.to_owned();
            let out = py.allow_threads(move || match scrub::current().scrub(&owned) {
                Cow::Owned(o) => Some(o),
                Cow::Borrowed(_) => None,
            });
            return Ok(out.map_or_else(|| text.clone(), |o| PyString::new(py, &o)));
        }
        Ok(scrub::with_current(|sc| match sc.scrub(s) {
            Cow::Owned(o) => PyString::new(py, &o),
            Cow::Borrowed(_) => text.clone(),
        }))
    })
}

/// The value of field `key`: `REDACTED` when the key names a secret,
/// otherwise scrubbed by content (`url.query`/`url.full` parameter by
/// parameter). The same object when nothing was found.
#[pyfunction]
pub fn scrub_keyed<'py>(
    py: Python<'py>,
    key: &str,
    value: Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyString>> {
    or_error("scrub.keyed", || {
        let Some(v) = pystr::utf8(&value) else {
            let lossy = value.to_string_lossy().into_owned();
            let out = scrub::with_current(|sc| sc.scrub_keyed(key, &lossy).into_owned());
            return Ok(PyString::new(py, &out));
        };
        Ok(scrub::with_current(|sc| match sc.scrub_keyed(key, v) {
            Cow::Owned(o) => PyString::new(py, &o),
            Cow::Borrowed(_) => value.clone(),
        }))
    })
}

/// Whether `key` names a secret field.
#[pyfunction]
pub fn scrub_is_secret_key(key: &str) -> PyResult<bool> {
    or_error("scrub.is_secret_key", || {
        Ok(scrub::current().is_secret_key(key))
    })
}
