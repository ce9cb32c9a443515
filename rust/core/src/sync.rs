//! The one place atomics come from: std normally, loom's model-checked
//! versions under `RUSTFLAGS="--cfg loom"` (see `tests/loom_histogram.rs`).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
