//! The intake's queue, allocated by its first push: a configured core that
//! never sees a span (a pre-fork server's master) holds no intake buffer
//! (4,096 span slots, about 900 KB, every page written by the queue's
//! set-up), so the workers it forks do not carry the master's beside their
//! own.

use crossbeam_queue::ArrayQueue;
use std::sync::OnceLock;

pub(super) struct LazyQueue<T> {
    capacity: usize,
    /// Set once, by the first push (concurrent first pushes wait for the
    /// one allocation, once in the life of the core).
    queue: OnceLock<ArrayQueue<T>>,
}

impl<T> LazyQueue<T> {
    /// A queue of `capacity` (at least 1) slots, none allocated yet.
    pub(super) fn new(capacity: usize) -> Self {
        LazyQueue {
            capacity: capacity.max(1),
            queue: OnceLock::new(),
        }
    }

    #[inline]
    pub(super) fn push(&self, value: T) -> Result<(), T> {
        self.queue
            .get_or_init(|| ArrayQueue::new(self.capacity))
            .push(value)
    }

    #[inline]
    pub(super) fn pop(&self) -> Option<T> {
        self.queue.get()?.pop()
    }

    pub(super) fn len(&self) -> usize {
        self.queue.get().map_or(0, ArrayQueue::len)
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }
}
