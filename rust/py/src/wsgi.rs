//! The WSGI request path, native: a request's SERVER span is started from
//! the environ, made current while the application runs, named and given
//! its status when the response starts, and ended when the body is
//! exhausted or closed. The Python-level hook (`pulsetrace.contrib.wsgi`)
//! only forwards to [`wsgi_call`]; doing this in Rust keeps the whole
//! per-request cost to a few microseconds.
//!
//! Failure rule: an error inside pulsetrace is reported through
//! `pulsetrace._diag.internal_error` and the request proceeds untouched; the
//! application's exceptions pass through as the same objects.

use crate::attrs::{self, AttrCounters, Limits};
use crate::span::Span;
use crate::tracer::Tracer;
use parking_lot::{Mutex, RwLock};
use pulsetrace_core::clock;
use pulsetrace_core::span::{AttrValue, SpanKind, StatusCode};
use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyString, PyTuple};
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

const KNOWN_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
];

/// Query parameters whose values are redacted (a parameter matches when its
/// lower-cased, decoded name contains one of these).
static REDACT: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Replace the words of sensitive query parameters (lower-cased).
#[pyfunction]
pub fn set_redacted_params(words: Vec<String>) {
    *REDACT.write() = words
        .into_iter()
        .map(|w| w.to_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string with the values of sensitive parameters replaced by
/// `REDACTED`; other parameters are kept byte for byte.
#[pyfunction]
pub fn redact_query(query: &str) -> Cow<'_, str> {
    let words = REDACT.read();
    let lower = query.to_lowercase();
    if !words.iter().any(|w| lower.contains(w.as_str())) && !query.contains('%') {
        return Cow::Borrowed(query);
    }
    let mut out = String::with_capacity(query.len());
    let mut changed = false;
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let (k, v) = match pair.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (pair, None),
        };
        let key = percent_decode(k).to_lowercase();
        if v.is_some() && words.iter().any(|w| key.contains(w.as_str())) {
            out.push_str(k);
            out.push_str("=REDACTED");
            changed = true;
        } else {
            out.push_str(pair);
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(query)
    }
}

struct Keys {
    method: Arc<str>,
    method_original: Arc<str>,
    path: Arc<str>,
    query: Arc<str>,
    scheme: Arc<str>,
    address: Arc<str>,
    port: Arc<str>,
    client: Arc<str>,
    user_agent: Arc<str>,
    protocol: Arc<str>,
    status: Arc<str>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        method: "http.request.method".into(),
        method_original: "http.request.method_original".into(),
        path: "url.path".into(),
        query: "url.query".into(),
        scheme: "url.scheme".into(),
        address: "server.address".into(),
        port: "server.port".into(),
        client: "client.address".into(),
        user_agent: "user_agent.original".into(),
        protocol: "network.protocol.version".into(),
        status: "http.response.status_code".into(),
    })
}

/// Report an error pulsetrace caused (counted and logged, rate limited, by
/// the Python side); never raises.
pub(crate) fn report(py: Python<'_>, place: &str, err: PyErr) {
    static DIAG: GILOnceCell<PyObject> = GILOnceCell::new();
    if let Ok(f) = DIAG.get_or_try_init(py, || -> PyResult<PyObject> {
        Ok(py
            .import("pulsetrace._diag")?
            .getattr("internal_error")?
            .unbind())
    }) {
        let _ = f.bind(py).call1((place, err.value(py)));
    }
}

/// `environ[key]` if it is a str. Keys are interned Python strings (their
/// hash is cached), so a lookup allocates nothing.
fn text_item<'py>(
    environ: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
) -> Option<Bound<'py, PyString>> {
    environ
        .get_item(key)
        .ok()
        .flatten()
        .and_then(|v| v.downcast_into::<PyString>().ok())
}

fn owned(s: &Bound<'_, PyString>, limits: &Limits, counters: &AttrCounters) -> Arc<str> {
    attrs::truncate(attrs::text(s, counters), limits.max_value_len, counters).into()
}

fn start(
    py: Python<'_>,
    tracer: &Bound<'_, Tracer>,
    environ: &Bound<'_, PyDict>,
) -> PyResult<Py<Span>> {
    let t = tracer.get();
    let start_mono = clock::now_mono_ns();
    let (limits, counters) = t.limits();
    let k = keys();
    let mut a: Vec<(Arc<str>, AttrValue)> = Vec::with_capacity(10);
    let raw_method = text_item(environ, pyo3::intern!(py, "REQUEST_METHOD"));
    let method_text = raw_method
        .as_ref()
        .map(|m| attrs::shared(m, &limits, counters));
    let method: Arc<str> = match &method_text {
        Some(m) if KNOWN_METHODS.contains(&&**m) => m.clone(),
        Some(m) if KNOWN_METHODS.iter().any(|k| k.eq_ignore_ascii_case(m)) => {
            m.to_ascii_uppercase().into()
        }
        Some(_) => "_OTHER".into(),
        None => "GET".into(),
    };
    a.push((k.method.clone(), AttrValue::Str(method.clone())));
    if &*method == "_OTHER" {
        if let Some(m) = method_text {
            a.push((k.method_original.clone(), AttrValue::Str(m)));
        }
    }
    let script = text_item(environ, pyo3::intern!(py, "SCRIPT_NAME"))
        .map(|s| attrs::text(&s, counters))
        .unwrap_or_default();
    let path = text_item(environ, pyo3::intern!(py, "PATH_INFO"))
        .map(|s| attrs::text(&s, counters))
        .unwrap_or_default();
    let full = if script.is_empty() {
        path
    } else {
        script + &path
    };
    let full = if full.is_empty() {
        "/".to_owned()
    } else {
        full
    };
    a.push((
        k.path.clone(),
        AttrValue::Str(attrs::truncate(full, limits.max_value_len, counters).into()),
    ));
    if let Some(q) = text_item(environ, pyo3::intern!(py, "QUERY_STRING")) {
        let q = attrs::text(&q, counters);
        if !q.is_empty() {
            let red = redact_query(&q).into_owned();
            a.push((
                k.query.clone(),
                AttrValue::Str(attrs::truncate(red, limits.max_value_len, counters).into()),
            ));
        }
    }
    let scheme = text_item(environ, pyo3::intern!(py, "wsgi.url_scheme"))
        .map(|s| attrs::shared(&s, &limits, counters))
        .unwrap_or_else(|| "http".into());
    a.push((k.scheme.clone(), AttrValue::Str(scheme)));
    let host = text_item(environ, pyo3::intern!(py, "HTTP_HOST"))
        .or_else(|| text_item(environ, pyo3::intern!(py, "SERVER_NAME")));
    let default_port: Option<i64> = text_item(environ, pyo3::intern!(py, "SERVER_PORT"))
        .and_then(|p| attrs::text(&p, counters).parse().ok());
    let mut port = default_port;
    if let Some(h) = host {
        let h = attrs::text(&h, counters);
        let (name, p) = if let Some(rest) = h.strip_prefix('[') {
            match rest.split_once(']') {
                Some((inside, after)) => (
                    format!("[{inside}]"),
                    after.strip_prefix(':').map(str::to_owned),
                ),
                None => (h.clone(), None),
            }
        } else {
            match h.split_once(':') {
                Some((n, p)) => (n.to_owned(), Some(p.to_owned())),
                None => (h.clone(), None),
            }
        };
        if let Some(p) = p.and_then(|p| p.parse().ok()) {
            port = Some(p);
        }
        if !name.is_empty() {
            a.push((
                k.address.clone(),
                AttrValue::Str(attrs::truncate(name, limits.max_value_len, counters).into()),
            ));
        }
    }
    if let Some(p) = port.filter(|&p| p > 0) {
        a.push((k.port.clone(), AttrValue::Int(p)));
    }
    if let Some(c) = text_item(environ, pyo3::intern!(py, "REMOTE_ADDR")) {
        a.push((
            k.client.clone(),
            AttrValue::Str(owned(&c, &limits, counters)),
        ));
    }
    if let Some(ua) = text_item(environ, pyo3::intern!(py, "HTTP_USER_AGENT")) {
        a.push((
            k.user_agent.clone(),
            AttrValue::Str(attrs::shared(&ua, &limits, counters)),
        ));
    }
    if let Some(p) = text_item(environ, pyo3::intern!(py, "SERVER_PROTOCOL")) {
        let p = attrs::text(&p, counters);
        if let Some((_, v)) = p.split_once('/') {
            a.push((k.protocol.clone(), AttrValue::Str(v.into())));
        }
    }
    let tp = text_item(environ, pyo3::intern!(py, "HTTP_TRACEPARENT"))
        .map(|s| attrs::text(&s, counters));
    let ts =
        text_item(environ, pyo3::intern!(py, "HTTP_TRACESTATE")).map(|s| attrs::text(&s, counters));
    let remote = t.extract_context(tp.as_deref(), ts.as_deref());
    let name: Arc<str> = if &*method == "_OTHER" {
        "HTTP".into()
    } else {
        method
    };
    let span = match remote {
        Some(ctx) => {
            let ctx = Bound::new(py, ctx)?;
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
        for (key, v) in a {
            Span::set_one(&mut inner, key, v, &limits, counters);
        }
    }
    Py::new(py, span)
}

fn fail(py: Python<'_>, span: &Span, err: &PyErr) {
    let exc = err.value(py);
    if let Ok(event) = span.exception_event(py, exc.as_any(), None, None, true) {
        let tracer = span.tracer.get();
        let mut inner = span.inner.lock();
        if !inner.ended {
            span.push_event(&mut inner, event);
            if inner.status != StatusCode::Ok {
                inner.status = StatusCode::Error;
                let ty = exc
                    .get_type()
                    .qualname()
                    .map(|q| q.to_string())
                    .unwrap_or_default();
                let msg = exc
                    .str()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                inner.status_message = attrs::truncate(
                    format!("{ty}: {msg}"),
                    tracer.limits.get().max_value_len,
                    &tracer.attr_counters,
                );
            }
        }
    }
}

/// Name a SERVER span after its route template: `GET /users/<int:id>`.
fn name_after_route(span: &Span, route: &Bound<'_, PyString>) {
    let tracer = span.tracer.get();
    let (limits, counters) = tracer.limits();
    let route = attrs::shared(route, &limits, counters);
    let mut inner = span.inner.lock();
    if inner.ended {
        return;
    }
    let method = inner
        .attributes
        .iter()
        .find(|(k, _)| **k == *keys().method)
        .and_then(|(_, v)| {
            if let AttrValue::Str(m) = v {
                Some(m.clone())
            } else {
                None
            }
        });
    let method = match method.as_deref() {
        Some("_OTHER") | None => "HTTP",
        Some(m) => m,
    };
    inner.name =
        attrs::truncate(format!("{method} {route}"), limits.max_value_len, counters).into();
    Span::set_one(
        &mut inner,
        "http.route".into(),
        AttrValue::Str(route),
        &limits,
        counters,
    );
}

/// `start_response` as the application sees it: records the status (5xx is
/// an error), lets the framework name the span, then calls the server's.
#[pyclass(module = "pulsetrace._native", name = "TracedStartResponse")]
pub struct TracedStartResponse {
    span: Py<Span>,
    start_response: PyObject,
    namer: Option<PyObject>,
}

#[pymethods]
impl TracedStartResponse {
    #[pyo3(signature = (*args))]
    fn __call__(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> PyResult<PyObject> {
        let span = self.span.get();
        if let Ok(status) = args.get_item(0) {
            let code = status.downcast::<PyString>().ok().and_then(|s| {
                s.to_cow()
                    .ok()
                    .and_then(|t| t.get(..3).and_then(|c| c.parse::<u16>().ok()))
            });
            if let Some(code) = code {
                let (limits, counters) = span.tracer.get().limits();
                let mut inner = span.inner.lock();
                if !inner.ended {
                    Span::set_one(
                        &mut inner,
                        keys().status.clone(),
                        AttrValue::Int(i64::from(code)),
                        &limits,
                        counters,
                    );
                    if code >= 500 && inner.status != StatusCode::Ok {
                        inner.status = StatusCode::Error;
                        inner.status_message = format!("HTTP {code}");
                    }
                }
            }
        }
        if let Some(namer) = &self.namer {
            // The framework's route template (or None): the span becomes
            // `METHOD route` with `http.route`.
            match namer.call0(py) {
                Ok(route) => {
                    if let Ok(route) = route.downcast_bound::<PyString>(py) {
                        name_after_route(span, route);
                    }
                }
                Err(e) => report(py, "wsgi.name", e),
            }
        }
        self.start_response.call1(py, args)
    }
}

/// The response body, passed through: the span is current while the
/// application produces each chunk, and ends when the body is exhausted or
/// closed (or, as a last resort, when it is garbage-collected).
#[pyclass(module = "pulsetrace._native", name = "TracedBody")]
pub struct TracedBody {
    body: PyObject,
    iter: Mutex<Option<PyObject>>,
    span: Py<Span>,
}

impl TracedBody {
    fn finish(&self, py: Python<'_>) {
        self.span.get().end_at(py, clock::now_mono_ns());
    }
}

#[pymethods]
impl TracedBody {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<PyObject> {
        let it = {
            let mut guard = self.iter.lock();
            match guard.as_ref() {
                Some(it) => it.clone_ref(py),
                None => {
                    let it = self.body.bind(py).try_iter()?.into_any().unbind();
                    *guard = Some(it.clone_ref(py));
                    it
                }
            }
        };
        let tracer = self.span.get().tracer.get();
        let token = tracer.current.set(self.span.bind(py).as_any()).ok();
        let next = it.bind(py).call_method0(pyo3::intern!(py, "__next__"));
        if let Some(t) = token {
            let _ = tracer.current.reset(&t);
        }
        match next {
            Ok(chunk) => Ok(chunk.unbind()),
            Err(e) if e.is_instance_of::<PyStopIteration>(py) => {
                self.finish(py);
                Err(e)
            }
            Err(e) => {
                fail(py, self.span.get(), &e);
                self.finish(py);
                Err(e)
            }
        }
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let closed = match self.body.bind(py).getattr(pyo3::intern!(py, "close")) {
            Ok(close) => close.call0().map(|_| ()),
            Err(_) => Ok(()),
        };
        self.finish(py);
        closed
    }
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        Python::with_gil(|py| self.finish(py));
    }
}

/// Run a WSGI application for one request inside a SERVER span. `namer`,
/// if given, is called with the span when the response starts (to name it
/// after the route).
#[pyfunction]
#[pyo3(signature = (tracer, app, environ, start_response, namer=None))]
pub fn wsgi_call(
    py: Python<'_>,
    tracer: &Bound<'_, Tracer>,
    app: &Bound<'_, PyAny>,
    environ: &Bound<'_, PyAny>,
    start_response: &Bound<'_, PyAny>,
    namer: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyObject> {
    let t = tracer.get();
    let Ok(env) = environ.downcast::<PyDict>() else {
        return Ok(app.call1((environ, start_response))?.unbind());
    };
    if !t.is_enabled() {
        return Ok(app.call1((environ, start_response))?.unbind());
    }
    let namer = namer.filter(|n| !n.is_none());
    // Already inside this request's SERVER span (a generic middleware around
    // a framework hook): name that span, do not nest a second one.
    if let Ok(outer) = t.current.get(py) {
        if let Ok(s) = outer.downcast::<Span>() {
            let s = s.get();
            if s.recording && s.inner.lock().kind == SpanKind::Server && !s.inner.lock().ended {
                let Some(namer) = namer else {
                    return Ok(app.call1((environ, start_response))?.unbind());
                };
                let wrapped = Py::new(
                    py,
                    TracedStartResponse {
                        span: outer.downcast::<Span>()?.clone().unbind(),
                        start_response: start_response.clone().unbind(),
                        namer: Some(namer.clone().unbind()),
                    },
                )?;
                return Ok(app.call1((environ, wrapped))?.unbind());
            }
        }
    }
    let span = match start(py, tracer, env) {
        Ok(s) => s,
        Err(e) => {
            report(py, "wsgi.start", e);
            return Ok(app.call1((environ, start_response))?.unbind());
        }
    };
    let token = match t.current.set(span.bind(py).as_any()) {
        Ok(tok) => tok,
        Err(e) => {
            report(py, "wsgi.start", e);
            return Ok(app.call1((environ, start_response))?.unbind());
        }
    };
    let wrapped = Py::new(
        py,
        TracedStartResponse {
            span: span.clone_ref(py),
            start_response: start_response.clone().unbind(),
            namer: namer.map(|n| n.clone().unbind()),
        },
    )?;
    let result = app.call1((environ, wrapped));
    let _ = t.current.reset(&token);
    match result {
        Ok(body) => Ok(Py::new(
            py,
            TracedBody {
                body: body.unbind(),
                iter: Mutex::new(None),
                span,
            },
        )?
        .into_any()),
        Err(e) => {
            fail(py, span.get(), &e);
            span.get().end_at(py, clock::now_mono_ns());
            Err(e)
        }
    }
}
