//! The rules: one combined regular expression (one pass over the text, the
//! leftmost match wins) and the checks a candidate must pass before it is
//! replaced (Luhn for cards, ISO 13616 mod 97 for IBANs, digit counts and
//! boundaries for phone numbers), plus the secret-key rule.

use regex::Regex;

/// Replacement of a secret value (and of PII in `redact` mode).
pub const REDACTED: &str = "REDACTED";

/// Built-in secret key words, matched against a key with `_ . -` removed
/// and lower-cased (`X-Api-Key` → `xapikey` contains `apikey`).
pub const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "privatekey",
    "credential",
    "authorization",
    "cookie",
    "sessionid",
    "creditcard",
    "cardnumber",
    "cvv",
];

/// Built-in short key words, matched only as a whole segment of the key
/// (`pass=` and `user_pin=` are secret, `passenger=` and `spinner=` are not).
pub const SECRET_SEGMENTS: &[&str] = &[
    "pass", "pwd", "pin", "ssn", "cvc", "otp", "sig", "auth", "session", "jwt",
];

/// Header names whose whole value (to the end of the line) is secret.
const HEADER: &str = r"\b(?P<hkey>(?:proxy-)?authorization|set-cookie|cookie)(?P<hq>[\x22'])?[ \t]*[:=][ \t]*(?P<hval>\x22(?:[^\x22\\\r\n]|\\.)*\x22|[^\s\x22][^\r\n\x22]*)";
/// `key=value`, `key: value`, `"key": "value"`: the callback decides
/// whether the key is secret, and scrubs the value by content otherwise.
const KV: &str = r"\b(?P<kkey>[A-Za-z][A-Za-z0-9_.\-]{0,63})(?P<kq>[\x22'])?[ \t]*[:=][ \t]*(?P<kval>\x22(?:[^\x22\\\r\n]|\\.)*\x22|'[^'\r\n]*'|[^\s&,;\x22'<>{}\[\]]+)";
const JWT: &str = r"(?P<jwt>eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*)";
const BEARER: &str = r"\b(?P<bscheme>(?i:bearer|basic)[ ]+)(?P<bval>[A-Za-z0-9\-._~+/]{8,}=*)";
/// Well-known API key shapes: Stripe, OpenAI, GitHub, Slack, AWS, Meta
/// (WhatsApp Cloud API access tokens start with `EAA`).
const APIKEY: &str = r"(?P<apikey>(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{10,}|sk-[A-Za-z0-9_\-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|xox[abprs]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16}|EAA[A-Za-z0-9]{30,})";
/// The local part admits `*` so that a masked address (`j***@x.com`) is
/// still read as one address, and scrubbing it again changes nothing.
const EMAIL: &str = r"(?P<elocal>[A-Za-z0-9._%+\-*]{1,64})(?P<eat>@|%40)(?P<edomain>[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24})";
const IBAN: &str = r"(?P<iban>[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?)";
const CARD: &str = r"(?P<card>[0-9](?:[ \-]?[0-9]){12,18})";
const SSN: &str = r"(?P<ssn>[0-9]{3}-[0-9]{2}-[0-9]{4})";
/// E.164 (`+` and 8 to 15 digits with separators), `(11) 98765-4321`,
/// `555-123-4567` / `11 98765 4321`, `07700 900123`.
const PHONE: &str = r"(?P<phone>\+[0-9](?:[ .\-]?\(?[0-9]\)?){6,16}|\([0-9]{2,4}\)[ .\-]?[0-9]{3,5}[ .\-]?[0-9]{4}|[0-9]{2,4}[ .\-][0-9]{3,5}[ .\-][0-9]{4}|0[0-9]{2,4}[ \-][0-9]{6,8})";

/// The combined expression. Order matters only between alternatives that
/// match at the same start: secrets first, then the PII shapes.
pub fn combined() -> Regex {
    let header = format!("(?i:{HEADER})");
    let all = [
        &header, KV, JWT, BEARER, APIKEY, EMAIL, IBAN, CARD, SSN, PHONE,
    ]
    .join("|");
    Regex::new(&all).expect("the scrubber's built-in expression is valid")
}

/// The shape rules alone, anchored at the start of the text they are run
/// on, for the scrubber's fallback.
pub fn single() -> Vec<(&'static str, Regex)> {
    [
        ("iban", IBAN),
        ("card", CARD),
        ("ssn", SSN),
        ("phone", PHONE),
    ]
    .into_iter()
    .map(|(name, re)| {
        let re = Regex::new(&format!("^(?:{re})")).expect("a built-in rule is valid");
        (name, re)
    })
    .collect()
}

/// The byte before `start` and the one at `end` are not word characters
/// (letters, digits, `_`), so `id_4111111111111111x` is not a card number.
pub fn bounded(text: &str, start: usize, end: usize) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = text.as_bytes();
    (start == 0 || !word(b[start - 1])) && (end >= b.len() || !word(b[end]))
}

/// Luhn checksum of the digits of `s` (separators ignored).
pub fn luhn(s: &str) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for b in s.bytes().rev().filter(u8::is_ascii_digit) {
        let mut d = u32::from(b - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    sum % 10 == 0
}

/// A payment card: 13 to 19 digits, an issuer prefix (Visa, Mastercard,
/// Amex, Discover, Diners, JCB), one kind of separator, a valid Luhn sum.
pub fn is_card(s: &str) -> bool {
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    if !(13..=19).contains(&digits.len()) || (s.contains(' ') && s.contains('-')) {
        return false;
    }
    let p2: u32 = digits[..2].parse().unwrap_or(0);
    let p4: u32 = digits[..4].parse().unwrap_or(0);
    let issuer = digits.starts_with('4')
        || (51..=55).contains(&p2)
        || (2221..=2720).contains(&p4)
        || p2 == 34
        || p2 == 37
        || p2 == 35
        || p2 == 36
        || p2 == 38
        || (300..=305).contains(&(p4 / 10))
        || p4 == 6011
        || p2 == 65
        || (644..=649).contains(&(p4 / 10));
    issuer && luhn(&digits)
}

/// An IBAN: 15 to 34 characters (spaces ignored) whose ISO 13616 check
/// (country and check digits moved to the end, letters as 10..35) is 1
/// modulo 97.
pub fn is_iban(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let mut rem = 0u32;
    for &b in compact[4..].iter().chain(&compact[..4]) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// A phone candidate: 8 to 15 digits (7 to 15 with a `(area)` or a leading
/// `+`... at least 8 in all forms), not a date or a version.
pub fn is_phone(s: &str) -> bool {
    let n = s.bytes().filter(u8::is_ascii_digit).count();
    if !(8..=15).contains(&n) {
        return false;
    }
    // Two separators in a row ("1 - 2") or unbalanced parentheses: not a
    // number anyone writes.
    let b = s.as_bytes();
    let sep = |c: u8| matches!(c, b' ' | b'.' | b'-');
    if b.windows(2).any(|w| sep(w[0]) && sep(w[1])) {
        return false;
    }
    s.bytes().filter(|c| *c == b'(').count() == s.bytes().filter(|c| *c == b')').count()
}

/// Whether `key` names a secret: its normalised form (lower-case, without
/// `_ . -`) contains a built-in word or a configured field, or one of its
/// segments (split on `_ . -`, spaces, camel case) is a short secret word.
pub fn is_secret_key(key: &str, fields: &[String]) -> bool {
    let lower = key.to_ascii_lowercase();
    if fields.iter().any(|f| lower.contains(f.as_str())) {
        return true;
    }
    let norm: String = lower
        .chars()
        .filter(|c| !matches!(c, '_' | '.' | '-' | ' '))
        .collect();
    if SECRET_WORDS.iter().any(|w| norm.contains(w)) {
        return true;
    }
    segments(key).any(|seg| SECRET_SEGMENTS.iter().any(|w| seg.eq_ignore_ascii_case(w)))
}

/// The segments of a key: split on `_ . -` and spaces, and before an
/// upper-case letter that follows a lower-case one (`userPin` → `user`, `Pin`).
fn segments(key: &str) -> impl Iterator<Item = &str> {
    key.split(['_', '.', '-', ' ']).flat_map(|part| {
        let b = part.as_bytes();
        let mut cuts = vec![0];
        for i in 1..b.len() {
            if b[i].is_ascii_uppercase() && b[i - 1].is_ascii_lowercase() {
                cuts.push(i);
            }
        }
        cuts.push(b.len());
        (0..cuts.len() - 1)
            .map(|i| &part[cuts[i]..cuts[i + 1]])
            .collect::<Vec<_>>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_and_cards() {
        assert!(is_card("4111111111111111"));
        assert!(is_card("4111 1111 1111 1111"));
        assert!(is_card("5500-0000-0000-0004"));
        assert!(is_card("378282246310005"));
        assert!(!is_card("4111111111111112"), "Luhn fails");
        assert!(!is_card("1733384400000"), "epoch ms: no issuer");
        assert!(!is_card("4111 1111-1111 1111"), "mixed separators");
    }

    #[test]
    fn iban_checksum() {
        assert!(is_iban("DE89370400440532013000"));
        assert!(is_iban("GB82 WEST 1234 5698 7654 32"));
        assert!(!is_iban("DE89370400440532013001"));
        assert!(!is_iban("AB12"));
    }

    #[test]
    fn secret_keys() {
        let none: Vec<String> = vec![];
        for k in [
            "password",
            "db_password",
            "X-Api-Key",
            "api_key",
            "pass",
            "user_pin",
            "userPin",
            "access_token",
            "http.request.header.authorization",
            "Set-Cookie",
            "ssn",
            "credit_card",
        ] {
            assert!(is_secret_key(k, &none), "{k}");
        }
        for k in [
            "passenger",
            "spinner",
            "author",
            "campaign",
            "email",
            "code.function",
            "url.query",
            "status_code",
            "design",
        ] {
            assert!(!is_secret_key(k, &none), "{k}");
        }
        assert!(is_secret_key("customer_cpf", &["cpf".to_string()]));
    }
}
