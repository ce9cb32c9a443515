//! The binding of `pulsetrace_core::http`: a request's server span, built
//! from the facts each server integration reads. The native WSGI path
//! (`wsgi_environ`) and the Python integrations (`http_server_span`, for
//! ASGI, Starlette/FastAPI and Django) both end here, so their spans agree.
//! Conversion only: every rule is the core's.
//!
//! Excluded URLs: [`excluded`] answers, for a request's decoded path and
//! the integration it comes through, whether it gets no span at all
//! (`pulsetrace_core::http::exclude`: the configuration's expressions, the
//! common list and each framework's own, compiled once by
//! `Tracer.configure`, and the prefixes where the monitoring endpoints are
//! mounted). Both request paths ask it: `wsgi_environ::start` and
//! [`http_server_span`], which then return no span. A framework hook names
//! itself (`integration="flask"`, [`integration`]); the generic WSGI and
//! ASGI middlewares name none.
//!
//! GIL and locks: runs with the GIL. `REDACT` and `EXCLUDE` (`RwLock`s) are
//! read per request and written only by `Tracer.configure` (and, for
//! `EXCLUDE`, when the endpoints are mounted); none is held across Python
//! code, so no thread waits for one. `EXCLUDE_SOURCES` (a mutex) is taken
//! only by those writers.

use crate::attrs::{self, AttrCounters, Limits};
use crate::guard::{guard, or_error};
use crate::span::{Span, SpanContext};
use crate::tracer::Tracer;
use parking_lot::{Mutex, RwLock};
use pulsetrace_core::clock;
use pulsetrace_core::http::{
    self as core_http, keys as k, BadPattern, Exclusion, Integration, Method, Request, ServerSpan,
    Text,
};
use pulsetrace_core::span::{AttrValue, SpanKind};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

/// Query parameters whose values are redacted (lower-case words).
static REDACT: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Replace the words of sensitive query parameters: the configuration's
/// `redact_query_params`, set by `Tracer.configure`.
pub fn set_redacted_params(words: Vec<String>) {
    *REDACT.write() = core_http::redaction_words(words);
}

/// The excluded URLs, compiled (nothing before the first configuration).
static EXCLUDE: RwLock<Exclusion> = RwLock::new(Exclusion::empty());

/// The configuration's excluded-URL expressions: the common list, and the
/// frameworks that have their own.
#[derive(Clone, Debug, Default)]
pub struct ExcludedUrls {
    pub common: Vec<String>,
    pub own: Vec<(Integration, Vec<String>)>,
}

impl ExcludedUrls {
    const fn new() -> Self {
        ExcludedUrls {
            common: Vec::new(),
            own: Vec::new(),
        }
    }

    fn compile(&self, prefixes: &[String]) -> Result<Exclusion, BadPattern> {
        Exclusion::with_own(&self.common, &self.own, prefixes)
    }
}

/// What [`EXCLUDE`] is compiled from: the configuration's expressions and
/// the mounted prefixes.
static EXCLUDE_SOURCES: Mutex<(ExcludedUrls, Vec<String>)> =
    Mutex::new((ExcludedUrls::new(), Vec::new()));

/// Replace the configuration's excluded-URL expressions (the mounted
/// prefixes stay). An expression that does not compile is the error, and
/// nothing is replaced.
pub fn set_excluded_urls(urls: ExcludedUrls) -> Result<(), BadPattern> {
    let mut sources = EXCLUDE_SOURCES.lock();
    let compiled = urls.compile(&sources.1)?;
    sources.0 = urls;
    *EXCLUDE.write() = compiled;
    Ok(())
}

/// Whether a request for `path` (decoded) that comes through `integration`
/// gets no span.
#[inline]
pub(crate) fn excluded(integration: Integration, path: &str) -> bool {
    EXCLUDE.read().excludes_for(integration, path)
}

/// The integration a hook names (`"flask"`, ...; None: the generic WSGI
/// and ASGI paths). An unknown name is a `ValueError` listing the known ones.
pub(crate) fn integration(name: Option<&str>) -> PyResult<Integration> {
    let Some(name) = name else {
        return Ok(Integration::Generic);
    };
    Integration::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = Integration::FRAMEWORKS.iter().map(|i| i.name()).collect();
        pyo3::exceptions::PyValueError::new_err(format!(
            "pulsetrace: unknown server integration {name:?} (known: {})",
            known.join(", ")
        ))
    })
}

/// The names of the frameworks that may have an excluded-URL list of their
/// own (`pulsetrace.config` keys them so).
#[pyfunction]
pub fn http_exclusion_frameworks() -> Vec<&'static str> {
    Integration::FRAMEWORKS.iter().map(|i| i.name()).collect()
}

/// Exclude every request at or under `prefix` (where pulsetrace's
/// monitoring endpoints are mounted in the application), in addition to
/// the configured expressions. Idempotent.
#[pyfunction]
pub fn http_exclude_prefix(prefix: &str) -> PyResult<()> {
    or_error("http.exclude_prefix", || {
        let mut sources = EXCLUDE_SOURCES.lock();
        if sources.1.iter().any(|p| p == prefix) {
            return Ok(());
        }
        sources.1.push(prefix.to_owned());
        // The expressions compiled before: they compile again.
        if let Ok(compiled) = sources.0.compile(&sources.1) {
            *EXCLUDE.write() = compiled;
        }
        Ok(())
    })
}

/// Why `pattern` is not a usable excluded-URL expression (`"..." is not a
/// valid regular expression (reason)`), or None.
#[pyfunction]
pub fn http_excluded_problem(pattern: &str) -> Option<String> {
    core_http::exclude::pattern_problem(pattern).map(|b| b.to_string())
}

/// Whether a request for `path` (decoded, without the query) that comes
/// through `integration` (None: no framework of its own) gets no span under
/// the current configuration and mounts.
#[pyfunction]
#[pyo3(signature = (path, integration=None))]
pub fn http_is_excluded(path: &str, integration: Option<&str>) -> PyResult<bool> {
    Ok(excluded(self::integration(integration)?, path))
}

/// [`core_http::server_span`] with the configured redaction words (read
/// only for a request with a query: most have none).
pub(crate) fn server_span<'a>(req: &Request<'a>) -> ServerSpan<'a> {
    if req.query.is_empty() {
        return core_http::server_span(req, &[]);
    }
    core_http::server_span(req, &REDACT.read())
}

/// Attribute keys and the values that repeat on every request, shared.
pub(crate) struct Keys {
    pub method: Arc<str>,
    pub method_original: Arc<str>,
    pub path: Arc<str>,
    pub query: Arc<str>,
    pub scheme: Arc<str>,
    pub address: Arc<str>,
    pub port: Arc<str>,
    pub client: Arc<str>,
    pub user_agent: Arc<str>,
    pub protocol: Arc<str>,
    pub status: Arc<str>,
    pub route: Arc<str>,
    /// `http.request.method` values: the known methods, then `_OTHER`.
    methods: Vec<Arc<str>>,
    /// Span names before the route: the known methods, then `HTTP`.
    names: Vec<Arc<str>>,
    root: Arc<str>,
    http: Arc<str>,
    https: Arc<str>,
    v11: Arc<str>,
}

impl Keys {
    fn index(m: Method) -> usize {
        match m {
            Method::Known(i) => usize::from(i),
            Method::Other => core_http::KNOWN_METHODS.len(),
        }
    }

    pub fn method_value(&self, m: Method) -> &Arc<str> {
        &self.methods[Self::index(m)]
    }

    pub fn name(&self, m: Method) -> &Arc<str> {
        &self.names[Self::index(m)]
    }
}

pub(crate) fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let all = |last: &str| {
            core_http::KNOWN_METHODS
                .iter()
                .chain([&last])
                .map(|m| Arc::from(*m))
                .collect()
        };
        Keys {
            method: k::METHOD.into(),
            method_original: k::METHOD_ORIGINAL.into(),
            path: k::PATH.into(),
            query: k::QUERY.into(),
            scheme: k::SCHEME.into(),
            address: k::SERVER_ADDRESS.into(),
            port: k::SERVER_PORT.into(),
            client: k::CLIENT_ADDRESS.into(),
            user_agent: k::USER_AGENT.into(),
            protocol: k::PROTOCOL_VERSION.into(),
            status: k::STATUS_CODE.into(),
            route: k::ROUTE.into(),
            methods: all(Method::Other.as_str()),
            names: all(Method::Other.name()),
            root: "/".into(),
            http: "http".into(),
            https: "https".into(),
            v11: "1.1".into(),
        }
    })
}

/// `t` as shared text, truncated to the value limit: the same text as an
/// earlier request's (the usual case) without a copy.
fn arc(py: Python<'_>, t: &str, limits: &Limits, counters: &AttrCounters) -> Arc<str> {
    attrs::recurring(py, t, limits.max_value_len, counters)
}

/// A server span's attributes, as a span holds them: room is left for
/// those the response adds (status code, route).
pub(crate) fn attributes(
    py: Python<'_>,
    s: &ServerSpan<'_>,
    limits: &Limits,
    counters: &AttrCounters,
) -> Vec<(Arc<str>, AttrValue)> {
    let k = keys();
    let text = |t: &str| AttrValue::Str(arc(py, t, limits, counters));
    let mut a: Vec<(Arc<str>, AttrValue)> = Vec::with_capacity(14);
    a.push((
        k.method.clone(),
        AttrValue::Str(k.method_value(s.method).clone()),
    ));
    if let Some(m) = s.method_original {
        a.push((k.method_original.clone(), text(m)));
    }
    let path = match &*s.path {
        "/" => AttrValue::Str(k.root.clone()),
        p => text(p),
    };
    a.push((k.path.clone(), path));
    if let Some(q) = &s.query {
        a.push((k.query.clone(), text(q)));
    }
    let scheme = match s.scheme {
        "http" => AttrValue::Str(k.http.clone()),
        "https" => AttrValue::Str(k.https.clone()),
        other => text(other),
    };
    a.push((k.scheme.clone(), scheme));
    if let Some(h) = s.address {
        a.push((k.address.clone(), text(h)));
    }
    if let Some(p) = s.port {
        a.push((k.port.clone(), AttrValue::Int(i64::from(p))));
    }
    if let Some(c) = s.client {
        a.push((k.client.clone(), text(c)));
    }
    if let Some(u) = s.user_agent {
        a.push((k.user_agent.clone(), text(u)));
    }
    if let Some(v) = s.protocol {
        let v = match v {
            "1.1" => AttrValue::Str(k.v11.clone()),
            other => text(other),
        };
        a.push((k.protocol.clone(), v));
    }
    a
}

/// The attributes of a span that already has some (or more than the
/// limit): each set as `set_attribute` would. Rare, kept out of line.
#[cold]
#[inline(never)]
fn add_attributes_slow(
    inner: &mut crate::span::Inner,
    a: Vec<(Arc<str>, AttrValue)>,
    limits: &Limits,
    counters: &AttrCounters,
) {
    for (key, v) in a {
        Span::set_one(inner, key, v, limits, counters);
    }
}

/// A new SERVER span (not current) for `s`: a trace of its own, or the
/// continuation of the incoming trace context `remote`.
pub(crate) fn new_server_span(
    py: Python<'_>,
    tracer: &Bound<'_, Tracer>,
    s: &ServerSpan<'_>,
    remote: Option<SpanContext>,
    start_mono: u64,
) -> PyResult<Span> {
    let t = tracer.get();
    let (limits, counters) = t.limits();
    let a = attributes(py, s, &limits, counters);
    let name = keys().name(s.method).clone();
    let span = match remote {
        Some(ctx) => {
            let ctx = crate::newobj::new_bound(py, ctx)?;
            t.new_span(
                tracer,
                name,
                SpanKind::Server,
                Some(ctx.as_any()),
                start_mono,
            )?
        }
        None => t.new_span(
            tracer,
            name,
            SpanKind::Server,
            Some(&py.None().into_bound(py)),
            start_mono,
        )?,
    };
    {
        let mut inner = span.inner.lock();
        let cost: usize = a.iter().map(|(k, v)| attrs::attribute_cost(k, v)).sum();
        if inner.attributes.is_empty()
            && a.len() <= limits.max_attributes
            && cost <= limits.attribute_budget()
        {
            // A new span and distinct keys: no duplicate to look for.
            inner.attributes = a;
            inner.attribute_bytes = cost;
        } else {
            add_attributes_slow(&mut inner, a, &limits, counters);
        }
    }
    Ok(span)
}

/// A port as a server gives it: an int, or the text of one (a test
/// client's `"80"`); anything else is none.
fn port_of(v: &Bound<'_, PyAny>) -> Option<u16> {
    if let Ok(s) = v.downcast::<PyString>() {
        return crate::pystr::utf8(s).and_then(core_http::parse_port);
    }
    v.extract::<u16>().ok().filter(|&p| p > 0)
}

/// Text a Python integration hands over: `str` (decoded, or latin-1 text
/// when `latin1`) or `bytes` (as received: percent-encoded when
/// `percent_encoded`); anything else is empty. A `str` that is not valid
/// UTF-8 (lone surrogates) is copied into `owned` with U+FFFD.
fn text_of<'a>(
    v: Option<&'a Bound<'_, PyAny>>,
    latin1: bool,
    percent_encoded: bool,
    owned: &'a mut String,
) -> Text<'a> {
    let Some(v) = v else {
        return Text::Decoded("");
    };
    if let Ok(b) = v.downcast::<PyBytes>() {
        return match percent_encoded {
            true => Text::PercentEncoded(b.as_bytes()),
            false => Text::Bytes(b.as_bytes()),
        };
    }
    let Ok(s) = v.downcast::<PyString>() else {
        return Text::Decoded("");
    };
    let t = match crate::pystr::utf8(s) {
        Some(t) => t,
        None => {
            *owned = s.to_string_lossy().into_owned();
            owned.as_str()
        }
    };
    if latin1 {
        Text::Latin1(t)
    } else {
        Text::Decoded(t)
    }
}

/// The SERVER span of one request (not yet current), from what an
/// integration read: the method, scheme, `Host` header, the server's own
/// name and port, the path (`str`: decoded, as ASGI's `path`; `bytes`:
/// percent-encoded as received, as ASGI's `raw_path`), the query string (`bytes` as received, or latin-1 `str`), the
/// client's address, `User-Agent`, the protocol version and the incoming
/// `traceparent`/`tracestate`. The span continues that trace, or starts
/// one of its own (never a child of the current span). Named `METHOD`;
/// [`http_span_name`] names it after its route. None for an excluded URL
/// ([`excluded`], with the list of `integration`, the framework hook's
/// name): the request gets no span.
#[pyfunction]
#[pyo3(signature = (tracer, method, scheme=None, host=None, server_name=None, server_port=None,
    path=None, query=None, client=None, user_agent=None, protocol=None, traceparent=None,
    tracestate=None, integration=None))]
#[allow(clippy::too_many_arguments)]
pub fn http_server_span<'py>(
    py: Python<'py>,
    tracer: &Bound<'py, Tracer>,
    method: Option<&str>,
    scheme: Option<&str>,
    host: Option<&str>,
    server_name: Option<&str>,
    server_port: Option<&Bound<'py, PyAny>>,
    path: Option<&Bound<'py, PyAny>>,
    query: Option<&Bound<'py, PyAny>>,
    client: Option<&str>,
    user_agent: Option<&str>,
    protocol: Option<&str>,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
    integration: Option<&str>,
) -> PyResult<Option<Bound<'py, Span>>> {
    let t = tracer.get();
    if !t.is_enabled() {
        return Ok(Some(t.noop_span(tracer)?.into_bound(py)));
    }
    let integration = self::integration(integration)?;
    let start_mono = clock::now_mono_ns();
    guard(
        py,
        "http.server_span",
        || {
            let (mut owned_path, mut owned_query) = (String::new(), String::new());
            let req = Request {
                method,
                scheme,
                host,
                server_name,
                server_port: server_port.and_then(port_of),
                script: Text::Decoded(""),
                path: text_of(path, false, true, &mut owned_path),
                query: text_of(query, true, false, &mut owned_query),
                client,
                user_agent,
                protocol,
            };
            let s = server_span(&req);
            if excluded(integration, &s.path) {
                return Ok(None);
            }
            let remote = t.extract_context(traceparent, tracestate);
            let span = new_server_span(py, tracer, &s, remote, start_mono)?;
            crate::newobj::new_bound(py, span).map(Some)
        },
        || Ok(Some(t.noop_span(tracer)?.into_bound(py))),
    )
}

/// A server span's name: `METHOD route` (the method normalised as the span's
/// `http.request.method`; `HTTP` for `_OTHER`), or `METHOD` without a route.
#[pyfunction]
#[pyo3(signature = (method, route=None))]
pub fn http_span_name(method: Option<&str>, route: Option<&str>) -> PyResult<Cow<'static, str>> {
    or_error("http.span_name", || {
        let m = core_http::method_of(method.filter(|m| !m.is_empty()));
        Ok(core_http::span_name(m, route))
    })
}

/// A request method as `http.request.method` reports it (`_OTHER` for one
/// outside the known set).
#[pyfunction]
pub fn http_method(method: Option<&str>) -> &'static str {
    core_http::method_of(method.filter(|m| !m.is_empty())).as_str()
}

/// Record a response's status code on a server span: the attribute, and
/// for a 5xx the error status (`Span::record_response_status`: an error
/// the span already explains keeps its message). A code outside 0..65535
/// is ignored.
#[pyfunction]
pub fn http_response_status(span: &Bound<'_, Span>, code: i64) {
    if let Ok(code) = u16::try_from(code) {
        guard(
            span.py(),
            "http.response_status",
            || span.get().record_response_status(code),
            || (),
        );
    }
}

/// The query string with the values of sensitive parameters replaced by
/// `REDACTED`; other parameters are kept byte for byte.
#[pyfunction]
#[pyo3(name = "redact_query")]
pub fn py_redact_query(query: &str) -> PyResult<Cow<'_, str>> {
    or_error("http.redact_query", || {
        Ok(core_http::redact_query(query, &REDACT.read()))
    })
}
