//! [`Snapshot`]: a plain copy of a histogram, and [`IntervalReader`].

use super::{Histogram, HistogramConfig, Layout};
use base64::Engine as _;

/// A plain (non-atomic) copy of a histogram, same layout. It holds the
/// counts of its lowest to highest non-empty slot only, so its size follows
/// the range of the recorded values, not the configured one.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub(super) layout: Layout,
    /// The counts of slots `first..=last` (empty when `count == 0`); the
    /// first and last are non-zero, so equal snapshots have equal fields.
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
        Snapshot::from_parts(Layout::new(cfg), 0, Vec::new(), 0, None, None, 0)
    }

    /// Builds a snapshot from the counts of slots `offset..`, computing count
    /// and the non-empty range from the slots, and keeping `min`/`max` only
    /// if they fall in the lowest/highest non-empty slot (otherwise that
    /// slot's edge is used).
    pub(super) fn from_parts(
        layout: Layout,
        offset: usize,
        counts: Vec<u64>,
        sum: u128,
        min: Option<u64>,
        max: Option<u64>,
        clamped: u64,
    ) -> Self {
        let mut s = Snapshot {
            layout,
            counts: Box::default(),
            count: 0,
            sum,
            min: 0,
            max: 0,
            clamped,
            first: 1,
            last: 0,
        };
        let (Some(lo), Some(hi)) = (
            counts.iter().position(|&c| c != 0),
            counts.iter().rposition(|&c| c != 0),
        ) else {
            return s;
        };
        s.count = counts[lo..=hi]
            .iter()
            .fold(0u64, |a, &c| a.saturating_add(c));
        s.counts = if lo == 0 && hi + 1 == counts.len() {
            counts.into_boxed_slice()
        } else {
            counts[lo..=hi].into()
        };
        s.first = offset + lo;
        s.last = offset + hi;
        let (lo, hi) = (layout.lowest_at(s.first), layout.highest_at(s.first));
        s.min = min.filter(|m| (lo..=hi).contains(m)).unwrap_or(lo);
        let (lo, hi) = (layout.lowest_at(s.last), layout.highest_at(s.last));
        s.max = max
            .filter(|m| (lo..=hi).contains(m))
            .unwrap_or_else(|| hi.min(layout.cfg.highest.max(lo)));
        s
    }

    /// The count of slot `index` (0 outside the non-empty range).
    fn at(&self, index: usize) -> u64 {
        index
            .checked_sub(self.first)
            .and_then(|i| self.counts.get(i))
            .copied()
            .unwrap_or(0)
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
        let slots = &self.counts[..];
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
        self.counts[..=end.saturating_sub(self.first)]
            .iter()
            .fold(0u64, |a, &c| a.saturating_add(c))
    }

    /// Non-empty slots in increasing order:
    /// `(lowest equivalent value, highest equivalent value, count)`.
    pub fn iter_recorded(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let layout = self.layout;
        (self.first..=self.last)
            .zip(self.counts.iter())
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
        let (lo, hi) = match (self.count, other.count) {
            (0, 0) => (0, 0),
            (0, _) => (other.first, other.last + 1),
            (_, 0) => (self.first, self.last + 1),
            _ => (self.first.min(other.first), self.last.max(other.last) + 1),
        };
        let counts = (lo..hi)
            .map(|i| self.at(i).saturating_add(other.at(i)))
            .collect();
        *self = Snapshot::from_parts(
            self.layout,
            lo,
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
        let counts = (self.first..=self.last)
            .zip(self.counts.iter())
            .map(|(i, &a)| a.saturating_sub(earlier.at(i)))
            .collect();
        let new_min = earlier.count == 0 || self.min < earlier.min;
        let new_max = earlier.count == 0 || self.max > earlier.max;
        Snapshot::from_parts(
            self.layout,
            self.first,
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
        base64::engine::general_purpose::STANDARD.encode(self.to_v2_bytes())
    }

    /// The V2 compressed encoding as raw bytes (what
    /// [`to_v2_base64`](Self::to_v2_base64) encodes in base64).
    pub fn to_v2_bytes(&self) -> Vec<u8> {
        use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};
        let h = self.hdr_with(|c| c.min(i64::MAX as u64));
        let mut bytes = Vec::new();
        let written = V2DeflateSerializer::new().serialize(&h, &mut bytes);
        debug_assert!(written.is_ok(), "V2 encoding failed: {written:?}");
        bytes
    }

    /// Reads the V2 encoding (compressed or not) back: the slot counts and
    /// the layout (lowest discernible value 1, its highest and significant
    /// digits). V2 carries neither the exact sum nor the exact min and max,
    /// nor the clamped count: the caller gives them (as [`to_v2_bytes`]'s
    /// snapshot had them); a `min`/`max` outside its slot is replaced by the
    /// slot's edge, as for any snapshot. Errors name what is wrong with the
    /// bytes.
    ///
    /// [`to_v2_bytes`]: Self::to_v2_bytes
    pub fn from_v2_bytes(
        bytes: &[u8],
        sum: u128,
        min: u64,
        max: u64,
        clamped: u64,
    ) -> Result<Snapshot, String> {
        use hdrhistogram::serialization::Deserializer;
        let h: hdrhistogram::Histogram<u64> = Deserializer::new()
            .deserialize(&mut std::io::Cursor::new(bytes))
            .map_err(|e| format!("not a V2-encoded histogram: {e:?}"))?;
        if h.low() != 1 {
            return Err(format!(
                "a V2 histogram with lowest discernible value {} (pulsetrace's is 1)",
                h.low()
            ));
        }
        let cfg = HistogramConfig {
            highest: h.high(),
            sigfig: h.sigfig(),
        }
        .validated()?;
        let layout = Layout::new(cfg);
        let mut slots: Vec<(usize, u64)> = Vec::new();
        for v in h.iter_recorded() {
            let index = layout.index_of(v.value_iterated_to());
            if index >= layout.len {
                return Err(format!(
                    "a V2 value {} beyond the range",
                    v.value_iterated_to()
                ));
            }
            slots.push((index, v.count_at_value()));
        }
        let (Some(&(first, _)), Some(&(last, _))) = (slots.first(), slots.last()) else {
            return Ok(Snapshot::empty(cfg));
        };
        let mut counts = vec![0u64; last + 1 - first];
        for (index, c) in slots {
            counts[index - first] = counts[index - first].saturating_add(c);
        }
        Ok(Snapshot::from_parts(
            layout,
            first,
            counts,
            sum,
            Some(min),
            Some(max),
            clamped,
        ))
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
