//! Head sampling (OpenTelemetry's `OTEL_TRACES_SAMPLER`): decided when a
//! span starts, before the tail sampler. A span it rejects is not traced
//! (trace flags without "sampled", propagated downstream) but still feeds
//! the latency histograms.
//!
//! The ratio samplers are OpenTelemetry's `TraceIdRatioBased` with the
//! consistent probability rule of [`crate::probability`] (keep when the
//! randomness is at least the threshold, the tail sampler's rule too), and
//! write the threshold they applied into the tracestate they propagate
//! (`ot=th:<T>`). Parent-based samplers follow a parent's sampled flag and
//! keep its threshold, erasing one the parent's randomness contradicts.
//! Roots get the W3C random flag: their trace ids are random.
//!
//! O(1) and allocation-free except when a tracestate changes; the binding
//! calls it for every span it starts.

use crate::probability::{
    randomness, threshold_of, with_threshold, without_threshold, Source, Threshold, FLAG_RANDOM,
    FLAG_SAMPLED,
};

/// A configured head sampler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadSampler {
    /// Follow a parent's sampled flag when there is a parent.
    parent_based: bool,
    /// The root (or independent) decision's threshold; `None` keeps nothing.
    threshold: Option<Threshold>,
    /// A ratio sampler: it records its threshold in the tracestate.
    ratio: bool,
}

/// What the head sampler decided for a new span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadDecision {
    /// The span's W3C trace flags.
    pub flags: u8,
    /// The span's tracestate when it is not the parent's (a root's is
    /// empty when this is `None`).
    pub trace_state: Option<String>,
    /// The decision presumed a trace id random that was not flagged random
    /// and had no `ot=rv` (the caller counts it).
    pub randomness_presumed: bool,
}

/// The parent of a new span, as the head sampler sees it.
#[derive(Clone, Copy, Debug)]
pub struct Parent<'a> {
    pub trace_id: u128,
    pub flags: u8,
    pub trace_state: &'a str,
    /// A context from elsewhere (an incoming `traceparent`, or one the
    /// application built), whose threshold is checked against its
    /// randomness. A span started here was checked when it started.
    pub foreign: bool,
}

impl HeadSampler {
    /// The sampler named by `OTEL_TRACES_SAMPLER` (`ratio` is
    /// `OTEL_TRACES_SAMPLER_ARG`, for the ratio samplers).
    pub fn parse(name: &str, ratio: f64) -> Result<HeadSampler, String> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(format!("ratio must be within [0, 1], not {ratio}"));
        }
        let (parent_based, p, is_ratio) = match name {
            "always_on" => (false, 1.0, false),
            "always_off" => (false, 0.0, false),
            "traceidratio" => (false, ratio, true),
            "parentbased_always_on" => (true, 1.0, false),
            "parentbased_always_off" => (true, 0.0, false),
            "parentbased_traceidratio" => (true, ratio, true),
            other => return Err(format!("unknown sampler {other:?}")),
        };
        Ok(HeadSampler {
            parent_based,
            threshold: Threshold::from_probability(p),
            ratio: is_ratio,
        })
    }

    /// The decision for a root span of the new (random) trace id `trace_id`.
    #[inline]
    pub fn root(&self, trace_id: u128) -> HeadDecision {
        let sampled = match self.threshold {
            None => false,
            Some(Threshold::ALWAYS) => true,
            Some(t) => t.keeps(randomness(trace_id, FLAG_RANDOM, "").value),
        };
        let trace_state = match self.threshold {
            Some(t) if sampled && self.ratio => Some(with_threshold("", t)),
            _ => None,
        };
        HeadDecision {
            flags: FLAG_RANDOM | u8::from(sampled),
            trace_state,
            randomness_presumed: false,
        }
    }

    /// The decision for a child of `parent`.
    #[inline]
    pub fn child(&self, parent: Parent<'_>) -> HeadDecision {
        if self.parent_based {
            return HeadDecision {
                flags: parent.flags,
                trace_state: if parent.foreign && !parent.trace_state.is_empty() {
                    checked_parent_state(parent)
                } else {
                    None
                },
                randomness_presumed: false,
            };
        }
        self.independent(parent)
    }

    /// `always_on`, `always_off` and `traceidratio` below a parent: the
    /// sampler's own decision, whatever the parent's.
    fn independent(&self, parent: Parent<'_>) -> HeadDecision {
        let random = parent.flags & FLAG_RANDOM;
        let Some(t) = self.threshold else {
            return HeadDecision {
                flags: random,
                trace_state: None,
                randomness_presumed: false,
            };
        };
        let (sampled, presumed) = if t == Threshold::ALWAYS {
            (true, false)
        } else {
            let r = randomness(parent.trace_id, parent.flags, parent.trace_state);
            (t.keeps(r.value), r.source == Source::TraceIdPresumed)
        };
        // Sampled, the span records the threshold this sampler applied: a
        // ratio sampler always, `always_on` when the parent carried one
        // (which is not this span's).
        let trace_state = (sampled && (self.ratio || threshold_of(parent.trace_state).is_some()))
            .then(|| with_threshold(parent.trace_state, t));
        HeadDecision {
            flags: random | u8::from(sampled),
            trace_state,
            randomness_presumed: presumed,
        }
    }
}

/// The parent of a new span, as the binding finds it: a span started in
/// this process, or a context (an incoming `traceparent`, or one the
/// application built).
#[derive(Clone, Copy, Debug)]
pub struct StartParent<'a> {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
    pub trace_state: &'a str,
    /// A context rather than a span started here (see [`Parent::foreign`]).
    pub foreign: bool,
    /// The context came from another process.
    pub remote: bool,
    /// The context is that of a span of this process still open (it went
    /// out on a call that came back here: [`crate::inflight`]): a child of
    /// it is not a local root, though its parent is remote.
    pub open_here: bool,
}

/// Where a new span sits in its trace, with the head sampler's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanStart {
    pub trace_id: u128,
    /// The parent's span id; 0 for a root.
    pub parent_span_id: u64,
    /// The span's W3C trace flags.
    pub flags: u8,
    /// The tracestate the sampler wrote, else the parent's (a root's: empty).
    pub trace_state: String,
    /// The first span of its trace in this process: a root, or the child
    /// of a remote parent.
    pub local_root: bool,
    /// Its parent came from another process.
    pub remote_parent: bool,
    /// See [`HeadDecision::randomness_presumed`] (the caller counts it).
    pub randomness_presumed: bool,
}

impl HeadSampler {
    /// How a span starts: below `parent`, or (`None`) as the root of a new
    /// trace whose id `new_trace_id` draws (called only then).
    #[inline]
    pub fn start(
        &self,
        parent: Option<StartParent<'_>>,
        new_trace_id: impl FnOnce() -> u128,
    ) -> SpanStart {
        match parent {
            Some(p) => {
                let d = self.child(Parent {
                    trace_id: p.trace_id,
                    flags: p.flags,
                    trace_state: p.trace_state,
                    foreign: p.foreign,
                });
                SpanStart {
                    trace_id: p.trace_id,
                    parent_span_id: p.span_id,
                    flags: d.flags,
                    trace_state: d.trace_state.unwrap_or_else(|| p.trace_state.to_owned()),
                    local_root: p.remote && !p.open_here,
                    remote_parent: p.remote,
                    randomness_presumed: d.randomness_presumed,
                }
            }
            None => {
                let trace_id = new_trace_id();
                let d = self.root(trace_id);
                SpanStart {
                    trace_id,
                    parent_span_id: 0,
                    flags: d.flags,
                    trace_state: d.trace_state.unwrap_or_default(),
                    local_root: true,
                    remote_parent: false,
                    randomness_presumed: d.randomness_presumed,
                }
            }
        }
    }
}

/// A sampled foreign parent's tracestate with a threshold its randomness
/// contradicts (`R < th`) erased; `None` when it stays as it is.
#[cold]
fn checked_parent_state(parent: Parent<'_>) -> Option<String> {
    if parent.flags & FLAG_SAMPLED == 0 {
        return None;
    }
    let t = threshold_of(parent.trace_state)?;
    let r = randomness(parent.trace_id, parent.flags, parent.trace_state).value;
    if t.keeps(r) {
        return None;
    }
    without_threshold(parent.trace_state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(name: &str, ratio: f64) -> HeadSampler {
        HeadSampler::parse(name, ratio).unwrap()
    }

    fn parent(trace_id: u128, flags: u8, trace_state: &str) -> Parent<'_> {
        Parent {
            trace_id,
            flags,
            trace_state,
            foreign: true,
        }
    }

    #[test]
    fn names_and_ratios_are_checked() {
        assert!(HeadSampler::parse("traceidratio", 0.5).is_ok());
        assert_eq!(
            HeadSampler::parse("sometimes", 0.5),
            Err("unknown sampler \"sometimes\"".into())
        );
        assert!(HeadSampler::parse("traceidratio", 1.5).is_err());
        assert!(HeadSampler::parse("traceidratio", f64::NAN).is_err());
    }

    #[test]
    fn a_ratio_sampled_root_records_its_threshold() {
        let h = head("parentbased_traceidratio", 0.25);
        let kept = h.root(0x4bf92f3577b34da6_00c0000000000000);
        assert_eq!(kept.flags, FLAG_RANDOM | FLAG_SAMPLED);
        assert_eq!(kept.trace_state.as_deref(), Some("ot=th:c"));
        let dropped = h.root(0x4bf92f3577b34da6_00bfffffffffffff);
        assert_eq!(dropped.flags, FLAG_RANDOM);
        assert_eq!(dropped.trace_state, None);
        // The default sampler adds nothing to the tracestate.
        let on = head("parentbased_always_on", 1.0).root(1);
        assert_eq!((on.flags, on.trace_state), (0x03, None));
        assert_eq!(head("always_off", 1.0).root(u128::MAX).flags, FLAG_RANDOM);
        // Ratio 1: sampled, with th:0.
        let all = head("traceidratio", 1.0).root(1);
        assert_eq!(
            (all.flags, all.trace_state.as_deref()),
            (0x03, Some("ot=th:0"))
        );
    }

    #[test]
    fn a_parent_based_child_keeps_the_parents_decision_and_threshold() {
        let h = head("parentbased_traceidratio", 0.25);
        let state = "ot=th:8;rv:c0000000000000,k=v";
        let d = h.child(parent(1, 0x01, state));
        assert_eq!((d.flags, d.trace_state), (0x01, None));
        // The parent's randomness contradicts its threshold: erased.
        let d = h.child(parent(1, 0x01, "k=v,ot=th:8;rv:10000000000000"));
        assert_eq!(d.trace_state.as_deref(), Some("ot=rv:10000000000000,k=v"));
        // Not sampled: nothing to check, nothing changed.
        let d = h.child(parent(1, 0x00, "ot=th:8;rv:10000000000000"));
        assert_eq!((d.flags, d.trace_state), (0x00, None));
        // A local parent was checked when it started.
        let mut local = parent(1, 0x01, "ot=th:8;rv:10000000000000");
        local.foreign = false;
        assert_eq!(h.child(local).trace_state, None);
    }

    #[test]
    fn an_independent_ratio_sampler_decides_on_the_parents_randomness() {
        let h = head("traceidratio", 0.5);
        // rv overrides the trace id; the sampler's threshold replaces the
        // parent's; other entries and sub-keys stay.
        let d = h.child(parent(1, 0x00, "k=v,ot=th:c;rv:90000000000000"));
        assert_eq!(d.flags, FLAG_SAMPLED);
        assert_eq!(
            d.trace_state.as_deref(),
            Some("ot=th:8;rv:90000000000000,k=v")
        );
        assert!(!d.randomness_presumed);
        let d = h.child(parent(0xffffffffffffff, 0x01, "ot=rv:10000000000000"));
        assert_eq!((d.flags, d.trace_state), (0x00, None));
        // The random flag goes along; its absence is reported.
        let d = h.child(parent(0x90000000000000, 0x03, ""));
        assert_eq!(d.flags, 0x03);
        assert!(!d.randomness_presumed);
        let d = h.child(parent(0x90000000000000, 0x01, ""));
        assert_eq!(d.flags, 0x01);
        assert!(d.randomness_presumed);
        // always_on below a parent with a threshold records its own (th:0).
        let d = head("always_on", 1.0).child(parent(1, 0x00, "ot=th:8"));
        assert_eq!((d.flags, d.trace_state.as_deref()), (0x01, Some("ot=th:0")));
        let d = head("always_on", 1.0).child(parent(1, 0x00, "k=v"));
        assert_eq!((d.flags, d.trace_state), (0x01, None));
    }

    #[test]
    fn a_span_start_inherits_the_parents_tracestate_unless_the_sampler_wrote_one() {
        let on = head("parentbased_always_on", 1.0);
        let local = StartParent {
            trace_id: 7,
            span_id: 9,
            flags: 0x03,
            trace_state: "k=v",
            foreign: false,
            remote: false,
            open_here: false,
        };
        let s = on.start(Some(local), || unreachable!("a child draws no trace id"));
        assert_eq!((s.trace_id, s.parent_span_id, s.flags), (7, 9, 0x03));
        assert_eq!(s.trace_state, "k=v");
        assert!(!s.local_root && !s.remote_parent);
        // A remote parent: this span is its trace's first in the process.
        let remote = StartParent {
            foreign: true,
            remote: true,
            ..local
        };
        let s = on.start(Some(remote), || unreachable!());
        assert!(s.local_root && s.remote_parent);
        // A remote parent that is a span of this process still open (a call
        // that came back here): its parent is remote, but it is no local root.
        let back = StartParent {
            open_here: true,
            ..remote
        };
        let s = on.start(Some(back), || unreachable!());
        assert!(!s.local_root && s.remote_parent);
        // The sampler's own tracestate replaces the parent's.
        let ratio = head("traceidratio", 0.5);
        let s = ratio.start(
            Some(StartParent {
                flags: 0x00,
                trace_state: "k=v,ot=rv:90000000000000",
                ..local
            }),
            || unreachable!(),
        );
        assert_eq!(s.trace_state, "ot=rv:90000000000000;th:8,k=v");
        // A root draws its trace id; the default sampler writes no tracestate.
        let s = on.start(None, || 0x4bf9);
        assert_eq!((s.trace_id, s.parent_span_id, s.flags), (0x4bf9, 0, 0x03));
        assert_eq!(s.trace_state, "");
        assert!(s.local_root && !s.remote_parent);
    }
}
