//! Lock-free HDR histogram for latencies in nanoseconds.
//!
//! # Layout
//!
//! The bucket layout is exactly HdrHistogram's (Gil Tene's log-linear
//! buckets) with `lowest_discernible = 1`, so a [`Snapshot`] converts to an
//! `hdrhistogram::Histogram` index for index ([`Snapshot::to_hdr`]) and
//! encodes to the standard V2 compressed format ([`Snapshot::to_v2_base64`]).
//!
//! - `sub_bucket_count` is the next power of two of `2 * 10^sigfig`
//!   (sigfig 2 → 256, sigfig 3 → 2048); `sub_bucket_half_count` is half that.
//! - Bucket 0 holds every value below `sub_bucket_count` at unit resolution.
//!   Bucket `b ≥ 1` holds `[sub_bucket_count · 2^(b-1), sub_bucket_count · 2^b)`
//!   in `sub_bucket_half_count` slots of width `2^b`, so a slot's width is
//!   always below `value / 10^sigfig`: a reported value is within a relative
//!   error of `10^-sigfig` of any value recorded in the same slot.
//! - There are as many buckets as needed for `highest` to fit, and the counts
//!   array has `(bucket_count + 1) * sub_bucket_half_count` slots. The slot of
//!   a value is computed with `leading_zeros`, exactly as HdrHistogram does.
//! - Values above `highest` are recorded as `highest` (and counted in
//!   [`Snapshot::clamped`]); `0` is recorded as `1`. Recording never panics
//!   and never allocates.
//!
//! # Memory
//!
//! One `u64` counter per slot plus a 128-byte header
//! ([`Histogram::memory_bytes`]). With the default `highest` of one hour:
//!
//! | sigfig | slots  | bytes per histogram |
//! |--------|--------|---------------------|
//! | 2      | 4 608  | 36 992 (≈ 36 KiB)   |
//! | 3      | 33 792 | 270 464 (≈ 264 KiB) |
//!
//! A [`Snapshot`] costs the same plus its own small header.
//!
//! # Concurrency contract
//!
//! [`Histogram::record`] is one slot `fetch_add`, one `fetch_add` on the sum
//! and a load of min and max (a read-modify-write only when they change),
//! all `Relaxed`, with no lock. `Relaxed` is enough because every counter is
//! independent: nothing is published through them, and the only cross-counter
//! invariant a reader needs (`count == Σ slots`) holds by construction because
//! the total count is *computed* from the slots when a snapshot is taken
//! rather than kept as a separate counter.
//!
//! A [`Histogram::snapshot`] taken while writers run is a consistent-enough
//! view: each slot is an exact value the slot held during the copy, and
//! `count` equals the sum of the copied slots. The sum (and the `clamped`
//! counter) may be momentarily ahead of or behind the slots by the records in
//! flight. Min and max are reconciled with the copied slots: if the atomic
//! min/max does not fall in the lowest/highest non-empty slot, the slot's
//! edge is used instead, so `min <= value_at_quantile(q) <= max` always holds.
//!
//! [`Histogram::take_interval`] swaps every non-empty slot with zero: a record
//! racing with it lands in exactly one interval, never lost and never counted
//! twice, and writers are never blocked. The sum of all intervals is exact;
//! an individual interval's sum, min and max may include or miss the records
//! in flight at the moment it was taken.
//!
//! A histogram is used **either** cumulatively — [`Histogram::snapshot`],
//! with [`IntervalReader`]s for windows (any number of independent readers) —
//! **or** destructively with [`Histogram::take_interval`] (one consumer), not
//! both: after `take_interval` the cumulative snapshot no longer includes the
//! taken counts, and an `IntervalReader` sees the drop as a reset.
//!
//! ```
//! use pulsetrace_core::histogram::{Histogram, HistogramConfig, IntervalReader};
//!
//! let h = Histogram::new(HistogramConfig::default()); // 1 h range, 2 digits
//! let mut scrape = IntervalReader::new(&h);
//! for v in [120_000, 95_000, 2_500_000] {
//!     h.record(v);
//! }
//! let total = h.snapshot();
//! assert_eq!((total.count(), total.min(), total.max()), (3, 95_000, 2_500_000));
//! assert_eq!(total.value_at_quantile(0.5), 120_319); // slot [119_808, 120_319]
//! h.record(7_000);
//! assert_eq!(scrape.next(&h).count(), 4);
//! assert_eq!(scrape.next(&h).count(), 0);
//! ```
//!
//! The sum is kept as two `u64` words (low word plus carries), so it is exact
//! up to 2^128 ns. A reader racing with a carry may see the low word wrapped
//! but not yet the carry (a window that is off by 2^64 ns for that instant;
//! totals across intervals stay exact).

use crate::sync::{AtomicU64, Ordering};
use base64::Engine as _;
use std::fmt;

const RELAXED: Ordering = Ordering::Relaxed;

/// One hour in nanoseconds: the default highest trackable value.
pub const ONE_HOUR_NS: u64 = 3_600_000_000_000;

/// Largest accepted `highest`: the V2 format stores it as a signed 64-bit
/// integer (Java and Python readers).
const MAX_HIGHEST: u64 = i64::MAX as u64;

/// Range and precision of a histogram. Lowest discernible value is always 1 ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistogramConfig {
    /// Highest trackable value in ns; larger values are clamped to it.
    pub highest: u64,
    /// Significant decimal digits kept, 1..=5.
    pub sigfig: u8,
}

impl Default for HistogramConfig {
    fn default() -> Self {
        HistogramConfig {
            highest: ONE_HOUR_NS,
            sigfig: 2,
        }
    }
}

impl HistogramConfig {
    /// Checks `sigfig` is in 1..=5 and `2 * 10^sigfig <= highest <= i64::MAX`.
    /// The error text names the offending field.
    pub fn validated(self) -> Result<Self, String> {
        if !(1..=5).contains(&self.sigfig) {
            return Err(format!("sigfig must be in 1..=5, got {}", self.sigfig));
        }
        let min_highest = 2 * 10u64.pow(u32::from(self.sigfig));
        if self.highest < min_highest {
            return Err(format!(
                "highest must be >= 2*10^sigfig = {min_highest} (sigfig {}), got {}",
                self.sigfig, self.highest
            ));
        }
        if self.highest > MAX_HIGHEST {
            return Err(format!(
                "highest must be <= i64::MAX = {MAX_HIGHEST}, got {}",
                self.highest
            ));
        }
        Ok(self)
    }
}

/// Derived HdrHistogram constants (unit_magnitude is 0 since lowest is 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    cfg: HistogramConfig,
    half_count_magnitude: u32,
    half_count: u64,
    sub_bucket_mask: u64,
    leading_zero_count_base: u32,
    len: usize,
}

impl Layout {
    fn new(cfg: HistogramConfig) -> Self {
        let cfg = match cfg.validated() {
            Ok(cfg) => cfg,
            Err(e) => panic!("invalid HistogramConfig: {e}"),
        };
        let largest_single_unit = 2 * 10u64.pow(u32::from(cfg.sigfig));
        let sub_bucket_count_magnitude = largest_single_unit.next_power_of_two().trailing_zeros();
        let sub_bucket_count = 1u64 << sub_bucket_count_magnitude;
        // Same as HdrHistogram's buckets_needed_to_cover_value(highest).
        let mut smallest_untrackable = sub_bucket_count;
        let mut bucket_count = 1usize;
        while smallest_untrackable <= cfg.highest {
            if smallest_untrackable > u64::MAX / 2 {
                bucket_count += 1;
                break;
            }
            smallest_untrackable <<= 1;
            bucket_count += 1;
        }
        let half_count = sub_bucket_count / 2;
        Layout {
            cfg,
            half_count_magnitude: sub_bucket_count_magnitude - 1,
            half_count,
            sub_bucket_mask: sub_bucket_count - 1,
            leading_zero_count_base: 64 - sub_bucket_count_magnitude,
            len: (bucket_count + 1) * half_count as usize,
        }
    }

    /// HdrHistogram's `counts_index(value)`.
    #[inline(always)]
    fn index_of(&self, value: u64) -> usize {
        let bucket = self.leading_zero_count_base - (value | self.sub_bucket_mask).leading_zeros();
        let sub_bucket = value >> bucket;
        (((u64::from(bucket) + 1) << self.half_count_magnitude) + sub_bucket - self.half_count)
            as usize
    }

    fn bucket_of_index(&self, index: usize) -> u32 {
        ((index >> self.half_count_magnitude) as u32).saturating_sub(1)
    }

    /// Lowest value that lands in slot `index` (HdrHistogram's `value_from_index`).
    fn lowest_at(&self, index: usize) -> u64 {
        let bucket_plus_one = index >> self.half_count_magnitude;
        if bucket_plus_one <= 1 {
            return index as u64;
        }
        let sub_bucket = (index as u64 & (self.half_count - 1)) + self.half_count;
        sub_bucket << (bucket_plus_one - 1)
    }

    /// Highest value that lands in slot `index`.
    fn highest_at(&self, index: usize) -> u64 {
        let range = 1u64 << self.bucket_of_index(index);
        self.lowest_at(index).saturating_add(range) - 1
    }
}

/// The sum/min/max/clamped counters, on their own cache line(s) so that the
/// read-only header (layout, slot pointer) is not invalidated by writers.
#[repr(align(64))]
struct Stats {
    sum_lo: AtomicU64,
    sum_hi: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
    clamped: AtomicU64,
}

/// A concurrent latency histogram; see the [module docs](self).
pub struct Histogram {
    layout: Layout,
    counts: Box<[AtomicU64]>,
    stats: Stats,
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("config", &self.layout.cfg)
            .field("slots", &self.counts.len())
            .finish_non_exhaustive()
    }
}

impl Histogram {
    /// Panics only if `cfg` is invalid (see [`HistogramConfig::validated`]).
    pub fn new(cfg: HistogramConfig) -> Self {
        let layout = Layout::new(cfg);
        let counts = (0..layout.len).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            layout,
            counts,
            stats: Stats {
                sum_lo: AtomicU64::new(0),
                sum_hi: AtomicU64::new(0),
                min: AtomicU64::new(u64::MAX),
                max: AtomicU64::new(0),
                clamped: AtomicU64::new(0),
            },
        }
    }

    pub fn config(&self) -> HistogramConfig {
        self.layout.cfg
    }

    #[cold]
    fn clamp_high(&self, n: u64) -> u64 {
        self.stats.clamped.fetch_add(n, RELAXED);
        self.layout.cfg.highest
    }

    #[inline(always)]
    fn update_min_max(&self, v: u64) {
        if v < self.stats.min.load(RELAXED) {
            self.stats.min.fetch_min(v, RELAXED);
        }
        if v > self.stats.max.load(RELAXED) {
            self.stats.max.fetch_max(v, RELAXED);
        }
    }

    /// Records one value. O(1), `Relaxed` atomics only, no lock, no allocation.
    #[inline]
    pub fn record(&self, value_ns: u64) {
        let mut v = value_ns.max(1);
        if v > self.layout.cfg.highest {
            v = self.clamp_high(1);
        }
        let (_, carry) = self.stats.sum_lo.fetch_add(v, RELAXED).overflowing_add(v);
        if carry {
            self.stats.sum_hi.fetch_add(1, RELAXED);
        }
        self.update_min_max(v);
        if let Some(slot) = self.counts.get(self.layout.index_of(v)) {
            slot.fetch_add(1, RELAXED);
        }
    }

    /// Records `n` occurrences of one value (nothing when `n == 0`).
    pub fn record_n(&self, value_ns: u64, n: u64) {
        if n == 0 {
            return;
        }
        let mut v = value_ns.max(1);
        if v > self.layout.cfg.highest {
            v = self.clamp_high(n);
        }
        let add = u128::from(v) * u128::from(n);
        let (_, carry) = self
            .stats
            .sum_lo
            .fetch_add(add as u64, RELAXED)
            .overflowing_add(add as u64);
        let hi = (add >> 64) as u64 + u64::from(carry);
        if hi != 0 {
            self.stats.sum_hi.fetch_add(hi, RELAXED);
        }
        self.update_min_max(v);
        if let Some(slot) = self.counts.get(self.layout.index_of(v)) {
            slot.fetch_add(n, RELAXED);
        }
    }

    /// Cumulative copy of everything recorded since creation, the last
    /// [`reset`](Self::reset) or the last [`take_interval`](Self::take_interval).
    pub fn snapshot(&self) -> Snapshot {
        let counts = self.counts.iter().map(|c| c.load(RELAXED)).collect();
        let sum = u128::from(self.stats.sum_hi.load(RELAXED)) << 64
            | u128::from(self.stats.sum_lo.load(RELAXED));
        let min = self.stats.min.load(RELAXED);
        let max = self.stats.max.load(RELAXED);
        let clamped = self.stats.clamped.load(RELAXED);
        Snapshot::from_parts(self.layout, counts, sum, Some(min), Some(max), clamped)
    }

    /// Returns what was recorded since the previous `take_interval`/`reset`
    /// and zeroes the histogram, slot by slot with atomic swaps: concurrent
    /// records land in exactly one interval and writers are never blocked.
    /// Don't mix with cumulative use (see the module docs).
    pub fn take_interval(&self) -> Snapshot {
        let counts = self
            .counts
            .iter()
            .map(|c| {
                // Skipping empty slots is safe (a record arriving after the
                // load stays for the next interval) and avoids dirtying lines.
                if c.load(RELAXED) == 0 {
                    0
                } else {
                    c.swap(0, RELAXED)
                }
            })
            .collect();
        let sum = u128::from(self.stats.sum_hi.swap(0, RELAXED)) << 64
            | u128::from(self.stats.sum_lo.swap(0, RELAXED));
        let min = self.stats.min.swap(u64::MAX, RELAXED);
        let max = self.stats.max.swap(0, RELAXED);
        let clamped = self.stats.clamped.swap(0, RELAXED);
        Snapshot::from_parts(self.layout, counts, sum, Some(min), Some(max), clamped)
    }

    /// Zeroes everything. Not atomic as a whole: records racing with a reset
    /// may be partly kept; use it at quiescent points (or use `take_interval`).
    pub fn reset(&self) {
        for c in self.counts.iter() {
            c.store(0, RELAXED);
        }
        self.stats.sum_lo.store(0, RELAXED);
        self.stats.sum_hi.store(0, RELAXED);
        self.stats.min.store(u64::MAX, RELAXED);
        self.stats.max.store(0, RELAXED);
        self.stats.clamped.store(0, RELAXED);
    }

    /// Heap plus inline size of this histogram.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.counts.len() * std::mem::size_of::<AtomicU64>()
    }
}

/// A plain (non-atomic) copy of a histogram, same layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    layout: Layout,
    counts: Box<[u64]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
    clamped: u64,
    /// Lowest and highest non-empty slot (`1..=0`, an empty range, when empty).
    first: usize,
    last: usize,
}

impl Snapshot {
    /// An empty snapshot. Panics only if `cfg` is invalid.
    pub fn empty(cfg: HistogramConfig) -> Self {
        let layout = Layout::new(cfg);
        let counts = vec![0; layout.len].into_boxed_slice();
        Snapshot::from_parts(layout, counts, 0, None, None, 0)
    }

    /// Builds a snapshot, computing count and the non-empty range from the
    /// slots, and keeping `min`/`max` only if they fall in the lowest/highest
    /// non-empty slot (otherwise that slot's edge is used).
    fn from_parts(
        layout: Layout,
        counts: Box<[u64]>,
        sum: u128,
        min: Option<u64>,
        max: Option<u64>,
        clamped: u64,
    ) -> Self {
        let mut s = Snapshot {
            layout,
            counts,
            count: 0,
            sum,
            min: 0,
            max: 0,
            clamped,
            first: 1,
            last: 0,
        };
        let mut first = None;
        for (i, &c) in s.counts.iter().enumerate() {
            if c != 0 {
                first.get_or_insert(i);
                s.last = i;
                s.count = s.count.saturating_add(c);
            }
        }
        let Some(first) = first else {
            return s;
        };
        s.first = first;
        let (lo, hi) = (layout.lowest_at(first), layout.highest_at(first));
        s.min = min.filter(|m| (lo..=hi).contains(m)).unwrap_or(lo);
        let (lo, hi) = (layout.lowest_at(s.last), layout.highest_at(s.last));
        s.max = max
            .filter(|m| (lo..=hi).contains(m))
            .unwrap_or_else(|| hi.min(layout.cfg.highest.max(lo)));
        s
    }

    pub fn config(&self) -> HistogramConfig {
        self.layout.cfg
    }

    /// Number of recorded values (the sum of the slots).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Exact sum of the recorded values (after clamping), in ns.
    pub fn sum_ns(&self) -> u128 {
        self.sum
    }

    /// Smallest recorded value; 0 when empty.
    pub fn min(&self) -> u64 {
        self.min
    }

    /// Largest recorded value (after clamping); 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Number of recorded values that were above `highest` (recorded as `highest`).
    pub fn clamped(&self) -> u64 {
        self.clamped
    }

    /// `sum / count`; 0.0 when empty.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// HdrHistogram semantics: the highest equivalent value of the slot where
    /// the cumulative count reaches `max(1, ceil(q * count))` (the lowest
    /// equivalent value for `q == 0`), then clamped to `[min, max]` — so
    /// `q = 0` gives the exact min and `q = 1` the exact max. `q` is clamped
    /// to `[0, 1]` (NaN counts as 0); 0 when empty.
    pub fn value_at_quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let slots = &self.counts[self.first..=self.last];
        let found = if rank <= self.count / 2 {
            let mut cum = 0u64;
            slots.iter().position(|&c| {
                cum += c;
                cum >= rank
            })
        } else {
            // Largest slot i with Σ_{j >= i} c_j > count - rank, scanning down.
            let need = self.count - rank + 1;
            let mut cum = 0u64;
            slots.iter().rposition(|&c| {
                cum = cum.saturating_add(c);
                cum >= need
            })
        };
        let index = self.first + found.unwrap_or(slots.len() - 1);
        let value = if q == 0.0 {
            self.layout.lowest_at(index)
        } else {
            self.layout.highest_at(index)
        };
        value.clamp(self.min, self.max)
    }

    /// Number of recorded values `<= value_ns`, at slot granularity: the slot
    /// containing `value_ns` counts whole (exact below `min` and from `max` up).
    /// For Prometheus cumulative `le` buckets.
    pub fn count_le(&self, value_ns: u64) -> u64 {
        if self.count == 0 || value_ns < self.min {
            return 0;
        }
        if value_ns >= self.max {
            return self.count;
        }
        let end = self.layout.index_of(value_ns).min(self.last);
        self.counts[self.first..=end]
            .iter()
            .fold(0u64, |a, &c| a.saturating_add(c))
    }

    /// Non-empty slots in increasing order:
    /// `(lowest equivalent value, highest equivalent value, count)`.
    pub fn iter_recorded(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let layout = self.layout;
        (self.first..=self.last)
            .zip(self.counts.get(self.first..=self.last).unwrap_or(&[]))
            .filter(|&(_, &c)| c != 0)
            .map(move |(i, &c)| (layout.lowest_at(i), layout.highest_at(i), c))
    }

    /// Adds `other` into `self`. Errors (leaving `self` untouched) if the
    /// configs differ.
    pub fn merge(&mut self, other: &Snapshot) -> Result<(), String> {
        if self.layout != other.layout {
            return Err(format!(
                "cannot merge histograms with different configs: {:?} vs {:?}",
                self.layout.cfg, other.layout.cfg
            ));
        }
        let (min, max) = match (self.count, other.count) {
            (0, 0) => (None, None),
            (0, _) => (Some(other.min), Some(other.max)),
            (_, 0) => (Some(self.min), Some(self.max)),
            _ => (Some(self.min.min(other.min)), Some(self.max.max(other.max))),
        };
        let mut counts = std::mem::take(&mut self.counts);
        for (a, &b) in counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(b);
        }
        *self = Snapshot::from_parts(
            self.layout,
            counts,
            self.sum.saturating_add(other.sum),
            min,
            max,
            self.clamped.saturating_add(other.clamped),
        );
        Ok(())
    }

    /// What was recorded between `earlier` and `self` (two snapshots of the
    /// same cumulative histogram): slot counts, sum and clamped are
    /// subtracted (saturating). Min/max are exact when they changed between
    /// the two snapshots, otherwise the edges of the lowest/highest non-empty
    /// slot of the difference. If the configs differ, returns `self.clone()`.
    pub fn delta(&self, earlier: &Snapshot) -> Snapshot {
        if self.layout != earlier.layout {
            return self.clone();
        }
        let counts = self
            .counts
            .iter()
            .zip(earlier.counts.iter())
            .map(|(&a, &b)| a.saturating_sub(b))
            .collect();
        let new_min = earlier.count == 0 || self.min < earlier.min;
        let new_max = earlier.count == 0 || self.max > earlier.max;
        Snapshot::from_parts(
            self.layout,
            counts,
            self.sum.saturating_sub(earlier.sum),
            new_min.then_some(self.min),
            new_max.then_some(self.max),
            self.clamped.saturating_sub(earlier.clamped),
        )
    }

    /// The same counts in an `hdrhistogram` crate histogram (lowest 1, same
    /// highest and sigfig; slot `i` here is slot `i` there).
    pub fn to_hdr(&self) -> hdrhistogram::Histogram<u64> {
        self.hdr_with(|c| c)
    }

    fn hdr_with(&self, map_count: impl Fn(u64) -> u64) -> hdrhistogram::Histogram<u64> {
        let cfg = self.layout.cfg;
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, cfg.highest, cfg.sigfig)
            .unwrap_or_else(|e| panic!("validated config rejected by hdrhistogram: {e:?}"));
        for (lowest, _, c) in self.iter_recorded() {
            let recorded = h.record_n(lowest, map_count(c));
            debug_assert!(recorded.is_ok(), "slot of {lowest} out of range");
        }
        h
    }

    /// Standard HdrHistogram V2 compressed (deflate) encoding, base64 with
    /// the standard alphabet: what Java's/Python's `encode()` produce and
    /// `decode()` reads. (Slot counts above `i64::MAX`, which V2 cannot
    /// represent, are saturated.)
    pub fn to_v2_base64(&self) -> String {
        use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};
        let h = self.hdr_with(|c| c.min(i64::MAX as u64));
        let mut bytes = Vec::new();
        let written = V2DeflateSerializer::new().serialize(&h, &mut bytes);
        debug_assert!(written.is_ok(), "V2 encoding failed: {written:?}");
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// Interval windows over a cumulative [`Histogram`] without resetting it:
/// several independent readers (a Prometheus scrape, an alert window) each
/// keep their own previous snapshot.
#[derive(Clone, Debug)]
pub struct IntervalReader {
    prev: Snapshot,
}

impl IntervalReader {
    /// Starts at `h`'s current snapshot.
    pub fn new(h: &Histogram) -> Self {
        IntervalReader { prev: h.snapshot() }
    }

    /// What was recorded since the previous call (or `new`). If `h` went
    /// backwards (reset, `take_interval`, or a different histogram), returns
    /// its whole current snapshot.
    pub fn next(&mut self, h: &Histogram) -> Snapshot {
        let cur = h.snapshot();
        let window = if cur.layout != self.prev.layout || cur.count < self.prev.count {
            cur.clone()
        } else {
            cur.delta(&self.prev)
        };
        self.prev = cur;
        window
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn cfg(highest: u64, sigfig: u8) -> HistogramConfig {
        HistogramConfig { highest, sigfig }
    }

    fn hist(values: &[u64]) -> Histogram {
        let h = Histogram::new(HistogramConfig::default());
        values.iter().for_each(|&v| h.record(v));
        h
    }

    #[test]
    fn histogram_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Histogram>();
        assert_send_sync::<Snapshot>();
    }

    #[test]
    fn config_validation_names_the_bad_field() {
        assert_eq!(
            HistogramConfig::default().validated(),
            Ok(cfg(ONE_HOUR_NS, 2))
        );
        assert!(cfg(1000, 0).validated().unwrap_err().contains("sigfig"));
        assert!(cfg(1000, 6).validated().unwrap_err().contains("sigfig"));
        assert!(cfg(199, 2).validated().unwrap_err().contains("highest"));
        assert!(cfg(200, 2).validated().is_ok());
        assert!(cfg(u64::MAX, 2)
            .validated()
            .unwrap_err()
            .contains("highest"));
        assert!(cfg(i64::MAX as u64, 5).validated().is_ok());
    }

    #[test]
    #[should_panic(expected = "sigfig")]
    fn new_panics_on_invalid_config() {
        let _ = Histogram::new(cfg(1000, 9));
    }

    #[test]
    fn layout_matches_hdrhistogram_crate() {
        for (highest, sigfig) in [
            (ONE_HOUR_NS, 2),
            (ONE_HOUR_NS, 3),
            (20, 1),
            (1_000_000, 1),
            (2_000, 3),
            (i64::MAX as u64, 2),
        ] {
            let s = Snapshot::empty(cfg(highest, sigfig));
            let hdr = hdrhistogram::Histogram::<u64>::new_with_bounds(1, highest, sigfig).unwrap();
            assert_eq!(s.layout.len, hdr.distinct_values(), "{highest} {sigfig}");
            for (i, v) in hdr.iter_all().enumerate() {
                assert_eq!(s.layout.highest_at(i), v.value_iterated_to(), "slot {i}");
                let lo = s.layout.lowest_at(i);
                assert_eq!(lo, hdr.lowest_equivalent(v.value_iterated_to()));
                assert_eq!(s.layout.index_of(lo), i);
            }
            assert!(s.layout.index_of(highest) < s.layout.len);
        }
    }

    #[test]
    fn index_value_round_trips_at_bucket_edges() {
        let l = Layout::new(HistogramConfig::default()); // 256 sub-buckets, half 128
        assert_eq!((l.half_count, l.len), (128, 4608));
        for v in 0..256 {
            assert_eq!(l.index_of(v), v as usize, "unit resolution in bucket 0");
        }
        assert_eq!(l.index_of(256), 256);
        assert_eq!(l.index_of(257), 256); // width 2 in bucket 1
        assert_eq!(l.index_of(258), 257);
        assert_eq!(l.index_of(511), 383);
        assert_eq!(l.index_of(512), 384);
        assert_eq!(l.index_of(515), 384); // width 4 in bucket 2
        assert_eq!(l.index_of(516), 385);
        for shift in 8..42 {
            for v in [
                1u64 << shift,
                (1 << shift) - 1,
                (1 << shift) + 1,
                3 << (shift - 1),
            ] {
                let i = l.index_of(v);
                assert!(l.lowest_at(i) <= v && v <= l.highest_at(i), "{v}");
                assert_eq!(l.index_of(l.lowest_at(i)), i);
                assert_eq!(l.index_of(l.highest_at(i)), i);
                assert_eq!(l.index_of(l.highest_at(i) + 1), i + 1);
                let width = l.highest_at(i) - l.lowest_at(i);
                assert!(width as f64 <= v as f64 / 100.0, "{v}: width {width}");
            }
        }
    }

    #[test]
    fn zero_is_recorded_as_one() {
        let s = hist(&[0, 0]).snapshot();
        assert_eq!((s.count(), s.min(), s.max(), s.sum_ns()), (2, 1, 1, 2));
        assert_eq!(s.iter_recorded().collect::<Vec<_>>(), vec![(1, 1, 2)]);
        assert_eq!(s.count_le(0), 0);
        assert_eq!(s.clamped(), 0);
    }

    #[test]
    fn values_above_highest_are_clamped_and_counted() {
        let h = Histogram::new(cfg(1_000_000, 2));
        h.record(5_000_000);
        h.record(u64::MAX);
        h.record_n(2_000_000, 3);
        h.record(10);
        let s = h.snapshot();
        assert_eq!(
            (s.count(), s.clamped(), s.max(), s.min()),
            (6, 5, 1_000_000, 10)
        );
        assert_eq!(s.sum_ns(), 5 * 1_000_000 + 10);
        assert_eq!(s.value_at_quantile(1.0), 1_000_000);
        let l = s.layout;
        let top_slot_lowest = l.lowest_at(l.index_of(1_000_000));
        assert_eq!(s.count_le(top_slot_lowest - 1), 1);
        assert_eq!(
            s.count_le(top_slot_lowest),
            6,
            "the slot holding the value counts whole"
        );
    }

    #[test]
    fn min_max_mean_sum() {
        let empty = Histogram::new(HistogramConfig::default()).snapshot();
        assert_eq!(
            (empty.count(), empty.min(), empty.max(), empty.sum_ns()),
            (0, 0, 0, 0)
        );
        assert_eq!(empty.mean(), 0.0);
        assert_eq!(empty.value_at_quantile(0.5), 0);
        assert_eq!(empty.iter_recorded().count(), 0);
        assert_eq!(empty, Snapshot::empty(HistogramConfig::default()));

        let s = hist(&[1_000, 2_000, 3_000, 1_234_567]).snapshot();
        assert_eq!((s.count(), s.min(), s.max()), (4, 1_000, 1_234_567));
        assert_eq!(s.sum_ns(), 1_240_567);
        assert!((s.mean() - 310_141.75).abs() < 1e-9);

        // Exact even between neighbours sharing a slot.
        let s = hist(&[1_000_001, 1_000_000, 1_000_003, 1_000_004]).snapshot();
        assert_eq!((s.min(), s.max()), (1_000_000, 1_000_004));
    }

    #[test]
    fn sum_is_exact_beyond_u64() {
        let h = Histogram::new(cfg(i64::MAX as u64, 2));
        let big = i64::MAX as u64;
        for _ in 0..5 {
            h.record(big);
        }
        h.record_n(big, u64::MAX);
        h.record_n(big, 3); // carries out of the low word
        let expected = u128::from(big) * (5 + 3) + u128::from(big) * u128::from(u64::MAX);
        assert_eq!(h.snapshot().sum_ns(), expected);
    }

    #[test]
    fn quantiles_on_small_known_data() {
        // 1..=100: unit resolution below 256, so quantiles are exact.
        let s = hist(&(1..=100).collect::<Vec<_>>()).snapshot();
        assert_eq!(s.value_at_quantile(0.0), 1);
        assert_eq!(s.value_at_quantile(0.01), 1);
        assert_eq!(s.value_at_quantile(0.5), 50);
        assert_eq!(s.value_at_quantile(0.505), 51);
        assert_eq!(s.value_at_quantile(0.9), 90);
        assert_eq!(s.value_at_quantile(0.99), 99);
        assert_eq!(s.value_at_quantile(1.0), 100);
        assert_eq!(s.value_at_quantile(7.0), 100);
        assert_eq!(s.value_at_quantile(-1.0), 1);
        assert_eq!(s.value_at_quantile(f64::NAN), 1);

        // Larger values report the slot's highest equivalent, clamped to max.
        let s = hist(&[1_000_000, 1_000_000, 1_000_000, 5_000_000]).snapshot();
        let l = s.layout;
        let slot_hi = l.highest_at(l.index_of(1_000_000));
        assert!(slot_hi > 1_000_000);
        assert_eq!(s.value_at_quantile(0.0), 1_000_000);
        assert_eq!(s.value_at_quantile(0.5), slot_hi);
        assert_eq!(s.value_at_quantile(0.75), slot_hi);
        assert_eq!(s.value_at_quantile(0.76), 5_000_000);
        assert_eq!(s.value_at_quantile(1.0), 5_000_000);
    }

    #[test]
    fn count_le_is_cumulative() {
        let s = hist(&[10, 20, 20, 300, 1_000_000]).snapshot();
        assert_eq!(s.count_le(9), 0);
        assert_eq!(s.count_le(10), 1);
        assert_eq!(s.count_le(19), 1);
        assert_eq!(s.count_le(20), 3);
        assert_eq!(s.count_le(299), 3);
        assert_eq!(s.count_le(300), 4);
        assert_eq!(s.count_le(999_000), 4);
        assert_eq!(s.count_le(1_000_000), 5);
        assert_eq!(s.count_le(u64::MAX), 5);
    }

    #[test]
    fn merge_adds_and_rejects_config_mismatch() {
        let mut a = hist(&[5, 50_000]).snapshot();
        let b = hist(&[7, 9_000_000]).snapshot();
        a.merge(&b).unwrap();
        assert_eq!(a, hist(&[5, 50_000, 7, 9_000_000]).snapshot());
        a.merge(&Snapshot::empty(HistogramConfig::default()))
            .unwrap();
        assert_eq!((a.count(), a.min(), a.max()), (4, 5, 9_000_000));

        let other = Snapshot::empty(cfg(ONE_HOUR_NS, 3));
        let before = a.clone();
        let err = a.merge(&other).unwrap_err();
        assert!(err.contains("different configs"), "{err}");
        assert_eq!(a, before);
    }

    #[test]
    fn take_interval_and_reset() {
        let h = hist(&[100, 200]);
        let first = h.take_interval();
        assert_eq!(
            (first.count(), first.sum_ns(), first.min(), first.max()),
            (2, 300, 100, 200)
        );
        assert_eq!(h.snapshot().count(), 0);
        h.record(7);
        let second = h.take_interval();
        assert_eq!(
            (second.count(), second.min(), second.max(), second.sum_ns()),
            (1, 7, 7, 7)
        );
        let third = h.take_interval();
        assert_eq!(third, Snapshot::empty(HistogramConfig::default()));

        h.record(5);
        h.record(u64::MAX);
        h.reset();
        assert_eq!(h.snapshot(), Snapshot::empty(HistogramConfig::default()));
        h.record(9);
        assert_eq!(h.snapshot().min(), 9);
    }

    #[test]
    fn interval_readers_are_independent_windows() {
        let h = hist(&[1, 2]);
        let mut fast = IntervalReader::new(&h);
        let mut slow = IntervalReader::new(&h);
        h.record(1_000);
        let w = fast.next(&h);
        assert_eq!(
            (w.count(), w.sum_ns(), w.min(), w.max()),
            (1, 1_000, 1_000, 1_000)
        );
        h.record(3);
        h.record(3);
        let w = fast.next(&h);
        assert_eq!((w.count(), w.sum_ns()), (2, 6));
        assert_eq!((w.min(), w.max()), (3, 3)); // from the slot: not new extremes
        assert_eq!(fast.next(&h).count(), 0);
        let w = slow.next(&h);
        assert_eq!(
            (w.count(), w.sum_ns(), w.min(), w.max()),
            (3, 1_006, 3, 1_000)
        );
        h.reset();
        h.record(42);
        assert_eq!(fast.next(&h).sum_ns(), 42, "a reset restarts the window");
    }

    #[test]
    fn delta_min_max_come_from_slots_when_not_new_extremes() {
        let h = hist(&[10, 5_000_000]);
        let before = h.snapshot();
        h.record(1_000_001);
        h.record(1_000_003);
        let d = h.snapshot().delta(&before);
        let l = d.layout;
        let i = l.index_of(1_000_001);
        assert_eq!(i, l.index_of(1_000_003));
        assert_eq!((d.min(), d.max()), (l.lowest_at(i), l.highest_at(i)));
        assert_eq!(d.value_at_quantile(0.5), l.highest_at(i));
        // An old extreme in the same slot is not reported as the window's.
        let h = hist(&[1_000_000]);
        let before = h.snapshot();
        h.record(1_000_002);
        let d = h.snapshot().delta(&before);
        assert_eq!((d.min(), d.max()), (l.lowest_at(i), 1_000_002));
        let mismatched = Snapshot::empty(cfg(1_000, 1));
        assert_eq!(d.delta(&mismatched), d);
    }

    #[test]
    fn to_hdr_has_identical_counts() {
        let s = hist(&[0, 1, 255, 256, 257, 99_999, 3_000_000_000, u64::MAX]).snapshot();
        let hdr = s.to_hdr();
        assert_eq!(hdr.len(), s.count());
        let ours: Vec<_> = s.iter_recorded().map(|(_, hi, c)| (hi, c)).collect();
        let theirs: Vec<_> = hdr
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn v2_base64_decodes() {
        let s = hist(&[1, 2, 3, 1_000_000]).snapshot();
        let text = s.to_v2_base64();
        assert!(text.starts_with("HISTF"), "{text}"); // the V2 compressed cookie
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        let h: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .unwrap();
        assert_eq!(h, s.to_hdr());
    }

    #[test]
    fn memory_bytes_for_sigfig_2_and_3() {
        let h2 = Histogram::new(HistogramConfig::default());
        assert_eq!(std::mem::size_of::<Histogram>(), 128);
        assert_eq!(h2.memory_bytes(), 128 + 4_608 * 8);
        let h3 = Histogram::new(cfg(ONE_HOUR_NS, 3));
        assert_eq!(h3.memory_bytes(), 128 + 33_792 * 8);
        assert_eq!(std::mem::align_of::<Stats>(), 64);
    }
}
