//! The scrubber's binding: configure the process's scrubber, scrub a text
//! or a keyed value. Conversion only; the rules are the core's
//! (`pulsetrace_core::scrub`).
//!
//! GIL: texts over 2 KiB are scrubbed with the GIL released (they hold a
//! copy); shorter ones with it, where releasing would cost more than the scan.

use crate::guard::or_error;
use pulsetrace_core::scrub::{self, Mode};
use pyo3::prelude::*;
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

/// `text` with personal data and secrets replaced.
#[pyfunction]
pub fn scrub_text<'a>(py: Python<'_>, text: &'a str) -> PyResult<Cow<'a, str>> {
    or_error("scrub.text", || {
        let sc = scrub::current();
        if text.len() > RELEASE_GIL_ABOVE {
            let owned = text.to_owned();
            return Ok(Cow::Owned(
                py.allow_threads(move || sc.scrub(&owned).into_owned()),
            ));
        }
        Ok(sc.scrub(text))
    })
}

/// The value of field `key`: `REDACTED` when the key names a secret,
/// otherwise scrubbed by content (`url.query`/`url.full` parameter by
/// parameter).
#[pyfunction]
pub fn scrub_keyed<'a>(key: &str, value: &'a str) -> PyResult<Cow<'a, str>> {
    or_error("scrub.keyed", || {
        Ok(scrub::current().scrub_keyed(key, value))
    })
}

/// Whether `key` names a secret field.
#[pyfunction]
pub fn scrub_is_secret_key(key: &str) -> PyResult<bool> {
    or_error("scrub.is_secret_key", || {
        Ok(scrub::current().is_secret_key(key))
    })
}
