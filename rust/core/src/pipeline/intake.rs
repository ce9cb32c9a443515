//! A full intake: the request thread never waits.
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
//! What a request thread may still wait for is one copy: for the first span
//! of a new operation, the registry's growth lock (one copy of the name
//! map). A decision's rate limit is one atomic (`sampler`), an exemplar is
//! left out when its ring is busy (`registry`), and the spill queue is
//! allocated on first use without a lock ([`Core::spill_queue`]). Keeping the span was preferred to dropping it: processing one
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

use super::{
    now_mono_ns, shard_of, Arc, ArrayQueue, Core, KeptTrace, Mode, Mutex, Ordering, Outcome, Shard,
    SpanRecord, DECIDE_BATCH,
};

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

/// An item of the spill queue.
pub(super) enum Spilled {
    /// A span whose shard was busy (or that needs a drain), with the drain
    /// epoch its request thread read.
    Span(SpanRecord, u64),
    /// A kept trace a request thread decided while the export queue was busy.
    Kept(KeptTrace),
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

impl Core {
    /// The intake is full: the three steps of the module docs. Waits on no
    /// lock (see [`Core::process_here`] for what the span's processing takes).
    #[cold]
    #[inline(never)]
    pub(super) fn submit_full(&self, mut rec: SpanRecord) {
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
        let mode = if in_order && self.spill.load().as_ref().is_none_or(|q| q.is_empty()) {
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

    /// The spill queue, allocated on first use without waiting: threads
    /// that need it at the same moment each make one, the first to publish
    /// it wins and the others drop theirs (a lock-based lazy cell would
    /// make them wait for the winner's allocation).
    fn spill_queue(&self) -> Arc<ArrayQueue<Spilled>> {
        if let Some(q) = self.spill.load_full() {
            return q;
        }
        let fresh = Arc::new(ArrayQueue::new(
            self.intake.capacity().clamp(SPILL_MIN, SPILL_MAX),
        ));
        let none: Option<Arc<ArrayQueue<Spilled>>> = None;
        let before = self.spill.compare_and_swap(&none, Some(Arc::clone(&fresh)));
        match &*before {
            Some(won) => Arc::clone(won),
            None => fresh,
        }
    }

    fn spill_or_drop(&self, item: Spilled) {
        let spill = self.spill_queue();
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

    /// Process every span submitted before this call (readers call this
    /// first, so they see them), and decide the traces whose local root was
    /// processed ahead of them. Returns how many spans were processed here.
    ///
    /// It always takes `intake_drain`, even with the intake empty: a drain
    /// in progress may have popped spans it has not processed yet, and the
    /// reader must wait for them (readers release the GIL first).
    pub fn sync(&self) -> usize {
        let _guard = self.intake_drain.lock();
        // Bumped before the lengths are read, the intake's first (module
        // docs).
        let epoch = self.drain_epoch.fetch_add(1, Ordering::AcqRel) + 1;
        let now = now_mono_ns();
        let queued = self.intake.len();
        // Spilled spans first: a span queued after one that spilled may be
        // the local root that decides its trace.
        let mut done = 0;
        if let Some(q) = self.spill.load_full() {
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

    /// With `intake_drain` held, after a drain of epoch `epoch`: decide the
    /// traces whose local root was processed ahead of spans queued before
    /// this drain started (every such span has now reached its trace).
    pub(super) fn decide_deferred(&self, epoch: u64, now_ns: u64) {
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::{
        assert_every_trace_whole, count, eight_threads_of_traces, intake_core, rec,
    };
    use super::*;
    use crate::span::SpanKind;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

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
        assert_eq!(c.spill.load().as_ref().map(|q| q.len()), Some(2));
        assert!(c.shards[busy].0.lock().open.is_empty(), "nothing placed");
        let (snap, _) = c.registry.merged(SpanKind::Internal, "op").unwrap();
        assert_eq!(snap.count(), 2, "their latency is recorded at once");
        assert_every_trace_whole(&c, Vec::new(), 1);
        assert_eq!(c.spill.load().as_ref().map(|q| q.len()), Some(0));
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
    fn a_reader_waits_for_spans_a_drain_in_progress_has_taken() {
        let c = intake_core(4);
        c.submit_span(rec(7, 2, 1));
        c.submit_span(rec(7, 1, 0));
        // A drain has taken both spans and not processed them yet.
        let drain = c.intake_drain.lock();
        let taken: Vec<_> = std::iter::from_fn(|| c.intake.pop()).collect();
        assert_eq!(taken.len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let c = c.clone();
            std::thread::spawn(move || tx.send(c.drain_export(usize::MAX)).unwrap())
        };
        let early = rx.recv_timeout(Duration::from_millis(200));
        assert!(early.is_err(), "the reader did not wait for the drain");
        for r in taken {
            c.end_span(r, 1);
        }
        drop(drain);
        let out = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        reader.join().unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].spans.len(), 2, "every span ended before the read");
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
}
