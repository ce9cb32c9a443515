//! Property tests of the SQL obfuscator: arbitrary input never panics, the
//! output never carries a literal, and obfuscating twice changes nothing.

use proptest::prelude::*;
use pulsetrace_core::sql::obfuscate;

fn literal() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        (0u64..u64::MAX).prop_map(|n| (n.to_string(), n.to_string())),
        "[a-zA-Z0-9 @._-]{4,20}".prop_map(|s| (format!("'{}'", s.replace('\'', "''")), s)),
        (0.001f64..1e9).prop_map(|f| (format!("{f}"), format!("{f}"))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_input_never_panics(s in any::<String>(), max in 0usize..200) {
        let r = obfuscate(&s, max);
        if max > 0 {
            prop_assert!(r.text.len() <= max.max(3));
        }
    }

    #[test]
    fn sql_like_noise_never_panics(s in "[a-z'\"`$#/*\\-0-9(),. \n?%:E]{0,80}") {
        let _ = obfuscate(&s, 0);
    }

    #[test]
    fn literals_never_survive((lit, secret) in literal(), col in "[a-z]{1,8}", table in "[a-z]{1,8}") {
        prop_assume!(secret.len() >= 4);
        let q = format!("SELECT {col} FROM {table} WHERE {col} = {lit} AND {col} IN ({lit}, {lit})");
        let r = obfuscate(&q, 0);
        prop_assert!(!r.text.contains(&secret), "{} leaked in {}", secret, r.text);
        prop_assert_eq!(r.text, format!("SELECT {col} FROM {table} WHERE {col} = ? AND {col} IN (?)"));
        prop_assert_eq!(r.operation.as_deref(), Some("SELECT"));
        prop_assert_eq!(r.collection, Some(table));
    }

    #[test]
    fn obfuscation_is_idempotent(parts in prop::collection::vec(prop_oneof![
        Just("SELECT".to_owned()), Just("a".to_owned()), Just("=".to_owned()), Just("1".to_owned()),
        Just("'x y'".to_owned()), Just("IN (1, 2)".to_owned()), Just("-- c\n".to_owned()),
        Just("/* c */".to_owned()), Just("\"Q\"".to_owned()), Just("$1".to_owned()), Just("%s".to_owned()),
        Just("VALUES (1, 2), (3, 4)".to_owned()), Just("t1".to_owned()), Just(",".to_owned()),
    ], 0..20)) {
        let q = parts.join(" ");
        let once = obfuscate(&q, 0).text;
        prop_assert_eq!(obfuscate(&once, 0).text, once.clone());
    }
}
