//! The WSGI request path, native: a request's SERVER span is started from
//! the environ, made current while the application runs, named and given
//! its status when the response starts, and ended when the body is
//! exhausted or closed. The Python-level hook (`pulsetrace.contrib.wsgi`)
//! only forwards to [`wsgi_call`]; doing this in Rust keeps the whole
//! per-request cost to a few microseconds.
//!
//! Failure rule: an error inside pulsetrace is reported through
//! `pulsetrace._diag.internal_error` and the request proceeds untouched; the
//! application's exceptions pass through as the same objects. pulsetrace's
//! work before and after each call into the application (its WSGI call,
//! its body's iteration and `close()`, the server's `start_response`) runs
//! under a panic guard ([`crate::guard`]); the calls themselves do not, so
//! nothing the application does is ever repeated or lost.
//!
//! GIL and locks: everything runs with the GIL (it calls the application).
//! Locks: a response's `state` and a
//! span's `inner`: each is taken only with the GIL held and never across a
//! call into Python code (the application, `start_response`, the body, the
//! namer run with none held; `__traverse__` only tries `state`), so no
//! thread waits for one. A span ends through `Span::end_at`, which hands it
//! to the core without waiting (`span`'s docs). The route-name cache is a
//! `GILProtected` cell, borrowed with `try_borrow`.

use crate::attrs::{self, AttrCounters, Limits};
use crate::guard::{guard, or_error, report};
use crate::span::Span;
use crate::tracer::Tracer;
use crate::wsgi_app::RouteNamer;
use parking_lot::Mutex;
use pulsetrace_core::clock;
use pulsetrace_core::span::{AttrValue, SpanKind, StatusCode};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyIterator, PyList, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

const KNOWN_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
];

/// Replace the words of sensitive query parameters: the configuration's
/// `redact_query_params`, set by `Tracer.configure`, handed to the scrubber.
pub fn set_redacted_params(words: Vec<String>) {
    pulsetrace_core::scrub::set_query_words(words);
}

/// The query string with the values of sensitive parameters replaced by
/// `REDACTED`; other parameters are kept byte for byte (personal data in
/// them is masked at export, off the request thread).
#[pyfunction]
#[pyo3(name = "redact_query")]
pub fn py_redact_query(query: &str) -> PyResult<Cow<'_, str>> {
    or_error("wsgi.redact_query", || Ok(redact_query(query)))
}

/// [`py_redact_query`]'s rule: the scrubber's request-path part
/// (`pulsetrace_core::scrub`, `redact_query_words`).
pub fn redact_query(query: &str) -> Cow<'_, str> {
    pulsetrace_core::scrub::with_current(|s| s.redact_query_words(query))
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
    route: Arc<str>,
    /// Values that repeat on every request, shared.
    methods: Vec<Arc<str>>,
    other: Arc<str>,
    http_name: Arc<str>,
    root: Arc<str>,
    http: Arc<str>,
    https: Arc<str>,
    v11: Arc<str>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        method: "http.request.method".into(),
        route: "http.route".into(),
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
        methods: KNOWN_METHODS.iter().map(|m| Arc::from(*m)).collect(),
        other: "_OTHER".into(),
        http_name: "HTTP".into(),
        root: "/".into(),
        http: "http".into(),
        https: "https".into(),
        v11: "1.1".into(),
    })
}

/// The environ keys a request span reads, in [`Env`] order.
const ENV_KEYS: [&str; 13] = [
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "wsgi.url_scheme",
    "HTTP_HOST",
    "SERVER_PORT",
    "REMOTE_ADDR",
    "HTTP_USER_AGENT",
    "SERVER_PROTOCOL",
    "HTTP_TRACEPARENT",
    // Read only when needed (no Host header; a traceparent).
    "SERVER_NAME",
    "HTTP_TRACESTATE",
];

/// How many of [`ENV_KEYS`] every request reads.
const ENV_ALWAYS: usize = 11;

#[derive(Clone, Copy)]
enum Env {
    Method,
    Script,
    Path,
    Query,
    Scheme,
    Host,
    ServerPort,
    RemoteAddr,
    UserAgent,
    Protocol,
    Traceparent,
    ServerName,
    Tracestate,
}

static ENV_KEY_OBJECTS: GILOnceCell<Vec<Py<PyString>>> = GILOnceCell::new();

/// The environ values every request span reads (str values only), in one loop:
/// one small piece of code instead of one inlined lookup per key, which
/// matters when the request path runs with cold caches (every request on a
/// busy server).
#[inline(never)]
fn environ_values<'py>(environ: &Bound<'py, PyDict>) -> [Option<Bound<'py, PyString>>; ENV_ALWAYS] {
    let mut out: [Option<Bound<'py, PyString>>; ENV_ALWAYS] = Default::default();
    for (slot, key) in out.iter_mut().zip(env_keys(environ.py())) {
        *slot = text_item(environ, key.bind(environ.py()));
    }
    out
}

fn env_keys(py: Python<'_>) -> &Vec<Py<PyString>> {
    ENV_KEY_OBJECTS.get_or_init(py, || {
        ENV_KEYS
            .iter()
            .map(|k| PyString::intern(py, k).unbind())
            .collect()
    })
}

/// One of the environ values read only when needed.
fn env_value<'py>(environ: &Bound<'py, PyDict>, which: Env) -> Option<Bound<'py, PyString>> {
    let key = env_keys(environ.py())[which as usize].bind(environ.py());
    text_item(environ, key)
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

/// The text of an environ value (None if absent or not a str): borrowed from
/// the str object, or, for a str that is not valid UTF-8 (lone surrogates), a
/// copy with U+FFFD (counted). A value longer than `max` characters (what
/// no server sends, but an application may put there) is cut to `max`
/// bytes before anything is read out of it.
fn view<'a>(
    v: &'a Option<Bound<'_, PyString>>,
    max: usize,
    counters: &AttrCounters,
) -> Option<Cow<'a, str>> {
    let s = v.as_ref()?;
    if attrs::char_len(s) > max {
        return Some(Cow::Owned(long_text(s, max, counters)));
    }
    Some(match crate::pystr::utf8(s) {
        Some(t) => Cow::Borrowed(t),
        None => Cow::Owned(lossy_text(s, counters)),
    })
}

/// An environ value longer than the length limit: rare, kept out of the
/// request path's code.
#[cold]
#[inline(never)]
fn long_text(s: &Bound<'_, PyString>, max: usize, counters: &AttrCounters) -> String {
    attrs::string(s, max, counters)
}

/// A str that is not valid UTF-8 (lone surrogates): rare, kept out of the
/// request path's code.
#[cold]
#[inline(never)]
fn lossy_text(s: &Bound<'_, PyString>, counters: &AttrCounters) -> String {
    attrs::text(s, counters)
}

/// `SCRIPT_NAME` and `PATH_INFO` joined (an application mounted under a
/// prefix: rare).
#[cold]
#[inline(never)]
fn joined_path(script: &str, path: &str) -> String {
    format!("{script}{path}")
}

/// The incoming trace context of a request that has a traceparent.
#[inline(never)]
fn remote_context(
    t: &Tracer,
    environ: &Bound<'_, PyDict>,
    traceparent: &str,
    counters: &AttrCounters,
) -> Option<crate::span::SpanContext> {
    let ts = env_value(environ, Env::Tracestate);
    let max = t.limits().0.max_value_len;
    t.extract_context(Some(traceparent), view(&ts, max, counters).as_deref())
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

/// `t` as shared text, truncated to the value limit: the same text as an
/// earlier request's (the usual case) without a copy.
fn arc(py: Python<'_>, t: &str, limits: &Limits, counters: &AttrCounters) -> Arc<str> {
    attrs::recurring(py, t, limits.max_value_len, counters)
}

/// `s` split at the first `b` (an ASCII byte): `str::split_once` without
/// its general searcher, for the short texts of a request.
fn split_at_byte(s: &str, b: u8) -> Option<(&str, &str)> {
    let i = s.bytes().position(|c| c == b)?;
    // An ASCII byte is a character boundary on both sides.
    Some((&s[..i], &s[i + 1..]))
}

fn start(
    py: Python<'_>,
    tracer: &Bound<'_, Tracer>,
    environ: &Bound<'_, PyDict>,
) -> PyResult<Py<Span>> {
    let t = tracer.get();
    let start_mono = clock::now_mono_ns();
    let (limits, counters) = t.limits();
    let max = limits.max_value_len;
    let k = keys();
    // Room for every attribute of a request span, those the response adds
    // (status code, route) included: the vector becomes the span's own.
    let mut a: Vec<(Arc<str>, AttrValue)> = Vec::with_capacity(14);
    let mut env = environ_values(environ);
    let raw_method = env[Env::Method as usize].take();
    let raw_method_view = view(&raw_method, max, counters);
    let raw_method_text = raw_method_view.as_deref();
    // Known methods map to shared constants: no allocation per request.
    let known = raw_method_text.and_then(|m| {
        k.methods
            .iter()
            .find(|known| known.eq_ignore_ascii_case(m))
            .cloned()
    });
    let method: Arc<str> = match (known, raw_method_text) {
        (Some(m), _) => m,
        (None, Some(_)) => k.other.clone(),
        (None, None) => k.methods[0].clone(),
    };
    a.push((k.method.clone(), AttrValue::Str(method.clone())));
    if Arc::ptr_eq(&method, &k.other) {
        if let Some(m) = raw_method_text {
            a.push((
                k.method_original.clone(),
                AttrValue::Str(arc(py, m, &limits, counters)),
            ));
        }
    }
    let script = env[Env::Script as usize].take();
    let path = env[Env::Path as usize].take();
    let (script, path) = (view(&script, max, counters), view(&path, max, counters));
    let path_value = match (
        script.as_deref().unwrap_or(""),
        path.as_deref().unwrap_or(""),
    ) {
        ("", "") => k.root.clone(),
        ("", p) => arc(py, p, &limits, counters),
        (s, p) => arc(py, &joined_path(s, p), &limits, counters),
    };
    a.push((k.path.clone(), AttrValue::Str(path_value)));
    let query = env[Env::Query as usize].take();
    if let Some(q) = view(&query, max, counters).filter(|q| !q.is_empty()) {
        a.push((
            k.query.clone(),
            AttrValue::Str(arc(py, &redact_query(&q), &limits, counters)),
        ));
    }
    let scheme = env[Env::Scheme as usize].take();
    let scheme = match view(&scheme, max, counters).as_deref() {
        None | Some("http") => k.http.clone(),
        Some("https") => k.https.clone(),
        Some(other) => arc(py, other, &limits, counters),
    };
    a.push((k.scheme.clone(), AttrValue::Str(scheme)));
    let mut host = env[Env::Host as usize].take();
    if host.is_none() {
        host = env_value(environ, Env::ServerName);
    }
    let server_port = env[Env::ServerPort as usize].take();
    let mut port: Option<i64> = view(&server_port, max, counters).and_then(|p| p.parse().ok());
    if let Some(h) = view(&host, max, counters) {
        let h: &str = &h;
        let (name, p) = match h.strip_prefix('[').map(|rest| split_at_byte(rest, b']')) {
            Some(Some((inside, after))) => (&h[..inside.len() + 2], after.strip_prefix(':')),
            Some(None) => (h, None),
            None => match split_at_byte(h, b':') {
                Some((n, p)) => (n, Some(p)),
                None => (h, None),
            },
        };
        if let Some(p) = p.and_then(|p| p.parse().ok()) {
            port = Some(p);
        }
        if !name.is_empty() {
            a.push((
                k.address.clone(),
                AttrValue::Str(arc(py, name, &limits, counters)),
            ));
        }
    }
    if let Some(p) = port.filter(|&p| p > 0) {
        a.push((k.port.clone(), AttrValue::Int(p)));
    }
    let client = env[Env::RemoteAddr as usize].take();
    if let Some(c) = view(&client, max, counters) {
        a.push((
            k.client.clone(),
            AttrValue::Str(arc(py, &c, &limits, counters)),
        ));
    }
    let ua = env[Env::UserAgent as usize].take();
    if let Some(ua) = view(&ua, max, counters) {
        a.push((
            k.user_agent.clone(),
            AttrValue::Str(arc(py, &ua, &limits, counters)),
        ));
    }
    let protocol = env[Env::Protocol as usize].take();
    let protocol = view(&protocol, max, counters);
    if let Some((_, v)) = protocol.as_deref().and_then(|p| split_at_byte(p, b'/')) {
        let v = match v {
            "1.1" => k.v11.clone(),
            other => arc(py, other, &limits, counters),
        };
        a.push((k.protocol.clone(), AttrValue::Str(v)));
    }
    let tp = env[Env::Traceparent as usize].take();
    let remote = view(&tp, max, counters).and_then(|tp| remote_context(t, environ, &tp, counters));
    let name: Arc<str> = if Arc::ptr_eq(&method, &k.other) {
        k.http_name.clone()
    } else {
        method
    };
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
    Ok(crate::newobj::new_bound(py, span)?.unbind())
}

/// Undo the context switch of a request span's application call (its
/// token, if still held): in the context it was made in, the value before
/// the request comes back; in another, the token is kept for that context.
fn restore_request_context(span: &Bound<'_, Span>) {
    let s = span.get();
    let Some(token) = s.inner.lock().request_token.take() else {
        return;
    };
    let py = span.py();
    if s.tracer.get().current.reset(token.bind(py)).is_err() {
        s.inner.lock().request_token = Some(token);
    }
}

fn fail(py: Python<'_>, span: &Span, err: &PyErr) {
    guard(
        py,
        "wsgi.error",
        || span.fail_with(py, err.value(py).as_any()),
        || (),
    );
}

/// `METHOD route` names, made once per (method, route) pair: a route
/// template is interned text (`attrs::shared`), so the pair of shared texts
/// is the key (compared by pointer; the entry holds both, so a pointer is
/// never reused while its entry lives). Direct-mapped; a collision only
/// formats the name again.
type RouteNameEntry = (Arc<str>, Arc<str>, usize, Arc<str>);

const ROUTE_NAME_SLOTS: usize = 256;

static ROUTE_NAMES: pyo3::sync::GILProtected<std::cell::RefCell<Vec<Option<RouteNameEntry>>>> =
    pyo3::sync::GILProtected::new(std::cell::RefCell::new(Vec::new()));

fn route_name(
    py: Python<'_>,
    method: &Arc<str>,
    route: &Arc<str>,
    limits: &Limits,
    counters: &AttrCounters,
) -> Arc<str> {
    let m = Arc::as_ptr(method) as *const u8 as usize;
    let r = Arc::as_ptr(route) as *const u8 as usize;
    let slot = ((m >> 4) ^ (r >> 4).wrapping_mul(31)) % ROUTE_NAME_SLOTS;
    let max = limits.max_value_len;
    let cache = ROUTE_NAMES.get(py);
    if let Ok(c) = cache.try_borrow() {
        if let Some(Some((cm, cr, cmax, name))) = c.get(slot) {
            if Arc::ptr_eq(cm, method) && Arc::ptr_eq(cr, route) && *cmax == max {
                return name.clone();
            }
        }
    }
    let method_text = match &**method {
        "_OTHER" => "HTTP",
        other => other,
    };
    let name: Arc<str> = attrs::truncate(format!("{method_text} {route}"), max, counters).into();
    if let Ok(mut c) = cache.try_borrow_mut() {
        if c.is_empty() {
            c.resize(ROUTE_NAME_SLOTS, None);
        }
        c[slot] = Some((method.clone(), route.clone(), max, name.clone()));
    }
    name
}

/// Name a SERVER span after its route template: `GET /users/<int:id>`.
fn name_after_route(span: &Span, route: &Bound<'_, PyString>) {
    let py = route.py();
    let tracer = span.tracer.get();
    let (limits, counters) = tracer.limits();
    let route = attrs::shared(route, &limits, counters);
    let mut inner = span.inner.lock();
    if inner.ended {
        return;
    }
    let k = keys();
    let method = inner
        .attributes
        .iter()
        .find(|(key, _)| *key == k.method)
        .and_then(|(_, v)| {
            if let AttrValue::Str(m) = v {
                Some(m.clone())
            } else {
                None
            }
        })
        .unwrap_or_else(|| k.http_name.clone());
    inner.name = route_name(py, &method, &route, &limits, counters);
    Span::set_one(
        &mut inner,
        k.route.clone(),
        AttrValue::Str(route),
        &limits,
        counters,
    );
}

/// One request's response, as the application and the server see it.
///
/// Called, it is the `start_response` the application gets: it records the
/// status (5xx is an error), lets the framework name the span, then calls
/// the server's. Iterated and closed, it is the body the server gets back:
/// the span ends when the body is exhausted (if the application's has no
/// `close()`) or closed, or, as a last resort, when it is garbage-collected.
/// One object per request instead of two. An application may keep its
/// `start_response` inside its body (a generator that starts the response
/// lazily), which makes a reference cycle: the object takes part in GC.
///
/// The span stays current from the application call to the body's end, so
/// that the application's code producing chunks (a streaming generator, a
/// `close()` callback) runs inside it, with one context switch per request
/// rather than one per chunk. When the server iterates in another context
/// than the one the application ran in (where the span is not current),
/// each call into the application's body makes the span current for its
/// own duration.
#[pyclass(frozen, module = "pulsetrace._native", name = "TracedResponse")]
pub struct TracedResponse {
    span: Py<Span>,
    namer: Option<PyObject>,
    state: Mutex<ResponseState>,
    /// The span has been ended (exhausted, closed or failed), or is not
    /// this object's to end (it only names an enclosing request's span).
    finished: AtomicBool,
}

struct ResponseState {
    /// The server's `start_response`.
    start_response: Option<PyObject>,
    /// The application's body, once it has returned it.
    body: Option<PyObject>,
    iter: Option<Py<PyIterator>>,
    /// The body's close() (None: it has none), once looked up.
    close: Option<Option<PyObject>>,
    /// The application call made the span current in its context, and
    /// that has not been undone yet.
    live: bool,
}

impl TracedResponse {
    fn new(span: Py<Span>, start_response: PyObject, namer: Option<PyObject>, owned: bool) -> Self {
        TracedResponse {
            span,
            namer,
            state: Mutex::new(ResponseState {
                start_response: Some(start_response),
                body: None,
                iter: None,
                close: None,
                live: owned,
            }),
            finished: AtomicBool::new(!owned),
        }
    }

    /// The span is the current one in the running context.
    fn is_current(&self, py: Python<'_>) -> bool {
        let tracer = self.span.get().tracer.get();
        matches!(tracer.current.get(py), Ok(c) if c.is(self.span.bind(py)))
    }

    /// Run `f` (the application's code) with the span current: as it is,
    /// if the application call's switch is still in place here (`live` and
    /// the span current), else with the span made current for this call.
    fn in_span<R>(&self, py: Python<'_>, live: bool, f: impl FnOnce() -> R) -> R {
        if live && self.is_current(py) {
            return f();
        }
        let current = &self.span.get().tracer.get().current;
        let token = current.set(self.span.bind(py).as_any()).ok();
        let out = f();
        if let Some(t) = token {
            let _ = current.reset(&t);
        }
        out
    }

    /// Give the context the value it had before the application call, if
    /// this runs in that context and the span is still current there (a
    /// reset would otherwise undo what was set after it). Otherwise the
    /// token stays with the span, for the next request in that context to
    /// restore ([`restore_request_context`]).
    fn restore(&self, py: Python<'_>) {
        self.state.lock().live = false;
        if self.is_current(py) {
            restore_request_context(self.span.bind(py));
        }
    }

    /// The application body's close(), if it has one (looked up once). A
    /// list or tuple (what most WSGI apps return) has none: not looking it
    /// up saves raising and clearing an AttributeError.
    fn inner_close<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let body = {
            let state = self.state.lock();
            if let Some(close) = &state.close {
                return close.as_ref().map(|c| c.bind(py).clone());
            }
            state.body.as_ref()?.bind(py).clone()
        };
        let close =
            if body.is_exact_instance_of::<PyList>() || body.is_exact_instance_of::<PyTuple>() {
                None
            } else {
                body.getattr(pyo3::intern!(py, "close")).ok()
            };
        self.state.lock().close = Some(close.as_ref().map(|c| c.clone().unbind()));
        close
    }

    fn finish(&self, py: Python<'_>) {
        if !self.finished.swap(true, Ordering::Relaxed) {
            guard(py, "wsgi.restore", || self.restore(py), || ());
            guard(
                py,
                "wsgi.end",
                || self.span.get().end_at(py, clock::now_mono_ns()),
                || (),
            );
        }
    }

    /// The response starts: its status is recorded and the framework names
    /// the span.
    fn on_start_response(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) {
        if let Ok(status) = args.get_item(0) {
            self.record_status(&status);
        }
        if let Some(namer) = &self.namer {
            // The framework's route template (or None): the span becomes
            // `METHOD route` with `http.route`.
            let route = match namer.downcast_bound::<RouteNamer>(py) {
                Ok(native) => native.get().route(py),
                Err(_) => namer.bind(py).call0(),
            };
            match route {
                Ok(route) => {
                    if let Ok(route) = route.downcast::<PyString>() {
                        name_after_route(self.span.get(), route);
                    }
                }
                Err(e) => report(py, "wsgi.name", e),
            }
        }
    }

    /// The status line's code: recorded, and a 5xx makes the span an error.
    fn record_status(&self, status: &Bound<'_, PyAny>) {
        let span = self.span.get();
        let code = status.downcast::<PyString>().ok().and_then(|s| {
            crate::pystr::utf8(s).and_then(|t| t.get(..3).and_then(|c| c.parse::<u16>().ok()))
        });
        let Some(code) = code else {
            return;
        };
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

#[pymethods]
impl TracedResponse {
    /// `start_response(status, headers, exc_info=None)`, as the application
    /// calls it.
    #[pyo3(signature = (*args))]
    fn __call__(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> PyResult<PyObject> {
        guard(
            py,
            "wsgi.status",
            || self.on_start_response(py, args),
            || (),
        );
        let start_response = self
            .state
            .lock()
            .start_response
            .as_ref()
            .map(|s| s.bind(py).clone());
        match start_response {
            Some(sr) => Ok(sr.call1(args)?.unbind()),
            None => Err(pyo3::exceptions::PyRuntimeError::new_err(
                "start_response called after the response was released",
            )),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next chunk, or None at the end (the iterator protocol's
    /// exhaustion without a StopIteration object: PyIter_Next's way).
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyObject>> {
        let (it, body, live) = {
            let state = self.state.lock();
            (
                state.iter.as_ref().map(|i| i.bind(py).clone()),
                state.body.as_ref().map(|b| b.bind(py).clone()),
                state.live,
            )
        };
        let mut it = match (it, body) {
            (Some(it), _) => it,
            (None, Some(body)) => {
                // The body's own __iter__ is the application's code too.
                let it = self.in_span(py, live, || body.try_iter())?;
                self.state.lock().iter = Some(it.clone().unbind());
                it
            }
            (None, None) => return Ok(None),
        };
        let next = self.in_span(py, live, || it.next());
        match next {
            Some(Ok(chunk)) => Ok(Some(chunk.unbind())),
            None => {
                // A body with a close() of its own ends with it (the server
                // calls ours), so that the work close() does is part of the
                // request; any other ends now.
                if self.inner_close(py).is_none() {
                    self.finish(py);
                }
                Ok(None)
            }
            Some(Err(e)) => {
                fail(py, self.span.get(), &e);
                self.finish(py);
                Err(e)
            }
        }
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let closed = match self.inner_close(py) {
            Some(close) => {
                let live = self.state.lock().live;
                self.in_span(py, live, || close.call0().map(|_| ()))
            }
            None => Ok(()),
        };
        self.finish(py);
        closed
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(n) = &self.namer {
            visit.call(n)?;
        }
        // Held only briefly and never across Python code; if it is held
        // now, these references are simply not reported this time (the
        // collector then keeps the object: safe).
        if let Some(state) = self.state.try_lock() {
            let close = state.close.as_ref().and_then(|c| c.as_ref());
            for r in [state.start_response.as_ref(), state.body.as_ref(), close]
                .into_iter()
                .flatten()
            {
                visit.call(r)?;
            }
            if let Some(it) = &state.iter {
                visit.call(it)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        // Taken under the lock, released after it: releasing may run Python
        // code (a finaliser) that touches this object again.
        let taken = {
            let mut state = self.state.lock();
            (
                state.start_response.take(),
                state.body.take(),
                state.iter.take(),
                state.close.take(),
            )
        };
        drop(taken);
    }
}

impl Drop for TracedResponse {
    fn drop(&mut self) {
        if !self.finished.load(Ordering::Relaxed) {
            Python::with_gil(|py| self.finish(py));
        }
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
    traced_request(py, tracer, environ, start_response, namer, &|sr| {
        app.call1((environ, sr))
    })
}

/// What pulsetrace does around one application call.
enum Plan<'py> {
    /// Run the application untouched.
    Untraced,
    /// Inside an enclosing request's span: the application gets a
    /// `start_response` that names that span.
    Naming(Bound<'py, TracedResponse>),
    /// A new request span, made current, and the object the application
    /// gets as its `start_response` (and the server as its body).
    Traced(Py<Span>, Bound<'py, TracedResponse>),
}

/// Everything before the application call. A failure (reported) leaves the
/// request untraced; the context is switched last, when nothing can fail.
fn plan<'py>(
    py: Python<'py>,
    tracer: &Bound<'py, Tracer>,
    env: &Bound<'py, PyDict>,
    start_response: &Bound<'py, PyAny>,
    namer: Option<&Bound<'py, PyAny>>,
) -> Plan<'py> {
    let t = tracer.get();
    // Inside the application call of this request's SERVER span (a generic
    // middleware around a framework hook): name that span, do not nest a
    // second one. (A span whose body is still being sent is not serving: a
    // request that starts meanwhile in the same context gets its own span.)
    if let Ok(outer) = t.current.get(py) {
        if let Ok(outer_span) = outer.downcast::<Span>() {
            if outer_span.get().serving.load(Ordering::Relaxed) {
                let Some(namer) = namer else {
                    return Plan::Untraced;
                };
                let naming = TracedResponse::new(
                    outer_span.clone().unbind(),
                    start_response.clone().unbind(),
                    Some(namer.clone().unbind()),
                    false,
                );
                return match crate::newobj::new_bound(py, naming) {
                    Ok(wrapped) => Plan::Naming(wrapped),
                    Err(e) => {
                        report(py, "wsgi.start", e);
                        Plan::Untraced
                    }
                };
            }
            // A request span left current by a body that ended in another
            // context (or not yet): this context gets its value back.
            restore_request_context(outer_span);
        }
    }
    let span = match start(py, tracer, env) {
        Ok(s) => s,
        Err(e) => {
            report(py, "wsgi.start", e);
            return Plan::Untraced;
        }
    };
    let response = TracedResponse::new(
        span.clone_ref(py),
        start_response.clone().unbind(),
        namer.map(|n| n.clone().unbind()),
        true,
    );
    let response = match crate::newobj::new_bound(py, response) {
        Ok(r) => r,
        Err(e) => {
            report(py, "wsgi.start", e);
            return Plan::Untraced;
        }
    };
    match t.current.set(span.bind(py).as_any()) {
        Ok(token) => span.get().inner.lock().request_token = Some(token.unbind()),
        Err(e) => {
            // Never current, never ended: not recorded.
            response.get().finished.store(true, Ordering::Relaxed);
            report(py, "wsgi.start", e);
            return Plan::Untraced;
        }
    }
    span.get().serving.store(true, Ordering::Relaxed);
    Plan::Traced(span, response)
}

/// The request path of every WSGI hook: `call(start_response)` runs the
/// application with the `start_response` it must see.
pub(crate) fn traced_request<'py>(
    py: Python<'py>,
    tracer: &Bound<'py, Tracer>,
    environ: &Bound<'py, PyAny>,
    start_response: &Bound<'py, PyAny>,
    namer: Option<&Bound<'py, PyAny>>,
    call: &dyn Fn(&Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<PyObject> {
    let t = tracer.get();
    let Ok(env) = environ.downcast::<PyDict>() else {
        return Ok(call(start_response)?.unbind());
    };
    if !t.is_enabled() {
        return Ok(call(start_response)?.unbind());
    }
    let namer = namer.filter(|n| !n.is_none());
    let plan = guard(
        py,
        "wsgi.start",
        || plan(py, tracer, env, start_response, namer),
        || Plan::Untraced,
    );
    let (span, response) = match plan {
        Plan::Untraced => return Ok(call(start_response)?.unbind()),
        Plan::Naming(wrapped) => return Ok(call(wrapped.as_any())?.unbind()),
        Plan::Traced(span, response) => (span, response),
    };
    let result = call(response.as_any());
    span.get().serving.store(false, Ordering::Relaxed);
    match result {
        // The span stays current until the body ends (TracedResponse::restore).
        Ok(body) if !body.is(&response) => {
            response.get().state.lock().body = Some(body.unbind());
            Ok(response.into_any().unbind())
        }
        // The application returned its start_response as its body: passed
        // through, and the span ends now.
        Ok(body) => {
            response.get().finish(py);
            Ok(body.unbind())
        }
        Err(e) => {
            response.get().finished.store(true, Ordering::Relaxed);
            guard(
                py,
                "wsgi.restore",
                || restore_request_context(span.bind(py)),
                || (),
            );
            fail(py, span.get(), &e);
            guard(
                py,
                "wsgi.end",
                || span.get().end_at(py, clock::now_mono_ns()),
                || (),
            );
            Err(e)
        }
    }
}
