//! OpenTelemetry consistent probability sampling ("TraceState: Probability
//! Sampling" and "TraceState Handling" in the OpenTelemetry specification),
//! the one rule both of pulsetrace's samplers use.
//!
//! - A sampling probability `p` becomes a 56-bit rejection threshold
//!   `T = (1 - p) * 2^56`, rounded to a few hexadecimal digits
//!   ([`Threshold::from_probability`]).
//! - The randomness `R` of a trace is the `rv` sub-key of its `ot` tracestate
//!   entry when present (14 hex digits), else the least significant 56 bits
//!   of its trace id ([`randomness`]).
//! - A trace is kept when `R >= T`. A trace kept at some probability is kept
//!   at every higher one, by every sampler that follows the rule (other
//!   services, OpenTelemetry SDKs, the Collector's probabilistic sampler).
//! - The threshold that selected a span travels with it as `ot=th:<hex>` in
//!   its tracestate (trailing zeros removed; `th:0` keeps everything), so a
//!   backend can weigh each kept span by its adjusted count `1 / p`. A span
//!   whose probability is unknown carries no `th`.
//!
//! Pure functions over plain values; nothing here allocates unless it
//! returns a new tracestate.

use crate::propagation::{tracestate_get, tracestate_remove, tracestate_set};
use std::fmt;

/// 2^56: the number of distinct randomness values.
pub const MAX_ADJUSTED_COUNT: u64 = 1 << 56;
const RANDOMNESS_MASK: u64 = MAX_ADJUSTED_COUNT - 1;
/// Hex digits of a full threshold or randomness value (56 bits).
const DIGITS: u32 = 14;
/// Significant hex digits a threshold is rounded to, raised for
/// probabilities near 0 or 1 (whose thresholds begin with `f`s or `0`s).
pub const DEFAULT_PRECISION: u32 = 4;
/// The W3C trace-flags bit for "sampled".
pub const FLAG_SAMPLED: u8 = 0x01;
/// The W3C Trace Context Level 2 trace-flags bit saying the right-most 56
/// bits of the trace id are random.
pub const FLAG_RANDOM: u8 = 0x02;
/// The key of OpenTelemetry's `tracestate` entry.
pub const OT_KEY: &str = "ot";
/// Longest value of the `ot` entry.
const OT_MAX_LEN: usize = 256;

/// A rejection threshold: a trace whose randomness is at least the
/// threshold is kept. 0 keeps every trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Threshold(u64);

/// The exponent `e` of `x = m * 2^e` with `m` in `[0.5, 1)` (C's `frexp`),
/// for a positive normal `x`.
fn binary_exponent(x: f64) -> i32 {
    ((x.to_bits() >> 52) & 0x7ff) as i32 - 1022
}

impl Threshold {
    /// Keeps every trace (`th:0`).
    pub const ALWAYS: Threshold = Threshold(0);

    /// A threshold from its 56-bit value.
    pub fn new(value: u64) -> Option<Threshold> {
        (value < MAX_ADJUSTED_COUNT).then_some(Threshold(value))
    }

    /// The 56-bit value.
    pub fn value(self) -> u64 {
        self.0
    }

    /// The threshold of probability `p` with [`DEFAULT_PRECISION`]; `None`
    /// when `p` is below 2^-56 (or NaN), which is not probability sampling:
    /// such a sampler keeps nothing.
    pub fn from_probability(p: f64) -> Option<Threshold> {
        Threshold::from_probability_with_precision(p, DEFAULT_PRECISION)
    }

    /// The threshold of probability `p`, rounded to `precision` significant
    /// hex digits (1 to 14). The precision is raised by one digit for every
    /// factor of 16 that `p` (or `1 - p`) is below 1, so small probabilities
    /// keep their relative accuracy: 1/100 gives `fd70a`, 2^-56 gives
    /// `ffffffffffffff`.
    pub fn from_probability_with_precision(p: f64, precision: u32) -> Option<Threshold> {
        if p.is_nan() || p < 1.0 / MAX_ADJUSTED_COUNT as f64 {
            return None;
        }
        if p >= 1.0 {
            return Some(Threshold::ALWAYS);
        }
        let precision = precision.clamp(1, DIGITS);
        let raise = |x: f64| precision + (-binary_exponent(x)).max(0) as u32 / 4;
        let precision = raise(p).max(raise(1.0 - p)).min(DIGITS);
        // p * 2^56 is exact (a power of two); rounding makes it an integer
        // in [1, 2^56].
        let kept = (p * MAX_ADJUSTED_COUNT as f64).round() as u64;
        let mut t = MAX_ADJUSTED_COUNT - kept.min(MAX_ADJUSTED_COUNT);
        let shift = 4 * (DIGITS - precision);
        if shift > 0 {
            // Round half up to the last kept digit. Cannot reach 2^56: the
            // raised precision leaves p at least half a unit of that digit.
            t = ((t + (1 << (shift - 1))) >> shift) << shift;
        }
        Some(Threshold(t.min(RANDOMNESS_MASK)))
    }

    /// Parse a `th` value: 1 to 14 lowercase hex digits, implicitly padded
    /// with trailing zeros to 14.
    pub fn parse(th: &str) -> Option<Threshold> {
        let v = parse_hex_digits(th, 1)?;
        Some(Threshold(v << (4 * (DIGITS - th.len() as u32))))
    }

    /// The probability of keeping a trace: `(2^56 - T) / 2^56`.
    pub fn probability(self) -> f64 {
        (MAX_ADJUSTED_COUNT - self.0) as f64 / MAX_ADJUSTED_COUNT as f64
    }

    /// How many traces a kept one stands for: `1 / probability`.
    pub fn adjusted_count(self) -> f64 {
        MAX_ADJUSTED_COUNT as f64 / (MAX_ADJUSTED_COUNT - self.0) as f64
    }

    /// Whether a trace with this randomness is kept: `R >= T`.
    #[inline]
    pub fn keeps(self, randomness: u64) -> bool {
        randomness >= self.0
    }

    /// The `th` value: hex, trailing zeros removed, `0` for [`Threshold::ALWAYS`].
    pub fn encode(self) -> ThValue {
        let mut buf = [b'0'; DIGITS as usize];
        for (i, b) in buf.iter_mut().enumerate() {
            let nibble = (self.0 >> (4 * (DIGITS as usize - 1 - i))) & 0xf;
            *b = b"0123456789abcdef"[nibble as usize];
        }
        let len = buf.iter().rposition(|&b| b != b'0').map_or(1, |i| i + 1);
        ThValue {
            buf,
            len: len as u8,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode().as_str())
    }
}

/// An encoded `th` value, on the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThValue {
    buf: [u8; DIGITS as usize],
    len: u8,
}

impl ThValue {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("0")
    }
}

/// `min_len` to 14 lowercase hex digits as an integer.
fn parse_hex_digits(s: &str, min_len: usize) -> Option<u64> {
    if s.len() < min_len || s.len() > DIGITS as usize {
        return None;
    }
    s.bytes().try_fold(0u64, |v, b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some((v << 4) | u64::from(d))
    })
}

/// Parse an explicit randomness value `rv`: exactly 14 lowercase hex digits.
pub fn parse_rv(rv: &str) -> Option<u64> {
    parse_hex_digits(rv, DIGITS as usize)
}

/// The value of a sub-key of an `ot` entry value (`th:8;rv:...;k:v`).
pub fn ot_get<'a>(ot: &'a str, key: &str) -> Option<&'a str> {
    ot.split(';')
        .find_map(|m| m.strip_prefix(key)?.strip_prefix(':'))
}

/// The `ot` entry's value in a tracestate, if any.
#[inline]
pub fn ot_value(trace_state: &str) -> Option<&str> {
    // Most tracestates carry no `ot` entry: a substring search (vectorised)
    // answers that before the member-by-member scan.
    if !trace_state.contains("ot=") {
        return None;
    }
    tracestate_get(trace_state, OT_KEY)
}

/// The threshold a tracestate carries (`ot=th:...`), if valid.
pub fn threshold_of(trace_state: &str) -> Option<Threshold> {
    ot_value(trace_state)
        .and_then(|ot| ot_get(ot, "th"))
        .and_then(Threshold::parse)
}

/// Where the randomness of a trace came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The `rv` sub-key of the `ot` tracestate entry.
    Explicit,
    /// The trace id, whose trace flags say its right-most 56 bits are random.
    TraceIdFlaggedRandom,
    /// The trace id without the random flag and with no `rv`: its bits are
    /// presumed random, as the specification asks, and the caller counts it.
    TraceIdPresumed,
}

/// A trace's randomness `R` and its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Randomness {
    pub value: u64,
    pub source: Source,
}

/// The randomness of a trace: `rv` from its `ot` tracestate entry when
/// present and valid, else the least significant 56 bits of the trace id.
#[inline]
pub fn randomness(trace_id: u128, trace_flags: u8, trace_state: &str) -> Randomness {
    if let Some(rv) = ot_value(trace_state)
        .and_then(|ot| ot_get(ot, "rv"))
        .and_then(parse_rv)
    {
        return Randomness {
            value: rv,
            source: Source::Explicit,
        };
    }
    Randomness {
        value: trace_id as u64 & RANDOMNESS_MASK,
        source: if trace_flags & FLAG_RANDOM != 0 {
            Source::TraceIdFlaggedRandom
        } else {
            Source::TraceIdPresumed
        },
    }
}

/// An `ot` value with `th` set to `th` (in place, or appended), every other
/// sub-key kept.
fn ot_with(ot: &str, th: &str) -> String {
    let mut out = String::with_capacity(ot.len() + th.len() + 4);
    let mut set = false;
    for m in ot.split(';').filter(|m| !m.is_empty()) {
        let is_th = m.starts_with("th:");
        if is_th && set {
            continue;
        }
        if !out.is_empty() {
            out.push(';');
        }
        if is_th {
            set = true;
            out.push_str("th:");
            out.push_str(th);
        } else {
            out.push_str(m);
        }
    }
    if !set {
        if !out.is_empty() {
            out.push(';');
        }
        out.push_str("th:");
        out.push_str(th);
    }
    out
}

/// `trace_state` with its `ot` entry carrying threshold `t` (the other
/// sub-keys, `rv` included, and the other vendors' entries kept; the `ot`
/// entry first). If the `ot` value would exceed 256 characters, the
/// threshold cannot be recorded: any old one is erased instead.
pub fn with_threshold(trace_state: &str, t: Threshold) -> String {
    let th = t.encode();
    let ot = ot_with(ot_value(trace_state).unwrap_or(""), th.as_str());
    if ot.len() > OT_MAX_LEN {
        return without_threshold(trace_state).unwrap_or_else(|| trace_state.to_owned());
    }
    tracestate_set(trace_state, OT_KEY, &ot)
}

/// `trace_state` without a `th` in its `ot` entry (the entry goes when
/// nothing is left in it), or `None` when it has none.
pub fn without_threshold(trace_state: &str) -> Option<String> {
    let ot = ot_value(trace_state)?;
    ot_get(ot, "th")?;
    let rest: Vec<&str> = ot
        .split(';')
        .filter(|m| !m.is_empty() && !m.starts_with("th:"))
        .collect();
    Some(if rest.is_empty() {
        tracestate_remove(trace_state, OT_KEY)
    } else {
        tracestate_set(trace_state, OT_KEY, &rest.join(";"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn th(p: f64) -> String {
        Threshold::from_probability(p).unwrap().to_string()
    }

    #[test]
    fn the_specification_examples_encode_exactly() {
        // "TraceState: Probability Sampling": 1-in-N probabilities, default
        // precision 4 (the table's middle column), and the smallest
        // probability, 2^-56.
        assert_eq!(th(1.0), "0");
        assert_eq!(th(0.5), "8");
        assert_eq!(th(1.0 / 3.0), "aaab");
        assert_eq!(th(0.25), "c");
        assert_eq!(th(0.1), "e666");
        assert_eq!(th(0.01), "fd70a");
        assert_eq!(th(0.001), "ffbe77");
        assert_eq!(th(1.0 / (1u64 << 56) as f64), "ffffffffffffff");
        // Its worked example: 1% with 5 digits of precision (one more for
        // the leading f) is 0xfd70a400000000, `th:fd70a4`.
        assert_eq!(
            Threshold::from_probability_with_precision(0.01, 5)
                .unwrap()
                .value(),
            0xfd70a400000000
        );
    }

    #[test]
    fn the_specification_table_at_precisions_3_4_5() {
        let table: [(f64, [&str; 3]); 8] = [
            (1.0 / 3.0, ["aab", "aaab", "aaaab"]),
            (0.2, ["ccd", "cccd", "ccccd"]),
            (0.1, ["e66", "e666", "e6666"]),
            (0.01, ["fd71", "fd70a", "fd70a4"]),
            (0.001, ["ffbe7", "ffbe77", "ffbe76d"]),
            (0.0001, ["fff972", "fff9724", "fff97247"]),
            (0.00001, ["ffff584", "ffff583a", "ffff583a5"]),
            (0.000001, ["ffffef4", "ffffef39", "ffffef391"]),
        ];
        for (p, want) in table {
            for (precision, want) in (3..=5).zip(want) {
                let t = Threshold::from_probability_with_precision(p, precision).unwrap();
                assert_eq!(t.to_string(), want, "p={p} precision {precision}");
            }
        }
    }

    #[test]
    fn thresholds_decode_to_the_specification_probabilities() {
        // The table's "actual probability" column, from the th values.
        for (th, p) in [
            ("0", 1.0),
            ("8", 0.5),
            ("aaab", 0.3333282470703125),
            ("e666", 0.100006103515625),
            ("fd70a", 0.010000228881835938),
            ("ffbe77", 0.0009999871253967285),
        ] {
            let t = Threshold::parse(th).unwrap();
            assert_eq!(t.probability(), p, "{th}");
            assert_eq!(t.to_string(), th, "round trip of {th}");
        }
        let min = Threshold::parse("ffffffffffffff").unwrap();
        assert_eq!(min.value(), MAX_ADJUSTED_COUNT - 1);
        assert_eq!(min.adjusted_count(), MAX_ADJUSTED_COUNT as f64);
        // OTEP 235's examples: th:4 is 75%, th:08 is 96.875%.
        assert_eq!(Threshold::parse("4").unwrap().probability(), 0.75);
        assert_eq!(Threshold::parse("08").unwrap().probability(), 0.96875);
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in ["", "g", "0x8", "8 ", "ffffffffffffff0", "E666", "-1"] {
            assert_eq!(Threshold::parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse_rv("6e6d1a75832a2f"), Some(0x6e6d1a75832a2f));
        for bad in ["6e6d1a75832a2", "6e6d1a75832a2f0", "6E6D1A75832A2F", ""] {
            assert_eq!(parse_rv(bad), None, "{bad:?}");
        }
        // No probability sampling below 2^-56 (or for nonsense).
        assert_eq!(Threshold::from_probability(0.0), None);
        assert_eq!(Threshold::from_probability(1e-18), None);
        assert_eq!(Threshold::from_probability(f64::NAN), None);
        assert_eq!(Threshold::from_probability(2.0), Some(Threshold::ALWAYS));
    }

    #[test]
    fn keep_when_randomness_is_at_least_the_threshold() {
        let half = Threshold::from_probability(0.5).unwrap();
        assert_eq!(half.value(), 0x80000000000000);
        // The boundary: the trace id's right-most 56 bits against T. The
        // bits above them (here 0xff) do not count.
        assert!(!half.keeps(randomness(0x7fffffffffffff, FLAG_RANDOM, "").value));
        assert!(half.keeps(randomness(0x80000000000000, FLAG_RANDOM, "").value));
        let id = 0x4bf92f3577b34da6_ff7fffffffffffff_u128;
        assert!(!half.keeps(randomness(id, FLAG_RANDOM, "").value));
        assert!(Threshold::ALWAYS.keeps(0));
        let min = Threshold::from_probability(1.0 / (1u64 << 56) as f64).unwrap();
        assert!(min.keeps(RANDOMNESS_MASK) && !min.keeps(RANDOMNESS_MASK - 1));
    }

    #[test]
    fn explicit_randomness_overrides_the_trace_id() {
        let id = 0x4bf92f3577b34da6_a3ffffffffffffff_u128;
        let r = randomness(id, 0, "congo=x,ot=th:8;rv:12121212121212");
        assert_eq!(r.value, 0x12121212121212);
        assert_eq!(r.source, Source::Explicit);
        // An invalid rv is ignored: the trace id decides, and is presumed random.
        let r = randomness(id, 0, "ot=rv:1212");
        assert_eq!(r.value, 0xffffffffffffff);
        assert_eq!(r.source, Source::TraceIdPresumed);
        assert_eq!(
            randomness(id, FLAG_RANDOM | FLAG_SAMPLED, "").source,
            Source::TraceIdFlaggedRandom
        );
    }

    #[test]
    fn the_threshold_is_written_into_the_ot_entry() {
        let t = Threshold::from_probability(0.25).unwrap();
        assert_eq!(with_threshold("", t), "ot=th:c");
        // Other vendors' entries stay, after ot; rv and unknown sub-keys stay.
        assert_eq!(
            with_threshold("rojo=00f067aa0ba902b7,ot=rv:ababababababab;x:y", t),
            "ot=rv:ababababababab;x:y;th:c,rojo=00f067aa0ba902b7"
        );
        // An older threshold is replaced where it was.
        assert_eq!(
            with_threshold("ot=th:8;rv:ababababababab,k=v", t),
            "ot=th:c;rv:ababababababab,k=v"
        );
        assert_eq!(threshold_of("k=v,ot=th:c;rv:ababababababab"), Some(t));
        assert_eq!(threshold_of("k=v,ot=th:xyz"), None);
        // Erasing: only th goes; an entry left empty goes too.
        assert_eq!(without_threshold("k=v"), None);
        assert_eq!(
            without_threshold("k=v,ot=th:8;rv:ababababababab").as_deref(),
            Some("ot=rv:ababababababab,k=v")
        );
        assert_eq!(without_threshold("k=v,ot=th:8").as_deref(), Some("k=v"));
    }

    #[test]
    fn a_threshold_that_does_not_fit_the_ot_entry_is_erased() {
        let long = format!("ot=x:{};th:8", "a".repeat(250));
        assert_eq!(
            with_threshold(&long, Threshold::ALWAYS),
            format!("ot=x:{}", "a".repeat(250))
        );
    }

    #[test]
    fn a_higher_probability_keeps_everything_a_lower_one_keeps() {
        let low = Threshold::from_probability(0.25).unwrap();
        let high = Threshold::from_probability(0.5).unwrap();
        for r in [
            0,
            0x7fffffffffffff,
            0x80000000000000,
            0xbfffffffffffff,
            0xc0000000000000,
            RANDOMNESS_MASK,
        ] {
            assert!(!low.keeps(r) || high.keeps(r), "{r:x}");
        }
    }
}
