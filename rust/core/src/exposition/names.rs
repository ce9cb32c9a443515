//! Series naming: name sanitising, the registry's families (by span kind and
//! target system) with their names and help texts, and the labels constant
//! labels may not reuse.

use crate::span::SpanKind;
use crate::target::System;

/// Replaces every character outside `[a-zA-Z0-9_:]` by `_` and prefixes `_`
/// when the result would start with a digit (or be empty).
pub fn sanitize_metric_name(name: &str) -> String {
    sanitize(name, true)
}

/// Replaces every character outside `[a-zA-Z0-9_]` by `_` and prefixes `_`
/// when the result would start with a digit (or be empty).
pub fn sanitize_label_name(name: &str) -> String {
    sanitize(name, false)
}

pub(super) fn sanitize(name: &str, colon: bool) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':') {
            c
        } else {
            '_'
        }
    }));
    out
}

/// Registry families (by span kind and target system).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Fam {
    Server,
    Client,
    Internal,
    Messaging,
    HttpClient,
    DbClient,
    MessagingClient,
    MessagingProcess,
}

impl Fam {
    pub(super) const COUNT: usize = 8;
    pub(super) const ALL: [Fam; Fam::COUNT] = [
        Fam::Server,
        Fam::Client,
        Fam::Internal,
        Fam::Messaging,
        Fam::HttpClient,
        Fam::DbClient,
        Fam::MessagingClient,
        Fam::MessagingProcess,
    ];

    pub(super) fn of(kind: SpanKind, system: System) -> Fam {
        match (kind, system) {
            (SpanKind::Server, _) => Fam::Server,
            (SpanKind::Internal, _) => Fam::Internal,
            (SpanKind::Client, System::Http) => Fam::HttpClient,
            (SpanKind::Client, System::Db) => Fam::DbClient,
            (SpanKind::Consumer, System::Messaging) => Fam::MessagingProcess,
            (SpanKind::Client | SpanKind::Producer, System::Messaging) => Fam::MessagingClient,
            (SpanKind::Client, _) => Fam::Client,
            (SpanKind::Producer | SpanKind::Consumer, _) => Fam::Messaging,
        }
    }

    /// Whether its series carry the target's labels.
    pub(super) fn has_target(self) -> bool {
        matches!(
            self,
            Fam::HttpClient | Fam::DbClient | Fam::MessagingClient | Fam::MessagingProcess
        )
    }

    /// (histogram base without `_seconds`, counter of all, counter of
    /// errors, whether the namespace applies).
    pub(super) fn stems(self) -> (&'static str, &'static str, &'static str, bool) {
        match self {
            Fam::Server => (
                "http_server_request_duration",
                "http_server_requests",
                "http_server_errors",
                false,
            ),
            Fam::HttpClient => (
                "http_client_request_duration",
                "http_client_requests",
                "http_client_errors",
                false,
            ),
            Fam::DbClient => (
                "db_client_operation_duration",
                "db_client_operations",
                "db_client_errors",
                false,
            ),
            Fam::MessagingClient => (
                "messaging_client_operation_duration",
                "messaging_client_operations",
                "messaging_client_errors",
                false,
            ),
            Fam::MessagingProcess => (
                "messaging_process_duration",
                "messaging_process_operations",
                "messaging_process_errors",
                false,
            ),
            Fam::Client => (
                "client_operation_duration",
                "client_operations",
                "client_errors",
                true,
            ),
            Fam::Internal => (
                "internal_operation_duration",
                "internal_operations",
                "internal_errors",
                true,
            ),
            Fam::Messaging => (
                "messaging_operation_duration",
                "messaging_operations",
                "messaging_errors",
                true,
            ),
        }
    }

    /// (histogram help, requests help, errors help).
    pub(super) fn help(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Fam::Server => (
                "Duration of HTTP server requests (SERVER spans) by operation (method and route) and status class.",
                "HTTP server requests (SERVER spans) by operation.",
                "HTTP server requests that ended in an error class (5xx or error status) by operation.",
            ),
            Fam::HttpClient => (
                "Duration of outgoing HTTP requests (CLIENT spans with http.request.method) by operation, method, server address and status class.",
                "Outgoing HTTP requests by operation, method and server address.",
                "Outgoing HTTP requests that ended in an error class (5xx or error status) by operation, method and server address.",
            ),
            Fam::DbClient => (
                "Duration of database operations (CLIENT spans with db.system.name) by operation, database system, operation name, collection and status class.",
                "Database operations by operation, database system, operation name and collection.",
                "Database operations that ended in an error by operation, database system, operation name and collection.",
            ),
            Fam::MessagingClient => (
                "Duration of messaging operations a client initiates (PRODUCER or CLIENT spans with messaging.system) by operation, messaging system, operation name, destination and status class.",
                "Messaging operations a client initiates by operation, messaging system, operation name and destination.",
                "Messaging operations a client initiates that ended in an error by operation, messaging system, operation name and destination.",
            ),
            Fam::MessagingProcess => (
                "Duration of message processing (CONSUMER spans with messaging.system) by operation, messaging system, operation name, destination and status class.",
                "Message processing operations by operation, messaging system, operation name and destination.",
                "Message processing operations that ended in an error by operation, messaging system, operation name and destination.",
            ),
            Fam::Client => (
                "Duration of other outgoing operations (CLIENT spans without HTTP, database or messaging attributes) by operation and status class.",
                "Other outgoing operations (CLIENT spans) by operation.",
                "Other outgoing operations (CLIENT spans) that ended in an error class (5xx or error status) by operation.",
            ),
            Fam::Internal => (
                "Duration of internal operations (INTERNAL spans) by operation and status class.",
                "Internal operations (INTERNAL spans) by operation.",
                "Internal operations (INTERNAL spans) that ended in an error by operation.",
            ),
            Fam::Messaging => (
                "Duration of messaging operations (PRODUCER and CONSUMER spans without messaging.system) by operation, kind and status class.",
                "Messaging operations (PRODUCER and CONSUMER spans without messaging.system) by operation and kind.",
                "Messaging operations (PRODUCER and CONSUMER spans without messaging.system) that ended in an error by operation and kind.",
            ),
        }
    }
}

/// The four names of a registry family, namespace applied.
pub(super) struct FamNames {
    pub(super) histogram: String,
    pub(super) quantile: String,
    pub(super) requests: String,
    pub(super) errors: String,
}

impl FamNames {
    pub(super) fn new(fam: Fam, prefix: &str) -> Self {
        let (base, requests, errors, namespaced) = fam.stems();
        let p = if namespaced { prefix } else { "" };
        FamNames {
            histogram: format!("{p}{base}_seconds"),
            quantile: format!("{p}{base}_quantile_seconds"),
            requests: format!("{p}{requests}"),
            errors: format!("{p}{errors}"),
        }
    }
}

pub(super) fn sample_names(name: &str, kind: &str) -> Vec<String> {
    match kind {
        "histogram" => ["", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .map(|s| format!("{name}{s}"))
            .collect(),
        "counter" => vec![
            name.to_string(),
            format!("{name}_total"),
            format!("{name}_created"),
        ],
        _ => vec![name.to_string()],
    }
}

/// The family name in the metadata lines: 0.0.4 names counters `…_total`.
pub(super) fn listed_name(name: &str, kind: &str, om: bool) -> String {
    if kind == "counter" && !om {
        format!("{name}_total")
    } else {
        name.to_string()
    }
}

/// Registry labels that constant labels may not reuse (the target labels too).
pub(super) const RESERVED_LABELS: [&str; 7] = [
    "operation",
    "kind",
    "status_class",
    "le",
    "q",
    "quantile",
    HTTP_STATUS_LABEL,
];

/// The HTTP client families' label for the status class.
pub(super) const HTTP_STATUS_LABEL: &str = "http_response_status_code";

pub(super) fn reserved(label: &str) -> bool {
    RESERVED_LABELS.contains(&label) || crate::target::label_names().any(|l| l == label)
}
