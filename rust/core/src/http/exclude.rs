//! Excluded URLs: the inbound requests that get no server span, no
//! histogram count and no access-log line (probe routes: a load balancer
//! polling `/health/live` every second would otherwise dominate the
//! request histograms and the kept traces).
//!
//! The rule, the same for every server integration:
//! - A request is excluded when one of the configured regular expressions
//!   matches somewhere in its decoded path (`url.path`, as the span would
//!   report it; unanchored, as OpenTelemetry's `OTEL_PYTHON_EXCLUDED_URLS`
//!   searches: anchor with `^` and `$`), or when its path is a mounted
//!   prefix or lies under one (`/_pulsetrace`, `/_pulsetrace/health`; not
//!   `/_pulsetraceX`).
//! - The default (`pulsetrace.config`, where every default is declared)
//!   is `^/health(/.*)?$`: `/health` and what lies under it.
//! - The expressions are compiled once, when the configuration is applied
//!   ([`Exclusion::new`]); a request pays one match over its path (a few
//!   hundred instructions for the default).
//! - The syntax is the `regex` crate's (Perl-like, no look-around or
//!   back-references). An expression that does not compile is reported
//!   with the expression and the reason ([`BadPattern`]), before anything
//!   is replaced.
//! - The query string is not part of what is matched.

use regex::RegexSet;
use std::fmt;

/// An expression that does not compile: which one, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadPattern {
    pub pattern: String,
    pub reason: String,
}

impl fmt::Display for BadPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a valid regular expression ({})",
            self.pattern, self.reason
        )
    }
}

impl std::error::Error for BadPattern {}

/// The compiled exclusion: immutable, shared by every request.
#[derive(Clone, Debug, Default)]
pub struct Exclusion {
    set: Option<RegexSet>,
    /// Mounted prefixes, each starting with `/` and without a trailing `/`.
    prefixes: Vec<String>,
}

/// The most compiled program an expression may grow to (the `regex`
/// crate's unit: bytes). Ample for any path rule; bounds what a runaway
/// configuration value can cost.
const SIZE_LIMIT: usize = 1 << 20;

/// Why `pattern` is not a usable expression, or None.
pub fn pattern_problem(pattern: &str) -> Option<BadPattern> {
    regex::RegexBuilder::new(pattern)
        .size_limit(SIZE_LIMIT)
        .build()
        .err()
        .map(|e| BadPattern {
            pattern: pattern.to_owned(),
            reason: one_line(&e.to_string()),
        })
}

/// The `regex` crate's message, which draws the expression over several
/// lines, as one line: its last line says what is wrong.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("invalid")
        .trim_start_matches("error: ")
        .to_owned()
}

/// A mounted prefix as it is compared: a leading `/`, no trailing one.
/// Empty (or `/` alone: the whole application) is none.
fn normal_prefix(prefix: &str) -> Option<String> {
    let p = prefix.trim().trim_end_matches('/');
    if p.is_empty() {
        return None;
    }
    Some(if p.starts_with('/') {
        p.to_owned()
    } else {
        format!("/{p}")
    })
}

impl Exclusion {
    /// Nothing excluded (usable in a `static`).
    pub const fn empty() -> Self {
        Exclusion {
            set: None,
            prefixes: Vec::new(),
        }
    }

    /// Compile `patterns` and keep `prefixes`; the first expression that
    /// does not compile is the error (and nothing is built).
    pub fn new<P: AsRef<str>, Q: AsRef<str>>(
        patterns: &[P],
        prefixes: &[Q],
    ) -> Result<Self, BadPattern> {
        for p in patterns {
            if let Some(bad) = pattern_problem(p.as_ref()) {
                return Err(bad);
            }
        }
        let set = match patterns.is_empty() {
            true => None,
            false => Some(
                regex::RegexSetBuilder::new(patterns.iter().map(AsRef::as_ref))
                    .size_limit(SIZE_LIMIT.saturating_mul(patterns.len()))
                    .build()
                    .map_err(|e| BadPattern {
                        pattern: patterns
                            .iter()
                            .map(AsRef::as_ref)
                            .collect::<Vec<_>>()
                            .join(","),
                        reason: one_line(&e.to_string()),
                    })?,
            ),
        };
        let mut normal: Vec<String> = prefixes
            .iter()
            .filter_map(|p| normal_prefix(p.as_ref()))
            .collect();
        normal.sort();
        normal.dedup();
        Ok(Exclusion {
            set,
            prefixes: normal,
        })
    }

    /// Nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.set.is_none() && self.prefixes.is_empty()
    }

    /// The mounted prefixes (normalised).
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// Whether a request for `path` (decoded, without the query) is
    /// excluded.
    #[inline]
    pub fn excludes(&self, path: &str) -> bool {
        if let Some(set) = &self.set {
            if set.is_match(path) {
                return true;
            }
        }
        self.prefixes.iter().any(|p| under(path, p))
    }
}

/// `path` is `prefix` or lies under it.
fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: &[&str] = &[];

    #[test]
    fn the_configured_default_excludes_health_and_what_lies_under_it() {
        // pulsetrace.config's default.
        let e = Exclusion::new(&["^/health(/.*)?$"], NONE).unwrap();
        for p in ["/health", "/health/", "/health/live", "/health/ready"] {
            assert!(e.excludes(p), "{p}");
        }
        for p in ["/", "/json", "/healthz", "/api/health", "/healthy/x"] {
            assert!(!e.excludes(p), "{p}");
        }
    }

    #[test]
    fn expressions_are_searched_anywhere_in_the_path() {
        let e = Exclusion::new(&["ping", "^/internal/.*/status$"], NONE).unwrap();
        assert!(e.excludes("/ping"));
        assert!(e.excludes("/a/ping/b"));
        assert!(e.excludes("/internal/db/status"));
        assert!(!e.excludes("/internal/db/status/x"));
        assert!(!e.excludes("/users"));
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let e = Exclusion::new(NONE, &["/_pulsetrace/", "mon", "/", ""]).unwrap();
        assert_eq!(e.prefixes(), ["/_pulsetrace", "/mon"]);
        assert!(e.excludes("/_pulsetrace"));
        assert!(e.excludes("/_pulsetrace/apm/status"));
        assert!(!e.excludes("/_pulsetraceX"));
        assert!(e.excludes("/mon/health"));
        assert!(!e.excludes("/json"));
    }

    #[test]
    fn a_bad_expression_is_named_with_its_reason() {
        let err = Exclusion::new(&["^/ok$", "/health/(live"], NONE).unwrap_err();
        assert_eq!(err.pattern, "/health/(live");
        assert!(err.reason.contains("unclosed group"), "{}", err.reason);
        let shown = err.to_string();
        assert!(shown.contains("\"/health/(live\""), "{shown}");
        assert!(!shown.contains('\n'), "{shown}");
        assert!(pattern_problem("^/health(/.*)?$").is_none());
        assert!(pattern_problem("(?<=a)b").is_some(), "no look-behind");
    }

    #[test]
    fn nothing_configured_excludes_nothing() {
        let e = Exclusion::new(NONE, NONE).unwrap();
        assert!(e.is_empty());
        assert!(!e.excludes("/health"));
    }

    #[test]
    fn a_runaway_expression_is_refused_not_compiled() {
        let huge = "(?:a{1000}){1000}";
        assert!(pattern_problem(huge).is_some());
    }
}
