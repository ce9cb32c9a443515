//! Trace and span ids: a splitmix64 generator seeded from the OS, reseeded
//! in a child process after `fork` (the fork generation is bumped by the
//! at-fork hook), so parent and child never produce the same ids.
//!
//! The state is protected by the GIL (every caller holds it), which costs
//! nothing, where a thread-local in a shared library costs a
//! `__tls_get_addr` call per id.
//!
//! GIL and locks: the GIL is the generator's lock (a `GILProtected` cell);
//! the fork generation is an atomic. No mutex.

use pyo3::sync::GILProtected;
use pyo3::Python;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// (state, fork generation it was seeded in); generation u64::MAX = unseeded.
type State = Cell<(u64, u64)>;

static STATE: GILProtected<State> = GILProtected::new(Cell::new((0, u64::MAX)));

/// Called in the child after a fork.
pub fn bump_fork_generation() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

fn seed() -> u64 {
    let mut buf = [0u8; 8];
    if getrandom::getrandom(&mut buf).is_err() {
        // No OS randomness: fall back to time and address entropy.
        let t = pulsetrace_core::clock::now_unix_ns();
        let addr = &buf as *const _ as u64;
        return t ^ addr.rotate_left(32) ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(buf)
}

#[inline]
fn next_u64(s: &State) -> u64 {
    let (mut x, generation) = s.get();
    let current = FORK_GENERATION.load(Ordering::Relaxed);
    if generation != current {
        x = seed();
    }
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    s.set((x, current));
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn span_id_from(s: &State) -> u64 {
    loop {
        let v = next_u64(s);
        if v != 0 {
            return v;
        }
    }
}

fn trace_id_from(s: &State) -> u128 {
    loop {
        let v = (u128::from(next_u64(s)) << 64) | u128::from(next_u64(s));
        if v != 0 {
            return v;
        }
    }
}

/// A non-zero 64-bit span id.
#[inline]
pub fn span_id(py: Python<'_>) -> u64 {
    span_id_from(STATE.get(py))
}

/// A non-zero 128-bit trace id whose lower 56 bits are random (W3C level 2).
#[inline]
pub fn trace_id(py: Python<'_>) -> u128 {
    trace_id_from(STATE.get(py))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_nonzero_and_distinct() {
        let s = Cell::new((0, u64::MAX));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(span_id_from(&s)));
            assert_ne!(trace_id_from(&s), 0);
        }
    }

    #[test]
    fn a_fork_generation_change_reseeds() {
        let s = Cell::new((0, u64::MAX));
        let a = span_id_from(&s);
        let before = s.get();
        bump_fork_generation();
        let b = span_id_from(&s);
        assert_ne!(a, b);
        assert_ne!(s.get().1, before.1, "reseeded in the new generation");
    }
}
