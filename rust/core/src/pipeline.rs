//! The core pipeline: span end → intake queue → histogram → trace buffer →
//! tail sampler → export queue.
//!
//! Request path (`Core::submit_span`): the finished span is moved into a
//! bounded lock-free intake queue, and that is all. The worker thread drains
//! the intake in batches (woken when a quarter of it is full, or every
//! `intake_interval_ns` while spans flow): per span, one histogram record
//! (atomics), then the span joins its trace in one of 64 trace-buffer shards
//! (a short mutex, chosen by trace id); when the local root ends the trace is
//! decided, and a kept trace is pushed on the bounded export queue (dropped
//! and counted when full). Doing this in batches on one thread keeps its code
//! and data in that thread's caches instead of the request thread's.
//!
//! The parts: `pipeline/buffer.rs` holds the trace buffer and the
//! decisions (a span joins its trace, a complete or timed-out trace is
//! decided), `pipeline/export.rs` the export queue and the export thread's
//! wake-up, `pipeline/intake.rs` a full intake; this file the core itself,
//! the request path and the worker.
//!
//! Every reader (`latency`, counters, exposition, export) first drains the
//! intake ([`Core::sync`]), so what it reads includes every span ended before
//! the call. Drains hold `intake_drain`, so spans are processed in the order
//! they were submitted: a child reaches its trace before its local root
//! decides the trace.
//!
//! A full intake never makes the request thread (which may hold the Python
//! GIL) wait for a drain: `pipeline/intake.rs` says what it does instead,
//! and why.
//!
//! Nothing blocks on I/O and no lock is held by an exporter while a request
//! needs it.

use crate::access::AccessLog;
use crate::clock::now_mono_ns;
use crate::histogram::HistogramConfig;
use crate::registry::Registry;
use crate::sampler::{SamplerConfig, TailSampler};
use crate::span::SpanRecord;
use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

mod buffer;
mod export;
mod intake;
mod lazy_queue;
use buffer::{shard_of, Mode, Outcome, PaddedShard, Shard, DECIDE_BATCH, SHARDS};
use export::ExportQueue;
pub use export::{ExportWake, KeptTrace};
use intake::Spilled;
use lazy_queue::LazyQueue;

/// Bounds and timings of the trace buffer and queues.
#[derive(Clone, Debug, PartialEq)]
pub struct BufferConfig {
    /// Traces waiting for their decision (across all shards).
    pub max_open_traces: usize,
    /// Spans kept per open trace; more are dropped and counted.
    pub max_spans_per_trace: usize,
    /// Traces whose local root has not ended are decided after this wait.
    pub decision_wait_ns: u64,
    /// Spans of kept traces waiting for an exporter.
    pub export_queue_spans: usize,
    /// How often the worker runs (timeouts, adaptive thresholds).
    pub worker_interval_ns: u64,
    /// Ended spans waiting for the worker; when full, the request thread
    /// processes its span itself.
    pub intake_spans: usize,
    /// How often the worker drains the intake while spans flow (it is also
    /// woken when a quarter of the intake is full).
    pub intake_interval_ns: u64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_open_traces: 10_000,
            max_spans_per_trace: 1_000,
            decision_wait_ns: 10_000_000_000,
            export_queue_spans: 20_000,
            worker_interval_ns: 200_000_000,
            intake_spans: 4_096,
            intake_interval_ns: 50_000_000,
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
    /// Entries the access-log queue holds (0: no access log).
    pub access_log_entries: usize,
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
    spans_dropped_trace_limit: "spans dropped because their trace had the maximum number of spans",
    spans_late_kept: "spans that arrived after their trace was kept (exported on their own)",
    spans_late_dropped: "spans that arrived after their trace was dropped",
    traces_kept_error: "traces kept because a span had an error",
    traces_kept_error_log: "traces kept because a record at ERROR or above was logged inside one of their spans",
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
    traces_discarded_no_exporter: "kept traces discarded because no exporter was set",
    traces_handed_to_exporters: "kept traces taken from the export queue for the exporters (delivered or not)",
    spans_handed_to_exporters: "spans taken from the export queue for the exporters (delivered or not)",
    sampling_randomness_presumed: "probability sampling decisions made on a trace id not flagged random (W3C random flag unset, no ot=rv): its bits were presumed random",
    spans_processed_inline: "queued spans a request thread processed itself, in order, to make room in the full intake",
    spans_processed_ahead: "spans a request thread processed itself ahead of queued ones (the intake was full while another thread drained it)",
    traces_decision_deferred: "traces whose local root a request thread processed: decided once a drain has processed what was queued before it",
    spans_dropped_intake_full: "spans of sampled traces lost (their latency recorded): the intake was full, what they needed busy and the spill queue full",
}

/// Sizes of the buffers right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferStats {
    pub open_traces: usize,
    pub open_spans: usize,
    pub export_traces: usize,
    pub export_spans: usize,
}

/// The native core of one agent (one per process).
pub struct Core {
    cfg: CoreConfig,
    pub registry: Registry,
    sampler: TailSampler,
    shards: Box<[PaddedShard]>,
    per_shard_open: usize,
    export: Mutex<ExportQueue>,
    /// The export thread sleeps on it (`pipeline/export.rs`).
    export_ready: Condvar,
    pub counters: Counters,
    /// Whether kept traces are queued for export: only while something
    /// drains the queue (an exporter is set). Written and read under the
    /// `export` lock, so no trace is queued after it was switched off.
    exporting: AtomicBool,
    /// Ended spans not yet processed (see the module docs).
    intake: LazyQueue<SpanRecord>,
    /// Held by whoever drains the intake, so spans are processed in the
    /// order they were submitted (a child before its local root).
    intake_drain: Mutex<()>,
    /// Bumped by every drain before it reads the intake's length (see the
    /// module docs: which drain may decide a deferred trace).
    drain_epoch: AtomicU64,
    /// Deferred decisions waiting in the shards.
    deferred: AtomicUsize,
    /// The epoch of the latest drain that processed everything queued (and
    /// spilled) at its start: a deferred trace whose root read an epoch
    /// below it is complete, and may be decided by whoever holds its shard.
    certified: AtomicU64,
    /// What a request thread could not hand over without waiting; taken by
    /// the next drain. Allocated on first use.
    spill: ArcSwapOption<ArrayQueue<Spilled>>,
    /// A producer already asked the worker to drain the intake.
    intake_wake_sent: AtomicBool,
    /// The worker thread, woken with `unpark` (lock-free: an atomic and a
    /// futex wake, so a request thread can wake it without any lock).
    worker: OnceLock<std::thread::Thread>,
    stop: AtomicBool,
    /// One entry per SERVER span for the access log, when it is on.
    access: Option<AccessLog>,
}

impl Core {
    pub fn new(cfg: CoreConfig) -> Self {
        Core {
            registry: Registry::new(cfg.histogram, cfg.max_metric_keys.max(1)),
            sampler: TailSampler::new(cfg.sampler.clone()),
            shards: (0..SHARDS).map(|_| PaddedShard::default()).collect(),
            per_shard_open: cfg.buffer.max_open_traces.max(1).div_ceil(SHARDS),
            export: Mutex::new(ExportQueue::default()),
            export_ready: Condvar::new(),
            counters: Counters::default(),
            exporting: AtomicBool::new(true),
            intake: LazyQueue::new(cfg.buffer.intake_spans),
            intake_drain: Mutex::new(()),
            drain_epoch: AtomicU64::new(0),
            deferred: AtomicUsize::new(0),
            certified: AtomicU64::new(0),
            spill: ArcSwapOption::const_empty(),
            intake_wake_sent: AtomicBool::new(false),
            worker: OnceLock::new(),
            stop: AtomicBool::new(false),
            access: (cfg.access_log_entries > 0).then(|| AccessLog::new(cfg.access_log_entries)),
            cfg,
        }
    }

    /// The access log's queue, when `access_log_entries` is set.
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access.as_ref()
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn sampler(&self) -> &TailSampler {
        &self.sampler
    }

    /// Request path: hand an ended span to the worker. A sampled span
    /// (`trace_flags` bit 0) joins the trace pipeline, any other only counts
    /// in the latency histograms. Never waits on a drain, never loses the
    /// span: see the module docs for a full intake.
    #[inline]
    pub fn submit_span(&self, rec: SpanRecord) {
        match self.intake.push(rec) {
            Ok(()) => {
                if self.intake.len() >= self.intake.capacity() / 4
                    && !self.intake_wake_sent.load(Ordering::Relaxed)
                    && !self.intake_wake_sent.swap(true, Ordering::AcqRel)
                {
                    self.wake();
                }
            }
            Err(rec) => self.submit_full(rec),
        }
    }

    /// Spans submitted and not yet processed.
    pub fn intake_len(&self) -> usize {
        self.intake.len()
    }

    /// With `intake_drain` held: process up to `n` spans in submission order.
    /// FIFO and one consumer at a time, so popping the length seen on entry
    /// takes every span pushed before, and never runs forever while
    /// producers keep pushing.
    fn drain_locked(&self, n: usize, now_ns: u64) -> usize {
        self.intake_wake_sent.store(false, Ordering::Release);
        let mut done = 0;
        while done < n {
            let Some(rec) = self.intake.pop() else { break };
            self.process_span(rec, now_ns);
            done += 1;
        }
        done
    }

    #[inline]
    fn process_span(&self, rec: SpanRecord, now_ns: u64) {
        if rec.trace_flags & 1 == 1 {
            self.end_span(rec, now_ns);
        } else {
            self.record_metrics(&rec);
        }
    }

    pub fn stats(&self) -> BufferStats {
        self.sync();
        let mut stats = BufferStats::default();
        for padded in self.shards.iter() {
            let shard = padded.0.lock();
            stats.open_traces += shard.open.len();
            stats.open_spans += shard.open.values().map(|t| t.spans.len()).sum::<usize>();
        }
        let q = self.export.lock();
        stats.export_traces = q.traces.len();
        stats.export_spans = q.spans;
        stats
    }

    /// Wake the worker now (a quarter-full intake, a flush): lock-free, so
    /// the request path can call it. A wake-up sent while the worker is busy
    /// is kept for its next wait.
    pub fn wake(&self) {
        if let Some(worker) = self.worker.get() {
            worker.unpark();
        }
    }

    /// Start the worker thread: it drains the intake (every
    /// `intake_interval_ns` while spans flow, at once when woken) and runs
    /// [`Core::process`] every `worker_interval_ns`, until
    /// [`Core::stop_worker`].
    pub fn spawn_worker(self: &Arc<Self>) -> std::io::Result<JoinHandle<()>> {
        let core = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name("pulsetrace-core".into())
            .spawn(move || {
                let buffer = &core.cfg.buffer;
                let interval = Duration::from_nanos(buffer.worker_interval_ns.max(1_000_000));
                let busy =
                    Duration::from_nanos(buffer.intake_interval_ns.clamp(100_000, 1_000_000_000))
                        .min(interval);
                let mut next_process = now_mono_ns();
                let mut flowing = false;
                while !core.stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(if flowing { busy } else { interval });
                    if core.stop.load(Ordering::Acquire) {
                        break;
                    }
                    flowing = core.sync() > 0;
                    let now = now_mono_ns();
                    if now >= next_process {
                        core.process(now, false);
                        next_process = now.saturating_add(buffer.worker_interval_ns);
                    }
                }
            })?;
        // A wake-up sent before this is set is lost: the worker then drains
        // at its next interval.
        let _ = self.worker.set(handle.thread().clone());
        Ok(handle)
    }

    /// Stop the worker, and end the export thread's wait
    /// ([`ExportWake::Stopped`]).
    pub fn stop_worker(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
        self.kick_export();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{SpanKind, StatusClass};

    pub(super) fn core_with(probability: f64, buffer: BufferConfig) -> Core {
        Core::new(CoreConfig {
            max_metric_keys: 100,
            sampler: SamplerConfig {
                probability,
                adaptive_quantile: 0.0,
                ..SamplerConfig::default()
            },
            buffer,
            ..CoreConfig::default()
        })
    }

    pub(super) fn core(probability: f64) -> Core {
        core_with(
            probability,
            BufferConfig {
                max_spans_per_trace: 3,
                export_queue_spans: 10,
                decision_wait_ns: 1_000,
                ..BufferConfig::default()
            },
        )
    }

    pub(super) fn rec(trace: u128, id: u64, parent: u64) -> SpanRecord {
        let mut r = SpanRecord::new(trace, id, parent, "op");
        r.duration_ns = 1_000;
        r
    }

    pub(super) fn count(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    #[test]
    fn the_worker_decides_timed_out_traces_in_the_background() {
        let c = Arc::new(core_with(
            1.0,
            BufferConfig {
                worker_interval_ns: 1_000_000,
                decision_wait_ns: 5_000_000,
                ..BufferConfig::default()
            },
        ));
        let h = c.spawn_worker().unwrap();
        c.end_span(rec(1, 2, 1), now_mono_ns());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while c.stats().export_traces == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(c.stats().export_traces, 1);
        assert_eq!(count(&c.counters.traces_decided_on_timeout), 1);
        c.stop_worker();
        h.join().unwrap();
    }

    /// 8 threads each end 10,000 traces of three spans (two children, then
    /// the local root) through `end`.
    pub(super) fn eight_threads_of_traces(c: &Arc<Core>, end: fn(&Core, SpanRecord)) {
        let threads: Vec<_> = (0..8u128)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u128 {
                        let trace = (t << 64) | (i + 1);
                        end(&c, rec(trace, 2, 1));
                        end(&c, rec(trace, 3, 1));
                        end(&c, rec(trace, 1, 0));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    pub(super) fn intake_core(intake_spans: usize) -> Arc<Core> {
        Arc::new(core_with(
            1.0,
            BufferConfig {
                max_open_traces: 1 << 20,
                export_queue_spans: 1 << 22,
                intake_spans,
                intake_interval_ns: 1_000_000,
                ..BufferConfig::default()
            },
        ))
    }

    #[test]
    fn submitted_spans_are_seen_by_every_reader() {
        let c = intake_core(64);
        c.submit_span(rec(7, 2, 1));
        c.submit_span(rec(7, 1, 0));
        assert_eq!(c.intake_len(), 2, "no worker: nothing processed yet");
        // stats, drain_export, process and adopt_export all sync first.
        assert_eq!(c.stats().export_traces, 1);
        assert_eq!(c.intake_len(), 0);
        let out = c.drain_export(usize::MAX);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].spans.len(), 2, "the child reached its trace first");
        let (snap, _) = c.registry.merged(SpanKind::Internal, "op").unwrap();
        assert_eq!(snap.count(), 2);
        assert_eq!(count(&c.counters.spans_processed_inline), 0);
    }

    #[test]
    fn unsampled_spans_only_count_in_the_histograms() {
        let c = intake_core(64);
        let mut r = rec(9, 1, 0);
        r.trace_flags = 0;
        c.submit_span(r);
        assert_eq!(c.sync(), 1);
        assert_eq!(c.stats().export_traces, 0);
        assert_eq!(count(&c.counters.traces_kept_probabilistic), 0);
        let (snap, _) = c.registry.merged(SpanKind::Internal, "op").unwrap();
        assert_eq!(snap.count(), 1);
    }

    #[test]
    fn spans_are_keyed_by_what_they_talk_to() {
        use crate::span::AttrValue;
        use crate::target::TargetRef;
        let c = intake_core(64);
        let client = |trace: u128, attrs: &[(&str, &str)]| {
            let mut r = rec(trace, 1, 0);
            r.kind = SpanKind::Client;
            r.name = "GET".into();
            r.attributes = attrs
                .iter()
                .map(|(k, v)| (Arc::from(*k), AttrValue::Str(Arc::from(*v))))
                .collect();
            r
        };
        let http = [("http.request.method", "GET"), ("server.address", "h")];
        let redis = [("db.system.name", "redis"), ("db.operation.name", "GET")];
        for t in 1..=10u128 {
            let attrs: &[(&str, &str)] = match t {
                1..=5 => &http,
                6..=8 => &redis,
                _ => &[],
            };
            let mut span = client(t, attrs);
            // Unsampled spans (metrics only) are keyed the same way.
            span.trace_flags = (t % 2) as u8;
            c.submit_span(span);
        }
        c.sync();
        let count = |attrs: &[(&str, &str)]| {
            let a = client(0, attrs).attributes;
            let target = TargetRef::of(SpanKind::Client, &a);
            c.registry
                .get_target(SpanKind::Client, "GET", target, StatusClass::Ok)
                .map(|h| h.snapshot().count())
        };
        assert_eq!(count(&http), Some(5));
        assert_eq!(count(&redis), Some(3));
        assert_eq!(count(&[]), Some(2));
        let (all, _) = c.registry.merged(SpanKind::Client, "GET").unwrap();
        assert_eq!(all.count(), 10);
        // A kept trace's exemplar goes to its own key.
        let a = client(0, &redis).attributes;
        let ex = c.registry.exemplars(
            SpanKind::Client,
            "GET",
            TargetRef::of(SpanKind::Client, &a),
            StatusClass::Ok,
            &[u64::MAX],
        );
        assert_eq!(ex[0].map(|e| e.trace_id), Some(7));
    }

    /// Every span of `traces` 3-span traces is in the histograms, and in a
    /// kept trace (`out`, then what is left to take) or counted as left out
    /// of it; with none left out, every trace is whole and decided once.
    pub(super) fn assert_every_trace_whole(c: &Core, mut out: Vec<KeptTrace>, traces: usize) {
        // Traces whose root was left out are still open: decide them.
        c.process(now_mono_ns(), true);
        out.extend(c.drain_export(usize::MAX));
        let (snap, _) = c.registry.merged(SpanKind::Internal, "op").unwrap();
        assert_eq!(snap.count() as usize, 3 * traces, "every span recorded");
        let left_out = count(&c.counters.spans_dropped_intake_full) as usize;
        let spans: usize = out.iter().map(|t| t.spans.len()).sum();
        assert_eq!(spans + left_out, 3 * traces, "every span accounted for");
        assert_eq!(count(&c.counters.spans_late_kept), 0);
        assert_eq!(c.stats().open_traces, 0);
        assert_eq!(c.deferred.load(Ordering::Acquire), 0);
        if left_out == 0 {
            assert_eq!(out.len(), traces, "every trace decided once");
            assert!(out.iter().all(|t| t.spans.len() == 3), "traces whole");
        }
    }

    #[test]
    fn the_worker_drains_the_intake_without_a_reader() {
        let c = intake_core(1024);
        let h = c.spawn_worker().unwrap();
        c.submit_span(rec(5, 1, 0));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // Read the counter, not stats(): stats() would drain the intake itself.
        while count(&c.counters.traces_kept_probabilistic) == 0
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(count(&c.counters.traces_kept_probabilistic), 1);
        assert_eq!(c.intake_len(), 0);
        c.stop_worker();
        h.join().unwrap();
    }

    #[test]
    fn many_threads_submit_while_the_worker_and_readers_drain() {
        // A small intake, so the worker's wake-ups, the callers' own
        // processing and the readers' syncs all happen at once.
        let c = intake_core(256);
        let h = c.spawn_worker().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut taken = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    taken.extend(c.drain_export(512));
                }
                taken
            })
        };
        eight_threads_of_traces(&c, |c, r| c.submit_span(r));
        stop.store(true, Ordering::Release);
        let out = reader.join().unwrap();
        c.stop_worker();
        h.join().unwrap();
        assert_every_trace_whole(&c, out, 80_000);
    }

    #[test]
    fn many_threads_end_spans_without_losing_any() {
        let c = Arc::new(core_with(
            1.0,
            BufferConfig {
                max_open_traces: 1 << 20,
                export_queue_spans: 1 << 22,
                ..BufferConfig::default()
            },
        ));
        eight_threads_of_traces(&c, |c, r| c.end_span(r, 1));
        let out = c.drain_export(usize::MAX);
        assert_eq!(out.len(), 80_000);
        assert!(out.iter().all(|t| t.spans.len() == 3));
        assert_eq!(
            c.registry
                .merged(SpanKind::Internal, "op")
                .unwrap()
                .0
                .count(),
            240_000
        );
        assert_eq!(c.stats().open_traces, 0);
    }
}
