//! The tracer's readers: live latency rows, the Prometheus exposition and
//! the counters, converted from what the core computes (the exposition's
//! families, names and help texts are the core's,
//! [`pulsetrace_core::exposition`]).
//!
//! GIL and locks: each releases the GIL before it drains the intake or
//! takes a lock of the core (see [`super`]), and converts with the GIL held.

use super::Tracer;
use pulsetrace_core::exposition::{self, ExpositionConfig, ExtraFamily, ExtraKind};
use pulsetrace_core::pipeline::Core;
use pulsetrace_core::registry::Registry;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

/// An extra metric family from Python: (name, help, kind, [(labels, value)]).
pub(crate) type PyFamily = (String, String, String, Vec<(HashMap<String, String>, f64)>);

/// `(name, help, kind, samples)` from Python as the core's family; the
/// labels of a sample sorted (a dict has no order).
fn family((name, help, kind, samples): PyFamily) -> PyResult<ExtraFamily> {
    let kind = ExtraKind::parse(&kind).ok_or_else(|| {
        PyValueError::new_err(format!(
            "metric kind must be counter, gauge or histogram, not {kind:?}"
        ))
    })?;
    let samples = samples
        .into_iter()
        .map(|(labels, v)| {
            let mut l: Vec<(String, String)> = labels.into_iter().collect();
            l.sort();
            (l, v)
        })
        .collect();
    Ok(ExtraFamily {
        name,
        help,
        kind,
        samples,
    })
}

impl Tracer {
    /// See `Tracer.drain_access`.
    pub(super) fn access_entries<'py>(
        &self,
        py: Python<'py>,
        max_entries: usize,
        timeout: f64,
    ) -> PyResult<(Bound<'py, PyList>, u64)> {
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
    }

    pub(super) fn latency_rows<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let core = self.core(py)?;
        latency_rows_of(py, &core.registry, Some(&core))
    }

    pub(crate) fn metrics_text<'py>(
        &self,
        py: Python<'py>,
        accept: &str,
        extra: Option<Vec<PyFamily>>,
        const_labels: Option<BTreeMap<String, String>>,
        merged: Option<(&Registry, HashMap<String, u64>)>,
    ) -> PyResult<(Bound<'py, PyBytes>, &'static str)> {
        let mut families = extra
            .unwrap_or_default()
            .into_iter()
            .map(family)
            .collect::<PyResult<Vec<_>>>()?;
        let core = self.core(py)?;
        let format = exposition::negotiate(accept);
        let cfg = ExpositionConfig {
            const_labels: const_labels.unwrap_or_default().into_iter().collect(),
            ..ExpositionConfig::default()
        };
        py.allow_threads(|| core.sync());
        let mut counters = core.counters.snapshot();
        for (name, help, v) in self.own_counters() {
            if let Some(help) = help {
                counters.push((name, help, v.load(Ordering::Relaxed)));
            }
        }
        // Another registry (the workers' merged view) with its counters:
        // the same families, its values.
        let (registry, values) = match merged {
            Some((r, values)) => (Some(r), values),
            None => (None, HashMap::new()),
        };
        for (name, _, v) in counters.iter_mut() {
            if let Some(&m) = values.get(*name) {
                *v = m;
            }
        }
        let body = py.allow_threads(move || {
            let stats = core.stats();
            let level = |name: &str, own: usize| values.get(name).map_or(own, |&v| v as usize);
            let registry = registry.unwrap_or(&core.registry);
            families.extend(exposition::health_families(&cfg, registry, &counters));
            families.extend(exposition::queue_families(
                level("open_traces", stats.open_traces),
                level("export_queue_spans", stats.export_spans),
                core.config().buffer.export_queue_spans,
            ));
            let bounds = cfg.bucket_bounds_ns();
            let exemplars = |e: &exposition::Entry| {
                core.registry
                    .exemplars(e.kind, &e.name, e.target.view(), e.class, &bounds)
            };
            let mut out = String::with_capacity(64 * 1024);
            exposition::render(registry, &exemplars, &families, &cfg, format, &mut out);
            out
        });
        Ok((
            PyBytes::new(py, body.as_bytes()),
            exposition::content_type(format),
        ))
    }

    pub(super) fn counter_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let core = self.core(py)?;
        // Drains the intake, then locks each shard and the export queue.
        let s = py.allow_threads(|| core.stats());
        let d = PyDict::new(py);
        for (name, _, v) in core.counters.snapshot() {
            d.set_item(name, v)?;
        }
        for (name, _, v) in self.own_counters() {
            d.set_item(name, v.load(Ordering::Relaxed))?;
        }
        d.set_item("metric_keys", core.registry.key_count())?;
        d.set_item("metric_keys_overflowed", core.registry.overflowed())?;
        d.set_item("open_traces", s.open_traces)?;
        d.set_item("open_spans", s.open_spans)?;
        d.set_item("export_queue_traces", s.export_traces)?;
        d.set_item("export_queue_spans", s.export_spans)?;
        Ok(d)
    }
}

/// `latency()`'s rows of `registry` (drained first when it is `core`'s).
pub(crate) fn latency_rows_of<'py>(
    py: Python<'py>,
    registry: &Registry,
    core: Option<&Core>,
) -> PyResult<Bound<'py, PyList>> {
    let rows = py.allow_threads(|| {
        if let Some(core) = core {
            core.sync();
        }
        registry.merged_by_target()
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
        d.set_item("rate_limited", row.rate_limited)?;
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
}
