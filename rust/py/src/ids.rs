//! Trace and span ids: a per-thread splitmix64 generator seeded from the OS,
//! reseeded in a child process after `fork` (the fork generation is bumped by
//! the at-fork hook), so parent and child never produce the same ids.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static STATE: Cell<(u64, u64)> = const { Cell::new((0, u64::MAX)) };
}

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
fn next_u64() -> u64 {
    STATE.with(|s| {
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
    })
}

/// A non-zero 64-bit span id.
#[inline]
pub fn span_id() -> u64 {
    loop {
        let v = next_u64();
        if v != 0 {
            return v;
        }
    }
}

/// A non-zero 128-bit trace id whose lower 56 bits are random (W3C level 2).
#[inline]
pub fn trace_id() -> u128 {
    loop {
        let v = (u128::from(next_u64()) << 64) | u128::from(next_u64());
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_nonzero_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(span_id()));
            assert_ne!(trace_id(), 0);
        }
    }

    #[test]
    fn a_fork_generation_change_reseeds() {
        let a = span_id();
        bump_fork_generation();
        let b = span_id();
        assert_ne!(a, b);
    }
}
