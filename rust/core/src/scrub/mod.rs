//! The scrubber: personal data and secrets out of everything pulsetrace
//! exports (span names, attributes, events, status descriptions, exception
//! messages and stack traces, query strings, log records).
//!
//! What it finds: e-mail addresses (also `%40`-encoded), phone numbers
//! (E.164 and common national formats), payment card numbers (issuer
//! prefix and Luhn checked), IBANs (mod 97 checked), US social security
//! numbers, JWTs, `Bearer`/`Basic` credentials, well-known API key shapes,
//! the values of secret-named keys in `key=value`, `key: value` and JSON
//! `"key": "value"` forms, and `Authorization`/`Cookie`/`Set-Cookie`
//! values. See [`rules`] for the exact rules.
//!
//! Modes: [`Mode::Mask`] keeps the shape of personal data
//! (`+55*********21`, `j***@example.com`, `************1111`), never
//! longer than what it replaces; [`Mode::Redact`] replaces it with
//! `REDACTED`. Secret values are `REDACTED` in both modes.
//!
//! Cost: [`Scrubber::scrub`] first runs a pre-filter (one Aho-Corasick scan
//! for `@` and secret words, and a count of digits); text that passes it
//! unflagged is returned borrowed, without a copy. Only flagged text runs
//! the one combined regular expression.
//!
//! Concurrency: a [`Scrubber`] is immutable and shared (`Arc`). The
//! process's current one ([`current`]) sits in an `ArcSwap`: readers (the
//! export thread, log formatting) load it without a lock; [`configure`]
//! (start-up, tests) builds a new one and swaps it in.

mod query;
pub mod rules;
mod span;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use regex::{Captures, Regex};
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

pub use query::redact_query_words;
pub use rules::REDACTED;

/// How personal data is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Keep the shape: first and last characters, separators, domain.
    #[default]
    Mask,
    /// Replace it with `REDACTED`.
    Redact,
}

impl Mode {
    /// `mask` or `redact` (case-insensitive); anything else is an error
    /// naming the value.
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mask" => Ok(Mode::Mask),
            "redact" => Ok(Mode::Redact),
            _ => Err(format!(
                "scrub mode {s:?} is not one of \"mask\", \"redact\""
            )),
        }
    }
}

/// What a [`Scrubber`] is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrubConfig {
    pub enabled: bool,
    pub mode: Mode,
    /// Extra secret field names (`PULSETRACE_SCRUB_FIELDS`): a key
    /// containing one (case-insensitive) has its value redacted.
    pub fields: Vec<String>,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            enabled: true,
            mode: Mode::Mask,
            fields: Vec::new(),
        }
    }
}

/// The fewest digits a card, phone, IBAN or SSN can have: text with fewer
/// (and no other trigger) is clean.
const MIN_DIGITS: usize = 8;

/// Rescans after a first pass that changed something (in practice the
/// second finds nothing).
const MAX_PASSES: usize = 3;

/// Pre-filter triggers besides the secret words and the configured fields.
const TRIGGERS: &[&str] = &[
    "@", "%40", "eyj", "bearer", "basic", "sk_", "sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
    "xox", "akia", "eaa", "api", "access", "private", "credit", "card",
];

/// One configured scrubber. Build it once; `scrub` is `&self` and `Sync`.
#[derive(Debug)]
pub struct Scrubber {
    cfg: ScrubConfig,
    re: Regex,
    /// Anchored single rules tried when a combined-match candidate fails
    /// its check (a 15-digit run failing Luhn may still start a phone number).
    fallback: Vec<(Kind, Regex)>,
    prefilter: AhoCorasick,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Iban,
    Card,
    Ssn,
    Phone,
}

impl Scrubber {
    pub fn new(mut cfg: ScrubConfig) -> Scrubber {
        let norm = |v: &mut Vec<String>| {
            *v = v
                .iter()
                .map(|w| w.trim().to_ascii_lowercase())
                .filter(|w| !w.is_empty())
                .collect();
        };
        norm(&mut cfg.fields);
        let mut words: Vec<&str> = TRIGGERS.to_vec();
        words.extend(rules::SECRET_WORDS);
        words.extend(rules::SECRET_SEGMENTS);
        words.extend([
            "passw",
            "api_key",
            "private_key",
            "access_key",
            "credit_card",
        ]);
        words.extend(cfg.fields.iter().map(String::as_str));
        let prefilter = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostFirst)
            .build(&words)
            .expect("the pre-filter's words are plain strings");
        let fallback = rules::single()
            .into_iter()
            .map(|(name, re)| {
                let kind = match name {
                    "iban" => Kind::Iban,
                    "card" => Kind::Card,
                    "ssn" => Kind::Ssn,
                    _ => Kind::Phone,
                };
                (kind, re)
            })
            .collect();
        Scrubber {
            cfg,
            re: rules::combined(),
            fallback,
            prefilter,
        }
    }

    pub fn config(&self) -> &ScrubConfig {
        &self.cfg
    }

    /// Whether `text` may hold something to scrub (false: it certainly
    /// does not).
    fn flagged(&self, text: &str) -> bool {
        let digits = text.bytes().filter(u8::is_ascii_digit).count();
        digits >= MIN_DIGITS || self.prefilter.is_match(text)
    }

    /// `text` with personal data and secrets replaced; borrowed when
    /// nothing was found. Never panics, never fails.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.cfg.enabled || !self.flagged(text) {
            return Cow::Borrowed(text);
        }
        let Cow::Owned(mut out) = self.scan(text) else {
            return Cow::Borrowed(text);
        };
        // A replacement can expose a match the first pass had consumed as
        // part of a longer one (two addresses glued together): scan again
        // until nothing changes, so that scrubbing is idempotent.
        for _ in 0..MAX_PASSES {
            match self.scan(&out) {
                Cow::Owned(again) => out = again,
                Cow::Borrowed(_) => break,
            }
        }
        Cow::Owned(out)
    }

    /// The value of the attribute or field `key`: all of it `REDACTED` when
    /// the key names a secret, query strings parameter by parameter,
    /// anything else by content.
    pub fn scrub_keyed<'a>(&self, key: &str, value: &'a str) -> Cow<'a, str> {
        if !self.cfg.enabled {
            return Cow::Borrowed(value);
        }
        if self.is_secret_key(key) && !value.is_empty() {
            return if value == REDACTED {
                Cow::Borrowed(value)
            } else {
                Cow::Owned(REDACTED.to_string())
            };
        }
        match key {
            "url.query" => self.scrub_query(value),
            "url.full" => match value.split_once('?') {
                Some((head, query)) => {
                    let (h, q) = (self.scrub(head), self.scrub_query(query));
                    if matches!((&h, &q), (Cow::Borrowed(_), Cow::Borrowed(_))) {
                        Cow::Borrowed(value)
                    } else {
                        Cow::Owned(format!("{h}?{q}"))
                    }
                }
                None => self.scrub(value),
            },
            _ => self.scrub(value),
        }
    }

    /// Whether a key (an attribute name, a JSON field, a query parameter)
    /// names a secret.
    pub fn is_secret_key(&self, key: &str) -> bool {
        // Every secret word, segment and configured field is a pre-filter
        // word (and every normalised form contains one): most keys stop here.
        self.prefilter.is_match(key) && rules::is_secret_key(key, &self.cfg.fields)
    }

    /// The slow path: one combined-regex scan with checks.
    fn scan<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = String::new();
        let mut last = 0;
        let mut pos = 0;
        while pos <= text.len() {
            // The match is found by the fast engines; the capture groups
            // are read over the match alone (captures cost more per byte).
            let Some(found) = self.re.find_at(text, pos) else {
                break;
            };
            let Some(caps) = self.re.captures_at(&text[..found.end()], found.start()) else {
                pos = found.end().max(pos + 1);
                continue;
            };
            let m = caps.get(0).expect("group 0 always matches");
            match self.replace(text, &caps) {
                Step::Replace(start, end, rep) => {
                    out.push_str(&text[last..start]);
                    out.push_str(&rep);
                    last = end;
                    pos = end.max(m.start() + 1);
                }
                Step::ResumeAt(p) => pos = p,
                Step::Fallback(skip) => match self.fallback_at(text, m.start(), skip) {
                    Some((end, rep)) => {
                        out.push_str(&text[last..m.start()]);
                        out.push_str(&rep);
                        last = end;
                        pos = end;
                    }
                    None => pos = m.end(),
                },
            }
            // `pos` must stay on a character boundary.
            while pos < text.len() && !text.is_char_boundary(pos) {
                pos += 1;
            }
        }
        if last == 0 && out.is_empty() {
            return Cow::Borrowed(text);
        }
        out.push_str(&text[last..]);
        if out == text {
            Cow::Borrowed(text)
        } else {
            Cow::Owned(out)
        }
    }

    /// What to do with one combined-regex match.
    fn replace(&self, text: &str, caps: &Captures<'_>) -> Step {
        let mask = self.cfg.mode == Mode::Mask;
        if let Some(v) = caps.name("hval") {
            return Step::Replace(v.start(), v.end(), quoted_redacted(v.as_str()));
        }
        if let (Some(k), Some(v)) = (caps.name("kkey"), caps.name("kval")) {
            if self.is_secret_key(k.as_str()) {
                return Step::Replace(v.start(), v.end(), quoted_redacted(v.as_str()));
            }
            // Not a secret: the value is scanned like any text.
            return Step::ResumeAt(v.start());
        }
        for name in ["jwt", "bval", "apikey"] {
            if let Some(v) = caps.name(name) {
                return Step::Replace(v.start(), v.end(), REDACTED.to_string());
            }
        }
        if let (Some(local), Some(at), Some(domain)) =
            (caps.name("elocal"), caps.name("eat"), caps.name("edomain"))
        {
            let start = local.start();
            let rep = if mask {
                let mut s = String::with_capacity(domain.end() - start);
                let mut chars = local.as_str().chars();
                let first = chars.next().unwrap_or('*');
                if local.as_str().len() == 1 {
                    s.push('*');
                } else {
                    s.push(first);
                    s.extend(chars.map(|_| '*'));
                }
                s.push_str(at.as_str());
                s.push_str(domain.as_str());
                s
            } else {
                REDACTED.to_string()
            };
            return Step::Replace(start, domain.end(), rep);
        }
        let shapes = [
            ("iban", Kind::Iban),
            ("card", Kind::Card),
            ("ssn", Kind::Ssn),
            ("phone", Kind::Phone),
        ];
        for (name, kind) in shapes {
            if let Some(v) = caps.name(name) {
                return match self.check(text, kind, v.start(), v.end()) {
                    Some((end, rep)) => Step::Replace(v.start(), end, rep),
                    None => Step::Fallback(kind),
                };
            }
        }
        Step::ResumeAt(caps.get(0).map_or(text.len(), |m| m.end()))
    }

    /// Try the single rules after `failed` anchored at `start`.
    fn fallback_at(&self, text: &str, start: usize, failed: Kind) -> Option<(usize, String)> {
        let rest = &text[start..];
        self.fallback
            .iter()
            .filter(|(k, _)| *k != failed)
            .find_map(|(kind, re)| {
                let m = re.find(rest)?;
                self.check(text, *kind, start, start + m.end())
            })
    }

    /// Check a shape candidate `text[start..end]`: `(end, replacement)` when
    /// it is one (an IBAN may end earlier than the candidate).
    fn check(&self, text: &str, kind: Kind, start: usize, end: usize) -> Option<(usize, String)> {
        let cand = &text[start..end];
        let ok_end = match kind {
            Kind::Card => rules::is_card(cand).then_some(end),
            Kind::Ssn => Some(end),
            Kind::Phone => {
                // `(call +5511987654321)`: the closing parenthesis is the
                // text's, not the number's.
                let mut end = end;
                while text[start..end].ends_with(')')
                    && text[start..end].matches('(').count() < text[start..end].matches(')').count()
                {
                    end -= 1;
                }
                rules::is_phone(&text[start..end]).then_some(end)
            }
            Kind::Iban => {
                if rules::is_iban(cand) {
                    Some(end)
                } else {
                    cand.rfind(' ')
                        .filter(|&cut| rules::is_iban(&cand[..cut]))
                        .map(|cut| start + cut)
                }
            }
        }?;
        if !rules::bounded(text, start, ok_end) {
            return None;
        }
        let cand = &text[start..ok_end];
        if self.cfg.mode == Mode::Redact {
            return Some((ok_end, REDACTED.to_string()));
        }
        let rep = match kind {
            Kind::Card => mask_digits(cand, 0, 4),
            Kind::Ssn => mask_digits(cand, 0, 0),
            Kind::Phone => mask_digits(cand, 2, 2),
            Kind::Iban => mask_alnum(cand, 2, 2),
        };
        Some((ok_end, rep))
    }
}

enum Step {
    /// Replace `text[start..end]` with the string.
    Replace(usize, usize, String),
    /// Nothing here; scan again from this offset.
    ResumeAt(usize),
    /// A shape candidate failed its check: try the other shapes there.
    Fallback(Kind),
}

/// `REDACTED`, inside the quotes when the value was quoted.
fn quoted_redacted(v: &str) -> String {
    let q = v.as_bytes().first().copied();
    if v.len() >= 2
        && matches!(q, Some(b'"') | Some(b'\''))
        && v.as_bytes()[v.len() - 1] == q.unwrap_or(0)
    {
        let q = q.unwrap_or(b'"') as char;
        format!("{q}{REDACTED}{q}")
    } else {
        REDACTED.to_string()
    }
}

/// Digits replaced by `*` except the first `keep_head` and last `keep_tail`
/// digits; everything else (separators, `+`, parentheses) kept.
fn mask_digits(s: &str, keep_head: usize, keep_tail: usize) -> String {
    mask_where(s, keep_head, keep_tail, |c| c.is_ascii_digit())
}

fn mask_alnum(s: &str, keep_head: usize, keep_tail: usize) -> String {
    mask_where(s, keep_head, keep_tail, |c| c.is_ascii_alphanumeric())
}

fn mask_where(s: &str, keep_head: usize, keep_tail: usize, is: impl Fn(char) -> bool) -> String {
    let total = s.chars().filter(|c| is(*c)).count();
    let mut seen = 0;
    s.chars()
        .map(|c| {
            if !is(c) {
                return c;
            }
            seen += 1;
            if seen <= keep_head || seen > total.saturating_sub(keep_tail) {
                c
            } else {
                '*'
            }
        })
        .collect()
}

struct Global {
    current: ArcSwap<Scrubber>,
    config: Mutex<ScrubConfig>,
}

fn global() -> &'static Global {
    static G: OnceLock<Global> = OnceLock::new();
    G.get_or_init(|| Global {
        current: ArcSwap::from_pointee(Scrubber::new(ScrubConfig::default())),
        config: Mutex::new(ScrubConfig::default()),
    })
}

/// The process's scrubber (lock-free load).
pub fn current() -> Arc<Scrubber> {
    global().current.load_full()
}

/// Run `f` with the process's scrubber (a lock-free load, no reference
/// count touched: for the request path).
pub fn with_current<R>(f: impl FnOnce(&Scrubber) -> R) -> R {
    f(&global().current.load())
}

/// Replace the process's scrubber settings (mode, fields, on/off).
pub fn configure(enabled: bool, mode: Mode, fields: Vec<String>) {
    let g = global();
    let mut cfg = g.config.lock();
    cfg.enabled = enabled;
    cfg.mode = mode;
    cfg.fields = fields;
    g.current.store(Arc::new(Scrubber::new(cfg.clone())));
}

#[cfg(test)]
mod tests;
