//! The tail sampler: decides whether a whole (local) trace is kept once it is
//! complete. Policies are combined with OR (errors, fixed slow threshold,
//! adaptive quantile, attribute match, consistent probability), then the
//! global rate limit caps how many kept traces per second leave.
//!
//! Runs on the thread that ends a trace's local root. The adaptive policy
//! reads thresholds computed from the live histograms by the worker thread.

use crate::registry::Registry;
use crate::span::{SpanKind, SpanRecord};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// An attribute rule: keep a trace when one of its spans has `key` (and, if
/// given, a value equal to `value`).
#[derive(Clone, Debug, PartialEq)]
pub struct AttributeRule {
    pub key: String,
    pub value: Option<String>,
}

/// Sampler parameters. Built once from the environment by the Python side.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Keep every trace with an error span.
    pub keep_errors: bool,
    /// Keep traces whose local root lasted at least this long (0: off).
    pub slow_threshold_ns: u64,
    /// Keep traces whose root is slower than this quantile of its own
    /// operation's live histogram (e.g. 0.99; 0: off).
    pub adaptive_quantile: f64,
    /// The adaptive policy waits for this many samples of an operation.
    pub adaptive_min_count: u64,
    pub attribute_rules: Vec<AttributeRule>,
    /// Probability of keeping a trace no other policy keeps, decided on the
    /// trace id so every service decides the same.
    pub probability: f64,
    /// Kept traces per second (0: no limit).
    pub rate_limit: f64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            keep_errors: true,
            slow_threshold_ns: 0,
            adaptive_quantile: 0.99,
            adaptive_min_count: 100,
            attribute_rules: Vec::new(),
            probability: 1.0,
            rate_limit: 0.0,
        }
    }
}

/// Why a trace was kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeepReason {
    Error,
    Slow,
    Adaptive,
    Attribute,
    Probabilistic,
}

/// Why a trace was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    SampledOut,
    RateLimited,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep(KeepReason),
    Drop(DropReason),
}

impl Decision {
    pub fn is_keep(self) -> bool {
        matches!(self, Decision::Keep(_))
    }
}

/// Consistent probabilistic decision on the trace id: the lower 56 bits of a
/// W3C trace id are random, so comparing them with `probability * 2^56` gives
/// every service that applies the same probability the same answer.
pub fn probabilistic_keep(trace_id: u128, probability: f64) -> bool {
    if probability >= 1.0 {
        return true;
    }
    if probability <= 0.0 || probability.is_nan() {
        return false;
    }
    const RANGE: f64 = (1u64 << 56) as f64;
    let r = (trace_id as u64) & ((1u64 << 56) - 1);
    (r as f64) < probability * RANGE
}

/// Token bucket, refilled by elapsed monotonic time.
#[derive(Debug)]
struct RateLimiter {
    rate: f64,
    tokens: f64,
    last_ns: u64,
}

impl RateLimiter {
    fn new(rate: f64) -> Self {
        RateLimiter {
            rate,
            tokens: rate.max(1.0),
            last_ns: 0,
        }
    }

    fn try_take(&mut self, now_ns: u64) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        if self.last_ns != 0 {
            let dt = now_ns.saturating_sub(self.last_ns) as f64 / 1e9;
            self.tokens = (self.tokens + dt * self.rate).min(self.rate.max(1.0));
        }
        self.last_ns = now_ns;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The sampler: shared by every thread that ends a local root. Its state is
/// the rate limiter (a mutex taken only when a rate limit is set and a trace
/// is kept) and the adaptive thresholds, read lock-free and refreshed from
/// the histograms off the request path ([`TailSampler::refresh_thresholds`]).
pub struct TailSampler {
    cfg: SamplerConfig,
    limiter: Mutex<RateLimiter>,
    thresholds: ArcSwap<Thresholds>,
    /// Whether any threshold is known (skips the lookup until then).
    has_thresholds: AtomicBool,
}

type Thresholds =
    HashMap<Arc<str>, [u64; SpanKind::ALL.len()], BuildHasherDefault<crate::registry::NameHasher>>;

impl TailSampler {
    pub fn new(cfg: SamplerConfig) -> Self {
        TailSampler {
            limiter: Mutex::new(RateLimiter::new(cfg.rate_limit)),
            cfg,
            thresholds: ArcSwap::from_pointee(Thresholds::default()),
            has_thresholds: AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Recompute every operation's adaptive threshold (its live quantile)
    /// from the registry. Runs on the worker thread (and on flush).
    pub fn refresh_thresholds(&self, registry: &Registry) {
        if self.cfg.adaptive_quantile <= 0.0 {
            return;
        }
        let mut next = Thresholds::default();
        for (kind, name) in registry.operations() {
            if let Some((snap, _)) = registry.merged(kind, &name) {
                if snap.count() >= self.cfg.adaptive_min_count {
                    let entry = next.entry(name).or_insert([0; SpanKind::ALL.len()]);
                    entry[kind as usize] = snap.value_at_quantile(self.cfg.adaptive_quantile);
                }
            }
        }
        self.has_thresholds
            .store(!next.is_empty(), Ordering::Relaxed);
        self.thresholds.store(Arc::new(next));
    }

    /// The adaptive threshold of an operation, if known.
    pub fn adaptive_threshold(&self, kind: SpanKind, name: &str) -> Option<u64> {
        if !self.has_thresholds.load(Ordering::Relaxed) {
            return None;
        }
        let t = self
            .thresholds
            .load()
            .get(name)
            .map(|a| a[kind as usize])
            .unwrap_or(0);
        (t > 0).then_some(t)
    }

    /// Decide on a trace from its spans (the local root among them if it
    /// ended here). `now_ns` is the monotonic clock, for the rate limit.
    pub fn decide(&self, spans: &[SpanRecord], now_ns: u64) -> Decision {
        match self.policy(spans) {
            Some(r) => {
                if self.cfg.rate_limit <= 0.0 || self.limiter.lock().try_take(now_ns) {
                    Decision::Keep(r)
                } else {
                    Decision::Drop(DropReason::RateLimited)
                }
            }
            None => Decision::Drop(DropReason::SampledOut),
        }
    }

    fn policy(&self, spans: &[SpanRecord]) -> Option<KeepReason> {
        if spans.is_empty() {
            return None;
        }
        if self.cfg.keep_errors && spans.iter().any(SpanRecord::is_error) {
            return Some(KeepReason::Error);
        }
        let root = spans.iter().find(|s| s.local_root).unwrap_or_else(|| {
            spans
                .iter()
                .max_by_key(|s| s.duration_ns)
                .unwrap_or(&spans[0])
        });
        if self.cfg.slow_threshold_ns > 0 && root.duration_ns >= self.cfg.slow_threshold_ns {
            return Some(KeepReason::Slow);
        }
        if self.cfg.adaptive_quantile > 0.0 {
            if let Some(t) = self.adaptive_threshold(root.kind, &root.name) {
                if root.duration_ns > t {
                    return Some(KeepReason::Adaptive);
                }
            }
        }
        if !self.cfg.attribute_rules.is_empty()
            && spans.iter().any(|s| {
                self.cfg.attribute_rules.iter().any(|rule| {
                    s.attributes.iter().any(|(k, v)| {
                        **k == *rule.key
                            && rule.value.as_deref().is_none_or(|want| v.matches_str(want))
                    })
                })
            })
        {
            return Some(KeepReason::Attribute);
        }
        if probabilistic_keep(root.trace_id, self.cfg.probability) {
            return Some(KeepReason::Probabilistic);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::HistogramConfig;
    use crate::span::{AttrValue, StatusCode};

    fn span(trace: u128, id: u64, parent: u64, name: &str, dur: u64) -> SpanRecord {
        let mut s = SpanRecord::new(trace, id, parent, name);
        s.duration_ns = dur;
        s
    }

    fn registry() -> Registry {
        Registry::new(HistogramConfig::default(), 100)
    }

    fn cfg(probability: f64) -> SamplerConfig {
        SamplerConfig {
            probability,
            adaptive_quantile: 0.0,
            ..SamplerConfig::default()
        }
    }

    #[test]
    fn probabilistic_is_consistent_and_converges() {
        let mut kept = 0;
        let mut x: u128 = 0x9e3779b97f4a7c15f39cc0605cedc834;
        for _ in 0..100_000 {
            x = x
                .wrapping_mul(0x2545F4914F6CDD1D_u128 | 1)
                .wrapping_add(0x1234567);
            let id = x ^ (x >> 61);
            let a = probabilistic_keep(id, 0.25);
            assert_eq!(a, probabilistic_keep(id, 0.25));
            if a {
                kept += 1;
            }
        }
        let rate = kept as f64 / 100_000.0;
        assert!((rate - 0.25).abs() < 0.01, "rate {rate}");
        assert!(probabilistic_keep(1, 1.0));
        assert!(!probabilistic_keep(u128::MAX, 0.0));
        // A higher probability keeps everything a lower one keeps.
        assert!(probabilistic_keep(5, 0.1) <= probabilistic_keep(5, 0.5));
    }

    #[test]
    fn errors_are_kept_even_at_probability_zero() {
        let s = TailSampler::new(cfg(0.0));
        let mut child = span(1, 2, 1, "child", 10);
        child.status = StatusCode::Error;
        let spans = vec![span(1, 1, 0, "root", 100), child];
        assert_eq!(s.decide(&spans, 1), Decision::Keep(KeepReason::Error));
        let ok = vec![span(2, 1, 0, "root", 100)];
        assert_eq!(s.decide(&ok, 1), Decision::Drop(DropReason::SampledOut));
    }

    #[test]
    fn http_5xx_counts_as_error_but_4xx_does_not() {
        let s = TailSampler::new(cfg(0.0));
        let mut a = span(1, 1, 0, "GET /", 10);
        a.http_status = 503;
        assert!(s.decide(&[a], 1).is_keep());
        let mut b = span(2, 1, 0, "GET /", 10);
        b.http_status = 404;
        assert!(!s.decide(&[b], 1).is_keep());
    }

    #[test]
    fn slow_threshold_applies_to_the_local_root() {
        let s = TailSampler::new(SamplerConfig {
            slow_threshold_ns: 1_000,
            ..cfg(0.0)
        });
        assert_eq!(
            s.decide(&[span(1, 1, 0, "a", 1_000)], 1),
            Decision::Keep(KeepReason::Slow)
        );
        assert!(!s.decide(&[span(2, 1, 0, "a", 999)], 1).is_keep());
    }

    #[test]
    fn adaptive_keeps_what_is_slower_than_the_live_quantile() {
        let r = registry();
        for i in 0..1000u64 {
            r.record(
                SpanKind::Internal,
                "op",
                crate::span::StatusClass::Ok,
                1_000 + i,
            );
        }
        let s = TailSampler::new(SamplerConfig {
            adaptive_quantile: 0.99,
            adaptive_min_count: 100,
            ..cfg(0.0)
        });
        // Nothing is known before the thresholds are computed.
        assert!(!s.decide(&[span(9, 1, 0, "op", 5_000)], 1).is_keep());
        s.refresh_thresholds(&r);
        assert_eq!(
            s.decide(&[span(1, 1, 0, "op", 5_000)], 1),
            Decision::Keep(KeepReason::Adaptive)
        );
        assert!(!s.decide(&[span(2, 1, 0, "op", 1_500)], 1).is_keep());
        // An operation without enough samples is not judged adaptively.
        assert!(!s.decide(&[span(3, 1, 0, "new", 1_000_000)], 1).is_keep());
    }

    #[test]
    fn attribute_rules_match_key_and_value() {
        let s = TailSampler::new(SamplerConfig {
            attribute_rules: vec![
                AttributeRule {
                    key: "tenant".into(),
                    value: Some("vip".into()),
                },
                AttributeRule {
                    key: "debug".into(),
                    value: None,
                },
            ],
            ..cfg(0.0)
        });
        let mut a = span(1, 1, 0, "a", 1);
        a.attributes
            .push(("tenant".into(), AttrValue::Str("vip".into())));
        assert_eq!(s.decide(&[a], 1), Decision::Keep(KeepReason::Attribute));
        let mut b = span(2, 1, 0, "a", 1);
        b.attributes
            .push(("tenant".into(), AttrValue::Str("free".into())));
        assert!(!s.decide(&[b], 1).is_keep());
        let mut c = span(3, 1, 0, "a", 1);
        c.attributes.push(("debug".into(), AttrValue::Bool(false)));
        assert!(s.decide(&[c], 1).is_keep());
    }

    #[test]
    fn rate_limit_caps_kept_traces_per_second() {
        let s = TailSampler::new(SamplerConfig {
            rate_limit: 10.0,
            ..cfg(1.0)
        });
        let t0 = 1_000_000_000u64;
        let kept = (0..100)
            .filter(|i| {
                s.decide(&[span(*i as u128 + 1, 1, 0, "a", 1)], t0)
                    .is_keep()
            })
            .count();
        assert_eq!(kept, 10);
        assert_eq!(
            s.decide(&[span(500, 1, 0, "a", 1)], t0),
            Decision::Drop(DropReason::RateLimited)
        );
        // Half a second later, five more tokens.
        let kept = (0..100)
            .filter(|i| {
                s.decide(&[span(*i as u128 + 1000, 1, 0, "a", 1)], t0 + 500_000_000)
                    .is_keep()
            })
            .count();
        assert_eq!(kept, 5);
    }
}
