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
use std::sync::Arc;

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

/// How deep [`scrub_value`] follows nested containers; deeper values (and
/// cycles) are replaced by `REDACTED`.
const MAX_DEPTH: usize = 16;
const REDACTED: &str = "REDACTED";

/// `value` scrubbed in one call (a log record's metadata: one crossing
/// instead of one per key and string): a string by content; a mapping's
/// values into a new dict (the whole value `REDACTED` when its key names a
/// secret and it is not None); a list's or tuple's items into a new list
/// or tuple; anything else as it is.
#[pyfunction]
pub fn scrub_value(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<PyObject> {
    or_error("scrub.value", || {
        let sc = scrub::current();
        value_of(py, &sc, value, 0)
    })
}

/// Verdicts of `is_secret_key` for the keys seen (log metadata repeats a
/// small vocabulary of keys), for the scrubber they were computed with; a
/// reconfigured scrubber (another `Arc`: the table holds the one it was
/// made for, so its address is not reused) starts a new table. Bounded:
/// full, it starts afresh.
struct KeyVerdicts {
    scrubber: Arc<scrub::Scrubber>,
    keys: std::collections::HashMap<Box<str>, bool>,
}

const MAX_KEY_VERDICTS: usize = 4096;

static KEY_VERDICTS: parking_lot::Mutex<Option<KeyVerdicts>> = parking_lot::Mutex::new(None);

fn is_secret_key(sc: &Arc<scrub::Scrubber>, key: &str) -> bool {
    // Never waits: another thread holding the table (or a lock a fork left
    // held in a child) means this key is judged directly.
    let Some(mut table) = KEY_VERDICTS.try_lock() else {
        return sc.is_secret_key(key);
    };
    let t = match &mut *table {
        Some(t) if Arc::ptr_eq(&t.scrubber, sc) && t.keys.len() < MAX_KEY_VERDICTS => t,
        slot => slot.insert(KeyVerdicts {
            scrubber: sc.clone(),
            keys: std::collections::HashMap::new(),
        }),
    };
    if let Some(&secret) = t.keys.get(key) {
        return secret;
    }
    let secret = sc.is_secret_key(key);
    t.keys.insert(key.into(), secret);
    secret
}

fn value_of(
    py: Python<'_>,
    sc: &Arc<scrub::Scrubber>,
    v: &Bound<'_, PyAny>,
    depth: usize,
) -> PyResult<PyObject> {
    use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyMapping, PyString, PyTuple};
    if let Ok(s) = v.downcast::<PyString>() {
        let text = s.to_cow()?;
        // Each text is scrubbed as `scrub_text` scrubs it (the same guard:
        // a failure there fails the whole value, closed).
        return or_error("scrub.text", || {
            Ok(match sc.scrub(&text) {
                Cow::Borrowed(_) => s.clone().into_any().unbind(),
                Cow::Owned(out) => PyString::new(py, &out).into_any().unbind(),
            })
        });
    }
    if v.is_none()
        || v.is_instance_of::<PyBool>()
        || v.is_instance_of::<PyInt>()
        || v.is_instance_of::<PyFloat>()
    {
        return Ok(v.clone().unbind());
    }
    if depth >= MAX_DEPTH {
        return Ok(PyString::new(py, REDACTED).into_any().unbind());
    }
    let keyed = |out: &Bound<'_, PyDict>, k: Bound<'_, PyAny>, item: Bound<'_, PyAny>| {
        let secret = !item.is_none()
            && k.downcast::<PyString>()
                .ok()
                .map(|s| s.to_cow().map(|key| is_secret_key(sc, &key)))
                .transpose()?
                .unwrap_or(false);
        if secret {
            out.set_item(k, REDACTED)
        } else {
            out.set_item(k, value_of(py, sc, &item, depth + 1)?)
        }
    };
    if let Ok(d) = v.downcast::<PyDict>() {
        let out = PyDict::new(py);
        for (k, item) in d.iter() {
            keyed(&out, k, item)?;
        }
        return Ok(out.into_any().unbind());
    }
    if let Ok(items) = v.downcast::<PyList>() {
        let out: Vec<PyObject> = items
            .iter()
            .map(|item| value_of(py, sc, &item, depth + 1))
            .collect::<PyResult<_>>()?;
        return Ok(PyList::new(py, out)?.into_any().unbind());
    }
    if let Ok(items) = v.downcast::<PyTuple>() {
        let out: Vec<PyObject> = items
            .iter()
            .map(|item| value_of(py, sc, &item, depth + 1))
            .collect::<PyResult<_>>()?;
        return Ok(PyTuple::new(py, out)?.into_any().unbind());
    }
    if let Ok(m) = v.downcast::<PyMapping>() {
        let out = PyDict::new(py);
        for pair in m.items()?.iter() {
            let (k, item): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair.extract()?;
            keyed(&out, k, item)?;
        }
        return Ok(out.into_any().unbind());
    }
    Ok(v.clone().unbind())
}
