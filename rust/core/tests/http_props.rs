//! HTTP server spans over arbitrary requests: never a panic, every output
//! bounded by its input, and the decisions that must hold whatever the
//! bytes.

use proptest::prelude::*;
use pulsetrace_core::http::{
    keys, method_of, parse_port, redact_query, server_span, split_host, status_code, Method,
    Request, Text, Value,
};

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        ".{0,40}",
        "[\\[\\]:0-9a-z.]{0,20}",
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| latin1(&b)),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A status line's code is its first three characters when they are
    /// digits naming 100..=999, whatever follows (or nothing).
    #[test]
    fn a_status_code_is_three_leading_digits(s in "[0-9+ a-]{0,3}(.{0,12})") {
        let head = s.get(..3).filter(|h| h.bytes().all(|b| b.is_ascii_digit()));
        let expected = head.and_then(|h| h.parse::<u16>().ok()).filter(|&c| c >= 100);
        prop_assert_eq!(status_code(&s), expected);
    }

    /// A port is one to five ASCII digits naming 1..=65535, nothing else
    /// (no sign, no space): the standard parser's answer on such text.
    #[test]
    fn a_port_is_digits_naming_one_to_65535(s in "[0-9+ a-]{0,7}") {
        let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
        let expected = s.parse::<u16>().ok().filter(|&p| digits && p > 0);
        prop_assert_eq!(parse_port(&s), expected);
    }

    #[test]
    fn any_request_gives_a_bounded_span(
        method in opt_text(),
        scheme in opt_text(),
        host in opt_text(),
        server_name in opt_text(),
        server_port in prop::option::of(any::<u16>()),
        script in prop::collection::vec(any::<u8>(), 0..40),
        path in prop::collection::vec(any::<u8>(), 0..200),
        query in prop::collection::vec(any::<u8>(), 0..400),
        decoded_path in ".{0,60}",
        client in opt_text(),
        user_agent in opt_text(),
        protocol in opt_text(),
        words in prop::collection::vec("[a-z]{1,6}", 0..3),
        asgi in any::<bool>(),
        raw_path in any::<bool>(),
    ) {
        let (script_s, path_s, query_s) = (latin1(&script), latin1(&path), latin1(&query));
        let req = Request {
            method: method.as_deref(),
            scheme: scheme.as_deref(),
            host: host.as_deref(),
            server_name: server_name.as_deref(),
            server_port,
            script: if asgi { Text::Decoded("") } else { Text::Latin1(&script_s) },
            path: match (asgi, raw_path) {
                (false, _) => Text::Latin1(&path_s),
                (true, false) => Text::Decoded(&decoded_path),
                (true, true) => Text::PercentEncoded(&path),
            },
            query: if asgi { Text::Bytes(&query) } else { Text::Latin1(&query_s) },
            client: client.as_deref(),
            user_agent: user_agent.as_deref(),
            protocol: protocol.as_deref(),
        };
        let s = server_span(&req, &words);
        let path_in = match (asgi, raw_path) {
            (true, false) => decoded_path.len(),
            (true, true) => path.len(),
            (false, _) => script.len() + path.len(),
        };
        prop_assert!(s.path.len() <= 3 * path_in + 1);
        prop_assert!(!s.path.is_empty());
        if let Some(q) = &s.query {
            let pairs = query.iter().filter(|&&b| b == b'&').count() + 1;
            prop_assert!(q.len() <= 3 * query.len() + 8 * pairs);
            prop_assert!(!q.is_empty());
        }
        let attrs = s.attributes();
        prop_assert!(attrs.len() <= 10);
        prop_assert_eq!(attrs[0].0, keys::METHOD);
        // A method is either known (and upper-case) or _OTHER.
        match s.method {
            Method::Known(_) => prop_assert!(s.method.as_str().bytes().all(|b| b.is_ascii_uppercase())),
            Method::Other => prop_assert_eq!(s.name(), "HTTP"),
        }
        if let Some(orig) = s.method_original {
            prop_assert_ne!(orig, s.method.as_str());
        }
        for (_, v) in &attrs {
            if let Value::Str(t) = v {
                prop_assert!(t.len() <= 3 * 400 + 8 * 401);
            }
        }
        if let Some(p) = s.port {
            prop_assert!(p > 0);
        }
    }

    #[test]
    fn a_host_header_round_trips(name in "[a-z][a-z0-9.-]{0,20}", port in 1u16..) {
        let h = format!("{name}:{port}");
        prop_assert_eq!(split_host(&h), Some((name.as_str(), Some(port))));
        let v6 = format!("[{name}::1]:{port}");
        let inner = format!("{name}::1");
        prop_assert_eq!(split_host(&v6), Some((inner.as_str(), Some(port))));
    }

    #[test]
    fn redaction_keeps_other_parameters(q in "[a-z=&%0-9+]{0,80}", w in "[a-z]{1,4}") {
        let words = vec![w.clone()];
        let out = redact_query(&q, &words);
        // As many parameters as before, in the same order.
        prop_assert_eq!(out.split('&').count(), q.split('&').count());
        for (a, b) in q.split('&').zip(out.split('&')) {
            prop_assert!(a == b || b.ends_with("=REDACTED"));
        }
    }

    #[test]
    fn method_case_never_matters(m in "[a-zA-Z]{1,8}") {
        prop_assert_eq!(method_of(Some(&m)), method_of(Some(&m.to_ascii_uppercase())));
    }
}
