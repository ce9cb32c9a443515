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
//! Every reader (`latency`, counters, exposition, export) first drains the
//! intake ([`Core::sync`]), so what it reads includes every span ended before
//! the call. Drains hold `intake_drain`, so spans are processed in the order
//! they were submitted: a child reaches its trace before its local root
//! decides the trace.
//!
//! # A full intake: the request thread never waits
//!
//! The request thread may hold the Python GIL, so it must never wait on a
//! lock another thread can hold for long: `intake_drain` is held for a whole
//! drain (up to an intake's worth of spans, and the deferred decisions) by
//! the worker or a reader. When its push finds the intake full, the request
//! thread (`submit_full`):
//!
//! 1. **No drain running** (`try_lock` of `intake_drain` succeeds): it makes
//!    room, processing the *oldest* queued span itself, then pushes its own
//!    (a few rounds if other producers take the freed slot). Order is kept,
//!    and the work is one span's, not a drain's (`spans_processed_inline`).
//! 2. **A drain is running**: that drain is popping, so a slot frees within
//!    microseconds: the push is retried a bounded number of times.
//! 3. **Still full**: the request thread processes its own span at once,
//!    ahead of the spans still queued (`spans_processed_ahead`). A child or
//!    an unsampled span can safely go first.
//!
//! Processing on a request thread (`process_here`) waits for no drain,
//! trace shard or export queue:
//! - It records the latency (atomics) and adds the span to its trace. The
//!   trace's shard is only tried, for microseconds (`try_lock_briefly`): a
//!   drain, a reader or a descheduled thread may hold it. If it stays busy
//!   the span goes to the *spill* queue (lock-free, bounded, allocated on
//!   first use), which every drain takes before the intake.
//! - The oldest queued span (step 1) is processed as a drain would, a local
//!   root deciding its trace, unless spilled spans are pending (one may be
//!   its child).
//! - A local root processed ahead (step 3) cannot decide its trace yet (its
//!   children may still be queued): the trace is marked, and the first
//!   drain that *starts* after it makes it complete, having processed
//!   everything queued and spilled at its start; that drain decides it
//!   (`traces_decision_deferred`; the drain epoch says which drain, and
//!   `certified` is the epoch of the latest such drain).
//! - Holding a shard, a request thread also decides up to `HELP_DECISIONS`
//!   certified traces there, so that request threads keep pace when the
//!   worker falls behind instead of filling the trace buffer.
//! - A kept trace it decides goes to the export queue if that is free
//!   within microseconds, else to the spill queue.
//! - Only with the spill queue full is anything lost: the span (or trace)
//!   is left out, counted (`spans_dropped_intake_full`), its latency
//!   recorded all the same.
//! - Waking the worker (on the common path too) is a thread `unpark`: an
//!   atomic and a futex wake, no lock.
//!
//! What a request thread may still wait for is held for nanoseconds or one
//! copy: a decision's rate limiter and exemplar ring, and, for the first
//! span of a new operation, the registry's growth lock (one copy of the name
//! map). Keeping the span was preferred to dropping it: processing one
//! costs about a microsecond, and dropping would lose data exactly when the
//! service is busiest; the drop is the last resort. Locks a drain takes
//! where a request thread may try them are held briefly: a shard for one
//! span, one shard's count (`stats`), or a batch of at most `DECIDE_BATCH`
//! decisions.
//!
//! Why the epoch proves the order: a deferred root reads `drain_epoch` with
//! a read-modify-write (release), after its children were pushed (or
//! spilled); a drain bumps it (acquire) before it reads the intake's length,
//! then the spill queue's. A drain whose bump follows the root's therefore
//! sees every child queued, spilled, or already processed by an earlier
//! holder of `intake_drain` (every pop happens under it), and processes the
//! first two before deciding; its epoch is then greater than the root's.
//! Spilled spans go first because a root queued after a spilled child is
//! decided as soon as the drain reaches it. Once that drain has processed
//! them it stores its epoch in `certified`, and any holder of the shard may
//! decide the trace.
//!
//! Nothing blocks on I/O and no lock is held by an exporter while a request
//! needs it.

use crate::clock::now_mono_ns;
use crate::histogram::HistogramConfig;
use crate::registry::{ExemplarSample, Registry};
use crate::sampler::{Decision, DropReason, KeepReason, SamplerConfig, TailSampler};
use crate::span::SpanRecord;
use crossbeam_queue::ArrayQueue;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

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
    spans_processed_inline: "queued spans a request thread processed itself, in order, to make room in the full intake",
    spans_processed_ahead: "spans a request thread processed itself ahead of queued ones (the intake was full while another thread drained it)",
    traces_decision_deferred: "traces whose local root a request thread processed: decided once a drain has processed what was queued before it",
    spans_dropped_intake_full: "spans of sampled traces lost (their latency recorded): the intake was full, what they needed busy and the spill queue full",
}

/// A kept trace (or a late span of one) waiting for export.
#[derive(Debug)]
pub struct KeptTrace {
    pub trace_id: u128,
    /// `None` for late spans of a trace kept earlier.
    pub reason: Option<KeepReason>,
    pub spans: Vec<SpanRecord>,
}

/// Hashes a trace id by folding its halves: ids are random (W3C), so this
/// is as good as SipHash here at a fraction of the cost on the request path.
#[derive(Default, Clone, Copy)]
struct TraceIdHasher(u64);

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

type TraceMap<V> = HashMap<u128, V, std::hash::BuildHasherDefault<TraceIdHasher>>;

struct OpenTrace {
    spans: Vec<SpanRecord>,
    /// The local root was processed ahead of queued spans: the trace is
    /// decided by a later drain ([`Core::decide_deferred`]).
    root_deferred: bool,
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
struct Shard {
    open: TraceMap<OpenTrace>,
    arrival: VecDeque<(u128, u64)>,
    decided: Decisions,
    /// Traces whose local root was processed ahead of queued spans, with
    /// the drain epoch read then (see the module docs).
    deferred: VecDeque<(u128, u64)>,
}

const SHARDS: usize = 64;

/// A full intake with no drain running: rounds of "process the oldest span,
/// push ours" before going ahead (another producer took the freed slot each
/// time).
const MAKE_ROOM_ROUNDS: usize = 4;

/// A full intake while a drain runs: pushes tried (a spin hint apart) before
/// going ahead; the drain frees a slot per span it processes.
const PUSH_RETRIES: usize = 32;

/// Certified deferred traces a request thread decides per span it places.
const HELP_DECISIONS: usize = 2;

/// The spill queue's size: the intake's, within these bounds.
const SPILL_MIN: usize = 1024;
const SPILL_MAX: usize = 4096;

/// Traces decided per hold of a shard's lock by a drain or the worker's
/// timeouts: a request thread may wait for a shard, so none is held long.
const DECIDE_BATCH: usize = 16;

/// A shard on its own cache line(s), so shards do not false-share.
#[repr(align(128))]
#[derive(Default)]
struct PaddedShard(Mutex<Shard>);

struct ExportQueue {
    traces: VecDeque<KeptTrace>,
    spans: usize,
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
    pub counters: Counters,
    /// Ended spans not yet processed (see the module docs).
    intake: ArrayQueue<SpanRecord>,
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
    spill: OnceLock<ArrayQueue<Spilled>>,
    /// A producer already asked the worker to drain the intake.
    intake_wake_sent: AtomicBool,
    /// The worker thread, woken with `unpark` (lock-free: an atomic and a
    /// futex wake, so a request thread can wake it without any lock).
    worker: OnceLock<std::thread::Thread>,
    stop: AtomicBool,
}

fn shard_of(trace_id: u128) -> usize {
    // The low bits of a trace id are random (W3C level 2); fold in the high
    // half for ids from older generators.
    ((trace_id as u64) ^ ((trace_id >> 64) as u64)) as usize % SHARDS
}

/// A request thread tries a mutex for a few microseconds (about 2,000 spin
/// hints, doubling), never waits for it: its holders keep it for one span's
/// or one short batch's work, and one descheduled by the kernel would
/// otherwise stall the request thread (and, through the GIL, every Python
/// thread) for milliseconds.
fn try_lock_briefly<T>(m: &Mutex<T>) -> Option<parking_lot::MutexGuard<'_, T>> {
    let mut spins = 1u32;
    loop {
        if let Some(guard) = m.try_lock() {
            return Some(guard);
        }
        if spins > 1024 {
            return None;
        }
        for _ in 0..spins {
            std::hint::spin_loop();
        }
        spins *= 2;
    }
}

enum Outcome {
    None,
    Export(KeptTrace),
}

/// An item of the spill queue.
enum Spilled {
    /// A span whose shard was busy (or that needs a drain), with the drain
    /// epoch its request thread read.
    Span(SpanRecord, u64),
    /// A kept trace a request thread decided while the export queue was busy.
    Kept(KeptTrace),
}

/// Who processes a span, and so what [`Core::accept`] may do with it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
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
    pub fn new(cfg: CoreConfig) -> Self {
        Core {
            registry: Registry::new(cfg.histogram, cfg.max_metric_keys.max(1)),
            sampler: TailSampler::new(cfg.sampler.clone()),
            shards: (0..SHARDS).map(|_| PaddedShard::default()).collect(),
            per_shard_open: cfg.buffer.max_open_traces.max(1).div_ceil(SHARDS),
            export: Mutex::new(ExportQueue {
                traces: VecDeque::new(),
                spans: 0,
            }),
            counters: Counters::default(),
            intake: ArrayQueue::new(cfg.buffer.intake_spans.max(1)),
            intake_drain: Mutex::new(()),
            drain_epoch: AtomicU64::new(0),
            deferred: AtomicUsize::new(0),
            certified: AtomicU64::new(0),
            spill: OnceLock::new(),
            intake_wake_sent: AtomicBool::new(false),
            worker: OnceLock::new(),
            stop: AtomicBool::new(false),
            cfg,
        }
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

    /// The intake is full: the three steps of the module docs. Waits on no
    /// lock (see [`Core::process_here`] for what the span's processing takes).
    #[cold]
    #[inline(never)]
    fn submit_full(&self, mut rec: SpanRecord) {
        // The worker should be draining: the steps below do not push past a
        // quarter of the intake, which is what wakes it otherwise.
        if !self.intake_wake_sent.load(Ordering::Relaxed)
            && !self.intake_wake_sent.swap(true, Ordering::AcqRel)
        {
            self.wake();
        }
        if let Some(_guard) = self.intake_drain.try_lock() {
            // 1. No drain running: make room in order, oldest span first.
            let now = now_mono_ns();
            for _ in 0..MAKE_ROOM_ROUNDS {
                if let Some(old) = self.intake.pop() {
                    self.counters
                        .spans_processed_inline
                        .fetch_add(1, Ordering::Relaxed);
                    self.process_here(old, now, true);
                }
                match self.intake.push(rec) {
                    Ok(()) => return,
                    Err(back) => rec = back,
                }
            }
            // Other producers keep taking the freed slots: go ahead (no
            // drain can start before this guard is released).
            self.counters
                .spans_processed_ahead
                .fetch_add(1, Ordering::Relaxed);
            self.process_here(rec, now, false);
            return;
        }
        // 2. A drain is running and popping: a slot frees shortly.
        for _ in 0..PUSH_RETRIES {
            std::hint::spin_loop();
            match self.intake.push(rec) {
                Ok(()) => return,
                Err(back) => rec = back,
            }
        }
        // 3. Still full: process it now, ahead of the queued spans.
        self.counters
            .spans_processed_ahead
            .fetch_add(1, Ordering::Relaxed);
        self.process_here(rec, now_mono_ns(), false);
    }

    /// Process a span on a request thread without waiting on any lock
    /// (module docs): its latency is recorded, and a sampled span joins its
    /// trace if its shard is free within microseconds. `in_order`: the span
    /// is the oldest queued one (the caller holds `intake_drain`), so with
    /// nothing spilled pending it is processed as a drain would, a local
    /// root deciding its trace; otherwise a local root leaves the decision
    /// to a drain. Holding the shard, it then decides up to
    /// `HELP_DECISIONS` deferred traces there that a drain has certified
    /// complete. A span that cannot be placed goes to the spill queue for
    /// the next drain (or, that full too, is lost and counted:
    /// `spans_dropped_intake_full`); kept traces go to the export queue
    /// the same way.
    fn process_here(&self, rec: SpanRecord, now_ns: u64, in_order: bool) {
        self.record_metrics(&rec);
        if rec.trace_flags & 1 == 0 {
            return;
        }
        // A read-modify-write, so that a drain bumping the epoch after it
        // also sees the spans pushed (or spilled) before it (module docs).
        let epoch = self.drain_epoch.fetch_add(0, Ordering::AcqRel);
        let mode = if in_order && self.spill.get().is_none_or(|q| q.is_empty()) {
            Mode::RequestInOrder
        } else {
            Mode::Request(epoch)
        };
        let mut kept = Vec::new();
        match try_lock_briefly(&self.shards[shard_of(rec.trace_id)].0) {
            Some(mut shard) => {
                if let Outcome::Export(t) = self.accept(&mut shard, rec, now_ns, mode, &mut kept) {
                    kept.push(t);
                }
                self.help_decide(&mut shard, now_ns, &mut kept);
            }
            None => self.spill_or_drop(Spilled::Span(rec, epoch)),
        }
        for t in kept {
            self.hand_to_export(t);
        }
    }

    /// With a shard held on a request thread: decide up to `HELP_DECISIONS`
    /// of its deferred traces that a drain has certified (the oldest first).
    fn help_decide(&self, shard: &mut Shard, now_ns: u64, kept: &mut Vec<KeptTrace>) {
        let certified = self.certified.load(Ordering::Acquire);
        let mut removed = 0;
        while removed < HELP_DECISIONS {
            match shard.deferred.front() {
                Some(&(id, seen)) if seen < certified => {
                    shard.deferred.pop_front();
                    removed += 1;
                    if shard.open.get(&id).is_some_and(|t| t.root_deferred) {
                        if let Outcome::Export(t) = self.decide(shard, id, now_ns) {
                            kept.push(t);
                        }
                    }
                }
                _ => break,
            }
        }
        if removed > 0 {
            self.deferred.fetch_sub(removed, Ordering::AcqRel);
        }
    }

    /// A kept trace decided on a request thread: to the export queue if it
    /// is free within microseconds, else to the spill queue.
    fn hand_to_export(&self, trace: KeptTrace) {
        match try_lock_briefly(&self.export) {
            Some(q) => self.enqueue_locked(q, trace),
            None => self.spill_or_drop(Spilled::Kept(trace)),
        }
    }

    fn spill_or_drop(&self, item: Spilled) {
        let spill = self
            .spill
            .get_or_init(|| ArrayQueue::new(self.intake.capacity().clamp(SPILL_MIN, SPILL_MAX)));
        if let Err(item) = spill.push(item) {
            let spans = match item {
                Spilled::Span(..) => 1,
                Spilled::Kept(t) => t.spans.len(),
            };
            self.counters
                .spans_dropped_intake_full
                .fetch_add(spans as u64, Ordering::Relaxed);
        }
    }

    /// Spans submitted and not yet processed.
    pub fn intake_len(&self) -> usize {
        self.intake.len()
    }

    /// Process every span submitted before this call (readers call this
    /// first, so they see them), and decide the traces whose local root was
    /// processed ahead of them. Returns how many spans were processed here.
    pub fn sync(&self) -> usize {
        if self.intake.is_empty()
            && self.spill.get().is_none_or(|q| q.is_empty())
            && self.deferred.load(Ordering::Acquire) == 0
        {
            return 0;
        }
        let _guard = self.intake_drain.lock();
        // Bumped before the lengths are read, the intake's first (module
        // docs).
        let epoch = self.drain_epoch.fetch_add(1, Ordering::AcqRel) + 1;
        let now = now_mono_ns();
        let queued = self.intake.len();
        // Spilled spans first: a span queued after one that spilled may be
        // the local root that decides its trace.
        let mut done = 0;
        if let Some(q) = self.spill.get() {
            for _ in 0..q.len() {
                match q.pop() {
                    Some(Spilled::Span(rec, seen)) => {
                        self.place(rec, now, Mode::Spilled(seen));
                        done += 1;
                    }
                    Some(Spilled::Kept(t)) => self.enqueue(t),
                    None => break,
                }
            }
        }
        done += self.drain_locked(queued, now);
        self.certified.fetch_max(epoch, Ordering::AcqRel);
        if self.deferred.load(Ordering::Acquire) > 0 {
            self.decide_deferred(epoch, now);
        }
        done
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

    /// With `intake_drain` held, after a drain of epoch `epoch`: decide the
    /// traces whose local root was processed ahead of spans queued before
    /// this drain started (every such span has now reached its trace).
    fn decide_deferred(&self, epoch: u64, now_ns: u64) {
        for padded in self.shards.iter() {
            // In batches: request threads only try a shard, so none is held
            // for long.
            let mut more = true;
            while more {
                let mut out = Vec::new();
                let mut removed = 0;
                {
                    let mut shard = padded.0.lock();
                    let (mut i, mut decided) = (0, 0);
                    while i < shard.deferred.len() && decided < DECIDE_BATCH {
                        let (id, seen) = shard.deferred[i];
                        if seen >= epoch {
                            i += 1;
                            continue;
                        }
                        shard.deferred.swap_remove_back(i);
                        removed += 1;
                        // Not open any more (evicted, timed out, forced) or
                        // open again as a new trace: nothing left to decide.
                        if shard.open.get(&id).is_some_and(|t| t.root_deferred) {
                            decided += 1;
                            if let Outcome::Export(t) = self.decide(&mut shard, id, now_ns) {
                                out.push(t);
                            }
                        }
                    }
                    more = i < shard.deferred.len();
                }
                if removed > 0 {
                    self.deferred.fetch_sub(removed, Ordering::AcqRel);
                }
                for t in out {
                    self.enqueue(t);
                }
            }
        }
    }

    #[inline]
    fn process_span(&self, rec: SpanRecord, now_ns: u64) {
        if rec.trace_flags & 1 == 1 {
            self.end_span(rec, now_ns);
        } else {
            self.record_metrics(&rec);
        }
    }

    /// Process one span now, on this thread: record the duration, add the
    /// span to its trace, and decide the trace if this is its local root.
    #[inline]
    pub fn end_span(&self, rec: SpanRecord, now_ns: u64) {
        self.record_metrics(&rec);
        self.place(rec, now_ns, Mode::Drain);
    }

    /// The span joins its trace (`mode`: see [`Mode`]), in a drain.
    #[inline]
    fn place(&self, rec: SpanRecord, now_ns: u64, mode: Mode) {
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

    /// A span that is not traced (head-sampled out): only its latency counts.
    #[inline]
    pub fn record_metrics(&self, rec: &SpanRecord) {
        self.registry
            .record(rec.kind, &rec.name, rec.status_class(), rec.duration_ns);
    }

    /// The span joins its trace; what a local root, a full buffer or a
    /// late span leads to depends on `mode` ([`Mode`]). Traces evicted to
    /// make room go to `evicted`, for the caller to enqueue once the shard
    /// is unlocked.
    fn accept(
        &self,
        shard: &mut Shard,
        rec: SpanRecord,
        now_ns: u64,
        mode: Mode,
        evicted: &mut Vec<KeptTrace>,
    ) -> Outcome {
        let id = rec.trace_id;
        let deferred = mode.deferred_epoch();
        if let Some(kept) = shard.decided.get(id) {
            if kept {
                self.counters
                    .spans_late_kept
                    .fetch_add(1, Ordering::Relaxed);
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

    fn decide(&self, shard: &mut Shard, id: u128, now_ns: u64) -> Outcome {
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
        shard.decided.set(id, decision.is_keep());
        if decision.is_keep() {
            for s in &spans {
                self.registry.record_exemplar(
                    s.kind,
                    &s.name,
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
            Decision::Keep(reason) => Outcome::Export(KeptTrace {
                trace_id: id,
                reason: Some(reason),
                spans,
            }),
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

    fn enqueue(&self, trace: KeptTrace) {
        self.enqueue_locked(self.export.lock(), trace);
    }

    fn enqueue_locked(&self, mut q: parking_lot::MutexGuard<'_, ExportQueue>, trace: KeptTrace) {
        let n = trace.spans.len();
        if q.spans + n > self.cfg.buffer.export_queue_spans {
            drop(q);
            self.counters
                .traces_dropped_export_full
                .fetch_add(1, Ordering::Relaxed);
            self.counters
                .spans_dropped_export_full
                .fetch_add(n as u64, Ordering::Relaxed);
            // `trace` is freed here, outside the lock.
            return;
        }
        q.spans += n;
        q.traces.push_back(trace);
    }

    /// Take kept traces for export, up to about `max_spans` spans (at least
    /// one trace if any is waiting).
    pub fn drain_export(&self, max_spans: usize) -> Vec<KeptTrace> {
        self.sync();
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
        other.sync();
        for t in other.drain_export(usize::MAX) {
            self.enqueue(t);
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

    pub fn stop_worker(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{SpanKind, StatusCode};

    fn core_with(probability: f64, buffer: BufferConfig) -> Core {
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

    fn core(probability: f64) -> Core {
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

    fn rec(trace: u128, id: u64, parent: u64) -> SpanRecord {
        let mut r = SpanRecord::new(trace, id, parent, "op");
        r.duration_ns = 1_000;
        r
    }

    fn count(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

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
    fn span_and_export_bounds_are_enforced_and_counted() {
        let c = core(1.0);
        // At most 3 spans per trace.
        for i in 0..5 {
            c.end_span(rec(1, 10 + i, 1), 1);
        }
        assert_eq!(count(&c.counters.spans_dropped_trace_limit), 2);
        assert_eq!(c.stats().open_spans, 3);
        c.process(2, true);
        assert_eq!(c.stats().export_spans, 3);
        // The export queue holds 10 spans; 7 more single-span traces fit, 2 do not.
        for t in 10..19 {
            c.end_span(rec(t, 1, 0), 3);
        }
        assert_eq!(c.stats().export_spans, 10);
        assert_eq!(count(&c.counters.traces_dropped_export_full), 2);
        assert_eq!(count(&c.counters.spans_dropped_export_full), 2);
        let drained = c.drain_export(3);
        assert_eq!(drained.iter().map(|t| t.spans.len()).sum::<usize>(), 3);
        assert_eq!(c.stats().export_spans, 7);
        assert_eq!(count(&c.counters.spans_exported), 3);
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
    fn eight_threads_of_traces(c: &Arc<Core>, end: fn(&Core, SpanRecord)) {
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

    fn intake_core(intake_spans: usize) -> Arc<Core> {
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
    fn a_full_intake_is_processed_by_the_caller_in_order() {
        let c = intake_core(16);
        for t in 1..=20u128 {
            c.submit_span(rec(t, 2, 1));
            c.submit_span(rec(t, 1, 0));
        }
        // No worker and no reader: each full push made room for itself by
        // processing the oldest queued span, and left the rest queued.
        assert_eq!(count(&c.counters.spans_processed_inline), 40 - 16);
        assert_eq!(c.intake_len(), 16);
        assert_eq!(count(&c.counters.spans_processed_ahead), 0);
        let out = c.drain_export(usize::MAX);
        assert_eq!(out.len(), 20, "no trace lost");
        assert!(out.iter().all(|t| t.spans.len() == 2), "no child split off");
        assert_eq!(count(&c.counters.spans_late_kept), 0);
    }

    /// Run `submit` on `threads` threads while this thread holds the drain
    /// lock (a drain in progress, as a slow reader's): each must finish
    /// while it is held, which it could not if it waited for the lock.
    fn submit_during_a_drain(c: &Arc<Core>, threads: u128, submit: fn(&Core, u128)) {
        let drain = c.intake_drain.lock();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let producers: Vec<_> = (0..threads)
            .map(|t| {
                let (c, done_tx) = (c.clone(), done_tx.clone());
                std::thread::spawn(move || {
                    submit(&c, t);
                    done_tx.send(()).unwrap();
                })
            })
            .collect();
        for _ in 0..threads {
            let finished = done_rx.recv_timeout(Duration::from_secs(60));
            assert!(finished.is_ok(), "a submit waited for the drain lock");
        }
        drop(drain);
        producers.into_iter().for_each(|p| p.join().unwrap());
    }

    #[test]
    fn a_root_ahead_of_its_queued_child_is_decided_after_it() {
        let c = intake_core(1);
        c.submit_span(rec(7, 2, 1));
        submit_during_a_drain(&c, 1, |c, _| {
            c.submit_span(rec(7, 1, 0));
            let mut unsampled = rec(8, 1, 0);
            unsampled.trace_flags = 0;
            c.submit_span(unsampled);
        });
        assert_eq!(count(&c.counters.spans_processed_ahead), 2);
        assert_eq!(count(&c.counters.traces_decision_deferred), 1);
        let (snap, _) = c.registry.merged(SpanKind::Internal, "op").unwrap();
        assert_eq!(snap.count(), 2, "both recorded at once");
        // A drain that was running when the root went ahead may have read
        // the intake before the child was pushed: it must not decide.
        {
            let _drain = c.intake_drain.lock();
            c.decide_deferred(c.drain_epoch.load(Ordering::Acquire), 0);
        }
        assert_eq!(count(&c.counters.traces_kept_probabilistic), 0);
        // The next drain processes the child, then decides the trace.
        let out = c.drain_export(usize::MAX);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].spans.len(), 2, "the child reached its trace first");
        assert_eq!(count(&c.counters.spans_late_kept), 0);
        assert_eq!(c.deferred.load(Ordering::Acquire), 0);
        assert_eq!(c.stats().open_traces, 0);
        let (snap, _) = c.registry.merged(SpanKind::Internal, "op").unwrap();
        assert_eq!(snap.count(), 3);
    }

    #[test]
    fn a_span_whose_shard_is_busy_is_spilled_to_the_next_drain() {
        let c = intake_core(1);
        c.submit_span(rec(7, 2, 1));
        let busy = shard_of(7);
        submit_during_a_drain(&c, 1, |c, _| {
            // A reader holds the trace's shard (as `stats` does) too.
            let _reader = c.shards[shard_of(7)].0.lock();
            c.submit_span(rec(7, 3, 1));
            c.submit_span(rec(7, 1, 0));
        });
        assert_eq!(count(&c.counters.spans_processed_ahead), 2);
        assert_eq!(c.spill.get().map(ArrayQueue::len), Some(2));
        assert!(c.shards[busy].0.lock().open.is_empty(), "nothing placed");
        let (snap, _) = c.registry.merged(SpanKind::Internal, "op").unwrap();
        assert_eq!(snap.count(), 2, "their latency is recorded at once");
        assert_every_trace_whole(&c, Vec::new(), 1);
        assert_eq!(c.spill.get().map(ArrayQueue::len), Some(0));
        assert_eq!(count(&c.counters.spans_dropped_intake_full), 0);
    }

    #[test]
    fn with_the_spill_queue_full_a_span_is_left_out_and_counted() {
        let c = intake_core(1);
        c.submit_span(rec(1, 1, 0));
        submit_during_a_drain(&c, 1, |c, _| {
            let _readers: Vec<_> = c.shards.iter().map(|s| s.0.lock()).collect();
            for t in 2..=(SPILL_MIN as u128 + 2) {
                c.submit_span(rec(t, 1, 0));
            }
        });
        assert_eq!(count(&c.counters.spans_dropped_intake_full), 1);
        c.sync();
        let (snap, _) = c.registry.merged(SpanKind::Internal, "op").unwrap();
        assert_eq!(snap.count(), SPILL_MIN as u64 + 2, "every latency recorded");
        let out = c.drain_export(usize::MAX);
        assert_eq!(out.len(), SPILL_MIN + 1);
        assert_eq!(c.stats().open_traces, 0);
    }

    #[test]
    fn no_submit_waits_for_a_drain_in_progress() {
        // A reader holds the drain lock for as long as 8 threads take to end
        // 40,000 traces into an intake of 4.
        let c = intake_core(4);
        submit_during_a_drain(&c, 8, |c, t| {
            for i in 0..5_000u128 {
                let trace = (t << 64) | (i + 1);
                c.submit_span(rec(trace, 2, 1));
                c.submit_span(rec(trace, 3, 1));
                c.submit_span(rec(trace, 1, 0));
            }
        });
        let ahead = count(&c.counters.spans_processed_ahead);
        assert_eq!(ahead, 120_000 - 4, "all but the queued 4 went ahead");
        assert_every_trace_whole(&c, Vec::new(), 40_000);
    }

    /// Every span of `traces` 3-span traces is in the histograms, and in a
    /// kept trace (`out`, then what is left to take) or counted as left out
    /// of it; with none left out, every trace is whole and decided once.
    fn assert_every_trace_whole(c: &Core, mut out: Vec<KeptTrace>, traces: usize) {
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
    fn a_tiny_intake_with_slow_drains_keeps_every_trace_whole() {
        // The worker, a reader taking kept traces and a slow reader holding
        // the drain lock for milliseconds at a time, against 8 producers and
        // an intake of 4: all three full-intake paths run at once.
        let c = intake_core(4);
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
        let slow = {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let _drain = c.intake_drain.lock();
                    std::thread::sleep(Duration::from_millis(2));
                    drop(_drain);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        eight_threads_of_traces(&c, |c, r| c.submit_span(r));
        stop.store(true, Ordering::Release);
        slow.join().unwrap();
        let out = reader.join().unwrap();
        c.stop_worker();
        h.join().unwrap();
        assert_every_trace_whole(&c, out, 80_000);
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
