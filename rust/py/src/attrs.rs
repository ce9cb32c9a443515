//! Python values → attribute values, under limits. Never raises: a value
//! that is not str/bool/int/float (or a homogeneous sequence of them) is
//! converted with `str()` or dropped, an oversized string is truncated on a
//! character boundary, text that is not valid UTF-8 (lone surrogates, bytes)
//! is replaced with U+FFFD. Each such event is counted.
//!
//! GIL and locks: every function runs with the GIL (it reads Python
//! objects), and `convert`, `key` and `text` may run Python code (`str()`,
//! a `str` subclass, `items()` of a mapping): callers convert before they
//! lock a span, never while. The two text caches are `GILProtected`
//! `RefCell`s: the GIL is their lock, and they are borrowed with
//! `try_borrow` so that Python code re-entering here (a `__str__` that sets
//! an attribute) skips the cache rather than panicking. Limits and counters
//! are atomics. No mutex.

use pulsetrace_core::span::AttrValue;
use pyo3::prelude::*;
use pyo3::sync::GILProtected;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Attribute limits, fixed when the tracer is built.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_value_len: usize,
    pub max_attributes: usize,
    pub max_events: usize,
}

/// The limits, changeable at run time by `Tracer.configure`.
#[derive(Debug)]
pub struct AtomicLimits {
    max_value_len: AtomicUsize,
    max_attributes: AtomicUsize,
    max_events: AtomicUsize,
}

impl AtomicLimits {
    pub fn new(l: Limits) -> Self {
        AtomicLimits {
            max_value_len: AtomicUsize::new(l.max_value_len),
            max_attributes: AtomicUsize::new(l.max_attributes),
            max_events: AtomicUsize::new(l.max_events),
        }
    }

    #[inline]
    pub fn get(&self) -> Limits {
        Limits {
            max_value_len: self.max_value_len.load(Ordering::Relaxed),
            max_attributes: self.max_attributes.load(Ordering::Relaxed),
            max_events: self.max_events.load(Ordering::Relaxed),
        }
    }

    pub fn set(&self, l: Limits) {
        self.max_value_len.store(l.max_value_len, Ordering::Relaxed);
        self.max_attributes
            .store(l.max_attributes, Ordering::Relaxed);
        self.max_events.store(l.max_events, Ordering::Relaxed);
    }
}

/// What conversion did that a user should be able to see.
#[derive(Default, Debug)]
pub struct AttrCounters {
    pub converted: AtomicU64,
    pub dropped: AtomicU64,
    pub truncated: AtomicU64,
    pub invalid_utf8: AtomicU64,
}

impl AttrCounters {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Truncate to at most `max` bytes on a char boundary.
pub fn truncate(mut s: String, max: usize, counters: &AttrCounters) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        AttrCounters::bump(&counters.truncated);
    }
    s
}

/// A Python `str` as Rust text: exact when valid, with U+FFFD for lone
/// surrogates otherwise.
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
    if t.len() <= max {
        return Arc::from(t);
    }
    let mut cut = max;
    while !t.is_char_boundary(cut) {
        cut -= 1;
    }
    AttrCounters::bump(&counters.truncated);
    Arc::from(&t[..cut])
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

/// A Python `str` as shared text truncated to `max` bytes.
pub fn arc_text(s: &Bound<'_, PyString>, max: usize, counters: &AttrCounters) -> Arc<str> {
    match crate::pystr::utf8(s) {
        Some(t) => arc_str(t, max, counters),
        None => Arc::from(truncate(text(s, counters), max, counters)),
    }
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
const INTERN_MAX_LEN: isize = 96;

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
    if s.len().is_ok_and(|n| n as isize <= INTERN_MAX_LEN) {
        let entry = Interned {
            ptr,
            max,
            _obj: s.clone().unbind(),
            text: text.clone(),
        };
        if let Ok(mut v) = cache.try_borrow_mut() {
            if v.is_empty() {
                v.resize_with(INTERN_SLOTS, || None);
            }
            v[slot] = Some(entry);
        }
    }
    text
}

/// One U+FFFD per lone surrogate (UTF-16 round trip), as a reader expects.
fn lossy(s: &Bound<'_, PyString>) -> String {
    let units = s
        .call_method1("encode", ("utf-16-le", "surrogatepass"))
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

fn scalar(v: &Bound<'_, PyAny>, limits: &Limits, counters: &AttrCounters) -> Option<AttrValue> {
    if let Ok(s) = v.downcast::<PyString>() {
        return Some(AttrValue::Str(shared(s, limits, counters)));
    }
    if v.is_instance_of::<PyBool>() {
        return Some(AttrValue::Bool(v.is_truthy().unwrap_or(false)));
    }
    if v.is_instance_of::<PyInt>() {
        return match v.extract::<i64>() {
            Ok(i) => Some(AttrValue::Int(i)),
            Err(_) => {
                // Outside i64: keep the digits as a string.
                AttrCounters::bump(&counters.converted);
                v.str().ok().map(|s| {
                    AttrValue::Str(
                        truncate(text(&s, counters), limits.max_value_len, counters).into(),
                    )
                })
            }
        };
    }
    if v.is_instance_of::<PyFloat>() {
        return v.extract::<f64>().ok().map(AttrValue::Float);
    }
    if let Ok(b) = v.downcast::<PyBytes>() {
        let bytes = b.as_bytes();
        let s = match std::str::from_utf8(bytes) {
            Ok(t) => t.to_owned(),
            Err(_) => {
                AttrCounters::bump(&counters.invalid_utf8);
                String::from_utf8_lossy(bytes).into_owned()
            }
        };
        AttrCounters::bump(&counters.converted);
        return Some(AttrValue::Str(
            truncate(s, limits.max_value_len, counters).into(),
        ));
    }
    None
}

fn sequence(
    items: Vec<Bound<'_, PyAny>>,
    limits: &Limits,
    counters: &AttrCounters,
) -> Option<AttrValue> {
    let mut values = Vec::with_capacity(items.len());
    for item in &items {
        if item.is_none() {
            continue;
        }
        values.push(scalar(item, limits, counters).or_else(|| stringify(item, limits, counters))?);
    }
    let all = |f: fn(&AttrValue) -> bool| values.iter().all(f);
    if all(|v| matches!(v, AttrValue::Bool(_))) && !values.is_empty() {
        return Some(AttrValue::BoolArray(
            values
                .into_iter()
                .map(|v| matches!(v, AttrValue::Bool(true)))
                .collect(),
        ));
    }
    if all(|v| matches!(v, AttrValue::Int(_))) && !values.is_empty() {
        return Some(AttrValue::IntArray(
            values
                .into_iter()
                .map(|v| if let AttrValue::Int(i) = v { i } else { 0 })
                .collect(),
        ));
    }
    if all(|v| matches!(v, AttrValue::Float(_) | AttrValue::Int(_))) && !values.is_empty() {
        return Some(AttrValue::FloatArray(
            values
                .into_iter()
                .map(|v| match v {
                    AttrValue::Float(f) => f,
                    AttrValue::Int(i) => i as f64,
                    _ => 0.0,
                })
                .collect(),
        ));
    }
    // Empty or mixed: strings.
    if !all(|v| matches!(v, AttrValue::Str(_))) {
        AttrCounters::bump(&counters.converted);
    }
    Some(AttrValue::StrArray(
        values
            .into_iter()
            .map(|v| match v {
                AttrValue::Str(s) => s.to_string(),
                AttrValue::Bool(b) => b.to_string(),
                AttrValue::Int(i) => i.to_string(),
                AttrValue::Float(f) => f.to_string(),
                _ => String::new(),
            })
            .collect(),
    ))
}

fn stringify(v: &Bound<'_, PyAny>, limits: &Limits, counters: &AttrCounters) -> Option<AttrValue> {
    match v.str() {
        Ok(s) => {
            AttrCounters::bump(&counters.converted);
            Some(AttrValue::Str(
                truncate(text(&s, counters), limits.max_value_len, counters).into(),
            ))
        }
        Err(_) => None,
    }
}

/// Convert one attribute value; `None` means dropped (and counted).
pub fn convert(
    v: &Bound<'_, PyAny>,
    limits: &Limits,
    counters: &AttrCounters,
) -> Option<AttrValue> {
    let out = if v.is_none() {
        None
    } else if let Some(s) = scalar(v, limits, counters) {
        Some(s)
    } else if let Ok(l) = v.downcast::<PyList>() {
        sequence(l.iter().collect(), limits, counters)
    } else if let Ok(t) = v.downcast::<PyTuple>() {
        sequence(t.iter().collect(), limits, counters)
    } else {
        stringify(v, limits, counters)
    };
    if out.is_none() {
        AttrCounters::bump(&counters.dropped);
    }
    out
}

/// An attribute key: a `str` (any other key is converted with `str()`).
pub fn key(k: &Bound<'_, PyAny>, limits: &Limits, counters: &AttrCounters) -> Option<Arc<str>> {
    if let Ok(s) = k.downcast::<PyString>() {
        return Some(shared(s, limits, counters));
    }
    AttrCounters::bump(&counters.converted);
    k.str()
        .ok()
        .map(|s| truncate(text(&s, counters), limits.max_value_len, counters).into())
}

/// Attribute value → Python object (for exported span data).
pub fn to_py(py: Python<'_>, v: &AttrValue) -> PyResult<PyObject> {
    Ok(match v {
        AttrValue::Str(s) => (&**s).into_pyobject(py)?.into_any().unbind(),
        AttrValue::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        AttrValue::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        AttrValue::Float(f) => f.into_pyobject(py)?.into_any().unbind(),
        AttrValue::StrArray(a) => PyTuple::new(py, a)?.into_any().unbind(),
        AttrValue::BoolArray(a) => PyTuple::new(py, a)?.into_any().unbind(),
        AttrValue::IntArray(a) => PyTuple::new(py, a)?.into_any().unbind(),
        AttrValue::FloatArray(a) => PyTuple::new(py, a)?.into_any().unbind(),
    })
}
