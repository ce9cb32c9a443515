//! The tail sampler: decides whether a whole (local) trace is kept once it is
//! complete. Policies are combined with OR (errors, fixed slow threshold,
//! adaptive quantile, attribute match, consistent probability), then the
//! global rate limit caps how many kept traces per second leave.
//!
//! The probabilistic policy is OpenTelemetry's consistent probability
//! sampling ([`crate::probability`]): keep when the trace's randomness `R`
//! is at least the rejection threshold `T` of the configured probability.
//! As a downstream sampler it records what it did in each kept span's
//! tracestate ([`TailSampler::stamp`]): `ot=th:<T>` (or the larger threshold
//! an upstream sampler already applied) on a trace the rule selects, and no
//! `th` on a trace only another policy kept, whose probability is unknown.
//! At probability 1 it changes nothing.
//!
//! Runs on the thread that ends a trace's local root. The adaptive policy
//! reads thresholds computed from the live histograms by the worker thread.

use crate::probability::{randomness, threshold_of, with_threshold, without_threshold};
use crate::probability::{Source, Threshold};
use crate::registry::Registry;
use crate::span::{AttrValue, SpanKind, SpanRecord};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// trace's randomness (OpenTelemetry's threshold rule) so every service
    /// and collector applying the same probability decides the same.
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
    /// A record at ERROR or above was logged inside one of its spans (a span
    /// event [`ERROR_LOG_EVENT`] with a severity number of at least
    /// [`ERROR_SEVERITY`]): the log line's trace is kept with it.
    ErrorLog,
    Slow,
    Adaptive,
    Attribute,
    Probabilistic,
}

/// The name of the span event pulsetrace's log handler adds to the current
/// span for a record it writes inside it.
pub const ERROR_LOG_EVENT: &str = "log";
/// The event attribute holding the record's OpenTelemetry severity number.
pub const SEVERITY_NUMBER: &str = "log.severity_number";
/// OpenTelemetry's severity number of ERROR (17 to 20; FATAL is 21 to 24).
pub const ERROR_SEVERITY: i64 = 17;

/// Whether `span` has an event for a log record at ERROR or above.
fn logged_error(span: &SpanRecord) -> bool {
    span.events.iter().any(|e| {
        e.name == ERROR_LOG_EVENT
            && e.attributes.iter().any(|(k, v)| {
                &**k == SEVERITY_NUMBER && matches!(v, AttrValue::Int(n) if *n >= ERROR_SEVERITY)
            })
    })
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

/// The rate limit on kept traces: a token bucket of `max(rate, 1)` tokens
/// refilled at `rate` per second, held in one atomic (the generic cell rate
/// algorithm: the time at which the bucket would be full again), so that a
/// request thread deciding a trace never waits for another thread.
#[derive(Debug)]
struct RateLimiter {
    /// Nanoseconds per token; 0: no limit.
    interval_ns: u64,
    /// A full bucket, in nanoseconds of tokens.
    capacity_ns: u64,
    /// When the bucket is full again (0: it is full).
    full_at: AtomicU64,
}

impl RateLimiter {
    fn new(rate: f64) -> Self {
        let interval_ns = if rate > 0.0 {
            (1e9 / rate).round().clamp(1.0, 1e18) as u64
        } else {
            0
        };
        RateLimiter {
            interval_ns,
            capacity_ns: (rate.max(1.0) * interval_ns as f64).min(1e18) as u64,
            full_at: AtomicU64::new(0),
        }
    }

    /// Take a token at `now_ns` (monotonic), if there is one.
    fn try_take(&self, now_ns: u64) -> bool {
        if self.interval_ns == 0 {
            return true;
        }
        let mut full_at = self.full_at.load(Ordering::Relaxed);
        loop {
            let next = full_at.max(now_ns).saturating_add(self.interval_ns);
            if next - now_ns > self.capacity_ns {
                return false;
            }
            match self.full_at.compare_exchange_weak(
                full_at,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => full_at = seen,
            }
        }
    }
}

/// The sampler: shared by every thread that ends a local root. Its state is
/// the rate limiter (one atomic: no thread waits for another) and the
/// adaptive thresholds, read lock-free and refreshed from
/// the histograms off the request path ([`TailSampler::refresh_thresholds`]).
pub struct TailSampler {
    cfg: SamplerConfig,
    limiter: RateLimiter,
    thresholds: ArcSwap<Thresholds>,
    /// Whether any threshold is known (skips the lookup until then).
    has_thresholds: AtomicBool,
    /// The probabilistic policy's rejection threshold's value (`NO_THRESHOLD`:
    /// probability 0, the policy keeps nothing); changed at run time by
    /// [`TailSampler::set_probability`].
    threshold: AtomicU64,
    /// The probability in use (`f64` bits).
    probability: AtomicU64,
}

/// `TailSampler::threshold` of a policy that keeps nothing.
const NO_THRESHOLD: u64 = u64::MAX;

fn threshold_bits(p: f64) -> u64 {
    Threshold::from_probability(p).map_or(NO_THRESHOLD, Threshold::value)
}

type Thresholds =
    HashMap<Arc<str>, [u64; SpanKind::ALL.len()], BuildHasherDefault<crate::registry::NameHasher>>;

impl TailSampler {
    pub fn new(cfg: SamplerConfig) -> Self {
        TailSampler {
            limiter: RateLimiter::new(cfg.rate_limit),
            threshold: AtomicU64::new(threshold_bits(cfg.probability)),
            probability: AtomicU64::new(cfg.probability.to_bits()),
            cfg,
            thresholds: ArcSwap::from_pointee(Thresholds::default()),
            has_thresholds: AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// The probabilistic policy's rejection threshold, `None` at probability 0.
    #[inline]
    pub fn threshold(&self) -> Option<Threshold> {
        Threshold::new(self.threshold.load(Ordering::Relaxed))
    }

    /// The probabilistic policy's probability in use.
    pub fn probability(&self) -> f64 {
        f64::from_bits(self.probability.load(Ordering::Relaxed))
    }

    /// Change the probabilistic policy's probability at run time (traces
    /// decided from now on use it; histograms and counters are untouched).
    pub fn set_probability(&self, p: f64) -> Result<(), String> {
        if !(0.0..=1.0).contains(&p) {
            return Err(format!("a sampling probability is within [0, 1], not {p}"));
        }
        self.threshold.store(threshold_bits(p), Ordering::Relaxed);
        self.probability.store(p.to_bits(), Ordering::Relaxed);
        Ok(())
    }

    /// Whether the probabilistic policy selects the trace of `span`: its
    /// randomness (`ot=rv`, else the trace id's right-most 56 bits) is at
    /// least the threshold.
    #[inline]
    pub fn selects(&self, span: &SpanRecord) -> bool {
        match self.threshold() {
            None => false,
            Some(Threshold::ALWAYS) => true,
            Some(t) => {
                t.keeps(randomness(span.trace_id, span.trace_flags, &span.trace_state).value)
            }
        }
    }

    /// Whether deciding on these spans presumes their trace id random: a
    /// probability below 1, a root without the W3C random flag and without
    /// `ot=rv`. The specification then still uses the trace id's bits, and
    /// asks for it to be reported (the pipeline counts it).
    #[inline]
    pub fn presumes_randomness(&self, spans: &[SpanRecord]) -> bool {
        match self.threshold() {
            Some(t) if t != Threshold::ALWAYS => local_root(spans).is_some_and(|root| {
                randomness(root.trace_id, root.trace_flags, &root.trace_state).source
                    == Source::TraceIdPresumed
            }),
            _ => false,
        }
    }

    /// Record in a kept span's tracestate what this stage did, as a
    /// downstream sampler: if the probabilistic policy selects its trace,
    /// `ot=th` becomes the larger of the configured threshold and the one
    /// the span arrived with (a threshold cannot be lowered; one that its
    /// randomness contradicts is replaced); otherwise any `th` is erased
    /// (the trace was kept by another policy, with no known probability).
    /// At probability 1 nothing changes. Runs off the request path.
    #[inline]
    pub fn stamp(&self, span: &mut SpanRecord) {
        if self.threshold() != Some(Threshold::ALWAYS) {
            self.stamp_below_one(span);
        }
    }

    fn stamp_below_one(&self, span: &mut SpanRecord) {
        let selected = match self.threshold() {
            Some(t) => {
                let r = randomness(span.trace_id, span.trace_flags, &span.trace_state).value;
                t.keeps(r).then_some((t, r))
            }
            None => None,
        };
        let Some((t, r)) = selected else {
            if let Some(erased) = without_threshold(&span.trace_state) {
                span.trace_state = erased;
            }
            return;
        };
        let incoming = threshold_of(&span.trace_state);
        let out = match incoming {
            Some(upstream) if upstream.keeps(r) => upstream.max(t),
            _ => t,
        };
        if incoming != Some(out) {
            span.trace_state = with_threshold(&span.trace_state, out);
        }
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
                if self.limiter.try_take(now_ns) {
                    Decision::Keep(r)
                } else {
                    Decision::Drop(DropReason::RateLimited)
                }
            }
            None => Decision::Drop(DropReason::SampledOut),
        }
    }

    fn policy(&self, spans: &[SpanRecord]) -> Option<KeepReason> {
        let root = local_root(spans)?;
        if self.cfg.keep_errors && spans.iter().any(SpanRecord::is_error) {
            return Some(KeepReason::Error);
        }
        if self.cfg.keep_errors && spans.iter().any(logged_error) {
            return Some(KeepReason::ErrorLog);
        }
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
        if self.selects(root) {
            return Some(KeepReason::Probabilistic);
        }
        None
    }
}

/// The span the policies judge a trace by: its local root, else (a trace
/// whose root did not end here) its longest span.
fn local_root(spans: &[SpanRecord]) -> Option<&SpanRecord> {
    spans
        .iter()
        .find(|s| s.local_root)
        .or_else(|| spans.iter().max_by_key(|s| s.duration_ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::HistogramConfig;
    use crate::span::{Event, StatusCode};

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

    /// A root span of trace `id`, W3C random flag set.
    fn root(id: u128) -> SpanRecord {
        let mut s = span(id, 1, 0, "GET /", 10);
        s.trace_flags = 0x03;
        s
    }

    #[test]
    fn probabilistic_is_consistent_and_converges() {
        let s = TailSampler::new(cfg(0.25));
        let mut kept = 0;
        let mut x: u128 = 0x9e3779b97f4a7c15f39cc0605cedc834;
        for _ in 0..100_000 {
            x = x
                .wrapping_mul(0x2545F4914F6CDD1D_u128 | 1)
                .wrapping_add(0x1234567);
            let r = root(x ^ (x >> 61));
            let a = s.selects(&r);
            assert_eq!(a, s.selects(&r));
            if a {
                kept += 1;
            }
        }
        let rate = kept as f64 / 100_000.0;
        assert!((rate - 0.25).abs() < 0.01, "rate {rate}");
        assert!(TailSampler::new(cfg(1.0)).selects(&root(1)));
        assert!(!TailSampler::new(cfg(0.0)).selects(&root(u128::MAX)));
    }

    #[test]
    fn the_probabilistic_policy_keeps_randomness_at_or_above_the_threshold() {
        // p = 0.5: T = 0x80000000000000. Decided on the trace id's right-most
        // 56 bits, whatever the bits above them.
        let s = TailSampler::new(cfg(0.5));
        let keep = |id: u128| s.decide(&[root(id)], 1);
        assert_eq!(
            keep(0x4bf92f3577b34da6_0080000000000000),
            Decision::Keep(KeepReason::Probabilistic)
        );
        assert_eq!(
            keep(0x4bf92f3577b34da6_00ffffffffffffff),
            Decision::Keep(KeepReason::Probabilistic)
        );
        assert_eq!(
            keep(0x4bf92f3577b34da6_ff7fffffffffffff),
            Decision::Drop(DropReason::SampledOut)
        );
        assert_eq!(keep(1), Decision::Drop(DropReason::SampledOut));
        // p = 0.25 keeps a subset of what p = 0.5 keeps.
        let quarter = TailSampler::new(cfg(0.25));
        assert!(quarter.selects(&root(0xc0000000000000)));
        assert!(!quarter.selects(&root(0xbfffffffffffff)));
        assert!(s.selects(&root(0xbfffffffffffff)));
    }

    #[test]
    fn the_probability_changes_at_run_time() {
        let s = TailSampler::new(cfg(1.0));
        let id = 0x4bf92f3577b34da6_0010000000000000;
        assert_eq!(
            s.decide(&[root(id)], 1),
            Decision::Keep(KeepReason::Probabilistic)
        );
        s.set_probability(0.5).unwrap();
        assert_eq!(s.probability(), 0.5);
        assert_eq!(
            s.decide(&[root(id)], 1),
            Decision::Drop(DropReason::SampledOut)
        );
        assert!(s.selects(&root(0x0080000000000000)));
        s.set_probability(0.0).unwrap();
        assert_eq!(s.threshold(), None);
        assert!(!s.selects(&root(0x00ffffffffffffff)));
        assert!(s.set_probability(1.5).is_err() && s.set_probability(f64::NAN).is_err());
        assert_eq!(s.probability(), 0.0);
    }

    #[test]
    fn explicit_randomness_decides_instead_of_the_trace_id() {
        // p = 0.25: T = 0xc0000000000000.
        let s = TailSampler::new(cfg(0.25));
        let mut r = root(0x80000000000000);
        assert!(!s.selects(&r));
        r.trace_state = "vendor=x,ot=rv:e0000000000000".into();
        assert!(s.selects(&r));
        r.trace_id = 0xffffffffffffff;
        r.trace_state = "ot=th:c;rv:12121212121212".into();
        assert!(!s.selects(&r));
    }

    #[test]
    fn a_trace_id_without_the_random_flag_is_presumed_random_and_reported() {
        let s = TailSampler::new(cfg(0.5));
        let mut r = root(0xffffffffffffff);
        assert!(!s.presumes_randomness(std::slice::from_ref(&r)));
        r.trace_flags = 0x01;
        // Still decided on the trace id ...
        assert!(s.selects(&r));
        // ... and reported.
        assert!(s.presumes_randomness(std::slice::from_ref(&r)));
        r.trace_state = "ot=rv:ababababababab".into();
        assert!(!s.presumes_randomness(std::slice::from_ref(&r)));
        // Probability 1 presumes nothing.
        r.trace_state.clear();
        assert!(!TailSampler::new(cfg(1.0)).presumes_randomness(&[r]));
    }

    #[test]
    fn kept_spans_record_the_threshold_the_policy_applied() {
        let half = TailSampler::new(cfg(0.5));
        // Selected: ot=th:8 first, the other vendors' entries after it.
        let mut a = root(0xc0000000000000);
        a.trace_state = "rojo=00f067aa0ba902b7".into();
        half.stamp(&mut a);
        assert_eq!(a.trace_state, "ot=th:8,rojo=00f067aa0ba902b7");
        // Kept by another policy, not selected: a threshold is erased.
        let mut b = root(0x10000000000000);
        b.trace_state = "ot=th:0;rv:10000000000000,k=v".into();
        half.stamp(&mut b);
        assert_eq!(b.trace_state, "ot=rv:10000000000000,k=v");
        // An upstream sampler's larger threshold stays (it cannot be lowered).
        let mut c = root(0xd0000000000000);
        c.trace_state = "ot=th:c".into();
        half.stamp(&mut c);
        assert_eq!(c.trace_state, "ot=th:c");
        // A smaller one is raised to ours.
        c.trace_state = "ot=th:4".into();
        half.stamp(&mut c);
        assert_eq!(c.trace_state, "ot=th:8");
        // One the randomness contradicts (R < th) is replaced.
        let mut d = root(0x90000000000000);
        d.trace_state = "ot=th:f".into();
        half.stamp(&mut d);
        assert_eq!(d.trace_state, "ot=th:8");
        // Probability 1 changes nothing; probability 0 claims no threshold.
        let mut e = root(1);
        e.trace_state = "ot=th:8,k=v".into();
        TailSampler::new(cfg(1.0)).stamp(&mut e);
        assert_eq!(e.trace_state, "ot=th:8,k=v");
        TailSampler::new(cfg(0.0)).stamp(&mut e);
        assert_eq!(e.trace_state, "k=v");
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

    fn logged(severity: i64) -> Event {
        Event {
            name: ERROR_LOG_EVENT.into(),
            time_unix_ns: 1,
            attributes: vec![(SEVERITY_NUMBER.into(), AttrValue::Int(severity))],
        }
    }

    #[test]
    fn an_error_logged_inside_a_span_keeps_its_trace() {
        let s = TailSampler::new(cfg(0.0));
        let mut child = span(1, 2, 1, "child", 10);
        child.events.push(logged(17));
        let spans = vec![span(1, 1, 0, "root", 100), child];
        assert_eq!(s.decide(&spans, 1), Decision::Keep(KeepReason::ErrorLog));
        // A warning does not; nor another event carrying the same attribute.
        let mut warned = span(2, 1, 0, "root", 100);
        warned.events.push(logged(13));
        assert!(!s.decide(&[warned], 1).is_keep());
        let mut other = span(3, 1, 0, "root", 100);
        other.events.push(Event {
            name: "exception".into(),
            ..logged(17)
        });
        assert!(!s.decide(&[other], 1).is_keep());
        // An error span is kept as an error first; keep_errors off keeps neither.
        let mut failed = span(4, 1, 0, "root", 100);
        failed.status = StatusCode::Error;
        failed.events.push(logged(21));
        assert_eq!(s.decide(&[failed], 1), Decision::Keep(KeepReason::Error));
        let off = TailSampler::new(SamplerConfig {
            keep_errors: false,
            ..cfg(0.0)
        });
        let mut root = span(5, 1, 0, "root", 100);
        root.events.push(logged(17));
        assert!(!off.decide(&[root], 1).is_keep());
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
    fn the_rate_limit_holds_under_many_threads_taking_at_once() {
        let limiter = Arc::new(RateLimiter::new(1000.0));
        let t0 = 5_000_000_000u64;
        let taken: usize = (0..8)
            .map(|_| {
                let l = Arc::clone(&limiter);
                std::thread::spawn(move || (0..1000).filter(|_| l.try_take(t0)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        // A full bucket and nothing more, however the threads interleave.
        assert_eq!(taken, 1000);
        // A millisecond later, one token.
        assert!(limiter.try_take(t0 + 1_000_000));
        assert!(!limiter.try_take(t0 + 1_000_000));
        // No limit: every take succeeds.
        assert!((0..10).all(|_| RateLimiter::new(0.0).try_take(t0)));
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
