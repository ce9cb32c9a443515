//! pulsetrace core: everything per-span and numeric, with no Python in it.
//!
//! - [`histogram`]: a lock-free HDR latency histogram (record is O(1), atomics only).
//! - [`registry`]: histograms keyed by (kind, operation, target, status class), bounded.
//! - [`target`]: what a span talks to (database, queue, HTTP server), read from its attributes.
//! - [`sampler`]: the tail sampler's policies and rate limit.
//! - [`head`]: head sampling (`OTEL_TRACES_SAMPLER`) when a span starts.
//! - [`pipeline`]: span end → histograms → trace buffer (sharded) →
//!   decision → export queue, and the worker thread for timeouts.
//! - [`exposition`]: Prometheus 0.0.4 / OpenMetrics text of the histograms (and extra families).
//! - [`otlp`]: OTLP protobuf encoding of kept traces (ExportTraceServiceRequest).
//! - [`probability`]: OpenTelemetry consistent probability sampling (`ot=th`, `rv`).
//! - [`propagation`]: W3C `traceparent` / `tracestate`.
//! - [`span`]: the finished-span record and its enums.
//! - [`scrub`]: personal data and secrets out of exported text.
//! - [`http`]: HTTP server spans: name and semantic-convention attributes of a request.
//! - [`sql`]: SQL obfuscation (literals out, structure kept).
//! - [`state`]: a registry's histograms as bytes (each pre-fork worker's published copy) and back.
//! - [`access`]: the access log's queue (one entry per SERVER span, off the request path).
//! - [`clock`]: the monotonic clock and its Unix-time mapping.
#![deny(unsafe_code)] // allowed in one place: the histogram's lazily allocated rows

pub mod access;
pub mod clock;
pub mod exposition;
pub mod head;
pub mod histogram;
pub mod http;
pub mod inflight;
pub mod otlp;
pub mod pipeline;
pub mod probability;
pub mod propagation;
pub mod registry;
pub mod sampler;
pub mod scrub;
pub mod span;
pub mod sql;
pub mod state;
mod sync;
pub mod target;
