//! Latency histograms keyed by (span kind, operation name, target, status
//! class), with a bound on how many keys exist.
//!
//! The target is what the span talks to ([`crate::target`]: a database, a
//! queue, an HTTP server), so a Redis `GET` and an HTTP `GET` are different
//! keys. There is one [`Operation`] per (name, target) (the targets of a
//! name are told apart by comparing them, no allocation), and each operation
//! has one lazily created histogram per (kind, status class).
//!
//! The operations live in an append-only hash table: a fixed array of
//! buckets, sized from `max_keys` when the registry is made, each the head
//! of a chain of operations whose names hash there, every link a
//! `OnceLock` that is set once and never changes. An operation's
//! histograms are a chain of the same kind (most operations have one to
//! three (kind, class) keys of the 35 possible: a table of all 35 would cost
//! more than a decade of latencies does). Lookups walk a chain with
//! `Acquire` loads only (lock-free, nothing to free while a reader runs);
//! adding an operation appends one link under a mutex that only creators of
//! keys take, so it costs the same at 10 keys as at 10,000 (nothing is
//! copied). Beyond `max_keys` histograms, a new key folds into the
//! `(overflow)` operation of the same kind, class and [`System`] (a target
//! without values, so the bound also bounds the label values), and
//! `overflowed()` counts the records that did.
//!
//! Status classes group HTTP codes by hundreds; one code is counted on its
//! own, per operation and kind: 429 (too many requests), for rate-limit
//! alerts ([`Registry::record_rate_limited`], one `Relaxed` counter, so no
//! label and no key beyond the operation's).

use crate::histogram::{Histogram, HistogramConfig, Snapshot};
use crate::span::{SpanKind, StatusClass};
use crate::target::{System, Target, TargetRef};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::hash::{BuildHasher as _, BuildHasherDefault};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The operation name that keys beyond the cardinality bound fold into.
pub const OVERFLOW_NAME: &str = "(overflow)";

const SLOTS: usize = SpanKind::ALL.len() * StatusClass::COUNT;
const _: () = assert!(SLOTS <= u8::MAX as usize, "slot indexes are kept as u8");

fn slot_index(kind: SpanKind, class: StatusClass) -> u8 {
    (kind as usize * StatusClass::COUNT + class as usize) as u8
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

/// An [`ExemplarSample`] as a ring keeps it: 40 bytes, not the 48 that the
/// `u128` trace id's alignment makes of the sample.
#[derive(Clone, Copy)]
struct StoredExemplar {
    value_ns: u64,
    trace_id: [u64; 2],
    span_id: u64,
    timestamp_unix_ns: u64,
}

impl From<ExemplarSample> for StoredExemplar {
    fn from(e: ExemplarSample) -> Self {
        StoredExemplar {
            value_ns: e.value_ns,
            trace_id: [(e.trace_id >> 64) as u64, e.trace_id as u64],
            span_id: e.span_id,
            timestamp_unix_ns: e.timestamp_unix_ns,
        }
    }
}

impl From<StoredExemplar> for ExemplarSample {
    fn from(e: StoredExemplar) -> Self {
        ExemplarSample {
            value_ns: e.value_ns,
            trace_id: u128::from(e.trace_id[0]) << 64 | u128::from(e.trace_id[1]),
            span_id: e.span_id,
            timestamp_unix_ns: e.timestamp_unix_ns,
        }
    }
}

/// The exemplar rings of an operation's keys that have any, by slot index
/// (most operations have one or two keys: a short list, not an array of all).
type Exemplars = Vec<(u8, VecDeque<StoredExemplar>)>;

/// One (kind, class) histogram of an operation, and the next of its chain.
struct Key {
    slot: u8,
    histogram: Arc<Histogram>,
    next: OnceLock<Box<Key>>,
}

/// All histograms of one operation name and target.
pub struct Operation {
    name: Arc<str>,
    target: Target,
    /// The (kind, class) keys made so far, in creation order: set once
    /// each, under the registry's `grow` mutex; read without a lock.
    keys: OnceLock<Box<Key>>,
    /// Spans answered 429 (too many requests), by span kind: allocated by
    /// the operation's first (most operations never see one).
    rate_limited: OnceLock<Box<[AtomicU64; SpanKind::ALL.len()]>>,
    /// Allocates with the operation's first exemplar (kept traces only).
    exemplars: Mutex<Exemplars>,
}

impl Operation {
    fn new(name: &str, target: Target) -> Self {
        Operation {
            name: Arc::from(name),
            target,
            keys: OnceLock::new(),
            rate_limited: OnceLock::new(),
            exemplars: Mutex::new(Vec::new()),
        }
    }

    fn key(&self, slot: u8) -> Option<&Arc<Histogram>> {
        std::iter::successors(self.keys.get(), |k| k.next.get())
            .find(|k| k.slot == slot)
            .map(|k| &k.histogram)
    }

    /// The histogram of `slot`, made by `make` if there is none. Callers
    /// hold the registry's `grow` mutex (one writer per link).
    fn key_or_insert(&self, slot: u8, make: impl FnOnce() -> Histogram) -> &Arc<Histogram> {
        let mut cell = &self.keys;
        while let Some(k) = cell.get() {
            if k.slot == slot {
                return &k.histogram;
            }
            cell = &k.next;
        }
        &cell
            .get_or_init(|| {
                Box::new(Key {
                    slot,
                    histogram: Arc::new(make()),
                    next: OnceLock::new(),
                })
            })
            .histogram
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn get(&self, kind: SpanKind, class: StatusClass) -> Option<&Arc<Histogram>> {
        self.key(slot_index(kind, class))
    }

    /// Spans of `kind` answered 429 (too many requests).
    pub fn rate_limited(&self, kind: SpanKind) -> u64 {
        self.rate_limited
            .get()
            .map_or(0, |c| c[kind as usize].load(Ordering::Relaxed))
    }
}

/// One key of the registry and its histogram, as listed by [`Registry::entries`].
#[derive(Clone)]
pub struct Entry {
    pub kind: SpanKind,
    pub name: Arc<str>,
    pub target: Target,
    pub class: StatusClass,
    pub histogram: Arc<Histogram>,
}

/// Every status class of one (kind, name, target) merged, as listed by
/// [`Registry::merged_by_target`].
pub struct Merged {
    pub kind: SpanKind,
    pub name: Arc<str>,
    pub target: Target,
    pub snapshot: Snapshot,
    /// Records of the error classes.
    pub errors: u64,
    /// Records answered 429 (too many requests).
    pub rate_limited: u64,
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

/// One operation of the table and the next of its bucket's chain.
struct Link {
    op: Arc<Operation>,
    next: OnceLock<Box<Link>>,
}

/// Most buckets the table gets (1 MiB of heads); past that many keys,
/// chains lengthen.
const MAX_BUCKETS: usize = 1 << 16;

/// The append-only hash table of operations (see the module docs).
struct Table {
    buckets: Box<[OnceLock<Box<Link>>]>,
}

impl Table {
    /// A power of two of buckets, at least `keys` (up to [`MAX_BUCKETS`]).
    fn new(keys: usize) -> Self {
        let n = keys.clamp(16, MAX_BUCKETS).next_power_of_two();
        Table {
            buckets: (0..n).map(|_| OnceLock::new()).collect(),
        }
    }

    fn bucket(&self, name: &str) -> &OnceLock<Box<Link>> {
        let hash = BuildHasherDefault::<NameHasher>::default().hash_one(name);
        &self.buckets[hash as usize & (self.buckets.len() - 1)]
    }

    /// The operations of the bucket of `name` (other names too).
    fn chain<'t>(&'t self, name: &str) -> impl Iterator<Item = &'t Arc<Operation>> + 't {
        std::iter::successors(self.bucket(name).get(), |link| link.next.get()).map(|l| &l.op)
    }

    /// The operations named `name`.
    fn named<'t>(&'t self, name: &'t str) -> impl Iterator<Item = &'t Arc<Operation>> + 't {
        self.chain(name).filter(move |op| &*op.name == name)
    }

    fn find(&self, name: &str, target: &TargetRef<'_>) -> Option<&Arc<Operation>> {
        self.chain(name)
            .find(|op| &*op.name == name && op.target.matches(target))
    }

    /// Appends `op` to its bucket's chain. Callers hold the registry's
    /// `grow` mutex (so each link is set by one writer); readers never wait.
    fn push(&self, op: Arc<Operation>) {
        let mut cell = self.bucket(&op.name);
        while let Some(link) = cell.get() {
            cell = &link.next;
        }
        let _ = cell.set(Box::new(Link {
            op,
            next: OnceLock::new(),
        }));
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Operation>> + '_ {
        self.buckets.iter().flat_map(|head| {
            std::iter::successors(head.get(), |link| link.next.get()).map(|l| &l.op)
        })
    }
}

impl Drop for Table {
    /// Unlinks the chains one link at a time (no recursion however long).
    fn drop(&mut self) {
        for head in self.buckets.iter_mut() {
            let mut next = head.take();
            while let Some(mut link) = next {
                next = link.next.take();
            }
        }
    }
}

/// Every status class of `kind` in `ops`, merged; with the count of the
/// error classes.
fn merge_classes<'o>(
    ops: impl IntoIterator<Item = &'o Arc<Operation>>,
    kind: SpanKind,
) -> Option<(Snapshot, u64)> {
    let mut out: Option<Snapshot> = None;
    let mut errors = 0;
    for op in ops {
        for class in StatusClass::ALL {
            if let Some(h) = op.get(kind, class) {
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
    }
    out.map(|s| (s, errors))
}

/// The histogram registry. `Send + Sync`; share it in an `Arc`.
pub struct Registry {
    cfg: HistogramConfig,
    max_keys: usize,
    table: Table,
    grow: Mutex<()>,
    keys: AtomicUsize,
    /// One overflow operation per [`System`], indexed by it.
    overflow: [Arc<Operation>; System::COUNT],
    overflowed: AtomicU64,
}

impl Registry {
    pub fn new(cfg: HistogramConfig, max_keys: usize) -> Self {
        Registry {
            cfg,
            max_keys,
            table: Table::new(max_keys),
            grow: Mutex::new(()),
            keys: AtomicUsize::new(0),
            overflow: System::ALL
                .map(|s| Arc::new(Operation::new(OVERFLOW_NAME, Target::overflow(s)))),
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

    /// Record one duration of a key without a target (SERVER and INTERNAL
    /// spans).
    #[inline]
    pub fn record(&self, kind: SpanKind, name: &str, class: StatusClass, duration_ns: u64) {
        self.record_target(kind, name, TargetRef::NONE, class, duration_ns);
    }

    /// Record one duration. Lock-free unless this is the first record of a
    /// key (then one short mutex that only creators of keys take).
    #[inline]
    pub fn record_target(
        &self,
        kind: SpanKind,
        name: &str,
        target: TargetRef<'_>,
        class: StatusClass,
        duration_ns: u64,
    ) {
        let idx = slot_index(kind, class);
        if let Some(h) = self.table.find(name, &target).and_then(|op| op.key(idx)) {
            h.record(duration_ns);
            return;
        }
        self.histogram_for(kind, name, target, class)
            .record(duration_ns);
    }

    /// Count one span answered 429 (too many requests) for its operation
    /// (recorded first with [`Registry::record_target`], so the operation
    /// exists, or its system's overflow operation took it).
    pub fn record_rate_limited(&self, kind: SpanKind, name: &str, target: TargetRef<'_>) {
        self.add_rate_limited(kind, name, target, 1);
    }

    /// Count `n` spans answered 429 at once (another process's counts, see
    /// [`crate::state`]); as [`Registry::record_rate_limited`].
    pub fn add_rate_limited(&self, kind: SpanKind, name: &str, target: TargetRef<'_>, n: u64) {
        let op = match self.table.find(name, &target) {
            Some(op) if !(name == OVERFLOW_NAME && target.is_empty()) => op,
            _ => &self.overflow[target.system() as usize],
        };
        op.rate_limited
            .get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))))[kind as usize]
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Every operation's non-zero 429 counts: (kind, name, target, count).
    pub fn rate_limited_counts(&self) -> Vec<(SpanKind, Arc<str>, Target, u64)> {
        let mut out = Vec::new();
        for op in self.table.all().chain(&self.overflow) {
            for kind in SpanKind::ALL {
                let n = op.rate_limited(kind);
                if n > 0 {
                    out.push((kind, op.name.clone(), op.target.clone(), n));
                }
            }
        }
        out
    }

    /// The histogram of a key, created if the bound allows, else the overflow
    /// histogram of the same kind, class and system (counted in `overflowed`).
    pub fn histogram_for(
        &self,
        kind: SpanKind,
        name: &str,
        target: TargetRef<'_>,
        class: StatusClass,
    ) -> Arc<Histogram> {
        let idx = slot_index(kind, class);
        if let Some(h) = self.table.find(name, &target).and_then(|op| op.key(idx)) {
            return h.clone();
        }
        let _g = self.grow.lock();
        let make = || Histogram::new(self.cfg);
        if let Some(op) = self.table.find(name, &target) {
            if let Some(h) = op.key(idx) {
                return h.clone();
            }
            if self.reserve_key() {
                return op.key_or_insert(idx, make).clone();
            }
        } else if self.reserve_key() {
            let op = Arc::new(Operation::new(name, target.to_owned_target()));
            let h = op.key_or_insert(idx, make).clone();
            self.table.push(op);
            return h;
        }
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        self.overflow[target.system() as usize]
            .key_or_insert(idx, make)
            .clone()
    }

    /// The `(overflow)` key's histogram of `system` (created if needed).
    pub(crate) fn overflow_histogram(
        &self,
        kind: SpanKind,
        system: System,
        class: StatusClass,
    ) -> Arc<Histogram> {
        let _g = self.grow.lock();
        self.overflow[system as usize]
            .key_or_insert(slot_index(kind, class), || Histogram::new(self.cfg))
            .clone()
    }

    /// The existing histogram of a key without a target, if any (no
    /// creation, no overflow).
    pub fn get(&self, kind: SpanKind, name: &str, class: StatusClass) -> Option<Arc<Histogram>> {
        self.get_target(kind, name, TargetRef::NONE, class)
    }

    /// The existing histogram of a key, if any (no creation, no overflow).
    /// `(overflow)` with a target without values is that system's overflow key.
    pub fn get_target(
        &self,
        kind: SpanKind,
        name: &str,
        target: TargetRef<'_>,
        class: StatusClass,
    ) -> Option<Arc<Histogram>> {
        if name == OVERFLOW_NAME && target.is_empty() {
            return self.overflow[target.system() as usize]
                .get(kind, class)
                .cloned();
        }
        self.table
            .find(name, &target)
            .and_then(|op| op.get(kind, class))
            .cloned()
    }

    /// Merged cumulative snapshot of every status class and every target of
    /// (kind, name), with the count of the error classes. `(overflow)` is
    /// every system's overflow key.
    pub fn merged(&self, kind: SpanKind, name: &str) -> Option<(Snapshot, u64)> {
        if name == OVERFLOW_NAME {
            return merge_classes(&self.overflow, kind);
        }
        merge_classes(self.table.named(name), kind)
    }

    /// Every (kind, name, target) with all its status classes merged, sorted
    /// by (kind, name, target). Keys whose targets have no values are one
    /// row per (kind, name): nothing would tell them apart (the overflow
    /// keys of each system).
    pub fn merged_by_target(&self) -> Vec<Merged> {
        let mut ops: Vec<(&str, Target, &Arc<Operation>)> = self
            .table
            .all()
            .chain(&self.overflow)
            .map(|op| {
                let target = if op.target.is_empty() {
                    Target::default()
                } else {
                    op.target.clone()
                };
                (&*op.name, target, op)
            })
            .collect();
        ops.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut out = Vec::new();
        for kind in SpanKind::ALL {
            let mut i = 0;
            while i < ops.len() {
                let mut j = i + 1;
                while j < ops.len() && (ops[j].0, &ops[j].1) == (ops[i].0, &ops[i].1) {
                    j += 1;
                }
                let same = &ops[i..j];
                if let Some((snapshot, errors)) = merge_classes(same.iter().map(|o| o.2), kind) {
                    out.push(Merged {
                        kind,
                        name: ops[i].2.name.clone(),
                        target: ops[i].1.clone(),
                        snapshot,
                        errors,
                        rate_limited: same.iter().map(|o| o.2.rate_limited(kind)).sum(),
                    });
                }
                i = j;
            }
        }
        out
    }

    /// Every key with its histogram, the overflow keys last. Sorted by
    /// (name, target, kind, class) so that renderings are stable.
    pub fn entries(&self) -> Vec<Entry> {
        let mut ops: Vec<&Arc<Operation>> = self.table.all().collect();
        ops.sort_by(|a, b| (&a.name, &a.target).cmp(&(&b.name, &b.target)));
        ops.extend(&self.overflow);
        let mut out = Vec::new();
        for op in ops {
            for kind in SpanKind::ALL {
                for class in StatusClass::ALL {
                    if let Some(h) = op.get(kind, class) {
                        out.push(Entry {
                            kind,
                            name: op.name.clone(),
                            target: op.target.clone(),
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
    /// for keys that exist). Exemplars are samples: when another thread
    /// holds the key's ring (another trace decided at the same moment),
    /// this one is left out rather than waited for, since a request thread
    /// may be the one deciding.
    pub fn record_exemplar(
        &self,
        kind: SpanKind,
        name: &str,
        target: TargetRef<'_>,
        class: StatusClass,
        sample: ExemplarSample,
    ) {
        let idx = slot_index(kind, class);
        let op = match self.table.find(name, &target) {
            Some(op) if op.key(idx).is_some() => op,
            _ => return,
        };
        let Some(mut rings) = op.exemplars.try_lock() else {
            return;
        };
        let at = match rings.iter().position(|(i, _)| *i == idx) {
            Some(at) => at,
            None => {
                rings.push((idx, VecDeque::new()));
                rings.len() - 1
            }
        };
        let ring = &mut rings[at].1;
        if ring.len() >= EXEMPLARS_PER_KEY {
            ring.pop_front();
        }
        ring.push_back(sample.into());
    }

    /// For each upper bound (ascending, nanoseconds), the most recent
    /// exemplar of a key whose value falls in that bucket (above the
    /// previous bound).
    pub fn exemplars(
        &self,
        kind: SpanKind,
        name: &str,
        target: TargetRef<'_>,
        class: StatusClass,
        bounds_ns: &[u64],
    ) -> Vec<Option<ExemplarSample>> {
        let mut out = vec![None; bounds_ns.len()];
        let idx = slot_index(kind, class);
        let Some(op) = self.table.find(name, &target) else {
            return out;
        };
        let rings = op.exemplars.lock();
        let Some((_, ring)) = rings.iter().find(|(i, _)| *i == idx) else {
            return out;
        };
        for &e in ring.iter() {
            let b = bounds_ns.partition_point(|&bound| bound < e.value_ns);
            if b < out.len() {
                out[b] = Some(e.into());
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
    use crate::span::{AttrValue, Attributes};

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (Arc::from(*k), AttrValue::Str(Arc::from(*v))))
            .collect()
    }

    fn redis() -> Attributes {
        attrs(&[("db.system.name", "redis"), ("db.operation.name", "GET")])
    }

    fn http(host: &str) -> Attributes {
        attrs(&[("http.request.method", "GET"), ("server.address", host)])
    }

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
    fn rate_limited_responses_are_counted_per_operation_and_kind() {
        let r = Registry::new(small(), 2);
        let none = TargetRef::NONE;
        for (name, n) in [("GET /a", 3), ("GET /b", 1)] {
            for _ in 0..n {
                r.record(SpanKind::Server, name, StatusClass::Http4xx, 1_000);
                r.record_rate_limited(SpanKind::Server, name, none);
            }
        }
        r.record(SpanKind::Server, "GET /a", StatusClass::Http4xx, 1_000); // a 404
                                                                           // Past the bound of 2 keys: the overflow operation counts it.
        r.record(SpanKind::Server, "GET /c", StatusClass::Http4xx, 1_000);
        r.record_rate_limited(SpanKind::Server, "GET /c", none);
        let rows = r.merged_by_target();
        let of = |name: &str| rows.iter().find(|m| &*m.name == name).unwrap();
        assert_eq!(
            (of("GET /a").snapshot.count(), of("GET /a").rate_limited),
            (4, 3)
        );
        assert_eq!(of("GET /b").rate_limited, 1);
        assert_eq!(of(OVERFLOW_NAME).rate_limited, 1);
        // Per kind: a client span of the same name is not the server's.
        assert_eq!(
            r.table
                .find("GET /a", &none)
                .unwrap()
                .rate_limited(SpanKind::Client),
            0
        );
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
        let none = TargetRef::NONE;
        for (v, t) in [(1_500, 1), (1_800, 2), (9_000, 3), (90_000, 4)] {
            r.record_exemplar(
                SpanKind::Server,
                "GET /",
                none,
                StatusClass::Http2xx,
                ex(v, t),
            );
        }
        // Unknown keys are ignored.
        r.record_exemplar(SpanKind::Client, "GET /", none, StatusClass::Ok, ex(1, 9));
        let got = r.exemplars(
            SpanKind::Server,
            "GET /",
            none,
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
            .exemplars(SpanKind::Client, "GET /", none, StatusClass::Ok, &[10])
            .iter()
            .all(Option::is_none));

        // Exemplars belong to their target's key.
        let attrs = redis();
        let redis = TargetRef::of(SpanKind::Client, &attrs);
        r.record_target(SpanKind::Client, "GET", redis, StatusClass::Ok, 1_000);
        r.record(SpanKind::Client, "GET", StatusClass::Ok, 1_000);
        r.record_exemplar(SpanKind::Client, "GET", redis, StatusClass::Ok, ex(500, 7));
        let of = |t| r.exemplars(SpanKind::Client, "GET", t, StatusClass::Ok, &[1_000])[0];
        assert_eq!(of(redis).map(|e| e.trace_id), Some(7));
        assert_eq!(of(none), None);
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

    #[test]
    fn one_name_is_one_key_per_target() {
        let r = Registry::new(small(), 100);
        let (redis, a, b) = (redis(), http("a.example"), http("b.example"));
        let c = SpanKind::Client;
        for (attrs, n, class) in [
            (&redis, 3, StatusClass::Ok),
            (&a, 5, StatusClass::Http2xx),
            (&b, 2, StatusClass::Http2xx),
            (&b, 1, StatusClass::Http5xx),
        ] {
            for _ in 0..n {
                r.record_target(c, "GET", TargetRef::of(c, attrs), class, 1_000);
            }
        }
        r.record(SpanKind::Server, "GET", StatusClass::Http2xx, 1_000);
        assert_eq!(r.key_count(), 5);
        let count = |attrs: &Attributes, class| {
            r.get_target(c, "GET", TargetRef::of(c, attrs), class)
                .map(|h| h.snapshot().count())
        };
        assert_eq!(count(&redis, StatusClass::Ok), Some(3));
        assert_eq!(count(&a, StatusClass::Http2xx), Some(5));
        assert_eq!(count(&b, StatusClass::Http2xx), Some(2));
        assert_eq!(count(&a, StatusClass::Http5xx), None);
        assert!(
            r.get(c, "GET", StatusClass::Ok).is_none(),
            "no untargeted key"
        );
        // By name (the tail sampler's view): every target merged.
        let (all, errors) = r.merged(c, "GET").unwrap();
        assert_eq!((all.count(), errors), (11, 1));
        assert_eq!(r.operations().len(), 2);
        // By target (latency rows): one row each, sorted by (kind, name, target).
        let rows: Vec<(SpanKind, String, u64, u64)> = r
            .merged_by_target()
            .iter()
            .map(|m| {
                let values: Vec<&str> = m.target.values().iter().flatten().map(|v| &**v).collect();
                (m.kind, values.join(","), m.snapshot.count(), m.errors)
            })
            .collect();
        let row = |k, v: &str, n, e| (k, v.to_string(), n, e);
        assert_eq!(
            rows,
            [
                row(SpanKind::Server, "", 1, 0),
                row(c, "GET,a.example", 5, 0),
                row(c, "GET,b.example", 3, 1),
                row(c, "redis,GET", 3, 0),
            ]
        );
        assert_eq!(r.entries().len(), 5);
    }

    #[test]
    fn targets_beyond_the_bound_fold_into_their_systems_overflow() {
        let r = Registry::new(small(), 2);
        let c = SpanKind::Client;
        for i in 0..6 {
            let a = http(&format!("host{i}.example"));
            r.record_target(c, "GET", TargetRef::of(c, &a), StatusClass::Http2xx, 10);
        }
        let sql = attrs(&[("db.system.name", "sqlite")]);
        r.record_target(c, "SELECT", TargetRef::of(c, &sql), StatusClass::Ok, 10);
        r.record(c, "plain", StatusClass::Ok, 10);
        assert_eq!(r.key_count(), 2);
        assert_eq!(r.overflowed(), 6);
        let overflow = |system| {
            r.get_target(
                c,
                OVERFLOW_NAME,
                Target::overflow(system).view(),
                StatusClass::Http2xx,
            )
            .or_else(|| {
                r.get_target(
                    c,
                    OVERFLOW_NAME,
                    Target::overflow(system).view(),
                    StatusClass::Ok,
                )
            })
            .map(|h| h.snapshot().count())
        };
        assert_eq!(overflow(System::Http), Some(4));
        assert_eq!(overflow(System::Db), Some(1));
        assert_eq!(overflow(System::None), Some(1));
        // Nothing outside the overflow keys grew: their values are not kept.
        let overflow_entries: Vec<Entry> = r
            .entries()
            .into_iter()
            .filter(|e| &*e.name == OVERFLOW_NAME)
            .collect();
        assert_eq!(overflow_entries.len(), 3);
        assert!(overflow_entries.iter().all(|e| e.target.is_empty()));
        // The name view and the latency rows merge every system's overflow.
        assert_eq!(r.merged(c, OVERFLOW_NAME).unwrap().0.count(), 6);
        let rows = r.merged_by_target();
        let row = rows.iter().find(|m| &*m.name == OVERFLOW_NAME).unwrap();
        assert_eq!((row.snapshot.count(), row.target.is_empty()), (6, true));
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn concurrent_first_records_of_targets_create_one_key_each() {
        let r = Arc::new(Registry::new(small(), 1000));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    let hosts: Vec<Attributes> = (0..10).map(|h| http(&format!("h{h}"))).collect();
                    for i in 0..20_000u64 {
                        let name = format!("op{}", i % 5);
                        let target = TargetRef::of(SpanKind::Client, &hosts[(i % 10) as usize]);
                        r.record_target(SpanKind::Client, &name, target, StatusClass::Ok, i + t);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // i % 5 and i % 10: 10 (name, host) pairs.
        assert_eq!(r.key_count(), 10);
        let total: u64 = r
            .entries()
            .iter()
            .map(|e| e.histogram.snapshot().count())
            .sum();
        assert_eq!(total, 8 * 20_000);
        assert_eq!(r.overflowed(), 0);
    }
}
