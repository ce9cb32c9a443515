//! Query strings: by parameter name on the request path (the configured
//! words of `PULSETRACE_REDACT_QUERY_PARAMS`, cheap), and by secret name and
//! content at export ([`Scrubber::scrub_query`]).

use super::{Scrubber, REDACTED};
use crate::http::percent_decode;
use std::borrow::Cow;

/// The query string with the value of every parameter whose decoded,
/// lower-cased name contains one of `words` (lower-case) replaced by
/// [`REDACTED`]; every other parameter is kept byte for byte. A parameter
/// without `=` has no value to redact. What the request path applies to
/// `url.query` and `url.full`; export finishes with [`Scrubber::scrub_query`].
pub fn redact_query_words<'a>(query: &'a str, words: &[String]) -> Cow<'a, str> {
    if words.is_empty() || query.is_empty() {
        return Cow::Borrowed(query);
    }
    // Most queries name no sensitive parameter and encode nothing: one
    // case-insensitive scan says so without splitting.
    if !query.contains('%') && !query.contains('+') && !words.iter().any(|w| contains_ci(query, w))
    {
        return Cow::Borrowed(query);
    }
    each_pair(query, |k, _| {
        let key = percent_decode(k).to_lowercase();
        words
            .iter()
            .any(|w| key.contains(w.as_str()))
            .then(|| REDACTED.to_string())
    })
}

impl Scrubber {
    /// A query string (`a=1&b=2`, no `?`) at export: parameters whose
    /// decoded name names a secret get `REDACTED` values; the others'
    /// decoded values are scrubbed by content (and re-encoded when
    /// something was found). Other parameters are kept byte for byte.
    pub fn scrub_query<'a>(&self, query: &'a str) -> Cow<'a, str> {
        if !self.config().enabled || (!query.contains(['%', '+']) && !self.flagged(query)) {
            return Cow::Borrowed(query);
        }
        each_pair(query, |k, v| {
            if self.is_secret_key(&percent_decode(k)) {
                return (v != REDACTED).then(|| REDACTED.to_string());
            }
            match self.scrub(&percent_decode(v)) {
                Cow::Owned(s) => Some(percent_encode(&s)),
                Cow::Borrowed(_) => None,
            }
        })
    }
}

/// The query with the value of each `name=value` pair replaced by what
/// `f(name, value)` returns, if anything; pairs without `=` are kept.
fn each_pair<'a>(query: &'a str, mut f: impl FnMut(&str, &str) -> Option<String>) -> Cow<'a, str> {
    let mut out = String::with_capacity(query.len());
    let mut changed = false;
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, v)) => match f(k, v) {
                Some(new) => {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(&new);
                    changed = true;
                }
                None => out.push_str(pair),
            },
            _ => out.push_str(pair),
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(query)
    }
}

/// `haystack` contains `needle` (lower-case), ignoring ASCII case. A
/// non-ASCII needle is compared against the lower-cased haystack.
fn contains_ci(haystack: &str, needle: &str) -> bool {
    if !needle.is_ascii() {
        return haystack.to_lowercase().contains(needle);
    }
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    if n.is_empty() {
        return true;
    }
    h.len() >= n.len() && h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// Encode what a query value cannot hold as is (`% & = + #` and space).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ' ' => out.push('+'),
            '%' | '&' | '=' | '+' | '#' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
