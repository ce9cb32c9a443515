//! The counters of a histogram: 32-bit counters in rows allocated on the
//! first record into them, and, only once a counter nears 2^32, a second
//! set of 64-bit rows that takes every later record.
//!
//! # Rows
//!
//! A [`Rows`] is a two-level table: a fixed array of group pointers, a
//! group being the pointers of [`GROUP_ROWS`] rows, a row a block of
//! [`ROW_SLOTS`] counters; a group and a row are allocated on the first
//! record into them (an idle histogram costs its group array: 72 bytes at 2
//! digits). A pointer goes from null to its block exactly once (a
//! `compare_exchange`; a recorder that loses the race frees its own block
//! and uses the winner's) and never changes again until the table is
//! dropped, so a reference to a block stays valid for as long as the table
//! is borrowed: no lock, no reclamation scheme. Zeroing (`take_interval`,
//! `reset`) keeps the rows. The publishing CAS is `Release` and every load
//! of a pointer is `Acquire`, so a recorder that finds a block also sees it
//! initialised.
//!
//! # Narrow and wide
//!
//! [`Counts`] records into 32-bit counters (half the bytes of 64-bit ones)
//! until one of them reaches [`PROMOTE_AT`] (2^31): that recorder publishes
//! the wide table (64-bit rows, same layout) with one `compare_exchange`,
//! and from then on every record goes to the wide rows. A slot's count is
//! its narrow counter plus its wide one. Each record is one `fetch_add` on
//! exactly one counter, so a swap-to-zero of both counters (an interval)
//! takes every record exactly once; a narrow counter only keeps growing
//! through the records in flight when the wide table appeared (each adds
//! less than [`NARROW_MAX_ADD`]), far from wrapping at 2^32. Larger
//! `record_n` counts go to the wide rows directly.
#![allow(unsafe_code)]

use crate::sync::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::ptr;

/// Counters per row: 256 bytes of `u32`s, half an HDR bucket at 2
/// significant digits, so a series whose values span a decade holds at most 8.
pub(super) const ROW_SLOTS: usize = 64;
const ROW_SHIFT: u32 = ROW_SLOTS.trailing_zeros();
/// Row pointers per group: a group (64 bytes) covers 512 slots, four
/// octaves at 2 digits, so a decade's rows sit in two or three groups.
const GROUP_ROWS: usize = 8;
const GROUP_SHIFT: u32 = ROW_SHIFT + GROUP_ROWS.trailing_zeros();

/// A narrow counter at this value or above sends every later record of the
/// histogram to the wide rows. Half the range: the other half is headroom
/// for the records in flight when it happens.
#[cfg(not(loom))]
pub(super) const PROMOTE_AT: u64 = 1 << 31;
/// Under loom, small enough for a model to reach.
#[cfg(loom)]
pub(super) const PROMOTE_AT: u64 = 3;

/// `record_n` counts from this one up go to the wide rows directly.
#[cfg(not(loom))]
pub(super) const NARROW_MAX_ADD: u64 = 1 << 24;
#[cfg(loom)]
pub(super) const NARROW_MAX_ADD: u64 = 2;

/// An atomic counter a row is made of.
pub(super) trait Counter: Send + Sync {
    fn zero() -> Self;
}

impl Counter for AtomicU32 {
    fn zero() -> Self {
        AtomicU32::new(0)
    }
}

impl Counter for AtomicU64 {
    fn zero() -> Self {
        AtomicU64::new(0)
    }
}

pub(super) struct Row<C>([C; ROW_SLOTS]);

/// The pointers of [`GROUP_ROWS`] consecutive rows.
struct Group<C>([AtomicPtr<Row<C>>; GROUP_ROWS]);

/// The pointee of `cell`, made by `make` and published if `cell` is still
/// null (a maker that loses the race frees its own and uses the winner's).
/// The pointee lives as long as the owner of `cell` (freed only by the
/// `Drop` of [`Rows`] or [`Counts`]), so it is borrowed for as long as `cell` is.
#[inline(always)]
fn get_or_publish<T>(cell: &AtomicPtr<T>, make: impl FnOnce() -> T) -> &T {
    let mut p = cell.load(Ordering::Acquire);
    if p.is_null() {
        p = publish(cell, make);
    }
    // SAFETY: `p` is non-null, so it is the block published into `cell` by
    // `publish` (the Acquire load, or the CAS in `publish`, pairs with that
    // CAS's Release, so the block's initialised contents are visible). A
    // published block is only freed by the `Drop` of the `Rows` or `Counts`
    // that owns `cell`, which needs `&mut`: it outlives the borrow of `cell`.
    unsafe { &*p }
}

#[cold]
#[inline(never)]
fn publish<T>(cell: &AtomicPtr<T>, make: impl FnOnce() -> T) -> *mut T {
    let fresh = Box::into_raw(Box::new(make()));
    match cell.compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => fresh,
        Err(winner) => {
            // SAFETY: `fresh` comes from `Box::into_raw` just above and the
            // failed CAS did not publish it: nothing else has seen it, so
            // this is its only owner and it is freed once.
            drop(unsafe { Box::from_raw(fresh) });
            winner
        }
    }
}

/// The published pointee of `cell`, if any.
fn get<T>(cell: &AtomicPtr<T>) -> Option<&T> {
    let p = cell.load(Ordering::Acquire);
    // SAFETY: as in `get_or_publish`: a non-null pointer is a published
    // block, made visible by the Acquire load, freed only by its owner's `Drop`.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// A two-level table of rows: groups of row pointers, each group and each
/// row allocated on the first record into it (see the module docs).
pub(super) struct Rows<C> {
    groups: Box<[AtomicPtr<Group<C>>]>,
}

impl<C: Counter> Rows<C> {
    pub(super) fn new(len: usize) -> Self {
        Rows {
            groups: (0..len.div_ceil(ROW_SLOTS << GROUP_ROWS.trailing_zeros()))
                .map(|_| AtomicPtr::new(ptr::null_mut()))
                .collect(),
        }
    }

    /// The counter of slot `index`, its group and row allocated if this is
    /// their first record; `None` only for an index past the last group.
    #[inline(always)]
    pub(super) fn slot(&self, index: usize) -> Option<&C> {
        let group = get_or_publish(self.groups.get(index >> GROUP_SHIFT)?, || {
            Group(std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())))
        });
        let cell = &group.0[(index >> ROW_SHIFT) & (GROUP_ROWS - 1)];
        let row = get_or_publish(cell, || Row(std::array::from_fn(|_| C::zero())));
        row.0.get(index & (ROW_SLOTS - 1))
    }

    /// The allocated rows in slot order: `(index of the row's first slot,
    /// its counters)`, the last row cut to `len` slots in all.
    pub(super) fn allocated(&self, len: usize) -> impl Iterator<Item = (usize, &[C])> + '_ {
        self.groups
            .iter()
            .enumerate()
            .filter_map(|(g, cell)| get(cell).map(|group| (g, group)))
            .flat_map(move |(g, group)| {
                group.0.iter().enumerate().filter_map(move |(r, cell)| {
                    let row = get(cell)?;
                    let start = (g << GROUP_SHIFT) + (r << ROW_SHIFT);
                    Some((start, &row.0[..ROW_SLOTS.min(len.saturating_sub(start))]))
                })
            })
    }

    /// Bytes of the group table, the allocated groups and rows.
    pub(super) fn heap_bytes(&self) -> usize {
        let groups = self.groups.iter().filter(|g| get(g).is_some()).count();
        self.groups.len() * std::mem::size_of::<AtomicPtr<Group<C>>>()
            + groups * std::mem::size_of::<Group<C>>()
            + self.allocated(usize::MAX).count() * std::mem::size_of::<Row<C>>()
    }
}

impl<C> Drop for Rows<C> {
    fn drop(&mut self) {
        for cell in self.groups.iter() {
            let g = cell.load(Ordering::Acquire);
            if g.is_null() {
                continue;
            }
            // SAFETY: a non-null pointer was made by `Box::into_raw` in
            // `publish` and published once; `&mut self` means no recorder or
            // reader still holds a reference into the table, and each cell
            // is visited once, so each group and row is freed exactly once.
            let group = unsafe { Box::from_raw(g) };
            for row in group.0.iter() {
                let r = row.load(Ordering::Acquire);
                if !r.is_null() {
                    // SAFETY: as for the group just above.
                    drop(unsafe { Box::from_raw(r) });
                }
            }
        }
    }
}

/// The narrow rows and, once promoted, the wide ones (see the module docs).
pub(super) struct Counts {
    narrow: Rows<AtomicU32>,
    /// Null until a narrow counter reaches [`PROMOTE_AT`]; then set once.
    wide: AtomicPtr<Rows<AtomicU64>>,
}

impl Counts {
    pub(super) fn new(len: usize) -> Self {
        Counts {
            narrow: Rows::new(len),
            wide: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// The wide rows, if promoted.
    #[inline(always)]
    fn wide(&self) -> Option<&Rows<AtomicU64>> {
        get(&self.wide)
    }

    /// Adds `n` to slot `index` (nothing for an index past the last slot).
    #[inline(always)]
    pub(super) fn add(&self, index: usize, n: u64) {
        if n < NARROW_MAX_ADD && self.wide.load(Ordering::Relaxed).is_null() {
            if let Some(slot) = self.narrow.slot(index) {
                // `n < 2^24` fits; the counter stays far from 2^32 (module docs).
                let old = slot.fetch_add(n as u32, Ordering::Relaxed);
                if u64::from(old) + n >= PROMOTE_AT {
                    self.promote();
                }
            }
            return;
        }
        self.add_wide(index, n);
    }

    #[cold]
    #[inline(never)]
    fn add_wide(&self, index: usize, n: u64) {
        if let Some(slot) = self.promote().slot(index) {
            slot.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The wide rows, published now if they are not yet.
    #[cold]
    #[inline(never)]
    fn promote(&self) -> &Rows<AtomicU64> {
        get_or_publish(&self.wide, || Rows {
            groups: (0..self.narrow.groups.len())
                .map(|_| AtomicPtr::new(ptr::null_mut()))
                .collect(),
        })
    }

    /// `read` applied to every counter of the allocated rows, narrow plus
    /// wide per slot, as (index of the first slot, counts up to the end of
    /// the last allocated row). A row allocated while this runs may be left
    /// out (its records are as if they came after the read).
    pub(super) fn read(
        &self,
        len: usize,
        read_narrow: impl Fn(&AtomicU32) -> u64,
        read_wide: impl Fn(&AtomicU64) -> u64,
    ) -> (usize, Vec<u64>) {
        let wide = self.wide();
        let (mut lo, mut hi) = (usize::MAX, 0);
        let starts = self.narrow.allocated(len).map(|(s, r)| (s, r.len()));
        let wide_starts = wide
            .into_iter()
            .flat_map(|w| w.allocated(len).map(|(s, r)| (s, r.len())));
        for (start, n) in starts.chain(wide_starts) {
            lo = lo.min(start);
            hi = hi.max(start + n);
        }
        if lo == usize::MAX {
            return (0, Vec::new());
        }
        let mut counts = vec![0u64; hi - lo];
        fn add_into<C>(
            counts: &mut [u64],
            lo: usize,
            start: usize,
            row: &[C],
            read: impl Fn(&C) -> u64,
        ) {
            if let Some(dst) = start
                .checked_sub(lo)
                .and_then(|at| counts.get_mut(at..at + row.len()))
            {
                for (c, slot) in dst.iter_mut().zip(row) {
                    *c = c.saturating_add(read(slot));
                }
            }
        }
        for (start, row) in self.narrow.allocated(len) {
            add_into(&mut counts, lo, start, row, &read_narrow);
        }
        if let Some(w) = wide {
            for (start, row) in w.allocated(len) {
                add_into(&mut counts, lo, start, row, &read_wide);
            }
        }
        (lo, counts)
    }

    /// Zeroes every allocated counter (rows stay).
    pub(super) fn zero(&self, len: usize) {
        for (_, row) in self.narrow.allocated(len) {
            row.iter().for_each(|c| c.store(0, Ordering::Relaxed));
        }
        if let Some(w) = self.wide() {
            for (_, row) in w.allocated(len) {
                row.iter().for_each(|c| c.store(0, Ordering::Relaxed));
            }
        }
    }

    /// Whether the wide rows exist.
    #[cfg(test)]
    pub(super) fn promoted(&self) -> bool {
        self.wide().is_some()
    }

    /// Allocated (narrow, wide) rows.
    pub(super) fn rows_allocated(&self) -> (usize, usize) {
        let wide = self.wide().map_or(0, |w| w.allocated(usize::MAX).count());
        (self.narrow.allocated(usize::MAX).count(), wide)
    }

    /// Heap bytes: the narrow table and rows, and the wide ones if any.
    pub(super) fn heap_bytes(&self) -> usize {
        self.narrow.heap_bytes()
            + self.wide().map_or(0, |w| {
                std::mem::size_of::<Rows<AtomicU64>>() + w.heap_bytes()
            })
    }
}

impl Drop for Counts {
    fn drop(&mut self) {
        let p = self.wide.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: a non-null pointer was made by `Box::into_raw` in
            // `promote` and published once; `&mut self` means nothing borrows
            // it any more, so it is freed exactly once.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}
