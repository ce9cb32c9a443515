//! Property tests of consistent probability sampling and the W3C headers it
//! travels in: thresholds round-trip through their `th` encoding and stay
//! close to the probability, a higher probability keeps every trace a lower
//! one keeps, writing `ot=th` keeps a valid tracestate with the other
//! vendors' entries, and untrusted headers never panic.

use proptest::prelude::*;
use pulsetrace_core::probability::{
    ot_get, ot_value, randomness, threshold_of, with_threshold, without_threshold, Threshold,
    FLAG_RANDOM, MAX_ADJUSTED_COUNT,
};
use pulsetrace_core::propagation::{normalize_tracestate, parse_traceparent, tracestate_get};

const MIN_P: f64 = 1.0 / MAX_ADJUSTED_COUNT as f64;

/// Probabilities across the whole range, small ones as likely as large.
fn probability() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-56.0f64..0.0).prop_map(|e| 2f64.powf(e).max(MIN_P)),
        (MIN_P..=1.0f64),
        Just(1.0),
        Just(MIN_P),
    ]
}

/// A valid tracestate member other than `ot`.
fn member() -> impl Strategy<Value = String> {
    prop_oneof![
        9 => ("[a-np-z][a-z0-9_*/-]{0,6}", "[!-+--<>-~]{1,10}"),
        1 => ("[a-np-z][a-z0-9_*/-]{0,6}", "[!-+--<>-~]{100,140}"),
    ]
    .prop_map(|(k, v)| format!("{k}={v}"))
}

/// A valid `ot` value: some of th, rv and an unknown sub-key.
fn ot() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(
        (
            proptest::option::of("[0-9a-f]{1,14}"),
            proptest::option::of("[0-9a-f]{14}"),
            proptest::option::of("[a-z][a-z0-9]{0,4}:[A-Za-z0-9._-]{1,8}"),
        )
            .prop_map(|(th, rv, other)| {
                let mut parts = Vec::new();
                if let Some(rv) = rv {
                    parts.push(format!("rv:{rv}"));
                }
                if let Some(other) =
                    other.filter(|o| !o.starts_with("th:") && !o.starts_with("rv:"))
                {
                    parts.push(other);
                }
                if let Some(th) = th {
                    parts.push(format!("th:{th}"));
                }
                parts.join(";")
            })
            .prop_filter("ot must not be empty", |s| !s.is_empty()),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn thresholds_round_trip_and_stay_close_to_the_probability(p in probability()) {
        let t = Threshold::from_probability(p).expect("in range");
        let th = t.to_string();
        prop_assert!(!th.is_empty() && th.len() <= 14, "{}", th);
        prop_assert!(th == "0" || !th.ends_with('0'), "{}", th);
        prop_assert_eq!(Threshold::parse(&th), Some(t));
        // Four significant hex digits (more for small probabilities): a
        // relative error within 2^-12, or the 2^-56 granularity.
        let err = (t.probability() - p).abs();
        prop_assert!(err <= (p / 4096.0).max(MIN_P / 2.0), "p {} th {} prob {}", p, th, t.probability());
    }

    #[test]
    fn a_higher_probability_keeps_every_trace_a_lower_one_keeps(
        a in probability(), b in probability(), trace_id in any::<u128>(), flags in any::<u8>(),
    ) {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let (tl, th) = (Threshold::from_probability(low).unwrap(), Threshold::from_probability(high).unwrap());
        prop_assert!(tl >= th);
        let r = randomness(trace_id, flags, "").value;
        prop_assert_eq!(r, trace_id as u64 & (MAX_ADJUSTED_COUNT - 1));
        prop_assert!(!tl.keeps(r) || th.keeps(r));
    }

    #[test]
    fn writing_the_threshold_keeps_a_valid_tracestate_and_the_other_entries(
        others in proptest::collection::vec(member(), 0..33),
        ot in ot(),
        p in probability(),
    ) {
        let mut members = others.clone();
        if let Some(ot) = &ot {
            members.insert(members.len() / 2, format!("ot={ot}"));
        }
        let state = members.join(",");
        prop_assume!(normalize_tracestate(&state).is_some());
        let t = Threshold::from_probability(p).unwrap();
        let out = with_threshold(&state, t);
        prop_assert!(normalize_tracestate(&out).is_some(), "{}", out);
        prop_assert!(out.starts_with("ot="), "{}", out);
        prop_assert_eq!(threshold_of(&out), Some(t));
        // rv and the other sub-keys stay.
        let before = ot.as_deref().unwrap_or("");
        let after = ot_value(&out).unwrap();
        for sub in before.split(';').filter(|s| !s.is_empty() && !s.starts_with("th:")) {
            prop_assert!(after.split(';').any(|a| a == sub), "{} lost from {}", sub, after);
        }
        prop_assert_eq!(ot_get(before, "rv"), ot_get(after, "rv"));
        // The other entries stay in their order; some go only when the
        // limits (32 members, 512 characters) require it.
        let kept: Vec<&str> = out.split(',').skip(1).collect();
        let original: Vec<&str> = state.split(',').filter(|m| !m.is_empty() && !m.starts_with("ot=")).collect();
        let mut rest = original.iter();
        let mut removed = Vec::new();
        for m in &kept {
            loop {
                let o = rest.next();
                prop_assert!(o.is_some(), "{} out of order in {}", m, out);
                if o == Some(m) {
                    break;
                }
                removed.push(*o.unwrap());
            }
        }
        removed.extend(rest);
        if !removed.is_empty() {
            prop_assert!(
                kept.len() + 1 == 32 || removed.iter().any(|m| out.len() + m.len() + 1 > 512),
                "{:?} removed from {}", removed, state
            );
        }
        // Erasing the threshold takes th alone.
        let erased = without_threshold(&out).expect("has th");
        prop_assert_eq!(threshold_of(&erased), None);
        prop_assert!(normalize_tracestate(&erased).is_some());
        let erased_rest: Vec<&str> = erased.split(',').filter(|m| !m.is_empty() && !m.starts_with("ot=")).collect();
        prop_assert_eq!(erased_rest, kept);
        prop_assert_eq!(ot_get(tracestate_get(&erased, "ot").unwrap_or(""), "rv"), ot_get(before, "rv"));
    }

    #[test]
    fn explicit_randomness_replaces_the_trace_id(trace_id in any::<u128>(), rv in 0u64..MAX_ADJUSTED_COUNT) {
        let r = randomness(trace_id, FLAG_RANDOM, &format!("a=b,ot=th:8;rv:{rv:014x}"));
        prop_assert_eq!(r.value, rv);
    }

    #[test]
    fn untrusted_headers_never_panic(tp in any::<String>(), ts in any::<String>(), th in any::<String>()) {
        let _ = parse_traceparent(&tp);
        let _ = normalize_tracestate(&ts);
        let _ = Threshold::parse(&th);
        let _ = randomness(1, 0, &ts);
        let _ = threshold_of(&ts);
        let _ = with_threshold(&ts, Threshold::ALWAYS);
        let _ = without_threshold(&ts);
    }

    #[test]
    fn header_like_noise_never_panics(
        tp in "[0-9a-f-]{50,60}",
        ts in "[a-z0-9=,;: ot-]{0,80}",
    ) {
        let _ = parse_traceparent(&tp);
        if let Some(norm) = normalize_tracestate(&ts) {
            let _ = randomness(1, 0, &norm);
            let out = with_threshold(&norm, Threshold::ALWAYS);
            prop_assert!(out.starts_with("ot="));
        }
    }
}
