//! The `Tracer`: builds the core from one configuration dict, starts spans,
//! and exposes the core's state (latency, counters, kept traces).
//!
//! GIL contract: `start_span` and span methods run with the GIL (they touch
//! Python objects) and do O(1) work; `process`, `shutdown` and the worker
//! thread run without it.

use crate::attrs::{self, AtomicLimits, AttrCounters, Limits};
use crate::batch::Batch;
use crate::ctxvar::ContextVar;
use crate::guard::{guard, or_error};
use crate::ids;
use crate::span::{Inner, Span, SpanContext};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use pulsetrace_core::clock;
use pulsetrace_core::histogram::HistogramConfig;
use pulsetrace_core::otlp::Encoder;
use pulsetrace_core::pipeline::{BufferConfig, Core, CoreConfig};
use pulsetrace_core::propagation::{normalize_tracestate, parse_traceparent};
use pulsetrace_core::sampler::{AttributeRule, SamplerConfig};
use pulsetrace_core::span::SpanKind;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyList, PyString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

/// Head sampling (OpenTelemetry's `OTEL_TRACES_SAMPLER`), applied when a
/// span starts, before the tail sampler. A span it rejects is not traced
/// (trace flags 00, propagated downstream) but still feeds the histograms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadSampler {
    /// Follow a parent's sampled flag when there is a parent.
    pub parent_based: bool,
    /// Probability for roots (1: always on, 0: always off).
    pub ratio: f64,
}

impl HeadSampler {
    fn parse(name: &str, ratio: f64) -> PyResult<Self> {
        let (parent_based, ratio) = match name {
            "always_on" => (false, 1.0),
            "always_off" => (false, 0.0),
            "traceidratio" => (false, ratio),
            "parentbased_always_on" => (true, 1.0),
            "parentbased_always_off" => (true, 0.0),
            "parentbased_traceidratio" => (true, ratio),
            other => {
                return Err(PyValueError::new_err(format!(
                    "config head_sampler: unknown sampler {other:?}"
                )))
            }
        };
        Ok(HeadSampler {
            parent_based,
            ratio,
        })
    }

    #[inline]
    fn root_flags(&self, trace_id: u128) -> u8 {
        u8::from(pulsetrace_core::sampler::probabilistic_keep(
            trace_id, self.ratio,
        ))
    }
}

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

#[pyclass(frozen, module = "pulsetrace._native", name = "Tracer")]
pub struct Tracer {
    pub(crate) core: ArcSwap<Core>,
    config: Mutex<CoreConfig>,
    worker: Mutex<Option<JoinHandle<()>>>,
    pub(crate) limits: AtomicLimits,
    pub(crate) attr_counters: AttrCounters,
    pub(crate) counters: TracerCounters,
    pub(crate) current: ContextVar,
    encoder: ArcSwap<Encoder>,
    head: Mutex<HeadSampler>,
    enabled: AtomicBool,
    noop: OnceLock<Py<Span>>,
}

fn get<'py, T: FromPyObject<'py>>(d: &Bound<'py, PyDict>, key: &str, default: T) -> PyResult<T> {
    match d.get_item(key)? {
        None => Ok(default),
        Some(v) if v.is_none() => Ok(default),
        Some(v) => v
            .extract::<T>()
            .map_err(|e| PyValueError::new_err(format!("config {key}: {e}"))),
    }
}

fn positive(key: &str, v: usize) -> PyResult<usize> {
    if v == 0 {
        return Err(PyValueError::new_err(format!(
            "config {key}: must be at least 1"
        )));
    }
    Ok(v)
}

/// Build the core configuration from the dict `pulsetrace.config` produces.
fn build_config(d: &Bound<'_, PyDict>) -> PyResult<(CoreConfig, Limits, HeadSampler, bool)> {
    let sigfig: u8 = get(d, "histogram_sigfig", 2)?;
    let histogram = HistogramConfig {
        sigfig,
        ..HistogramConfig::default()
    }
    .validated()
    .map_err(|e| PyValueError::new_err(format!("config histogram: {e}")))?;
    let probability: f64 = get(d, "sample_rate", 1.0)?;
    if !(0.0..=1.0).contains(&probability) {
        return Err(PyValueError::new_err(
            "config sample_rate: must be within [0, 1]",
        ));
    }
    let percentile: f64 = get(d, "adaptive_percentile", 99.0)?;
    if !(0.0..100.0).contains(&percentile) {
        return Err(PyValueError::new_err(
            "config adaptive_percentile: must be within [0, 100)",
        ));
    }
    let rules: Vec<(String, Option<String>)> = get(d, "keep_attributes", Vec::new())?;
    let ms = |key: &str, default: f64| -> PyResult<u64> {
        let v: f64 = get(d, key, default)?;
        if v.is_nan() || v < 0.0 {
            return Err(PyValueError::new_err(format!("config {key}: must be >= 0")));
        }
        Ok((v * 1e6) as u64)
    };
    let sampler = SamplerConfig {
        keep_errors: get(d, "keep_errors", true)?,
        slow_threshold_ns: ms("slow_threshold_ms", 0.0)?,
        adaptive_quantile: percentile / 100.0,
        adaptive_min_count: get(d, "adaptive_min_count", 100)?,
        attribute_rules: rules
            .into_iter()
            .map(|(key, value)| AttributeRule { key, value })
            .collect(),
        probability,
        rate_limit: get(d, "rate_limit", 0.0)?,
    };
    let buffer = BufferConfig {
        max_open_traces: positive("max_open_traces", get(d, "max_open_traces", 10_000)?)?,
        max_spans_per_trace: positive(
            "max_spans_per_trace",
            get(d, "max_spans_per_trace", 1_000)?,
        )?,
        decision_wait_ns: ms("decision_wait_ms", 10_000.0)?,
        export_queue_spans: positive("export_queue_size", get(d, "export_queue_size", 20_000)?)?,
        worker_interval_ns: ms("worker_interval_ms", 200.0)?.max(1_000_000),
        intake_spans: positive("intake_queue_size", get(d, "intake_queue_size", 4_096)?)?,
        intake_interval_ns: ms("intake_interval_ms", 50.0)?.max(100_000),
    };
    let limits = Limits {
        max_value_len: positive(
            "max_attribute_length",
            get(d, "max_attribute_length", 4096)?,
        )?,
        max_attributes: get(d, "max_attributes", 128)?,
        max_events: get(d, "max_events", 128)?,
        max_list_len: get(d, "max_attribute_list_length", 128)?,
    };
    let cfg = CoreConfig {
        histogram,
        max_metric_keys: positive("max_metric_keys", get(d, "max_metric_keys", 1_000)?)?,
        sampler,
        buffer,
    };
    let head_name: String = get(d, "head_sampler", "parentbased_always_on".to_owned())?;
    let head_ratio: f64 = get(d, "head_sampler_ratio", 1.0)?;
    if !(0.0..=1.0).contains(&head_ratio) {
        return Err(PyValueError::new_err(
            "config head_sampler_ratio: must be within [0, 1]",
        ));
    }
    let head = HeadSampler::parse(&head_name, head_ratio)?;
    let enabled: bool = get(d, "enabled", true)?;
    Ok((cfg, limits, head, enabled))
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
        self.enabled.load(Ordering::Relaxed)
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
        let (trace_id, parent_span_id, trace_flags, trace_state, local_root, remote_parent) =
            match parent.filter(|p| !p.is_none()) {
                Some(p) => {
                    let head = *self.head.lock();
                    if let Ok(s) = p.downcast::<Span>() {
                        let s = s.get();
                        let flags = if head.parent_based {
                            s.trace_flags
                        } else {
                            head.root_flags(s.trace_id)
                        };
                        (
                            s.trace_id,
                            s.span_id,
                            flags,
                            s.trace_state.clone(),
                            false,
                            false,
                        )
                    } else if let Ok(c) = p.downcast::<SpanContext>() {
                        let c = c.get();
                        let flags = if head.parent_based {
                            c.trace_flags
                        } else {
                            head.root_flags(c.trace_id)
                        };
                        (
                            c.trace_id,
                            c.span_id,
                            flags,
                            c.trace_state.clone(),
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
                    let head = *self.head.lock();
                    (id, 0, head.root_flags(id), String::new(), true, false)
                }
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
    /// `Tracer(config, context_var)`: `config` is the dict built by
    /// `pulsetrace.config`, `context_var` the ContextVar that holds the
    /// current span.
    #[new]
    fn new(config: &Bound<'_, PyDict>, context_var: &Bound<'_, PyAny>) -> PyResult<Self> {
        or_error("tracer.new", || {
            let (cfg, limits, head, enabled) = build_config(config)?;
            let core = Arc::new(Core::new(cfg.clone()));
            let worker = Tracer::spawn(&core);
            Ok(Tracer {
                core: ArcSwap::new(core),
                config: Mutex::new(cfg),
                worker: Mutex::new(worker),
                limits: AtomicLimits::new(limits),
                attr_counters: AttrCounters::default(),
                counters: TracerCounters::default(),
                current: ContextVar::new(context_var)?,
                encoder: ArcSwap::from_pointee(Encoder::new(
                    &[],
                    "pulsetrace",
                    env!("CARGO_PKG_VERSION"),
                )),
                head: Mutex::new(head),
                enabled: AtomicBool::new(enabled),
                noop: OnceLock::new(),
            })
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
        if !tracer.enabled.load(Ordering::Relaxed) {
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

    /// Live per-operation statistics from the histograms: a list of dicts
    /// (`name`, `kind`, `count`, `errors`, `min`, `mean`, `p50`, `p90`,
    /// `p99`, `p999`, `max`; durations in seconds).
    fn latency<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        or_error("tracer.latency", || {
            let core = self.core.load_full();
            let rows = py.allow_threads(|| {
                core.sync();
                core.registry
                    .operations()
                    .into_iter()
                    .filter_map(|(kind, name)| {
                        core.registry
                            .merged(kind, &name)
                            .map(|(snap, errors)| (kind, name, snap, errors))
                    })
                    .collect::<Vec<_>>()
            });
            let out = PyList::empty(py);
            for (kind, name, s, errors) in rows {
                let d = PyDict::new(py);
                let secs = |ns: u64| ns as f64 / 1e9;
                d.set_item("name", &*name)?;
                d.set_item("kind", kind.as_str())?;
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
            let core = self.core.load_full();
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
            let core = self.core.load_full();
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
                let exemplars = |k, n: &str, cl| core.registry.exemplars(k, n, cl, &bounds);
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
            let core = self.core.load_full();
            py.allow_threads(|| core.sync());
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
            let s = core.stats();
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
            let core = self.core.load_full();
            py.allow_threads(move || core.process(clock::now_mono_ns(), force));
            Ok(())
        })
    }

    /// Take kept traces for export: a list of traces, each a list of SpanData.
    #[pyo3(signature = (max_spans=4096))]
    fn drain<'py>(&self, py: Python<'py>, max_spans: usize) -> PyResult<Bound<'py, PyList>> {
        or_error("tracer.drain", || {
            let core = self.core.load_full();
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
            let core = self.core.load_full();
            let traces = py.allow_threads(move || core.drain_export(max_spans));
            if traces.is_empty() {
                return Ok(None);
            }
            Ok(Some(Batch::new(traces, self.encoder.load_full())))
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

    /// Stop the worker thread and decide every open trace.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        or_error("tracer.shutdown", || {
            let core = self.core.load_full();
            core.stop_worker();
            let handle = self.worker.lock().take();
            py.allow_threads(move || {
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
            // The old core may hold locks taken by threads that no longer
            // exist: it is never touched again, and deliberately leaked.
            std::mem::forget(self.worker.lock().take());
            let core = Arc::new(Core::new(self.config.lock().clone()));
            *self.worker.lock() = Tracer::spawn(&core);
            std::mem::forget(self.core.swap(core));
            Ok(())
        })
    }

    /// Replace the configuration: a new core (fresh histograms and buffers)
    /// takes over; the traces the old one already kept move to the new
    /// export queue. Meant for start-up and tests, not for every request.
    fn configure(&self, py: Python<'_>, config: &Bound<'_, PyDict>) -> PyResult<()> {
        or_error("tracer.configure", || {
            let (cfg, limits, head, enabled) = build_config(config)?;
            let new = Arc::new(Core::new(cfg.clone()));
            *self.head.lock() = head;
            self.enabled.store(enabled, Ordering::Relaxed);
            let worker = Tracer::spawn(&new);
            let old = self.core.swap(new.clone());
            let old_worker = std::mem::replace(&mut *self.worker.lock(), worker);
            *self.config.lock() = cfg;
            self.limits.set(limits);
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
    fn get_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    #[setter]
    fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
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
