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

use crate::histogram::Snapshot;
use crate::registry::Registry;
use crate::span::{SpanKind, StatusClass};
use crate::target::{System, Target};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

/// An exemplar: a recorded duration of a kept trace, linking a histogram
/// bucket to that trace. The same type as the registry keeps, so
/// [`Registry::exemplars`] can feed [`render`] directly.
pub type Exemplar = crate::registry::ExemplarSample;

/// A registry key, as [`ExemplarFn`] receives it.
pub use crate::registry::Entry;

/// The exemplars of one registry key → one slot per bucket bound (see
/// [`render`]).
pub type ExemplarFn<'a> = dyn Fn(&Entry) -> Vec<Option<Exemplar>> + 'a;

/// OpenTelemetry's default explicit bucket bounds for HTTP durations, in seconds.
pub const DEFAULT_BUCKETS_S: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Quantiles exposed by default.
pub const DEFAULT_QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// What to expose and how to name it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpositionConfig {
    /// Histogram bucket upper bounds in seconds. Non-finite and non-positive
    /// bounds are ignored, the rest sorted and deduplicated (`+Inf` is always
    /// added).
    pub buckets_s: Vec<f64>,
    /// Quantiles for the `_quantile_seconds` gauges; values outside `[0, 1]`
    /// are ignored. Empty: no quantile families.
    pub quantiles: Vec<f64>,
    /// Prefix (sanitised, joined with `_`) of pulsetrace's own families: the
    /// non-OpenTelemetry histogram families and [`health_families`]. Empty:
    /// no prefix.
    pub namespace: String,
    /// Labels added to every series (names sanitised; a name that repeats
    /// an earlier one or one of the registry families' own labels
    /// `operation`, `kind`, `status_class`, `le`, `q`, the target labels and
    /// `http_response_status_code` is dropped there).
    pub const_labels: Vec<(String, String)>,
}

impl Default for ExpositionConfig {
    fn default() -> Self {
        ExpositionConfig {
            buckets_s: DEFAULT_BUCKETS_S.to_vec(),
            quantiles: DEFAULT_QUANTILES.to_vec(),
            namespace: "pulsetrace".to_string(),
            const_labels: Vec::new(),
        }
    }
}

impl ExpositionConfig {
    /// The bucket bounds as rendered: `(seconds, nanoseconds)`, ascending,
    /// one per distinct nanosecond value.
    pub fn bounds(&self) -> Vec<(f64, u64)> {
        let mut b: Vec<f64> = self
            .buckets_s
            .iter()
            .copied()
            .filter(|b| b.is_finite() && *b > 0.0)
            .collect();
        b.sort_by(f64::total_cmp);
        let mut out: Vec<(f64, u64)> = Vec::with_capacity(b.len());
        for s in b {
            // `as` saturates: bounds beyond u64::MAX ns count everything.
            let ns = (s * 1e9).round() as u64;
            if out.last().map(|&(_, last)| last) != Some(ns) {
                out.push((s, ns));
            }
        }
        out
    }

    /// Upper bounds in nanoseconds, as [`Registry::exemplars`] takes them.
    pub fn bucket_bounds_ns(&self) -> Vec<u64> {
        self.bounds().into_iter().map(|(_, ns)| ns).collect()
    }

    fn quantiles_used(&self) -> Vec<f64> {
        let mut q: Vec<f64> = self
            .quantiles
            .iter()
            .copied()
            .filter(|q| (0.0..=1.0).contains(q))
            .collect();
        q.sort_by(f64::total_cmp);
        q.dedup();
        q
    }

    fn prefix(&self) -> String {
        if self.namespace.is_empty() {
            String::new()
        } else {
            let mut p = sanitize_metric_name(&self.namespace);
            p.push('_');
            p
        }
    }
}

/// Exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Prometheus004,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics100,
}

/// The format to answer a scrape with: OpenMetrics when the `Accept` header
/// asks for `application/openmetrics-text` (any version, any positive or
/// absent `q`), else Prometheus 0.0.4.
pub fn negotiate(accept_header: &str) -> Format {
    for range in accept_header.split(',') {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/openmetrics-text") {
            continue;
        }
        let refused = params.any(|p| match p.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("q") => {
                v.trim().parse::<f64>().is_ok_and(|q| q <= 0.0)
            }
            _ => false,
        });
        if !refused {
            return Format::OpenMetrics100;
        }
    }
    Format::Prometheus004
}

/// The `Content-Type` of a response in format `f`.
pub fn content_type(f: Format) -> &'static str {
    match f {
        Format::Prometheus004 => "text/plain; version=0.0.4; charset=utf-8",
        Format::OpenMetrics100 => "application/openmetrics-text; version=1.0.0; charset=utf-8",
    }
}

/// Type of an [`ExtraFamily`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExtraKind {
    Counter,
    Gauge,
}

/// A family supplied by the caller (process metrics, health counters).
///
/// `name` and label names are sanitised; a counter's name may or may not end
/// in `_total` (its samples always do). An empty `help` is replaced by the
/// family name. Samples with the same label set
/// (after sanitising, in any order) are merged: counters add up, a gauge
/// keeps the last. A family whose name (or one of its sample names) is
/// already taken, by the registry's families or an earlier extra family, is
/// skipped.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtraFamily {
    pub name: String,
    pub help: String,
    pub kind: ExtraKind,
    pub samples: Vec<(Vec<(String, String)>, f64)>,
}

/// pulsetrace's own health as extra families: every counter of
/// [`crate::pipeline::Counters::snapshot`] as `<namespace>_<name>_total`,
/// plus the registry's key count, key bound and overflowed records.
pub fn health_families(
    cfg: &ExpositionConfig,
    registry: &Registry,
    counters: &[(&str, &str, u64)],
) -> Vec<ExtraFamily> {
    let p = cfg.prefix();
    let family = |name: String, help: &str, kind, v: f64| ExtraFamily {
        name,
        help: help.to_string(),
        kind,
        samples: vec![(Vec::new(), v)],
    };
    let mut out: Vec<ExtraFamily> = counters
        .iter()
        .map(|&(name, doc, v)| family(format!("{p}{name}"), doc, ExtraKind::Counter, v as f64))
        .collect();
    out.push(family(
        format!("{p}registry_keys"),
        "latency histograms (kind, operation, target, status class keys) in the registry",
        ExtraKind::Gauge,
        registry.key_count() as f64,
    ));
    out.push(family(
        format!("{p}registry_max_keys"),
        "bound on the registry's keys; new keys beyond it fold into the (overflow) operation",
        ExtraKind::Gauge,
        registry.max_keys() as f64,
    ));
    out.push(family(
        format!("{p}registry_overflowed"),
        "durations recorded into the (overflow) operation because the key bound was reached",
        ExtraKind::Counter,
        registry.overflowed() as f64,
    ));
    out
}

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

fn sanitize(name: &str, colon: bool) -> String {
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
enum Fam {
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
    const COUNT: usize = 8;
    const ALL: [Fam; Fam::COUNT] = [
        Fam::Server,
        Fam::Client,
        Fam::Internal,
        Fam::Messaging,
        Fam::HttpClient,
        Fam::DbClient,
        Fam::MessagingClient,
        Fam::MessagingProcess,
    ];

    fn of(kind: SpanKind, system: System) -> Fam {
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
    fn has_target(self) -> bool {
        matches!(
            self,
            Fam::HttpClient | Fam::DbClient | Fam::MessagingClient | Fam::MessagingProcess
        )
    }

    /// (histogram base without `_seconds`, counter of all, counter of
    /// errors, whether the namespace applies).
    fn stems(self) -> (&'static str, &'static str, &'static str, bool) {
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
    fn help(self) -> (&'static str, &'static str, &'static str) {
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
struct FamNames {
    histogram: String,
    quantile: String,
    requests: String,
    errors: String,
}

impl FamNames {
    fn new(fam: Fam, prefix: &str) -> Self {
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

/// One histogram series (one label set) of a group.
struct HSeries {
    class: StatusClass,
    count: u64,
    sum_ns: u128,
    /// Start of its `bounds.len()` cumulative counts in `Collected::buckets`.
    buckets: usize,
    /// Its exemplars in `Collected::exemplars`.
    exemplars: std::ops::Range<usize>,
}

/// One operation (and kind, for messaging; and target) of a family: its
/// series, the counters and the quantiles over all its status classes.
struct Group {
    op: Arc<str>,
    kind: Option<&'static str>,
    /// The target whose labels the series carry (no values: none).
    target: Target,
    series: std::ops::Range<usize>,
    count: u64,
    errors: u64,
    /// Start of its quantile values in `Collected::quantiles` (`None`: no data).
    quantiles: usize,
}

#[derive(Default)]
struct Collected {
    groups: [Vec<Group>; Fam::COUNT],
    series: Vec<HSeries>,
    buckets: Vec<u64>,
    quantiles: Vec<Option<u64>>,
    /// (bucket index, `bounds.len()` for `+Inf`; exemplar)
    exemplars: Vec<(usize, Exemplar)>,
}

/// A non-empty HDR slot: (lowest value, highest value, count).
type Slot = (u64, u64, u64);

/// What rendering needs of one snapshot, read in one pass: its totals and
/// its non-empty slots (a range of a shared slot buffer).
struct Dist {
    count: u64,
    sum_ns: u128,
    min: u64,
    max: u64,
    slots: std::ops::Range<usize>,
}

impl Dist {
    fn read(s: &Snapshot, buf: &mut Vec<Slot>) -> Dist {
        let start = buf.len();
        buf.extend(s.iter_recorded());
        Dist {
            count: s.count(),
            sum_ns: s.sum_ns(),
            min: s.min(),
            max: s.max(),
            slots: start..buf.len(),
        }
    }
}

/// Cumulative counts at each bound, equal to `Snapshot::count_le(bound)`
/// for each, in one pass over the non-empty slots.
fn cumulative_buckets(d: &Dist, buf: &[Slot], bounds_ns: &[u64], out: &mut Vec<u64>) {
    let mut slots = buf[d.slots.clone()].iter().peekable();
    let mut cum = 0u64;
    for &b in bounds_ns {
        let v = if d.count == 0 || b < d.min {
            0
        } else if b >= d.max {
            d.count
        } else {
            while let Some(&(_, _, c)) = slots.next_if(|&&(lowest, _, _)| lowest <= b) {
                cum = cum.saturating_add(c);
            }
            cum
        };
        out.push(v);
    }
}

/// `value_at_quantile` of the merge of `dists` (same config) for each of
/// `quantiles` (ascending), `None` when they are all empty; without
/// building the merged snapshot: one walk over their non-empty slots.
fn merged_quantiles(dists: &[Dist], buf: &[Slot], quantiles: &[f64], out: &mut Vec<Option<u64>>) {
    let count = dists.iter().fold(0u64, |a, d| a.saturating_add(d.count));
    if count == 0 {
        out.extend(quantiles.iter().map(|_| None));
        return;
    }
    let live = || dists.iter().filter(|d| d.count > 0);
    let min = live().map(|d| d.min).min().unwrap_or(0);
    let max = live().map(|d| d.max).max().unwrap_or(0);
    let mut qs = quantiles.iter().peekable();
    let mut cum = 0u64;
    let mut emit = |lowest: u64, highest: u64, cum: u64, out: &mut Vec<Option<u64>>| {
        while let Some(&&q) = qs.peek() {
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            if rank > cum {
                break;
            }
            let v = if q == 0.0 { lowest } else { highest };
            out.push(Some(v.clamp(min, max)));
            qs.next();
        }
    };
    if let [d] = dists {
        for &(lowest, highest, c) in &buf[d.slots.clone()] {
            cum = cum.saturating_add(c);
            emit(lowest, highest, cum, out);
        }
    } else {
        // Slots are identified by their lowest value (same layout): merge
        // the ascending runs by it.
        let mut heads: Vec<&[Slot]> = dists.iter().map(|d| &buf[d.slots.clone()]).collect();
        while let Some(lowest) = heads.iter().filter_map(|h| h.first().map(|s| s.0)).min() {
            let mut highest = lowest;
            for h in heads.iter_mut() {
                if let Some((&(lo, hi, c), rest)) = h.split_first() {
                    if lo == lowest {
                        cum = cum.saturating_add(c);
                        highest = hi;
                        *h = rest;
                    }
                }
            }
            emit(lowest, highest, cum, out);
        }
    }
    // Unreachable with consistent counts; keeps the layout fixed regardless.
    out.extend(qs.map(|_| Some(max)));
}

fn collect(
    registry: &Registry,
    exemplars: Option<&ExemplarFn<'_>>,
    bounds_ns: &[u64],
    quantiles: &[f64],
) -> Collected {
    let entries = registry.entries();
    // (family, operation, kind label, target shown) → its keys. Keys of one
    // label set are merged below, so a group is the unit that holds
    // snapshots at once.
    let none = Target::default();
    type GroupKey<'e> = (Fam, &'e str, Option<&'static str>, &'e Target);
    let mut groups: BTreeMap<GroupKey<'_>, Vec<&Entry>> = BTreeMap::new();
    for e in &entries {
        let fam = Fam::of(e.kind, e.target.system());
        let kind = (fam == Fam::Messaging).then(|| e.kind.as_str());
        let target = if fam.has_target() { &e.target } else { &none };
        groups
            .entry((fam, &e.name, kind, target))
            .or_default()
            .push(e);
    }

    let mut c = Collected::default();
    let mut best: Vec<Option<Exemplar>> = Vec::new();
    let mut slots: Vec<Slot> = Vec::new();
    let mut dists: Vec<Dist> = Vec::new();
    for ((fam, _, kind, target), mut keys) in groups {
        keys.sort_by_key(|e| e.class.as_str());
        let series_start = c.series.len();
        slots.clear();
        dists.clear();
        let (mut count, mut errors) = (0u64, 0u64);
        let mut i = 0;
        while i < keys.len() {
            let class = keys[i].class;
            let mut snap = keys[i].histogram.snapshot();
            let mut j = i + 1;
            while j < keys.len() && keys[j].class == class {
                // Same registry, same config: merging cannot fail.
                let _ = snap.merge(&keys[j].histogram.snapshot());
                j += 1;
            }
            let d = Dist::read(&snap, &mut slots);
            drop(snap);
            let buckets = c.buckets.len();
            cumulative_buckets(&d, &slots, bounds_ns, &mut c.buckets);
            let ex_start = c.exemplars.len();
            if let Some(f) = exemplars {
                best.clear();
                best.resize(bounds_ns.len() + 1, None);
                for key in &keys[i..j] {
                    for e in f(key).into_iter().flatten() {
                        let b = bounds_ns.partition_point(|&bound| bound < e.value_ns);
                        let slot = &mut best[b];
                        if slot.is_none_or(|old| old.timestamp_unix_ns <= e.timestamp_unix_ns) {
                            *slot = Some(e);
                        }
                    }
                }
                for (b, e) in best.iter().enumerate() {
                    // No exemplar on a bucket that counts nothing (the
                    // histogram was reset since, or the key was merged away).
                    let cum = if b < bounds_ns.len() {
                        c.buckets[buckets + b]
                    } else {
                        d.count
                    };
                    if let (Some(e), true) = (e, cum > 0) {
                        c.exemplars.push((b, *e));
                    }
                }
            }
            count = count.saturating_add(d.count);
            if class.is_error() {
                errors = errors.saturating_add(d.count);
            }
            c.series.push(HSeries {
                class,
                count: d.count,
                sum_ns: d.sum_ns,
                buckets,
                exemplars: ex_start..c.exemplars.len(),
            });
            dists.push(d);
            i = j;
        }
        let q_start = c.quantiles.len();
        if !quantiles.is_empty() {
            merged_quantiles(&dists, &slots, quantiles, &mut c.quantiles);
        }
        c.groups[fam as usize].push(Group {
            op: keys[0].name.clone(),
            kind,
            target: target.clone(),
            series: series_start..c.series.len(),
            count,
            errors,
            quantiles: q_start,
        });
    }
    c
}

/// An extra family after sanitising and merging.
struct PreparedExtra<'a> {
    /// Family name (counters without `_total`).
    name: String,
    /// `None`: the name stands in.
    help: Option<&'a str>,
    kind: ExtraKind,
    /// Sorted by labels; a sample's own labels sorted by name, then the
    /// constant labels it does not set.
    samples: Vec<(Vec<(String, &'a str)>, f64)>,
}

fn prepare_extra<'a>(f: &'a ExtraFamily, consts: &[(String, &'a str)]) -> PreparedExtra<'a> {
    let mut name = sanitize_metric_name(&f.name);
    if f.kind == ExtraKind::Counter {
        if let Some(base) = name.strip_suffix("_total") {
            name = if base.is_empty() {
                "_".to_string()
            } else {
                base.to_string()
            };
        }
    }
    let mut samples: Vec<(Vec<(String, &str)>, f64)> = f
        .samples
        .iter()
        .map(|(labels, v)| {
            let mut l: Vec<(String, &str)> = Vec::with_capacity(labels.len());
            for (k, v) in labels {
                let k = sanitize_label_name(k);
                if !l.iter().any(|(seen, _)| *seen == k) {
                    l.push((k, v.as_str()));
                }
            }
            l.sort();
            // The constant labels a sample does not set itself come after its
            // own: two samples that differ only by a label the constants
            // supply are one series, merged below.
            for (k, v) in consts {
                if !l.iter().any(|(seen, _)| seen == k) {
                    l.push((k.clone(), v));
                }
            }
            (l, *v)
        })
        .collect();
    // Stable: among equal label sets the given order is kept (a gauge keeps the last).
    fn key<'b>(l: &[(String, &'b str)]) -> Vec<(String, &'b str)> {
        let mut k = l.to_vec();
        k.sort();
        k
    }
    samples.sort_by_cached_key(|s| key(&s.0));
    let mut merged: Vec<(Vec<(String, &str)>, f64)> = Vec::with_capacity(samples.len());
    for (labels, v) in samples {
        match merged.last_mut() {
            Some((l, acc)) if key(l) == key(&labels) => {
                *acc = match f.kind {
                    ExtraKind::Counter => *acc + v,
                    ExtraKind::Gauge => v,
                }
            }
            _ => merged.push((labels, v)),
        }
    }
    PreparedExtra {
        // Every family gets a HELP text (linters flag an empty one).
        help: if f.help.is_empty() {
            None
        } else {
            Some(&f.help)
        },
        name,
        kind: f.kind,
        samples: merged,
    }
}

fn sample_names(name: &str, kind: &str) -> Vec<String> {
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
fn listed_name(name: &str, kind: &str, om: bool) -> String {
    if kind == "counter" && !om {
        format!("{name}_total")
    } else {
        name.to_string()
    }
}

#[derive(Clone, Copy)]
enum Part {
    Histogram,
    Quantile,
    Requests,
    Errors,
}

enum Item<'a> {
    Registry(Fam, Part),
    Extra(PreparedExtra<'a>),
}

/// Registry labels that constant labels may not reuse (the target labels too).
const RESERVED_LABELS: [&str; 7] = [
    "operation",
    "kind",
    "status_class",
    "le",
    "q",
    "quantile",
    HTTP_STATUS_LABEL,
];

/// The HTTP client families' label for the status class.
const HTTP_STATUS_LABEL: &str = "http_response_status_code";

fn reserved(label: &str) -> bool {
    RESERVED_LABELS.contains(&label) || crate::target::label_names().any(|l| l == label)
}

/// Renders the registry's families and `extra` in `format`, appended to `out`.
///
/// `exemplars(entry)` returns the exemplars of one registry key, one slot
/// per bucket bound of [`ExpositionConfig::bucket_bounds_ns`]
/// (plus optionally one for `+Inf`); it may be empty. Each exemplar is
/// placed in the bucket its value falls in (the latest per bucket wins), and
/// only in OpenMetrics.
pub fn render(
    registry: &Registry,
    exemplars: &ExemplarFn<'_>,
    extra: &[ExtraFamily],
    cfg: &ExpositionConfig,
    format: Format,
    out: &mut String,
) {
    let om = format == Format::OpenMetrics100;
    let bounds = cfg.bounds();
    let bounds_ns: Vec<u64> = bounds.iter().map(|&(_, ns)| ns).collect();
    let quantiles = cfg.quantiles_used();
    let prefix = cfg.prefix();
    let mut le: Vec<String> = bounds.iter().map(|&(s, _)| format!("{s:?}")).collect();
    le.push("+Inf".to_string());
    let q_text: Vec<String> = quantiles.iter().map(|q| format!("{q:?}")).collect();

    // Constant labels, sanitised and deduplicated, in the order given.
    let mut consts: Vec<(String, &str)> = Vec::new();
    for (k, v) in &cfg.const_labels {
        let k = sanitize_label_name(k);
        if !consts.iter().any(|(seen, _)| *seen == k) {
            consts.push((k, v.as_str()));
        }
    }
    let mut registry_consts = String::new();
    for (k, v) in &consts {
        if !reserved(k) {
            push_label(&mut registry_consts, k, v);
        }
    }

    let collected = collect(registry, om.then_some(exemplars), &bounds_ns, &quantiles);
    let names: Vec<FamNames> = Fam::ALL
        .iter()
        .map(|&f| FamNames::new(f, &prefix))
        .collect();

    let mut items: Vec<(String, Item<'_>)> = Vec::new();
    let mut taken: HashSet<String> = HashSet::new();
    for fam in Fam::ALL {
        if collected.groups[fam as usize].is_empty() {
            continue;
        }
        let n = &names[fam as usize];
        let mut parts = vec![
            (&n.histogram, "histogram", Part::Histogram),
            (&n.requests, "counter", Part::Requests),
            (&n.errors, "counter", Part::Errors),
        ];
        if !quantiles.is_empty() {
            parts.push((&n.quantile, "gauge", Part::Quantile));
        }
        for (name, kind, part) in parts {
            taken.extend(sample_names(name, kind));
            items.push((listed_name(name, kind, om), Item::Registry(fam, part)));
        }
    }
    for f in extra {
        let p = prepare_extra(f, &consts);
        let kind = match p.kind {
            ExtraKind::Counter => "counter",
            ExtraKind::Gauge => "gauge",
        };
        let claimed = sample_names(&p.name, kind);
        if claimed.iter().any(|n| taken.contains(n)) {
            continue;
        }
        taken.extend(claimed);
        items.push((listed_name(&p.name, kind, om), Item::Extra(p)));
    }
    // Sorted by the name the metadata lines show in this format.
    items.sort_by(|a, b| a.0.cmp(&b.0));

    let mut r = Renderer {
        out,
        om,
        line: String::new(),
    };
    for (_, item) in &items {
        match item {
            Item::Registry(fam, part) => r.registry_family(
                *fam,
                *part,
                &names[*fam as usize],
                &collected,
                &registry_consts,
                &le,
                &q_text,
            ),
            Item::Extra(p) => r.extra_family(p),
        }
    }
    if om {
        r.out.push_str("# EOF\n");
    }
}

struct Renderer<'o> {
    out: &'o mut String,
    om: bool,
    /// Scratch: the labels shared by the lines of one series.
    line: String,
}

impl Renderer<'_> {
    /// HELP, TYPE (and UNIT in OpenMetrics) of a family. Counters are named
    /// `<name>_total` in 0.0.4 metadata and `<name>` in OpenMetrics.
    fn header(&mut self, name: &str, help: &str, kind: &str, unit: Option<&str>) {
        let total = if kind == "counter" && !self.om {
            "_total"
        } else {
            ""
        };
        let out = &mut *self.out;
        let _ = write!(out, "# HELP {name}{total} ");
        escape_help(out, help, self.om);
        let _ = writeln!(out, "\n# TYPE {name}{total} {kind}");
        if let (true, Some(unit)) = (self.om, unit) {
            let _ = writeln!(out, "# UNIT {name} {unit}");
        }
    }

    /// `name{labels[,extra_name="extra_value"]} ` (value not written).
    fn sample_start(&mut self, name: &str, suffix: &str, extra: Option<(&str, &str)>) {
        let out = &mut *self.out;
        out.push_str(name);
        out.push_str(suffix);
        let labels = self.line.as_str();
        match (labels.is_empty(), extra) {
            (true, None) => {}
            (false, None) => {
                out.push('{');
                out.push_str(labels);
                out.push('}');
            }
            (empty, Some((k, v))) => {
                out.push('{');
                out.push_str(labels);
                if !empty {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                out.push_str(v);
                out.push('"');
                out.push('}');
            }
        }
        out.push(' ');
    }

    /// The labels of a registry series into `self.line`; `class` for a
    /// histogram series (with `http_status` when the family shows it).
    fn series_labels(&mut self, group: &Group, class: Option<(&str, bool)>, consts: &str) {
        self.line.clear();
        push_label(&mut self.line, "operation", &group.op);
        if let Some(kind) = group.kind {
            push_label(&mut self.line, "kind", kind);
        }
        for (_, label, value) in group.target.view().labels() {
            push_label(&mut self.line, label, value);
        }
        if let Some((class, http_status)) = class {
            if http_status {
                push_label(&mut self.line, HTTP_STATUS_LABEL, class);
            }
            push_label(&mut self.line, "status_class", class);
        }
        if !consts.is_empty() {
            self.line.push(',');
            self.line.push_str(consts);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn registry_family(
        &mut self,
        fam: Fam,
        part: Part,
        n: &FamNames,
        c: &Collected,
        consts: &str,
        le: &[String],
        q_text: &[String],
    ) {
        let groups = &c.groups[fam as usize];
        let (h_help, r_help, e_help) = fam.help();
        let name = match part {
            Part::Histogram => &n.histogram,
            Part::Quantile => &n.quantile,
            Part::Requests => &n.requests,
            Part::Errors => &n.errors,
        };
        match part {
            Part::Histogram => {
                self.header(name, h_help, "histogram", Some("seconds"));
                for g in groups {
                    for s in &c.series[g.series.clone()] {
                        // The HTTP client's status code label: its class, when it had a response.
                        let http_status = fam == Fam::HttpClient
                            && !matches!(s.class, StatusClass::Ok | StatusClass::Error);
                        self.series_labels(g, Some((s.class.as_str(), http_status)), consts);
                        let counts = &c.buckets[s.buckets..s.buckets + le.len() - 1];
                        let mut ex = c.exemplars[s.exemplars.clone()].iter().peekable();
                        for (b, le) in le.iter().enumerate() {
                            let v = counts.get(b).copied().unwrap_or(s.count);
                            self.sample_start(name, "_bucket", Some(("le", le)));
                            let _ = write!(self.out, "{v}");
                            if let Some((_, e)) = ex.next_if(|(eb, _)| *eb == b) {
                                write_exemplar(self.out, e);
                            }
                            self.out.push('\n');
                        }
                        self.sample_start(name, "_sum", None);
                        write_seconds(self.out, s.sum_ns);
                        self.out.push('\n');
                        self.sample_start(name, "_count", None);
                        let _ = writeln!(self.out, "{}", s.count);
                    }
                }
            }
            Part::Quantile => {
                let help = format!(
                    "Quantiles (label q) of {} per operation over all status classes, exact from the HDR histogram.",
                    n.histogram
                );
                self.header(name, &help, "gauge", Some("seconds"));
                for g in groups {
                    self.series_labels(g, None, consts);
                    for (i, q) in q_text.iter().enumerate() {
                        self.sample_start(name, "", Some(("q", q)));
                        match c.quantiles.get(g.quantiles + i).copied().flatten() {
                            Some(ns) => write_seconds(self.out, u128::from(ns)),
                            None => self.out.push_str("NaN"),
                        }
                        self.out.push('\n');
                    }
                }
            }
            Part::Requests | Part::Errors => {
                let errors = matches!(part, Part::Errors);
                self.header(name, if errors { e_help } else { r_help }, "counter", None);
                for g in groups {
                    self.series_labels(g, None, consts);
                    self.sample_start(name, "_total", None);
                    let _ = writeln!(self.out, "{}", if errors { g.errors } else { g.count });
                }
            }
        }
    }

    fn extra_family(&mut self, f: &PreparedExtra<'_>) {
        let (kind, suffix) = match f.kind {
            ExtraKind::Counter => ("counter", "_total"),
            ExtraKind::Gauge => ("gauge", ""),
        };
        self.header(&f.name, f.help.unwrap_or(&f.name), kind, None);
        for (labels, v) in &f.samples {
            self.line.clear();
            for (k, v) in labels {
                push_label(&mut self.line, k, v);
            }
            self.sample_start(&f.name, suffix, None);
            write_f64(self.out, *v);
            self.out.push('\n');
        }
    }
}

/// Appends `,name="escaped value"` (no comma when `out` is empty).
fn push_label(out: &mut String, name: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(name);
    out.push_str("=\"");
    escape_label_value(out, value);
    out.push('"');
}

/// Label values: `\` → `\\`, `"` → `\"`, newline → `\n` (both formats).
fn escape_label_value(out: &mut String, s: &str) {
    if !s.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(s);
        return;
    }
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: `\` → `\\`, newline → `\n`; OpenMetrics also `"` → `\"`
/// (its HELP is an escaped string like a label value, while 0.0.4 rejects
/// any escape but those two).
fn escape_help(out: &mut String, s: &str, om: bool) {
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if om => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Nanoseconds as exact decimal seconds: `0.5`, `12`, `0.000000003`.
fn write_seconds(out: &mut String, ns: u128) {
    let secs = ns / 1_000_000_000;
    let mut frac = (ns % 1_000_000_000) as u32;
    let _ = write!(out, "{secs}");
    if frac != 0 {
        let mut width = 9;
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        let _ = write!(out, ".{frac:0width$}");
    }
}

/// A float as Prometheus spells it: `NaN`, `+Inf`, `-Inf`, integers without
/// a fraction, else the shortest representation that round-trips.
fn write_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v == v.trunc() && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v:?}");
    }
}

/// ` # {trace_id="…",span_id="…"} <value s> [<timestamp s>]`
fn write_exemplar(out: &mut String, e: &Exemplar) {
    let _ = write!(
        out,
        " # {{trace_id=\"{:032x}\",span_id=\"{:016x}\"}} ",
        e.trace_id, e.span_id
    );
    write_seconds(out, u128::from(e.value_ns));
    if e.timestamp_unix_ns != 0 {
        out.push(' ');
        write_seconds(out, u128::from(e.timestamp_unix_ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::HistogramConfig;
    use crate::span::{AttrValue, Attributes};
    use crate::target::TargetRef;

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (Arc::from(*k), AttrValue::Str(Arc::from(*v))))
            .collect()
    }

    const TRACE: u128 = 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c;
    const SPAN: u64 = 0xb7ad_6b71_6920_3331;

    fn no_exemplars(_: &Entry) -> Vec<Option<Exemplar>> {
        Vec::new()
    }

    fn ex(value_ns: u64, timestamp_unix_ns: u64) -> Exemplar {
        Exemplar {
            value_ns,
            trace_id: TRACE,
            span_id: SPAN,
            timestamp_unix_ns,
        }
    }

    fn text(
        r: &Registry,
        exemplars: &ExemplarFn<'_>,
        extra: &[ExtraFamily],
        cfg: &ExpositionConfig,
        format: Format,
    ) -> String {
        let mut out = String::new();
        render(r, exemplars, extra, cfg, format, &mut out);
        out
    }

    fn golden_setup() -> (Registry, ExpositionConfig, Vec<ExtraFamily>) {
        let r = Registry::new(HistogramConfig::default(), 100);
        r.record(
            SpanKind::Server,
            "GET /users/{id}",
            StatusClass::Http2xx,
            3_000_000,
        );
        r.record(
            SpanKind::Server,
            "GET /users/{id}",
            StatusClass::Http2xx,
            40_000_000,
        );
        r.record(
            SpanKind::Server,
            "GET /users/{id}",
            StatusClass::Http5xx,
            2_000_000_000,
        );
        r.record(
            SpanKind::Consumer,
            "orders process",
            StatusClass::Error,
            250_000,
        );
        // One name, two systems (HTTP and Redis): two families. A queue's
        // producer and consumer.
        let http = attrs(&[
            ("http.request.method", "GET"),
            ("server.address", "api.example.com"),
        ]);
        let redis = attrs(&[("db.system.name", "redis"), ("db.operation.name", "GET")]);
        let queue = |op| {
            attrs(&[
                ("messaging.system", "kafka"),
                ("messaging.operation.name", op),
                ("messaging.destination.name", "orders"),
            ])
        };
        let (send, process) = (queue("send"), queue("process"));
        let client = SpanKind::Client;
        for (kind, name, attrs, class, ns) in [
            (client, "GET", &http, StatusClass::Http2xx, 5_000_000),
            (client, "GET", &http, StatusClass::Error, 400_000_000),
            (client, "GET", &redis, StatusClass::Ok, 200_000),
            (
                SpanKind::Producer,
                "send orders",
                &send,
                StatusClass::Ok,
                300_000,
            ),
            (
                SpanKind::Consumer,
                "process orders",
                &process,
                StatusClass::Ok,
                7_000_000,
            ),
        ] {
            r.record_target(kind, name, TargetRef::of(kind, attrs), class, ns);
        }
        let cfg = ExpositionConfig {
            buckets_s: vec![0.1, 0.01],
            quantiles: vec![0.5],
            namespace: "pt".into(),
            const_labels: vec![("service.name".into(), "api".into())],
        };
        let extra = vec![ExtraFamily {
            name: "process_open_fds".into(),
            help: "Open \"file\" descriptors.".into(),
            kind: ExtraKind::Gauge,
            samples: vec![(vec![], 12.0)],
        }];
        (r, cfg, extra)
    }

    fn golden_exemplars(e: &Entry) -> Vec<Option<Exemplar>> {
        match (e.kind, &*e.name, e.target.system(), e.class) {
            (SpanKind::Server, "GET /users/{id}", _, StatusClass::Http2xx) => {
                vec![None, Some(ex(40_000_000, 1_700_000_000_123_000_000))]
            }
            (SpanKind::Client, "GET", System::Http, StatusClass::Http2xx) => {
                vec![Some(ex(5_000_000, 1_700_000_000_456_000_000))]
            }
            _ => Vec::new(),
        }
    }

    const GOLDEN_004: &str = r#"# HELP db_client_errors_total Database operations that ended in an error by operation, database system, operation name and collection.
# TYPE db_client_errors_total counter
db_client_errors_total{operation="GET",db_system_name="redis",db_operation_name="GET",service_name="api"} 0
# HELP db_client_operation_duration_quantile_seconds Quantiles (label q) of db_client_operation_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE db_client_operation_duration_quantile_seconds gauge
db_client_operation_duration_quantile_seconds{operation="GET",db_system_name="redis",db_operation_name="GET",service_name="api",q="0.5"} 0.0002
# HELP db_client_operation_duration_seconds Duration of database operations (CLIENT spans with db.system.name) by operation, database system, operation name, collection and status class.
# TYPE db_client_operation_duration_seconds histogram
db_client_operation_duration_seconds_bucket{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api",le="0.01"} 1
db_client_operation_duration_seconds_bucket{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api",le="0.1"} 1
db_client_operation_duration_seconds_bucket{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api",le="+Inf"} 1
db_client_operation_duration_seconds_sum{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api"} 0.0002
db_client_operation_duration_seconds_count{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api"} 1
# HELP db_client_operations_total Database operations by operation, database system, operation name and collection.
# TYPE db_client_operations_total counter
db_client_operations_total{operation="GET",db_system_name="redis",db_operation_name="GET",service_name="api"} 1
# HELP http_client_errors_total Outgoing HTTP requests that ended in an error class (5xx or error status) by operation, method and server address.
# TYPE http_client_errors_total counter
http_client_errors_total{operation="GET",http_request_method="GET",server_address="api.example.com",service_name="api"} 1
# HELP http_client_request_duration_quantile_seconds Quantiles (label q) of http_client_request_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE http_client_request_duration_quantile_seconds gauge
http_client_request_duration_quantile_seconds{operation="GET",http_request_method="GET",server_address="api.example.com",service_name="api",q="0.5"} 0.005013503
# HELP http_client_request_duration_seconds Duration of outgoing HTTP requests (CLIENT spans with http.request.method) by operation, method, server address and status class.
# TYPE http_client_request_duration_seconds histogram
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api",le="0.01"} 1
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api",le="0.1"} 1
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api",le="+Inf"} 1
http_client_request_duration_seconds_sum{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api"} 0.005
http_client_request_duration_seconds_count{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api"} 1
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api",le="0.01"} 0
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api",le="0.1"} 0
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api",le="+Inf"} 1
http_client_request_duration_seconds_sum{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api"} 0.4
http_client_request_duration_seconds_count{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api"} 1
# HELP http_client_requests_total Outgoing HTTP requests by operation, method and server address.
# TYPE http_client_requests_total counter
http_client_requests_total{operation="GET",http_request_method="GET",server_address="api.example.com",service_name="api"} 2
# HELP http_server_errors_total HTTP server requests that ended in an error class (5xx or error status) by operation.
# TYPE http_server_errors_total counter
http_server_errors_total{operation="GET /users/{id}",service_name="api"} 1
# HELP http_server_request_duration_quantile_seconds Quantiles (label q) of http_server_request_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE http_server_request_duration_quantile_seconds gauge
http_server_request_duration_quantile_seconds{operation="GET /users/{id}",service_name="api",q="0.5"} 0.040108031
# HELP http_server_request_duration_seconds Duration of HTTP server requests (SERVER spans) by operation (method and route) and status class.
# TYPE http_server_request_duration_seconds histogram
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="2xx",service_name="api",le="0.01"} 1
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="2xx",service_name="api",le="0.1"} 2
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="2xx",service_name="api",le="+Inf"} 2
http_server_request_duration_seconds_sum{operation="GET /users/{id}",status_class="2xx",service_name="api"} 0.043
http_server_request_duration_seconds_count{operation="GET /users/{id}",status_class="2xx",service_name="api"} 2
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="5xx",service_name="api",le="0.01"} 0
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="5xx",service_name="api",le="0.1"} 0
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="5xx",service_name="api",le="+Inf"} 1
http_server_request_duration_seconds_sum{operation="GET /users/{id}",status_class="5xx",service_name="api"} 2
http_server_request_duration_seconds_count{operation="GET /users/{id}",status_class="5xx",service_name="api"} 1
# HELP http_server_requests_total HTTP server requests (SERVER spans) by operation.
# TYPE http_server_requests_total counter
http_server_requests_total{operation="GET /users/{id}",service_name="api"} 3
# HELP messaging_client_errors_total Messaging operations a client initiates that ended in an error by operation, messaging system, operation name and destination.
# TYPE messaging_client_errors_total counter
messaging_client_errors_total{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",service_name="api"} 0
# HELP messaging_client_operation_duration_quantile_seconds Quantiles (label q) of messaging_client_operation_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE messaging_client_operation_duration_quantile_seconds gauge
messaging_client_operation_duration_quantile_seconds{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",service_name="api",q="0.5"} 0.0003
# HELP messaging_client_operation_duration_seconds Duration of messaging operations a client initiates (PRODUCER or CLIENT spans with messaging.system) by operation, messaging system, operation name, destination and status class.
# TYPE messaging_client_operation_duration_seconds histogram
messaging_client_operation_duration_seconds_bucket{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.01"} 1
messaging_client_operation_duration_seconds_bucket{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.1"} 1
messaging_client_operation_duration_seconds_bucket{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api",le="+Inf"} 1
messaging_client_operation_duration_seconds_sum{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api"} 0.0003
messaging_client_operation_duration_seconds_count{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api"} 1
# HELP messaging_client_operations_total Messaging operations a client initiates by operation, messaging system, operation name and destination.
# TYPE messaging_client_operations_total counter
messaging_client_operations_total{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",service_name="api"} 1
# HELP messaging_process_duration_quantile_seconds Quantiles (label q) of messaging_process_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE messaging_process_duration_quantile_seconds gauge
messaging_process_duration_quantile_seconds{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",service_name="api",q="0.5"} 0.007
# HELP messaging_process_duration_seconds Duration of message processing (CONSUMER spans with messaging.system) by operation, messaging system, operation name, destination and status class.
# TYPE messaging_process_duration_seconds histogram
messaging_process_duration_seconds_bucket{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.01"} 1
messaging_process_duration_seconds_bucket{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.1"} 1
messaging_process_duration_seconds_bucket{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api",le="+Inf"} 1
messaging_process_duration_seconds_sum{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api"} 0.007
messaging_process_duration_seconds_count{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api"} 1
# HELP messaging_process_errors_total Message processing operations that ended in an error by operation, messaging system, operation name and destination.
# TYPE messaging_process_errors_total counter
messaging_process_errors_total{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",service_name="api"} 0
# HELP messaging_process_operations_total Message processing operations by operation, messaging system, operation name and destination.
# TYPE messaging_process_operations_total counter
messaging_process_operations_total{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",service_name="api"} 1
# HELP process_open_fds Open "file" descriptors.
# TYPE process_open_fds gauge
process_open_fds{service_name="api"} 12
# HELP pt_messaging_errors_total Messaging operations (PRODUCER and CONSUMER spans without messaging.system) that ended in an error by operation and kind.
# TYPE pt_messaging_errors_total counter
pt_messaging_errors_total{operation="orders process",kind="consumer",service_name="api"} 1
# HELP pt_messaging_operation_duration_quantile_seconds Quantiles (label q) of pt_messaging_operation_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE pt_messaging_operation_duration_quantile_seconds gauge
pt_messaging_operation_duration_quantile_seconds{operation="orders process",kind="consumer",service_name="api",q="0.5"} 0.00025
# HELP pt_messaging_operation_duration_seconds Duration of messaging operations (PRODUCER and CONSUMER spans without messaging.system) by operation, kind and status class.
# TYPE pt_messaging_operation_duration_seconds histogram
pt_messaging_operation_duration_seconds_bucket{operation="orders process",kind="consumer",status_class="error",service_name="api",le="0.01"} 1
pt_messaging_operation_duration_seconds_bucket{operation="orders process",kind="consumer",status_class="error",service_name="api",le="0.1"} 1
pt_messaging_operation_duration_seconds_bucket{operation="orders process",kind="consumer",status_class="error",service_name="api",le="+Inf"} 1
pt_messaging_operation_duration_seconds_sum{operation="orders process",kind="consumer",status_class="error",service_name="api"} 0.00025
pt_messaging_operation_duration_seconds_count{operation="orders process",kind="consumer",status_class="error",service_name="api"} 1
# HELP pt_messaging_operations_total Messaging operations (PRODUCER and CONSUMER spans without messaging.system) by operation and kind.
# TYPE pt_messaging_operations_total counter
pt_messaging_operations_total{operation="orders process",kind="consumer",service_name="api"} 1
"#;

    const GOLDEN_OPENMETRICS: &str = r#"# HELP db_client_errors Database operations that ended in an error by operation, database system, operation name and collection.
# TYPE db_client_errors counter
db_client_errors_total{operation="GET",db_system_name="redis",db_operation_name="GET",service_name="api"} 0
# HELP db_client_operation_duration_quantile_seconds Quantiles (label q) of db_client_operation_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE db_client_operation_duration_quantile_seconds gauge
# UNIT db_client_operation_duration_quantile_seconds seconds
db_client_operation_duration_quantile_seconds{operation="GET",db_system_name="redis",db_operation_name="GET",service_name="api",q="0.5"} 0.0002
# HELP db_client_operation_duration_seconds Duration of database operations (CLIENT spans with db.system.name) by operation, database system, operation name, collection and status class.
# TYPE db_client_operation_duration_seconds histogram
# UNIT db_client_operation_duration_seconds seconds
db_client_operation_duration_seconds_bucket{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api",le="0.01"} 1
db_client_operation_duration_seconds_bucket{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api",le="0.1"} 1
db_client_operation_duration_seconds_bucket{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api",le="+Inf"} 1
db_client_operation_duration_seconds_sum{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api"} 0.0002
db_client_operation_duration_seconds_count{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api"} 1
# HELP db_client_operations Database operations by operation, database system, operation name and collection.
# TYPE db_client_operations counter
db_client_operations_total{operation="GET",db_system_name="redis",db_operation_name="GET",service_name="api"} 1
# HELP http_client_errors Outgoing HTTP requests that ended in an error class (5xx or error status) by operation, method and server address.
# TYPE http_client_errors counter
http_client_errors_total{operation="GET",http_request_method="GET",server_address="api.example.com",service_name="api"} 1
# HELP http_client_request_duration_quantile_seconds Quantiles (label q) of http_client_request_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE http_client_request_duration_quantile_seconds gauge
# UNIT http_client_request_duration_quantile_seconds seconds
http_client_request_duration_quantile_seconds{operation="GET",http_request_method="GET",server_address="api.example.com",service_name="api",q="0.5"} 0.005013503
# HELP http_client_request_duration_seconds Duration of outgoing HTTP requests (CLIENT spans with http.request.method) by operation, method, server address and status class.
# TYPE http_client_request_duration_seconds histogram
# UNIT http_client_request_duration_seconds seconds
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api",le="0.01"} 1 # {trace_id="0af7651916cd43dd8448eb211c80319c",span_id="b7ad6b7169203331"} 0.005 1700000000.456
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api",le="0.1"} 1
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api",le="+Inf"} 1
http_client_request_duration_seconds_sum{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api"} 0.005
http_client_request_duration_seconds_count{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api"} 1
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api",le="0.01"} 0
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api",le="0.1"} 0
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api",le="+Inf"} 1
http_client_request_duration_seconds_sum{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api"} 0.4
http_client_request_duration_seconds_count{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api"} 1
# HELP http_client_requests Outgoing HTTP requests by operation, method and server address.
# TYPE http_client_requests counter
http_client_requests_total{operation="GET",http_request_method="GET",server_address="api.example.com",service_name="api"} 2
# HELP http_server_errors HTTP server requests that ended in an error class (5xx or error status) by operation.
# TYPE http_server_errors counter
http_server_errors_total{operation="GET /users/{id}",service_name="api"} 1
# HELP http_server_request_duration_quantile_seconds Quantiles (label q) of http_server_request_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE http_server_request_duration_quantile_seconds gauge
# UNIT http_server_request_duration_quantile_seconds seconds
http_server_request_duration_quantile_seconds{operation="GET /users/{id}",service_name="api",q="0.5"} 0.040108031
# HELP http_server_request_duration_seconds Duration of HTTP server requests (SERVER spans) by operation (method and route) and status class.
# TYPE http_server_request_duration_seconds histogram
# UNIT http_server_request_duration_seconds seconds
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="2xx",service_name="api",le="0.01"} 1
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="2xx",service_name="api",le="0.1"} 2 # {trace_id="0af7651916cd43dd8448eb211c80319c",span_id="b7ad6b7169203331"} 0.04 1700000000.123
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="2xx",service_name="api",le="+Inf"} 2
http_server_request_duration_seconds_sum{operation="GET /users/{id}",status_class="2xx",service_name="api"} 0.043
http_server_request_duration_seconds_count{operation="GET /users/{id}",status_class="2xx",service_name="api"} 2
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="5xx",service_name="api",le="0.01"} 0
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="5xx",service_name="api",le="0.1"} 0
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="5xx",service_name="api",le="+Inf"} 1
http_server_request_duration_seconds_sum{operation="GET /users/{id}",status_class="5xx",service_name="api"} 2
http_server_request_duration_seconds_count{operation="GET /users/{id}",status_class="5xx",service_name="api"} 1
# HELP http_server_requests HTTP server requests (SERVER spans) by operation.
# TYPE http_server_requests counter
http_server_requests_total{operation="GET /users/{id}",service_name="api"} 3
# HELP messaging_client_errors Messaging operations a client initiates that ended in an error by operation, messaging system, operation name and destination.
# TYPE messaging_client_errors counter
messaging_client_errors_total{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",service_name="api"} 0
# HELP messaging_client_operation_duration_quantile_seconds Quantiles (label q) of messaging_client_operation_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE messaging_client_operation_duration_quantile_seconds gauge
# UNIT messaging_client_operation_duration_quantile_seconds seconds
messaging_client_operation_duration_quantile_seconds{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",service_name="api",q="0.5"} 0.0003
# HELP messaging_client_operation_duration_seconds Duration of messaging operations a client initiates (PRODUCER or CLIENT spans with messaging.system) by operation, messaging system, operation name, destination and status class.
# TYPE messaging_client_operation_duration_seconds histogram
# UNIT messaging_client_operation_duration_seconds seconds
messaging_client_operation_duration_seconds_bucket{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.01"} 1
messaging_client_operation_duration_seconds_bucket{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.1"} 1
messaging_client_operation_duration_seconds_bucket{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api",le="+Inf"} 1
messaging_client_operation_duration_seconds_sum{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api"} 0.0003
messaging_client_operation_duration_seconds_count{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api"} 1
# HELP messaging_client_operations Messaging operations a client initiates by operation, messaging system, operation name and destination.
# TYPE messaging_client_operations counter
messaging_client_operations_total{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",service_name="api"} 1
# HELP messaging_process_duration_quantile_seconds Quantiles (label q) of messaging_process_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE messaging_process_duration_quantile_seconds gauge
# UNIT messaging_process_duration_quantile_seconds seconds
messaging_process_duration_quantile_seconds{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",service_name="api",q="0.5"} 0.007
# HELP messaging_process_duration_seconds Duration of message processing (CONSUMER spans with messaging.system) by operation, messaging system, operation name, destination and status class.
# TYPE messaging_process_duration_seconds histogram
# UNIT messaging_process_duration_seconds seconds
messaging_process_duration_seconds_bucket{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.01"} 1
messaging_process_duration_seconds_bucket{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.1"} 1
messaging_process_duration_seconds_bucket{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api",le="+Inf"} 1
messaging_process_duration_seconds_sum{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api"} 0.007
messaging_process_duration_seconds_count{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api"} 1
# HELP messaging_process_errors Message processing operations that ended in an error by operation, messaging system, operation name and destination.
# TYPE messaging_process_errors counter
messaging_process_errors_total{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",service_name="api"} 0
# HELP messaging_process_operations Message processing operations by operation, messaging system, operation name and destination.
# TYPE messaging_process_operations counter
messaging_process_operations_total{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",service_name="api"} 1
# HELP process_open_fds Open \"file\" descriptors.
# TYPE process_open_fds gauge
process_open_fds{service_name="api"} 12
# HELP pt_messaging_errors Messaging operations (PRODUCER and CONSUMER spans without messaging.system) that ended in an error by operation and kind.
# TYPE pt_messaging_errors counter
pt_messaging_errors_total{operation="orders process",kind="consumer",service_name="api"} 1
# HELP pt_messaging_operation_duration_quantile_seconds Quantiles (label q) of pt_messaging_operation_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE pt_messaging_operation_duration_quantile_seconds gauge
# UNIT pt_messaging_operation_duration_quantile_seconds seconds
pt_messaging_operation_duration_quantile_seconds{operation="orders process",kind="consumer",service_name="api",q="0.5"} 0.00025
# HELP pt_messaging_operation_duration_seconds Duration of messaging operations (PRODUCER and CONSUMER spans without messaging.system) by operation, kind and status class.
# TYPE pt_messaging_operation_duration_seconds histogram
# UNIT pt_messaging_operation_duration_seconds seconds
pt_messaging_operation_duration_seconds_bucket{operation="orders process",kind="consumer",status_class="error",service_name="api",le="0.01"} 1
pt_messaging_operation_duration_seconds_bucket{operation="orders process",kind="consumer",status_class="error",service_name="api",le="0.1"} 1
pt_messaging_operation_duration_seconds_bucket{operation="orders process",kind="consumer",status_class="error",service_name="api",le="+Inf"} 1
pt_messaging_operation_duration_seconds_sum{operation="orders process",kind="consumer",status_class="error",service_name="api"} 0.00025
pt_messaging_operation_duration_seconds_count{operation="orders process",kind="consumer",status_class="error",service_name="api"} 1
# HELP pt_messaging_operations Messaging operations (PRODUCER and CONSUMER spans without messaging.system) by operation and kind.
# TYPE pt_messaging_operations counter
pt_messaging_operations_total{operation="orders process",kind="consumer",service_name="api"} 1
# EOF
"#;

    #[test]
    fn golden_prometheus_004() {
        let (r, cfg, extra) = golden_setup();
        let out = text(&r, &golden_exemplars, &extra, &cfg, Format::Prometheus004);
        assert_eq!(out, GOLDEN_004);
    }

    #[test]
    fn golden_openmetrics() {
        let (r, cfg, extra) = golden_setup();
        let out = text(&r, &golden_exemplars, &extra, &cfg, Format::OpenMetrics100);
        assert_eq!(out, GOLDEN_OPENMETRICS);
    }

    /// The sample lines (no comments) whose name is `name`.
    fn lines<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
        out.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .collect()
    }

    fn value(line: &str) -> &str {
        let head = line.split(" # ").next().unwrap_or(line);
        head.rsplit(' ').next().unwrap_or("")
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let r = Registry::new(HistogramConfig::default(), 100);
        r.record(SpanKind::Internal, "a\"b\nc\\d é", StatusClass::Ok, 1_000);
        let cfg = ExpositionConfig {
            const_labels: vec![("env".into(), "pro\"d\\\n".into())],
            ..ExpositionConfig::default()
        };
        let extra = vec![ExtraFamily {
            name: "x".into(),
            help: "say \"hi\"\\\nbye".into(),
            kind: ExtraKind::Gauge,
            samples: vec![(vec![("path".into(), "C:\\tmp\n\"q\"".into())], 1.0)],
        }];
        for f in [Format::Prometheus004, Format::OpenMetrics100] {
            let out = text(&r, &no_exemplars, &extra, &cfg, f);
            let ops = lines(&out, "pulsetrace_internal_operations_total");
            assert_eq!(
                ops,
                [
                    r#"pulsetrace_internal_operations_total{operation="a\"b\nc\\d é",env="pro\"d\\\n"} 1"#
                ]
            );
            assert!(out.contains(r#"x{path="C:\\tmp\n\"q\"",env="pro\"d\\\n"} 1"#));
            let help = match f {
                Format::Prometheus004 => r#"# HELP x say "hi"\\\nbye"#,
                Format::OpenMetrics100 => r#"# HELP x say \"hi\"\\\nbye"#,
            };
            assert!(out.lines().any(|l| l == help), "{out}");
            // Every line is a comment or a sample: no raw newline leaked.
            assert!(out.lines().all(|l| l.starts_with('#')
                || l.starts_with("pulsetrace_")
                || l.starts_with("x{")));
        }
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(
            sanitize_metric_name("http.server.duration"),
            "http_server_duration"
        );
        assert_eq!(sanitize_metric_name("9lives"), "_9lives");
        assert_eq!(sanitize_metric_name("a:b-c é"), "a:b_c__");
        assert_eq!(sanitize_metric_name(""), "_");
        assert_eq!(sanitize_label_name("a:b"), "a_b");
        assert_eq!(sanitize_label_name("1x"), "_1x");
        assert_eq!(sanitize_label_name("ok_Name9"), "ok_Name9");

        let r = Registry::new(HistogramConfig::default(), 10);
        let extra = vec![
            ExtraFamily {
                name: "2xx.rate/ms".into(),
                help: String::new(),
                kind: ExtraKind::Gauge,
                samples: vec![(vec![("my-label".into(), "v".into())], 0.5)],
            },
            ExtraFamily {
                name: "jobs.done_total".into(),
                help: "done".into(),
                kind: ExtraKind::Counter,
                samples: vec![(vec![], 3.0)],
            },
        ];
        let cfg = ExpositionConfig {
            namespace: "my app".into(),
            const_labels: vec![("service.name".into(), "s".into())],
            ..ExpositionConfig::default()
        };
        let out = text(&r, &no_exemplars, &extra, &cfg, Format::Prometheus004);
        assert!(
            out.contains("# HELP _2xx_rate_ms _2xx_rate_ms\n# TYPE _2xx_rate_ms gauge\n")
                && out.contains("\n_2xx_rate_ms{my_label=\"v\",service_name=\"s\"} 0.5\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE jobs_done_total counter\njobs_done_total{service_name=\"s\"} 3\n")
        );
        let om = text(&r, &no_exemplars, &extra, &cfg, Format::OpenMetrics100);
        assert!(om.contains("# TYPE jobs_done counter\njobs_done_total{service_name=\"s\"} 3\n"));
        let health = health_families(&cfg, &r, &[("spans_exported", "spans", 7)]);
        assert_eq!(health[0].name, "my_app_spans_exported");
        let out = text(&r, &no_exemplars, &health, &cfg, Format::Prometheus004);
        assert!(out.contains("\nmy_app_spans_exported_total{service_name=\"s\"} 7\n"));
        assert!(out.contains("\nmy_app_registry_max_keys{service_name=\"s\"} 10\n"));
        assert!(out.contains("\nmy_app_registry_overflowed_total{service_name=\"s\"} 0\n"));
    }

    #[test]
    fn negotiate_picks_openmetrics_only_when_asked() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(prometheus), Format::OpenMetrics100);
        assert_eq!(
            negotiate("application/openmetrics-text"),
            Format::OpenMetrics100
        );
        assert_eq!(
            negotiate("Application/OpenMetrics-Text; version=0.0.1"),
            Format::OpenMetrics100
        );
        assert_eq!(
            negotiate("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.1"),
            Format::OpenMetrics100
        );
        assert_eq!(negotiate("text/plain;version=0.0.4"), Format::Prometheus004);
        assert_eq!(negotiate(""), Format::Prometheus004);
        assert_eq!(negotiate("*/*"), Format::Prometheus004);
        assert_eq!(
            negotiate("application/openmetrics-text;q=0"),
            Format::Prometheus004
        );
        assert_eq!(
            negotiate("application/openmetrics-textual"),
            Format::Prometheus004
        );
        assert_eq!(negotiate("é;q=é,,;;="), Format::Prometheus004);
        assert_eq!(
            content_type(Format::Prometheus004),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(
            content_type(Format::OpenMetrics100),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
    }

    #[test]
    fn buckets_are_cumulative_count_le_and_inf_is_count() {
        let r = Registry::new(HistogramConfig::default(), 10);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut sum = 0u128;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = x % 20_000_000_000;
            sum += u128::from(v.max(1));
            r.record(SpanKind::Server, "GET /", StatusClass::Http2xx, v);
        }
        let cfg = ExpositionConfig::default();
        let out = text(&r, &no_exemplars, &[], &cfg, Format::Prometheus004);
        let buckets: Vec<u64> = lines(&out, "http_server_request_duration_seconds_bucket")
            .iter()
            .map(|l| value(l).parse().unwrap())
            .collect();
        assert_eq!(buckets.len(), DEFAULT_BUCKETS_S.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        let snap = r
            .get(SpanKind::Server, "GET /", StatusClass::Http2xx)
            .unwrap()
            .snapshot();
        for (b, &(_, ns)) in buckets.iter().zip(cfg.bounds().iter()) {
            assert_eq!(*b, snap.count_le(ns));
        }
        assert_eq!(buckets.last(), Some(&5_000));
        let count = lines(&out, "http_server_request_duration_seconds_count");
        assert_eq!(value(count[0]), "5000");
        let sum_line = lines(&out, "http_server_request_duration_seconds_sum");
        let secs = sum / 1_000_000_000;
        let frac = format!("{:09}", sum % 1_000_000_000);
        let expected = format!("{secs}.{}", frac.trim_end_matches('0'));
        assert_eq!(value(sum_line[0]), expected.trim_end_matches('.'));

        // The one-pass cumulative counts equal count_le at any bound.
        let bounds: Vec<u64> = (0..200).map(|i| i * 97_000_000 + i * i).collect();
        let mut got = Vec::new();
        let mut buf = Vec::new();
        let d = Dist::read(&snap, &mut buf);
        cumulative_buckets(&d, &buf, &bounds, &mut got);
        let want: Vec<u64> = bounds.iter().map(|&b| snap.count_le(b)).collect();
        assert_eq!(got, want);
        let empty = crate::histogram::Snapshot::empty(HistogramConfig::default());
        got.clear();
        let d = Dist::read(&empty, &mut buf);
        cumulative_buckets(&d, &buf, &bounds, &mut got);
        assert!(got.iter().all(|&c| c == 0));
    }

    #[test]
    fn exemplars_land_in_their_bucket_and_only_in_openmetrics() {
        let r = Registry::new(HistogramConfig::default(), 10);
        for v in [2_000_000, 60_000_000, 70_000_000, 30_000_000_000] {
            r.record(SpanKind::Client, "GET", StatusClass::Ok, v);
        }
        let cfg = ExpositionConfig {
            buckets_s: vec![0.01, 0.1, 1.0],
            ..ExpositionConfig::default()
        };
        let calls = std::cell::Cell::new(0);
        let exemplars = |_: &Entry| {
            calls.set(calls.get() + 1);
            vec![
                // Misplaced (0.06 s belongs to le=0.1): moved there.
                Some(ex(60_000_000, 5_000_000_000)),
                // Same bucket, newer: wins.
                Some(ex(70_000_000, 6_000_000_000)),
                // le=1.0 counts nothing beyond le=0.1... but its cumulative
                // count is not zero, so it is kept.
                Some(ex(500_000_000, 0)),
                // Above every bound: the +Inf bucket.
                Some(ex(30_000_000_000, 7_000_000_001)),
            ]
        };
        let plain = text(&r, &exemplars, &[], &cfg, Format::Prometheus004);
        assert_eq!(calls.get(), 0, "0.0.4 never asks for exemplars");
        assert!(!plain.contains("trace_id"));
        let om = text(&r, &exemplars, &[], &cfg, Format::OpenMetrics100);
        assert_eq!(calls.get(), 1);
        let b = lines(&om, "pulsetrace_client_operation_duration_seconds_bucket");
        let t = "trace_id=\"0af7651916cd43dd8448eb211c80319c\",span_id=\"b7ad6b7169203331\"";
        assert_eq!(b[0], "pulsetrace_client_operation_duration_seconds_bucket{operation=\"GET\",status_class=\"ok\",le=\"0.01\"} 1");
        assert_eq!(b[1], format!("pulsetrace_client_operation_duration_seconds_bucket{{operation=\"GET\",status_class=\"ok\",le=\"0.1\"}} 3 # {{{t}}} 0.07 6"));
        assert_eq!(b[2], format!("pulsetrace_client_operation_duration_seconds_bucket{{operation=\"GET\",status_class=\"ok\",le=\"1.0\"}} 3 # {{{t}}} 0.5"));
        assert_eq!(b[3], format!("pulsetrace_client_operation_duration_seconds_bucket{{operation=\"GET\",status_class=\"ok\",le=\"+Inf\"}} 4 # {{{t}}} 30 7.000000001"));
        // Every exemplar value is within its bucket: (previous bound, le].
        let mut prev = 0.0f64;
        for l in &b {
            let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            if let Some(e) = l.split(" # ").nth(1) {
                let v: f64 = e
                    .split("} ")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(prev < v && v <= le, "{l}");
            }
            prev = le;
        }

        // No exemplar on a bucket that counts nothing.
        let r = Registry::new(HistogramConfig::default(), 10);
        r.record(SpanKind::Client, "GET", StatusClass::Ok, 500_000_000);
        let om = text(
            &r,
            &|_: &Entry| vec![Some(ex(1_000, 1))],
            &[],
            &cfg,
            Format::OpenMetrics100,
        );
        assert!(!om.contains("trace_id"), "{om}");
    }

    #[test]
    fn duplicate_label_sets_are_merged() {
        // A real operation named like the overflow key, and the overflow key.
        let r = Registry::new(HistogramConfig::default(), 2);
        r.record(
            SpanKind::Server,
            crate::registry::OVERFLOW_NAME,
            StatusClass::Http2xx,
            1_000_000,
        );
        r.record(SpanKind::Server, "GET /a", StatusClass::Http2xx, 1_000_000);
        r.record(SpanKind::Server, "GET /b", StatusClass::Http2xx, 50_000_000);
        r.record(
            SpanKind::Server,
            "GET /c",
            StatusClass::Http5xx,
            2_000_000_000,
        );
        assert_eq!(r.overflowed(), 2);
        let entries = r.entries();
        assert_eq!(
            entries
                .iter()
                .filter(|e| &*e.name == crate::registry::OVERFLOW_NAME)
                .count(),
            3
        );
        for f in [Format::Prometheus004, Format::OpenMetrics100] {
            let out = text(&r, &no_exemplars, &[], &ExpositionConfig::default(), f);
            let counts = lines(&out, "http_server_request_duration_seconds_count");
            assert_eq!(
                counts,
                [
                    "http_server_request_duration_seconds_count{operation=\"(overflow)\",status_class=\"2xx\"} 2",
                    "http_server_request_duration_seconds_count{operation=\"(overflow)\",status_class=\"5xx\"} 1",
                    "http_server_request_duration_seconds_count{operation=\"GET /a\",status_class=\"2xx\"} 1",
                ]
            );
            assert_eq!(
                lines(&out, "http_server_request_duration_seconds_sum")[0],
                "http_server_request_duration_seconds_sum{operation=\"(overflow)\",status_class=\"2xx\"} 0.051"
            );
            assert_eq!(
                lines(&out, "http_server_requests_total"),
                [
                    "http_server_requests_total{operation=\"(overflow)\"} 3",
                    "http_server_requests_total{operation=\"GET /a\"} 1",
                ]
            );
            assert_eq!(
                lines(&out, "http_server_errors_total")[0],
                "http_server_errors_total{operation=\"(overflow)\"} 1"
            );
            // Each series exactly once.
            let mut seen = HashSet::new();
            for l in out.lines().filter(|l| !l.starts_with('#')) {
                let series = l.rsplit_once(' ').unwrap().0;
                assert!(seen.insert(series.to_string()), "duplicate series {series}");
            }
        }
    }

    #[test]
    fn non_finite_values_and_empty_histograms() {
        let r = Registry::new(HistogramConfig::default(), 10);
        r.record(SpanKind::Internal, "job", StatusClass::Ok, 5);
        let _ = r
            .get(SpanKind::Internal, "job", StatusClass::Ok)
            .unwrap()
            .take_interval();
        let extra = vec![ExtraFamily {
            name: "g".into(),
            help: "h".into(),
            kind: ExtraKind::Gauge,
            samples: vec![
                (vec![("v".into(), "nan".into())], f64::NAN),
                (vec![("v".into(), "pinf".into())], f64::INFINITY),
                (vec![("v".into(), "ninf".into())], f64::NEG_INFINITY),
                (vec![("v".into(), "big".into())], 1e21),
                (vec![("v".into(), "tenth".into())], 0.1),
                (vec![("v".into(), "neg".into())], -3.0),
                (vec![("v".into(), "negzero".into())], -0.0),
            ],
        }];
        let out = text(
            &r,
            &no_exemplars,
            &extra,
            &ExpositionConfig::default(),
            Format::OpenMetrics100,
        );
        for want in [
            "g{v=\"big\"} 1e21",
            "g{v=\"nan\"} NaN",
            "g{v=\"neg\"} -3",
            "g{v=\"negzero\"} 0",
            "g{v=\"ninf\"} -Inf",
            "g{v=\"pinf\"} +Inf",
            "g{v=\"tenth\"} 0.1",
            "pulsetrace_internal_operation_duration_quantile_seconds{operation=\"job\",q=\"0.99\"} NaN",
            "pulsetrace_internal_operation_duration_seconds_bucket{operation=\"job\",status_class=\"ok\",le=\"+Inf\"} 0",
            "pulsetrace_internal_operation_duration_seconds_sum{operation=\"job\",status_class=\"ok\"} 0",
        ] {
            assert!(out.lines().any(|l| l == want), "{want} missing in\n{out}");
        }
        let mut s = String::new();
        write_seconds(&mut s, 3);
        s.push(' ');
        write_seconds(&mut s, 12_000_000_000);
        s.push(' ');
        write_seconds(&mut s, u128::MAX);
        assert_eq!(s, "0.000000003 12 340282366920938463463374607431.768211455");
    }

    #[test]
    fn extra_families_merge_samples_and_never_collide() {
        let r = Registry::new(HistogramConfig::default(), 10);
        r.record(SpanKind::Server, "GET /", StatusClass::Http2xx, 1_000);
        let fam = |name: &str, kind, samples: Vec<(Vec<(String, String)>, f64)>| ExtraFamily {
            name: name.into(),
            help: "h".into(),
            kind,
            samples,
        };
        let l = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let extra = vec![
            fam(
                "c",
                ExtraKind::Counter,
                vec![
                    (l(&[("b", "2"), ("a", "1")]), 1.0),
                    (l(&[("a", "1"), ("b", "2")]), 2.0),
                    (l(&[("a", "0")]), 5.0),
                ],
            ),
            fam("g", ExtraKind::Gauge, vec![(l(&[]), 1.0), (l(&[]), 4.0)]),
            // Collisions: skipped.
            fam("c_total", ExtraKind::Counter, vec![(l(&[]), 9.0)]),
            fam("c", ExtraKind::Gauge, vec![(l(&[]), 9.0)]),
            fam(
                "http_server_request_duration_seconds_count",
                ExtraKind::Gauge,
                vec![(l(&[]), 9.0)],
            ),
            fam(
                "http_server_requests",
                ExtraKind::Counter,
                vec![(l(&[]), 9.0)],
            ),
            // A duplicate label name in one sample: the first is kept.
            fam(
                "d",
                ExtraKind::Gauge,
                vec![(l(&[("x", "1"), ("x", "2")]), 1.0)],
            ),
        ];
        let out = text(
            &r,
            &no_exemplars,
            &extra,
            &ExpositionConfig::default(),
            Format::Prometheus004,
        );
        assert!(!out.contains(" 9\n"), "{out}");
        assert!(out
            .contains("# TYPE c_total counter\nc_total{a=\"0\"} 5\nc_total{a=\"1\",b=\"2\"} 3\n"));
        assert!(out.contains("# TYPE g gauge\ng 4\n"));
        assert!(out.contains("\nd{x=\"1\"} 1\n"));
        assert_eq!(out.matches("# TYPE ").count(), 4 + 3);
    }

    #[test]
    fn const_labels_never_shadow_registry_labels() {
        let r = Registry::new(HistogramConfig::default(), 10);
        r.record(SpanKind::Server, "GET /", StatusClass::Http2xx, 1_000);
        let http = attrs(&[("http.request.method", "GET"), ("server.address", "h")]);
        let target = TargetRef::of(SpanKind::Client, &http);
        r.record_target(SpanKind::Client, "GET", target, StatusClass::Http2xx, 1_000);
        let cfg = ExpositionConfig {
            const_labels: vec![
                ("operation".into(), "x".into()),
                ("le".into(), "x".into()),
                ("q".into(), "x".into()),
                ("region".into(), "eu".into()),
                ("region".into(), "us".into()),
                ("server.address".into(), "x".into()),
                ("http_response_status_code".into(), "x".into()),
            ],
            ..ExpositionConfig::default()
        };
        let extra = vec![ExtraFamily {
            name: "up".into(),
            help: "h".into(),
            kind: ExtraKind::Gauge,
            samples: vec![(vec![("region".into(), "local".into())], 1.0)],
        }];
        let out = text(&r, &no_exemplars, &extra, &cfg, Format::Prometheus004);
        assert!(
            out.contains("http_server_requests_total{operation=\"GET /\",region=\"eu\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("http_client_request_duration_seconds_count{operation=\"GET\",http_request_method=\"GET\",server_address=\"h\",http_response_status_code=\"2xx\",status_class=\"2xx\",region=\"eu\"} 1\n"),
            "{out}"
        );
        // Extra families keep the constant labels the registry drops.
        assert!(
            out.contains("up{region=\"local\",operation=\"x\",le=\"x\",q=\"x\",server_address=\"x\",http_response_status_code=\"x\"} 1\n"),
            "{out}"
        );
    }

    #[test]
    fn a_systems_overflow_stays_in_its_family_and_is_counted() {
        let r = Registry::new(HistogramConfig::default(), 2);
        let c = SpanKind::Client;
        for i in 0..5u64 {
            let host = format!("h{i}");
            let a = attrs(&[("http.request.method", "GET"), ("server.address", &host)]);
            for _ in 0..=i {
                r.record_target(c, "GET", TargetRef::of(c, &a), StatusClass::Http2xx, 1_000);
            }
        }
        let sql = attrs(&[
            ("db.system.name", "sqlite"),
            ("db.operation.name", "SELECT"),
        ]);
        r.record_target(c, "SELECT", TargetRef::of(c, &sql), StatusClass::Ok, 1_000);
        let extra = health_families(&ExpositionConfig::default(), &r, &[]);
        for f in [Format::Prometheus004, Format::OpenMetrics100] {
            let out = text(&r, &no_exemplars, &extra, &ExpositionConfig::default(), f);
            assert_eq!(
                lines(&out, "http_client_request_duration_seconds_count"),
                [
                    "http_client_request_duration_seconds_count{operation=\"(overflow)\",http_response_status_code=\"2xx\",status_class=\"2xx\"} 12",
                    "http_client_request_duration_seconds_count{operation=\"GET\",http_request_method=\"GET\",server_address=\"h0\",http_response_status_code=\"2xx\",status_class=\"2xx\"} 1",
                    "http_client_request_duration_seconds_count{operation=\"GET\",http_request_method=\"GET\",server_address=\"h1\",http_response_status_code=\"2xx\",status_class=\"2xx\"} 2",
                ]
            );
            assert_eq!(
                lines(&out, "db_client_operation_duration_seconds_count"),
                ["db_client_operation_duration_seconds_count{operation=\"(overflow)\",status_class=\"ok\"} 1"]
            );
            assert_eq!(
                lines(&out, "pulsetrace_registry_overflowed_total"),
                ["pulsetrace_registry_overflowed_total 13"]
            );
            assert_eq!(
                lines(&out, "pulsetrace_registry_keys"),
                ["pulsetrace_registry_keys 2"]
            );
        }
    }

    #[test]
    fn target_values_are_bounded_label_values() {
        let r = Registry::new(HistogramConfig::default(), 10);
        let long = format!("{}.example.com", "a".repeat(1_000));
        let a = attrs(&[("http.request.method", "GET"), ("server.address", &long)]);
        let c = SpanKind::Client;
        r.record_target(c, "GET", TargetRef::of(c, &a), StatusClass::Http2xx, 1_000);
        let out = text(
            &r,
            &no_exemplars,
            &[],
            &ExpositionConfig::default(),
            Format::Prometheus004,
        );
        let short = "a".repeat(crate::target::MAX_VALUE_BYTES);
        assert_eq!(
            lines(&out, "http_client_requests_total"),
            [format!("http_client_requests_total{{operation=\"GET\",http_request_method=\"GET\",server_address=\"{short}\"}} 1")]
        );
    }

    #[test]
    fn a_target_in_a_family_without_target_labels_merges_by_label_set() {
        // Only CLIENT/PRODUCER/CONSUMER spans get a target from TargetRef::of;
        // a key recorded with one anyway renders without it, merged.
        let r = Registry::new(HistogramConfig::default(), 10);
        let a = attrs(&[("db.system.name", "redis")]);
        let b = attrs(&[("db.system.name", "sqlite")]);
        for t in [&a, &b] {
            let target = TargetRef::of(SpanKind::Client, t);
            r.record_target(SpanKind::Internal, "job", target, StatusClass::Ok, 1_000);
        }
        r.record(SpanKind::Internal, "job", StatusClass::Ok, 1_000);
        let out = text(
            &r,
            &no_exemplars,
            &[],
            &ExpositionConfig::default(),
            Format::Prometheus004,
        );
        assert_eq!(
            lines(&out, "pulsetrace_internal_operations_total"),
            ["pulsetrace_internal_operations_total{operation=\"job\"} 3"]
        );
    }

    #[test]
    fn bucket_and_quantile_config_is_normalised() {
        let cfg = ExpositionConfig {
            buckets_s: vec![
                1.0,
                f64::NAN,
                0.5,
                -1.0,
                0.0,
                f64::INFINITY,
                0.5,
                0.5000000000001,
            ],
            quantiles: vec![0.99, 2.0, -0.1, f64::NAN, 0.5, 0.5],
            ..ExpositionConfig::default()
        };
        assert_eq!(cfg.bounds(), vec![(0.5, 500_000_000), (1.0, 1_000_000_000)]);
        assert_eq!(cfg.bucket_bounds_ns(), vec![500_000_000, 1_000_000_000]);
        assert_eq!(cfg.quantiles_used(), vec![0.5, 0.99]);
        let r = Registry::new(HistogramConfig::default(), 10);
        r.record(SpanKind::Server, "GET /", StatusClass::Http2xx, 1_000);
        let out = text(&r, &no_exemplars, &[], &cfg, Format::Prometheus004);
        assert_eq!(
            lines(&out, "http_server_request_duration_seconds_bucket").len(),
            3
        );
        assert_eq!(
            lines(&out, "http_server_request_duration_quantile_seconds").len(),
            2
        );
        let none = ExpositionConfig {
            quantiles: Vec::new(),
            ..ExpositionConfig::default()
        };
        let out = text(&r, &no_exemplars, &[], &none, Format::Prometheus004);
        assert!(!out.contains("quantile"));
    }

    #[test]
    fn a_constant_label_a_sample_also_sets_makes_one_series() {
        // Found by the property test: `{}` and `{env="p"}` are the same series
        // once the constant label env="p" is added to the first.
        let r = Registry::new(HistogramConfig::default(), 10);
        let cfg = ExpositionConfig {
            const_labels: vec![("env".into(), "p".into())],
            ..ExpositionConfig::default()
        };
        let extra = vec![ExtraFamily {
            name: "g".into(),
            help: "h".into(),
            kind: ExtraKind::Gauge,
            samples: vec![
                (vec![], 1.0),
                (vec![("env".into(), "p".into())], 2.0),
                (vec![("env".into(), "q".into())], 3.0),
            ],
        }];
        let out = text(&r, &no_exemplars, &extra, &cfg, Format::Prometheus004);
        assert_eq!(lines(&out, "g"), ["g{env=\"p\"} 2", "g{env=\"q\"} 3"]);
    }

    #[test]
    fn empty_registry_renders_only_extras_and_eof() {
        let r = Registry::new(HistogramConfig::default(), 10);
        let cfg = ExpositionConfig::default();
        assert_eq!(
            text(&r, &no_exemplars, &[], &cfg, Format::Prometheus004),
            ""
        );
        assert_eq!(
            text(&r, &no_exemplars, &[], &cfg, Format::OpenMetrics100),
            "# EOF\n"
        );
    }

    #[test]
    fn renders_are_stable_and_append() {
        let (r, cfg, extra) = golden_setup();
        let mut out = String::from("prefix\n");
        render(
            &r,
            &golden_exemplars,
            &extra,
            &cfg,
            Format::OpenMetrics100,
            &mut out,
        );
        assert_eq!(out, format!("prefix\n{GOLDEN_OPENMETRICS}"));
        r.record(SpanKind::Server, "A /first", StatusClass::Http2xx, 1);
        let again = text(&r, &golden_exemplars, &extra, &cfg, Format::OpenMetrics100);
        let again2 = text(&r, &golden_exemplars, &extra, &cfg, Format::OpenMetrics100);
        assert_eq!(again, again2);
        let first = lines(&again, "http_server_requests_total");
        assert!(first[0].contains("A /first"), "{first:?}");
    }

    #[test]
    fn merged_quantiles_equal_value_at_quantile_of_the_merge() {
        let cfg = HistogramConfig::default();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let qs = [0.0, 0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0];
        for round in 0..50 {
            let hs: Vec<crate::histogram::Histogram> = (0..1 + round % 4)
                .map(|_| crate::histogram::Histogram::new(cfg))
                .collect();
            for (i, h) in hs.iter().enumerate() {
                for _ in 0..(round * 7 + i * 13) % 40 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    h.record(x % (1u64 << (10 + x % 30)));
                }
            }
            let snaps: Vec<Snapshot> = hs.iter().map(|h| h.snapshot()).collect();
            let mut merged = Snapshot::empty(cfg);
            for s in &snaps {
                merged.merge(s).unwrap();
            }
            let mut got = Vec::new();
            let mut buf = Vec::new();
            let dists: Vec<Dist> = snaps.iter().map(|s| Dist::read(s, &mut buf)).collect();
            merged_quantiles(&dists, &buf, &qs, &mut got);
            let want: Vec<Option<u64>> = qs
                .iter()
                .map(|&q| (merged.count() > 0).then(|| merged.value_at_quantile(q)))
                .collect();
            assert_eq!(got, want, "round {round}");
        }
    }
}
