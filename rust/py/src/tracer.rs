//! The `Tracer`: builds the core from one configuration (a
//! `pulsetrace.Config`, read by [`crate::config`]), starts spans, and exposes
//! the core's state (latency, counters, kept traces).
//!
//! Lazy start: a tracer is created unconfigured, with no core and no thread
//! (importing pulsetrace creates one). Its first use (a `start_span`, a
//! reader) calls the `on_first_use` callable it was given, which configures
//! it from the environment; until then nothing is read or started.
//!
//! GIL and locks:
//! - With the GIL, O(1), waiting for no lock another thread holds:
//!   `start_span`, `current_span`, `extract`, `set_resource`, the
//!   `enabled`/`worker_alive` properties, and `reset_after_fork` (a new core:
//!   allocations and a thread).
//! - The GIL released before anything that takes a lock of the core:
//!   `latency`, `histogram_v2` and `render_metrics` (they drain the intake:
//!   `Core::sync`), `counters` (`Core::stats`: the drain, every trace shard,
//!   the export queue), `process`, `drain` and `drain_batch` (the drain and
//!   the export queue), `wait_export` (the export thread's sleep on the
//!   export queue) and `kick_export`, `shutdown` (stopping and joining the worker, then
//!   deciding every trace), `configure` (the same for the old core, and
//!   moving its kept traces).
//! - Spans end through `Core::submit_span`, with the GIL: it waits for no
//!   drain, trace shard or export queue, even with the intake full
//!   (`pulsetrace_core::pipeline`).
//! - The tracer's own mutexes (`head`, `config`, `worker`) are taken only
//!   with the GIL held and never across Python code or a GIL release, so no
//!   thread ever waits for one, and a forked child never finds one held.
//!   The current core and the encoder are `ArcSwap`s (lock-free). The
//!   core's worker thread never takes the GIL.
//!
//! Here: the class, its state and its methods; what each does beyond
//! converting lives apart: [`start`] (a span's arguments, its parent and
//! place in the trace), [`readers`] (latency rows, the exposition, the
//! counters) and [`lifecycle`] (configure, shutdown, after a fork). Policy is the core's: the head sampler places a span in its
//! trace ([`pulsetrace_core::head::HeadSampler::start`]), the exposition
//! names every family ([`pulsetrace_core::exposition`]), and the
//! configuration comes whole from Python ([`crate::config`]): until then
//! the tracer has no sampler and no limits of its own.

pub(crate) mod call;
mod lifecycle;
pub(crate) mod readers;
mod start;

use crate::attrs::{self, AtomicLimits, AttrCounters, Limits};
use crate::batch::Batch;
use crate::ctxvar::ContextVar;
use crate::guard::{guard, or_error};
use crate::span::{Span, SpanContext};
use arc_swap::ArcSwap;
use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use pulsetrace_core::clock;
use pulsetrace_core::head::HeadSampler;
use pulsetrace_core::otlp::Encoder;
use pulsetrace_core::pipeline::{Core, CoreConfig, ExportWake};
use pulsetrace_core::propagation::{normalize_tracestate, parse_traceparent};
use pulsetrace_core::span::SpanKind;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use readers::PyFamily;
use start::{header_text, links_of, parse_kind};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

/// Counters the binding keeps (the core keeps its own).
#[derive(Default, Debug)]
pub struct TracerCounters {
    pub double_end: AtomicU64,
    pub context_reset_failed: AtomicU64,
    pub traceparent_malformed: AtomicU64,
    pub tracestate_malformed: AtomicU64,
}

/// `Tracer::state`: not configured yet, tracing on, tracing off.
const UNCONFIGURED: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

#[pyclass(frozen, module = "pulsetrace._native", name = "Tracer")]
pub struct Tracer {
    /// None until the first `configure`.
    pub(crate) core: ArcSwapOption<Core>,
    config: Mutex<Option<CoreConfig>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    pub(crate) limits: AtomicLimits,
    pub(crate) attr_counters: AttrCounters,
    pub(crate) counters: TracerCounters,
    pub(crate) current: ContextVar,
    encoder: ArcSwap<Encoder>,
    /// None until the first `configure`.
    head: Mutex<Option<HeadSampler>>,
    /// UNCONFIGURED, ON or OFF (`APM_ENABLED`), read on every span start.
    state: AtomicU8,
    /// Called (with no arguments) on first use; it configures this tracer.
    on_first_use: Option<Py<PyAny>>,
    noop: OnceLock<Py<Span>>,
}

impl Tracer {
    pub(crate) fn limits(&self) -> (Limits, &AttrCounters) {
        (self.limits.get(), &self.attr_counters)
    }

    pub(crate) fn extract_context(
        &self,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> Option<SpanContext> {
        let parsed = match parse_traceparent(traceparent?) {
            Ok(p) => p,
            Err(_) => {
                self.counters
                    .traceparent_malformed
                    .fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let state = match tracestate {
            None => String::new(),
            Some(ts) => normalize_tracestate(ts).unwrap_or_else(|| {
                self.counters
                    .tracestate_malformed
                    .fetch_add(1, Ordering::Relaxed);
                String::new()
            }),
        };
        Some(SpanContext {
            trace_id: parsed.trace_id,
            span_id: parsed.span_id,
            trace_flags: parsed.flags,
            trace_state: state,
            is_remote: true,
        })
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.state.load(Ordering::Relaxed) == ON
    }

    /// Configure this tracer if it is not yet (its first use): calls
    /// `on_first_use`. Returns whether it is configured now (False while a
    /// first use is already under way on this thread, e.g. from a log
    /// handler the configuration's warnings reach).
    pub(crate) fn ready(&self, py: Python<'_>) -> PyResult<bool> {
        if self.state.load(Ordering::Acquire) != UNCONFIGURED {
            return Ok(true);
        }
        if let Some(init) = &self.on_first_use {
            init.call0(py)?;
        }
        Ok(self.state.load(Ordering::Acquire) != UNCONFIGURED)
    }

    /// The core, configuring this tracer first if needed.
    fn core(&self, py: Python<'_>) -> PyResult<Arc<Core>> {
        if !self.ready(py)? {
            return Err(PyRuntimeError::new_err(
                "pulsetrace: the tracer is not configured yet",
            ));
        }
        self.core
            .load_full()
            .ok_or_else(|| PyRuntimeError::new_err("pulsetrace: the tracer has no core"))
    }
}

#[pymethods]
impl Tracer {
    /// `Tracer(context_var, on_first_use=None)`: an unconfigured tracer (no
    /// core, no thread). `context_var` is the ContextVar that holds the
    /// current span; `on_first_use()` is called when the tracer is first
    /// used before `configure` was called, and is expected to call it.
    #[new]
    #[pyo3(signature = (context_var, on_first_use=None))]
    fn new(context_var: &Bound<'_, PyAny>, on_first_use: Option<Py<PyAny>>) -> PyResult<Self> {
        Ok(Tracer {
            core: ArcSwapOption::empty(),
            config: Mutex::new(None),
            worker: Mutex::new(None),
            // Replaced by `configure` before any span exists.
            limits: AtomicLimits::new(Limits {
                max_value_len: 0,
                max_attributes: 0,
                max_events: 0,
                max_list_len: 0,
            }),
            attr_counters: AttrCounters::default(),
            counters: TracerCounters::default(),
            current: ContextVar::new(context_var)?,
            encoder: ArcSwap::from_pointee(Encoder::new(
                &[],
                "pulsetrace",
                env!("CARGO_PKG_VERSION"),
            )),
            head: Mutex::new(None),
            state: AtomicU8::new(UNCONFIGURED),
            on_first_use,
            noop: OnceLock::new(),
        })
    }

    /// Start a span. Its parent is `parent` (a Span or SpanContext) if given,
    /// else the current span, else none (a new trace).
    #[pyo3(signature = (name, *, kind=None, attributes=None, parent=None, links=None, start_time=None))]
    pub(crate) fn start_span<'py>(
        slf: &Bound<'py, Self>,
        name: &Bound<'py, PyString>,
        kind: Option<&Bound<'py, PyAny>>,
        attributes: Option<&Bound<'py, PyAny>>,
        parent: Option<&Bound<'py, PyAny>>,
        links: Option<&Bound<'py, PyAny>>,
        start_time: Option<u64>,
    ) -> PyResult<Bound<'py, Span>> {
        let py = slf.py();
        let tracer = slf.get();
        guard(
            py,
            "tracer.start_span",
            || {
                if tracer.state.load(Ordering::Relaxed) != ON
                    && !(tracer.ready(py)? && tracer.is_enabled())
                {
                    return Ok(tracer.noop_span(slf)?.into_bound(py));
                }
                let start_mono = match start_time {
                    Some(t) => clock::unix_to_mono_ns(t),
                    None => clock::now_mono_ns(),
                };
                let kind = parse_kind(kind)?;
                let (limits, counters) = tracer.limits();
                let name = attrs::shared(name, &limits, counters);
                // Converted before the span exists: the application's code
                // that conversion may run cannot reach a half-built span.
                let attributes = attributes
                    .filter(|a| !a.is_none())
                    .map(|a| attrs::collect(a, limits.max_attributes, &limits, counters));
                let links = match links.filter(|l| !l.is_none()) {
                    Some(l) => links_of(l, &limits, counters)?,
                    None => Vec::new(),
                };
                let mut span = tracer.new_span(slf, name, kind, parent, start_mono)?;
                let inner = span.inner.get_mut();
                if let Some(a) = attributes {
                    Span::set_collected(inner, a, &limits, counters);
                }
                for link in links {
                    Span::push_link(inner, link, &limits, counters);
                }
                crate::newobj::new_bound(py, span)
            },
            || Ok(tracer.noop_span(slf)?.into_bound(py)),
        )
    }

    /// The current span, or None.
    fn current_span<'py>(&self, py: Python<'py>) -> Option<Bound<'py, Span>> {
        guard(
            py,
            "tracer.current_span",
            || {
                let cur = self.current.get(py).ok()?;
                cur.downcast_into::<Span>().ok()
            },
            || None,
        )
    }

    /// Parse incoming `traceparent` / `tracestate` values (str or bytes)
    /// into a remote context. A missing header gives None; a malformed one
    /// gives None and is counted (never raises).
    #[pyo3(signature = (traceparent, tracestate=None))]
    fn extract(
        &self,
        py: Python<'_>,
        traceparent: Option<&Bound<'_, PyAny>>,
        tracestate: Option<&Bound<'_, PyAny>>,
    ) -> Option<SpanContext> {
        guard(
            py,
            "tracer.extract",
            || {
                let Ok(tp) = header_text(traceparent?)? else {
                    self.counters
                        .traceparent_malformed
                        .fetch_add(1, Ordering::Relaxed);
                    return None;
                };
                let ts = match tracestate.and_then(header_text) {
                    Some(Ok(t)) => Some(t),
                    Some(Err(())) => {
                        self.counters
                            .tracestate_malformed
                            .fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    None => None,
                };
                self.extract_context(Some(&tp), ts.as_deref())
            },
            || None,
        )
    }

    /// Live statistics per histogram key (all status classes merged): a
    /// list of dicts (`name`, `kind`, the attributes of the span's target
    /// that key it, e.g. `db.system.name` or `server.address`, when it has
    /// them, then `count`, `errors`, `min`, `mean`, `p50`, `p90`, `p99`,
    /// `p999`, `max`; durations in seconds).
    fn latency<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        or_error("tracer.latency", || self.latency_rows(py))
    }

    /// The merged histogram of an operation (all status classes) in the
    /// HdrHistogram V2 compressed base64 encoding, or None.
    #[pyo3(signature = (name, kind="internal"))]
    fn histogram_v2(&self, py: Python<'_>, name: &str, kind: &str) -> PyResult<Option<String>> {
        or_error("tracer.histogram_v2", || {
            let kind = SpanKind::parse(kind)
                .ok_or_else(|| PyValueError::new_err(format!("no span kind {kind:?}")))?;
            let core = self.core(py)?;
            let name = name.to_owned();
            Ok(py.allow_threads(move || {
                core.sync();
                core.registry
                    .merged(kind, &name)
                    .map(|(s, _)| s.to_v2_base64())
            }))
        })
    }

    /// The Prometheus exposition of the histograms, pulsetrace's health and
    /// the caller's `extra` families (`(name, help, "counter"|"gauge",
    /// [(labels dict, value)])`), negotiated from an `Accept` header:
    /// `(body, content_type)`. Rendered without the GIL.
    #[pyo3(signature = (accept="", extra=None, const_labels=None))]
    fn render_metrics<'py>(
        &self,
        py: Python<'py>,
        accept: &str,
        extra: Option<Vec<PyFamily>>,
        const_labels: Option<BTreeMap<String, String>>,
    ) -> PyResult<(Bound<'py, PyBytes>, &'static str)> {
        or_error("tracer.render_metrics", || {
            self.metrics_text(py, accept, extra, const_labels, None)
        })
    }

    /// Every counter of the agent, by name.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        or_error("tracer.counters", || self.counter_dict(py))
    }

    /// Run the pipeline now (without the GIL): spans ended so far reach
    /// their traces and complete traces are decided. `force` decides every
    /// open trace (at shutdown).
    #[pyo3(signature = (force=false))]
    fn process(&self, py: Python<'_>, force: bool) -> PyResult<()> {
        or_error("tracer.process", || {
            let core = self.core(py)?;
            py.allow_threads(move || core.process(clock::now_mono_ns(), force));
            Ok(())
        })
    }

    /// Take kept traces for export: a list of traces, each a list of SpanData.
    #[pyo3(signature = (max_spans=4096))]
    fn drain<'py>(&self, py: Python<'py>, max_spans: usize) -> PyResult<Bound<'py, PyList>> {
        or_error("tracer.drain", || {
            let core = self.core(py)?;
            let traces = py.allow_threads(move || core.drain_export(max_spans));
            crate::batch::traces_to_py(py, traces)
        })
    }

    /// Take kept traces for export as one `Batch` (None when nothing is
    /// waiting): exporters read it as SpanData (`traces()`) or as an OTLP
    /// request (`otlp()`, encoded natively without the GIL).
    #[pyo3(signature = (max_spans=4096))]
    fn drain_batch(&self, py: Python<'_>, max_spans: usize) -> PyResult<Option<Batch>> {
        or_error("tracer.drain_batch", || {
            let core = self.core(py)?;
            let traces = py.allow_threads(move || core.drain_export(max_spans));
            if traces.is_empty() {
                return Ok(None);
            }
            Ok(Some(Batch::new(traces, self.encoder.load_full())))
        })
    }

    /// The export thread's sleep, without the GIL: returns "ready" once a
    /// batch of `batch_spans` spans waits or the oldest kept trace has
    /// waited `max_delay` seconds, "kicked" after `kick_export`, "stopped"
    /// once the core stopped (shutdown, reconfiguration), "timeout" after
    /// `timeout` seconds (None: no timeout). Nothing polls meanwhile.
    #[pyo3(signature = (max_delay, batch_spans, timeout=None))]
    fn wait_export(
        &self,
        py: Python<'_>,
        max_delay: f64,
        batch_spans: usize,
        timeout: Option<f64>,
    ) -> PyResult<&'static str> {
        or_error("tracer.wait_export", || {
            let core = self.core(py)?;
            let ns = |s: f64| (s.max(0.0) * 1e9).min(u64::MAX as f64) as u64;
            let (delay, timeout) = (ns(max_delay), timeout.map_or(u64::MAX, ns));
            let wake = py.allow_threads(move || core.wait_export(delay, batch_spans, timeout));
            Ok(match wake {
                ExportWake::Ready => "ready",
                ExportWake::Kicked => "kicked",
                ExportWake::Stopped => "stopped",
                ExportWake::TimedOut => "timeout",
            })
        })
    }

    /// End the export thread's `wait_export` now (a flush, a stop); a kick
    /// while it is not waiting ends its next wait. Lock held for a flag.
    fn kick_export(&self, py: Python<'_>) -> PyResult<()> {
        or_error("tracer.kick_export", || {
            if let Some(core) = self.core.load_full() {
                py.allow_threads(move || core.kick_export());
            }
            Ok(())
        })
    }

    /// The access log's entries (one per ended SERVER span, when the
    /// configuration's `access_log` is on): up to `max_entries` tuples
    /// `(trace_id, span_id, start_unix_ns, duration_ns, name, method, route,
    /// path, status, client_address, error)`, waiting at most `timeout`
    /// seconds (GIL released) for the first, and the entries dropped so far.
    #[pyo3(signature = (max_entries=1024, timeout=0.0))]
    fn drain_access<'py>(
        &self,
        py: Python<'py>,
        max_entries: usize,
        timeout: f64,
    ) -> PyResult<(Bound<'py, PyList>, u64)> {
        or_error("tracer.drain_access", || {
            self.access_entries(py, max_entries, timeout)
        })
    }

    /// Wake a consumer waiting in `drain_access` (it returns at once).
    fn wake_access(&self, py: Python<'_>) -> PyResult<()> {
        or_error("tracer.wake_access", || {
            if let Some(log) = self.core(py)?.access_log() {
                log.wake();
            }
            Ok(())
        })
    }

    /// Set the resource every OTLP request carries (service.name, host.name,
    /// process.pid, ...): a dict of str to str/int/float/bool.
    fn set_resource(&self, attributes: &Bound<'_, PyDict>) -> PyResult<()> {
        or_error("tracer.set_resource", || {
            let limits = self.limits.get();
            // Taken first, converted after (conversion may run code that
            // changes the dict).
            let entries: Vec<_> = attributes.iter().collect();
            let mut attrs = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let key: String = k.extract()?;
                if let Some(v) = attrs::convert(&v, &limits, &self.attr_counters) {
                    attrs.push((key, v));
                }
            }
            self.encoder.store(Arc::new(Encoder::new(
                &attrs,
                "pulsetrace",
                env!("CARGO_PKG_VERSION"),
            )));
            Ok(())
        })
    }

    /// Stop the worker thread and decide every open trace (nothing to do
    /// when the tracer was never configured).
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        or_error("tracer.shutdown", || self.stop(py))
    }

    /// In a child process after `fork`: a fresh core (the parent's worker
    /// thread does not exist here and its locks may be held), new ids.
    fn reset_after_fork(&self) -> PyResult<()> {
        or_error("tracer.reset_after_fork", || self.renew_after_fork())
    }

    /// Apply a configuration (a `pulsetrace.Config`; every field the native
    /// side uses is required): a new core (fresh histograms and buffers) and
    /// its worker thread take over; the traces the old one already kept move
    /// to the new export queue. Meant for start-up and tests, not for every
    /// request.
    fn configure(&self, py: Python<'_>, config: &Bound<'_, PyAny>) -> PyResult<()> {
        or_error("tracer.configure", || self.apply(py, config))
    }

    /// Whether tracing is on (`APM_ENABLED` / `OTEL_SDK_DISABLED`). Off, every
    /// `start_span` returns one shared no-op span.
    #[getter]
    fn get_enabled(&self, py: Python<'_>) -> PyResult<bool> {
        self.ready(py)?;
        Ok(self.is_enabled())
    }

    #[setter]
    fn set_enabled(&self, py: Python<'_>, on: bool) -> PyResult<()> {
        if !self.ready(py)? {
            return Err(PyRuntimeError::new_err(
                "pulsetrace: the tracer is not configured yet",
            ));
        }
        self.state
            .store(if on { ON } else { OFF }, Ordering::Release);
        Ok(())
    }

    /// Whether the tracer has been configured (it is on first use).
    #[getter]
    fn configured(&self) -> bool {
        self.state.load(Ordering::Acquire) != UNCONFIGURED
    }

    /// Whether kept traces are queued for export (`drain`, `drain_batch`);
    /// off, a kept trace is discarded and counted
    /// (`traces_discarded_no_exporter`), and switching off discards what is
    /// queued. pulsetrace keeps it on exactly while an exporter is set.
    #[getter]
    fn get_exporting(&self) -> bool {
        self.core.load().as_ref().is_some_and(|c| c.exporting())
    }

    #[setter]
    fn set_exporting(&self, py: Python<'_>, on: bool) -> PyResult<()> {
        let core = self.core(py)?;
        py.allow_threads(move || core.set_exporting(on));
        Ok(())
    }

    /// Probability sampling decisions made so far on a trace id that was
    /// not flagged random and had no `ot=rv` (its bits were presumed random).
    /// One atomic load: the export thread reads it to warn once.
    #[getter]
    fn randomness_presumed(&self) -> u64 {
        self.core.load().as_ref().map_or(0, |core| {
            core.counters
                .sampling_randomness_presumed
                .load(Ordering::Relaxed)
        })
    }

    /// Whether the background worker is running.
    #[getter]
    fn worker_alive(&self) -> bool {
        self.worker
            .lock()
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }
}
