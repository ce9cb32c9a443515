//! Writing values: label pairs and escaping, HELP text, seconds as exact
//! decimals, floats, exemplars.

use super::Exemplar;
use std::fmt::Write as _;

/// Appends `,name="escaped value"` (no comma when `out` is empty).
pub(super) fn push_label(out: &mut String, name: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(name);
    out.push_str("=\"");
    escape_label_value(out, value);
    out.push('"');
}

/// Label values: `\` → `\\`, `"` → `\"`, newline → `\n` (both formats).
pub(super) fn escape_label_value(out: &mut String, s: &str) {
    if !s.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(s);
        return;
    }
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: `\` → `\\`, newline → `\n`; OpenMetrics also `"` → `\"`
/// (its HELP is an escaped string like a label value, while 0.0.4 rejects
/// any escape but those two).
pub(super) fn escape_help(out: &mut String, s: &str, om: bool) {
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if om => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Nanoseconds as exact decimal seconds: `0.5`, `12`, `0.000000003`.
pub(super) fn write_seconds(out: &mut String, ns: u128) {
    let secs = ns / 1_000_000_000;
    let mut frac = (ns % 1_000_000_000) as u32;
    let _ = write!(out, "{secs}");
    if frac != 0 {
        let mut width = 9;
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        let _ = write!(out, ".{frac:0width$}");
    }
}

/// A float as Prometheus spells it: `NaN`, `+Inf`, `-Inf`, integers without
/// a fraction, else the shortest representation that round-trips.
pub(super) fn write_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v == v.trunc() && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v:?}");
    }
}

/// ` # {trace_id="…",span_id="…"} <value s> [<timestamp s>]`
pub(super) fn write_exemplar(out: &mut String, e: &Exemplar) {
    let _ = write!(
        out,
        " # {{trace_id=\"{:032x}\",span_id=\"{:016x}\"}} ",
        e.trace_id, e.span_id
    );
    write_seconds(out, u128::from(e.value_ns));
    if e.timestamp_unix_ns != 0 {
        out.push(' ');
        write_seconds(out, u128::from(e.timestamp_unix_ns));
    }
}
