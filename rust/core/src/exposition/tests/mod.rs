//! Rendering tests: golden outputs of both formats, then properties of
//! names, labels, buckets, exemplars and extra families.

use super::collect::{cumulative_buckets, Dist};
use super::text::write_seconds;
use super::*;
use crate::histogram::HistogramConfig;
use crate::registry::Registry;
use crate::span::{AttrValue, Attributes};
use crate::span::{SpanKind, StatusClass};
use crate::target::System;
use crate::target::TargetRef;
use std::collections::HashSet;
use std::sync::Arc;

pub(super) fn attrs(pairs: &[(&str, &str)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| (Arc::from(*k), AttrValue::Str(Arc::from(*v))))
        .collect()
}

pub(super) const TRACE: u128 = 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c;
pub(super) const SPAN: u64 = 0xb7ad_6b71_6920_3331;

pub(super) fn no_exemplars(_: &Entry) -> Vec<Option<Exemplar>> {
    Vec::new()
}

pub(super) fn ex(value_ns: u64, timestamp_unix_ns: u64) -> Exemplar {
    Exemplar {
        value_ns,
        trace_id: TRACE,
        span_id: SPAN,
        timestamp_unix_ns,
    }
}

pub(super) fn text(
    r: &Registry,
    exemplars: &ExemplarFn<'_>,
    extra: &[ExtraFamily],
    cfg: &ExpositionConfig,
    format: Format,
) -> String {
    let mut out = String::new();
    render(r, exemplars, extra, cfg, format, &mut out);
    out
}

/// The sample lines (no comments) whose name is `name`.
pub(super) fn lines<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .collect()
}

pub(super) fn value(line: &str) -> &str {
    let head = line.split(" # ").next().unwrap_or(line);
    head.rsplit(' ').next().unwrap_or("")
}

mod buckets;
mod golden;
mod labels;
