//! What a span talks to: the part of a latency histogram's key beyond
//! (span kind, operation name, status class).
//!
//! One rule, read from the span's attributes by [`TargetRef::of`] where the
//! span is processed: on the core's worker thread (on the request thread only
//! when the intake is full and it processes its span itself):
//!
//! | span kind          | attribute that decides | [`System`]    | key values (attributes, in order)                                   |
//! |--------------------|------------------------|---------------|----------------------------------------------------------------------|
//! | CLIENT             | `db.system.name`       | `Db`          | `db.system.name`, `db.operation.name`, `db.collection.name`          |
//! | CLIENT, PRODUCER, CONSUMER | `messaging.system` | `Messaging` | `messaging.system`, `messaging.operation.name`, `messaging.destination.name` |
//! | CLIENT             | `http.request.method`  | `Http`        | `http.request.method`, `server.address`                              |
//! | any other          | -                      | `None`        | -                                                                    |
//!
//! The first row that applies wins (a database or a queue reached over HTTP
//! is a database or a queue). Only non-empty string values count, and each
//! is cut to [`MAX_VALUE_BYTES`] on a character boundary, so a label value is
//! bounded; the number of keys is bounded by the registry.
//!
//! [`TargetRef`] borrows from the span (no allocation: the registry looks it
//! up as is); [`Target`] owns its values, for keys the registry stores. Both
//! hold only normalised values (see [`TargetRef::new`]), so two targets are
//! equal exactly when their labels are.

use crate::span::{AttrValue, Attributes, SpanKind};
use std::sync::Arc;

/// Longest value (bytes) of an attribute used in a key; longer ones are cut
/// on a character boundary.
pub const MAX_VALUE_BYTES: usize = 128;

/// Values a key holds at most (a system's attributes).
pub const MAX_VALUES: usize = 3;

/// The attributes a key may read: (attribute, its Prometheus label name).
/// [`System::attributes`] slices this table.
const ATTRIBUTES: [(&str, &str); 8] = [
    ("db.system.name", "db_system_name"),
    ("db.operation.name", "db_operation_name"),
    ("db.collection.name", "db_collection_name"),
    ("messaging.system", "messaging_system"),
    ("messaging.operation.name", "messaging_operation_name"),
    ("messaging.destination.name", "messaging_destination_name"),
    ("http.request.method", "http_request_method"),
    ("server.address", "server_address"),
];

/// The kind of system a span talks to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum System {
    /// Not keyed by a system (SERVER and INTERNAL spans, and spans without
    /// the attributes above).
    #[default]
    None = 0,
    Http = 1,
    Db = 2,
    Messaging = 3,
}

impl System {
    pub const COUNT: usize = 4;
    pub const ALL: [System; System::COUNT] =
        [System::None, System::Http, System::Db, System::Messaging];

    /// Its rows of the attribute table; the first one decides the system.
    fn rows(self) -> std::ops::Range<usize> {
        match self {
            System::None => 0..0,
            System::Db => 0..3,
            System::Messaging => 3..6,
            System::Http => 6..8,
        }
    }

    /// (attribute, label name) of each key value, in order.
    pub fn attributes(self) -> &'static [(&'static str, &'static str)] {
        &ATTRIBUTES[self.rows()]
    }

    pub fn as_str(self) -> &'static str {
        match self {
            System::None => "none",
            System::Http => "http",
            System::Db => "db",
            System::Messaging => "messaging",
        }
    }
}

/// The Prometheus label names of every attribute a key may read.
pub fn label_names() -> impl Iterator<Item = &'static str> {
    ATTRIBUTES.iter().map(|&(_, label)| label)
}

/// A span's target, borrowed from its attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetRef<'a> {
    system: System,
    values: [Option<&'a str>; MAX_VALUES],
}

impl<'a> TargetRef<'a> {
    /// No target: the key is (kind, name, class) alone.
    pub const NONE: TargetRef<'static> = TargetRef {
        system: System::None,
        values: [None; MAX_VALUES],
    };

    /// A target of `system` with the values of its attributes, in order:
    /// values it has no attribute for and empty ones are dropped, the rest
    /// cut to [`MAX_VALUE_BYTES`].
    pub fn new(system: System, values: [Option<&'a str>; MAX_VALUES]) -> TargetRef<'a> {
        let used = system.attributes().len();
        let mut out = [None; MAX_VALUES];
        for (i, (slot, v)) in out.iter_mut().zip(values).enumerate() {
            if i < used {
                *slot = v.filter(|v| !v.is_empty()).map(bounded);
            }
        }
        TargetRef {
            system,
            values: out,
        }
    }

    pub fn system(&self) -> System {
        self.system
    }

    pub fn values(&self) -> [Option<&'a str>; MAX_VALUES] {
        self.values
    }

    /// Whether it has no values (no target, or a system's overflow key).
    pub fn is_empty(&self) -> bool {
        self.values.iter().all(Option::is_none)
    }

    /// The rule (see the module docs): one pass over the attributes.
    #[inline]
    pub fn of(kind: SpanKind, attributes: &'a Attributes) -> TargetRef<'a> {
        if matches!(kind, SpanKind::Server | SpanKind::Internal) {
            return TargetRef::NONE;
        }
        TargetRef::scan(kind, attributes)
    }

    fn scan(kind: SpanKind, attributes: &'a Attributes) -> TargetRef<'a> {
        // "" is absent (empty values do not count).
        let mut found: [&'a str; ATTRIBUTES.len()] = [""; ATTRIBUTES.len()];
        for (key, value) in attributes {
            if let Some(i) = index_of(key) {
                if let AttrValue::Str(text) = value {
                    found[i] = text;
                }
            }
        }
        let has = |system: System| !found[system.rows().start].is_empty();
        let client = kind == SpanKind::Client;
        let system = if client && has(System::Db) {
            System::Db
        } else if has(System::Messaging) {
            System::Messaging
        } else if client && has(System::Http) {
            System::Http
        } else {
            return TargetRef::NONE;
        };
        let mut values = [None; MAX_VALUES];
        for (slot, v) in values.iter_mut().zip(&found[system.rows()]) {
            *slot = (!v.is_empty()).then(|| bounded(v));
        }
        // Normalised: non-empty, bounded, only the system's own.
        TargetRef { system, values }
    }

    /// (attribute, label name, value) of each value present.
    pub fn labels(&self) -> impl Iterator<Item = (&'static str, &'static str, &'a str)> + '_ {
        self.system
            .attributes()
            .iter()
            .zip(self.values)
            .filter_map(|(&(attr, label), v)| v.map(|v| (attr, label, v)))
    }

    pub fn to_owned_target(&self) -> Target {
        Target {
            system: self.system,
            values: self.values.map(|v| v.map(Arc::from)),
        }
    }
}

/// A target the registry stores (values owned), made from a [`TargetRef`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    system: System,
    values: [Option<Arc<str>>; MAX_VALUES],
}

impl Target {
    /// The target of a system's overflow key: the system, no values.
    pub fn overflow(system: System) -> Target {
        Target {
            system,
            values: Default::default(),
        }
    }

    pub fn system(&self) -> System {
        self.system
    }

    pub fn values(&self) -> &[Option<Arc<str>>; MAX_VALUES] {
        &self.values
    }

    pub fn view(&self) -> TargetRef<'_> {
        TargetRef {
            system: self.system,
            values: std::array::from_fn(|i| self.values[i].as_deref()),
        }
    }

    #[inline]
    pub fn matches(&self, other: &TargetRef<'_>) -> bool {
        // A target without a system has no values (both are normalised).
        self.system == other.system
            && (self.system == System::None
                || self
                    .values
                    .iter()
                    .zip(other.values)
                    .all(|(a, b)| a.as_deref() == b))
    }

    /// Whether it has no values (no target, or a system's overflow key).
    pub fn is_empty(&self) -> bool {
        self.values.iter().all(Option::is_none)
    }
}

/// Bit `n` set: some row of the attribute table is `n` bytes long.
const LENGTHS: u64 = {
    let mut mask = 0u64;
    let mut i = 0;
    while i < ATTRIBUTES.len() {
        assert!(ATTRIBUTES[i].0.len() < 64);
        mask |= 1 << ATTRIBUTES[i].0.len();
        i += 1;
    }
    mask
};

/// The row of `key` in the attribute table; most keys are rejected by their
/// length alone.
#[inline]
fn index_of(key: &str) -> Option<usize> {
    if key.len() >= 64 || LENGTHS & (1 << key.len()) == 0 {
        return None;
    }
    ATTRIBUTES.iter().position(|(a, _)| *a == key)
}

/// `text` cut to at most [`MAX_VALUE_BYTES`] on a character boundary.
fn bounded(text: &str) -> &str {
    if text.len() <= MAX_VALUE_BYTES {
        return text;
    }
    let mut end = MAX_VALUE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, AttrValue)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (Arc::from(*k), v.clone()))
            .collect()
    }

    fn s(v: &str) -> AttrValue {
        AttrValue::Str(v.into())
    }

    #[test]
    fn the_system_comes_from_the_attributes_the_hooks_set() {
        // requests / urllib3 / httpx / aiohttp (contrib/_client.py).
        let http = attrs(&[
            ("http.request.method", s("GET")),
            ("url.full", s("http://api.example.com/x")),
            ("server.address", s("api.example.com")),
            ("server.port", AttrValue::Int(80)),
            ("http.response.status_code", AttrValue::Int(200)),
        ]);
        let t = TargetRef::of(SpanKind::Client, &http);
        assert_eq!(t.system, System::Http);
        assert_eq!(t.values(), [Some("GET"), Some("api.example.com"), None]);
        // Redis (contrib/redis.py): also has server.address, but is a database.
        let redis = attrs(&[
            ("db.system.name", s("redis")),
            ("db.namespace", s("0")),
            ("server.address", s("127.0.0.1")),
            ("server.port", AttrValue::Int(6379)),
            ("db.operation.name", s("GET")),
            ("db.query.text", s("GET k")),
        ]);
        let t = TargetRef::of(SpanKind::Client, &redis);
        assert_eq!(t.system, System::Db);
        assert_eq!(t.values(), [Some("redis"), Some("GET"), None]);
        // SQL (contrib/_sql.py).
        let sql = attrs(&[
            ("db.system.name", s("sqlite")),
            ("db.query.text", s("SELECT * FROM users WHERE id = ?")),
            ("db.operation.name", s("SELECT")),
            ("db.collection.name", s("users")),
        ]);
        let t = TargetRef::of(SpanKind::Client, &sql);
        assert_eq!(t.values(), [Some("sqlite"), Some("SELECT"), Some("users")]);
        assert_eq!(
            t.labels().map(|(_, l, v)| (l, v)).collect::<Vec<_>>(),
            [
                ("db_system_name", "sqlite"),
                ("db_operation_name", "SELECT"),
                ("db_collection_name", "users")
            ]
        );
        // A queue: the producer's and the consumer's spans, and a receive (CLIENT).
        let queue = attrs(&[
            ("messaging.system", s("rabbitmq")),
            ("messaging.operation.name", s("publish")),
            ("messaging.destination.name", s("orders")),
            ("server.address", s("mq")),
        ]);
        for kind in [SpanKind::Producer, SpanKind::Consumer, SpanKind::Client] {
            let t = TargetRef::of(kind, &queue);
            assert_eq!(t.system, System::Messaging, "{kind}");
            assert_eq!(
                t.values(),
                [Some("rabbitmq"), Some("publish"), Some("orders")]
            );
        }
    }

    #[test]
    fn server_internal_and_unmarked_spans_have_no_target() {
        let everything = attrs(&[
            ("db.system.name", s("redis")),
            ("messaging.system", s("kafka")),
            ("http.request.method", s("GET")),
            ("server.address", s("h")),
        ]);
        for kind in [SpanKind::Server, SpanKind::Internal] {
            assert_eq!(TargetRef::of(kind, &everything), TargetRef::NONE);
        }
        // A database or HTTP attribute on a PRODUCER/CONSUMER span does not count.
        let db = attrs(&[
            ("db.system.name", s("redis")),
            ("http.request.method", s("GET")),
        ]);
        assert_eq!(TargetRef::of(SpanKind::Producer, &db), TargetRef::NONE);
        // server.address alone is not HTTP.
        let addr = attrs(&[("server.address", s("h"))]);
        assert_eq!(TargetRef::of(SpanKind::Client, &addr), TargetRef::NONE);
        // Empty and non-string values are absent.
        let odd = attrs(&[
            ("db.system.name", s("")),
            ("http.request.method", AttrValue::Int(1)),
        ]);
        assert_eq!(TargetRef::of(SpanKind::Client, &odd), TargetRef::NONE);
        let partial = attrs(&[
            ("http.request.method", s("POST")),
            ("server.address", s("")),
        ]);
        assert_eq!(
            TargetRef::of(SpanKind::Client, &partial).values(),
            [Some("POST"), None, None]
        );
    }

    #[test]
    fn values_are_bounded_on_a_character_boundary() {
        let long = format!("{}é{}", "a".repeat(MAX_VALUE_BYTES - 1), "b".repeat(500));
        let a = attrs(&[
            ("http.request.method", s("GET")),
            ("server.address", s(&long)),
        ]);
        let t = TargetRef::of(SpanKind::Client, &a);
        let addr = t.values()[1].unwrap();
        assert_eq!(addr, "a".repeat(MAX_VALUE_BYTES - 1));
        let exact = "x".repeat(MAX_VALUE_BYTES);
        assert_eq!(bounded(&exact), exact);
        assert_eq!(bounded(&format!("{exact}y")), exact);
    }

    #[test]
    fn owned_targets_round_trip_and_match() {
        let a = attrs(&[("messaging.system", s("kafka"))]);
        let r = TargetRef::of(SpanKind::Producer, &a);
        let owned = r.to_owned_target();
        assert!(owned.matches(&r));
        assert_eq!(owned.view(), r);
        assert!(!owned.matches(&TargetRef::NONE));
        assert!(Target::default().matches(&TargetRef::NONE));
        assert!(Target::overflow(System::Db).is_empty());
        assert!(!Target::overflow(System::Db).matches(&TargetRef::NONE));
        assert!(!owned.is_empty());
    }

    #[test]
    fn every_row_is_found_and_nothing_else() {
        for (i, (a, _)) in ATTRIBUTES.iter().enumerate() {
            assert_eq!(index_of(a), Some(i));
        }
        for other in [
            "",
            "db.system.nam3",
            "server.port",
            "db.system",
            &"x".repeat(100),
        ] {
            assert_eq!(index_of(other), None, "{other}");
        }
    }

    #[test]
    fn new_normalises_like_the_rule() {
        let long = "é".repeat(100);
        let t = TargetRef::new(System::Http, [Some("GET"), Some(&long), Some("extra")]);
        assert_eq!(t.values()[1].map(str::len), Some(MAX_VALUE_BYTES));
        assert_eq!(t.values()[2], None, "HTTP has two values");
        let empty = TargetRef::new(System::Db, [Some(""), None, None]);
        assert!(empty.is_empty());
        assert_eq!(
            TargetRef::new(System::None, [Some("x"), None, None]),
            TargetRef::NONE
        );
        let attrs: Attributes = vec![
            ("db.system.name".into(), s("redis")),
            ("db.collection.name".into(), s("k")),
        ];
        assert_eq!(
            TargetRef::of(SpanKind::Client, &attrs),
            TargetRef::new(System::Db, [Some("redis"), None, Some("k")])
        );
    }
}
