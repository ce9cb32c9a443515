//! Python values → attribute values, under limits. Never raises and never
//! panics: a value that is not str/bool/int/float (or a homogeneous sequence
//! of them) is converted with `str()` or dropped, an oversized string is
//! truncated on a character boundary, a list beyond
//! `max_attribute_list_length` keeps its first elements, text that is not
//! valid UTF-8 (lone surrogates, bytes) is replaced with U+FFFD. Each such
//! event is counted.
//!
//! The application's objects run code while they are converted (`__str__`,
//! a mapping's `items()`), and that code may do anything: mutate the mapping
//! being converted, raise, call back into pulsetrace, return a huge string.
//! So a mapping or list is first copied (references only, at most as many
//! entries as can be kept, with no Python code running meanwhile), then
//! converted from that copy; an exception the application's object raises
//! drops that value (counted); text is cut to the length limit before it is
//! copied out of a Python object; and no span lock is held while a value is
//! converted (the caller converts first, then locks and stores).
//!
//! # What one span can hold
//!
//! Every value a span keeps is charged its bytes of text plus a fixed
//! overhead: [`ITEM_OVERHEAD`] per attribute, event and link,
//! [`ELEMENT_OVERHEAD`] per list element. Each overhead is at least what the
//! item takes in memory besides its text, and at least its OTLP framing
//! (tags, lengths, fixed-size numbers), so the charge bounds both. A span
//! keeps at most
//!
//! - `max_attributes × (max_attribute_length + 2 × 64)` bytes of attributes
//!   (each attribute's share: a value of the full length, a key of up to 64
//!   bytes and the overhead; a list shares it with its elements), and
//! - `max_events × (max_attribute_length + 2 × 64)` bytes of events and
//!   links together (an exception's stack trace, up to 8 ×
//!   `max_attribute_length`, included);
//!
//! what does not fit is dropped and counted, as a value over a count limit
//! is. Its name and status message are at most `max_attribute_length` bytes
//! each, its trace state at most 512 (W3C), and its other fields (ids,
//! times, kind, flags, counts, with their framing) take under 1 KiB.
//!
//! With the default limits (`max_attributes` = `max_events` = 128,
//! `max_attribute_length` = 4096): 2 × 128 × (4096 + 128) B = 1,081,344 B
//! of attributes, events and links, + 2 × 4096 B of name and status
//! message, + under 1 KiB: under 1,090,560 B (1.04 MiB) per span, in memory
//! and as OTLP: about a quarter of the 4 MiB a receiver usually accepts in
//! one request. (Count limits alone would not bound it: 128 attributes,
//! each a list of 128 strings of 4096 bytes, are 64 MiB.) Lists keep their
//! first `max_attribute_list_length` (default 128) elements, which bounds
//! the work of converting one as well.
//!
//! GIL and locks: every function runs with the GIL (it reads Python
//! objects), and `convert`, `key` and `text` may run Python code (`str()`,
//! a `str` subclass, `items()` of a mapping): callers convert before they
//! lock a span, never while. The two text caches are `GILProtected`
//! `RefCell`s: the GIL is their lock, and they are borrowed with
//! `try_borrow` so that Python code re-entering here (a `__str__` that sets
//! an attribute) skips the cache rather than panicking. Limits and counters
//! are atomics. No mutex.

mod pairs;

use crate::guard;
use pulsetrace_core::span::{AttrValue, Attributes, Event, Link};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::GILProtected;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// What an attribute, an event or a link is charged besides its text: at
/// least its size in memory without the text (an attribute: a 48-byte
/// vector slot and a 16-byte shared-text header) and at least its OTLP
/// framing (tags and lengths: under 30 bytes).
pub const ITEM_OVERHEAD: usize = 64;
/// What a list element is charged besides its text: at least its size in
/// memory (a 24-byte string header, or 8 bytes) and its OTLP framing (an
/// `AnyValue` in an array: at most 13 bytes besides the text).
pub const ELEMENT_OVERHEAD: usize = 32;

/// Attribute limits, fixed when the tracer is built.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_value_len: usize,
    pub max_attributes: usize,
    pub max_events: usize,
    pub max_list_len: usize,
}

impl Limits {
    /// What one attribute, event or link may take of its span's budget on
    /// average: a value of the full length, a key of up to 64 bytes and
    /// the overhead.
    fn share(&self) -> usize {
        self.max_value_len.saturating_add(2 * ITEM_OVERHEAD)
    }

    /// Bytes of attributes one span may hold (see the module doc).
    pub fn attribute_budget(&self) -> usize {
        self.max_attributes.saturating_mul(self.share())
    }

    /// Bytes of events and links one span may hold, together.
    pub fn event_budget(&self) -> usize {
        self.max_events.saturating_mul(self.share())
    }
}

/// The limits, changeable at run time by `Tracer.configure`.
#[derive(Debug)]
pub struct AtomicLimits {
    max_value_len: AtomicUsize,
    max_attributes: AtomicUsize,
    max_events: AtomicUsize,
    max_list_len: AtomicUsize,
}

impl AtomicLimits {
    pub fn new(l: Limits) -> Self {
        AtomicLimits {
            max_value_len: AtomicUsize::new(l.max_value_len),
            max_attributes: AtomicUsize::new(l.max_attributes),
            max_events: AtomicUsize::new(l.max_events),
            max_list_len: AtomicUsize::new(l.max_list_len),
        }
    }

    #[inline]
    pub fn get(&self) -> Limits {
        Limits {
            max_value_len: self.max_value_len.load(Ordering::Relaxed),
            max_attributes: self.max_attributes.load(Ordering::Relaxed),
            max_events: self.max_events.load(Ordering::Relaxed),
            max_list_len: self.max_list_len.load(Ordering::Relaxed),
        }
    }

    pub fn set(&self, l: Limits) {
        self.max_value_len.store(l.max_value_len, Ordering::Relaxed);
        self.max_attributes
            .store(l.max_attributes, Ordering::Relaxed);
        self.max_events.store(l.max_events, Ordering::Relaxed);
        self.max_list_len.store(l.max_list_len, Ordering::Relaxed);
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

    pub(crate) fn add(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// What a value is charged (see the module doc).
pub fn value_cost(v: &AttrValue) -> usize {
    match v {
        AttrValue::Str(s) => s.len(),
        AttrValue::Bool(_) | AttrValue::Int(_) | AttrValue::Float(_) => 8,
        AttrValue::StrArray(a) => a.iter().map(|s| s.len() + ELEMENT_OVERHEAD).sum(),
        AttrValue::BoolArray(a) => a.len() * ELEMENT_OVERHEAD,
        AttrValue::IntArray(a) => a.len() * ELEMENT_OVERHEAD,
        AttrValue::FloatArray(a) => a.len() * ELEMENT_OVERHEAD,
    }
}

/// What one attribute is charged.
#[inline]
pub fn attribute_cost(key: &str, v: &AttrValue) -> usize {
    ITEM_OVERHEAD + key.len() + value_cost(v)
}

fn attributes_cost(a: &Attributes) -> usize {
    a.iter().map(|(k, v)| attribute_cost(k, v)).sum()
}

/// What an event is charged (its name and attributes).
pub fn event_cost(e: &Event) -> usize {
    ITEM_OVERHEAD + e.name.len() + attributes_cost(&e.attributes)
}

/// What a link is charged (its trace state and attributes).
pub fn link_cost(l: &Link) -> usize {
    ITEM_OVERHEAD + l.trace_state.len() + attributes_cost(&l.attributes)
}

/// `t` cut to at most `max` bytes on a character boundary, and whether it was.
fn cut_at(t: &str, max: usize) -> (&str, bool) {
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
fn bytes_text(b: &[u8], max: usize, counters: &AttrCounters) -> Arc<str> {
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

/// An int outside i64, as its digits; dropped (None) when its digits would
/// not fit the length limit (they would not be its value), without
/// computing them (quadratic in the digits on older Pythons).
fn big_int(v: &Bound<'_, PyAny>, limits: &Limits, counters: &AttrCounters) -> Option<AttrValue> {
    let py = v.py();
    let bits: u64 = py
        .get_type::<PyInt>()
        .call_method1(pyo3::intern!(py, "bit_length"), (v,))
        .and_then(|b| b.extract())
        .ok()?;
    // digits <= bits * log10(2) + 1 < bits * 0.302 + 2 (a sign included)
    if (bits as f64) * 0.302 + 2.0 > limits.max_value_len as f64 {
        return None;
    }
    AttrCounters::bump(&counters.converted);
    let s = v.str().ok()?;
    Some(AttrValue::Str(arc_text(&s, limits.max_value_len, counters)))
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
            // Outside i64: the digits as a string.
            Err(_) => big_int(v, limits, counters),
        };
    }
    if v.is_instance_of::<PyFloat>() {
        return v.extract::<f64>().ok().map(AttrValue::Float);
    }
    if let Ok(b) = v.downcast::<PyBytes>() {
        AttrCounters::bump(&counters.converted);
        return Some(AttrValue::Str(bytes_text(
            b.as_bytes(),
            limits.max_value_len,
            counters,
        )));
    }
    None
}

/// A list's or tuple's first `max_list_len` elements (references, taken
/// before any of them is converted: converting may run code that changes
/// the list); more are counted as a truncation.
fn elements<'py>(
    items: impl ExactSizeIterator<Item = Bound<'py, PyAny>>,
    limits: &Limits,
    counters: &AttrCounters,
) -> Vec<Bound<'py, PyAny>> {
    if items.len() > limits.max_list_len {
        AttrCounters::bump(&counters.truncated);
    }
    items.take(limits.max_list_len).collect()
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
    // Any exception the object's `__str__` raises (or a non-str result)
    // drops the value.
    let s = v.str().ok()?;
    AttrCounters::bump(&counters.converted);
    Some(AttrValue::Str(arc_text(&s, limits.max_value_len, counters)))
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
        sequence(elements(l.iter(), limits, counters), limits, counters)
    } else if let Ok(t) = v.downcast::<PyTuple>() {
        sequence(elements(t.iter(), limits, counters), limits, counters)
    } else {
        stringify(v, limits, counters)
    };
    if out.is_none() {
        AttrCounters::bump(&counters.dropped);
    }
    out
}

/// An attribute key: a `str` (any other key is converted with `str()`);
/// `None` means dropped (and counted).
pub fn key(k: &Bound<'_, PyAny>, limits: &Limits, counters: &AttrCounters) -> Option<Arc<str>> {
    if let Ok(s) = k.downcast::<PyString>() {
        return Some(shared(s, limits, counters));
    }
    match k.str() {
        Ok(s) => {
            AttrCounters::bump(&counters.converted);
            Some(arc_text(&s, limits.max_value_len, counters))
        }
        Err(_) => {
            AttrCounters::bump(&counters.dropped);
            None
        }
    }
}

/// The converted entries of an attribute mapping, and how many entries
/// were left out for being over `max`.
pub struct Collected {
    pub attributes: Attributes,
    pub over: usize,
}

/// The entries of an attribute mapping (a dict, any object with `items()`,
/// or a tuple of `(key, value)` pairs: see [`pairs`]), converted, in order:
/// at most `max` of them (the others are counted as dropped, in `over`). The entries are taken first (references
/// only: no code of the application runs while a dict is read), then
/// converted; an entry whose key or value cannot be converted is dropped
/// (counted), and so is what an exception in the mapping's own `items()`
/// leaves out.
pub fn collect(
    mapping: &Bound<'_, PyAny>,
    max: usize,
    limits: &Limits,
    counters: &AttrCounters,
) -> Collected {
    let mut out = Collected {
        attributes: Vec::new(),
        over: 0,
    };
    guard::guard(
        mapping.py(),
        "attributes",
        || collect_into(mapping, max, limits, counters, &mut out),
        || (),
    );
    if out.over > 0 {
        AttrCounters::add(&counters.dropped, out.over);
    }
    out
}

/// How many entries of a dict are taken without a heap allocation.
const INLINE_ENTRIES: usize = 8;

fn collect_into(
    mapping: &Bound<'_, PyAny>,
    max: usize,
    limits: &Limits,
    counters: &AttrCounters,
    out: &mut Collected,
) {
    let mut inline: [Option<(Bound<'_, PyAny>, Bound<'_, PyAny>)>; INLINE_ENTRIES] =
        Default::default();
    let mut heap = Vec::new();
    let mut cache = None;
    if let Ok(t) = mapping.downcast::<PyTuple>() {
        // `(key, value)` pairs: converted once while the same tuple is reused.
        if let Some(hit) = pairs::lookup(t, max, limits) {
            out.attributes = hit;
            return;
        }
        cache = Some((t, pairs::snapshot(counters)));
        out.over = t.len().saturating_sub(max);
        let mut n = 0;
        for item in t.iter().take(max) {
            match item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>() {
                Ok(kv) => {
                    match inline.get_mut(n) {
                        Some(slot) => *slot = Some(kv),
                        None => heap.push(kv),
                    }
                    n += 1;
                }
                Err(_) => AttrCounters::bump(&counters.dropped),
            }
        }
    } else if let Ok(d) = mapping.downcast::<PyDict>() {
        out.over = d.len().saturating_sub(max);
        // Nothing in this loop runs Python code, so the dict cannot change
        // under the iterator.
        for (i, kv) in d.iter().take(max).enumerate() {
            match inline.get_mut(i) {
                Some(slot) => *slot = Some(kv),
                None => heap.push(kv),
            }
        }
    } else {
        let py = mapping.py();
        let items = mapping
            .call_method0(pyo3::intern!(py, "items"))
            .and_then(|i| i.try_iter());
        let Ok(items) = items else {
            AttrCounters::bump(&counters.dropped);
            return;
        };
        for item in items {
            if heap.len() == max {
                out.over = mapping.len().map_or(1, |n| n.saturating_sub(max).max(1));
                break;
            }
            match item.and_then(|i| i.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>()) {
                Ok(kv) => heap.push(kv),
                Err(_) => {
                    AttrCounters::bump(&counters.dropped);
                    break;
                }
            }
        }
    }
    let taken = inline.iter().take_while(|e| e.is_some()).count() + heap.len();
    out.attributes.reserve_exact(taken);
    for (k, v) in inline.iter().map_while(Option::as_ref).chain(heap.iter()) {
        let Some(k) = key(k, limits, counters) else {
            continue;
        };
        if let Some(v) = convert(v, limits, counters) {
            out.attributes.push((k, v));
        }
    }
    if let Some((t, before)) = cache {
        pairs::store(t, max, limits, counters, before, &out.attributes);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use pulsetrace_core::otlp::Encoder;
    use pulsetrace_core::pipeline::KeptTrace;
    use pulsetrace_core::span::SpanRecord;

    const DEFAULTS: Limits = Limits {
        max_value_len: 4096,
        max_attributes: 128,
        max_events: 128,
        max_list_len: 128,
    };

    #[test]
    fn the_default_budget_is_the_module_docs_arithmetic() {
        assert_eq!(DEFAULTS.attribute_budget(), 128 * (4096 + 128));
        assert_eq!(DEFAULTS.event_budget(), 540_672);
        // + name and status message + under 1 KiB of other fields
        let span = DEFAULTS.attribute_budget() + DEFAULTS.event_budget() + 2 * 4096 + 1024;
        assert_eq!(span, 1_090_560);
        assert!(span < (4 << 20) / 3);
        // One list of 128 full strings fits, a second does not.
        let list = AttrValue::StrArray(vec!["x".repeat(4096); 128]);
        let one = attribute_cost("k", &list);
        assert!(one <= DEFAULTS.attribute_budget() && 2 * one > DEFAULTS.attribute_budget());
    }

    #[test]
    fn budgets_saturate_instead_of_overflowing() {
        let l = Limits {
            max_value_len: usize::MAX,
            ..DEFAULTS
        };
        assert_eq!(l.attribute_budget(), usize::MAX);
    }

    /// Bytes one span takes in an OTLP request.
    fn encoded(span: SpanRecord) -> usize {
        let mut out = Vec::new();
        let trace = KeptTrace {
            trace_id: span.trace_id,
            reason: None,
            spans: vec![span],
        };
        Encoder::new(&[], "s", "v").encode(&[trace], &mut out);
        out.len()
    }

    #[test]
    fn what_an_item_is_charged_covers_its_otlp_encoding() {
        let empty = encoded(SpanRecord::new(1, 2, 0, "n"));
        let long = "é".repeat(40_000);
        let values = [
            AttrValue::Str("".into()),
            AttrValue::Str(long.as_str().into()),
            AttrValue::Int(i64::MIN),
            AttrValue::Float(f64::MAX),
            AttrValue::Bool(true),
            AttrValue::IntArray(vec![-1; 300]),
            AttrValue::FloatArray(vec![1.5; 300]),
            AttrValue::BoolArray(vec![true; 300]),
            AttrValue::StrArray(vec![String::new(); 300]),
            AttrValue::StrArray(vec![long.clone(); 3]),
        ];
        for key in ["", "k", long.as_str()] {
            for v in &values {
                let a: Attributes = vec![(key.into(), v.clone())];
                let mut s = SpanRecord::new(1, 2, 0, "n");
                s.attributes = a.clone();
                assert!(encoded(s) - empty <= attribute_cost(key, v), "{v:?}");
                let event = Event {
                    name: key.to_owned(),
                    time_unix_ns: u64::MAX,
                    attributes: a.clone(),
                };
                let cost = event_cost(&event);
                let mut s = SpanRecord::new(1, 2, 0, "n");
                s.events = vec![event];
                assert!(encoded(s) - empty <= cost);
                let link = Link {
                    trace_id: u128::MAX,
                    span_id: u64::MAX,
                    trace_state: key.to_owned(),
                    attributes: a,
                };
                let cost = link_cost(&link);
                let mut s = SpanRecord::new(1, 2, 0, "n");
                s.links = vec![link];
                assert!(encoded(s) - empty <= cost);
            }
        }
    }

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        assert_eq!(cut_at("héllo", 2), ("h", true));
        assert_eq!(cut_at("héllo", 3), ("hé", true));
        assert_eq!(cut_at("héllo", 6), ("héllo", false));
        let c = AttrCounters::default();
        assert_eq!(&*arc_str("ééé", 5, &c), "éé");
        assert_eq!(c.truncated.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn bytes_are_read_only_up_to_the_limit() {
        let c = AttrCounters::default();
        // A character split by the cut is left out, not replaced.
        assert_eq!(&*bytes_text("aé".as_bytes(), 2, &c), "a");
        assert_eq!(c.truncated.load(Ordering::Relaxed), 1);
        assert_eq!(c.invalid_utf8.load(Ordering::Relaxed), 0);
        // Invalid UTF-8 is replaced, and the result still fits the limit.
        let t = bytes_text(&[0xff; 100], 10, &c);
        assert!(t.len() <= 10 && t.chars().all(|ch| ch == '\u{fffd}'));
        assert_eq!(c.invalid_utf8.load(Ordering::Relaxed), 1);
        assert_eq!(&*bytes_text(b"fine", 10, &c), "fine");
    }
}
