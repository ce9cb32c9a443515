//! Attributes given as a tuple of `(key, value)` pairs, converted once.
//!
//! A hook that starts many spans with the same attributes (the SQL hooks: a
//! statement repeated on a connection) builds one tuple per statement and
//! passes that same object every time. A tuple is immutable, and so are the
//! exact `str`, `int`, `float` and `bool` objects it holds; the cache keeps
//! a strong reference to every tuple it holds, so a cached address is never
//! reused by another object while cached: the same address under the same
//! limits means the same attributes. Only tuples of exactly such pairs whose
//! conversion counted nothing (no truncation, drop, conversion or
//! replacement) are cached, so a hit, which copies the converted list
//! (reference counts, one allocation), counts nothing either.
//!
//! GIL: the cache is a `GILProtected` `RefCell`, borrowed with `try_borrow*`
//! as the text caches of [`super`] are (re-entrant Python code skips it).

use super::{AttrCounters, Limits};
use pulsetrace_core::span::Attributes;
use pyo3::prelude::*;
use pyo3::sync::GILProtected;
use pyo3::types::{PyBool, PyFloat, PyInt, PyString, PyTuple};
use std::cell::RefCell;
use std::sync::atomic::Ordering;

struct Entry {
    ptr: usize,
    max_value_len: usize,
    max: usize,
    _obj: Py<PyTuple>,
    attributes: Attributes,
}

/// Distinct attribute tuples kept (direct-mapped by address).
const SLOTS: usize = 256;

static CACHE: GILProtected<RefCell<Vec<Option<Entry>>>> =
    GILProtected::new(RefCell::new(Vec::new()));

fn slot(ptr: usize) -> usize {
    (ptr >> 4) % SLOTS
}

/// The converted attributes of `pairs` (at most `max`), if cached.
pub(super) fn lookup(
    pairs: &Bound<'_, PyTuple>,
    max: usize,
    limits: &Limits,
) -> Option<Attributes> {
    let ptr = pairs.as_ptr() as usize;
    let cache = CACHE.get(pairs.py()).try_borrow().ok()?;
    match cache.get(slot(ptr)) {
        Some(Some(e))
            if e.ptr == ptr && e.max == max && e.max_value_len == limits.max_value_len =>
        {
            Some(e.attributes.clone())
        }
        _ => None,
    }
}

/// What the counters said before a conversion (see [`store`]).
pub(super) fn snapshot(counters: &AttrCounters) -> [u64; 4] {
    [
        counters.converted.load(Ordering::Relaxed),
        counters.dropped.load(Ordering::Relaxed),
        counters.truncated.load(Ordering::Relaxed),
        counters.invalid_utf8.load(Ordering::Relaxed),
    ]
}

fn cacheable(pairs: &Bound<'_, PyTuple>, max: usize) -> bool {
    pairs.len() <= max
        && pairs.iter().all(|item| {
            let Ok(pair) = item.downcast_exact::<PyTuple>() else {
                return false;
            };
            if pair.len() != 2 {
                return false;
            }
            let (Ok(k), Ok(v)) = (pair.get_item(0), pair.get_item(1)) else {
                return false;
            };
            k.is_exact_instance_of::<PyString>()
                && (v.is_exact_instance_of::<PyString>()
                    || v.is_exact_instance_of::<PyInt>()
                    || v.is_exact_instance_of::<PyFloat>()
                    || v.is_exact_instance_of::<PyBool>())
        })
}

/// Keep `attributes` as the conversion of `pairs`, if it may be reused:
/// pairs of exact immutable types, and nothing counted since `before`.
pub(super) fn store(
    pairs: &Bound<'_, PyTuple>,
    max: usize,
    limits: &Limits,
    counters: &AttrCounters,
    before: [u64; 4],
    attributes: &Attributes,
) {
    if snapshot(counters) != before || !cacheable(pairs, max) {
        return;
    }
    let ptr = pairs.as_ptr() as usize;
    let entry = Entry {
        ptr,
        max_value_len: limits.max_value_len,
        max,
        _obj: pairs.clone().unbind(),
        attributes: attributes.clone(),
    };
    // The entry replaced is dropped after the borrow ends (it releases a tuple).
    let replaced = match CACHE.get(pairs.py()).try_borrow_mut() {
        Ok(mut v) => {
            if v.is_empty() {
                v.resize_with(SLOTS, || None);
            }
            v[slot(ptr)].replace(entry)
        }
        Err(_) => None,
    };
    drop(replaced);
}
