//! The core pipeline: span end → histogram + ingest queue (request path),
//! then, on the worker thread: trace buffer → tail sampler → export queue.
//!
//! Request path (`Core::end_span`): one histogram record (atomics) and one
//! push on a bounded lock-free queue. Nothing else; when the queue is full
//! the span is dropped and counted. The trace buffer and the export queue
//! are behind mutexes that only the worker, `flush` and exporters take.

use crate::clock::now_mono_ns;
use crate::histogram::HistogramConfig;
use crate::registry::Registry;
use crate::sampler::{Decision, DropReason, KeepReason, SamplerConfig, TailSampler};
use crate::span::SpanRecord;
use crossbeam_queue::ArrayQueue;
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Bounds and timings of the trace buffer and queues.
#[derive(Clone, Debug, PartialEq)]
pub struct BufferConfig {
    /// Ended spans waiting for the worker (lock-free ring).
    pub ingest_capacity: usize,
    /// Traces waiting for their decision.
    pub max_open_traces: usize,
    /// Spans kept per open trace; more are dropped and counted.
    pub max_spans_per_trace: usize,
    /// Traces whose local root has not ended are decided after this wait.
    pub decision_wait_ns: u64,
    /// Spans of kept traces waiting for an exporter.
    pub export_queue_spans: usize,
    /// How often the worker runs.
    pub worker_interval_ns: u64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            ingest_capacity: 16_384,
            max_open_traces: 10_000,
            max_spans_per_trace: 1_000,
            decision_wait_ns: 10_000_000_000,
            export_queue_spans: 20_000,
            worker_interval_ns: 50_000_000,
        }
    }
}

/// Everything the core needs, built once.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct CoreConfig {
    pub histogram: HistogramConfig,
    pub max_metric_keys: usize,
    pub sampler: SamplerConfig,
    pub buffer: BufferConfig,
}

macro_rules! counters {
    ($($name:ident: $doc:literal,)*) => {
        /// Counters of every outcome; read with [`Counters::snapshot`].
        #[derive(Default, Debug)]
        pub struct Counters { $(#[doc = $doc] pub $name: AtomicU64,)* }

        impl Counters {
            /// (name, doc, value) of every counter.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $doc, self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    spans_received: "spans taken from the ingest queue into the trace buffer",
    spans_dropped_ingest_full: "spans dropped because the ingest queue was full",
    spans_dropped_trace_limit: "spans dropped because their trace had the maximum number of spans",
    spans_late_kept: "spans that arrived after their trace was kept (exported on their own)",
    spans_late_dropped: "spans that arrived after their trace was dropped",
    traces_kept_error: "traces kept because a span had an error",
    traces_kept_slow: "traces kept because the root was slower than the fixed threshold",
    traces_kept_adaptive: "traces kept because the root was slower than its operation's live quantile",
    traces_kept_attribute: "traces kept by an attribute rule",
    traces_kept_probabilistic: "traces kept by the probabilistic baseline",
    traces_dropped_sampled_out: "traces no policy kept",
    traces_dropped_rate_limited: "traces a policy kept but the rate limit refused",
    traces_decided_on_timeout: "traces decided after the decision wait (local root never ended here)",
    traces_evicted: "traces decided early because the buffer had the maximum number of open traces",
    traces_dropped_export_full: "kept traces dropped because the export queue was full",
    spans_dropped_export_full: "spans of kept traces dropped because the export queue was full",
    traces_exported: "kept traces handed to an exporter",
    spans_exported: "spans handed to an exporter",
}

/// A kept trace (or a late span of one) waiting for export.
#[derive(Debug)]
pub struct KeptTrace {
    pub trace_id: u128,
    /// `None` for late spans of a trace kept earlier.
    pub reason: Option<KeepReason>,
    pub spans: Vec<SpanRecord>,
}

struct OpenTrace {
    spans: Vec<SpanRecord>,
    first_seen_ns: u64,
}

struct Buffer {
    open: HashMap<u128, OpenTrace>,
    arrival: VecDeque<(u128, u64)>,
    decided: HashMap<u128, bool>,
    decided_order: VecDeque<u128>,
    ready: Vec<u128>,
    sampler: TailSampler,
}

struct ExportQueue {
    traces: VecDeque<KeptTrace>,
    spans: usize,
}

/// Sizes of the buffers right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferStats {
    pub ingest_len: usize,
    pub open_traces: usize,
    pub open_spans: usize,
    pub export_traces: usize,
    pub export_spans: usize,
}

/// The native core of one agent (one per process).
pub struct Core {
    cfg: CoreConfig,
    pub registry: Registry,
    ingest: ArrayQueue<Box<SpanRecord>>,
    buffer: Mutex<Buffer>,
    export: Mutex<ExportQueue>,
    pub counters: Counters,
    wake: Mutex<bool>,
    wake_cv: Condvar,
    stop: AtomicBool,
}

impl Core {
    pub fn new(cfg: CoreConfig) -> Self {
        Core {
            registry: Registry::new(cfg.histogram, cfg.max_metric_keys.max(1)),
            ingest: ArrayQueue::new(cfg.buffer.ingest_capacity.max(1)),
            buffer: Mutex::new(Buffer {
                open: HashMap::new(),
                arrival: VecDeque::new(),
                decided: HashMap::new(),
                decided_order: VecDeque::new(),
                ready: Vec::new(),
                sampler: TailSampler::new(cfg.sampler.clone()),
            }),
            export: Mutex::new(ExportQueue {
                traces: VecDeque::new(),
                spans: 0,
            }),
            counters: Counters::default(),
            wake: Mutex::new(false),
            wake_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            cfg,
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// Request path: record the duration and queue the span for its trace.
    #[inline]
    pub fn end_span(&self, rec: Box<SpanRecord>) {
        self.registry
            .record(rec.kind, &rec.name, rec.status_class(), rec.duration_ns);
        if self.ingest.push(rec).is_err() {
            self.counters
                .spans_dropped_ingest_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Worker step: move ended spans into their traces, decide the traces
    /// that are complete or waited long enough. `force` decides every open
    /// trace (shutdown).
    pub fn process(&self, now_ns: u64, force: bool) {
        let mut buf = self.buffer.lock();
        while let Some(rec) = self.ingest.pop() {
            self.counters.spans_received.fetch_add(1, Ordering::Relaxed);
            self.accept(&mut buf, *rec, now_ns);
        }
        let ready = std::mem::take(&mut buf.ready);
        for id in ready {
            self.decide(&mut buf, id, now_ns);
        }
        let wait = self.cfg.buffer.decision_wait_ns;
        while let Some(&(id, seen)) = buf.arrival.front() {
            if !buf.open.contains_key(&id) {
                buf.arrival.pop_front();
                continue;
            }
            if !force && seen.saturating_add(wait) > now_ns {
                break;
            }
            buf.arrival.pop_front();
            if !force {
                self.counters
                    .traces_decided_on_timeout
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.decide(&mut buf, id, now_ns);
        }
    }

    fn accept(&self, buf: &mut Buffer, rec: SpanRecord, now_ns: u64) {
        let id = rec.trace_id;
        if let Some(&kept) = buf.decided.get(&id) {
            if kept {
                self.counters.spans_late_kept.fetch_add(1, Ordering::Relaxed);
                self.enqueue(KeptTrace {
                    trace_id: id,
                    reason: None,
                    spans: vec![rec],
                });
            } else {
                self.counters
                    .spans_late_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        if !buf.open.contains_key(&id) {
            while buf.open.len() >= self.cfg.buffer.max_open_traces.max(1) {
                let Some((old, _)) = buf.arrival.pop_front() else { break };
                if buf.open.contains_key(&old) {
                    self.counters.traces_evicted.fetch_add(1, Ordering::Relaxed);
                    self.decide(buf, old, now_ns);
                }
            }
            buf.arrival.push_back((id, now_ns));
            buf.open.insert(
                id,
                OpenTrace {
                    spans: Vec::new(),
                    first_seen_ns: now_ns,
                },
            );
        }
        let local_root = rec.local_root;
        let trace = buf.open.get_mut(&id).expect("inserted above");
        if trace.spans.len() < self.cfg.buffer.max_spans_per_trace.max(1) {
            trace.spans.push(rec);
        } else {
            self.counters
                .spans_dropped_trace_limit
                .fetch_add(1, Ordering::Relaxed);
        }
        if local_root {
            buf.ready.push(id);
        }
    }

    fn decide(&self, buf: &mut Buffer, id: u128, now_ns: u64) {
        let Some(trace) = buf.open.remove(&id) else { return };
        let _ = trace.first_seen_ns;
        let decision = buf.sampler.decide(&trace.spans, &self.registry, now_ns);
        let c = &self.counters;
        let counter = match decision {
            Decision::Keep(KeepReason::Error) => &c.traces_kept_error,
            Decision::Keep(KeepReason::Slow) => &c.traces_kept_slow,
            Decision::Keep(KeepReason::Adaptive) => &c.traces_kept_adaptive,
            Decision::Keep(KeepReason::Attribute) => &c.traces_kept_attribute,
            Decision::Keep(KeepReason::Probabilistic) => &c.traces_kept_probabilistic,
            Decision::Drop(DropReason::SampledOut) => &c.traces_dropped_sampled_out,
            Decision::Drop(DropReason::RateLimited) => &c.traces_dropped_rate_limited,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let keep = decision.is_keep();
        buf.decided.insert(id, keep);
        buf.decided_order.push_back(id);
        let remember = self.cfg.buffer.max_open_traces.max(1) * 2;
        while buf.decided_order.len() > remember {
            if let Some(old) = buf.decided_order.pop_front() {
                buf.decided.remove(&old);
            }
        }
        if let Decision::Keep(reason) = decision {
            self.enqueue(KeptTrace {
                trace_id: id,
                reason: Some(reason),
                spans: trace.spans,
            });
        }
    }

    fn enqueue(&self, trace: KeptTrace) {
        let n = trace.spans.len();
        let mut q = self.export.lock();
        if q.spans + n > self.cfg.buffer.export_queue_spans {
            drop(q);
            self.counters
                .traces_dropped_export_full
                .fetch_add(1, Ordering::Relaxed);
            self.counters
                .spans_dropped_export_full
                .fetch_add(n as u64, Ordering::Relaxed);
            return;
        }
        q.spans += n;
        q.traces.push_back(trace);
    }

    /// Take kept traces for export, up to about `max_spans` spans (at least
    /// one trace if any is waiting).
    pub fn drain_export(&self, max_spans: usize) -> Vec<KeptTrace> {
        let mut q = self.export.lock();
        let mut out = Vec::new();
        let mut taken = 0;
        while let Some(front) = q.traces.front() {
            let n = front.spans.len();
            if !out.is_empty() && taken + n > max_spans {
                break;
            }
            let t = q.traces.pop_front().expect("front exists");
            q.spans -= n;
            taken += n;
            out.push(t);
        }
        drop(q);
        self.counters
            .traces_exported
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        self.counters
            .spans_exported
            .fetch_add(taken as u64, Ordering::Relaxed);
        out
    }

    /// Move another core's kept traces into this one's export queue (after
    /// a reconfiguration), within this queue's bound.
    pub fn adopt_export(&self, other: &Core) {
        for t in other.drain_export(usize::MAX) {
            self.enqueue(t);
        }
    }

    pub fn stats(&self) -> BufferStats {
        let (open_traces, open_spans) = {
            let b = self.buffer.lock();
            (b.open.len(), b.open.values().map(|t| t.spans.len()).sum())
        };
        let q = self.export.lock();
        BufferStats {
            ingest_len: self.ingest.len(),
            open_traces,
            open_spans,
            export_traces: q.traces.len(),
            export_spans: q.spans,
        }
    }

    /// Wake the worker now (e.g. for a flush).
    pub fn wake(&self) {
        *self.wake.lock() = true;
        self.wake_cv.notify_all();
    }

    /// Start the worker thread; it runs [`Core::process`] every
    /// `worker_interval_ns` until [`Core::stop_worker`].
    pub fn spawn_worker(self: &Arc<Self>) -> std::io::Result<JoinHandle<()>> {
        let core = Arc::clone(self);
        std::thread::Builder::new()
            .name("pulsetrace-core".into())
            .spawn(move || {
                let interval = Duration::from_nanos(core.cfg.buffer.worker_interval_ns.max(1_000_000));
                while !core.stop.load(Ordering::Acquire) {
                    {
                        let mut woken = core.wake.lock();
                        if !*woken {
                            core.wake_cv.wait_for(&mut woken, interval);
                        }
                        *woken = false;
                    }
                    if core.stop.load(Ordering::Acquire) {
                        break;
                    }
                    core.process(now_mono_ns(), false);
                }
            })
    }

    pub fn stop_worker(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::StatusCode;

    fn core(probability: f64) -> Core {
        Core::new(CoreConfig {
            max_metric_keys: 100,
            sampler: SamplerConfig {
                probability,
                adaptive_quantile: 0.0,
                ..SamplerConfig::default()
            },
            buffer: BufferConfig {
                max_open_traces: 4,
                max_spans_per_trace: 3,
                export_queue_spans: 10,
                decision_wait_ns: 1_000,
                ..BufferConfig::default()
            },
            ..CoreConfig::default()
        })
    }

    fn rec(trace: u128, id: u64, parent: u64) -> Box<SpanRecord> {
        let mut r = SpanRecord::new(trace, id, parent, "op");
        r.duration_ns = 1_000;
        Box::new(r)
    }

    fn count(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    #[test]
    fn a_trace_is_decided_when_its_local_root_ends() {
        let c = core(1.0);
        c.end_span(rec(7, 2, 1));
        c.process(10, false);
        assert_eq!(c.stats().open_traces, 1);
        c.end_span(rec(7, 1, 0));
        c.process(20, false);
        let out = c.drain_export(100);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].spans.len(), 2);
        assert_eq!(out[0].reason, Some(KeepReason::Probabilistic));
        assert_eq!(c.registry.merged(crate::span::SpanKind::Internal, "op").unwrap().0.count(), 2);
    }

    #[test]
    fn late_spans_follow_the_decision() {
        let kept = core(1.0);
        kept.end_span(rec(1, 1, 0));
        kept.process(1, false);
        kept.end_span(rec(1, 5, 1));
        kept.process(2, false);
        let out = kept.drain_export(100);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].reason, None);
        assert_eq!(count(&kept.counters.spans_late_kept), 1);

        let dropped = core(0.0);
        dropped.end_span(rec(1, 1, 0));
        dropped.process(1, false);
        dropped.end_span(rec(1, 5, 1));
        dropped.process(2, false);
        assert!(dropped.drain_export(100).is_empty());
        assert_eq!(count(&dropped.counters.spans_late_dropped), 1);
        assert_eq!(count(&dropped.counters.traces_dropped_sampled_out), 1);
    }

    #[test]
    fn errors_are_kept_at_probability_zero() {
        let c = core(0.0);
        let mut child = rec(3, 2, 1);
        child.status = StatusCode::Error;
        c.end_span(child);
        c.end_span(rec(3, 1, 0));
        c.process(1, false);
        assert_eq!(c.drain_export(100).len(), 1);
        assert_eq!(count(&c.counters.traces_kept_error), 1);
    }

    #[test]
    fn traces_without_a_local_root_are_decided_after_the_wait() {
        let c = core(1.0);
        c.end_span(rec(9, 2, 1));
        c.process(100, false);
        c.process(500, false);
        assert_eq!(c.stats().open_traces, 1);
        c.process(1_200, false);
        assert_eq!(c.stats().open_traces, 0);
        assert_eq!(count(&c.counters.traces_decided_on_timeout), 1);
        assert_eq!(c.drain_export(100).len(), 1);
    }

    #[test]
    fn bounds_are_enforced_and_counted() {
        let c = core(1.0);
        // Span limit per trace: 3.
        for i in 0..5 {
            c.end_span(rec(1, 10 + i, 1));
        }
        // Open-trace limit: 4; the fifth new trace evicts the oldest.
        for t in 2..=5 {
            c.end_span(rec(t, 1, 99));
        }
        c.process(1, false);
        assert_eq!(count(&c.counters.spans_dropped_trace_limit), 2);
        assert_eq!(count(&c.counters.traces_evicted), 1);
        assert_eq!(c.stats().open_traces, 4);
        // Export queue holds 10 spans: the evicted trace (3) is queued, then
        // forcing the rest (4 traces of 1 span) fits; more does not.
        c.process(2, true);
        assert_eq!(c.stats().export_spans, 7);
        for t in 10..15 {
            let mut r = rec(t, 1, 0);
            r.name = "big".into();
            c.end_span(r);
        }
        c.process(3, true);
        assert_eq!(c.stats().export_spans, 10);
        assert_eq!(count(&c.counters.traces_dropped_export_full), 2);
        let drained = c.drain_export(3);
        assert_eq!(drained.iter().map(|t| t.spans.len()).sum::<usize>(), 3);
        assert_eq!(c.stats().export_spans, 7);
    }

    #[test]
    fn a_full_ingest_queue_drops_and_counts() {
        let c = Core::new(CoreConfig {
            max_metric_keys: 10,
            buffer: BufferConfig {
                ingest_capacity: 2,
                ..BufferConfig::default()
            },
            ..CoreConfig::default()
        });
        for i in 0..5 {
            c.end_span(rec(1, i + 1, 0));
        }
        assert_eq!(count(&c.counters.spans_dropped_ingest_full), 3);
        // Histograms still saw every span.
        assert_eq!(c.registry.merged(crate::span::SpanKind::Internal, "op").unwrap().0.count(), 5);
    }

    #[test]
    fn the_worker_processes_in_the_background() {
        let c = Arc::new(Core::new(CoreConfig {
            max_metric_keys: 10,
            buffer: BufferConfig {
                worker_interval_ns: 1_000_000,
                ..BufferConfig::default()
            },
            ..CoreConfig::default()
        }));
        let h = c.spawn_worker().unwrap();
        c.end_span(rec(1, 1, 0));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while c.stats().export_traces == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(c.stats().export_traces, 1);
        c.stop_worker();
        h.join().unwrap();
    }

    #[test]
    fn many_threads_end_spans_without_losing_any() {
        let c = Arc::new(Core::new(CoreConfig {
            max_metric_keys: 10,
            buffer: BufferConfig {
                ingest_capacity: 1 << 20,
                max_open_traces: 1 << 20,
                export_queue_spans: 1 << 22,
                ..BufferConfig::default()
            },
            ..CoreConfig::default()
        }));
        let threads: Vec<_> = (0..8u128)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u128 {
                        let trace = (t << 64) | (i + 1);
                        c.end_span(rec(trace, 2, 1));
                        c.end_span(rec(trace, 1, 0));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        c.process(1, true);
        assert_eq!(count(&c.counters.spans_received), 160_000);
        let out = c.drain_export(usize::MAX);
        assert_eq!(out.len(), 80_000);
        assert!(out.iter().all(|t| t.spans.len() == 2));
    }
}
