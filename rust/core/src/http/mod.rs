//! HTTP server spans: the one place that turns the facts of an inbound
//! request into a span name and OpenTelemetry HTTP semantic-convention
//! attributes. Every server integration uses it: the native WSGI path
//! (Flask's fast path, the WSGI middleware, Django under WSGI) and, through
//! the binding's `http_server_span`, the ASGI middleware, Starlette/FastAPI
//! and Django under ASGI. So one request gets one span, whichever framework
//! serves it.
//!
//! The decisions, each made once here:
//! - Method: compared case-insensitively with the known set (RFC 9110 plus
//!   `PATCH` and `QUERY`) and reported upper-case; anything else is
//!   `_OTHER`. `http.request.method_original` carries the method as sent
//!   whenever it differs from `http.request.method` (`get`, `PURGE`). A
//!   missing or empty method is `_OTHER` with no original.
//! - Span name: `METHOD` (or `HTTP` for `_OTHER`), `METHOD route` once the
//!   framework knows the route template. Never the raw path.
//! - Path: the decoded path (`url.path`), as WSGI's `SCRIPT_NAME` +
//!   `PATH_INFO` give it. WSGI carries the path's bytes as latin-1 text
//!   (PEP 3333): they are turned back into bytes and read as UTF-8, so
//!   `/café` is `/café` under every server. ASGI's `raw_path` (the path as
//!   received) is percent-decoded into the same bytes (its `path` has
//!   U+FFFD where the bytes are not UTF-8, so it is used only without
//!   `raw_path`). A byte that is not part of valid UTF-8 is written `%XX`
//!   (as an IRI keeps it, and as Django reports it): nothing is lost. An
//!   empty path is `/`.
//! - Query: `url.query` as received (WSGI: latin-1 text of the bytes; ASGI:
//!   bytes), read as UTF-8 the same way, with the values of sensitive
//!   parameters replaced by `REDACTED` ([`redact_query`]). Empty: absent.
//! - Status: a 5xx response makes the span an error (`HTTP 503`), a 4xx
//!   does not ([`status_error`]).
//! - Host: `server.address` and `server.port` come from the `Host` header
//!   (`example.com:8080`; `[::1]:8080` gives `::1`, without brackets, as an
//!   HTTP client span reports it). An absent, empty or malformed header
//!   (`[::1`, a port that is not a number in 1..=65535) is not used: the
//!   server's own name and port are (WSGI `SERVER_NAME`/`SERVER_PORT`, ASGI
//!   `server`). A Host without a port takes the server's port.
//! - `url.scheme` defaults to `http`; `client.address`, `user_agent.original`
//!   and `network.protocol.version` (`HTTP/1.1` and `1.1` both give `1.1`)
//!   are set when present and not empty.
//!
//! - Excluded URLs (probe routes): no span at all ([`exclude`]).
//!
//! Untrusted input: nothing here panics, whatever the bytes (property-tested
//! in `tests/http_props.rs`), and every output is at most a small constant
//! times its input. Lengths are bounded afterwards by the span's attribute
//! limits, like any attribute.

pub mod exclude;
mod query;
mod request;

pub use exclude::{BadPattern, Exclusion, Integration};
pub use query::{percent_decode, redact_query, redaction_words, REDACTED};
pub use request::{
    method_of, parse_port, server_span, span_name, split_host, Method, Request, ServerSpan, Text,
    Value, KNOWN_METHODS,
};

/// The attribute keys of a server span.
pub mod keys {
    pub const METHOD: &str = "http.request.method";
    pub const METHOD_ORIGINAL: &str = "http.request.method_original";
    pub const ROUTE: &str = "http.route";
    pub const STATUS_CODE: &str = "http.response.status_code";
    pub const PATH: &str = "url.path";
    pub const QUERY: &str = "url.query";
    pub const SCHEME: &str = "url.scheme";
    pub const SERVER_ADDRESS: &str = "server.address";
    pub const SERVER_PORT: &str = "server.port";
    pub const CLIENT_ADDRESS: &str = "client.address";
    pub const USER_AGENT: &str = "user_agent.original";
    pub const PROTOCOL_VERSION: &str = "network.protocol.version";
}

/// The code of a WSGI status line (`"200 OK"`): its first three
/// characters, when they are ASCII digits (100 to 999; the reason phrase is
/// not read).
pub fn status_code(line: &str) -> Option<u16> {
    match line.as_bytes() {
        [a, b, c, ..] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
            (code >= 100).then_some(code)
        }
        _ => None,
    }
}

/// A response status that makes a server span an error (5xx; a 4xx is the
/// client's), with the status message it gets.
pub fn status_error(code: u16) -> Option<String> {
    (code >= 500).then(|| format!("HTTP {code}"))
}
