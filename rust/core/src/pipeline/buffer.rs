//! The trace buffer: a span joins its trace in one of 64 shards, and a
//! trace is decided by the tail sampler when its local root ends, when it
//! waited the decision wait, or when its shard is full (the oldest is
//! evicted); a kept trace goes to the export queue. Late spans follow their
//! trace's recent decision. Request threads that process spans themselves
//! (`pipeline/intake.rs`) go through [`Core::place`] with their [`Mode`].

use super::{Core, KeptTrace, Mutex, Ordering};
use crate::registry::ExemplarSample;
use crate::sampler::{Decision, DropReason, KeepReason};
use crate::span::SpanRecord;
use crate::target::TargetRef;
use std::collections::{HashMap, VecDeque};

/// Hashes a trace id by folding its halves: ids are random (W3C), so this
/// is as good as SipHash here at a fraction of the cost on the request path.
#[derive(Default, Clone, Copy)]
pub(super) struct TraceIdHasher(u64);

impl std::hash::Hasher for TraceIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u128 keys; FNV-1a keeps it correct anyway.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u128(&mut self, id: u128) {
        self.0 = ((id as u64) ^ ((id >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(super) type TraceMap<V> = HashMap<u128, V, std::hash::BuildHasherDefault<TraceIdHasher>>;

pub(super) struct OpenTrace {
    pub(super) spans: Vec<SpanRecord>,
    /// The local root was processed ahead of queued spans: the trace is
    /// decided by a later drain ([`Core::decide_deferred`]).
    pub(super) root_deferred: bool,
}

/// Recent decisions, for late spans: a small direct-mapped table (a newer
/// decision overwrites an older one in the same slot), so remembering costs
/// one cache line on the request path instead of a hash-map insert and
/// eviction. A late span whose decision was overwritten is buffered as a
/// new trace and decided after the decision wait.
struct Decisions {
    slots: Box<[(u128, bool)]>,
}

const DECISION_SLOTS: usize = 64;

impl Default for Decisions {
    fn default() -> Self {
        Decisions {
            slots: vec![(0, false); DECISION_SLOTS].into_boxed_slice(),
        }
    }
}

impl Decisions {
    /// Trace ids are never 0, so 0 marks an empty slot.
    fn slot(id: u128) -> usize {
        let folded = (id as u64) ^ ((id >> 64) as u64);
        (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % DECISION_SLOTS
    }

    #[inline]
    fn get(&self, id: u128) -> Option<bool> {
        let (k, kept) = self.slots[Decisions::slot(id)];
        (k == id).then_some(kept)
    }

    #[inline]
    fn set(&mut self, id: u128, kept: bool) {
        self.slots[Decisions::slot(id)] = (id, kept);
    }
}

/// One shard of the trace buffer: the open traces whose id hashes here, the
/// order they arrived in (for the decision wait and eviction), and the
/// recent decisions (for late spans).
#[derive(Default)]
pub(super) struct Shard {
    pub(super) open: TraceMap<OpenTrace>,
    arrival: VecDeque<(u128, u64)>,
    decided: Decisions,
    /// Traces whose local root was processed ahead of queued spans, with
    /// the drain epoch read then (see the module docs).
    pub(super) deferred: VecDeque<(u128, u64)>,
}

pub(super) const SHARDS: usize = 64;

/// Traces decided per hold of a shard's lock by a drain or the worker's
/// timeouts: a request thread may wait for a shard, so none is held long.
pub(super) const DECIDE_BATCH: usize = 16;

/// A shard on its own cache line(s), so shards do not false-share.
#[repr(align(128))]
#[derive(Default)]
pub(super) struct PaddedShard(pub(super) Mutex<Shard>);

pub(super) fn shard_of(trace_id: u128) -> usize {
    // The low bits of a trace id are random (W3C level 2); fold in the high
    // half for ids from older generators.
    ((trace_id as u64) ^ ((trace_id >> 64) as u64)) as usize % SHARDS
}

pub(super) enum Outcome {
    None,
    Export(KeptTrace),
}

/// Who processes a span, and so what [`Core::accept`] may do with it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A drain, in submission order: a local root decides its trace.
    Drain,
    /// A drain taking a spilled span (read `epoch` on its request thread):
    /// a local root leaves its trace to [`Core::decide_deferred`].
    Spilled(u64),
    /// A request thread processing a span ahead of queued ones (read
    /// `epoch`): as `Spilled`.
    Request(u64),
    /// A request thread processing the oldest queued span, nothing spilled
    /// pending: in order, as a drain.
    RequestInOrder,
}

impl Mode {
    fn deferred_epoch(self) -> Option<u64> {
        match self {
            Mode::Drain | Mode::RequestInOrder => None,
            Mode::Spilled(epoch) | Mode::Request(epoch) => Some(epoch),
        }
    }
}

impl Core {
    /// Process one span now, on this thread: record the duration, add the
    /// span to its trace, and decide the trace if this is its local root.
    #[inline]
    pub fn end_span(&self, rec: SpanRecord, now_ns: u64) {
        self.record_metrics(&rec);
        self.place(rec, now_ns, Mode::Drain);
    }

    /// The span joins its trace (`mode`: see [`Mode`]), in a drain.
    #[inline]
    pub(super) fn place(&self, rec: SpanRecord, now_ns: u64, mode: Mode) {
        let mut evicted = Vec::new();
        let outcome = {
            let mut shard = self.shards[shard_of(rec.trace_id)].0.lock();
            self.accept(&mut shard, rec, now_ns, mode, &mut evicted)
        };
        if let Outcome::Export(t) = outcome {
            self.enqueue(t);
        }
        for t in evicted {
            self.enqueue(t);
        }
    }

    /// Record a span's duration in its histogram, keyed by (kind, name,
    /// target, status class): the target (what it talks to) is read from its
    /// attributes here, on the worker. A span that is not traced
    /// (head-sampled out) only does this.
    #[inline]
    pub fn record_metrics(&self, rec: &SpanRecord) {
        let target = TargetRef::of(rec.kind, &rec.attributes);
        self.registry.record_target(
            rec.kind,
            &rec.name,
            target,
            rec.status_class(),
            rec.duration_ns,
        );
        if rec.http_status == 429 {
            self.registry
                .record_rate_limited(rec.kind, &rec.name, target);
        }
        if let Some(access) = &self.access {
            access.offer(rec);
        }
    }

    /// The span joins its trace; what a local root, a full buffer or a
    /// late span leads to depends on `mode` ([`Mode`]). Traces evicted to
    /// make room go to `evicted`, for the caller to enqueue once the shard
    /// is unlocked.
    pub(super) fn accept(
        &self,
        shard: &mut Shard,
        rec: SpanRecord,
        now_ns: u64,
        mode: Mode,
        evicted: &mut Vec<KeptTrace>,
    ) -> Outcome {
        let id = rec.trace_id;
        let deferred = mode.deferred_epoch();
        let decided = shard.decided.get(id);
        // A trace decided "drop" can still enter this process again: another
        // consumer run or request of the same trace (a new local root), and
        // the spans that fail in it. Those are judged afresh (their trace id
        // gives the same probabilistic verdict, but an error or a slow run
        // keeps them), not dropped as late spans of the earlier decision.
        let judged_afresh = decided == Some(false) && (rec.local_root || rec.is_error());
        if let Some(kept) = decided.filter(|_| !judged_afresh) {
            if kept {
                self.counters
                    .spans_late_kept
                    .fetch_add(1, Ordering::Relaxed);
                let mut rec = rec;
                self.sampler.stamp(&mut rec);
                return Outcome::Export(KeptTrace {
                    trace_id: id,
                    reason: None,
                    spans: vec![rec],
                });
            }
            self.counters
                .spans_late_dropped
                .fetch_add(1, Ordering::Relaxed);
            return Outcome::None;
        }
        if rec.local_root && deferred.is_none() && !shard.open.contains_key(&id) {
            // A trace of one span (or whose other spans were all late): no
            // buffering at all.
            let spans = vec![rec];
            return self.decide_spans(shard, id, spans, now_ns);
        }
        if !shard.open.contains_key(&id) {
            while shard.open.len() >= self.per_shard_open {
                let Some((old, _)) = shard.arrival.pop_front() else {
                    break;
                };
                if shard.open.contains_key(&old) {
                    self.counters.traces_evicted.fetch_add(1, Ordering::Relaxed);
                    if let Outcome::Export(t) = self.decide(shard, old, now_ns) {
                        evicted.push(t);
                    }
                }
            }
            shard.arrival.push_back((id, now_ns));
            shard.open.insert(
                id,
                OpenTrace {
                    spans: Vec::new(),
                    root_deferred: false,
                },
            );
        }
        let local_root = rec.local_root;
        let trace = shard.open.get_mut(&id).expect("inserted above");
        if trace.spans.len() < self.cfg.buffer.max_spans_per_trace.max(1) {
            trace.spans.push(rec);
        } else {
            self.counters
                .spans_dropped_trace_limit
                .fetch_add(1, Ordering::Relaxed);
        }
        if local_root {
            let Some(epoch) = deferred else {
                return self.decide(shard, id, now_ns);
            };
            trace.root_deferred = true;
            shard.deferred.push_back((id, epoch));
            self.counters
                .traces_decision_deferred
                .fetch_add(1, Ordering::Relaxed);
            // Counted while the caller still holds the shard: a drain that
            // sees the count locks the shard after this and finds the entry.
            self.deferred.fetch_add(1, Ordering::AcqRel);
        }
        Outcome::None
    }

    pub(super) fn decide(&self, shard: &mut Shard, id: u128, now_ns: u64) -> Outcome {
        match shard.open.remove(&id) {
            Some(trace) => self.decide_spans(shard, id, trace.spans, now_ns),
            None => Outcome::None,
        }
    }

    fn decide_spans(
        &self,
        shard: &mut Shard,
        id: u128,
        spans: Vec<SpanRecord>,
        now_ns: u64,
    ) -> Outcome {
        let decision = self.sampler.decide(&spans, now_ns);
        let c = &self.counters;
        if self.sampler.presumes_randomness(&spans) {
            c.sampling_randomness_presumed
                .fetch_add(1, Ordering::Relaxed);
        }
        let counter = match decision {
            Decision::Keep(KeepReason::Error) => &c.traces_kept_error,
            Decision::Keep(KeepReason::ErrorLog) => &c.traces_kept_error_log,
            Decision::Keep(KeepReason::Slow) => &c.traces_kept_slow,
            Decision::Keep(KeepReason::Adaptive) => &c.traces_kept_adaptive,
            Decision::Keep(KeepReason::Attribute) => &c.traces_kept_attribute,
            Decision::Keep(KeepReason::Probabilistic) => &c.traces_kept_probabilistic,
            Decision::Drop(DropReason::SampledOut) => &c.traces_dropped_sampled_out,
            Decision::Drop(DropReason::RateLimited) => &c.traces_dropped_rate_limited,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        shard.decided.set(id, decision.is_keep());
        if decision.is_keep() {
            for s in &spans {
                self.registry.record_exemplar(
                    s.kind,
                    &s.name,
                    TargetRef::of(s.kind, &s.attributes),
                    s.status_class(),
                    ExemplarSample {
                        value_ns: s.duration_ns,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        timestamp_unix_ns: s.end_unix_ns(),
                    },
                );
            }
        }
        match decision {
            Decision::Keep(reason) => {
                let mut spans = spans;
                for s in &mut spans {
                    self.sampler.stamp(s);
                }
                Outcome::Export(KeptTrace {
                    trace_id: id,
                    reason: Some(reason),
                    spans,
                })
            }
            Decision::Drop(_) => Outcome::None,
        }
    }

    /// Worker step: refresh the adaptive thresholds and decide the traces
    /// that waited longer than the decision wait. `force` decides every open
    /// trace (shutdown).
    pub fn process(&self, now_ns: u64, force: bool) {
        self.sync();
        self.sampler.refresh_thresholds(&self.registry);
        let wait = self.cfg.buffer.decision_wait_ns;
        for padded in self.shards.iter() {
            // In batches (see `DECIDE_BATCH`).
            let mut more = true;
            while more {
                more = false;
                let mut out = Vec::new();
                {
                    let mut shard = padded.0.lock();
                    let mut decided = 0;
                    while let Some(&(id, seen)) = shard.arrival.front() {
                        if !shard.open.contains_key(&id) {
                            shard.arrival.pop_front();
                            continue;
                        }
                        if !force && seen.saturating_add(wait) > now_ns {
                            break;
                        }
                        if decided == DECIDE_BATCH {
                            more = true;
                            break;
                        }
                        decided += 1;
                        shard.arrival.pop_front();
                        if !force {
                            self.counters
                                .traces_decided_on_timeout
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        if let Outcome::Export(t) = self.decide(&mut shard, id, now_ns) {
                            out.push(t);
                        }
                    }
                }
                for t in out {
                    self.enqueue(t);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{core, core_with, count, rec};
    use super::super::BufferConfig;
    use crate::sampler::KeepReason;
    use crate::span::{SpanKind, StatusCode};

    #[test]
    fn a_trace_is_decided_when_its_local_root_ends() {
        let c = core(1.0);
        c.end_span(rec(7, 2, 1), 10);
        assert_eq!(c.stats().open_traces, 1);
        assert!(c.drain_export(100).is_empty());
        c.end_span(rec(7, 1, 0), 20);
        assert_eq!(c.stats().open_traces, 0);
        let out = c.drain_export(100);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].spans.len(), 2);
        assert_eq!(out[0].reason, Some(KeepReason::Probabilistic));
        assert_eq!(
            c.registry
                .merged(SpanKind::Internal, "op")
                .unwrap()
                .0
                .count(),
            2
        );
    }

    #[test]
    fn exported_spans_carry_the_threshold_of_the_probabilistic_policy() {
        let c = core(0.5);
        let flagged = |trace, id, parent| {
            let mut r = rec(trace, id, parent);
            r.trace_flags = 0x03;
            r.trace_state = "vendor=1".into();
            r
        };
        // Selected (R = 0xc0... >= 0x80...): every span, a late one too.
        let selected = 0xc0000000000000;
        c.end_span(flagged(selected, 2, 1), 1);
        c.end_span(flagged(selected, 1, 0), 2);
        c.end_span(flagged(selected, 3, 1), 3);
        // Not selected, kept for its error: no threshold.
        let mut failed = flagged(0x10000000000000, 1, 0);
        failed.status = StatusCode::Error;
        c.end_span(failed, 4);
        let out = c.drain_export(100);
        let states: Vec<(u128, &str)> = out
            .iter()
            .flat_map(|t| t.spans.iter().map(|s| (s.trace_id, s.trace_state.as_str())))
            .collect();
        assert_eq!(
            states,
            [
                (selected, "ot=th:8,vendor=1"),
                (selected, "ot=th:8,vendor=1"),
                (selected, "ot=th:8,vendor=1"),
                (0x10000000000000, "vendor=1"),
            ]
        );
        assert_eq!(count(&c.counters.sampling_randomness_presumed), 0);
        // A root without the random flag: decided on its trace id all the
        // same, and counted.
        c.end_span(rec(0xf0000000000000, 1, 0), 5);
        assert_eq!(c.drain_export(100).len(), 1);
        assert_eq!(count(&c.counters.sampling_randomness_presumed), 1);
    }

    #[test]
    fn late_spans_follow_the_decision() {
        let kept = core(1.0);
        kept.end_span(rec(1, 1, 0), 1);
        kept.end_span(rec(1, 5, 1), 2);
        let out = kept.drain_export(100);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].reason, None);
        assert_eq!(count(&kept.counters.spans_late_kept), 1);

        let dropped = core(0.0);
        dropped.end_span(rec(1, 1, 0), 1);
        dropped.end_span(rec(1, 5, 1), 2);
        assert!(dropped.drain_export(100).is_empty());
        assert_eq!(count(&dropped.counters.spans_late_dropped), 1);
        assert_eq!(count(&dropped.counters.traces_dropped_sampled_out), 1);
    }

    #[test]
    fn a_failed_run_in_an_already_dropped_trace_is_kept() {
        // One request sends two tasks; the first task's run is dropped, the
        // second fails: its local root (and its failing child) are kept.
        let c = core(0.0);
        let mut first = rec(9, 11, 1);
        first.local_root = true;
        c.end_span(first, 1);
        assert!(c.drain_export(100).is_empty());
        let mut failing_child = rec(9, 13, 12);
        failing_child.status = StatusCode::Error;
        c.end_span(failing_child, 2);
        c.end_span(rec(9, 14, 12), 3); // a plain child of the failed run: late, dropped
        let mut second = rec(9, 12, 1);
        second.local_root = true;
        second.status = StatusCode::Error;
        c.end_span(second, 4);
        let out = c.drain_export(100);
        assert_eq!(out.len(), 1);
        let mut ids: Vec<u64> = out[0].spans.iter().map(|s| s.span_id).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![12, 13]);
        assert_eq!(out[0].reason, Some(KeepReason::Error));
        assert_eq!(count(&c.counters.spans_late_dropped), 1);
        // The trace is kept now: a later run of it follows that decision.
        let mut third = rec(9, 15, 1);
        third.local_root = true;
        c.end_span(third, 5);
        let out = c.drain_export(100);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].spans[0].span_id, out[0].reason), (15, None));
    }

    #[test]
    fn a_run_that_does_not_fail_in_a_dropped_trace_is_dropped_again() {
        let c = core(0.0);
        for (span, at) in [(11, 1), (12, 2)] {
            let mut run = rec(9, span, 1);
            run.local_root = true;
            c.end_span(run, at);
        }
        assert!(c.drain_export(100).is_empty());
        assert_eq!(count(&c.counters.traces_dropped_sampled_out), 2);
        assert_eq!(count(&c.counters.spans_late_dropped), 0);
    }

    #[test]
    fn errors_are_kept_at_probability_zero() {
        let c = core(0.0);
        let mut child = rec(3, 2, 1);
        child.status = StatusCode::Error;
        c.end_span(child, 1);
        c.end_span(rec(3, 1, 0), 2);
        assert_eq!(c.drain_export(100).len(), 1);
        assert_eq!(count(&c.counters.traces_kept_error), 1);
        assert_eq!(count(&c.counters.traces_dropped_sampled_out), 0);
    }

    #[test]
    fn traces_without_a_local_root_are_decided_after_the_wait() {
        let c = core(1.0);
        c.end_span(rec(9, 2, 1), 100);
        c.process(500, false);
        assert_eq!(c.stats().open_traces, 1);
        c.process(1_200, false);
        assert_eq!(c.stats().open_traces, 0);
        assert_eq!(count(&c.counters.traces_decided_on_timeout), 1);
        assert_eq!(c.drain_export(100).len(), 1);
    }

    #[test]
    fn the_open_trace_bound_evicts_the_oldest() {
        let c = core_with(
            1.0,
            BufferConfig {
                max_open_traces: 64,
                export_queue_spans: 1 << 20,
                ..BufferConfig::default()
            },
        );
        // One open trace per shard is the bound: a second trace in a shard
        // evicts (decides) the first.
        for t in 1..=10_000u128 {
            c.end_span(rec(t * 0x1_0000_0001, 2, 1), t as u64);
        }
        let stats = c.stats();
        assert!(stats.open_traces <= 64, "{stats:?}");
        assert_eq!(
            count(&c.counters.traces_evicted) as usize + stats.open_traces,
            10_000
        );
        assert_eq!(stats.export_traces + stats.open_traces, 10_000);
    }
}
