//! Scrubber properties over arbitrary and PII-shaped text: it never panics,
//! scrubbing twice equals scrubbing once, clean text comes back borrowed,
//! and the output never grows beyond a fixed factor of the input (masks keep
//! the length; the only growth is `REDACTED` replacing a short secret).

use proptest::prelude::*;
use pulsetrace_core::scrub::{Mode, ScrubConfig, Scrubber};

fn scrubbers() -> &'static [Scrubber; 2] {
    static S: std::sync::OnceLock<[Scrubber; 2]> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        [
            Scrubber::new(ScrubConfig::default()),
            Scrubber::new(ScrubConfig {
                mode: Mode::Redact,
                fields: vec!["cpf".into()],
                ..ScrubConfig::default()
            }),
        ]
    })
}

/// Pieces that look like what the scrubber looks for, and their near misses.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        "[0-9]{1,20}",
        "[ .\\-()+:=&;,\"'@%/\\n]{1,3}",
        Just("a@b.com".to_string()),
        Just("+5511987654321".to_string()),
        Just("4111111111111111".to_string()),
        Just("DE89370400440532013000".to_string()),
        Just("password".to_string()),
        Just("pass".to_string()),
        Just("Bearer ".to_string()),
        Just("Authorization: ".to_string()),
        Just("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig".to_string()),
        Just("REDACTED".to_string()),
        Just("%40".to_string()),
        Just("camp_1".to_string()),
        "\\PC{0,6}",
    ]
}

fn texts() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(piece(), 0..24).prop_map(|v| v.concat()),
        "\\PC{0,200}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn never_panics_is_idempotent_and_bounded(text in texts()) {
        for s in scrubbers() {
            let once = s.scrub(&text);
            let twice = s.scrub(&once);
            prop_assert_eq!(&twice, &once, "idempotent on {:?}", text);
            prop_assert!(once.len() <= text.len() * 3 + 8, "{:?} -> {:?}", text, once);
            let q = s.scrub_query(&text);
            prop_assert!(q.len() <= text.len() * 3 + 8);
            let _ = s.scrub_keyed("url.full", &text);
        }
    }

    #[test]
    fn text_without_triggers_is_borrowed(text in "[a-zA-Z ,.!?]{0,200}") {
        let mask = &scrubbers()[0];
        let triggers = ["pass", "pin", "ssn", "otp", "sig", "auth", "jwt", "session", "basic",
            "bearer", "token", "secret", "cookie", "key", "api", "access", "private", "credit",
            "card", "cvv", "cvc", "pwd", "eyj", "sk", "gh", "xox", "akia", "eaa", "credential"];
        let lower = text.to_ascii_lowercase();
        prop_assume!(!triggers.iter().any(|t| lower.contains(t)));
        prop_assert!(matches!(mask.scrub(&text), std::borrow::Cow::Borrowed(_)));
    }
}
