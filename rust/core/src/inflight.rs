//! Spans of this process whose context went out on a call (their
//! `traceparent` was handed to a carrier) and that have not ended yet.
//!
//! A trace is decided when its local root ends (`pipeline`): the first span
//! of the trace in this process, a root or the child of a remote parent.
//! When a service calls itself (its outbound call lands on the same
//! process, another thread of the same worker), the inner request's SERVER
//! span has a remote parent, but that parent is a span of this very process
//! and still open. Taken as a local root, it would decide the trace before
//! the outer request is done: sampled out there, its spans are gone by the
//! time the outer request fails, and "every error keeps its whole trace"
//! would not hold. A context whose span id is listed here is therefore not
//! a local root's parent (`head::StartParent::open_here`): the whole trace
//! is decided once, when the outer local root ends.
//!
//! A fixed table of span ids, lock-free: listing an id takes one of the
//! [`PROBE`] slots it hashes to; ending the span frees it. With no free slot
//! the id is simply not listed, and a request that comes back with it is a
//! local root, as it is for a call to another process (what any tail
//! sampler in one process can see). Span ids are random, nonzero 64-bit
//! values; 0 marks a free slot. A stale id (a span that never ends) only
//! keeps its slot: no other span has its id.

use std::sync::atomic::{AtomicU64, Ordering};

/// Slots in the table: about the number of outbound calls in flight at
/// once in one process that this can follow.
pub const SLOTS: usize = 4096;

/// Slots an id may take, from the one it hashes to.
pub const PROBE: usize = 4;

/// The table (one per process: [`IN_FLIGHT`]).
pub struct InFlight {
    slots: [AtomicU64; SLOTS],
}

/// The process's table.
pub static IN_FLIGHT: InFlight = InFlight::new();

impl InFlight {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        InFlight {
            slots: [const { AtomicU64::new(0) }; SLOTS],
        }
    }

    fn probe(&self, span_id: u64) -> impl Iterator<Item = &AtomicU64> {
        let start = span_id as usize % SLOTS;
        (0..PROBE).map(move |i| &self.slots[(start + i) % SLOTS])
    }

    /// List `span_id` (its context went out on a call). Returns whether it
    /// is listed (false: no free slot, or the id 0).
    pub fn insert(&self, span_id: u64) -> bool {
        if span_id == 0 {
            return false;
        }
        for slot in self.probe(span_id) {
            match slot.compare_exchange(0, span_id, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(held) if held == span_id => return true,
                Err(_) => {}
            }
        }
        false
    }

    /// The span ended: its id is no longer listed.
    pub fn remove(&self, span_id: u64) {
        if span_id == 0 {
            return;
        }
        for slot in self.probe(span_id) {
            if slot
                .compare_exchange(span_id, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Whether `span_id` is a span of this process whose context went out
    /// and that has not ended.
    #[inline]
    pub fn contains(&self, span_id: u64) -> bool {
        span_id != 0
            && self
                .probe(span_id)
                .any(|s| s.load(Ordering::Acquire) == span_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_id_is_listed_until_removed() {
        let t = InFlight::new();
        assert!(!t.contains(42));
        assert!(t.insert(42));
        assert!(t.insert(42), "listing twice is listing once");
        assert!(t.contains(42));
        t.remove(42);
        assert!(!t.contains(42));
        assert!(!t.insert(0) && !t.contains(0), "0 is never an id");
    }

    #[test]
    fn ids_that_hash_alike_share_the_probe_and_the_rest_are_refused() {
        let t = InFlight::new();
        let same: Vec<u64> = (1..=PROBE as u64 + 1)
            .map(|k| 7 + k * SLOTS as u64)
            .collect();
        for id in &same[..PROBE] {
            assert!(t.insert(*id));
        }
        assert!(!t.insert(same[PROBE]), "no free slot: not listed");
        assert!(!t.contains(same[PROBE]));
        assert!(same[..PROBE].iter().all(|id| t.contains(*id)));
        // Freeing one makes room, and removing an unlisted id changes nothing.
        t.remove(same[1]);
        t.remove(same[PROBE]);
        assert!(t.insert(same[PROBE]));
        assert!(!t.contains(same[1]));
        assert!([same[0], same[2], same[3], same[PROBE]]
            .iter()
            .all(|id| t.contains(*id)));
    }

    #[test]
    fn many_threads_list_and_remove_their_own_ids() {
        let t = Arc::new(InFlight::new());
        let threads: Vec<_> = (0..16u64)
            .map(|n| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    for round in 0..2_000u64 {
                        // Ids of different threads collide on slots on purpose.
                        let id = 1 + n + (round % 8) * SLOTS as u64;
                        if t.insert(id) {
                            assert!(t.contains(id));
                            t.remove(id);
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert!(t.slots.iter().all(|s| s.load(Ordering::Relaxed) == 0));
    }
}
