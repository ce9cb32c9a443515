//! One monotonic clock for durations and its mapping to Unix time for
//! timestamps: a span reads the clock once at start and once at end.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Anchor {
    mono: Instant,
    unix_ns: u64,
}

fn anchor() -> &'static Anchor {
    static ANCHOR: OnceLock<Anchor> = OnceLock::new();
    ANCHOR.get_or_init(|| Anchor {
        mono: Instant::now(),
        unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    })
}

/// The monotonic clock, on the Unix-time scale: the wall clock read once
/// (the anchor) plus monotonic time elapsed since. Differences are exact
/// durations that never go backwards; values are Unix nanoseconds, so a
/// reading is also a timestamp and an explicit Unix timestamp is a reading.
#[inline]
pub fn now_mono_ns() -> u64 {
    let a = anchor();
    a.unix_ns.saturating_add(a.mono.elapsed().as_nanos() as u64)
}

/// Unix time in nanoseconds of a reading of [`now_mono_ns`] (the same value).
#[inline]
pub fn mono_to_unix_ns(mono_ns: u64) -> u64 {
    mono_ns
}

/// A Unix time in nanoseconds as a reading of [`now_mono_ns`] (the same value).
#[inline]
pub fn unix_to_mono_ns(unix_ns: u64) -> u64 {
    unix_ns
}

/// The current Unix time in nanoseconds, on the same scale as span timestamps.
pub fn now_unix_ns() -> u64 {
    mono_to_unix_ns(now_mono_ns())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_close_to_wall_clock() {
        let a = now_mono_ns();
        let b = now_mono_ns();
        assert!(b >= a && a > 0);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let ours = now_unix_ns();
        assert!(ours.abs_diff(wall) < 1_000_000_000);
    }
}
