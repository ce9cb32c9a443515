//! A request's facts in, its server span's name and attributes out.

use super::query::redact_query;
use std::borrow::Cow;

/// The methods reported as they are (upper-case); any other is `_OTHER`.
pub const KNOWN_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
];

/// A request method, normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// One of [`KNOWN_METHODS`], by index.
    Known(u8),
    /// Any other method (or none).
    Other,
}

impl Method {
    /// `http.request.method`'s value.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Known(i) => KNOWN_METHODS[usize::from(i)],
            Method::Other => "_OTHER",
        }
    }

    /// What a span name starts with: the method, or `HTTP` for `_OTHER`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Known(i) => KNOWN_METHODS[usize::from(i)],
            Method::Other => "HTTP",
        }
    }
}

/// The normalised method of `raw` (case-insensitive; missing or unknown:
/// `_OTHER`).
pub fn method_of(raw: Option<&str>) -> Method {
    let Some(raw) = raw else {
        return Method::Other;
    };
    match KNOWN_METHODS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(raw))
    {
        // Ten methods: the index fits.
        Some(i) => Method::Known(i as u8),
        None => Method::Other,
    }
}

/// A span name: `METHOD route` with a route template, `METHOD` without one
/// (`HTTP` stands for `_OTHER`).
pub fn span_name(method: Method, route: Option<&str>) -> Cow<'static, str> {
    match route.filter(|r| !r.is_empty()) {
        Some(route) => Cow::Owned(format!("{} {route}", method.name())),
        None => Cow::Borrowed(method.name()),
    }
}

/// Text as a server hands it over.
#[derive(Clone, Copy, Debug)]
pub enum Text<'a> {
    /// WSGI (PEP 3333): each character one byte of what was received.
    /// Characters above U+00FF (not PEP 3333 text: an application or test
    /// client that put decoded text there) are taken as decoded text.
    Latin1(&'a str),
    /// Already decoded text (ASGI's `path`, a framework's decoded path).
    Decoded(&'a str),
    /// The bytes received (ASGI's `query_string`).
    Bytes(&'a [u8]),
    /// A path as received, percent-encoded (ASGI's `raw_path`): `%XX`
    /// sequences are decoded (and nothing else, `+` included).
    PercentEncoded(&'a [u8]),
}

impl<'a> Text<'a> {
    /// The text, its bytes read as UTF-8. A byte that is not part of valid
    /// UTF-8 is written `%XX` (upper-case hex), as an IRI keeps it (RFC
    /// 3987, 3.2; what Django reports too): nothing is lost, and the result
    /// is the same whichever server decoded the path.
    pub fn decode(self) -> Cow<'a, str> {
        match self {
            Text::Decoded(s) => Cow::Borrowed(s),
            Text::Bytes(b) => utf8_or_percent(b),
            Text::PercentEncoded(b) => match percent_decode_bytes(b) {
                Cow::Borrowed(b) => utf8_or_percent(b),
                Cow::Owned(b) => Cow::Owned(utf8_or_percent(&b).into_owned()),
            },
            // ASCII (nearly every path and query) is the same either way.
            Text::Latin1(s) if s.is_ascii() => Cow::Borrowed(s),
            Text::Latin1(s) => {
                if s.chars().any(|c| u32::from(c) > 0xFF) {
                    return Cow::Borrowed(s);
                }
                // Every character is below U+0100: one byte each.
                let bytes: Vec<u8> = s.chars().map(|c| u32::from(c) as u8).collect();
                Cow::Owned(utf8_or_percent(&bytes).into_owned())
            }
        }
    }

    /// No text at all.
    pub fn is_empty(self) -> bool {
        match self {
            Text::Latin1(s) | Text::Decoded(s) => s.is_empty(),
            Text::Bytes(b) | Text::PercentEncoded(b) => b.is_empty(),
        }
    }
}

/// `b` as UTF-8, each byte outside valid UTF-8 written `%XX`.
fn utf8_or_percent(b: &[u8]) -> Cow<'_, str> {
    let mut rest = b;
    let mut out = String::new();
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) if out.is_empty() && s.len() == b.len() => return Cow::Borrowed(s),
            Ok(s) => {
                out.push_str(s);
                return Cow::Owned(out);
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                // Valid up to here: no error can come of it.
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                let n = e.error_len().unwrap_or(bad.len());
                for byte in &bad[..n] {
                    out.push_str(&format!("%{byte:02X}"));
                }
                rest = &bad[n..];
            }
        }
    }
}

/// `%XX` sequences decoded to bytes; anything else kept.
fn percent_decode_bytes(b: &[u8]) -> Cow<'_, [u8]> {
    if !b.contains(&b'%') {
        return Cow::Borrowed(b);
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(out)
}

/// A port number: ASCII digits, 1 to 65535.
pub fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 {
        return None;
    }
    // At most five digits: no overflow of a u32.
    let mut n: u32 = 0;
    for b in s.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(b - b'0');
    }
    u16::try_from(n).ok().filter(|&p| p > 0)
}

/// A `Host` header split into name and port: `example.com:8080`,
/// `[::1]:8080` (the name without brackets), `example.com`. None when it is
/// empty or malformed (an unclosed `[`, text after `]` that is not a port,
/// an empty name, a port that is not a number in 1..=65535). An empty port
/// (`example.com:`) is no port, as RFC 3986 allows.
pub fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    // Byte searches: the delimiters are ASCII, and a byte loop over a
    // short header is a fraction of a `char` pattern search's code.
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let end = byte_position(rest, b']')?;
        let after = &rest[end + 1..];
        let port = match after {
            "" => "",
            _ => after.strip_prefix(':')?,
        };
        (&rest[..end], port)
    } else {
        match byte_position(host, b':') {
            Some(i) => (&host[..i], &host[i + 1..]),
            None => (host, ""),
        }
    };
    if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
        return None;
    }
    if port.is_empty() {
        return Some((name, None));
    }
    Some((name, Some(parse_port(port)?)))
}

/// Where the ASCII byte `b` first occurs in `s` (a char boundary, `b`
/// being ASCII).
fn byte_position(s: &str, b: u8) -> Option<usize> {
    s.bytes().position(|c| c == b)
}

/// The facts of one request, as the server integration read them.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The method as sent (WSGI `REQUEST_METHOD`, ASGI `method`).
    pub method: Option<&'a str>,
    pub scheme: Option<&'a str>,
    /// The `Host` header.
    pub host: Option<&'a str>,
    /// The server's own name and port (WSGI `SERVER_NAME`/`SERVER_PORT`,
    /// ASGI `server`), used when the Host header is absent or unusable.
    pub server_name: Option<&'a str>,
    pub server_port: Option<u16>,
    /// The mount prefix (WSGI `SCRIPT_NAME`, ASGI `root_path` is already in
    /// `path`), then the path.
    pub script: Text<'a>,
    pub path: Text<'a>,
    pub query: Text<'a>,
    pub client: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// `HTTP/1.1` (WSGI) or `1.1` (ASGI).
    pub protocol: Option<&'a str>,
}

/// A server span's name and attributes, before the route is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpan<'a> {
    pub method: Method,
    /// The method as sent, when it differs from `method`.
    pub method_original: Option<&'a str>,
    pub path: Cow<'a, str>,
    pub query: Option<Cow<'a, str>>,
    pub scheme: &'a str,
    pub address: Option<&'a str>,
    pub port: Option<u16>,
    pub client: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub protocol: Option<&'a str>,
}

/// A value of [`ServerSpan::attributes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value<'s> {
    Str(&'s str),
    Int(i64),
}

impl ServerSpan<'_> {
    /// The span's name before the route is known.
    pub fn name(&self) -> &'static str {
        self.method.name()
    }

    /// Every attribute, keys from [`super::keys`], in a fixed order.
    pub fn attributes(&self) -> Vec<(&'static str, Value<'_>)> {
        use super::keys as k;
        let mut a = Vec::with_capacity(10);
        a.push((k::METHOD, Value::Str(self.method.as_str())));
        if let Some(m) = self.method_original {
            a.push((k::METHOD_ORIGINAL, Value::Str(m)));
        }
        a.push((k::PATH, Value::Str(&self.path)));
        if let Some(q) = &self.query {
            a.push((k::QUERY, Value::Str(q)));
        }
        a.push((k::SCHEME, Value::Str(self.scheme)));
        if let Some(h) = self.address {
            a.push((k::SERVER_ADDRESS, Value::Str(h)));
        }
        if let Some(p) = self.port {
            a.push((k::SERVER_PORT, Value::Int(i64::from(p))));
        }
        if let Some(c) = self.client {
            a.push((k::CLIENT_ADDRESS, Value::Str(c)));
        }
        if let Some(u) = self.user_agent {
            a.push((k::USER_AGENT, Value::Str(u)));
        }
        if let Some(v) = self.protocol {
            a.push((k::PROTOCOL_VERSION, Value::Str(v)));
        }
        a
    }
}

fn present(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

/// The server span of `req`; `redact` are the lower-case words of sensitive
/// query parameters ([`redact_query`]).
pub fn server_span<'a>(req: &Request<'a>, redact: &[String]) -> ServerSpan<'a> {
    let raw_method = present(req.method);
    let method = method_of(raw_method);
    let method_original = raw_method.filter(|m| *m != method.as_str());
    let path = match (req.script.is_empty(), req.path.is_empty()) {
        (true, true) => Cow::Borrowed("/"),
        (true, false) => req.path.decode(),
        (false, true) => req.script.decode(),
        (false, false) => Cow::Owned(format!("{}{}", req.script.decode(), req.path.decode())),
    };
    let query = match req.query.decode() {
        q if q.is_empty() => None,
        Cow::Borrowed(q) => Some(redact_query(q, redact)),
        Cow::Owned(q) => Some(Cow::Owned(redact_query(&q, redact).into_owned())),
    };
    // Port 0 is no port a client could have reached.
    let server_port = req.server_port.filter(|&p| p != 0);
    let (address, port) = match present(req.host).and_then(split_host) {
        Some((name, port)) => (Some(name), port.or(server_port)),
        None => (present(req.server_name), server_port),
    };
    let protocol = present(req.protocol).map(|p| match byte_position(p, b'/') {
        Some(i) => &p[i + 1..],
        None => p,
    });
    ServerSpan {
        method,
        method_original,
        path,
        query,
        scheme: present(req.scheme).unwrap_or("http"),
        address,
        port,
        client: present(req.client),
        user_agent: present(req.user_agent),
        protocol: present(protocol),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request<'static> {
        Request {
            method: Some("GET"),
            scheme: Some("http"),
            host: Some("example.com:8080"),
            server_name: Some("server"),
            server_port: Some(8000),
            script: Text::Latin1(""),
            path: Text::Latin1("/users/1"),
            query: Text::Latin1(""),
            client: Some("10.0.0.1"),
            user_agent: Some("curl/8"),
            protocol: Some("HTTP/1.1"),
        }
    }

    #[test]
    fn a_plain_request() {
        let s = server_span(&request(), &[]);
        assert_eq!(s.name(), "GET");
        assert_eq!(
            s.attributes(),
            vec![
                ("http.request.method", Value::Str("GET")),
                ("url.path", Value::Str("/users/1")),
                ("url.scheme", Value::Str("http")),
                ("server.address", Value::Str("example.com")),
                ("server.port", Value::Int(8080)),
                ("client.address", Value::Str("10.0.0.1")),
                ("user_agent.original", Value::Str("curl/8")),
                ("network.protocol.version", Value::Str("1.1")),
            ]
        );
    }

    #[test]
    fn methods() {
        let with = |m: Option<&'static str>| {
            let s = server_span(
                &Request {
                    method: m,
                    ..request()
                },
                &[],
            );
            (s.method.as_str(), s.method_original, s.name())
        };
        assert_eq!(with(Some("GET")), ("GET", None, "GET"));
        assert_eq!(with(Some("get")), ("GET", Some("get"), "GET"));
        assert_eq!(with(Some("PURGE")), ("_OTHER", Some("PURGE"), "HTTP"));
        assert_eq!(with(Some("FOO")), ("_OTHER", Some("FOO"), "HTTP"));
        assert_eq!(with(Some("")), ("_OTHER", None, "HTTP"));
        assert_eq!(with(None), ("_OTHER", None, "HTTP"));
        assert_eq!(span_name(Method::Other, Some("/x")), "HTTP /x");
        assert_eq!(
            span_name(method_of(Some("post")), Some("/u/{id}")),
            "POST /u/{id}"
        );
        assert_eq!(span_name(Method::Known(0), Some("")), "GET");
    }

    #[test]
    fn hosts() {
        assert_eq!(split_host("example.com"), Some(("example.com", None)));
        assert_eq!(split_host("example.com:"), Some(("example.com", None)));
        assert_eq!(split_host("[::1]:8080"), Some(("::1", Some(8080))));
        assert_eq!(split_host("[::1]"), Some(("::1", None)));
        for bad in [
            "[::1", "[::1]x", "[::1]:x", "", ":80", "a:0", "a:65536", "a:+1", "[]:1", "a b",
        ] {
            assert_eq!(split_host(bad), None, "{bad:?}");
        }
        let with = |h: Option<&'static str>| {
            let s = server_span(
                &Request {
                    host: h,
                    ..request()
                },
                &[],
            );
            (s.address, s.port)
        };
        assert_eq!(with(Some("[::1]:8080")), (Some("::1"), Some(8080)));
        assert_eq!(with(Some("example.com")), (Some("example.com"), Some(8000)));
        // Absent, empty or malformed: the server's own name and port.
        assert_eq!(with(Some("[::1")), (Some("server"), Some(8000)));
        assert_eq!(with(Some("")), (Some("server"), Some(8000)));
        assert_eq!(with(None), (Some("server"), Some(8000)));
    }

    #[test]
    fn paths_are_decoded_as_utf8() {
        let with = |script: Text<'static>, path: Text<'static>| {
            server_span(
                &Request {
                    script,
                    path,
                    ..request()
                },
                &[],
            )
            .path
            .into_owned()
        };
        // PEP 3333: `/café` arrives as the latin-1 text of its UTF-8 bytes.
        assert_eq!(
            with(Text::Latin1(""), Text::Latin1("/caf\u{c3}\u{a9}")),
            "/café"
        );
        assert_eq!(with(Text::Latin1(""), Text::Decoded("/café")), "/café");
        // Bytes that are not UTF-8 are kept, percent-encoded.
        assert_eq!(
            with(Text::Latin1(""), Text::Latin1("/\u{ff}\u{fe}x/\u{c3}")),
            "/%FF%FEx/%C3"
        );
        assert_eq!(
            with(Text::Latin1(""), Text::PercentEncoded(b"/%ff%FEx/%C3")),
            "/%FF%FEx/%C3"
        );
        assert_eq!(
            with(Text::Latin1(""), Text::PercentEncoded(b"/caf%C3%A9%2F%zz+")),
            "/café/%zz+"
        );
        assert_eq!(with(Text::Latin1(""), Text::PercentEncoded(b"/a%")), "/a%");
        // Not PEP 3333 text: taken as decoded.
        assert_eq!(with(Text::Latin1(""), Text::Latin1("/€")), "/€");
        assert_eq!(with(Text::Latin1("/app"), Text::Latin1("/x")), "/app/x");
        assert_eq!(with(Text::Latin1("/app"), Text::Latin1("")), "/app");
        assert_eq!(with(Text::Latin1(""), Text::Latin1("")), "/");
    }

    #[test]
    fn queries_are_decoded_and_redacted() {
        let words = vec!["token".to_string()];
        let with = |q: Text<'static>| {
            server_span(
                &Request {
                    query: q,
                    ..request()
                },
                &words,
            )
            .query
        };
        assert_eq!(with(Text::Latin1("")), None);
        assert_eq!(with(Text::Bytes(b"")), None);
        assert_eq!(
            with(Text::Bytes(b"token=1&q=caf\xc3\xa9")).as_deref(),
            Some("token=REDACTED&q=café")
        );
        assert_eq!(
            with(Text::Latin1("q=caf\u{c3}\u{a9}&token=1")).as_deref(),
            Some("q=café&token=REDACTED")
        );
    }

    #[test]
    fn protocol_scheme_and_empty_values() {
        let s = server_span(
            &Request {
                scheme: Some(""),
                client: Some(""),
                user_agent: Some(""),
                protocol: Some("2"),
                ..request()
            },
            &[],
        );
        assert_eq!(
            (s.scheme, s.client, s.user_agent, s.protocol),
            ("http", None, None, Some("2"))
        );
        let s = server_span(
            &Request {
                protocol: Some("HTTP/"),
                ..request()
            },
            &[],
        );
        assert_eq!(s.protocol, None);
    }
}
