//! Prometheus text exposition (format 0.0.4) and OpenMetrics 1.0.0 of the
//! registry's latency histograms, plus families the caller adds (process
//! metrics, pulsetrace's own health counters).
//!
//! # Families
//!
//! Registry entries are grouped by span kind and target (what the span
//! talks to, [`crate::target`]). Names follow the OpenTelemetry semantic
//! conventions translated to Prometheus (base unit seconds) where a
//! convention exists, and `<namespace>_…` otherwise (`ns_` below is
//! [`ExpositionConfig::namespace`] plus `_`, nothing when it is empty):
//!
//! | spans                              | histogram (`<base>_seconds`)                  | counters                                             | target labels |
//! |------------------------------------|-----------------------------------------------|------------------------------------------------------|---------------|
//! | SERVER                             | `http_server_request_duration_seconds`        | `http_server_requests_total`, `http_server_errors_total` | - |
//! | CLIENT, HTTP                       | `http_client_request_duration_seconds`        | `http_client_requests_total`, `http_client_errors_total` | `http_request_method`, `server_address` |
//! | CLIENT, database                   | `db_client_operation_duration_seconds`        | `db_client_operations_total`, `db_client_errors_total` | `db_system_name`, `db_operation_name`, `db_collection_name` |
//! | PRODUCER (or CLIENT), messaging    | `messaging_client_operation_duration_seconds` | `messaging_client_operations_total`, `messaging_client_errors_total` | `messaging_system`, `messaging_operation_name`, `messaging_destination_name` |
//! | CONSUMER, messaging                | `messaging_process_duration_seconds`          | `messaging_process_operations_total`, `messaging_process_errors_total` | as above |
//! | other CLIENT                       | `ns_client_operation_duration_seconds`        | `ns_client_operations_total`, `ns_client_errors_total` | - |
//! | INTERNAL                           | `ns_internal_operation_duration_seconds`      | `ns_internal_operations_total`, `ns_internal_errors_total` | - |
//! | other PRODUCER/CONSUMER            | `ns_messaging_operation_duration_seconds`     | `ns_messaging_operations_total`, `ns_messaging_errors_total` | - |
//!
//! - Histogram series are labelled `operation` (the span name, e.g.
//!   `GET /users/{id}`), `kind` (`producer`/`consumer`, the last row only),
//!   the target labels (those the span had), `http_response_status_code`
//!   (HTTP client only: the status class, `2xx`…, so that `=~"5.."` filters
//!   work; absent without a response), `status_class` (`2xx`…, `ok`,
//!   `error`), then the constant labels. A system's `(overflow)` key (see
//!   [`crate::registry`]) stays in its family, without target labels.
//!   Buckets are cumulative [`Snapshot::count_le`] counts of each configured
//!   bound (so at HDR slot granularity: a value within the bound's slot,
//!   under 1% above the bound with 2 significant digits, counts in it), and
//!   `le="+Inf"` is `_count`. `_sum` is the exact nanosecond sum written in
//!   seconds (exact decimal, no float rounding).
//! - The counters are per operation (all status classes): requests, and
//!   requests whose class is an error class ([`StatusClass::is_error`]).
//! - Quantiles, read exactly from the HDR histogram of the operation (all
//!   status classes merged), are a **gauge** family `<base>_quantile_seconds`
//!   with label `q` (e.g. `q="0.99"`): a Prometheus summary cannot share the
//!   histogram's name, and a `quantile` label is reserved for summaries
//!   (promtool rejects it on a gauge). An operation with no recorded value
//!   has `NaN` quantiles, as a summary would.
//! - Two registry keys whose labels come out identical (a real operation
//!   named `(overflow)` and the registry's overflow key; keys with a target
//!   in a family that shows none) are merged into one series.
//!
//! # Output
//!
//! Families are sorted by name, series by labels, so repeated renders diff
//! cleanly. OpenMetrics adds `# UNIT` for the `_seconds` families, names
//! counter families without `_total` in its metadata, ends with `# EOF` and
//! carries exemplars on `_bucket` lines (`# {trace_id="…",span_id="…"}
//! <value> <timestamp>`), each in the bucket its value falls in. The 0.0.4
//! format never has exemplars (the exemplar callback is not even called).
//!
//! Rendering takes one snapshot per histogram at a time (no registry-wide
//! lock) and writes straight into the caller's `String`.
//!
//! [`Snapshot::count_le`]: crate::histogram::Snapshot::count_le
//! [`StatusClass::is_error`]: crate::span::StatusClass::is_error
//! [`Registry::exemplars`]: crate::registry::Registry::exemplars

mod collect;
mod config;
mod extra;
mod format;
mod names;
mod render;
#[cfg(test)]
mod tests;
mod text;

pub use config::{ExpositionConfig, DEFAULT_BUCKETS_S, DEFAULT_QUANTILES};
pub use extra::{health_families, queue_families, ExtraFamily, ExtraKind};
pub use format::{content_type, negotiate, Format};
pub use names::{sanitize_label_name, sanitize_metric_name};
pub use render::render;

/// An exemplar: a recorded duration of a kept trace, linking a histogram
/// bucket to that trace. The same type as the registry keeps, so
/// [`Registry::exemplars`] can feed [`render`] directly.
pub type Exemplar = crate::registry::ExemplarSample;

/// A registry key, as [`ExemplarFn`] receives it.
pub use crate::registry::Entry;

/// The exemplars of one registry key → one slot per bucket bound (see
/// [`render`]).
pub type ExemplarFn<'a> = dyn Fn(&Entry) -> Vec<Option<Exemplar>> + 'a;
