//! Property tests of the Prometheus / OpenMetrics renderer: random registries
//! (operation names with any Unicode, quotes, backslashes, newlines; targets
//! of every system with such values; random durations; overflow) render to text that a strict hand-written parser of
//! the exposition formats accepts, with consistent histograms. Plus
//! `promtool_accepts_prometheus_004_and_openmetrics_exposition`, which runs
//! the real Prometheus tooling on a varied rendering (promtool must be
//! installed: Debian package `prometheus`).

use proptest::prelude::*;
use pulsetrace_core::exposition::{
    health_families, render, Exemplar, ExpositionConfig, ExtraFamily, ExtraKind, Format,
};
use pulsetrace_core::histogram::HistogramConfig;
use pulsetrace_core::registry::{Entry, Registry};
use pulsetrace_core::span::{SpanKind, StatusClass};
use pulsetrace_core::target::{System, Target, TargetRef};
use std::collections::{BTreeMap, HashMap, HashSet};

// ---------------------------------------------------------------------------
// A strict parser of the two text formats.
// ---------------------------------------------------------------------------

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
    /// OpenMetrics only: (labels, value, timestamp).
    exemplar: Option<(Labels, f64, Option<f64>)>,
}

#[derive(Debug, Default)]
struct Family {
    name: String,
    kind: String,
    help: Option<String>,
    unit: Option<String>,
    samples: Vec<Sample>,
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        match self.bump() {
            Some(got) if got == c => Ok(()),
            got => Err(format!(
                "expected {c:?} at {} in {:?}, got {got:?}",
                self.pos, self.s
            )),
        }
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn name(&mut self, colon: bool) -> Result<String, String> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            let ok = c.is_ascii_alphabetic()
                || c == '_'
                || (colon && c == ':')
                || (self.pos > start && c.is_ascii_digit());
            if !ok {
                break;
            }
            self.bump();
        }
        if self.pos == start {
            return Err(format!("empty name at {} in {:?}", start, self.s));
        }
        Ok(self.s[start..self.pos].to_string())
    }

    /// A quoted label value with only `\\`, `\"` and `\n` escapes.
    fn quoted(&mut self) -> Result<String, String> {
        self.expect('"')?;
        let mut out = String::new();
        loop {
            match self.bump() {
                None => return Err("unterminated label value".into()),
                Some('"') => return Ok(out),
                Some('\n') => return Err("raw newline in label value".into()),
                Some('\\') => match self.bump() {
                    Some('\\') => out.push('\\'),
                    Some('"') => out.push('"'),
                    Some('n') => out.push('\n'),
                    e => return Err(format!("invalid escape \\{e:?} in {:?}", self.s)),
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn labels(&mut self) -> Result<Labels, String> {
        let mut out: Labels = Vec::new();
        if self.peek() != Some('{') {
            return Ok(out);
        }
        self.bump();
        if self.peek() == Some('}') {
            self.bump();
            return Ok(out);
        }
        loop {
            let name = self.name(false)?;
            self.expect('=')?;
            let value = self.quoted()?;
            if out.iter().any(|(n, _)| *n == name) {
                return Err(format!("duplicate label {name} in {:?}", self.s));
            }
            out.push((name, value));
            match self.bump() {
                Some(',') => continue,
                Some('}') => return Ok(out),
                c => return Err(format!("expected , or }} got {c:?} in {:?}", self.s)),
            }
        }
    }

    /// A number token up to the next space or the end.
    fn number(&mut self) -> Result<f64, String> {
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c != ' ') {
            self.bump();
        }
        parse_number(&self.s[start..self.pos])
    }
}

/// `NaN`, `+Inf`, `-Inf` or a decimal float (Rust's parser alone would also
/// take `inf`, `nan`, `infinity`, which Prometheus does not write).
fn parse_number(t: &str) -> Result<f64, String> {
    match t {
        "NaN" => return Ok(f64::NAN),
        "+Inf" => return Ok(f64::INFINITY),
        "-Inf" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    let body = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (mantissa, exp) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (body, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((i, f)) => digits(i) && (f.is_empty() || digits(f)),
        None => digits(mantissa),
    };
    let exp_ok = exp.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    if !mantissa_ok || !exp_ok {
        return Err(format!("bad number {t:?}"));
    }
    t.parse().map_err(|e| format!("bad number {t:?}: {e}"))
}

fn unescape_help(s: &str, om: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' => match it.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('"') if om => out.push('"'),
                e => return Err(format!("invalid HELP escape \\{e:?}")),
            },
            '"' if om => return Err("unescaped quote in OpenMetrics HELP".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The sample names a family of `kind` named `family` may have.
fn allowed_sample(family: &str, kind: &str, name: &str, om: bool) -> bool {
    match kind {
        "histogram" => ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_prefix(family) == Some(s)),
        "counter" if om => name.strip_prefix(family) == Some("_total"),
        "counter" => name == family && family.ends_with("_total"),
        _ => name == family,
    }
}

/// Byte offset just after the value of a sample line (where a timestamp
/// would go). The line must parse.
fn value_end(line: &str) -> usize {
    let mut c = Cursor { s: line, pos: 0 };
    c.name(true).unwrap();
    c.labels().unwrap();
    c.expect(' ').unwrap();
    c.number().unwrap();
    c.pos
}

fn parse(text: &str, format: Format) -> Result<Vec<Family>, String> {
    let om = format == Format::OpenMetrics100;
    if text.is_empty() {
        return if om {
            Err("no # EOF".into())
        } else {
            Ok(Vec::new())
        };
    }
    let body = text.strip_suffix('\n').ok_or("no final newline")?;
    let mut lines: Vec<&str> = body.split('\n').collect();
    if om {
        if lines.pop() != Some("# EOF") {
            return Err("OpenMetrics must end with # EOF".into());
        }
        if lines.contains(&"# EOF") {
            return Err("# EOF before the end".into());
        }
    }
    let mut families: Vec<Family> = Vec::new();
    let mut series: HashSet<(String, Labels)> = HashSet::new();
    for line in lines {
        if let Some(meta) = line.strip_prefix("# ") {
            let (what, rest) = meta
                .split_once(' ')
                .ok_or(format!("bad comment {line:?}"))?;
            let (name, arg) = rest.split_once(' ').unwrap_or((rest, ""));
            let mut c = Cursor { s: name, pos: 0 };
            if c.name(true)? != name {
                return Err(format!("bad family name {name:?}"));
            }
            if families.last().is_none_or(|f| f.name != name) {
                if families.iter().any(|f| f.name == name) {
                    return Err(format!("family {name} appears twice"));
                }
                families.push(Family {
                    name: name.to_string(),
                    kind: "untyped".into(),
                    ..Family::default()
                });
            }
            let f = families.last_mut().unwrap();
            if !f.samples.is_empty() {
                return Err(format!("metadata after samples in {name}"));
            }
            match what {
                "HELP" => {
                    if f.help.is_some() {
                        return Err(format!("two HELP for {name}"));
                    }
                    f.help = Some(unescape_help(arg, om)?);
                }
                "TYPE" => {
                    let ok = ["counter", "gauge", "histogram", "summary"].contains(&arg)
                        || arg == if om { "unknown" } else { "untyped" };
                    if !ok {
                        return Err(format!("bad type {arg:?}"));
                    }
                    f.kind = arg.to_string();
                }
                "UNIT" if om => {
                    if !name.ends_with(&format!("_{arg}")) {
                        return Err(format!("unit {arg} is not a suffix of {name}"));
                    }
                    f.unit = Some(arg.to_string());
                }
                _ => return Err(format!("unknown comment {line:?}")),
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(format!("stray line {line:?}"));
        }
        let mut c = Cursor { s: line, pos: 0 };
        let name = c.name(true)?;
        let labels = c.labels()?;
        c.expect(' ')?;
        let value = c.number()?;
        let mut exemplar = None;
        if !c.rest().is_empty() {
            if !om {
                return Err(format!("trailing text in 0.0.4 sample {line:?}"));
            }
            let ex = c
                .rest()
                .strip_prefix(" # ")
                .ok_or(format!("trailing text {line:?}"))?;
            let mut e = Cursor { s: ex, pos: 0 };
            if e.peek() != Some('{') {
                return Err(format!("exemplar without labels {line:?}"));
            }
            let el = e.labels()?;
            let len: usize = el
                .iter()
                .map(|(k, v)| k.chars().count() + v.chars().count())
                .sum();
            if len > 128 {
                return Err("exemplar labels over 128 characters".into());
            }
            e.expect(' ')?;
            let ev = e.number()?;
            let ts = if e.rest().is_empty() {
                None
            } else {
                e.expect(' ')?;
                Some(e.number()?)
            };
            if !e.rest().is_empty() {
                return Err(format!("trailing text after exemplar {line:?}"));
            }
            if !name.ends_with("_bucket") {
                return Err(format!("exemplar on a non-bucket line {line:?}"));
            }
            exemplar = Some((el, ev, ts));
        }
        let f = families.last_mut().ok_or("sample before any metadata")?;
        if !allowed_sample(&f.name, &f.kind, &name, om) {
            return Err(format!(
                "sample {name} does not belong to {} {}",
                f.kind, f.name
            ));
        }
        let mut key = labels.clone();
        key.sort();
        if !series.insert((name.clone(), key)) {
            return Err(format!("duplicate series {line:?}"));
        }
        f.samples.push(Sample {
            name,
            labels,
            value,
            exemplar,
        });
    }
    for w in families.windows(2) {
        if w[0].name >= w[1].name {
            return Err(format!(
                "families not sorted: {} then {}",
                w[0].name, w[1].name
            ));
        }
    }
    Ok(families)
}

/// One histogram series: its labels (without `le`), buckets, sum, count.
#[derive(Debug, Default)]
struct HistSeries {
    buckets: Vec<(f64, f64, Option<f64>)>,
    sum: Option<f64>,
    count: Option<f64>,
}

fn histograms(f: &Family) -> Result<BTreeMap<Labels, HistSeries>, String> {
    let mut out: BTreeMap<Labels, HistSeries> = BTreeMap::new();
    for s in &f.samples {
        let mut labels: Labels = s
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect();
        labels.sort();
        let h = out.entry(labels).or_default();
        if s.name.ends_with("_bucket") {
            let le = s
                .labels
                .iter()
                .find(|(k, _)| k == "le")
                .ok_or("bucket without le")?;
            let le = parse_number(&le.1)?;
            h.buckets
                .push((le, s.value, s.exemplar.as_ref().map(|e| e.1)));
        } else if s.name.ends_with("_sum") {
            h.sum = Some(s.value);
        } else {
            h.count = Some(s.value);
        }
    }
    for (labels, h) in &out {
        let (sum, count) = (h.sum.ok_or("no _sum")?, h.count.ok_or("no _count")?);
        if sum.is_nan() || sum < 0.0 {
            return Err(format!("bad sum {sum}"));
        }
        let mut prev = (f64::NEG_INFINITY, 0.0);
        for &(le, c, ex) in &h.buckets {
            if le.is_nan() || le <= prev.0 {
                return Err(format!("le not increasing in {labels:?}"));
            }
            if c < prev.1 {
                return Err(format!(
                    "bucket counts decrease in {labels:?}: {:?}",
                    h.buckets
                ));
            }
            if let Some(v) = ex {
                if v > le || v <= prev.0 {
                    return Err(format!("exemplar {v} outside ({}, {le}]", prev.0));
                }
            }
            prev = (le, c);
        }
        if prev.0 != f64::INFINITY || prev.1 != count {
            return Err(format!("+Inf bucket {prev:?} != count {count}"));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Random registries.
// ---------------------------------------------------------------------------

fn family_of(kind: SpanKind, system: System, ns: &str) -> String {
    let p = if ns.is_empty() {
        String::new()
    } else {
        format!("{ns}_")
    };
    match (kind, system) {
        (SpanKind::Server, _) => "http_server_request_duration_seconds".into(),
        (SpanKind::Internal, _) => format!("{p}internal_operation_duration_seconds"),
        (SpanKind::Client, System::Http) => "http_client_request_duration_seconds".into(),
        (SpanKind::Client, System::Db) => "db_client_operation_duration_seconds".into(),
        (SpanKind::Consumer, System::Messaging) => "messaging_process_duration_seconds".into(),
        (_, System::Messaging) => "messaging_client_operation_duration_seconds".into(),
        (SpanKind::Client, _) => format!("{p}client_operation_duration_seconds"),
        (SpanKind::Producer | SpanKind::Consumer, _) => {
            format!("{p}messaging_operation_duration_seconds")
        }
    }
}

/// The labels of a histogram series (`class`) or of its operation's
/// counters and quantiles (`None`), sorted.
fn series_key(
    kind: SpanKind,
    op: &str,
    target: &Target,
    class: Option<StatusClass>,
    consts: &Labels,
) -> Labels {
    let family = family_of(kind, target.system(), "");
    let mut l: Labels = vec![("operation".into(), op.into())];
    if let Some(class) = class {
        l.push(("status_class".into(), class.as_str().into()));
        let http = !matches!(class, StatusClass::Ok | StatusClass::Error);
        if http && family == "http_client_request_duration_seconds" {
            l.push(("http_response_status_code".into(), class.as_str().into()));
        }
    }
    if family == "messaging_operation_duration_seconds" {
        l.push(("kind".into(), kind.as_str().into()));
    }
    let shows_target = matches!(
        (kind, target.system()),
        (SpanKind::Client, System::Http | System::Db)
            | (
                SpanKind::Client | SpanKind::Producer | SpanKind::Consumer,
                System::Messaging
            )
    );
    if shows_target {
        for (_, label, value) in target.view().labels() {
            l.push((label.into(), value.into()));
        }
    }
    l.extend(consts.iter().cloned());
    l.sort();
    l
}

/// Expected (count, sum ns) per (histogram family, labels), from the
/// registry's own snapshots.
fn expected(r: &Registry, ns: &str, consts: &Labels) -> HashMap<(String, Labels), (u64, u128)> {
    let mut out: HashMap<(String, Labels), (u64, u128)> = HashMap::new();
    for e in r.entries() {
        let s = e.histogram.snapshot();
        let key = (
            family_of(e.kind, e.target.system(), ns),
            series_key(e.kind, &e.name, &e.target, Some(e.class), consts),
        );
        let acc = out.entry(key).or_default();
        acc.0 += s.count();
        acc.1 += s.sum_ns();
    }
    out
}

/// The merged snapshot of every (quantile family, labels without `q`).
fn merged_by_operation(
    r: &Registry,
    ns: &str,
    consts: &Labels,
) -> HashMap<(String, Labels), pulsetrace_core::histogram::Snapshot> {
    let mut out: HashMap<(String, Labels), pulsetrace_core::histogram::Snapshot> = HashMap::new();
    for e in r.entries() {
        let family =
            family_of(e.kind, e.target.system(), ns).replace("_seconds", "_quantile_seconds");
        let labels = series_key(e.kind, &e.name, &e.target, None, consts);
        let s = e.histogram.snapshot();
        match out.entry((family, labels)) {
            std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().merge(&s).unwrap(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(s);
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
struct Key {
    kind: SpanKind,
    name: String,
    /// (system, values) of its target.
    target: (System, [Option<String>; 3]),
    class: StatusClass,
    durations: Vec<u64>,
}

impl Key {
    fn target(&self) -> TargetRef<'_> {
        let (system, values) = &self.target;
        TargetRef::new(*system, std::array::from_fn(|i| values[i].as_deref()))
    }
}

fn target() -> impl Strategy<Value = (System, [Option<String>; 3])> {
    let value = || prop::option::of(op_name());
    prop_oneof![
        Just((System::None, [None, None, None])),
        (0usize..4, value(), value(), value()).prop_map(|(s, a, b, c)| (System::ALL[s], [a, b, c])),
    ]
}

fn op_name() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(?s).{0,12}",
        "[a-z\"\\\\\n{}=, /#é]{0,12}",
        Just("(overflow)".to_string()),
        Just(String::new()),
        Just("GET /users/{id}".to_string()),
    ]
}

fn duration() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..1_000_000,
        0u64..20_000_000_000,
        Just(5_000_000),
        any::<u64>(),
    ]
}

fn key() -> impl Strategy<Value = Key> {
    (
        0u8..5,
        op_name(),
        target(),
        0u8..7,
        prop::collection::vec(duration(), 1..12),
    )
        .prop_map(|(k, name, target, c, durations)| Key {
            kind: SpanKind::from_u8(k).unwrap(),
            name,
            target,
            class: StatusClass::from_u8(c).unwrap(),
            durations,
        })
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        (0u64..1_000_000).prop_map(|v| v as f64),
    ]
}

fn extra() -> impl Strategy<Value = ExtraFamily> {
    (
        "(?s).{0,10}",
        "(?s).{0,20}",
        any::<bool>(),
        prop::collection::vec(
            (
                prop::collection::vec(("(?s).{0,6}", "(?s).{0,6}"), 0..3),
                value(),
            ),
            0..4,
        ),
    )
        .prop_map(|(name, help, counter, samples)| ExtraFamily {
            name,
            help,
            kind: if counter {
                ExtraKind::Counter
            } else {
                ExtraKind::Gauge
            },
            samples,
        })
}

fn build(keys: &[Key], max_keys: usize) -> Registry {
    let r = Registry::new(HistogramConfig::default(), max_keys);
    for k in keys {
        for &d in &k.durations {
            r.record_target(k.kind, &k.name, k.target(), k.class, d);
        }
    }
    r
}

type KeyId = (SpanKind, String, Target, StatusClass);

/// Exemplars from what each key recorded, in arbitrary slots.
fn exemplar_source(keys: &[Key]) -> impl Fn(&Entry) -> Vec<Option<Exemplar>> {
    let mut by_key: HashMap<KeyId, Vec<u64>> = HashMap::new();
    for k in keys {
        by_key
            .entry((
                k.kind,
                k.name.clone(),
                k.target().to_owned_target(),
                k.class,
            ))
            .or_default()
            .extend(&k.durations);
    }
    move |e: &Entry| {
        by_key
            .get(&(e.kind, e.name.to_string(), e.target.clone(), e.class))
            .map(|ds| {
                ds.iter()
                    .enumerate()
                    .map(|(i, &d)| {
                        (i % 3 != 2).then_some(Exemplar {
                            value_ns: d,
                            trace_id: u128::from(d) << 64 | i as u128,
                            span_id: d ^ 0x5555,
                            timestamp_unix_ns: d.wrapping_mul(31),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn check_rendering(
    r: &Registry,
    keys: &[Key],
    cfg: &ExpositionConfig,
    extra: &[ExtraFamily],
    format: Format,
) -> Result<(), TestCaseError> {
    let mut out = String::new();
    render(r, &exemplar_source(keys), extra, cfg, format, &mut out);
    let families = parse(&out, format).map_err(|e| TestCaseError::fail(format!("{e}\n{out}")))?;
    let consts: Labels = {
        let mut seen = HashSet::new();
        cfg.const_labels
            .iter()
            .map(|(k, v)| {
                (
                    pulsetrace_core::exposition::sanitize_label_name(k),
                    v.clone(),
                )
            })
            .filter(|(k, _)| seen.insert(k.clone()))
            .filter(|(k, _)| {
                ![
                    "operation",
                    "kind",
                    "status_class",
                    "le",
                    "q",
                    "quantile",
                    "http_response_status_code",
                ]
                .contains(&k.as_str())
                    && !pulsetrace_core::target::label_names().any(|l| l == k)
            })
            .collect()
    };
    let want = expected(r, &cfg.namespace, &consts);
    let mut seen_series = 0;
    let mut total = 0f64;
    for f in families.iter().filter(|f| f.kind == "histogram") {
        let hs = histograms(f).map_err(|e| TestCaseError::fail(format!("{e}\n{out}")))?;
        for (labels, h) in hs {
            let (count, sum_ns) = want
                .get(&(f.name.clone(), labels.clone()))
                .copied()
                .ok_or_else(|| TestCaseError::fail(format!("unexpected series {labels:?}")))?;
            prop_assert_eq!(h.count, Some(count as f64));
            let sum = h.sum.unwrap();
            let want_sum = sum_ns as f64 / 1e9;
            prop_assert!(
                (sum - want_sum).abs() <= want_sum * 1e-12,
                "sum {} vs {}",
                sum,
                want_sum
            );
            seen_series += 1;
            total += count as f64;
            if format == Format::Prometheus004 {
                prop_assert!(h.buckets.iter().all(|b| b.2.is_none()));
            }
        }
    }
    prop_assert_eq!(seen_series, want.len(), "every registry series is rendered");

    // Quantile gauges: value_at_quantile of the operation's merged classes.
    let merged = merged_by_operation(r, &cfg.namespace, &consts);
    let mut quantile_series = 0;
    for f in families
        .iter()
        .filter(|f| f.name.ends_with("_quantile_seconds"))
    {
        prop_assert_eq!(&f.kind, "gauge");
        for s in &f.samples {
            let q = s
                .labels
                .iter()
                .find(|(k, _)| k == "q")
                .map(|(_, v)| v.clone());
            let q: f64 = parse_number(&q.unwrap_or_default()).map_err(TestCaseError::fail)?;
            let mut labels: Labels = s.labels.iter().filter(|(k, _)| k != "q").cloned().collect();
            labels.sort();
            let snap = merged
                .get(&(f.name.clone(), labels.clone()))
                .ok_or_else(|| {
                    TestCaseError::fail(format!("unexpected quantile series {labels:?}"))
                })?;
            if snap.count() == 0 {
                prop_assert!(s.value.is_nan());
            } else {
                let want = snap.value_at_quantile(q) as f64 / 1e9;
                prop_assert!(
                    (s.value - want).abs() <= want * 1e-12,
                    "q{} {} vs {}",
                    q,
                    s.value,
                    want
                );
            }
            quantile_series += 1;
        }
    }
    prop_assert_eq!(quantile_series, merged.len() * cfg.quantiles.len());
    let recorded: usize = keys.iter().map(|k| k.durations.len()).sum();
    prop_assert_eq!(total, recorded as f64);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_registries_render_parseable_consistent_text(
        keys in prop::collection::vec(key(), 0..20),
        max_keys in 1usize..30,
        consts in prop::collection::vec(("(?s).{0,8}", "(?s).{0,8}"), 0..3),
        ns in prop_oneof![Just(String::new()), Just("pulsetrace".to_string()), "[a-z]{1,5}"],
        extras in prop::collection::vec(extra(), 0..4),
        buckets in prop_oneof![
            Just(pulsetrace_core::exposition::DEFAULT_BUCKETS_S.to_vec()),
            prop::collection::vec(any::<f64>(), 0..6),
        ],
    ) {
        let r = build(&keys, max_keys);
        let cfg = ExpositionConfig {
            buckets_s: buckets,
            namespace: ns,
            const_labels: consts,
            ..ExpositionConfig::default()
        };
        let mut extra = extras;
        extra.extend(health_families(&cfg, &r, &[("spans_exported", "spans exported", 3)]));
        for format in [Format::Prometheus004, Format::OpenMetrics100] {
            check_rendering(&r, &keys, &cfg, &extra, format)?;
        }
    }

    #[test]
    fn operation_labels_round_trip_exactly(names in prop::collection::vec(op_name(), 1..10)) {
        let r = Registry::new(HistogramConfig::default(), 1000);
        for n in &names {
            r.record(SpanKind::Internal, n, StatusClass::Ok, 1_000);
        }
        let mut out = String::new();
        render(&r, &|_: &Entry| Vec::new(), &[], &ExpositionConfig::default(), Format::OpenMetrics100, &mut out);
        let families = parse(&out, Format::OpenMetrics100).map_err(TestCaseError::fail)?;
        let counter = families
            .iter()
            .find(|f| f.name == "pulsetrace_internal_operations")
            .ok_or_else(|| TestCaseError::fail("no operations counter"))?;
        let got: Vec<&str> = counter
            .samples
            .iter()
            .map(|s| s.labels.iter().find(|(k, _)| k == "operation").unwrap().1.as_str())
            .collect();
        let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
        want.sort();
        want.dedup();
        prop_assert_eq!(got, want, "series sorted by operation, one per name");
    }
}

#[test]
fn parser_rejects_malformed_text() {
    let bad_004 = [
        "x 1\n",                                      // no metadata
        "# TYPE x gauge\nx{a=\"\\t\"} 1\n",           // bad escape
        "# TYPE x gauge\nx{a=\"1\",a=\"2\"} 1\n",     // duplicate label
        "# TYPE x gauge\nx inf\n",                    // not a Prometheus number
        "# TYPE x gauge\nx 1 # {a=\"b\"} 1\n",        // exemplar in 0.0.4
        "# TYPE x counter\nx 1\n",                    // 0.0.4 counter without _total
        "# TYPE b gauge\nb 1\n# TYPE a gauge\na 1\n", // unsorted
        "# TYPE x gauge\nx 1\nx 2\n",                 // duplicate series
        "# TYPE x gauge\nx 1",                        // no final newline
    ];
    for t in bad_004 {
        assert!(parse(t, Format::Prometheus004).is_err(), "{t:?}");
    }
    let bad_om = [
        "# TYPE x gauge\nx 1\n",                  // no EOF
        "# TYPE x counter\nx 1\n# EOF\n",         // counter sample without _total
        "# HELP x a\"b\n# TYPE x gauge\n# EOF\n", // unescaped quote in OM HELP
        "# TYPE x_seconds gauge\n# UNIT x_seconds bytes\n# EOF\n",
        "# TYPE x gauge\nx 1 # {a=\"b\"} 1\n# EOF\n", // exemplar off a bucket
    ];
    for t in bad_om {
        assert!(parse(t, Format::OpenMetrics100).is_err(), "{t:?}");
    }
    let good =
        "# HELP x_total a \\\\ b\n# TYPE x_total counter\nx_total{a=\"\\\"\\n\\\\\"} 1.5e3\n";
    assert!(parse(good, Format::Prometheus004).is_ok());
}

// ---------------------------------------------------------------------------
// promtool
// ---------------------------------------------------------------------------

/// A registry touching every family, status class, escaping case, the
/// overflow merge, exemplars, constant labels and extra families.
fn varied() -> (Registry, Vec<Key>, ExpositionConfig, Vec<ExtraFamily>) {
    let names = [
        "GET /users/{id}",
        "POST /orders",
        "SELECT \"users\" WHERE a = '\\x'",
        "multi\nline",
        "ünïcödé ✓ 🚀",
        "",
        "(overflow)",
        "redis GET",
    ];
    let mut keys = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for (i, name) in names.iter().enumerate() {
        for kind in SpanKind::ALL {
            for class in StatusClass::ALL {
                if (i + kind as usize + class as usize) % 3 != 0 {
                    continue;
                }
                let durations = (0..20)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x % 15_000_000_000
                    })
                    .collect();
                // Every system's target on the kinds that show it, some
                // on kinds that do not.
                let system = System::ALL[(i + class as usize) % System::COUNT];
                let values = [
                    Some(format!("{name} sys")),
                    (i % 2 == 0).then(|| "op \"x\"\n".to_string()),
                    Some(name.to_string()),
                ];
                keys.push(Key {
                    kind,
                    name: name.to_string(),
                    target: (system, values),
                    class,
                    durations,
                });
            }
        }
    }
    let r = build(&keys, 60);
    assert!(r.overflowed() > 0);
    let cfg = ExpositionConfig {
        const_labels: vec![
            ("service.name".into(), "api \"v2\"".into()),
            ("deployment_environment".into(), "prod\\eu".into()),
        ],
        ..ExpositionConfig::default()
    };
    let mut extra = vec![
        ExtraFamily {
            name: "process_cpu_seconds_total".into(),
            help: "Total user and system CPU time spent in seconds.".into(),
            kind: ExtraKind::Counter,
            samples: vec![(Vec::new(), 12.34)],
        },
        ExtraFamily {
            name: "process_resident_memory_bytes".into(),
            help: "Resident memory size in bytes.".into(),
            kind: ExtraKind::Gauge,
            samples: vec![(Vec::new(), 52_428_800.0)],
        },
        ExtraFamily {
            name: "pulsetrace_build_info".into(),
            help: String::new(),
            kind: ExtraKind::Gauge,
            samples: vec![(vec![("version".into(), "0.1.0".into())], 1.0)],
        },
        ExtraFamily {
            name: "pulsetrace_queue_fill_ratio".into(),
            help: "Fill of the \"export\" queue\n(0..1).".into(),
            kind: ExtraKind::Gauge,
            samples: vec![
                (vec![("queue".into(), "export".into())], 0.25),
                (vec![("queue".into(), "ingest".into())], f64::NAN),
                (vec![("queue".into(), "spill".into())], f64::INFINITY),
            ],
        },
    ];
    extra.extend(health_families(
        &cfg,
        &r,
        &[
            ("spans_exported", "spans handed to an exporter", 1234),
            (
                "traces_kept_error",
                "traces kept because a span had an error",
                5,
            ),
        ],
    ));
    (r, keys, cfg, extra)
}

fn promtool_version() {
    match std::process::Command::new("promtool")
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => {}
        other => panic!(
            "promtool is required for this test (Debian package `prometheus`: \
             apt-get install prometheus); running it gave {other:?}"
        ),
    }
}

fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "pulsetrace-exposition-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `promtool check metrics` (Prometheus' own parser and linter for the 0.0.4
/// text format) must accept the 0.0.4 rendering with no output at all. It
/// cannot read OpenMetrics (it stops at the first exemplar), so the
/// OpenMetrics rendering goes through `promtool tsdb create-blocks-from
/// openmetrics`, which parses with the OpenMetrics parser Prometheus scrapes
/// with (metadata, `_total`, units, exemplars, `# EOF`). That importer needs
/// a timestamp on every sample, which the test adds after each value.
#[test]
fn promtool_accepts_prometheus_004_and_openmetrics_exposition() {
    promtool_version();
    let (r, keys, cfg, extra) = varied();
    let dir = scratch_dir("promtool");

    let mut text = String::new();
    render(
        &r,
        &exemplar_source(&keys),
        &extra,
        &cfg,
        Format::Prometheus004,
        &mut text,
    );
    parse(&text, Format::Prometheus004).unwrap();
    let path = dir.join("metrics.prom");
    std::fs::write(&path, &text).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut om = String::new();
    render(
        &r,
        &exemplar_source(&keys),
        &extra,
        &cfg,
        Format::OpenMetrics100,
        &mut om,
    );
    let families = parse(&om, Format::OpenMetrics100).unwrap();
    let samples: usize = families.iter().map(|f| f.samples.len()).sum();
    let exemplars = families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.exemplar.is_some())
        .count();
    assert!(
        exemplars > 10,
        "the OpenMetrics rendering carries exemplars"
    );
    let mut stamped = String::with_capacity(om.len() + samples * 12);
    for line in om.lines() {
        if line.starts_with('#') {
            stamped.push_str(line);
        } else {
            let at = value_end(line);
            stamped.push_str(&line[..at]);
            stamped.push_str(" 1700000000");
            stamped.push_str(&line[at..]);
        }
        stamped.push('\n');
    }
    let path = dir.join("metrics.om");
    std::fs::write(&path, &stamped).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&path)
        .arg(dir.join("blocks"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "promtool tsdb create-blocks-from openmetrics: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The block table's NUM SAMPLES: every sample line was imported.
    let header: Vec<&str> = stdout
        .lines()
        .next()
        .unwrap_or("")
        .split("  ")
        .filter(|c| !c.trim().is_empty())
        .map(str::trim)
        .collect();
    let row: Vec<&str> = stdout
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let col = header
        .iter()
        .position(|h| *h == "NUM SAMPLES")
        .expect("NUM SAMPLES column");
    assert_eq!(
        row.get(col).and_then(|v| v.parse::<usize>().ok()),
        Some(samples),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
