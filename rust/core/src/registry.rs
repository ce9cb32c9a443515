//! Latency histograms keyed by (span kind, operation name, status class),
//! with a bound on how many keys exist.
//!
//! Lookups on the request path are lock-free: the name map is an immutable
//! `HashMap` behind an `ArcSwap`, replaced (copy on write, under a mutex only
//! writers of new names take) when a new operation name appears. Each name
//! holds one lazily created histogram per (kind, status class). Beyond
//! `max_keys` histograms, a new key folds into the `(overflow)` operation of
//! the same kind and class, and `overflowed()` counts the records that did.

use crate::histogram::{Histogram, HistogramConfig, Snapshot};
use crate::span::{SpanKind, StatusClass};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The operation name that keys beyond the cardinality bound fold into.
pub const OVERFLOW_NAME: &str = "(overflow)";

const SLOTS: usize = SpanKind::ALL.len() * StatusClass::COUNT;

fn slot_index(kind: SpanKind, class: StatusClass) -> usize {
    kind as usize * StatusClass::COUNT + class as usize
}

/// A recorded duration of a kept trace: links a histogram bucket to a trace
/// (OpenMetrics exemplars), so a slow bucket in a dashboard opens its trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExemplarSample {
    pub value_ns: u64,
    pub trace_id: u128,
    pub span_id: u64,
    pub timestamp_unix_ns: u64,
}

/// Exemplars kept per key: the most recent ones (a ring).
const EXEMPLARS_PER_KEY: usize = 32;

/// All histograms of one operation name.
pub struct Operation {
    name: Arc<str>,
    slots: [OnceLock<Arc<Histogram>>; SLOTS],
    exemplars: [Mutex<VecDeque<ExemplarSample>>; SLOTS],
}

impl Operation {
    fn new(name: &str) -> Self {
        Operation {
            name: Arc::from(name),
            slots: std::array::from_fn(|_| OnceLock::new()),
            exemplars: std::array::from_fn(|_| Mutex::new(VecDeque::new())),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn get(&self, kind: SpanKind, class: StatusClass) -> Option<&Arc<Histogram>> {
        self.slots[slot_index(kind, class)].get()
    }
}

/// One key of the registry and its histogram, as listed by [`Registry::entries`].
#[derive(Clone)]
pub struct Entry {
    pub kind: SpanKind,
    pub name: Arc<str>,
    pub class: StatusClass,
    pub histogram: Arc<Histogram>,
}

/// FNV-1a: operation names are short and come from the application's own
/// routes and code, so a fast non-keyed hash is the right trade here.
#[derive(Clone, Copy)]
pub struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

type NameMap = HashMap<Box<str>, Arc<Operation>, std::hash::BuildHasherDefault<NameHasher>>;

/// The histogram registry. `Send + Sync`; share it in an `Arc`.
pub struct Registry {
    cfg: HistogramConfig,
    max_keys: usize,
    names: ArcSwap<NameMap>,
    grow: Mutex<()>,
    keys: AtomicUsize,
    overflow: Arc<Operation>,
    overflowed: AtomicU64,
}

impl Registry {
    pub fn new(cfg: HistogramConfig, max_keys: usize) -> Self {
        Registry {
            cfg,
            max_keys,
            names: ArcSwap::from_pointee(NameMap::default()),
            grow: Mutex::new(()),
            keys: AtomicUsize::new(0),
            overflow: Arc::new(Operation::new(OVERFLOW_NAME)),
            overflowed: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> HistogramConfig {
        self.cfg
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Number of keys (histograms) created, the overflow ones excluded.
    pub fn key_count(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// Records that went to the overflow key because the bound was reached.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Record one duration. Lock-free unless this is the first record of a
    /// key (then one short mutex that only creators of keys take).
    #[inline]
    pub fn record(&self, kind: SpanKind, name: &str, class: StatusClass, duration_ns: u64) {
        let idx = slot_index(kind, class);
        {
            let names = self.names.load();
            if let Some(h) = names.get(name).and_then(|op| op.slots[idx].get()) {
                h.record(duration_ns);
                return;
            }
        }
        self.histogram_for(kind, name, class).record(duration_ns);
    }

    /// The histogram of a key, created if the bound allows, else the overflow
    /// histogram of the same kind and class (counted in `overflowed`).
    pub fn histogram_for(&self, kind: SpanKind, name: &str, class: StatusClass) -> Arc<Histogram> {
        let idx = slot_index(kind, class);
        if let Some(h) = self
            .names
            .load()
            .get(name)
            .and_then(|op| op.slots[idx].get())
        {
            return h.clone();
        }
        let _g = self.grow.lock();
        let cur = self.names.load_full();
        if let Some(op) = cur.get(name) {
            if let Some(h) = op.slots[idx].get() {
                return h.clone();
            }
            if self.reserve_key() {
                return op.slots[idx]
                    .get_or_init(|| Arc::new(Histogram::new(self.cfg)))
                    .clone();
            }
        } else if self.reserve_key() {
            let op = Arc::new(Operation::new(name));
            let h = op.slots[idx]
                .get_or_init(|| Arc::new(Histogram::new(self.cfg)))
                .clone();
            let mut next: NameMap = (*cur).clone();
            next.insert(name.into(), op);
            self.names.store(Arc::new(next));
            return h;
        }
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        self.overflow.slots[idx]
            .get_or_init(|| Arc::new(Histogram::new(self.cfg)))
            .clone()
    }

    /// The existing histogram of a key, if any (no creation, no overflow).
    pub fn get(&self, kind: SpanKind, name: &str, class: StatusClass) -> Option<Arc<Histogram>> {
        let names = self.names.load();
        let op = if name == OVERFLOW_NAME {
            Some(&self.overflow)
        } else {
            names.get(name)
        };
        op.and_then(|op| op.get(kind, class)).cloned()
    }

    /// Merged cumulative snapshot of every status class of (kind, name).
    pub fn merged(&self, kind: SpanKind, name: &str) -> Option<(Snapshot, u64)> {
        let mut out: Option<Snapshot> = None;
        let mut errors = 0;
        for class in StatusClass::ALL {
            if let Some(h) = self.get(kind, name, class) {
                let s = h.snapshot();
                if class.is_error() {
                    errors += s.count();
                }
                match out.as_mut() {
                    None => out = Some(s),
                    Some(acc) => {
                        // Same registry, same config: merge cannot fail.
                        let _ = acc.merge(&s);
                    }
                }
            }
        }
        out.map(|s| (s, errors))
    }

    /// Every key with its histogram, the overflow keys last. Sorted by
    /// (name, kind, class) so that renderings are stable.
    pub fn entries(&self) -> Vec<Entry> {
        let names = self.names.load_full();
        let mut ops: Vec<&Arc<Operation>> = names.values().collect();
        ops.sort_by(|a, b| a.name.cmp(&b.name));
        ops.push(&self.overflow);
        let mut out = Vec::new();
        for op in ops {
            for kind in SpanKind::ALL {
                for class in StatusClass::ALL {
                    if let Some(h) = op.get(kind, class) {
                        out.push(Entry {
                            kind,
                            name: op.name.clone(),
                            class,
                            histogram: h.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Distinct (kind, name) pairs that have at least one histogram.
    pub fn operations(&self) -> Vec<(SpanKind, Arc<str>)> {
        let mut out: Vec<(SpanKind, Arc<str>)> = Vec::new();
        for e in self.entries() {
            if out.last().map(|(k, n)| (*k, n.as_ref())) != Some((e.kind, e.name.as_ref())) {
                out.push((e.kind, e.name.clone()));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Remember a duration of a kept trace as an exemplar of its key (only
    /// for keys that exist; kept traces are rare, the lock is uncontended).
    pub fn record_exemplar(
        &self,
        kind: SpanKind,
        name: &str,
        class: StatusClass,
        sample: ExemplarSample,
    ) {
        let idx = slot_index(kind, class);
        let names = self.names.load();
        let op = match names.get(name) {
            Some(op) if op.slots[idx].get().is_some() => op,
            _ => return,
        };
        let mut ring = op.exemplars[idx].lock();
        if ring.len() >= EXEMPLARS_PER_KEY {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// For each upper bound (ascending, nanoseconds), the most recent
    /// exemplar whose value falls in that bucket (above the previous bound).
    pub fn exemplars(
        &self,
        kind: SpanKind,
        name: &str,
        class: StatusClass,
        bounds_ns: &[u64],
    ) -> Vec<Option<ExemplarSample>> {
        let mut out = vec![None; bounds_ns.len()];
        let idx = slot_index(kind, class);
        let names = self.names.load();
        let Some(op) = names.get(name) else {
            return out;
        };
        let ring = op.exemplars[idx].lock();
        for e in ring.iter() {
            let b = bounds_ns.partition_point(|&bound| bound < e.value_ns);
            if b < out.len() {
                out[b] = Some(*e);
            }
        }
        out
    }

    /// Approximate memory held by the histograms.
    pub fn memory_bytes(&self) -> usize {
        self.entries()
            .iter()
            .map(|e| e.histogram.memory_bytes())
            .sum()
    }

    fn reserve_key(&self) -> bool {
        self.keys
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| {
                (k < self.max_keys).then_some(k + 1)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> HistogramConfig {
        HistogramConfig {
            highest: 3_600_000_000_000,
            sigfig: 2,
        }
    }

    #[test]
    fn records_per_key_and_merges_classes() {
        let r = Registry::new(small(), 100);
        r.record(SpanKind::Server, "GET /a", StatusClass::Http2xx, 1_000);
        r.record(SpanKind::Server, "GET /a", StatusClass::Http2xx, 2_000);
        r.record(SpanKind::Server, "GET /a", StatusClass::Http5xx, 3_000);
        r.record(SpanKind::Client, "GET /a", StatusClass::Ok, 4_000);
        assert_eq!(r.key_count(), 3);
        let (s, errors) = r.merged(SpanKind::Server, "GET /a").unwrap();
        assert_eq!(s.count(), 3);
        assert_eq!(errors, 1);
        assert!(r.merged(SpanKind::Internal, "GET /a").is_none());
        assert_eq!(r.operations().len(), 2);
        assert_eq!(r.entries().len(), 3);
    }

    #[test]
    fn exemplars_land_in_their_bucket_latest_first() {
        let r = Registry::new(small(), 100);
        r.record(SpanKind::Server, "GET /", StatusClass::Http2xx, 1_000);
        let ex = |v: u64, t: u128| ExemplarSample {
            value_ns: v,
            trace_id: t,
            span_id: 1,
            timestamp_unix_ns: 5,
        };
        r.record_exemplar(
            SpanKind::Server,
            "GET /",
            StatusClass::Http2xx,
            ex(1_500, 1),
        );
        r.record_exemplar(
            SpanKind::Server,
            "GET /",
            StatusClass::Http2xx,
            ex(1_800, 2),
        );
        r.record_exemplar(
            SpanKind::Server,
            "GET /",
            StatusClass::Http2xx,
            ex(9_000, 3),
        );
        r.record_exemplar(
            SpanKind::Server,
            "GET /",
            StatusClass::Http2xx,
            ex(90_000, 4),
        );
        // Unknown keys are ignored.
        r.record_exemplar(SpanKind::Client, "GET /", StatusClass::Ok, ex(1, 9));
        let got = r.exemplars(
            SpanKind::Server,
            "GET /",
            StatusClass::Http2xx,
            &[1_000, 2_000, 10_000],
        );
        assert_eq!(
            got.iter()
                .map(|e| e.map(|e| e.trace_id))
                .collect::<Vec<_>>(),
            [None, Some(2), Some(3)]
        );
        assert!(r
            .exemplars(SpanKind::Client, "GET /", StatusClass::Ok, &[10])
            .iter()
            .all(Option::is_none));
    }

    #[test]
    fn keys_beyond_the_bound_fold_into_overflow() {
        let r = Registry::new(small(), 3);
        for i in 0..10 {
            r.record(SpanKind::Internal, &format!("op{i}"), StatusClass::Ok, 10);
        }
        assert_eq!(r.key_count(), 3);
        assert_eq!(r.overflowed(), 7);
        let (s, _) = r.merged(SpanKind::Internal, OVERFLOW_NAME).unwrap();
        assert_eq!(s.count(), 7);
        // An existing key keeps recording into its own histogram.
        r.record(SpanKind::Internal, "op0", StatusClass::Ok, 10);
        assert_eq!(r.merged(SpanKind::Internal, "op0").unwrap().0.count(), 2);
        // A new class of an existing name is a new key, so it overflows too.
        r.record(SpanKind::Internal, "op0", StatusClass::Error, 10);
        assert_eq!(r.overflowed(), 8);
    }

    #[test]
    fn concurrent_first_records_create_one_key() {
        let r = Arc::new(Registry::new(small(), 1000));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let name = format!("op{}", i % 50);
                        r.record(SpanKind::Client, &name, StatusClass::Ok, i + t);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(r.key_count(), 50);
        let total: u64 = r
            .entries()
            .iter()
            .map(|e| e.histogram.snapshot().count())
            .sum();
        assert_eq!(total, 8 * 20_000);
        assert_eq!(r.overflowed(), 0);
    }
}
