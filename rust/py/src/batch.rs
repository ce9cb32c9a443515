//! A drained batch of kept traces, readable two ways: as `SpanData` objects
//! (Python exporters, tests) or as an OTLP `ExportTraceServiceRequest`
//! (encoded by the core with the GIL released).
//!
//! GIL and locks: `otlp()` encodes with the GIL released; `traces()` builds
//! the `SpanData` lists with it, once (a `GILOnceCell`). The traces never
//! change after the drain that made the batch, so both read them without a
//! lock, and no caller holding the GIL waits for an encoding in progress.

use crate::data::SpanData;
use pulsetrace_core::otlp::Encoder;
use pulsetrace_core::pipeline::KeptTrace;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBytes, PyList};
use std::sync::Arc;

/// The traces as lists of `SpanData`, scrubbed first (with the GIL
/// released) like the OTLP encoding.
pub fn traces_to_py<'py>(py: Python<'py>, traces: Vec<KeptTrace>) -> PyResult<Bound<'py, PyList>> {
    let traces = py.allow_threads(move || pulsetrace_core::scrub::current().scrub_traces(traces));
    let out = PyList::empty(py);
    for t in traces {
        let spans = PyList::empty(py);
        for s in t.spans {
            spans.append(Bound::new(py, SpanData::new(py, s, t.reason)?)?)?;
        }
        out.append(spans)?;
    }
    Ok(out)
}

#[pyclass(frozen, module = "pulsetrace._native", name = "Batch")]
pub struct Batch {
    /// Never changed after construction: read by `otlp()` without the GIL
    /// and by `traces()` with it, no lock needed.
    traces: Vec<KeptTrace>,
    spans: usize,
    encoder: Arc<Encoder>,
    as_py: GILOnceCell<Py<PyList>>,
}

impl Batch {
    pub fn new(traces: Vec<KeptTrace>, encoder: Arc<Encoder>) -> Self {
        Batch {
            spans: traces.iter().map(|t| t.spans.len()).sum(),
            traces,
            encoder,
            as_py: GILOnceCell::new(),
        }
    }
}

#[pymethods]
impl Batch {
    /// Number of spans.
    fn __len__(&self) -> usize {
        self.spans
    }

    /// Number of traces (late spans of a kept trace count as their own).
    #[getter]
    fn trace_count(&self) -> usize {
        self.traces.len()
    }

    /// The traces as lists of SpanData (built once, on first call).
    fn traces<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        crate::guard::or_error("batch.traces", || self.traces_of(py))
    }

    /// The OTLP `ExportTraceServiceRequest` bytes of the batch (encoded
    /// without the GIL).
    fn otlp<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        crate::guard::or_error("batch.otlp", || {
            let out = py.allow_threads(|| {
                let mut out = Vec::new();
                self.encoder.encode(&self.traces, &mut out);
                out
            });
            Ok(PyBytes::new(py, &out))
        })
    }

    /// The batch as OTLP requests of at most `max_bytes` each:
    /// `([(request bytes, spans), ...], oversized)`, where `oversized` spans
    /// were each too large for a request of their own and are not sent.
    #[pyo3(signature = (max_bytes = pulsetrace_core::otlp::DEFAULT_MAX_REQUEST_BYTES))]
    fn otlp_requests<'py>(
        &self,
        py: Python<'py>,
        max_bytes: usize,
    ) -> PyResult<(Bound<'py, PyList>, usize)> {
        crate::guard::or_error("batch.otlp_requests", || {
            let split = py.allow_threads(|| self.encoder.encode_split(&self.traces, max_bytes));
            let out = PyList::empty(py);
            for (req, spans) in split.requests {
                out.append((PyBytes::new(py, &req), spans))?;
            }
            Ok((out, split.oversized))
        })
    }
}

impl Batch {
    fn traces_of<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = self.as_py.get_or_try_init(py, || -> PyResult<Py<PyList>> {
            let copy: Vec<KeptTrace> = self
                .traces
                .iter()
                .map(|t| KeptTrace {
                    trace_id: t.trace_id,
                    reason: t.reason,
                    spans: t.spans.clone(),
                })
                .collect();
            Ok(traces_to_py(py, copy)?.unbind())
        })?;
        Ok(list.bind(py).clone())
    }
}
