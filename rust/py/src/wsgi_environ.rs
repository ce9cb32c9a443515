//! A WSGI request's SERVER span, read from its environ: the environ values
//! (str only, borrowed from the objects) become a
//! `pulsetrace_core::http::Request`, whose span the core describes
//! (`crate::http`). Nothing here decides what an attribute holds.
//!
//! GIL and locks: runs with the GIL (it reads the environ) and takes no
//! lock of its own (`crate::http`'s redaction words are read once).

use crate::attrs::{self, AttrCounters};
use crate::span::{Span, SpanContext};
use crate::tracer::Tracer;
use pulsetrace_core::clock;
use pulsetrace_core::http::{parse_port, Integration, Request, Text};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyString};
use std::borrow::Cow;

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
    // Used only without a usable Host header, but one dict lookup costs
    // less than finding out whether it is needed.
    "SERVER_NAME",
    // Read only when needed (a traceparent).
    "HTTP_TRACESTATE",
];

/// How many of [`ENV_KEYS`] every request reads.
const ENV_ALWAYS: usize = 12;

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

/// The incoming trace context of a request that has a traceparent.
#[inline(never)]
fn remote_context(
    t: &Tracer,
    environ: &Bound<'_, PyDict>,
    traceparent: &str,
    counters: &AttrCounters,
) -> Option<SpanContext> {
    let ts = env_value(environ, Env::Tracestate);
    let max = t.limits().0.max_value_len;
    t.extract_context(Some(traceparent), view(&ts, max, counters).as_deref())
}

/// The SERVER span of the request `environ` describes (not yet current),
/// or None for an excluded URL (`crate::http::excluded`, with the list of
/// `integration`). `decoded_path`, if given, is the request's path as a
/// framework decoded it, in place of `SCRIPT_NAME` and `PATH_INFO`.
pub(crate) fn start(
    py: Python<'_>,
    tracer: &Bound<'_, Tracer>,
    environ: &Bound<'_, PyDict>,
    decoded_path: Option<&str>,
    integration: Integration,
) -> PyResult<Option<Span>> {
    let t = tracer.get();
    let start_mono = clock::now_mono_ns();
    let (limits, counters) = t.limits();
    let max = limits.max_value_len;
    let env = environ_values(environ);
    let v = |e: Env| view(&env[e as usize], max, counters);
    let (method, script, path, query) =
        (v(Env::Method), v(Env::Script), v(Env::Path), v(Env::Query));
    let (scheme, host, port, client) = (
        v(Env::Scheme),
        v(Env::Host),
        v(Env::ServerPort),
        v(Env::RemoteAddr),
    );
    let (user_agent, protocol) = (v(Env::UserAgent), v(Env::Protocol));
    let server_name = v(Env::ServerName);
    let req = Request {
        method: method.as_deref(),
        scheme: scheme.as_deref(),
        host: host.as_deref(),
        server_name: server_name.as_deref(),
        server_port: port.as_deref().and_then(parse_port),
        script: match decoded_path {
            Some(_) => Text::Decoded(""),
            None => latin1(&script),
        },
        path: match decoded_path {
            Some(p) => Text::Decoded(p),
            None => latin1(&path),
        },
        query: latin1(&query),
        client: client.as_deref(),
        user_agent: user_agent.as_deref(),
        protocol: protocol.as_deref(),
    };
    let s = crate::http::server_span(&req);
    if crate::http::excluded(integration, &s.path) {
        return Ok(None);
    }
    let tp = v(Env::Traceparent);
    let remote = tp.and_then(|tp| remote_context(t, environ, &tp, counters));
    crate::http::new_server_span(py, tracer, &s, remote, start_mono).map(Some)
}

/// The SERVER span of the WSGI request `environ` describes, not yet
/// current: what the native WSGI path starts, for a framework hook that
/// manages the span itself (Django). `path`, if given, is the request's
/// path as the framework decoded it (Django replaces `PATH_INFO` in its
/// `META` with that), read as it is. None for an excluded URL (the list
/// of `integration`, the hook's name).
#[pyfunction]
#[pyo3(signature = (tracer, environ, path=None, integration=None))]
pub fn wsgi_server_span<'py>(
    py: Python<'py>,
    tracer: &Bound<'py, Tracer>,
    environ: &Bound<'py, PyDict>,
    path: Option<&str>,
    integration: Option<&str>,
) -> PyResult<Option<Bound<'py, Span>>> {
    let t = tracer.get();
    if !t.is_enabled() {
        return Ok(Some(t.noop_span(tracer)?.into_bound(py)));
    }
    let integration = crate::http::integration(integration)?;
    crate::guard::guard(
        py,
        "wsgi.server_span",
        || match start(py, tracer, environ, path, integration)? {
            Some(span) => crate::newobj::new_bound(py, span).map(Some),
            None => Ok(None),
        },
        || Ok(Some(t.noop_span(tracer)?.into_bound(py))),
    )
}

/// WSGI text (PEP 3333: latin-1 characters, one per byte received).
fn latin1<'a>(t: &'a Option<Cow<'_, str>>) -> Text<'a> {
    Text::Latin1(t.as_deref().unwrap_or(""))
}
