//! The scrubber against its corpus (`tests/data/scrub_corpus.tsv`): every
//! positive case comes out as written (mask mode), every negative case
//! unchanged and borrowed (no copy), and every output is a fixed point.

use pulsetrace_core::scrub::{Mode, ScrubConfig, Scrubber};
use std::borrow::Cow;

const CORPUS: &str = include_str!("data/scrub_corpus.tsv");

fn cases() -> Vec<(bool, &'static str, Option<&'static str>)> {
    CORPUS
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut parts = l.split('\t');
            let sign = parts.next().expect("a sign");
            let input = parts.next().expect("an input");
            (sign == "+", input, parts.next())
        })
        .collect()
}

#[test]
fn corpus_in_mask_mode() {
    let s = Scrubber::new(ScrubConfig::default());
    let mut failures = Vec::new();
    for (positive, input, want) in cases() {
        let got = s.scrub(input);
        if positive {
            let want = want.expect("a positive case has an output");
            if got != want {
                failures.push(format!("{input:?}\n   got  {got:?}\n   want {want:?}"));
            }
        } else if !matches!(got, Cow::Borrowed(_)) {
            failures.push(format!("{input:?} must survive, got {got:?}"));
        }
        let again = s.scrub(&got);
        if again != got {
            failures.push(format!("{input:?}: not idempotent: {got:?} -> {again:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn corpus_in_redact_mode_leaves_no_digit_run_of_a_positive() {
    let s = Scrubber::new(ScrubConfig {
        mode: Mode::Redact,
        ..ScrubConfig::default()
    });
    for (positive, input, want) in cases() {
        let got = s.scrub(input);
        if positive {
            // Whatever mask mode hides, redact mode removes too: the output
            // differs from the input and holds no `*` (nothing is masked).
            assert_ne!(got, input, "{input:?}");
            assert!(
                !got.contains('*') || want.is_some_and(|w| !w.contains('*')),
                "{got:?}"
            );
        } else {
            assert_eq!(got, input);
        }
        assert_eq!(s.scrub(&got), got, "redact is idempotent on {input:?}");
    }
}
