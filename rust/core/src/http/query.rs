//! Query strings: the values of sensitive parameters redacted.

use std::borrow::Cow;

/// What a redacted value becomes (the scrubber's marker).
pub use crate::scrub::REDACTED;

/// `application/x-www-form-urlencoded` decoding of one name or value: `+` is
/// a space, `%XX` a byte; a `%` not followed by two hex digits is kept. Bytes
/// that are not UTF-8 become U+FFFD.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    if !b.iter().any(|&c| c == b'%' || c == b'+') {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The words [`redact_query`] takes, from a configuration's: lower-cased,
/// empty ones dropped (an empty word would match every parameter).
pub fn redaction_words(words: impl IntoIterator<Item = String>) -> Vec<String> {
    words
        .into_iter()
        .map(|w| w.to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// The query string with the value of every parameter whose decoded,
/// lower-cased name contains one of `words` (lower-case) replaced by
/// [`REDACTED`]; every other parameter is kept byte for byte. A parameter
/// without `=` has no value to redact. The scrubber's rule
/// ([`crate::scrub::redact_query_words`]; export scrubs the rest).
pub fn redact_query<'a>(query: &'a str, words: &[String]) -> Cow<'a, str> {
    crate::scrub::redact_query_words(query, words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sensitive_values_are_redacted_and_the_rest_kept_byte_for_byte() {
        let w = words(&["token", "password"]);
        assert_eq!(
            redact_query("page=2&access_token=abc&q=a%20b", &w),
            "page=2&access_token=REDACTED&q=a%20b"
        );
        assert_eq!(
            redact_query("Password=x&flag", &w),
            "Password=REDACTED&flag"
        );
        // The name is decoded before it is compared.
        assert_eq!(redact_query("%74oken=x", &w), "%74oken=REDACTED");
        assert_eq!(redact_query("my+token=x", &w), "my+token=REDACTED");
        // No value: nothing to redact.
        assert_eq!(redact_query("token&a=1", &w), "token&a=1");
        assert!(matches!(redact_query("a=1&b=2", &w), Cow::Borrowed(_)));
        assert_eq!(redact_query("token=x", &[]), "token=x");
        let w = redaction_words(["ToKen".to_string(), String::new()]);
        assert_eq!(redact_query("a=1&MyToken=2", &w), "a=1&MyToken=REDACTED");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }
}
