//! The pre-fork workers' view (`pulsetrace.monitoring.workers`):
//! `StateEncoder().encode(tracer)` is this process's histograms as bytes,
//! `WorkerState(bytes)` one process's published copy read back, and
//! `MergedView(tracer)` a registry that absorbs states and the live
//! tracer's histograms and then reads like a tracer (`latency()`,
//! `snapshots()`, `render_metrics()`). Only conversions: the encoding and
//! the exact addition are [`pulsetrace_core::state`]'s.
//!
//! GIL: encoding, decoding and absorbing run without it.

use crate::guard::or_error;
use crate::snapshots::core_of;
use crate::tracer::readers::{latency_rows_of, PyFamily};
use crate::tracer::Tracer;
use parking_lot::Mutex;
use pulsetrace_core::registry::Registry;
use pulsetrace_core::state::{self, State};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use std::collections::{BTreeMap, HashMap};

/// Encodes this process's histograms (every key with a record) again and
/// again, compressing only the keys recorded since its last encoding.
#[pyclass(frozen, module = "pulsetrace._native", name = "StateEncoder")]
pub struct StateEncoder(Mutex<state::Encoder>);

#[pymethods]
impl StateEncoder {
    #[new]
    fn new() -> Self {
        StateEncoder(Mutex::new(state::Encoder::default()))
    }

    /// `(fingerprint, bytes)`, or `(fingerprint, None)` when the
    /// fingerprint equals `unless` (nothing recorded since).
    #[pyo3(signature = (tracer, unless=None))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        tracer: &Tracer,
        unless: Option<u64>,
    ) -> PyResult<(u64, Option<Bound<'py, PyBytes>>)> {
        or_error("state_encoder", || {
            let core = core_of(py, tracer)?;
            let (fingerprint, bytes) = py.allow_threads(|| {
                core.sync();
                let f = state::fingerprint(&core.registry);
                let bytes = (Some(f) != unless).then(|| self.0.lock().encode(&core.registry));
                (f, bytes)
            });
            Ok((fingerprint, bytes.map(|b| PyBytes::new(py, &b))))
        })
    }
}

/// One process's published histograms, decoded (ValueError naming what
/// is wrong with the bytes).
#[pyclass(frozen, module = "pulsetrace._native", name = "WorkerState")]
pub struct WorkerState(State);

#[pymethods]
impl WorkerState {
    #[new]
    fn new(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let decoded = py.allow_threads(|| state::decode(data));
        decoded
            .map(WorkerState)
            .map_err(|e| PyValueError::new_err(format!("pulsetrace: a worker's state: {e}")))
    }

    /// Records over every key.
    #[getter]
    fn count(&self) -> u64 {
        self.0.count()
    }

    /// Keys held.
    fn __len__(&self) -> usize {
        self.0.entries.len()
    }
}

/// A registry with the tracer's histogram config and key bound, empty
/// until states are absorbed.
#[pyclass(frozen, module = "pulsetrace._native", name = "MergedView")]
pub struct MergedView(Registry);

#[pymethods]
impl MergedView {
    #[new]
    fn new(py: Python<'_>, tracer: &Tracer) -> PyResult<Self> {
        let core = core_of(py, tracer)?;
        let r = &core.registry;
        Ok(MergedView(Registry::new(r.config(), r.max_keys())))
    }

    /// Add one process's published histograms (ValueError if recorded
    /// with another histogram config).
    fn absorb(&self, py: Python<'_>, state: &WorkerState) -> PyResult<()> {
        py.allow_threads(|| self.0.absorb(&state.0))
            .map_err(PyValueError::new_err)
    }

    /// Add the tracer's live histograms.
    fn absorb_tracer(&self, py: Python<'_>, tracer: &Tracer) -> PyResult<()> {
        let core = core_of(py, tracer)?;
        py.allow_threads(|| {
            core.sync();
            self.0.absorb_registry(&core.registry)
        })
        .map_err(PyValueError::new_err)
    }

    /// The absorbed histograms as one state (what `StateEncoder` writes):
    /// the dead workers' copies folded into one.
    fn encode<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let bytes = py.allow_threads(|| state::encode(&self.0));
        PyBytes::new(py, &bytes)
    }

    /// As `Tracer.latency()`, over the absorbed histograms.
    fn latency<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        or_error("merged.latency", || latency_rows_of(py, &self.0, None))
    }

    /// As `histogram_snapshots(tracer)`, over the absorbed histograms.
    fn snapshots<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        or_error("merged.snapshots", || {
            let rows = py.allow_threads(|| self.0.merged_by_target());
            crate::snapshots::snapshot_rows(py, rows)
        })
    }

    /// As `Tracer.render_metrics()`, over the absorbed histograms, with
    /// `counters` (name → value) in place of the tracer's own counters.
    #[pyo3(signature = (tracer, accept="", extra=None, const_labels=None, counters=None))]
    fn render_metrics<'py>(
        &self,
        py: Python<'py>,
        tracer: &Tracer,
        accept: &str,
        extra: Option<Vec<PyFamily>>,
        const_labels: Option<BTreeMap<String, String>>,
        counters: Option<HashMap<String, u64>>,
    ) -> PyResult<(Bound<'py, PyBytes>, &'static str)> {
        or_error("merged.render_metrics", || {
            tracer.metrics_text(
                py,
                accept,
                extra,
                const_labels,
                Some((&self.0, counters.unwrap_or_default())),
            )
        })
    }
}
