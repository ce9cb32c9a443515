//! Scrubbing a finished span: its name, string attributes (by key and by
//! content), events (exception messages and stack traces among them), link
//! attributes and status description. The span is copied only when
//! something in it changes.

use super::Scrubber;
use crate::pipeline::KeptTrace;
use crate::span::{AttrValue, Attributes, SpanRecord};
use std::borrow::Cow;
use std::sync::Arc;

impl Scrubber {
    /// `span` scrubbed, by value (no copy when nothing changes).
    pub fn scrub_span_owned(&self, span: SpanRecord) -> SpanRecord {
        if let Cow::Owned(s) = self.scrub_span(&span) {
            return s;
        }
        span
    }

    /// Every span of `traces` scrubbed.
    pub fn scrub_traces(&self, traces: Vec<KeptTrace>) -> Vec<KeptTrace> {
        traces
            .into_iter()
            .map(|t| KeptTrace {
                spans: t
                    .spans
                    .into_iter()
                    .map(|s| self.scrub_span_owned(s))
                    .collect(),
                ..t
            })
            .collect()
    }

    /// `span` with its text scrubbed; borrowed when nothing was found.
    pub fn scrub_span<'a>(&self, span: &'a SpanRecord) -> Cow<'a, SpanRecord> {
        if !self.config().enabled {
            return Cow::Borrowed(span);
        }
        let mut out: Option<SpanRecord> = None;
        if let Cow::Owned(n) = self.scrub(&span.name) {
            out.get_or_insert_with(|| span.clone()).name = n.into();
        }
        if let Cow::Owned(m) = self.scrub(&span.status_message) {
            out.get_or_insert_with(|| span.clone()).status_message = m;
        }
        if let Some(attrs) = self.scrub_attributes(&span.attributes) {
            out.get_or_insert_with(|| span.clone()).attributes = attrs;
        }
        for (i, e) in span.events.iter().enumerate() {
            if let Cow::Owned(n) = self.scrub(&e.name) {
                out.get_or_insert_with(|| span.clone()).events[i].name = n;
            }
            if let Some(attrs) = self.scrub_attributes(&e.attributes) {
                out.get_or_insert_with(|| span.clone()).events[i].attributes = attrs;
            }
        }
        for (i, l) in span.links.iter().enumerate() {
            if let Some(attrs) = self.scrub_attributes(&l.attributes) {
                out.get_or_insert_with(|| span.clone()).links[i].attributes = attrs;
            }
        }
        match out {
            Some(s) => Cow::Owned(s),
            None => Cow::Borrowed(span),
        }
    }

    /// The attributes with string values scrubbed, `None` when none changed.
    pub fn scrub_attributes(&self, attrs: &Attributes) -> Option<Attributes> {
        let mut out: Option<Attributes> = None;
        for (i, (k, v)) in attrs.iter().enumerate() {
            let new = match v {
                AttrValue::Str(s) => match self.scrub_keyed(k, s) {
                    Cow::Owned(s) => Some(AttrValue::Str(Arc::from(s))),
                    Cow::Borrowed(_) => None,
                },
                AttrValue::StrArray(a) => {
                    let scrubbed: Vec<Cow<'_, str>> =
                        a.iter().map(|s| self.scrub_keyed(k, s)).collect();
                    scrubbed
                        .iter()
                        .any(|s| matches!(s, Cow::Owned(_)))
                        .then(|| {
                            AttrValue::StrArray(scrubbed.into_iter().map(Cow::into_owned).collect())
                        })
                }
                _ => None,
            };
            if let Some(new) = new {
                out.get_or_insert_with(|| attrs.clone())[i].1 = new;
            }
        }
        out
    }
}
