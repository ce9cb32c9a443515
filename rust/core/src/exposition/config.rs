//! What to expose and how to name it: bucket bounds, quantiles, the
//! namespace of pulsetrace's own families and constant labels.

use super::names::sanitize_metric_name;

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

    pub(super) fn quantiles_used(&self) -> Vec<f64> {
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

    pub(super) fn prefix(&self) -> String {
        if self.namespace.is_empty() {
            String::new()
        } else {
            let mut p = sanitize_metric_name(&self.namespace);
            p.push('_');
            p
        }
    }
}
