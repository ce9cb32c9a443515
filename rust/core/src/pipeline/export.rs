//! The export queue: kept traces waiting for the export thread.
//!
//! One bounded queue (`export_queue_spans` spans; a trace that does not fit
//! is dropped and counted) between the decisions and the one export thread.
//! The export thread sleeps in [`Core::wait_export`] (the binding releases
//! the GIL around it) until a batch is ready, and nothing polls: a trace
//! queued into an empty queue wakes it to note the batch's deadline, a
//! queue that reaches the batch size wakes it at once, and a flush, a
//! shutdown or a stop wakes it with [`Core::kick_export`]. A batch is ready
//! when it holds `batch_spans` spans, or when its oldest trace has waited
//! `max_delay_ns`.
//!
//! The lock is held for a push, a pop of one batch, or the waiter's check;
//! the condvar is notified with the lock held, so no wake-up is lost between
//! the waiter's check and its sleep.

use super::{now_mono_ns, Core, Ordering};
use crate::sampler::KeepReason;
use crate::span::SpanRecord;
use std::collections::VecDeque;
use std::time::Duration;

/// A kept trace (or a late span of one) waiting for export.
#[derive(Debug)]
pub struct KeptTrace {
    pub trace_id: u128,
    /// `None` for late spans of a trace kept earlier.
    pub reason: Option<KeepReason>,
    pub spans: Vec<SpanRecord>,
}

#[derive(Default)]
pub(super) struct ExportQueue {
    /// The traces, with when each was queued (monotonic ns): a batch's
    /// delay runs from its oldest trace's.
    pub(super) traces: VecDeque<(KeptTrace, u64)>,
    pub(super) spans: usize,
    /// The export thread is asleep in `wait_export`, for a batch of this
    /// many spans.
    waiting_for: Option<usize>,
    /// A flush, shutdown or stop asked the export thread to run now.
    kicked: bool,
}

/// What ended a [`Core::wait_export`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportWake {
    /// A batch is ready (full, or its oldest trace waited the delay).
    Ready,
    /// [`Core::kick_export`] was called (a flush, a shutdown).
    Kicked,
    /// The core stopped ([`Core::stop_worker`]).
    Stopped,
    /// The timeout passed with no batch ready.
    TimedOut,
}

impl Core {
    /// Queue kept traces for export (`true`, the default) or not: with no
    /// exporter nothing would ever drain the queue, so a kept trace is
    /// discarded and counted (`traces_discarded_no_exporter`), and
    /// switching off discards what is queued.
    pub fn set_exporting(&self, on: bool) {
        let mut q = self.export.lock();
        self.exporting.store(on, Ordering::Relaxed);
        if on {
            return;
        }
        let discarded = std::mem::take(&mut q.traces);
        q.spans = 0;
        drop(q);
        self.counters
            .traces_discarded_no_exporter
            .fetch_add(discarded.len() as u64, Ordering::Relaxed);
    }

    pub fn exporting(&self) -> bool {
        self.exporting.load(Ordering::Relaxed)
    }

    pub(super) fn enqueue(&self, trace: KeptTrace) {
        self.enqueue_locked(self.export.lock(), trace);
    }

    pub(super) fn enqueue_locked(
        &self,
        mut q: parking_lot::MutexGuard<'_, ExportQueue>,
        trace: KeptTrace,
    ) {
        let n = trace.spans.len();
        if !self.exporting.load(Ordering::Relaxed) {
            drop(q);
            self.counters
                .traces_discarded_no_exporter
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
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
        q.traces.push_back((trace, now_mono_ns()));
        // Wake the export thread on the first trace (to note the batch's
        // deadline) and when the batch is full; not for every trace.
        if let Some(batch) = q.waiting_for {
            if q.traces.len() == 1 || q.spans >= batch {
                q.waiting_for = None;
                self.export_ready.notify_one();
            }
        }
    }

    /// Take kept traces for export, up to about `max_spans` spans (at least
    /// one trace if any is waiting).
    pub fn drain_export(&self, max_spans: usize) -> Vec<KeptTrace> {
        self.sync();
        let mut q = self.export.lock();
        let mut out = Vec::new();
        let mut taken = 0;
        while let Some((front, _)) = q.traces.front() {
            let n = front.spans.len();
            if !out.is_empty() && taken + n > max_spans {
                break;
            }
            let (t, _) = q.traces.pop_front().expect("front exists");
            q.spans -= n;
            taken += n;
            out.push(t);
        }
        drop(q);
        self.counters
            .traces_handed_to_exporters
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        self.counters
            .spans_handed_to_exporters
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

    /// The export thread's sleep: returns once a batch of `batch_spans`
    /// spans (at most half the queue's bound, so a batch is ready before the
    /// queue is full) is waiting, the oldest trace waiting has waited
    /// `max_delay_ns`, [`Core::kick_export`] or [`Core::stop_worker`] was
    /// called, or `timeout_ns` passed. Blocks: call it without the GIL.
    pub fn wait_export(
        &self,
        max_delay_ns: u64,
        batch_spans: usize,
        timeout_ns: u64,
    ) -> ExportWake {
        let batch = batch_spans.clamp(1, (self.cfg.buffer.export_queue_spans / 2).max(1));
        let deadline = now_mono_ns().saturating_add(timeout_ns);
        let mut q = self.export.lock();
        loop {
            if self.stop.load(Ordering::Acquire) {
                return ExportWake::Stopped;
            }
            if std::mem::take(&mut q.kicked) {
                return ExportWake::Kicked;
            }
            let now = now_mono_ns();
            let due = q
                .traces
                .front()
                .map_or(u64::MAX, |&(_, queued)| queued.saturating_add(max_delay_ns));
            if q.spans >= batch || now >= due {
                return ExportWake::Ready;
            }
            if now >= deadline {
                return ExportWake::TimedOut;
            }
            let until = deadline.min(due);
            q.waiting_for = Some(batch);
            self.export_ready
                .wait_for(&mut q, Duration::from_nanos(until - now));
            q.waiting_for = None;
        }
    }

    /// Wake the export thread now (a flush, a shutdown): its
    /// [`Core::wait_export`] returns [`ExportWake::Kicked`]. A kick sent
    /// while it is not waiting ends its next wait at once.
    pub fn kick_export(&self) {
        let mut q = self.export.lock();
        q.kicked = true;
        self.export_ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{core, core_with, count, rec};
    use super::super::{BufferConfig, BufferStats};
    use super::*;
    use std::sync::Arc;

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
        assert_eq!(count(&c.counters.spans_handed_to_exporters), 3);
        assert_eq!(
            count(&c.counters.traces_handed_to_exporters),
            drained.len() as u64
        );
    }

    #[test]
    fn with_no_exporter_nothing_is_queued() {
        let c = core(1.0);
        c.end_span(rec(1, 1, 0), 1);
        assert_eq!(c.stats().export_traces, 1);
        // Switching off discards what is queued, then every kept trace.
        c.set_exporting(false);
        assert_eq!(c.stats().export_traces, 0);
        c.end_span(rec(2, 1, 0), 2);
        c.end_span(rec(3, 2, 1), 3);
        c.end_span(rec(3, 1, 0), 4);
        assert_eq!(c.stats(), BufferStats::default());
        assert!(c.drain_export(100).is_empty());
        assert_eq!(count(&c.counters.traces_kept_probabilistic), 3);
        assert_eq!(count(&c.counters.traces_discarded_no_exporter), 3);
        assert_eq!(count(&c.counters.traces_handed_to_exporters), 0);
        c.set_exporting(true);
        c.end_span(rec(4, 1, 0), 5);
        assert_eq!(c.drain_export(100).len(), 1);
    }

    /// `wait_export` on another thread: what ended it, and after how long.
    fn wait_on_thread(
        c: &Arc<crate::pipeline::Core>,
        delay_ms: u64,
        batch: usize,
    ) -> std::thread::JoinHandle<(ExportWake, Duration)> {
        let c = c.clone();
        let h = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let wake = c.wait_export(delay_ms * 1_000_000, batch, 10_000_000_000);
            (wake, started.elapsed())
        });
        // Let it reach its sleep (a wake-up before that is not lost either).
        std::thread::sleep(Duration::from_millis(50));
        h
    }

    fn roomy() -> Arc<crate::pipeline::Core> {
        Arc::new(core_with(
            1.0,
            BufferConfig {
                export_queue_spans: 1_000,
                ..BufferConfig::default()
            },
        ))
    }

    #[test]
    fn a_full_batch_wakes_the_export_thread_at_once() {
        let c = roomy();
        let h = wait_on_thread(&c, 60_000, 3);
        for t in 1..=3 {
            c.end_span(rec(t, 1, 0), t as u64);
        }
        let (wake, took) = h.join().unwrap();
        assert_eq!(wake, ExportWake::Ready);
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(c.drain_export(100).len(), 3);
    }

    #[test]
    fn what_a_batch_leaves_waits_for_its_own_delay() {
        let c = roomy();
        for t in 1..=5 {
            c.end_span(rec(t, 1, 0), t as u64);
        }
        assert_eq!(c.wait_export(60_000_000_000, 3, 0), ExportWake::Ready);
        assert_eq!(c.drain_export(3).len(), 3);
        // 2 spans: not a batch, and queued just now.
        assert_eq!(
            c.wait_export(60_000_000_000, 3, 20_000_000),
            ExportWake::TimedOut
        );
        assert_eq!(c.wait_export(0, 3, 0), ExportWake::Ready);
    }

    #[test]
    fn a_lone_trace_is_ready_once_it_waited_the_delay() {
        let c = roomy();
        let h = wait_on_thread(&c, 100, 500);
        let queued = std::time::Instant::now();
        c.end_span(rec(1, 1, 0), 1);
        let (wake, _) = h.join().unwrap();
        let waited = queued.elapsed();
        assert_eq!(wake, ExportWake::Ready);
        assert!(waited >= Duration::from_millis(95), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    #[test]
    fn a_batch_is_at_most_half_the_queue() {
        // A batch size above the bound would never be reached: half of it is.
        let c = Arc::new(core(1.0)); // a queue of 10 spans
        let h = wait_on_thread(&c, 60_000, 4096);
        for t in 1..=5 {
            c.end_span(rec(t, 1, 0), t as u64);
        }
        assert_eq!(h.join().unwrap().0, ExportWake::Ready);
    }

    #[test]
    fn a_kick_or_a_stop_ends_the_wait_and_nothing_else_does() {
        let c = roomy();
        assert_eq!(c.wait_export(0, 1, 20_000_000), ExportWake::TimedOut);
        let h = wait_on_thread(&c, 0, 1);
        c.kick_export();
        assert_eq!(h.join().unwrap().0, ExportWake::Kicked);
        // A kick with nobody waiting ends the next wait.
        c.kick_export();
        assert_eq!(c.wait_export(0, 1, 10_000_000_000), ExportWake::Kicked);
        let h = wait_on_thread(&c, 0, 1);
        c.stop_worker();
        assert_eq!(h.join().unwrap().0, ExportWake::Stopped);
    }
}
