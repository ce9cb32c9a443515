//! `pulsetrace._native`: the binding of the core. It converts types and
//! registers classes; policy lives in Python, mechanism in `pulsetrace-core`.
//!
//! GIL and locks, for the whole binding (each module's `//!` says how it
//! keeps it): O(1) span work runs with the GIL; every call that is not O(1)
//! (processing, draining, encoding, latency queries) releases it with
//! `allow_threads`, and so does every call that can wait for a lock of the
//! core (the intake's drain, a trace shard, the export queue, the registry's
//! growth): a thread never waits for a lock while it holds the GIL. The
//! request path (span start and end, the WSGI path) waits for no lock at all
//! (`pulsetrace_core::pipeline`). The binding's own mutexes are taken only
//! with the GIL held and never across Python code, so none is ever waited
//! for, and a forked child never inherits one held. The core's worker
//! thread never takes the GIL.
//!
//! Here: `parse_traceparent_header`, `format_traceparent_header` and
//! `after_fork_in_child` are O(1) with the GIL; `obfuscate_sql` releases it
//! for statements over 2 KiB. No lock.
//!
//! No panic crosses into Python: every entry point runs under a guard
//! ([`guard`]).
//!
//! Calling convention: the wheel is abi3 for CPython >= 3.10, where
//! `METH_FASTCALL` is in the limited API, so pyo3's own `#[pymethods]` and
//! `#[pyfunction]`s take the caller's argument vector (vectorcall) with no
//! argument tuple or keyword dict. The span methods (`Tracer.start_span`,
//! `Span.set_attribute`, `Span.end`, `Span.__exit__`) and `wsgi_call` are
//! plain pyo3 methods and functions. Instructions on the request thread,
//! callgrind (`benchmarks/gate/run.py --repeat 3`, medians, CPython 3.11),
//! hand-made `METH_FASTCALL` entry points through pyo3's private
//! `impl_::trampoline` (as built for `abi3-py39`) against these methods
//! built for `abi3-py310`: a span (`start_span`, 3 `set_attribute`, `end`)
//! 5,515 and 5,476; a Flask `/json` request 387,303 and 386,868; and, by
//! the difference of two loop lengths under callgrind, a `with
//! start_span(..., attributes=...)` block 7,296 and 7,088. That private
//! internal no longer paid for itself and is gone; the one left is
//! [`newobj`]'s, which does.
#![deny(unsafe_code)]

/// Span records are allocated on request threads and freed on the core's
/// worker thread; mimalloc handles that cross-thread pattern without the
/// contention glibc's arenas show under load (measured: benchmarks/).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod attrs;
mod batch;
mod config;
mod ctxvar;
mod data;
mod guard;
mod http;
mod ids;
mod merged;
mod newobj;
mod pystr;
mod scrub;
mod snapshots;
mod span;
mod tracer;
mod wsgi;
mod wsgi_app;
mod wsgi_environ;
mod wsgi_response;
mod wsgi_route;

use pulsetrace_core::propagation::{format_traceparent, parse_traceparent};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Parse a `traceparent` value into (trace_id, span_id, flags); raises
/// ValueError naming what is wrong.
#[pyfunction]
fn parse_traceparent_header(header: &str) -> PyResult<(u128, u64, u8)> {
    guard::or_error("parse_traceparent_header", || {
        parse_traceparent(header)
            .map(|p| (p.trace_id, p.span_id, p.flags))
            .map_err(|e| PyValueError::new_err(format!("malformed traceparent: {e}")))
    })
}

/// Format a version-00 `traceparent` value.
#[pyfunction]
#[pyo3(signature = (trace_id, span_id, flags=1))]
fn format_traceparent_header(trace_id: u128, span_id: u64, flags: u8) -> String {
    format_traceparent(trace_id, span_id, flags)
}

/// Obfuscate a SQL statement: `(text, operation, collection)`, literals
/// replaced by `?`, comments removed, lists collapsed (see `pulsetrace-core`'s
/// `sql` module); `system` (`db.system.name`) picks how double-quoted
/// tokens are read. Releases the GIL for long statements.
#[pyfunction]
#[pyo3(signature = (statement, max_len=4096, system=""))]
fn obfuscate_sql(
    py: Python<'_>,
    statement: &str,
    max_len: usize,
    system: &str,
) -> PyResult<(String, Option<String>, Option<String>)> {
    guard::or_error("obfuscate_sql", || {
        let dialect = pulsetrace_core::sql::Dialect::of_system(system);
        let run = |s: &str| {
            let r = pulsetrace_core::sql::obfuscate_dialect(s, max_len, dialect);
            (r.text, r.operation, r.collection)
        };
        Ok(if statement.len() > 2048 {
            let owned = statement.to_owned();
            py.allow_threads(move || run(&owned))
        } else {
            run(statement)
        })
    })
}

/// Called in a child process after `fork` (new id streams).
#[pyfunction]
fn after_fork_in_child() {
    ids::bump_fork_generation();
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    guard::install_hook();
    m.add_class::<tracer::Tracer>()?;
    m.add_class::<tracer::call::ClientCall>()?;
    m.add_function(wrap_pyfunction!(tracer::call::sql_row_count, m)?)?;
    m.add_class::<span::Span>()?;
    m.add_class::<span::SpanContext>()?;
    m.add_class::<data::SpanData>()?;
    m.add_class::<batch::Batch>()?;
    m.add_class::<data::Histogram>()?;
    m.add_class::<snapshots::HistogramSnapshot>()?;
    m.add_function(wrap_pyfunction!(snapshots::histogram_snapshots, m)?)?;
    m.add_class::<merged::StateEncoder>()?;
    m.add_class::<merged::WorkerState>()?;
    m.add_class::<merged::MergedView>()?;
    m.add_function(wrap_pyfunction!(snapshots::set_sample_rate, m)?)?;
    m.add_function(wrap_pyfunction!(snapshots::sample_rate, m)?)?;
    m.add_function(wrap_pyfunction!(parse_traceparent_header, m)?)?;
    m.add_function(wrap_pyfunction!(format_traceparent_header, m)?)?;
    m.add_function(wrap_pyfunction!(after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(obfuscate_sql, m)?)?;
    m.add_function(wrap_pyfunction!(wsgi::wsgi_call, m)?)?;
    m.add_function(wrap_pyfunction!(http::py_redact_query, m)?)?;
    m.add_function(wrap_pyfunction!(http::http_server_span, m)?)?;
    m.add_function(wrap_pyfunction!(http::http_span_name, m)?)?;
    m.add_function(wrap_pyfunction!(http::http_method, m)?)?;
    m.add_function(wrap_pyfunction!(http::http_response_status, m)?)?;
    m.add(
        "DEFAULT_BUCKETS",
        pulsetrace_core::exposition::DEFAULT_BUCKETS_S.to_vec(),
    )?;
    m.add_function(wrap_pyfunction!(http::http_exclude_prefix, m)?)?;
    m.add_function(wrap_pyfunction!(http::http_excluded_problem, m)?)?;
    m.add_function(wrap_pyfunction!(http::http_is_excluded, m)?)?;
    m.add_function(wrap_pyfunction!(http::http_exclusion_frameworks, m)?)?;
    m.add_function(wrap_pyfunction!(wsgi_environ::wsgi_server_span, m)?)?;
    m.add_function(wrap_pyfunction!(guard::inject_panic, m)?)?;
    m.add_function(wrap_pyfunction!(scrub::scrub_configure, m)?)?;
    m.add_function(wrap_pyfunction!(scrub::scrub_text, m)?)?;
    m.add_function(wrap_pyfunction!(scrub::scrub_keyed, m)?)?;
    m.add_function(wrap_pyfunction!(scrub::scrub_is_secret_key, m)?)?;
    m.add_function(wrap_pyfunction!(scrub::scrub_value, m)?)?;
    m.add_class::<wsgi::TracedResponse>()?;
    m.add_class::<wsgi_app::TracedWsgiApp>()?;
    m.add_class::<wsgi_app::RouteNamer>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
