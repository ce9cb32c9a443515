//! The access log's queue: one entry per ended SERVER span, taken from the
//! span where the core processes it (the worker thread, off the request
//! path), and handed to the one consumer that writes the lines.
//!
//! Concurrency: producers are whoever processes spans (the worker; a request
//! thread only when the intake was full); they push on a bounded lock-free
//! queue and, when the consumer is waiting, wake it through a condvar. A full
//! queue drops the entry and counts it: processing never waits for the
//! consumer. The consumer ([`AccessLog::drain`]) blocks on the condvar until
//! entries arrive or its timeout passes: it is woken, not polling.

use crate::span::{AttrValue, SpanKind, SpanRecord};
use crossbeam_queue::ArrayQueue;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What one access line says about a request.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessEntry {
    pub trace_id: u128,
    pub span_id: u64,
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    /// The span name (`GET /users/<id>`), for a request with no method
    /// attribute.
    pub name: Arc<str>,
    pub method: Option<Arc<str>>,
    /// The route template when known, else the path.
    pub route: Option<Arc<str>>,
    pub path: Option<Arc<str>>,
    /// 0 when the request ended with no response.
    pub status: u16,
    pub client_address: Option<Arc<str>>,
    pub error: bool,
}

impl AccessEntry {
    /// The entry of a SERVER span, None for any other kind.
    pub fn of(rec: &SpanRecord) -> Option<AccessEntry> {
        if rec.kind != SpanKind::Server {
            return None;
        }
        let text = |key: &str| -> Option<Arc<str>> {
            rec.attributes.iter().find_map(|(k, v)| match v {
                AttrValue::Str(s) if &**k == key => Some(s.clone()),
                _ => None,
            })
        };
        Some(AccessEntry {
            trace_id: rec.trace_id,
            span_id: rec.span_id,
            start_unix_ns: rec.start_unix_ns,
            duration_ns: rec.duration_ns,
            name: rec.name.clone(),
            method: text("http.request.method"),
            route: text("http.route"),
            path: text("url.path"),
            status: rec.http_status,
            client_address: text("client.address"),
            error: rec.is_error(),
        })
    }
}

/// The bounded queue between span processing and the access-log writer.
pub struct AccessLog {
    queue: ArrayQueue<AccessEntry>,
    dropped: AtomicU64,
    waiting: AtomicBool,
    lock: Mutex<()>,
    ready: Condvar,
}

impl AccessLog {
    pub fn new(capacity: usize) -> Self {
        AccessLog {
            queue: ArrayQueue::new(capacity.max(1)),
            dropped: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            lock: Mutex::new(()),
            ready: Condvar::new(),
        }
    }

    /// Queue the entry of `rec` if it is a SERVER span (dropped and counted
    /// when the queue is full). Never blocks.
    #[inline]
    pub fn offer(&self, rec: &SpanRecord) {
        let Some(entry) = AccessEntry::of(rec) else {
            return;
        };
        if self.queue.push(entry).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.waiting.load(Ordering::SeqCst) {
            let _guard = self.lock.lock();
            self.ready.notify_one();
        }
    }

    /// Entries dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Take up to `max` entries, waiting at most `timeout` for the first.
    pub fn drain(&self, max: usize, timeout: Duration) -> Vec<AccessEntry> {
        let mut out = self.take(max);
        if out.is_empty() && !timeout.is_zero() {
            let mut guard = self.lock.lock();
            self.waiting.store(true, Ordering::SeqCst);
            // Checked again under the lock: an entry pushed before `waiting`
            // was visible did not notify.
            if self.queue.is_empty() {
                self.ready.wait_for(&mut guard, timeout);
            }
            self.waiting.store(false, Ordering::Release);
            drop(guard);
            out = self.take(max);
        }
        out
    }

    /// Wake a consumer waiting in [`AccessLog::drain`] (to stop it).
    pub fn wake(&self) {
        let _guard = self.lock.lock();
        self.ready.notify_all();
    }

    fn take(&self, max: usize) -> Vec<AccessEntry> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.queue.pop() {
                Some(e) => out.push(e),
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn server(id: u64, status: u16) -> SpanRecord {
        let mut s = SpanRecord::new(7, id, 0, "GET /users/<id>");
        s.kind = SpanKind::Server;
        s.http_status = status;
        s.duration_ns = 1_500_000;
        s.attributes
            .push(("http.request.method".into(), AttrValue::Str("GET".into())));
        s.attributes
            .push(("http.route".into(), AttrValue::Str("/users/<id>".into())));
        s.attributes
            .push(("client.address".into(), AttrValue::Str("10.0.0.1".into())));
        s
    }

    #[test]
    fn only_server_spans_become_entries_with_their_request_facts() {
        let log = AccessLog::new(4);
        log.offer(&SpanRecord::new(7, 1, 0, "internal"));
        log.offer(&server(2, 503));
        let got = log.drain(10, Duration::ZERO);
        assert_eq!(got.len(), 1);
        let e = &got[0];
        assert_eq!(e.span_id, 2);
        assert_eq!(e.method.as_deref(), Some("GET"));
        assert_eq!(e.route.as_deref(), Some("/users/<id>"));
        assert_eq!(e.client_address.as_deref(), Some("10.0.0.1"));
        assert_eq!((e.status, e.error, e.duration_ns), (503, true, 1_500_000));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let log = AccessLog::new(2);
        for i in 0..5 {
            log.offer(&server(i + 1, 200));
        }
        assert_eq!(log.dropped(), 3);
        assert_eq!(log.drain(10, Duration::ZERO).len(), 2);
    }

    #[test]
    fn a_waiting_consumer_is_woken_by_an_entry() {
        let log = Arc::new(AccessLog::new(8));
        let producer = {
            let log = log.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                log.offer(&server(1, 200));
            })
        };
        let t0 = Instant::now();
        let got = log.drain(10, Duration::from_secs(10));
        producer.join().unwrap();
        assert_eq!(got.len(), 1);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
