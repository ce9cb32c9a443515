//! What attributes, events and links are charged against a span's budget
//! (the module docs of `crate::attrs` give the arithmetic), the limits
//! themselves and the counters of what they cut.
//!
//! GIL and locks: none needed; limits and counters are atomics.

use pulsetrace_core::span::{AttrValue, Attributes, Event, Link};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
