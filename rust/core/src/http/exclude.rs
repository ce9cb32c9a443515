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
//! - A framework integration ([`Integration`]: Flask, Django, FastAPI,
//!   Starlette) may have a list of its own (OpenTelemetry's
//!   `OTEL_PYTHON_<NAME>_EXCLUDED_URLS`); it replaces the common list for
//!   that integration's requests. Which variable wins is configuration
//!   (`pulsetrace._env`); here each integration has one compiled list,
//!   picked by index, so a request pays the same one match.
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

/// The server integration a request comes through: the generic WSGI and
/// ASGI paths, or a framework that may have a list of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Integration {
    #[default]
    Generic = 0,
    Flask = 1,
    Django = 2,
    FastApi = 3,
    Starlette = 4,
}

impl Integration {
    /// The integrations that may have a list of their own, in index order.
    pub const FRAMEWORKS: [Integration; 4] = [
        Integration::Flask,
        Integration::Django,
        Integration::FastApi,
        Integration::Starlette,
    ];
    const COUNT: usize = 5;

    /// The name the configuration keys the list by (`flask`; `OTEL_PYTHON_FLASK_EXCLUDED_URLS`).
    pub const fn name(self) -> &'static str {
        match self {
            Integration::Generic => "generic",
            Integration::Flask => "flask",
            Integration::Django => "django",
            Integration::FastApi => "fastapi",
            Integration::Starlette => "starlette",
        }
    }

    /// The integration named `name` (as [`Integration::name`] gives it).
    pub fn from_name(name: &str) -> Option<Self> {
        [Integration::Generic]
            .into_iter()
            .chain(Self::FRAMEWORKS)
            .find(|i| i.name() == name)
    }
}

/// The compiled exclusion: immutable, shared by every request.
#[derive(Clone, Debug, Default)]
pub struct Exclusion {
    /// Per [`Integration`] (by index): its own list, or a copy of the
    /// common one (a `RegexSet` clone shares the compiled program).
    sets: [Option<RegexSet>; Integration::COUNT],
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
            sets: [None, None, None, None, None],
            prefixes: Vec::new(),
        }
    }

    /// Compile `patterns`, one list for every integration, and keep
    /// `prefixes`; the first expression that does not compile is the error
    /// (and nothing is built).
    pub fn new<P: AsRef<str>, Q: AsRef<str>>(
        patterns: &[P],
        prefixes: &[Q],
    ) -> Result<Self, BadPattern> {
        Self::with_own(patterns, &[] as &[(Integration, &[P])], prefixes)
    }

    /// [`Exclusion::new`], where each integration of `own` has its list
    /// instead of `patterns` (a later entry for the same integration wins).
    pub fn with_own<P: AsRef<str>, L: AsRef<[P]>, Q: AsRef<str>>(
        patterns: &[P],
        own: &[(Integration, L)],
        prefixes: &[Q],
    ) -> Result<Self, BadPattern> {
        let common = compile(patterns)?;
        let mut sets: [Option<RegexSet>; Integration::COUNT] =
            std::array::from_fn(|_| common.clone());
        for (integration, list) in own {
            sets[*integration as usize] = compile(list.as_ref())?;
        }
        let mut normal: Vec<String> = prefixes
            .iter()
            .filter_map(|p| normal_prefix(p.as_ref()))
            .collect();
        normal.sort();
        normal.dedup();
        Ok(Exclusion {
            sets,
            prefixes: normal,
        })
    }

    /// Nothing is excluded, for any integration.
    pub fn is_empty(&self) -> bool {
        self.sets.iter().all(Option::is_none) && self.prefixes.is_empty()
    }

    /// The mounted prefixes (normalised).
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// Whether a request for `path` (decoded, without the query) that
    /// comes through no framework of its own is excluded.
    #[inline]
    pub fn excludes(&self, path: &str) -> bool {
        self.excludes_for(Integration::Generic, path)
    }

    /// Whether a request for `path` (decoded, without the query) that
    /// comes through `integration` is excluded.
    #[inline]
    pub fn excludes_for(&self, integration: Integration, path: &str) -> bool {
        if let Some(set) = &self.sets[integration as usize] {
            if set.is_match(path) {
                return true;
            }
        }
        self.prefixes.iter().any(|p| under(path, p))
    }
}

/// `patterns` compiled into one set (None when there are none); the first
/// that does not compile is the error.
fn compile<P: AsRef<str>>(patterns: &[P]) -> Result<Option<RegexSet>, BadPattern> {
    for p in patterns {
        if let Some(bad) = pattern_problem(p.as_ref()) {
            return Err(bad);
        }
    }
    if patterns.is_empty() {
        return Ok(None);
    }
    regex::RegexSetBuilder::new(patterns.iter().map(AsRef::as_ref))
        .size_limit(SIZE_LIMIT.saturating_mul(patterns.len()))
        .build()
        .map(Some)
        .map_err(|e| BadPattern {
            pattern: patterns
                .iter()
                .map(AsRef::as_ref)
                .collect::<Vec<_>>()
                .join(","),
            reason: one_line(&e.to_string()),
        })
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
    fn an_integration_with_its_own_list_uses_it_and_the_others_the_common_one() {
        let own = [(Integration::Flask, vec!["^/flask-only$"])];
        let e = Exclusion::with_own(&["^/common$"], &own, &["/_pulsetrace"]).unwrap();
        assert!(e.excludes_for(Integration::Flask, "/flask-only"));
        assert!(!e.excludes_for(Integration::Flask, "/common"));
        for i in [
            Integration::Generic,
            Integration::Django,
            Integration::FastApi,
        ] {
            assert!(e.excludes_for(i, "/common"), "{i:?}");
            assert!(!e.excludes_for(i, "/flask-only"), "{i:?}");
        }
        // The mounted prefixes hold for every integration.
        assert!(e.excludes_for(Integration::Flask, "/_pulsetrace/health"));
        assert!(e.excludes("/_pulsetrace"));
        // An empty own list excludes nothing of the common list.
        let none: [(Integration, Vec<&str>); 1] = [(Integration::Django, vec![])];
        let e = Exclusion::with_own(&["^/common$"], &none, NONE).unwrap();
        assert!(!e.excludes_for(Integration::Django, "/common"));
        assert!(!e.is_empty());
    }

    #[test]
    fn a_bad_expression_in_an_own_list_is_the_error() {
        let own = [(Integration::Starlette, vec!["(x"])];
        let err = Exclusion::with_own(&["^/ok$"], &own, NONE).unwrap_err();
        assert_eq!(err.pattern, "(x");
    }

    #[test]
    fn integrations_are_named_as_the_configuration_keys_them() {
        for i in Integration::FRAMEWORKS {
            assert_eq!(Integration::from_name(i.name()), Some(i));
        }
        assert_eq!(
            Integration::from_name("fastapi"),
            Some(Integration::FastApi)
        );
        assert_eq!(Integration::from_name("Flask"), None);
    }

    #[test]
    fn a_runaway_expression_is_refused_not_compiled() {
        let huge = "(?:a{1000}){1000}";
        assert!(pattern_problem(huge).is_some());
    }
}
