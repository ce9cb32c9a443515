//! The tracer's life: a configuration applied (a new core and worker take
//! over, the old one's kept traces move over), the worker stopped at
//! shutdown, a fresh core in a forked child.
//!
//! GIL and locks: the tracer's mutexes are taken with the GIL held and
//! never across a GIL release; stopping and joining a worker, and deciding
//! the old core's traces, run without the GIL (see [`super`]).

use super::{Tracer, OFF, ON};
use crate::config::NativeConfig;
use crate::ids;
use pulsetrace_core::clock;
use pulsetrace_core::pipeline::Core;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

impl Tracer {
    /// The binding's own counters: name, help text in the exposition
    /// (`None`: in `counters()` only), value. One list for `counters()`,
    /// `render_metrics()` and the reset of `configure`.
    pub(super) fn own_counters(&self) -> [(&'static str, Option<&'static str>, &AtomicU64); 8] {
        let a = &self.attr_counters;
        let c = &self.counters;
        [
            (
                "attributes_converted",
                Some("attribute values converted to a supported type"),
                &a.converted,
            ),
            (
                "attributes_dropped",
                Some("attribute values, events and links dropped (None, unconvertible, over a count or size limit)"),
                &a.dropped,
            ),
            (
                "attributes_truncated",
                Some("attribute values truncated to the length limit (text) or the list length limit (lists)"),
                &a.truncated,
            ),
            (
                "attributes_invalid_utf8",
                Some("text that was not valid UTF-8 (replaced with U+FFFD)"),
                &a.invalid_utf8,
            ),
            (
                "spans_ended_twice",
                Some("spans ended more than once (the later calls are ignored)"),
                &c.double_end,
            ),
            ("context_reset_failed", None, &c.context_reset_failed),
            (
                "traceparent_malformed",
                Some("incoming traceparent headers that were malformed (a new trace was started)"),
                &c.traceparent_malformed,
            ),
            (
                "tracestate_malformed",
                Some("incoming tracestate headers that were malformed (dropped)"),
                &c.tracestate_malformed,
            ),
        ]
    }

    pub(super) fn spawn(core: &Arc<Core>) -> Option<JoinHandle<()>> {
        core.spawn_worker().ok()
    }

    pub(super) fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let Some(core) = self.core.load_full() else {
            return Ok(());
        };
        let handle = self.worker.lock().take();
        py.allow_threads(move || {
            core.stop_worker();
            if let Some(h) = handle {
                let _ = h.join();
            }
            core.process(clock::now_mono_ns(), true);
        });
        Ok(())
    }

    pub(super) fn renew_after_fork(&self) -> PyResult<()> {
        ids::bump_fork_generation();
        // The old core may hold locks taken by threads that no longer exist:
        // it is never touched again, and deliberately leaked.
        std::mem::forget(self.worker.lock().take());
        let Some(cfg) = self.config.lock().clone() else {
            return Ok(()); // never configured: nothing to renew
        };
        let core = Arc::new(Core::new(cfg));
        if let Some(old) = self.core.load().as_ref() {
            core.set_exporting(old.exporting());
        }
        *self.worker.lock() = Tracer::spawn(&core);
        std::mem::forget(self.core.swap(Some(core)));
        Ok(())
    }

    pub(super) fn apply(&self, py: Python<'_>, config: &Bound<'_, PyAny>) -> PyResult<()> {
        let NativeConfig {
            core: cfg,
            limits,
            head,
            enabled,
            redact,
            excluded_urls,
        } = crate::config::extract(config)?;
        // Compiled first: an expression that does not compile (from a
        // caller that bypassed `Config`'s check) changes nothing.
        crate::http::set_excluded_urls(excluded_urls).map_err(|e| {
            pyo3::exceptions::PyValueError::new_err(format!(
                "pulsetrace config field excluded_urls: {e}"
            ))
        })?;
        let new = Arc::new(Core::new(cfg.clone()));
        if let Some(old) = self.core.load().as_ref() {
            new.set_exporting(old.exporting());
        }
        *self.head.lock() = Some(head);
        crate::http::set_redacted_params(redact);
        self.limits.set(limits);
        let worker = Tracer::spawn(&new);
        let old = self.core.swap(Some(new.clone()));
        let old_worker = std::mem::replace(&mut *self.worker.lock(), worker);
        *self.config.lock() = Some(cfg);
        self.state
            .store(if enabled { ON } else { OFF }, Ordering::Release);
        // A new configuration starts its counters afresh, like its core.
        for (_, _, c) in self.own_counters() {
            c.store(0, Ordering::Relaxed);
        }
        let Some(old) = old else {
            return Ok(());
        };
        py.allow_threads(move || {
            old.stop_worker();
            if let Some(h) = old_worker {
                let _ = h.join();
            }
            old.process(clock::now_mono_ns(), true);
            new.adopt_export(&old);
        });
        Ok(())
    }
}
