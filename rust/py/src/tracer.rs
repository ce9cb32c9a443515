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
//!   the export queue), `shutdown` (stopping and joining the worker, then
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

use crate::attrs::{self, AtomicLimits, AttrCounters, Limits};
use crate::batch::Batch;
use crate::config::NativeConfig;
use crate::ctxvar::ContextVar;
use crate::guard::{guard, or_error};
use crate::ids;
use crate::span::{Inner, Span, SpanContext};
use arc_swap::ArcSwap;
use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use pulsetrace_core::clock;
use pulsetrace_core::head::{HeadDecision, HeadSampler, Parent};
use pulsetrace_core::otlp::Encoder;
use pulsetrace_core::pipeline::{Core, CoreConfig};
use pulsetrace_core::propagation::{normalize_tracestate, parse_traceparent};
use pulsetrace_core::span::SpanKind;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyList, PyString};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

/// An extra metric family from Python: (name, help, kind, [(labels, value)]).
type PyFamily = (
    String,
    String,
    String,
    Vec<(std::collections::HashMap<String, String>, f64)>,
);

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
    head: Mutex<HeadSampler>,
    /// UNCONFIGURED, ON or OFF (`APM_ENABLED`), read on every span start.
    state: AtomicU8,
    /// Called (with no arguments) on first use; it configures this tracer.
    on_first_use: Option<Py<PyAny>>,
    noop: OnceLock<Py<Span>>,
}

/// The longest header value `extract` reads (a W3C `tracestate` is at most
/// 512 characters, a `traceparent` 55); a longer one is malformed.
const MAX_HEADER_LEN: usize = 1024;

/// A header value as text: a str or bytes (None: anything else, ignored as
/// an absent header), or `Err` if it is longer than [`MAX_HEADER_LEN`]
/// (malformed; not copied).
fn header_text(v: &Bound<'_, PyAny>) -> Option<Result<String, ()>> {
    if let Ok(s) = v.downcast::<PyString>() {
        if attrs::char_len(s) > MAX_HEADER_LEN {
            return Some(Err(()));
        }
        return Some(Ok(s.to_string_lossy().into_owned()));
    }
    let b = v.downcast::<pyo3::types::PyBytes>().ok()?.as_bytes();
    Some(if b.len() > MAX_HEADER_LEN {
        Err(())
    } else {
        Ok(String::from_utf8_lossy(b).into_owned())
    })
}

/// The links `start_span` was given: the contexts of the Spans and
/// SpanContexts among the first `max_events` items; anything else, and what
/// an exception in the iteration leaves out, is dropped and counted. Not an
/// iterable: a TypeError.
fn links_of(
    links: &Bound<'_, PyAny>,
    limits: &Limits,
    counters: &AttrCounters,
) -> PyResult<Vec<pulsetrace_core::span::Link>> {
    let py = links.py();
    let iter = match links.try_iter() {
        Ok(iter) => iter,
        Err(e) if e.is_instance_of::<PyTypeError>(py) => {
            return Err(PyTypeError::new_err(
                "links must be an iterable of Span or SpanContext",
            ))
        }
        Err(_) => {
            AttrCounters::bump(&counters.dropped);
            return Ok(Vec::new());
        }
    };
    let mut out = Vec::new();
    for link in iter {
        if out.len() == limits.max_events {
            AttrCounters::bump(&counters.dropped);
            break;
        }
        let Ok(link) = link else {
            AttrCounters::bump(&counters.dropped);
            break;
        };
        let ctx = if let Ok(s) = link.downcast::<Span>() {
            s.get().span_context()
        } else if let Ok(c) = link.downcast::<SpanContext>() {
            c.get().clone()
        } else {
            AttrCounters::bump(&counters.dropped);
            continue;
        };
        out.push(pulsetrace_core::span::Link {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            trace_state: ctx.trace_state,
            attributes: Vec::new(),
        });
    }
    Ok(out)
}

fn parse_kind(kind: Option<&Bound<'_, PyAny>>) -> PyResult<SpanKind> {
    let Some(kind) = kind else {
        return Ok(SpanKind::Internal);
    };
    if let Ok(s) = kind.downcast::<PyString>() {
        let s = crate::pystr::utf8(s).unwrap_or("");
        return SpanKind::parse(s)
            .or_else(|| SpanKind::parse(&s.to_ascii_lowercase()))
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                "span kind must be one of internal, server, client, producer, consumer, not {s:?}"
            ))
            });
    }
    if kind.is_instance_of::<PyInt>() {
        let v: u8 = kind.extract()?;
        return SpanKind::from_u8(v)
            .ok_or_else(|| PyValueError::new_err(format!("no span kind {v}")));
    }
    // An enum whose name is a kind (OpenTelemetry's SpanKind).
    if let Ok(name) = kind.getattr("name").and_then(|n| n.extract::<String>()) {
        if let Some(k) = SpanKind::parse(&name.to_ascii_lowercase()) {
            return Ok(k);
        }
    }
    Err(PyTypeError::new_err(
        "span kind must be a str such as 'server'",
    ))
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

    /// A new recording span (not yet current): its parent is `parent` (a
    /// Span or SpanContext) if given, else the current span, else none.
    pub(crate) fn new_span(
        &self,
        slf: &Bound<'_, Self>,
        name: Arc<str>,
        kind: SpanKind,
        parent: Option<&Bound<'_, PyAny>>,
        start_mono: u64,
    ) -> PyResult<Span> {
        let py = slf.py();
        let current;
        let parent = match parent {
            Some(p) => Some(p),
            None => {
                // Anything but a span or a context (what `use_context` may
                // have been given) is no parent.
                current = self.current.get(py)?;
                (current.is_instance_of::<Span>() || current.is_instance_of::<SpanContext>())
                    .then_some(&current)
            }
        };
        let head = *self.head.lock();
        let (trace_id, parent_span_id, decision, parent_state, local_root, remote_parent) =
            match parent.filter(|p| !p.is_none()) {
                Some(p) => {
                    if let Ok(s) = p.downcast::<Span>() {
                        let s = s.get();
                        let d = head.child(Parent {
                            trace_id: s.trace_id,
                            flags: s.trace_flags,
                            trace_state: &s.trace_state,
                            foreign: false,
                        });
                        (s.trace_id, s.span_id, d, Some(&s.trace_state), false, false)
                    } else if let Ok(c) = p.downcast::<SpanContext>() {
                        let c = c.get();
                        let d = head.child(Parent {
                            trace_id: c.trace_id,
                            flags: c.trace_flags,
                            trace_state: &c.trace_state,
                            foreign: true,
                        });
                        (
                            c.trace_id,
                            c.span_id,
                            d,
                            Some(&c.trace_state),
                            c.is_remote,
                            c.is_remote,
                        )
                    } else {
                        return Err(PyTypeError::new_err(
                            "parent must be a Span or a SpanContext",
                        ));
                    }
                }
                None => {
                    let id = ids::trace_id(py);
                    (id, 0, head.root(id), None, true, false)
                }
            };
        let HeadDecision {
            flags: trace_flags,
            trace_state,
            randomness_presumed,
        } = decision;
        if randomness_presumed {
            if let Some(core) = self.core.load().as_ref() {
                core.counters
                    .sampling_randomness_presumed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let trace_state = match (trace_state, parent_state) {
            (Some(own), _) => own,
            (None, Some(inherited)) => inherited.clone(),
            (None, None) => String::new(),
        };
        Ok(Span {
            tracer: slf.clone().unbind(),
            trace_id,
            span_id: ids::span_id(py),
            parent_span_id,
            trace_flags,
            trace_state,
            local_root,
            remote_parent,
            start_mono,
            recording: true,
            serving: std::sync::atomic::AtomicBool::new(false),
            inner: Mutex::new(Inner {
                name,
                kind,
                attributes: Vec::new(),
                events: Vec::new(),
                links: Vec::new(),
                status: Default::default(),
                status_message: String::new(),
                http_status: 0,
                dropped_attributes: 0,
                dropped_events: 0,
                attribute_bytes: 0,
                event_bytes: 0,
                ended: false,
                token: None,
                request_token: None,
            }),
        })
    }

    /// The shared span handed out while tracing is off: every method is a
    /// no-op, entering it changes no context.
    pub(crate) fn noop_span(&self, slf: &Bound<'_, Self>) -> PyResult<Py<Span>> {
        if let Some(s) = self.noop.get() {
            return Ok(s.clone_ref(slf.py()));
        }
        let span = Py::new(slf.py(), Span::noop(slf.clone().unbind()))?;
        let _ = self.noop.set(span);
        Ok(self.noop.get().expect("set above").clone_ref(slf.py()))
    }

    fn spawn(core: &Arc<Core>) -> Option<JoinHandle<()>> {
        core.spawn_worker().ok()
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
            // Replaced by the configured sampler before any span starts.
            head: Mutex::new(
                HeadSampler::parse("parentbased_always_off", 0.0)
                    .expect("a fixed, valid sampler name"),
            ),
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
        if tracer.state.load(Ordering::Relaxed) != ON && !(tracer.ready(py)? && tracer.is_enabled())
        {
            return Ok(tracer.noop_span(slf)?.into_bound(py));
        }
        guard(
            py,
            "tracer.start_span",
            || {
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
        or_error("tracer.latency", || {
            let core = self.core(py)?;
            let rows = py.allow_threads(|| {
                core.sync();
                core.registry.merged_by_target()
            });
            let out = PyList::empty(py);
            for row in rows {
                let (kind, s, errors) = (row.kind, &row.snapshot, row.errors);
                let d = PyDict::new(py);
                let secs = |ns: u64| ns as f64 / 1e9;
                d.set_item("name", &*row.name)?;
                d.set_item("kind", kind.as_str())?;
                for (attribute, _, value) in row.target.view().labels() {
                    d.set_item(attribute, value)?;
                }
                d.set_item("count", s.count())?;
                d.set_item("errors", errors)?;
                d.set_item("min", secs(s.min()))?;
                d.set_item("mean", s.mean() / 1e9)?;
                d.set_item("p50", secs(s.value_at_quantile(0.5)))?;
                d.set_item("p90", secs(s.value_at_quantile(0.9)))?;
                d.set_item("p99", secs(s.value_at_quantile(0.99)))?;
                d.set_item("p999", secs(s.value_at_quantile(0.999)))?;
                d.set_item("max", secs(s.max()))?;
                out.append(d)?;
            }
            Ok(out)
        })
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
        const_labels: Option<std::collections::BTreeMap<String, String>>,
    ) -> PyResult<(Bound<'py, pyo3::types::PyBytes>, &'static str)> {
        or_error("tracer.render_metrics", || {
            use pulsetrace_core::exposition::{self, ExpositionConfig, ExtraFamily, ExtraKind};
            let mut families = Vec::new();
            for (name, help, kind, samples) in extra.unwrap_or_default() {
                let kind = match kind.as_str() {
                    "counter" => ExtraKind::Counter,
                    "gauge" => ExtraKind::Gauge,
                    other => {
                        return Err(PyValueError::new_err(format!(
                            "metric kind must be counter or gauge, not {other:?}"
                        )))
                    }
                };
                let samples = samples
                    .into_iter()
                    .map(|(labels, v)| {
                        let mut l: Vec<(String, String)> = labels.into_iter().collect();
                        l.sort();
                        (l, v)
                    })
                    .collect();
                families.push(ExtraFamily {
                    name,
                    help,
                    kind,
                    samples,
                });
            }
            let core = self.core(py)?;
            let format = exposition::negotiate(accept);
            let cfg = ExpositionConfig {
                const_labels: const_labels.unwrap_or_default().into_iter().collect(),
                ..ExpositionConfig::default()
            };
            py.allow_threads(|| core.sync());
            let mut counters = core.counters.snapshot();
            let a = &self.attr_counters;
            let c = &self.counters;
            for (name, doc, v) in [
            (
                "attributes_converted",
                "attribute values converted to a supported type",
                &a.converted,
            ),
            (
                "attributes_dropped",
                "attribute values, events and links dropped (None, unconvertible, over a count or size limit)",
                &a.dropped,
            ),
            (
                "attributes_truncated",
                "attribute values truncated to the length limit (text) or the list length limit (lists)",
                &a.truncated,
            ),
            (
                "attributes_invalid_utf8",
                "text that was not valid UTF-8 (replaced with U+FFFD)",
                &a.invalid_utf8,
            ),
            (
                "spans_ended_twice",
                "spans ended more than once (the later calls are ignored)",
                &c.double_end,
            ),
            (
                "traceparent_malformed",
                "incoming traceparent headers that were malformed (a new trace was started)",
                &c.traceparent_malformed,
            ),
            (
                "tracestate_malformed",
                "incoming tracestate headers that were malformed (dropped)",
                &c.tracestate_malformed,
            ),
        ] {
            counters.push((name, doc, v.load(Ordering::Relaxed)));
        }
            let body = py.allow_threads(move || {
                let stats = core.stats();
                families.extend(exposition::health_families(&cfg, &core.registry, &counters));
                let gauge = |name: &str, help: &str, v: usize| ExtraFamily {
                    name: format!("pulsetrace_{name}"),
                    help: help.to_owned(),
                    kind: ExtraKind::Gauge,
                    samples: vec![(Vec::new(), v as f64)],
                };
                families.push(gauge(
                    "open_traces",
                    "traces waiting for their tail-sampling decision",
                    stats.open_traces,
                ));
                families.push(gauge(
                    "export_queue_spans",
                    "spans of kept traces waiting for an exporter",
                    stats.export_spans,
                ));
                families.push(gauge(
                    "export_queue_max_spans",
                    "bound of the export queue, in spans",
                    core.config().buffer.export_queue_spans,
                ));
                let bounds = cfg.bucket_bounds_ns();
                let exemplars = |e: &exposition::Entry| {
                    core.registry
                        .exemplars(e.kind, &e.name, e.target.view(), e.class, &bounds)
                };
                let mut out = String::with_capacity(64 * 1024);
                exposition::render(
                    &core.registry,
                    &exemplars,
                    &families,
                    &cfg,
                    format,
                    &mut out,
                );
                out
            });
            Ok((
                pyo3::types::PyBytes::new(py, body.as_bytes()),
                exposition::content_type(format),
            ))
        })
    }

    /// Every counter of the agent, by name.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        or_error("tracer.counters", || {
            let core = self.core(py)?;
            // Drains the intake, then locks each shard and the export queue.
            let s = py.allow_threads(|| core.stats());
            let d = PyDict::new(py);
            for (name, _, v) in core.counters.snapshot() {
                d.set_item(name, v)?;
            }
            let a = &self.attr_counters;
            let c = &self.counters;
            for (name, v) in [
                ("attributes_converted", &a.converted),
                ("attributes_dropped", &a.dropped),
                ("attributes_truncated", &a.truncated),
                ("attributes_invalid_utf8", &a.invalid_utf8),
                ("spans_ended_twice", &c.double_end),
                ("context_reset_failed", &c.context_reset_failed),
                ("traceparent_malformed", &c.traceparent_malformed),
                ("tracestate_malformed", &c.tracestate_malformed),
            ] {
                d.set_item(name, v.load(Ordering::Relaxed))?;
            }
            d.set_item("metric_keys", core.registry.key_count())?;
            d.set_item("metric_keys_overflowed", core.registry.overflowed())?;
            d.set_item("open_traces", s.open_traces)?;
            d.set_item("open_spans", s.open_spans)?;
            d.set_item("export_queue_traces", s.export_traces)?;
            d.set_item("export_queue_spans", s.export_spans)?;
            Ok(d)
        })
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

    /// The access log's entries (one per ended SERVER span, when the
    /// configuration's `access_log` is on): up to `max_entries` tuples
    /// `(trace_id, span_id, start_unix_ns, duration_ns, name, method, route,
    /// path, status, client_address, error)`, waiting at most `timeout`
    /// seconds (GIL released) for the first, and the entries dropped so far.
    #[pyo3(signature = (max_entries=1024, timeout=0.0))]
    #[allow(clippy::type_complexity)]
    fn drain_access<'py>(
        &self,
        py: Python<'py>,
        max_entries: usize,
        timeout: f64,
    ) -> PyResult<(Bound<'py, PyList>, u64)> {
        or_error("tracer.drain_access", || {
            let core = self.core(py)?;
            let wait = std::time::Duration::from_secs_f64(timeout.clamp(0.0, 60.0));
            let (entries, dropped) = py.allow_threads(|| match core.access_log() {
                Some(log) => (log.drain(max_entries, wait), log.dropped()),
                None => (Vec::new(), 0),
            });
            let out = PyList::empty(py);
            for e in entries {
                let row = (
                    e.trace_id,
                    e.span_id,
                    e.start_unix_ns,
                    e.duration_ns,
                    &*e.name,
                    e.method.as_deref(),
                    e.route.as_deref(),
                    e.path.as_deref(),
                    e.status,
                    e.client_address.as_deref(),
                    e.error,
                );
                out.append(row.into_pyobject(py)?)?;
            }
            Ok((out, dropped))
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
        or_error("tracer.shutdown", || {
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
        })
    }

    /// In a child process after `fork`: a fresh core (the parent's worker
    /// thread does not exist here and its locks may be held), new ids.
    fn reset_after_fork(&self) -> PyResult<()> {
        or_error("tracer.reset_after_fork", || {
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
        })
    }

    /// Apply a configuration (a `pulsetrace.Config`; every field the native
    /// side uses is required): a new core (fresh histograms and buffers) and
    /// its worker thread take over; the traces the old one already kept move
    /// to the new export queue. Meant for start-up and tests, not for every
    /// request.
    fn configure(&self, py: Python<'_>, config: &Bound<'_, PyAny>) -> PyResult<()> {
        or_error("tracer.configure", || {
            let NativeConfig {
                core: cfg,
                limits,
                head,
                enabled,
                redact,
            } = crate::config::extract(config)?;
            let new = Arc::new(Core::new(cfg.clone()));
            if let Some(old) = self.core.load().as_ref() {
                new.set_exporting(old.exporting());
            }
            *self.head.lock() = head;
            crate::wsgi::set_redacted_params(redact);
            self.limits.set(limits);
            let worker = Tracer::spawn(&new);
            let old = self.core.swap(Some(new.clone()));
            let old_worker = std::mem::replace(&mut *self.worker.lock(), worker);
            *self.config.lock() = Some(cfg);
            self.state
                .store(if enabled { ON } else { OFF }, Ordering::Release);
            // A new configuration starts its counters afresh, like its core.
            for c in [
                &self.attr_counters.converted,
                &self.attr_counters.dropped,
                &self.attr_counters.truncated,
                &self.attr_counters.invalid_utf8,
                &self.counters.double_end,
                &self.counters.context_reset_failed,
                &self.counters.traceparent_malformed,
                &self.counters.tracestate_malformed,
            ] {
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
        })
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
