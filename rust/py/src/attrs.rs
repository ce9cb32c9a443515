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

mod limits;
mod pairs;
mod text;

pub use limits::*;
use text::bytes_text;
pub use text::*;

use crate::guard;
use pulsetrace_core::span::{AttrValue, Attributes};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use std::sync::Arc;

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
    use super::text::cut_at;
    use super::*;
    use pulsetrace_core::otlp::Encoder;
    use pulsetrace_core::pipeline::KeptTrace;
    use pulsetrace_core::span::SpanRecord;
    use pulsetrace_core::span::{Event, Link};
    use std::sync::atomic::Ordering;

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
