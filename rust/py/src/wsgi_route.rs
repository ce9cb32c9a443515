//! A WSGI request span named after its route template, when the response
//! starts: `GET /users/<int:id>`, with `http.route` (the name's rule is the
//! core's `http::span_name`).
//!
//! GIL and locks: runs with the GIL. Takes the span's `inner` lock, never
//! across Python code. The name cache is a `GILProtected` cell, borrowed
//! with `try_borrow` (a failed borrow only formats the name again).

use crate::attrs::{self, AttrCounters, Limits};
use crate::http::keys;
use crate::span::Span;
use pulsetrace_core::http::{method_of, span_name};
use pulsetrace_core::span::AttrValue;
use pyo3::prelude::*;
use pyo3::types::PyString;
use std::sync::Arc;

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
    let name = span_name(method_of(Some(method)), Some(route)).into_owned();
    let name: Arc<str> = attrs::truncate(name, max, counters).into();
    if let Ok(mut c) = cache.try_borrow_mut() {
        if c.is_empty() {
            c.resize(ROUTE_NAME_SLOTS, None);
        }
        c[slot] = Some((method.clone(), route.clone(), max, name.clone()));
    }
    name
}

/// Name a SERVER span after its route template: `GET /users/<int:id>`.
pub(crate) fn name_after_route(span: &Span, route: &Bound<'_, PyString>) {
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
        .unwrap_or_else(|| k.method_value(method_of(None)).clone());
    inner.name = route_name(py, &method, &route, &limits, counters);
    Span::set_one(
        &mut inner,
        k.route.clone(),
        AttrValue::Str(route),
        &limits,
        counters,
    );
}
