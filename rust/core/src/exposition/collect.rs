//! One pass over the registry: the keys grouped into families and label sets,
//! each group's snapshots read once into cumulative bucket counts, sums,
//! quantiles and exemplars.

use super::names::Fam;
use super::{Entry, Exemplar, ExemplarFn};
use crate::histogram::Snapshot;
use crate::registry::Registry;
use crate::span::StatusClass;
use crate::target::Target;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One histogram series (one label set) of a group.
pub(super) struct HSeries {
    pub(super) class: StatusClass,
    pub(super) count: u64,
    pub(super) sum_ns: u128,
    /// Start of its `bounds.len()` cumulative counts in `Collected::buckets`.
    pub(super) buckets: usize,
    /// Its exemplars in `Collected::exemplars`.
    pub(super) exemplars: std::ops::Range<usize>,
}

/// One operation (and kind, for messaging; and target) of a family: its
/// series, the counters and the quantiles over all its status classes.
pub(super) struct Group {
    pub(super) op: Arc<str>,
    pub(super) kind: Option<&'static str>,
    /// The target whose labels the series carry (no values: none).
    pub(super) target: Target,
    pub(super) series: std::ops::Range<usize>,
    pub(super) count: u64,
    pub(super) errors: u64,
    /// Start of its quantile values in `Collected::quantiles` (`None`: no data).
    pub(super) quantiles: usize,
}

#[derive(Default)]
pub(super) struct Collected {
    pub(super) groups: [Vec<Group>; Fam::COUNT],
    pub(super) series: Vec<HSeries>,
    pub(super) buckets: Vec<u64>,
    pub(super) quantiles: Vec<Option<u64>>,
    /// (bucket index, `bounds.len()` for `+Inf`; exemplar)
    pub(super) exemplars: Vec<(usize, Exemplar)>,
}

/// A non-empty HDR slot: (lowest value, highest value, count).
pub(super) type Slot = (u64, u64, u64);

/// What rendering needs of one snapshot, read in one pass: its totals and
/// its non-empty slots (a range of a shared slot buffer).
pub(super) struct Dist {
    pub(super) count: u64,
    pub(super) sum_ns: u128,
    pub(super) min: u64,
    pub(super) max: u64,
    pub(super) slots: std::ops::Range<usize>,
}

impl Dist {
    pub(super) fn read(s: &Snapshot, buf: &mut Vec<Slot>) -> Dist {
        let start = buf.len();
        buf.extend(s.iter_recorded());
        Dist {
            count: s.count(),
            sum_ns: s.sum_ns(),
            min: s.min(),
            max: s.max(),
            slots: start..buf.len(),
        }
    }
}

/// Cumulative counts at each bound, equal to `Snapshot::count_le(bound)`
/// for each, in one pass over the non-empty slots.
pub(super) fn cumulative_buckets(d: &Dist, buf: &[Slot], bounds_ns: &[u64], out: &mut Vec<u64>) {
    let mut slots = buf[d.slots.clone()].iter().peekable();
    let mut cum = 0u64;
    for &b in bounds_ns {
        let v = if d.count == 0 || b < d.min {
            0
        } else if b >= d.max {
            d.count
        } else {
            while let Some(&(_, _, c)) = slots.next_if(|&&(lowest, _, _)| lowest <= b) {
                cum = cum.saturating_add(c);
            }
            cum
        };
        out.push(v);
    }
}

/// `value_at_quantile` of the merge of `dists` (same config) for each of
/// `quantiles` (ascending), `None` when they are all empty; without
/// building the merged snapshot: one walk over their non-empty slots.
pub(super) fn merged_quantiles(
    dists: &[Dist],
    buf: &[Slot],
    quantiles: &[f64],
    out: &mut Vec<Option<u64>>,
) {
    let count = dists.iter().fold(0u64, |a, d| a.saturating_add(d.count));
    if count == 0 {
        out.extend(quantiles.iter().map(|_| None));
        return;
    }
    let live = || dists.iter().filter(|d| d.count > 0);
    let min = live().map(|d| d.min).min().unwrap_or(0);
    let max = live().map(|d| d.max).max().unwrap_or(0);
    let mut qs = quantiles.iter().peekable();
    let mut cum = 0u64;
    let mut emit = |lowest: u64, highest: u64, cum: u64, out: &mut Vec<Option<u64>>| {
        while let Some(&&q) = qs.peek() {
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            if rank > cum {
                break;
            }
            let v = if q == 0.0 { lowest } else { highest };
            out.push(Some(v.clamp(min, max)));
            qs.next();
        }
    };
    if let [d] = dists {
        for &(lowest, highest, c) in &buf[d.slots.clone()] {
            cum = cum.saturating_add(c);
            emit(lowest, highest, cum, out);
        }
    } else {
        // Slots are identified by their lowest value (same layout): merge
        // the ascending runs by it.
        let mut heads: Vec<&[Slot]> = dists.iter().map(|d| &buf[d.slots.clone()]).collect();
        while let Some(lowest) = heads.iter().filter_map(|h| h.first().map(|s| s.0)).min() {
            let mut highest = lowest;
            for h in heads.iter_mut() {
                if let Some((&(lo, hi, c), rest)) = h.split_first() {
                    if lo == lowest {
                        cum = cum.saturating_add(c);
                        highest = hi;
                        *h = rest;
                    }
                }
            }
            emit(lowest, highest, cum, out);
        }
    }
    // Unreachable with consistent counts; keeps the layout fixed regardless.
    out.extend(qs.map(|_| Some(max)));
}

pub(super) fn collect(
    registry: &Registry,
    exemplars: Option<&ExemplarFn<'_>>,
    bounds_ns: &[u64],
    quantiles: &[f64],
) -> Collected {
    let entries = registry.entries();
    // (family, operation, kind label, target shown) → its keys. Keys of one
    // label set are merged below, so a group is the unit that holds
    // snapshots at once.
    let none = Target::default();
    type GroupKey<'e> = (Fam, &'e str, Option<&'static str>, &'e Target);
    let mut groups: BTreeMap<GroupKey<'_>, Vec<&Entry>> = BTreeMap::new();
    for e in &entries {
        let fam = Fam::of(e.kind, e.target.system());
        let kind = (fam == Fam::Messaging).then(|| e.kind.as_str());
        let target = if fam.has_target() { &e.target } else { &none };
        groups
            .entry((fam, &e.name, kind, target))
            .or_default()
            .push(e);
    }

    let mut c = Collected::default();
    let mut best: Vec<Option<Exemplar>> = Vec::new();
    let mut slots: Vec<Slot> = Vec::new();
    let mut dists: Vec<Dist> = Vec::new();
    for ((fam, _, kind, target), mut keys) in groups {
        keys.sort_by_key(|e| e.class.as_str());
        let series_start = c.series.len();
        slots.clear();
        dists.clear();
        let (mut count, mut errors) = (0u64, 0u64);
        let mut i = 0;
        while i < keys.len() {
            let class = keys[i].class;
            let mut snap = keys[i].histogram.snapshot();
            let mut j = i + 1;
            while j < keys.len() && keys[j].class == class {
                // Same registry, same config: merging cannot fail.
                let _ = snap.merge(&keys[j].histogram.snapshot());
                j += 1;
            }
            let d = Dist::read(&snap, &mut slots);
            drop(snap);
            let buckets = c.buckets.len();
            cumulative_buckets(&d, &slots, bounds_ns, &mut c.buckets);
            let ex_start = c.exemplars.len();
            if let Some(f) = exemplars {
                best.clear();
                best.resize(bounds_ns.len() + 1, None);
                for key in &keys[i..j] {
                    for e in f(key).into_iter().flatten() {
                        let b = bounds_ns.partition_point(|&bound| bound < e.value_ns);
                        let slot = &mut best[b];
                        if slot.is_none_or(|old| old.timestamp_unix_ns <= e.timestamp_unix_ns) {
                            *slot = Some(e);
                        }
                    }
                }
                for (b, e) in best.iter().enumerate() {
                    // No exemplar on a bucket that counts nothing (the
                    // histogram was reset since, or the key was merged away).
                    let cum = if b < bounds_ns.len() {
                        c.buckets[buckets + b]
                    } else {
                        d.count
                    };
                    if let (Some(e), true) = (e, cum > 0) {
                        c.exemplars.push((b, *e));
                    }
                }
            }
            count = count.saturating_add(d.count);
            if class.is_error() {
                errors = errors.saturating_add(d.count);
            }
            c.series.push(HSeries {
                class,
                count: d.count,
                sum_ns: d.sum_ns,
                buckets,
                exemplars: ex_start..c.exemplars.len(),
            });
            dists.push(d);
            i = j;
        }
        let q_start = c.quantiles.len();
        if !quantiles.is_empty() {
            merged_quantiles(&dists, &slots, quantiles, &mut c.quantiles);
        }
        c.groups[fam as usize].push(Group {
            op: keys[0].name.clone(),
            kind,
            target: target.clone(),
            series: series_start..c.series.len(),
            count,
            errors,
            quantiles: q_start,
        });
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::HistogramConfig;

    #[test]
    fn merged_quantiles_equal_value_at_quantile_of_the_merge() {
        let cfg = HistogramConfig::default();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let qs = [0.0, 0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0];
        for round in 0..50 {
            let hs: Vec<crate::histogram::Histogram> = (0..1 + round % 4)
                .map(|_| crate::histogram::Histogram::new(cfg))
                .collect();
            for (i, h) in hs.iter().enumerate() {
                for _ in 0..(round * 7 + i * 13) % 40 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    h.record(x % (1u64 << (10 + x % 30)));
                }
            }
            let snaps: Vec<Snapshot> = hs.iter().map(|h| h.snapshot()).collect();
            let mut merged = Snapshot::empty(cfg);
            for s in &snaps {
                merged.merge(s).unwrap();
            }
            let mut got = Vec::new();
            let mut buf = Vec::new();
            let dists: Vec<Dist> = snaps.iter().map(|s| Dist::read(s, &mut buf)).collect();
            merged_quantiles(&dists, &buf, &qs, &mut got);
            let want: Vec<Option<u64>> = qs
                .iter()
                .map(|&q| (merged.count() > 0).then(|| merged.value_at_quantile(q)))
                .collect();
            assert_eq!(got, want, "round {round}");
        }
    }
}
