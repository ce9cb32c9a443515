//! Rendering: the families sorted by name, each written as HELP/TYPE(/UNIT)
//! metadata and sample lines, in Prometheus 0.0.4 or OpenMetrics.

use super::collect::{collect, Collected, Group};
use super::config::ExpositionConfig;
use super::extra::{prepare_extra, ExtraFamily, ExtraKind, PreparedExtra};
use super::format::Format;
use super::names::{
    listed_name, reserved, sample_names, sanitize_label_name, Fam, FamNames, HTTP_STATUS_LABEL,
};
use super::text::{escape_help, push_label, write_exemplar, write_f64, write_seconds};
use super::ExemplarFn;
use crate::registry::Registry;
use crate::span::StatusClass;
use std::collections::HashSet;
use std::fmt::Write as _;

#[derive(Clone, Copy)]
enum Part {
    Histogram,
    Quantile,
    Requests,
    Errors,
}

enum Item<'a> {
    Registry(Fam, Part),
    Extra(PreparedExtra<'a>),
}

/// Renders the registry's families and `extra` in `format`, appended to `out`.
///
/// `exemplars(entry)` returns the exemplars of one registry key, one slot
/// per bucket bound of [`ExpositionConfig::bucket_bounds_ns`]
/// (plus optionally one for `+Inf`); it may be empty. Each exemplar is
/// placed in the bucket its value falls in (the latest per bucket wins), and
/// only in OpenMetrics.
pub fn render(
    registry: &Registry,
    exemplars: &ExemplarFn<'_>,
    extra: &[ExtraFamily],
    cfg: &ExpositionConfig,
    format: Format,
    out: &mut String,
) {
    let om = format == Format::OpenMetrics100;
    let bounds = cfg.bounds();
    let bounds_ns: Vec<u64> = bounds.iter().map(|&(_, ns)| ns).collect();
    let quantiles = cfg.quantiles_used();
    let prefix = cfg.prefix();
    let mut le: Vec<String> = bounds.iter().map(|&(s, _)| format!("{s:?}")).collect();
    le.push("+Inf".to_string());
    let q_text: Vec<String> = quantiles.iter().map(|q| format!("{q:?}")).collect();

    // Constant labels, sanitised and deduplicated, in the order given.
    let mut consts: Vec<(String, &str)> = Vec::new();
    for (k, v) in &cfg.const_labels {
        let k = sanitize_label_name(k);
        if !consts.iter().any(|(seen, _)| *seen == k) {
            consts.push((k, v.as_str()));
        }
    }
    let mut registry_consts = String::new();
    for (k, v) in &consts {
        if !reserved(k) {
            push_label(&mut registry_consts, k, v);
        }
    }

    let collected = collect(registry, om.then_some(exemplars), &bounds_ns, &quantiles);
    let names: Vec<FamNames> = Fam::ALL
        .iter()
        .map(|&f| FamNames::new(f, &prefix))
        .collect();

    let mut items: Vec<(String, Item<'_>)> = Vec::new();
    let mut taken: HashSet<String> = HashSet::new();
    for fam in Fam::ALL {
        if collected.groups[fam as usize].is_empty() {
            continue;
        }
        let n = &names[fam as usize];
        let mut parts = vec![
            (&n.histogram, "histogram", Part::Histogram),
            (&n.requests, "counter", Part::Requests),
            (&n.errors, "counter", Part::Errors),
        ];
        if !quantiles.is_empty() {
            parts.push((&n.quantile, "gauge", Part::Quantile));
        }
        for (name, kind, part) in parts {
            taken.extend(sample_names(name, kind));
            items.push((listed_name(name, kind, om), Item::Registry(fam, part)));
        }
    }
    for f in extra {
        let p = prepare_extra(f, &consts);
        let kind = p.kind.as_str();
        let claimed = sample_names(&p.name, kind);
        if claimed.iter().any(|n| taken.contains(n)) {
            continue;
        }
        taken.extend(claimed);
        items.push((listed_name(&p.name, kind, om), Item::Extra(p)));
    }
    // Sorted by the name the metadata lines show in this format.
    items.sort_by(|a, b| a.0.cmp(&b.0));

    let mut r = Renderer {
        out,
        om,
        line: String::new(),
    };
    for (_, item) in &items {
        match item {
            Item::Registry(fam, part) => r.registry_family(
                *fam,
                *part,
                &names[*fam as usize],
                &collected,
                &registry_consts,
                &le,
                &q_text,
            ),
            Item::Extra(p) => r.extra_family(p),
        }
    }
    if om {
        r.out.push_str("# EOF\n");
    }
}

struct Renderer<'o> {
    out: &'o mut String,
    om: bool,
    /// Scratch: the labels shared by the lines of one series.
    line: String,
}

impl Renderer<'_> {
    /// HELP, TYPE (and UNIT in OpenMetrics) of a family. Counters are named
    /// `<name>_total` in 0.0.4 metadata and `<name>` in OpenMetrics.
    fn header(&mut self, name: &str, help: &str, kind: &str, unit: Option<&str>) {
        let total = if kind == "counter" && !self.om {
            "_total"
        } else {
            ""
        };
        let out = &mut *self.out;
        let _ = write!(out, "# HELP {name}{total} ");
        escape_help(out, help, self.om);
        let _ = writeln!(out, "\n# TYPE {name}{total} {kind}");
        if let (true, Some(unit)) = (self.om, unit) {
            let _ = writeln!(out, "# UNIT {name} {unit}");
        }
    }

    /// `name{labels[,extra_name="extra_value"]} ` (value not written).
    fn sample_start(&mut self, name: &str, suffix: &str, extra: Option<(&str, &str)>) {
        let out = &mut *self.out;
        out.push_str(name);
        out.push_str(suffix);
        let labels = self.line.as_str();
        match (labels.is_empty(), extra) {
            (true, None) => {}
            (false, None) => {
                out.push('{');
                out.push_str(labels);
                out.push('}');
            }
            (empty, Some((k, v))) => {
                out.push('{');
                out.push_str(labels);
                if !empty {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                out.push_str(v);
                out.push('"');
                out.push('}');
            }
        }
        out.push(' ');
    }

    /// The labels of a registry series into `self.line`; `class` for a
    /// histogram series (with `http_status` when the family shows it).
    fn series_labels(&mut self, group: &Group, class: Option<(&str, bool)>, consts: &str) {
        self.line.clear();
        push_label(&mut self.line, "operation", &group.op);
        if let Some(kind) = group.kind {
            push_label(&mut self.line, "kind", kind);
        }
        for (_, label, value) in group.target.view().labels() {
            push_label(&mut self.line, label, value);
        }
        if let Some((class, http_status)) = class {
            if http_status {
                push_label(&mut self.line, HTTP_STATUS_LABEL, class);
            }
            push_label(&mut self.line, "status_class", class);
        }
        if !consts.is_empty() {
            self.line.push(',');
            self.line.push_str(consts);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn registry_family(
        &mut self,
        fam: Fam,
        part: Part,
        n: &FamNames,
        c: &Collected,
        consts: &str,
        le: &[String],
        q_text: &[String],
    ) {
        let groups = &c.groups[fam as usize];
        let (h_help, r_help, e_help) = fam.help();
        let name = match part {
            Part::Histogram => &n.histogram,
            Part::Quantile => &n.quantile,
            Part::Requests => &n.requests,
            Part::Errors => &n.errors,
        };
        match part {
            Part::Histogram => {
                self.header(name, h_help, "histogram", Some("seconds"));
                for g in groups {
                    for s in &c.series[g.series.clone()] {
                        // The HTTP client's status code label: its class, when it had a response.
                        let http_status = fam == Fam::HttpClient
                            && !matches!(s.class, StatusClass::Ok | StatusClass::Error);
                        self.series_labels(g, Some((s.class.as_str(), http_status)), consts);
                        let counts = &c.buckets[s.buckets..s.buckets + le.len() - 1];
                        let mut ex = c.exemplars[s.exemplars.clone()].iter().peekable();
                        for (b, le) in le.iter().enumerate() {
                            let v = counts.get(b).copied().unwrap_or(s.count);
                            self.sample_start(name, "_bucket", Some(("le", le)));
                            let _ = write!(self.out, "{v}");
                            if let Some((_, e)) = ex.next_if(|(eb, _)| *eb == b) {
                                write_exemplar(self.out, e);
                            }
                            self.out.push('\n');
                        }
                        self.sample_start(name, "_sum", None);
                        write_seconds(self.out, s.sum_ns);
                        self.out.push('\n');
                        self.sample_start(name, "_count", None);
                        let _ = writeln!(self.out, "{}", s.count);
                    }
                }
            }
            Part::Quantile => {
                let help = format!(
                    "Quantiles (label q) of {} per operation over all status classes, exact from the HDR histogram.",
                    n.histogram
                );
                self.header(name, &help, "gauge", Some("seconds"));
                for g in groups {
                    self.series_labels(g, None, consts);
                    for (i, q) in q_text.iter().enumerate() {
                        self.sample_start(name, "", Some(("q", q)));
                        match c.quantiles.get(g.quantiles + i).copied().flatten() {
                            Some(ns) => write_seconds(self.out, u128::from(ns)),
                            None => self.out.push_str("NaN"),
                        }
                        self.out.push('\n');
                    }
                }
            }
            Part::Requests | Part::Errors => {
                let errors = matches!(part, Part::Errors);
                self.header(name, if errors { e_help } else { r_help }, "counter", None);
                for g in groups {
                    self.series_labels(g, None, consts);
                    self.sample_start(name, "_total", None);
                    let _ = writeln!(self.out, "{}", if errors { g.errors } else { g.count });
                }
            }
        }
    }

    fn extra_family(&mut self, f: &PreparedExtra<'_>) {
        let (kind, suffix) = match f.kind {
            ExtraKind::Counter => ("counter", "_total"),
            ExtraKind::Gauge => ("gauge", ""),
            ExtraKind::Histogram => return self.extra_histogram(f),
        };
        self.header(&f.name, f.help.unwrap_or(&f.name), kind, None);
        for (labels, v) in &f.samples {
            self.line.clear();
            for (k, v) in labels {
                push_label(&mut self.line, k, v);
            }
            self.sample_start(&f.name, suffix, None);
            write_f64(self.out, *v);
            self.out.push('\n');
        }
    }

    /// An extra histogram family (see [`ExtraKind::Histogram`]): its
    /// samples grouped into series by their labels other than `le`. A
    /// bucket whose `le` is not a number is skipped; a series without a
    /// `+Inf` bucket gets one (its largest bucket's count).
    fn extra_histogram(&mut self, f: &PreparedExtra<'_>) {
        type Series = (Vec<(f64, f64)>, f64);
        let mut series: Vec<(Vec<(&str, &str)>, Series)> = Vec::new();
        for (labels, v) in &f.samples {
            let le = labels.iter().find(|(k, _)| k == "le").map(|(_, v)| *v);
            let rest: Vec<(&str, &str)> = labels
                .iter()
                .filter(|(k, _)| k != "le")
                .map(|(k, v)| (k.as_str(), *v))
                .collect();
            let i = match series.iter().position(|(l, _)| *l == rest) {
                Some(i) => i,
                None => {
                    series.push((rest, (Vec::new(), 0.0)));
                    series.len() - 1
                }
            };
            let entry = &mut series[i].1;
            match le {
                None => entry.1 += *v,
                Some(le) => match le.trim().parse::<f64>() {
                    Ok(b) if !b.is_nan() => entry.0.push((b, *v)),
                    _ => {}
                },
            }
        }
        series.sort_by(|a, b| a.0.cmp(&b.0));
        self.header(&f.name, f.help.unwrap_or(&f.name), "histogram", None);
        for (labels, (mut buckets, sum)) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            buckets.dedup_by(|later, earlier| later.0 == earlier.0);
            if !buckets.last().is_some_and(|b| b.0 == f64::INFINITY) {
                let top = buckets.last().map_or(0.0, |b| b.1);
                buckets.push((f64::INFINITY, top));
            }
            let count = buckets.last().map_or(0.0, |b| b.1);
            self.line.clear();
            for (k, v) in &labels {
                push_label(&mut self.line, k, v);
            }
            for (b, n) in &buckets {
                let le = match *b {
                    b if b == f64::INFINITY => "+Inf".to_string(),
                    b => format!("{b:?}"),
                };
                self.sample_start(&f.name, "_bucket", Some(("le", &le)));
                write_f64(self.out, *n);
                self.out.push('\n');
            }
            self.sample_start(&f.name, "_sum", None);
            write_f64(self.out, sum);
            self.out.push('\n');
            self.sample_start(&f.name, "_count", None);
            write_f64(self.out, count);
            self.out.push('\n');
        }
    }
}
