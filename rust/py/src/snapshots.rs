//! The running core's sampling probability (`set_sample_rate`,
//! `sample_rate`: `POST /apm/control`), and plain copies of the native histograms for readers that keep them (the
//! `/apm/transactions` windows): `histogram_snapshots(tracer)` copies every
//! operation's merged histogram once, and a `HistogramSnapshot` gives its
//! statistics and the core's exact `delta` / `merge` of two copies. Only
//! conversions: the arithmetic is [`pulsetrace_core::histogram::Snapshot`]'s.

use crate::guard::or_error;
use crate::tracer::Tracer;
use pulsetrace_core::histogram::Snapshot;
use pulsetrace_core::pipeline::Core;
use pulsetrace_core::registry::Merged;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;

/// A cumulative (or windowed) copy of a native histogram; durations in ns.
#[pyclass(frozen, module = "pulsetrace._native", name = "HistogramSnapshot")]
pub struct HistogramSnapshot(Snapshot);

#[pymethods]
impl HistogramSnapshot {
    #[getter]
    fn count(&self) -> u64 {
        self.0.count()
    }

    #[getter]
    fn min(&self) -> u64 {
        self.0.min()
    }

    #[getter]
    fn max(&self) -> u64 {
        self.0.max()
    }

    #[getter]
    fn mean(&self) -> f64 {
        self.0.mean()
    }

    /// The value at quantile `q` (0 to 1) in ns; 0 when empty.
    fn value_at_quantile(&self, q: f64) -> PyResult<u64> {
        if !(0.0..=1.0).contains(&q) {
            return Err(PyValueError::new_err(format!(
                "a quantile is between 0 and 1, not {q}"
            )));
        }
        Ok(self.0.value_at_quantile(q))
    }

    /// How many recorded values are at most `value_ns` (within the
    /// histogram's precision: a value shares its slot with values less
    /// than one part in 10^sigfig away).
    fn count_le(&self, value_ns: u64) -> u64 {
        self.0.count_le(value_ns)
    }

    /// What was recorded between `earlier` and this snapshot of the same
    /// cumulative histogram.
    fn delta(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot(self.0.delta(&earlier.0))
    }

    /// Both snapshots' records together (ValueError if their layouts differ).
    fn merge(&self, other: &HistogramSnapshot) -> PyResult<HistogramSnapshot> {
        let mut out = self.0.clone();
        out.merge(&other.0).map_err(PyValueError::new_err)?;
        Ok(HistogramSnapshot(out))
    }

    /// HdrHistogram V2 compressed, base64.
    fn encode(&self) -> String {
        self.0.to_v2_base64()
    }
}

/// The core of a configured tracer.
pub(crate) fn core_of(py: Python<'_>, tracer: &Tracer) -> PyResult<std::sync::Arc<Core>> {
    if !tracer.ready(py)? {
        return Err(PyRuntimeError::new_err(
            "pulsetrace: the tracer is not configured yet",
        ));
    }
    tracer
        .core
        .load_full()
        .ok_or_else(|| PyRuntimeError::new_err("pulsetrace: the tracer has no core"))
}

/// Change the tail sampler's probability (`PULSETRACE_SAMPLE_RATE`) of the
/// running core; its histograms and counters stay.
#[pyfunction]
pub fn set_sample_rate(py: Python<'_>, tracer: &Tracer, rate: f64) -> PyResult<()> {
    or_error("set_sample_rate", || {
        core_of(py, tracer)?
            .sampler()
            .set_probability(rate)
            .map_err(PyValueError::new_err)
    })
}

/// The tail sampler's probability in use.
#[pyfunction]
pub fn sample_rate(py: Python<'_>, tracer: &Tracer) -> PyResult<f64> {
    or_error("sample_rate", || {
        Ok(core_of(py, tracer)?.sampler().probability())
    })
}

/// Every operation's cumulative histogram (all status classes merged), as
/// `latency()` reads them: a list of `(name, kind, target, errors,
/// HistogramSnapshot)` where `target` is a tuple of `(attribute, value)`.
/// The copies are made without the GIL.
#[pyfunction]
pub fn histogram_snapshots<'py>(py: Python<'py>, tracer: &Tracer) -> PyResult<Bound<'py, PyList>> {
    or_error("histogram_snapshots", || {
        let core = core_of(py, tracer)?;
        let rows = py.allow_threads(|| {
            core.sync();
            core.registry.merged_by_target()
        });
        snapshot_rows(py, rows)
    })
}

/// `histogram_snapshots`' rows of `merged_by_target` rows.
pub(crate) fn snapshot_rows(py: Python<'_>, rows: Vec<Merged>) -> PyResult<Bound<'_, PyList>> {
    let out = PyList::empty(py);
    for row in rows {
        let target: Vec<(&str, &str)> = row
            .target
            .view()
            .labels()
            .map(|(attr, _, value)| (attr, value))
            .collect();
        let snap = Bound::new(py, HistogramSnapshot(row.snapshot))?;
        out.append((&*row.name, row.kind.as_str(), target, row.errors, snap))?;
    }
    Ok(out)
}
