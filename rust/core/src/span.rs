//! The finished-span record that crosses from the binding into the core, and
//! the small enums it is made of. Plain owned data: no Python, no locks.

use std::fmt;
use std::sync::Arc;

/// OpenTelemetry span kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum SpanKind {
    Internal = 0,
    Server = 1,
    Client = 2,
    Producer = 3,
    Consumer = 4,
}

impl SpanKind {
    pub const ALL: [SpanKind; 5] = [
        SpanKind::Internal,
        SpanKind::Server,
        SpanKind::Client,
        SpanKind::Producer,
        SpanKind::Consumer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }

    pub fn parse(s: &str) -> Option<SpanKind> {
        Some(match s {
            "internal" | "INTERNAL" => SpanKind::Internal,
            "server" | "SERVER" => SpanKind::Server,
            "client" | "CLIENT" => SpanKind::Client,
            "producer" | "PRODUCER" => SpanKind::Producer,
            "consumer" | "CONSUMER" => SpanKind::Consumer,
            _ => return None,
        })
    }

    pub fn from_u8(v: u8) -> Option<SpanKind> {
        SpanKind::ALL.get(v as usize).copied()
    }
}

impl fmt::Display for SpanKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// OpenTelemetry span status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum StatusCode {
    #[default]
    Unset = 0,
    Ok = 1,
    Error = 2,
}

impl StatusCode {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusCode::Unset => "unset",
            StatusCode::Ok => "ok",
            StatusCode::Error => "error",
        }
    }
}

/// The outcome class a latency histogram is keyed by: HTTP spans by their
/// status code class, every other span by ok/error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum StatusClass {
    Ok = 0,
    Error = 1,
    Http1xx = 2,
    Http2xx = 3,
    Http3xx = 4,
    Http4xx = 5,
    Http5xx = 6,
}

impl StatusClass {
    pub const COUNT: usize = 7;
    pub const ALL: [StatusClass; 7] = [
        StatusClass::Ok,
        StatusClass::Error,
        StatusClass::Http1xx,
        StatusClass::Http2xx,
        StatusClass::Http3xx,
        StatusClass::Http4xx,
        StatusClass::Http5xx,
    ];

    /// Class of a span from its status and, if it has one, its HTTP status code.
    /// An HTTP 5xx is an error class; an explicit error status on an HTTP span
    /// with a 2xx code (an exception after the response started) is `Error`.
    pub fn classify(status: StatusCode, http_status: u16) -> StatusClass {
        if (100..600).contains(&http_status) {
            let class = match http_status / 100 {
                1 => StatusClass::Http1xx,
                2 => StatusClass::Http2xx,
                3 => StatusClass::Http3xx,
                4 => StatusClass::Http4xx,
                _ => StatusClass::Http5xx,
            };
            if status == StatusCode::Error && class != StatusClass::Http5xx {
                return StatusClass::Error;
            }
            return class;
        }
        if status == StatusCode::Error {
            StatusClass::Error
        } else {
            StatusClass::Ok
        }
    }

    pub fn is_error(self) -> bool {
        matches!(self, StatusClass::Error | StatusClass::Http5xx)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Ok => "ok",
            StatusClass::Error => "error",
            StatusClass::Http1xx => "1xx",
            StatusClass::Http2xx => "2xx",
            StatusClass::Http3xx => "3xx",
            StatusClass::Http4xx => "4xx",
            StatusClass::Http5xx => "5xx",
        }
    }

    pub fn from_u8(v: u8) -> Option<StatusClass> {
        StatusClass::ALL.get(v as usize).copied()
    }
}

/// An attribute value as OpenTelemetry defines them.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// Shared text: a value repeated across spans (a route, a method) can be
    /// one allocation.
    Str(Arc<str>),
    Bool(bool),
    Int(i64),
    Float(f64),
    StrArray(Vec<String>),
    BoolArray(Vec<bool>),
    IntArray(Vec<i64>),
    FloatArray(Vec<f64>),
}

impl AttrValue {
    /// Approximate heap bytes held, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        match self {
            AttrValue::Str(s) => s.len(),
            AttrValue::StrArray(v) => {
                v.capacity() * std::mem::size_of::<String>()
                    + v.iter().map(String::capacity).sum::<usize>()
            }
            AttrValue::BoolArray(v) => v.capacity(),
            AttrValue::IntArray(v) => v.capacity() * 8,
            AttrValue::FloatArray(v) => v.capacity() * 8,
            _ => 0,
        }
    }

    /// The value rendered as a string (for matching rules).
    pub fn matches_str(&self, expected: &str) -> bool {
        match self {
            AttrValue::Str(s) => &**s == expected,
            AttrValue::Bool(b) => (if *b { "true" } else { "false" }) == expected,
            AttrValue::Int(i) => expected.parse::<i64>().ok() == Some(*i),
            AttrValue::Float(f) => expected.parse::<f64>().ok() == Some(*f),
            AttrValue::StrArray(v) => v.iter().any(|s| s == expected),
            AttrValue::BoolArray(_) | AttrValue::IntArray(_) | AttrValue::FloatArray(_) => false,
        }
    }
}

/// Attribute keys are shared text too (keys repeat on every span).
pub type Attributes = Vec<(Arc<str>, AttrValue)>;

/// A timestamped event on a span (exceptions are events named `exception`).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub name: String,
    pub time_unix_ns: u64,
    pub attributes: Attributes,
}

/// A link to another span's context.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub trace_id: u128,
    pub span_id: u64,
    pub trace_state: String,
    pub attributes: Attributes,
}

/// A span that has ended, as the core keeps it until the trace is decided.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    pub trace_id: u128,
    pub span_id: u64,
    /// 0 when the span has no parent.
    pub parent_span_id: u64,
    pub name: Arc<str>,
    pub kind: SpanKind,
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    pub status: StatusCode,
    pub status_message: String,
    /// HTTP response status code, 0 when not an HTTP span.
    pub http_status: u16,
    pub attributes: Attributes,
    pub events: Vec<Event>,
    pub links: Vec<Link>,
    pub dropped_attributes: u32,
    pub dropped_events: u32,
    /// The first span of this trace in this process (its parent is remote or absent).
    pub local_root: bool,
    /// The parent was received from another process (traceparent).
    pub remote_parent: bool,
    pub trace_flags: u8,
    pub trace_state: String,
}

impl SpanRecord {
    /// A record with the given identity and timing and nothing else.
    pub fn new(trace_id: u128, span_id: u64, parent_span_id: u64, name: &str) -> Self {
        SpanRecord {
            trace_id,
            span_id,
            parent_span_id,
            name: Arc::from(name),
            kind: SpanKind::Internal,
            start_unix_ns: 0,
            duration_ns: 0,
            status: StatusCode::Unset,
            status_message: String::new(),
            http_status: 0,
            attributes: Vec::new(),
            events: Vec::new(),
            links: Vec::new(),
            dropped_attributes: 0,
            dropped_events: 0,
            local_root: parent_span_id == 0,
            remote_parent: false,
            trace_flags: 1,
            trace_state: String::new(),
        }
    }

    pub fn end_unix_ns(&self) -> u64 {
        self.start_unix_ns.saturating_add(self.duration_ns)
    }

    pub fn status_class(&self) -> StatusClass {
        StatusClass::classify(self.status, self.http_status)
    }

    pub fn is_error(&self) -> bool {
        self.status_class().is_error()
    }

    /// Approximate bytes this record holds (struct plus heap), for the memory bound.
    pub fn approx_bytes(&self) -> usize {
        let attrs = |a: &Attributes| -> usize {
            a.capacity() * std::mem::size_of::<(Arc<str>, AttrValue)>()
                + a.iter()
                    .map(|(k, v)| k.len() + v.heap_bytes())
                    .sum::<usize>()
        };
        std::mem::size_of::<Self>()
            + self.name.len()
            + self.status_message.capacity()
            + self.trace_state.capacity()
            + attrs(&self.attributes)
            + self
                .events
                .iter()
                .map(|e| std::mem::size_of::<Event>() + e.name.capacity() + attrs(&e.attributes))
                .sum::<usize>()
            + self
                .links
                .iter()
                .map(|l| {
                    std::mem::size_of::<Link>() + l.trace_state.capacity() + attrs(&l.attributes)
                })
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_class_follows_http_code_and_error_status() {
        assert_eq!(StatusClass::classify(StatusCode::Unset, 0), StatusClass::Ok);
        assert_eq!(
            StatusClass::classify(StatusCode::Error, 0),
            StatusClass::Error
        );
        assert_eq!(
            StatusClass::classify(StatusCode::Unset, 204),
            StatusClass::Http2xx
        );
        assert_eq!(
            StatusClass::classify(StatusCode::Unset, 404),
            StatusClass::Http4xx
        );
        assert_eq!(
            StatusClass::classify(StatusCode::Error, 503),
            StatusClass::Http5xx
        );
        assert_eq!(
            StatusClass::classify(StatusCode::Error, 200),
            StatusClass::Error
        );
        assert!(StatusClass::Http5xx.is_error());
        assert!(!StatusClass::Http4xx.is_error());
        assert_eq!(
            StatusClass::classify(StatusCode::Unset, 999),
            StatusClass::Ok
        );
    }

    #[test]
    fn kinds_round_trip() {
        for k in SpanKind::ALL {
            assert_eq!(SpanKind::parse(k.as_str()), Some(k));
            assert_eq!(SpanKind::from_u8(k as u8), Some(k));
        }
        assert_eq!(SpanKind::parse("nope"), None);
    }

    #[test]
    fn attribute_matching() {
        assert!(AttrValue::Str("a".into()).matches_str("a"));
        assert!(AttrValue::Int(42).matches_str("42"));
        assert!(AttrValue::Bool(true).matches_str("true"));
        assert!(!AttrValue::Int(42).matches_str("x"));
        assert!(AttrValue::StrArray(vec!["x".into(), "y".into()]).matches_str("y"));
    }
}
