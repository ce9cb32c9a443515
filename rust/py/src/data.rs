//! Read-only views handed to Python: `SpanData` (a span of a kept trace, for
//! exporters and tests) and `Histogram` (a standalone native histogram).
//!
//! GIL and locks: `SpanData` is immutable, built with the GIL from a drained
//! span. `Histogram` records and reads with atomics only (the core's
//! lock-free histogram); `encode` and `add_encoded` release the GIL. No
//! mutex.

use crate::span::attributes_dict;
use pulsetrace_core::histogram::{Histogram as CoreHistogram, HistogramConfig, Snapshot};
use pulsetrace_core::sampler::KeepReason;
use pulsetrace_core::span::SpanRecord;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// A finished span of a kept trace.
#[pyclass(frozen, module = "pulsetrace._native", name = "SpanData")]
pub struct SpanData {
    #[pyo3(get)]
    trace_id: u128,
    #[pyo3(get)]
    span_id: u64,
    #[pyo3(get)]
    parent_span_id: Option<u64>,
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    kind: &'static str,
    #[pyo3(get)]
    start_time_unix_nano: u64,
    #[pyo3(get)]
    end_time_unix_nano: u64,
    #[pyo3(get)]
    duration_ns: u64,
    #[pyo3(get)]
    status: &'static str,
    #[pyo3(get)]
    status_message: String,
    #[pyo3(get)]
    attributes: Py<PyDict>,
    #[pyo3(get)]
    events: Py<PyList>,
    #[pyo3(get)]
    links: Py<PyList>,
    #[pyo3(get)]
    dropped_attributes: u32,
    #[pyo3(get)]
    dropped_events: u32,
    #[pyo3(get)]
    local_root: bool,
    #[pyo3(get)]
    remote_parent: bool,
    #[pyo3(get)]
    trace_flags: u8,
    #[pyo3(get)]
    trace_state: String,
    /// Why the trace was kept (`error`, `slow`, `adaptive`, `attribute`,
    /// `probabilistic`), or None for a late span of a kept trace.
    #[pyo3(get)]
    keep_reason: Option<&'static str>,
}

fn reason(r: Option<KeepReason>) -> Option<&'static str> {
    r.map(|r| match r {
        KeepReason::Error => "error",
        KeepReason::ErrorLog => "error_log",
        KeepReason::Slow => "slow",
        KeepReason::Adaptive => "adaptive",
        KeepReason::Attribute => "attribute",
        KeepReason::Probabilistic => "probabilistic",
    })
}

impl SpanData {
    pub fn new(py: Python<'_>, s: SpanRecord, keep: Option<KeepReason>) -> PyResult<Self> {
        let events = PyList::empty(py);
        for e in &s.events {
            let d = PyDict::new(py);
            d.set_item("name", &e.name)?;
            d.set_item("time_unix_nano", e.time_unix_ns)?;
            d.set_item("attributes", attributes_dict(py, &e.attributes)?)?;
            events.append(d)?;
        }
        let links = PyList::empty(py);
        for l in &s.links {
            let d = PyDict::new(py);
            d.set_item("trace_id", l.trace_id)?;
            d.set_item("span_id", l.span_id)?;
            d.set_item("trace_state", &l.trace_state)?;
            d.set_item("attributes", attributes_dict(py, &l.attributes)?)?;
            links.append(d)?;
        }
        Ok(SpanData {
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent_span_id: (s.parent_span_id != 0).then_some(s.parent_span_id),
            kind: s.kind.as_str(),
            start_time_unix_nano: s.start_unix_ns,
            end_time_unix_nano: s.end_unix_ns(),
            duration_ns: s.duration_ns,
            status: s.status.as_str(),
            attributes: attributes_dict(py, &s.attributes)?.unbind(),
            events: events.unbind(),
            links: links.unbind(),
            dropped_attributes: s.dropped_attributes,
            dropped_events: s.dropped_events,
            local_root: s.local_root,
            remote_parent: s.remote_parent,
            trace_flags: s.trace_flags,
            keep_reason: reason(keep),
            name: s.name.to_string(),
            status_message: s.status_message,
            trace_state: s.trace_state,
        })
    }
}

#[pymethods]
impl SpanData {
    fn __repr__(&self) -> String {
        format!(
            "<SpanData {:?} kind={} trace_id={:032x} span_id={:016x} {}ns>",
            self.name, self.kind, self.trace_id, self.span_id, self.duration_ns
        )
    }
}

/// A standalone lock-free HDR histogram of nanosecond values.
#[pyclass(frozen, module = "pulsetrace._native", name = "Histogram")]
pub struct Histogram {
    inner: CoreHistogram,
}

#[pymethods]
impl Histogram {
    #[new]
    #[pyo3(signature = (significant_digits=2, highest=3_600_000_000_000))]
    fn new(significant_digits: u8, highest: u64) -> PyResult<Self> {
        crate::guard::or_error("histogram.new", || {
            let cfg = HistogramConfig {
                highest,
                sigfig: significant_digits,
            }
            .validated()
            .map_err(PyValueError::new_err)?;
            Ok(Histogram {
                inner: CoreHistogram::new(cfg),
            })
        })
    }

    /// Record one value (nanoseconds). Lock-free; values above the highest
    /// trackable value are clamped and counted.
    fn record(&self, py: Python<'_>, value: u64) {
        crate::guard::guard(py, "histogram.record", || self.inner.record(value), || ());
    }

    #[getter]
    fn count(&self) -> u64 {
        self.inner.snapshot().count()
    }

    #[getter]
    fn min(&self) -> u64 {
        self.inner.snapshot().min()
    }

    #[getter]
    fn max(&self) -> u64 {
        self.inner.snapshot().max()
    }

    #[getter]
    fn mean(&self) -> f64 {
        self.inner.snapshot().mean()
    }

    /// The exact sum of the recorded values (clamped ones at the highest).
    #[getter]
    fn sum(&self) -> u128 {
        self.inner.snapshot().sum_ns()
    }

    /// The value at a quantile in [0, 1].
    fn value_at_quantile(&self, q: f64) -> PyResult<u64> {
        crate::guard::or_error("histogram.value_at_quantile", || {
            Ok(self.inner.snapshot().value_at_quantile(q))
        })
    }

    /// HdrHistogram V2 compressed encoding, base64.
    fn encode(&self, py: Python<'_>) -> PyResult<String> {
        crate::guard::or_error("histogram.encode", || {
            let snap = self.inner.snapshot();
            Ok(py.allow_threads(move || snap.to_v2_base64()))
        })
    }

    /// Adds another histogram's records, as if they had been recorded
    /// here: `v2` is its encoding (`encode()`, base64-decoded), `sum`,
    /// `min` and `max` its exact figures, which the encoding does not
    /// carry (a `min`/`max` outside its slot counts at the slot's edge;
    /// how many of its values were clamped is not carried either). The
    /// core's exact merge; ValueError naming what is wrong with the bytes,
    /// or a different configuration, adding nothing.
    fn add_encoded(
        &self,
        py: Python<'_>,
        v2: &[u8],
        sum: u128,
        min: u64,
        max: u64,
    ) -> PyResult<()> {
        crate::guard::or_error("histogram.add_encoded", || {
            let snap = py
                .allow_threads(|| Snapshot::from_v2_bytes(v2, sum, min, max, 0))
                .map_err(PyValueError::new_err)?;
            self.inner.add(&snap).map_err(PyValueError::new_err)
        })
    }

    /// Adds `other`'s records (a copy of them, taken now), as if they had
    /// been recorded here; ValueError, adding nothing, if the
    /// configurations differ.
    fn add(&self, other: &Histogram) -> PyResult<()> {
        crate::guard::or_error("histogram.add", || {
            let snap = other.inner.snapshot();
            self.inner.add(&snap).map_err(PyValueError::new_err)
        })
    }

    fn reset(&self) {
        self.inner.reset();
    }

    /// The number of recorded values at or below each of `bounds` (one
    /// snapshot, so they are consistent), and the total count: the
    /// cumulative buckets of a Prometheus histogram (`le`), `+Inf` last.
    /// A value counts in the bucket of its HDR slot (within the
    /// histogram's precision of the bound).
    fn cumulative_counts(&self, bounds: Vec<u64>) -> (Vec<u64>, u64) {
        let snap = self.inner.snapshot();
        let counts = bounds.iter().map(|&b| snap.count_le(b)).collect();
        (counts, snap.count())
    }
}
