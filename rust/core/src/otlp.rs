//! OTLP protobuf encoding of kept traces: an `ExportTraceServiceRequest`
//! (opentelemetry-proto `collector/trace/v1`), written by hand (no codegen,
//! no intermediate objects). Called off the request path, without the GIL.
//!
//! Layout: one `ResourceSpans` (the process's resource, encoded once when
//! the encoder is built) holding one `ScopeSpans` per instrumentation scope
//! (pulsetrace's own), holding the spans. Ids are big-endian bytes (the hex
//! of a `traceparent` read left to right); timestamps are fixed64 Unix
//! nanoseconds; span flags carry the W3C trace flags and whether the parent
//! was remote (`SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK` / `..._IS_REMOTE_MASK`).
//!
//! Every span passes through the process's scrubber ([`crate::scrub`])
//! before it is written: personal data and secrets never reach the wire.

use crate::pipeline::KeptTrace;
use crate::span::{AttrValue, Event, Link, SpanKind, SpanRecord, StatusCode};

const LEN: u8 = 2;
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const FIXED32: u8 = 5;

fn tag(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, u64::from(field << 3 | u32::from(wire)));
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn bytes_field(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(buf, field, LEN);
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

fn string_field(buf: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        bytes_field(buf, field, s.as_bytes());
    }
}

fn uint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(buf, field, VARINT);
        varint(buf, v);
    }
}

fn fixed64_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    tag(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn fixed32_field(buf: &mut Vec<u8>, field: u32, v: u32) {
    tag(buf, field, FIXED32);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Write a length-delimited sub-message produced by `f`: the body is built
/// in place after a reserved one-byte length, and moved only when its length
/// needs more bytes (bodies over 127 bytes), so small messages cost no copy.
fn message(buf: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    tag(buf, field, LEN);
    let len_at = buf.len();
    buf.push(0);
    let start = buf.len();
    f(buf);
    let n = buf.len() - start;
    if n < 0x80 {
        buf[len_at] = n as u8;
        return;
    }
    let mut len = Vec::with_capacity(10);
    varint(&mut len, n as u64);
    // Make room for the extra length bytes and shift the body right.
    let extra = len.len() - 1;
    buf.splice(len_at..len_at + 1, len);
    debug_assert_eq!(buf.len() - start - extra, n);
}

fn any_value(buf: &mut Vec<u8>, v: &AttrValue) {
    match v {
        AttrValue::Str(s) => bytes_field(buf, 1, s.as_bytes()),
        AttrValue::Bool(b) => {
            tag(buf, 2, VARINT);
            varint(buf, u64::from(*b));
        }
        AttrValue::Int(i) => {
            tag(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
        AttrValue::Float(f) => fixed64_field(buf, 4, f.to_bits()),
        AttrValue::StrArray(a) => message(buf, 5, |b| {
            for s in a {
                message(b, 1, |b| bytes_field(b, 1, s.as_bytes()));
            }
        }),
        AttrValue::BoolArray(a) => message(buf, 5, |b| {
            for x in a {
                message(b, 1, |b| {
                    tag(b, 2, VARINT);
                    varint(b, u64::from(*x));
                });
            }
        }),
        AttrValue::IntArray(a) => message(buf, 5, |b| {
            for x in a {
                message(b, 1, |b| {
                    tag(b, 3, VARINT);
                    varint(b, *x as u64);
                });
            }
        }),
        AttrValue::FloatArray(a) => message(buf, 5, |b| {
            for x in a {
                message(b, 1, |b| fixed64_field(b, 4, x.to_bits()));
            }
        }),
    }
}

fn key_values<K: AsRef<str>>(buf: &mut Vec<u8>, field: u32, attrs: &[(K, AttrValue)]) {
    for (k, v) in attrs {
        message(buf, field, |b| {
            string_field(b, 1, k.as_ref());
            message(b, 2, |b| any_value(b, v));
        });
    }
}

fn otlp_kind(k: SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn event(buf: &mut Vec<u8>, e: &Event) {
    message(buf, 11, |b| {
        fixed64_field(b, 1, e.time_unix_ns);
        string_field(b, 2, &e.name);
        key_values(b, 3, &e.attributes);
    });
}

fn link(buf: &mut Vec<u8>, l: &Link) {
    message(buf, 13, |b| {
        bytes_field(b, 1, &l.trace_id.to_be_bytes());
        bytes_field(b, 2, &l.span_id.to_be_bytes());
        string_field(b, 3, &l.trace_state);
        key_values(b, 4, &l.attributes);
    });
}

/// Span flags: W3C trace flags in bits 0-7, bit 8 "is_remote is known",
/// bit 9 "the parent is remote".
pub fn span_flags(s: &SpanRecord) -> u32 {
    u32::from(s.trace_flags) | 0x100 | if s.remote_parent { 0x200 } else { 0 }
}

fn span(buf: &mut Vec<u8>, s: &SpanRecord) {
    message(buf, 2, |b| {
        bytes_field(b, 1, &s.trace_id.to_be_bytes());
        bytes_field(b, 2, &s.span_id.to_be_bytes());
        string_field(b, 3, &s.trace_state);
        if s.parent_span_id != 0 {
            bytes_field(b, 4, &s.parent_span_id.to_be_bytes());
        }
        string_field(b, 5, &s.name);
        uint_field(b, 6, otlp_kind(s.kind));
        fixed64_field(b, 7, s.start_unix_ns);
        fixed64_field(b, 8, s.end_unix_ns());
        key_values(b, 9, &s.attributes);
        uint_field(b, 10, u64::from(s.dropped_attributes));
        for e in &s.events {
            event(b, e);
        }
        uint_field(b, 12, u64::from(s.dropped_events));
        for l in &s.links {
            link(b, l);
        }
        if s.status != StatusCode::Unset || !s.status_message.is_empty() {
            message(b, 15, |b| {
                string_field(b, 2, &s.status_message);
                uint_field(b, 3, s.status as u64);
            });
        }
        fixed32_field(b, 16, span_flags(s));
    });
}

/// Builds `ExportTraceServiceRequest`s for one process (one resource).
#[derive(Clone, Debug)]
pub struct Encoder {
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl Encoder {
    /// `resource`: the resource attributes (service.name, ...); the scope
    /// is the instrumentation library (`pulsetrace`, its version).
    pub fn new(resource: &[(String, AttrValue)], scope_name: &str, scope_version: &str) -> Self {
        let mut r = Vec::new();
        key_values(&mut r, 1, resource);
        let mut sc = Vec::new();
        string_field(&mut sc, 1, scope_name);
        string_field(&mut sc, 2, scope_version);
        Encoder {
            resource: r,
            scope: sc,
        }
    }

    /// Append the encoded request for `traces` to `out`.
    pub fn encode(&self, traces: &[KeptTrace], out: &mut Vec<u8>) {
        let spans: usize = traces.iter().map(|t| t.spans.len()).sum();
        out.reserve(256 + spans * 256);
        let scrubber = crate::scrub::current();
        message(out, 1, |b| {
            bytes_field(b, 1, &self.resource);
            message(b, 2, |b| {
                bytes_field(b, 1, &self.scope);
                for t in traces {
                    for s in &t.spans {
                        span(b, &scrubber.scrub_span(s));
                    }
                }
            });
        });
    }
}

/// The default bound on one encoded request: 4 MiB (the usual receiver
/// limit, gRPC's default message size) minus 64 KiB of margin.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;

/// A batch encoded as requests each within a byte bound.
#[derive(Debug, Default)]
pub struct Split {
    /// The encoded requests, each with its number of spans.
    pub requests: Vec<(Vec<u8>, usize)>,
    /// Spans whose own request would exceed the bound: never sent.
    pub oversized: usize,
}

fn varint_len(v: usize) -> usize {
    let mut n = 1;
    let mut v = v >> 7;
    while v > 0 {
        n += 1;
        v >>= 7;
    }
    n
}

fn field_len(body: usize) -> usize {
    1 + varint_len(body) + body
}

impl Encoder {
    /// Size of a request whose encoded spans take `spans_bytes`.
    fn request_len(&self, spans_bytes: usize) -> usize {
        let scope_spans = field_len(self.scope.len()) + spans_bytes;
        let resource_spans = field_len(self.resource.len()) + field_len(scope_spans);
        field_len(resource_spans)
    }

    fn wrap(&self, spans: &[u8], out: &mut Vec<u8>) {
        out.reserve(self.request_len(spans.len()));
        message(out, 1, |b| {
            bytes_field(b, 1, &self.resource);
            message(b, 2, |b| {
                bytes_field(b, 1, &self.scope);
                b.extend_from_slice(spans);
            });
        });
    }

    /// Encode `traces` as requests of at most `limit` bytes each, spans in
    /// order; a span that alone would make a request over `limit` is left
    /// out and counted in [`Split::oversized`]. No spans, no requests.
    pub fn encode_split(&self, traces: &[KeptTrace], limit: usize) -> Split {
        let mut out = Split::default();
        let mut spans_buf = Vec::new();
        let mut group_start = 0;
        let mut group_spans = 0;
        let scrubber = crate::scrub::current();
        for s in traces.iter().flat_map(|t| t.spans.iter()) {
            let at = spans_buf.len();
            span(&mut spans_buf, &scrubber.scrub_span(s));
            let one = spans_buf.len() - at;
            if self.request_len(one) > limit {
                spans_buf.truncate(at);
                out.oversized += 1;
                continue;
            }
            if self.request_len(spans_buf.len() - group_start) > limit {
                let mut req = Vec::new();
                self.wrap(&spans_buf[group_start..at], &mut req);
                out.requests.push((req, group_spans));
                group_start = at;
                group_spans = 0;
            }
            group_spans += 1;
        }
        if group_spans > 0 {
            let mut req = Vec::new();
            self.wrap(&spans_buf[group_start..], &mut req);
            out.requests.push((req, group_spans));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace_of(sizes: &[usize]) -> KeptTrace {
        let spans = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut s = SpanRecord::new(7, i as u64 + 1, 0, "op");
                s.attributes
                    .push(("blob".into(), AttrValue::Str("x".repeat(*n).into())));
                s
            })
            .collect();
        KeptTrace {
            trace_id: 7,
            reason: Default::default(),
            spans,
        }
    }

    #[test]
    fn one_request_when_it_fits_is_the_plain_encoding() {
        let enc = Encoder::new(&[], "pulsetrace", "1");
        let traces = [trace_of(&[10, 20, 30])];
        let mut plain = Vec::new();
        enc.encode(&traces, &mut plain);
        let split = enc.encode_split(&traces, DEFAULT_MAX_REQUEST_BYTES);
        assert_eq!(split.oversized, 0);
        assert_eq!(split.requests, vec![(plain, 3)]);
    }

    #[test]
    fn requests_stay_within_the_bound_and_oversized_spans_are_counted() {
        let enc = Encoder::new(&[], "pulsetrace", "1");
        let traces = [trace_of(&[100, 5_000, 100, 300, 300, 300, 200_000, 10])];
        let limit = 1_000;
        let split = enc.encode_split(&traces, limit);
        assert_eq!(split.oversized, 2);
        let spans: usize = split.requests.iter().map(|r| r.1).sum();
        assert_eq!(spans, 6);
        assert!(split.requests.len() >= 2);
        for (req, n) in &split.requests {
            assert!(req.len() <= limit, "{} > {limit}", req.len());
            assert!(*n > 0);
        }
    }

    #[test]
    fn varints_are_minimal() {
        let mut b = Vec::new();
        varint(&mut b, 0);
        varint(&mut b, 127);
        varint(&mut b, 128);
        varint(&mut b, 300);
        varint(&mut b, u64::MAX);
        assert_eq!(
            b,
            [0, 127, 0x80, 1, 0xac, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1]
        );
    }

    #[test]
    fn long_messages_get_multi_byte_lengths() {
        let mut b = Vec::new();
        message(&mut b, 1, |b| b.extend(std::iter::repeat_n(7u8, 300)));
        assert_eq!(&b[..3], &[0x0a, 0xac, 0x02]);
        assert_eq!(b.len(), 3 + 300);
        assert!(b[3..].iter().all(|&x| x == 7));
    }

    #[test]
    fn a_span_encodes_its_fields() {
        let mut s = SpanRecord::new(
            0x0102030405060708090a0b0c0d0e0f10,
            0x1112131415161718,
            0,
            "GET /",
        );
        s.kind = SpanKind::Server;
        s.start_unix_ns = 5;
        s.duration_ns = 10;
        let mut b = Vec::new();
        span(&mut b, &s);
        // field 2 (spans), then trace id as big-endian bytes.
        assert_eq!(b[0], 0x12);
        let body = &b[2..];
        assert_eq!(&body[..2], &[0x0a, 16]);
        assert_eq!(
            &body[2..18],
            &0x0102030405060708090a0b0c0d0e0f10u128.to_be_bytes()
        );
        assert_eq!(&body[18..20], &[0x12, 8]);
        assert_eq!(&body[20..28], &0x1112131415161718u64.to_be_bytes());
    }
}
