//! The configuration the native tracer is built from: a
//! `pulsetrace.config.Config` read field by field. Every field is required:
//! the binding has no defaults of its own, and a missing field is an error
//! naming it (one place, `pulsetrace/config.py`, declares the defaults).
//!
//! Nor does it have ranges of its own: the documented ranges live with the
//! fields in `pulsetrace/config.py`, where values from the environment are
//! clamped with a warning and values passed in code raise, and the README's
//! table is checked against them. Here only what the core's types need to be
//! sound is asserted (a capacity of at least one, a probability within
//! [0, 1], a finite duration that is not negative); a value that fails it
//! comes from a caller that bypassed `Config`, and is refused with a
//! `ValueError` naming the field.
//!
//! GIL contract: runs with the GIL (it reads Python attributes), O(number of
//! fields); takes no lock.

use crate::attrs::Limits;
use crate::http::ExcludedUrls;
use pulsetrace_core::head::HeadSampler;
use pulsetrace_core::histogram::{HistogramConfig, ONE_HOUR_NS};
use pulsetrace_core::pipeline::{BufferConfig, CoreConfig};
use pulsetrace_core::sampler::{AttributeRule, SamplerConfig};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;

/// Everything `Tracer.configure` applies.
pub struct NativeConfig {
    pub core: CoreConfig,
    pub limits: Limits,
    pub head: HeadSampler,
    pub enabled: bool,
    /// Words of the query parameters whose values are redacted.
    pub redact: Vec<String>,
    /// Regular expressions of the request paths that get no span, common
    /// and per framework (compiled by `crate::http::set_excluded_urls`).
    pub excluded_urls: ExcludedUrls,
}

fn invalid(name: &str, why: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("pulsetrace config field {name}: {why}"))
}

/// The attribute `name` of `cfg`, converted; an error names the field.
fn field<'py, T: FromPyObject<'py>>(cfg: &Bound<'py, PyAny>, name: &str) -> PyResult<T> {
    let value = cfg
        .getattr(name)
        .map_err(|_| invalid(name, "missing (the native side has no defaults)"))?;
    value.extract().map_err(|e| invalid(name, e))
}

/// Text, with anything that is not valid UTF-8 replaced (never an error).
fn text(v: &Bound<'_, PyAny>, name: &str) -> PyResult<String> {
    let s = v
        .downcast::<PyString>()
        .map_err(|_| invalid(name, "not a str"))?;
    Ok(s.to_string_lossy().into_owned())
}

fn texts(cfg: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<String>> {
    let seq = cfg
        .getattr(name)
        .map_err(|_| invalid(name, "missing (the native side has no defaults)"))?;
    seq.try_iter()
        .map_err(|e| invalid(name, e))?
        .map(|item| text(&item?, name))
        .collect()
}

fn at_least_one(name: &str, v: usize) -> PyResult<usize> {
    if v == 0 {
        return Err(invalid(name, "must be at least 1"));
    }
    Ok(v)
}

fn fraction(name: &str, v: f64) -> PyResult<f64> {
    if !(0.0..=1.0).contains(&v) {
        return Err(invalid(name, format!("{v} is not within [0, 1]")));
    }
    Ok(v)
}

/// Milliseconds (finite, not negative) as nanoseconds.
fn ms(cfg: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    let v: f64 = field(cfg, name)?;
    if !v.is_finite() || v < 0.0 {
        return Err(invalid(name, format!("{v} is not a duration in ms")));
    }
    Ok((v * 1e6) as u64)
}

/// Read every field the native side uses from `cfg` (a `pulsetrace.Config`).
pub fn extract(cfg: &Bound<'_, PyAny>) -> PyResult<NativeConfig> {
    let sigfig: u8 = field(cfg, "histogram_sigfig")?;
    let histogram = HistogramConfig {
        highest: ONE_HOUR_NS,
        sigfig,
    }
    .validated()
    .map_err(|e| invalid("histogram_sigfig", e))?;
    let percentile: f64 = field(cfg, "adaptive_percentile")?;
    if !(0.0..100.0).contains(&percentile) {
        return Err(invalid(
            "adaptive_percentile",
            format!("{percentile} is not within [0, 100)"),
        ));
    }
    let rules_obj = cfg.getattr("keep_attributes").map_err(|_| {
        invalid(
            "keep_attributes",
            "missing (the native side has no defaults)",
        )
    })?;
    let mut attribute_rules = Vec::new();
    for rule in rules_obj
        .try_iter()
        .map_err(|e| invalid("keep_attributes", e))?
    {
        let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) =
            rule?.extract().map_err(|e| invalid("keep_attributes", e))?;
        attribute_rules.push(AttributeRule {
            key: text(&key, "keep_attributes")?,
            value: if value.is_none() {
                None
            } else {
                Some(text(&value, "keep_attributes")?)
            },
        });
    }
    let rate_limit: f64 = field(cfg, "rate_limit")?;
    if !rate_limit.is_finite() || rate_limit < 0.0 {
        return Err(invalid("rate_limit", format!("{rate_limit} is not a rate")));
    }
    let sampler = SamplerConfig {
        keep_errors: field(cfg, "keep_errors")?,
        slow_threshold_ns: ms(cfg, "slow_threshold_ms")?,
        adaptive_quantile: percentile / 100.0,
        adaptive_min_count: field(cfg, "adaptive_min_count")?,
        attribute_rules,
        probability: fraction("sample_rate", field(cfg, "sample_rate")?)?,
        rate_limit,
    };
    let count = |name: &str| -> PyResult<usize> { at_least_one(name, field(cfg, name)?) };
    let buffer = BufferConfig {
        max_open_traces: count("max_open_traces")?,
        max_spans_per_trace: count("max_spans_per_trace")?,
        decision_wait_ns: ms(cfg, "decision_wait_ms")?,
        export_queue_spans: count("export_queue_size")?,
        worker_interval_ns: ms(cfg, "worker_interval_ms")?.max(1),
        intake_spans: count("intake_queue_size")?,
        intake_interval_ns: ms(cfg, "intake_interval_ms")?.max(1),
    };
    let limits = Limits {
        max_value_len: count("max_attribute_length")?,
        max_attributes: field(cfg, "max_attributes")?,
        max_events: field(cfg, "max_events")?,
        max_list_len: count("max_attribute_list_length")?,
    };
    let core = CoreConfig {
        histogram,
        max_metric_keys: count("max_metric_keys")?,
        sampler,
        buffer,
        access_log_entries: if field(cfg, "access_log")? {
            count("logs_queue_size")?
        } else {
            0
        },
    };
    let head_name = text(
        &cfg.getattr("head_sampler")
            .map_err(|_| invalid("head_sampler", "missing (the native side has no defaults)"))?,
        "head_sampler",
    )?;
    let head_ratio = fraction("head_sampler_ratio", field(cfg, "head_sampler_ratio")?)?;
    let head = HeadSampler::parse(&head_name, head_ratio)
        .map_err(|e| PyValueError::new_err(format!("config head_sampler: {e}")))?;
    Ok(NativeConfig {
        core,
        limits,
        head,
        enabled: field(cfg, "enabled")?,
        redact: texts(cfg, "redact_query_params")?,
        excluded_urls: ExcludedUrls {
            common: texts(cfg, "excluded_urls")?,
            own: framework_lists(cfg)?,
        },
    })
}

/// `framework_excluded_urls`: a mapping of a framework's name to its list.
fn framework_lists(
    cfg: &Bound<'_, PyAny>,
) -> PyResult<Vec<(pulsetrace_core::http::Integration, Vec<String>)>> {
    const NAME: &str = "framework_excluded_urls";
    let map = cfg
        .getattr(NAME)
        .map_err(|_| invalid(NAME, "missing (the native side has no defaults)"))?;
    let items = map.call_method0("items").map_err(|e| invalid(NAME, e))?;
    let mut out = Vec::new();
    for item in items.try_iter().map_err(|e| invalid(NAME, e))? {
        let (key, list): (Bound<'_, PyAny>, Bound<'_, PyAny>) =
            item?.extract().map_err(|e| invalid(NAME, e))?;
        let key = text(&key, NAME)?;
        let integration = crate::http::integration(Some(&key)).map_err(|e| invalid(NAME, e))?;
        let patterns = list
            .try_iter()
            .map_err(|e| invalid(NAME, e))?
            .map(|p| text(&p?, NAME))
            .collect::<PyResult<Vec<_>>>()?;
        out.push((integration, patterns));
    }
    Ok(out)
}
