//! Plain copies of the native histograms for readers that keep them (the
//! `/apm/transactions` windows): `histogram_snapshots(tracer)` copies every
//! operation's merged histogram once, and a `HistogramSnapshot` gives its
//! statistics and the core's exact `delta` / `merge` of two copies. Only
//! conversions: the arithmetic is [`pulsetrace_core::histogram::Snapshot`]'s.

use crate::guard::or_error;
use crate::tracer::Tracer;
use pulsetrace_core::histogram::Snapshot;
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

/// Every operation's cumulative histogram (all status classes merged), as
/// `latency()` reads them: a list of `(name, kind, target, errors,
/// HistogramSnapshot)` where `target` is a tuple of `(attribute, value)`.
/// The copies are made without the GIL.
#[pyfunction]
pub fn histogram_snapshots<'py>(
    py: Python<'py>,
    tracer: &Tracer,
) -> PyResult<Bound<'py, PyList>> {
    or_error("histogram_snapshots", || {
        if !tracer.ready(py)? {
            return Err(PyRuntimeError::new_err(
                "pulsetrace: the tracer is not configured yet",
            ));
        }
        let Some(core) = tracer.core.load_full() else {
            return Err(PyRuntimeError::new_err("pulsetrace: the tracer has no core"));
        };
        let rows = py.allow_threads(|| {
            core.sync();
            core.registry.merged_by_target()
        });
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
    })
}
