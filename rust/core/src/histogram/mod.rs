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
//!   have `(bucket_count + 1) * sub_bucket_half_count` slots. The slot of
//!   a value is computed with `leading_zeros`, exactly as HdrHistogram does.
//! - Values above `highest` are recorded as `highest` (and counted in
//!   [`Snapshot::clamped`]); `0` is recorded as `1`. Recording never panics.
//!
//! # Memory
//!
//! The slots are kept in rows of 64 `u32` counters (256 bytes), eight rows'
//! pointers to a group (64 bytes), and a group or row is allocated by the
//! first record that lands in it (`rows.rs`): a histogram costs a 112-byte
//! header, a table of one pointer per group, and the groups and rows its
//! values have touched ([`Histogram::memory_bytes`]). With the default
//! `highest` of one hour:
//!
//! | sigfig | slots  | rows | groups | idle  | per row touched | all rows (dense) |
//! |--------|--------|------|--------|-------|-----------------|------------------|
//! | 2      | 4 608  | 72   | 9      | 184 B | 256 B           | 19 192 B         |
//! | 3      | 33 792 | 528  | 66     | 640 B | 256 B           | 140 032 B        |
//!
//! At 2 digits a row is half a bucket (half an octave), so values spanning a
//! decade fill at most 8 rows in 3 groups (2.4 KB with every slot of the
//! decade recorded) and values spanning two decades at most 15 rows in 4
//! groups (4.3 KB). A counter that reaches 2^31 moves the histogram's later
//! records to 64-bit rows of the same layout (`rows.rs`: a busy series pays
//! twice for the rows it touches, once). What a whole registry series costs
//! (its key, exemplars) is measured by `tests/series_memory.rs`. A
//! [`Snapshot`] holds the counts of its lowest to highest non-empty slot.
//!
//! # Concurrency contract
//!
//! [`Histogram::record`] is a `Relaxed` load of the 64-bit table's pointer,
//! `Acquire` loads of the group's and the row's pointers, one slot
//! `fetch_add`, one `fetch_add` on the sum and a load of min and max (a
//! read-modify-write only when they change), all `Relaxed`, with no lock. The
//! first record into a group or row allocates it and publishes it with one
//! `compare_exchange` (a recorder that loses the race frees its block and
//! uses the winner's); rows stay until the histogram is dropped. A 32-bit
//! counter reaching 2^31 publishes the 64-bit table the same way, and every
//! record is still one `fetch_add` on one counter (`rows.rs`).
//!
//! `Relaxed` is enough for the counters because every counter is
//! independent: nothing is published through them, and the only cross-counter
//! invariant a reader needs (`count == Σ slots`) holds by construction because
//! the total count is *computed* from the slots when a snapshot is taken
//! rather than kept as a separate counter.
//!
//! A [`Histogram::snapshot`] taken while writers run is a consistent-enough
//! view: each slot's count lies between what the slot held when its copy
//! started and when it ended (its 32-bit and its 64-bit counter are read one
//! after the other, and each only grows), and `count` equals the sum of the
//! copied slots. The sum (and the `clamped`
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

mod rows;

use crate::sync::{AtomicU64, Ordering};
use rows::Counts;
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

/// The sum/min/max/clamped counters. Not padded to a cache line of their
/// own: a histogram is recorded into by the thread draining the intake
/// (request threads only when the intake is full),
/// so the padding bought no speed and cost 128 bytes a series.
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
    counts: Counts,
    stats: Stats,
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("config", &self.layout.cfg)
            .field("slots", &self.layout.len)
            .field("rows_allocated", &self.counts.rows_allocated())
            .finish_non_exhaustive()
    }
}

impl Histogram {
    /// Panics only if `cfg` is invalid (see [`HistogramConfig::validated`]).
    /// Allocates the row table only; rows come with their first record.
    pub fn new(cfg: HistogramConfig) -> Self {
        let layout = Layout::new(cfg);
        Histogram {
            layout,
            counts: Counts::new(layout.len),
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

    /// Records one value. O(1), no lock; allocates only on the first record
    /// into a row (see the module docs).
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
        self.counts.add(self.layout.index_of(v), 1);
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
        self.counts.add(self.layout.index_of(v), n);
    }

    /// Adds everything `s` holds (slot counts, exact sum, min, max, clamped
    /// count), as if its values had been recorded here: merging another
    /// histogram's copy into this one (the pre-fork workers' view). Errors,
    /// adding nothing, if the layouts differ.
    pub fn add(&self, s: &Snapshot) -> Result<(), String> {
        if s.layout != self.layout {
            return Err(format!(
                "cannot add a histogram with a different config: {:?} vs {:?}",
                s.layout.cfg, self.layout.cfg
            ));
        }
        if s.count() == 0 {
            return Ok(());
        }
        for (lowest, _, c) in s.iter_recorded() {
            self.counts.add(self.layout.index_of(lowest), c);
        }
        let add = s.sum_ns();
        let (_, carry) = self
            .stats
            .sum_lo
            .fetch_add(add as u64, RELAXED)
            .overflowing_add(add as u64);
        let hi = ((add >> 64) as u64).wrapping_add(u64::from(carry));
        if hi != 0 {
            self.stats.sum_hi.fetch_add(hi, RELAXED);
        }
        self.update_min_max(s.min());
        self.update_min_max(s.max());
        if s.clamped() > 0 {
            self.stats.clamped.fetch_add(s.clamped(), RELAXED);
        }
        Ok(())
    }

    /// Cumulative copy of everything recorded since creation, the last
    /// [`reset`](Self::reset) or the last [`take_interval`](Self::take_interval).
    pub fn snapshot(&self) -> Snapshot {
        let (offset, counts) = self.counts.read(
            self.layout.len,
            |c| c.load(RELAXED).into(),
            |c| c.load(RELAXED),
        );
        let sum = u128::from(self.stats.sum_hi.load(RELAXED)) << 64
            | u128::from(self.stats.sum_lo.load(RELAXED));
        let min = self.stats.min.load(RELAXED);
        let max = self.stats.max.load(RELAXED);
        let clamped = self.stats.clamped.load(RELAXED);
        Snapshot::from_parts(
            self.layout,
            offset,
            counts,
            sum,
            Some(min),
            Some(max),
            clamped,
        )
    }

    /// Returns what was recorded since the previous `take_interval`/`reset`
    /// and zeroes the histogram, slot by slot with atomic swaps: concurrent
    /// records land in exactly one interval and writers are never blocked.
    /// Rows stay allocated. Don't mix with cumulative use (see the module docs).
    pub fn take_interval(&self) -> Snapshot {
        // Skipping empty slots is safe (a record arriving after the load
        // stays for the next interval) and avoids dirtying lines.
        let (offset, counts) = self.counts.read(
            self.layout.len,
            |c| match c.load(RELAXED) {
                0 => 0,
                _ => c.swap(0, RELAXED).into(),
            },
            |c| match c.load(RELAXED) {
                0 => 0,
                _ => c.swap(0, RELAXED),
            },
        );
        let sum = u128::from(self.stats.sum_hi.swap(0, RELAXED)) << 64
            | u128::from(self.stats.sum_lo.swap(0, RELAXED));
        let min = self.stats.min.swap(u64::MAX, RELAXED);
        let max = self.stats.max.swap(0, RELAXED);
        let clamped = self.stats.clamped.swap(0, RELAXED);
        Snapshot::from_parts(
            self.layout,
            offset,
            counts,
            sum,
            Some(min),
            Some(max),
            clamped,
        )
    }

    /// Zeroes everything (rows stay allocated). Not atomic as a whole:
    /// records racing with a reset may be partly kept; use it at quiescent
    /// points (or use `take_interval`).
    pub fn reset(&self) {
        self.counts.zero(self.layout.len);
        self.stats.sum_lo.store(0, RELAXED);
        self.stats.sum_hi.store(0, RELAXED);
        self.stats.min.store(u64::MAX, RELAXED);
        self.stats.max.store(0, RELAXED);
        self.stats.clamped.store(0, RELAXED);
    }

    /// Heap plus inline size of this histogram: the header, the row table
    /// and the rows allocated so far.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.counts.heap_bytes()
    }
}

mod snapshot;
pub use snapshot::{IntervalReader, Snapshot};

#[cfg(all(test, not(loom)))]
mod tests;
