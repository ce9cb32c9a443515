//! W3C Trace Context: `traceparent` parsing and formatting, `tracestate`
//! validation, and reading and updating one member of a `tracestate` (the
//! updated member moves to the front; the list stays within the limits).
//! Input is untrusted: every malformed header is an `Err` (or `None`) with a
//! reason, never a panic (fuzzed by the proptests in `tests/sampling_props.rs`).

use std::fmt;

/// A parsed `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

/// Why a `traceparent` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceParentError {
    Length,
    Delimiter,
    Hex,
    Version,
    ZeroTraceId,
    ZeroSpanId,
}

impl fmt::Display for TraceParentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TraceParentError::Length => "wrong length",
            TraceParentError::Delimiter => "fields are not separated by '-'",
            TraceParentError::Hex => "a field is not lowercase hexadecimal",
            TraceParentError::Version => "version ff is invalid",
            TraceParentError::ZeroTraceId => "trace-id is all zeros",
            TraceParentError::ZeroSpanId => "parent-id is all zeros",
        })
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn parse_hex(bytes: &[u8]) -> Result<u128, TraceParentError> {
    let mut v: u128 = 0;
    for &b in bytes {
        v = (v << 4) | u128::from(hex_val(b).ok_or(TraceParentError::Hex)?);
    }
    Ok(v)
}

/// Parse a `traceparent` header value (surrounding whitespace allowed).
///
/// Version 00 must be exactly 55 characters. A higher version may carry more
/// fields after a `-`, which are ignored, as the specification asks.
pub fn parse_traceparent(header: &str) -> Result<TraceParent, TraceParentError> {
    let h = header.trim_matches(|c| c == ' ' || c == '\t').as_bytes();
    if h.len() < 55 {
        return Err(TraceParentError::Length);
    }
    if h[2] != b'-' || h[35] != b'-' || h[52] != b'-' {
        return Err(TraceParentError::Delimiter);
    }
    let version = parse_hex(&h[0..2])? as u8;
    if version == 0xff {
        return Err(TraceParentError::Version);
    }
    if version == 0 && h.len() != 55 {
        return Err(TraceParentError::Length);
    }
    if version > 0 && h.len() > 55 && h[55] != b'-' {
        return Err(TraceParentError::Delimiter);
    }
    let trace_id = parse_hex(&h[3..35])?;
    let span_id = parse_hex(&h[36..52])? as u64;
    let flags = parse_hex(&h[53..55])? as u8;
    if trace_id == 0 {
        return Err(TraceParentError::ZeroTraceId);
    }
    if span_id == 0 {
        return Err(TraceParentError::ZeroSpanId);
    }
    Ok(TraceParent {
        trace_id,
        span_id,
        flags,
    })
}

/// Format a version-00 `traceparent`.
pub fn format_traceparent(trace_id: u128, span_id: u64, flags: u8) -> String {
    format!("00-{trace_id:032x}-{span_id:016x}-{flags:02x}")
}

/// Maximum `tracestate` length the specification asks vendors to propagate.
pub const TRACESTATE_MAX_LEN: usize = 512;
const TRACESTATE_MAX_MEMBERS: usize = 32;

fn valid_key(key: &str) -> bool {
    let (tenant, system) = match key.split_once('@') {
        Some((t, s)) => (t, Some(s)),
        None => (key, None),
    };
    let simple = |s: &str, max: usize, first_digit_ok: bool| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes().enumerate().all(|(i, b)| match b {
                b'a'..=b'z' => true,
                b'0'..=b'9' => i > 0 || first_digit_ok,
                b'_' | b'-' | b'*' | b'/' => i > 0,
                _ => false,
            })
    };
    match system {
        None => simple(tenant, 256, false),
        Some(sys) => simple(tenant, 241, true) && simple(sys, 14, false),
    }
}

fn valid_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && value
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && !value.ends_with(' ')
}

/// Validate and normalise a `tracestate` value: returns the members joined by
/// `,` with optional whitespace removed, or `None` when it is invalid (the
/// specification says to discard the whole header then).
pub fn normalize_tracestate(header: &str) -> Option<String> {
    if header.len() > TRACESTATE_MAX_LEN * 2 {
        return None;
    }
    let mut out = String::with_capacity(header.len());
    let mut members = 0usize;
    for member in header.split(',') {
        let member = member.trim_matches(|c| c == ' ' || c == '\t');
        if member.is_empty() {
            continue;
        }
        let (k, v) = member.split_once('=')?;
        if !valid_key(k) || !valid_value(v) {
            return None;
        }
        members += 1;
        if members > TRACESTATE_MAX_MEMBERS {
            return None;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(member);
    }
    if out.len() > TRACESTATE_MAX_LEN {
        return None;
    }
    Some(out)
}

/// Members whose value is longer than this are the first to go when a
/// `tracestate` must be shortened (W3C Trace Context, "tracestate limits").
const TRACESTATE_LONG_MEMBER: usize = 128;

fn members(state: &str) -> impl Iterator<Item = &str> {
    state
        .split(',')
        .map(|m| m.trim_matches(|c| c == ' ' || c == '\t'))
        .filter(|m| !m.is_empty())
}

fn member_key(member: &str) -> &str {
    member.split_once('=').map_or(member, |(k, _)| k)
}

/// The value of the member `key` of a `tracestate` (the first one, if a
/// malformed list repeats it).
pub fn tracestate_get<'a>(state: &'a str, key: &str) -> Option<&'a str> {
    // A plain byte scan: this runs for every span started under a remote
    // parent that sent a tracestate.
    let (b, k) = (state.as_bytes(), key.as_bytes());
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        let end = b[i..]
            .iter()
            .position(|&c| c == b',')
            .map_or(b.len(), |p| i + p);
        let member = &b[i..end];
        if member.len() > k.len() && member.starts_with(k) && member[k.len()] == b'=' {
            // Both bounds are next to ASCII bytes: char boundaries.
            return Some(state[i + k.len() + 1..end].trim_end_matches([' ', '\t']));
        }
        i = end + 1;
    }
    None
}

/// `state` with `key=value` as its first member and no other `key` member:
/// W3C Trace Context moves an updated member to the front. If that makes the
/// list exceed 32 members or 512 characters, members are removed from the
/// right (for the length, those longer than 128 characters first), so the
/// result is still propagated whole.
pub fn tracestate_set(state: &str, key: &str, value: &str) -> String {
    let mut rest: Vec<&str> = members(state).filter(|m| member_key(m) != key).collect();
    let first = key.len() + 1 + value.len();
    let len = |rest: &[&str]| first + rest.iter().map(|m| m.len() + 1).sum::<usize>();
    rest.truncate(TRACESTATE_MAX_MEMBERS - 1);
    while len(&rest) > TRACESTATE_MAX_LEN && !rest.is_empty() {
        let long = rest
            .iter()
            .rposition(|m| m.len() > TRACESTATE_LONG_MEMBER)
            .unwrap_or(rest.len() - 1);
        rest.remove(long);
    }
    let mut out = String::with_capacity(len(&rest));
    out.push_str(key);
    out.push('=');
    out.push_str(value);
    for m in rest {
        out.push(',');
        out.push_str(m);
    }
    out
}

/// `state` without its `key` member(s), the others in their order.
pub fn tracestate_remove(state: &str, key: &str) -> String {
    let mut out = String::with_capacity(state.len());
    for m in members(state).filter(|m| member_key(m) != key) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specification_example() {
        let tp = parse_traceparent(GOOD).unwrap();
        assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.span_id, 0x00f067aa0ba902b7);
        assert_eq!(tp.flags, 1);
        assert_eq!(format_traceparent(tp.trace_id, tp.span_id, tp.flags), GOOD);
    }

    #[test]
    fn refuses_malformed_headers() {
        let cases = [
            ("", TraceParentError::Length),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
                TraceParentError::Length,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                TraceParentError::Length,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::Delimiter,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                TraceParentError::Hex,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                TraceParentError::Hex,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::Version,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceParentError::ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceParentError::ZeroSpanId,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                TraceParentError::Delimiter,
            ),
        ];
        for (h, e) in cases {
            assert_eq!(parse_traceparent(h), Err(e), "{h:?}");
        }
    }

    #[test]
    fn future_versions_may_carry_more_fields() {
        let h = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(parse_traceparent(h).is_ok());
    }

    #[test]
    fn tracestate_is_validated_and_normalised() {
        assert_eq!(
            normalize_tracestate("rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE").as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert_eq!(
            normalize_tracestate("tenant@vendor=x").as_deref(),
            Some("tenant@vendor=x")
        );
        assert_eq!(normalize_tracestate(""), Some(String::new()));
        assert_eq!(normalize_tracestate("Bad=1"), None);
        assert_eq!(normalize_tracestate("novalue"), None);
        assert_eq!(normalize_tracestate("k=a,b"), None);
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(normalize_tracestate(&many.join(",")), None);
    }

    #[test]
    fn a_member_is_read_updated_and_moved_to_the_front() {
        let state = "rojo=00f067aa0ba902b7,ot=rv:6e6d1a75832a2f,congo=t61rcWkgMzE";
        assert_eq!(tracestate_get(state, "ot"), Some("rv:6e6d1a75832a2f"));
        assert_eq!(tracestate_get(state, "o"), None);
        assert_eq!(tracestate_get("", "ot"), None);
        assert_eq!(
            tracestate_set(state, "ot", "rv:6e6d1a75832a2f;th:8"),
            "ot=rv:6e6d1a75832a2f;th:8,rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        );
        assert_eq!(tracestate_set("", "ot", "th:c"), "ot=th:c");
        assert_eq!(
            tracestate_remove(state, "ot"),
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        );
        assert_eq!(tracestate_remove("ot=th:8", "ot"), "");
    }

    #[test]
    fn an_update_keeps_the_list_within_the_limits() {
        // 32 members: the new one goes first and the right-most goes.
        let full: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        let out = tracestate_set(&full.join(","), "ot", "th:8");
        let members: Vec<&str> = out.split(',').collect();
        assert_eq!(members.len(), 32);
        assert_eq!(members[0], "ot=th:8");
        assert_eq!(members[31], "k30=v");
        assert!(normalize_tracestate(&out).is_some());
        // 512 characters: a member longer than 128 goes before the others.
        let long = format!("long={}", "x".repeat(200));
        let short: Vec<String> = (0..20)
            .map(|i| format!("s{i}={}", "y".repeat(10)))
            .collect();
        let state = format!("{},{long},{}", short[..10].join(","), short[10..].join(","));
        let state = format!("{state},pad={}", "z".repeat(512 - state.len() - 5));
        assert_eq!(state.len(), 512);
        assert!(normalize_tracestate(&state).is_some());
        let out = tracestate_set(&state, "ot", "th:8");
        assert!(out.len() <= TRACESTATE_MAX_LEN, "{}", out.len());
        assert!(!out.contains("long="));
        // Only the long member had to go: the others stay, in their order.
        let kept: Vec<&str> = out.split(',').skip(1).collect();
        let mut want: Vec<&str> = short.iter().map(String::as_str).collect();
        let pad = state.rsplit(',').next().unwrap();
        want.push(pad);
        assert_eq!(kept, want);
        assert!(normalize_tracestate(&out).is_some());
    }
}
