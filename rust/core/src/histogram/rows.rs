//! The counters of a histogram: a fixed table of row pointers, each row a
//! block of [`ROW_SLOTS`] counters allocated on the first record into it.
//!
//! A row pointer goes from null to a row exactly once (a `compare_exchange`;
//! a recorder that loses the race frees its own block and uses the
//! winner's) and never changes again until the table is dropped, so a
//! reference to a row stays valid for as long as the table is borrowed: no
//! lock, no reclamation scheme. Zeroing (`take_interval`, `reset`) keeps the
//! rows. The publishing CAS is `Release` and every load of a pointer is
//! `Acquire`, so a recorder that finds a row also sees its zeroed counters.
#![allow(unsafe_code)]

use crate::sync::{AtomicPtr, AtomicU64, Ordering};
use std::ptr;

/// Counters per row (512 bytes of `u64`s): half an HDR bucket at 2
/// significant digits, so a series whose values span a decade holds about 8.
pub(super) const ROW_SLOTS: usize = 64;
const ROW_SHIFT: u32 = ROW_SLOTS.trailing_zeros();

pub(super) struct Row([AtomicU64; ROW_SLOTS]);

pub(super) struct Rows {
    table: Box<[AtomicPtr<Row>]>,
}

impl Rows {
    pub(super) fn new(len: usize) -> Self {
        Rows {
            table: (0..len.div_ceil(ROW_SLOTS))
                .map(|_| AtomicPtr::new(ptr::null_mut()))
                .collect(),
        }
    }

    /// The counter of slot `index`, its row allocated if this is the row's
    /// first record; `None` only for an index past the last row.
    #[inline(always)]
    pub(super) fn slot(&self, index: usize) -> Option<&AtomicU64> {
        let cell = self.table.get(index >> ROW_SHIFT)?;
        let mut p = cell.load(Ordering::Acquire);
        if p.is_null() {
            p = Self::allocate(cell);
        }
        // SAFETY: `p` is non-null, so it is the row published into `cell` by
        // `allocate` (the Acquire load, or the CAS in `allocate`, pairs with
        // that CAS's Release, so the row's initialised counters are visible).
        // A published row is only freed by `Drop`, which needs `&mut self`:
        // it outlives the `&self` borrow the returned reference is tied to.
        let row = unsafe { &*p };
        row.0.get(index & (ROW_SLOTS - 1))
    }

    /// Publishes a zeroed row into the empty `cell`, or returns the row
    /// another recorder published first.
    #[cold]
    #[inline(never)]
    fn allocate(cell: &AtomicPtr<Row>) -> *mut Row {
        let fresh = Box::into_raw(Box::new(Row(std::array::from_fn(|_| AtomicU64::new(0)))));
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

    /// The allocated rows in slot order: `(index of the row's first slot,
    /// its counters)`, the last row cut to `len` slots in all.
    pub(super) fn allocated(&self, len: usize) -> impl Iterator<Item = (usize, &[AtomicU64])> + '_ {
        self.table.iter().enumerate().filter_map(move |(i, cell)| {
            let p = cell.load(Ordering::Acquire);
            if p.is_null() {
                return None;
            }
            // SAFETY: as in `slot`: a non-null pointer is a published row,
            // freed only by `Drop` (which needs `&mut self`), and the Acquire
            // load makes its initialised counters visible.
            let row = unsafe { &*p };
            let start = i << ROW_SHIFT;
            Some((start, &row.0[..ROW_SLOTS.min(len.saturating_sub(start))]))
        })
    }

    /// Bytes of the pointer table plus the allocated rows.
    pub(super) fn heap_bytes(&self) -> usize {
        self.table.len() * std::mem::size_of::<AtomicPtr<Row>>()
            + self.allocated(usize::MAX).count() * std::mem::size_of::<Row>()
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        for cell in self.table.iter() {
            let p = cell.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: a non-null pointer was made by `Box::into_raw` in
                // `allocate` and published once; `&mut self` means no recorder
                // or reader still holds a reference into it, and each cell is
                // visited once, so the row is freed exactly once.
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}
