//! Python text → attribute text: cut to the length limit on a character
//! boundary before it is copied, lone surrogates and bytes replaced with
//! U+FFFD, and the two caches that let recurring text (keys, route names,
//! hosts) be shared instead of copied.
//!
//! GIL and locks: every function runs with the GIL (it reads Python str
//! objects); the caches are `GILProtected` `RefCell`s borrowed with
//! `try_borrow` (see `crate::attrs`).

use super::{AttrCounters, Limits};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::GILProtected;
use pyo3::types::{PyBytes, PyString};
use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

/// `t` cut to at most `max` bytes on a character boundary, and whether it was.
pub(super) fn cut_at(t: &str, max: usize) -> (&str, bool) {
    if t.len() <= max {
        return (t, false);
    }
    let mut cut = max;
    while !t.is_char_boundary(cut) {
        cut -= 1;
    }
    (&t[..cut], true)
}

/// Truncate to at most `max` bytes on a char boundary.
pub fn truncate(mut s: String, max: usize, counters: &AttrCounters) -> String {
    let (kept, cut) = cut_at(&s, max);
    if cut {
        let n = kept.len();
        s.truncate(n);
        AttrCounters::bump(&counters.truncated);
    }
    s
}

/// A Python `str` as Rust text: exact when valid, with U+FFFD for lone
/// surrogates otherwise. Unbounded: for text whose size something else
/// bounds (a WSGI server's header limit).
pub fn text(s: &Bound<'_, PyString>, counters: &AttrCounters) -> String {
    match crate::pystr::utf8(s) {
        Some(t) => t.to_owned(),
        None => {
            AttrCounters::bump(&counters.invalid_utf8);
            lossy(s)
        }
    }
}

/// `t` as shared text truncated to `max` bytes (on a character boundary),
/// built in one allocation.
pub fn arc_str(t: &str, max: usize, counters: &AttrCounters) -> Arc<str> {
    let (kept, cut) = cut_at(t, max);
    if cut {
        AttrCounters::bump(&counters.truncated);
    }
    Arc::from(kept)
}

/// Recurring text (a request's path, host, client address or user agent:
/// the same few values on most requests) shared instead of copied: a small
/// direct-mapped cache by content, guarded by the GIL. A hit costs a hash
/// and a comparison instead of an allocation on the request path and a free
/// on the core's worker thread; a miss allocates, as `arc_str` does. Only
/// short texts within the value limit are cached.
const RECURRING_SLOTS: usize = 256;
const RECURRING_MAX_LEN: usize = 64;

static RECURRING: GILProtected<RefCell<Vec<Option<Arc<str>>>>> =
    GILProtected::new(RefCell::new(Vec::new()));

/// A cheap hash of a short text: its length and its first and last eight
/// bytes (texts alike there share a slot; the full comparison tells them
/// apart, and the later one replaces the earlier).
fn text_hash(b: &[u8]) -> u64 {
    let word = |s: &[u8]| {
        let mut w = [0u8; 8];
        w[..s.len()].copy_from_slice(s);
        u64::from_le_bytes(w)
    };
    let n = b.len();
    let (head, tail) = (word(&b[..n.min(8)]), word(&b[n.saturating_sub(8)..]));
    (head.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ tail.rotate_left(29) ^ n as u64)
        .wrapping_mul(0xff51_afd7_ed55_8ccd)
        >> 32
}

/// `t` as shared text truncated to `max` bytes, from the recurring-text
/// cache when it is there (see [`RECURRING`]).
pub fn recurring(py: Python<'_>, t: &str, max: usize, counters: &AttrCounters) -> Arc<str> {
    if t.len() > RECURRING_MAX_LEN || t.len() > max {
        return arc_str(t, max, counters);
    }
    let slot = (text_hash(t.as_bytes()) % RECURRING_SLOTS as u64) as usize;
    let Ok(mut cache) = RECURRING.get(py).try_borrow_mut() else {
        return Arc::from(t);
    };
    if cache.is_empty() {
        cache.resize(RECURRING_SLOTS, None);
    }
    if let Some(hit) = &cache[slot] {
        if **hit == *t {
            return hit.clone();
        }
    }
    let text: Arc<str> = Arc::from(t);
    cache[slot] = Some(text.clone());
    text
}

/// The number of characters of `s`: its own length, not what a subclass's
/// `__len__` says.
#[allow(unsafe_code)]
pub(crate) fn char_len(s: &Bound<'_, PyString>) -> usize {
    // SAFETY: the GIL is held (`s` is bound) and `s` is a live str (or an
    // instance of a subclass), whose length field this reads.
    let n = unsafe { ffi::PyUnicode_GetLength(s.as_ptr()) };
    usize::try_from(n).unwrap_or(0)
}

/// The first `n` characters of `s`, as a new str.
#[allow(unsafe_code)]
fn head<'py>(s: &Bound<'py, PyString>, n: usize) -> Option<Bound<'py, PyAny>> {
    let end = ffi::Py_ssize_t::try_from(n).ok()?;
    // SAFETY: the GIL is held and `s` is a live str; the call returns a new
    // reference, or NULL with an exception set (taken, and dropped, by
    // `from_owned_ptr_or_err`).
    unsafe { Bound::from_owned_ptr_or_err(s.py(), ffi::PyUnicode_Substring(s.as_ptr(), 0, end)) }
        .ok()
}

/// A Python `str` as text of at most `max` bytes, handed to `f`: cut on a
/// character boundary (counted), with U+FFFD for lone surrogates (counted).
/// At most `max` characters are read out of `s`, however long it is.
pub fn with_text<R>(
    s: &Bound<'_, PyString>,
    max: usize,
    counters: &AttrCounters,
    f: impl FnOnce(&str) -> R,
) -> R {
    let short;
    let (s, mut truncated) = match (char_len(s) > max).then(|| head(s, max)).flatten() {
        Some(h) => match h.downcast_into::<PyString>() {
            Ok(h) => {
                short = h;
                (&short, true)
            }
            Err(_) => (s, false),
        },
        None => (s, false),
    };
    let owned;
    let whole = match crate::pystr::utf8(s) {
        Some(t) => t,
        None => {
            AttrCounters::bump(&counters.invalid_utf8);
            owned = lossy(s);
            &owned
        }
    };
    let (kept, cut) = cut_at(whole, max);
    truncated |= cut;
    if truncated {
        AttrCounters::bump(&counters.truncated);
    }
    f(kept)
}

/// A Python `str` as shared text truncated to `max` bytes.
pub fn arc_text(s: &Bound<'_, PyString>, max: usize, counters: &AttrCounters) -> Arc<str> {
    with_text(s, max, counters, |t| Arc::from(t))
}

/// A Python `str` as owned text truncated to `max` bytes.
pub fn string(s: &Bound<'_, PyString>, max: usize, counters: &AttrCounters) -> String {
    with_text(s, max, counters, |t| t.to_owned())
}

/// Interned text: attribute keys, span names and many values are the same
/// Python `str` objects on every span (literals in the application's code).
/// A small direct-mapped per-thread cache maps such an object to the text
/// converted once. It holds a strong reference to each cached `str`, so a
/// cached address can never be reused by another object: pointer equality
/// means the same (immutable) text. Only short strings are cached.
/// (After a fork the child inherits the cache with the objects it refers
/// to, so it stays valid.)
struct Interned {
    ptr: usize,
    max: usize,
    _obj: Py<PyString>,
    text: Arc<str>,
}

const INTERN_SLOTS: usize = 512;
const INTERN_MAX_LEN: usize = 96;

/// Guarded by the GIL (every caller holds it): no thread-local lookup.
static INTERNED: GILProtected<RefCell<Vec<Option<Interned>>>> =
    GILProtected::new(RefCell::new(Vec::new()));

/// A Python `str` as shared text, truncated to `limits.max_value_len`.
pub fn shared(s: &Bound<'_, PyString>, limits: &Limits, counters: &AttrCounters) -> Arc<str> {
    let ptr = s.as_ptr() as usize;
    let slot = (ptr >> 4) % INTERN_SLOTS;
    let max = limits.max_value_len;
    let cache = INTERNED.get(s.py());
    if let Ok(v) = cache.try_borrow() {
        if let Some(Some(e)) = v.get(slot) {
            if e.ptr == ptr && e.max == max {
                return e.text.clone();
            }
        }
    }
    let text = arc_text(s, max, counters);
    if char_len(s) <= INTERN_MAX_LEN {
        let entry = Interned {
            ptr,
            max,
            _obj: s.clone().unbind(),
            text: text.clone(),
        };
        // The entry replaced is dropped after the borrow ends: dropping the
        // last reference to a str subclass's instance may run its code.
        let replaced = match cache.try_borrow_mut() {
            Ok(mut v) => {
                if v.is_empty() {
                    v.resize_with(INTERN_SLOTS, || None);
                }
                v[slot].replace(entry)
            }
            Err(_) => None,
        };
        drop(replaced);
    }
    text
}

/// One U+FFFD per lone surrogate (UTF-16 round trip), as a reader expects.
/// `str.encode` itself, not a subclass's.
fn lossy(s: &Bound<'_, PyString>) -> String {
    let py = s.py();
    let units = py
        .get_type::<PyString>()
        .call_method1(
            pyo3::intern!(py, "encode"),
            (s, "utf-16-le", "surrogatepass"),
        )
        .ok()
        .and_then(|b| b.downcast_into::<PyBytes>().ok());
    match units {
        Some(b) => {
            let raw = b.as_bytes();
            let wide: Vec<u16> = raw
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&wide)
        }
        None => s.to_string_lossy().into_owned(),
    }
}

/// Bytes as text of at most `max` bytes: only the first `max` bytes are
/// read; a character the cut splits is left out; invalid UTF-8 becomes
/// U+FFFD (counted).
pub(super) fn bytes_text(b: &[u8], max: usize, counters: &AttrCounters) -> Arc<str> {
    let (head, mut truncated) = if b.len() > max {
        (&b[..max], true)
    } else {
        (b, false)
    };
    let text: Cow<'_, str> = match std::str::from_utf8(head) {
        Ok(t) => Cow::Borrowed(t),
        Err(e) if truncated && e.error_len().is_none() => {
            Cow::Borrowed(std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default())
        }
        Err(_) => {
            AttrCounters::bump(&counters.invalid_utf8);
            String::from_utf8_lossy(head)
        }
    };
    let (kept, cut) = cut_at(&text, max);
    truncated |= cut;
    if truncated {
        AttrCounters::bump(&counters.truncated);
    }
    Arc::from(kept)
}
