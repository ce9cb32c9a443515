//! Families the caller adds (process metrics, pulsetrace's health counters):
//! their type, pulsetrace's health families, and the sanitising and merging
//! of their samples before rendering.

use super::config::ExpositionConfig;
use super::names::{sanitize_label_name, sanitize_metric_name};
use crate::registry::Registry;

/// Type of an [`ExtraFamily`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExtraKind {
    Counter,
    Gauge,
    /// A Prometheus histogram (an application's custom histogram). Each
    /// sample with an `le` label is a cumulative bucket count (`le` a
    /// number, or `+Inf`); the sample of the same labels without `le` is
    /// the series' sum. Rendered as `_bucket` lines in ascending `le`
    /// (with `+Inf`, the series' count), `_sum` and `_count`.
    Histogram,
}

impl ExtraKind {
    /// The kind named `"counter"`, `"gauge"` or `"histogram"`; `None` for
    /// anything else.
    pub fn parse(kind: &str) -> Option<ExtraKind> {
        match kind {
            "counter" => Some(ExtraKind::Counter),
            "gauge" => Some(ExtraKind::Gauge),
            "histogram" => Some(ExtraKind::Histogram),
            _ => None,
        }
    }

    /// The kind as the `# TYPE` line names it.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtraKind::Counter => "counter",
            ExtraKind::Gauge => "gauge",
            ExtraKind::Histogram => "histogram",
        }
    }
}

/// The pipeline's queues as gauge families: traces waiting for their
/// tail-sampling decision, spans of kept traces waiting for an exporter, and
/// the export queue's bound.
pub fn queue_families(
    open_traces: usize,
    export_queue_spans: usize,
    export_queue_max_spans: usize,
) -> Vec<ExtraFamily> {
    let gauge = |name: &str, help: &str, v: usize| ExtraFamily {
        name: format!("pulsetrace_{name}"),
        help: help.to_owned(),
        kind: ExtraKind::Gauge,
        samples: vec![(Vec::new(), v as f64)],
    };
    vec![
        gauge(
            "open_traces",
            "traces waiting for their tail-sampling decision",
            open_traces,
        ),
        gauge(
            "export_queue_spans",
            "spans of kept traces waiting for an exporter",
            export_queue_spans,
        ),
        gauge(
            "export_queue_max_spans",
            "bound of the export queue, in spans",
            export_queue_max_spans,
        ),
    ]
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

/// An extra family after sanitising and merging.
pub(super) struct PreparedExtra<'a> {
    /// Family name (counters without `_total`).
    pub(super) name: String,
    /// `None`: the name stands in.
    pub(super) help: Option<&'a str>,
    pub(super) kind: ExtraKind,
    /// Sorted by labels; a sample's own labels sorted by name, then the
    /// constant labels it does not set.
    pub(super) samples: Vec<(Vec<(String, &'a str)>, f64)>,
}

pub(super) fn prepare_extra<'a>(
    f: &'a ExtraFamily,
    consts: &[(String, &'a str)],
) -> PreparedExtra<'a> {
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
                    ExtraKind::Counter | ExtraKind::Histogram => *acc + v,
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
