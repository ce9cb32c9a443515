//! SQL obfuscation: literals out, structure kept, so a statement can be an
//! attribute (`db.query.text`) without carrying personal data or secrets.
//!
//! One pass over the bytes, no allocation beyond the output:
//! - string literals (`'...'` with `''` escapes, `E'...'` with backslash
//!   escapes), dollar-quoted bodies (`$$...$$`, `$tag$...$tag$`), numbers
//!   (not part of identifiers), hex/bit literals (`x'..'`, `0x..`) become `?`;
//! - comments (`-- ...`, `# ...` for MySQL, `/* ... */`) are removed;
//! - runs of whitespace collapse to one space;
//! - `IN (?, ?, ?)` collapses to `IN (?)`, and repeated `VALUES` tuples to
//!   the first one, so statements that differ only in list length are one;
//! - identifiers (also quoted `"x"` and `` `x` ``), keywords and
//!   placeholders (`?`, `%s`, `$1`, `:name`) are kept.
//!
//! Also read cheaply from the start of the statement: the operation (first
//! keyword) and the main table (after FROM / INTO / UPDATE / TABLE).
//! Untrusted input: never panics (property-tested), output is always valid
//! UTF-8, and obfuscating twice changes nothing.

/// The result of [`obfuscate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Obfuscated {
    pub text: String,
    /// The first keyword, upper-cased (`SELECT`, `INSERT`, ...), if any.
    pub operation: Option<String>,
    /// The table the statement is mainly about, if it can be read cheaply.
    pub collection: Option<String>,
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// How a dialect reads a double-quoted token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Dialect {
    /// Standard SQL, PostgreSQL: `"x"` is an identifier.
    #[default]
    Standard,
    /// MySQL/MariaDB (without `ANSI_QUOTES`): `"x"` is a string, with
    /// backslash escapes.
    Mysql,
    /// SQLite: `"x"` is an identifier where one is expected (after `FROM`,
    /// `JOIN`, `INTO`, `UPDATE`, `TABLE`, next to a `.`) and a string
    /// elsewhere (`WHERE email = "a@b.com"`).
    Sqlite,
}

impl Dialect {
    /// The dialect of an OpenTelemetry `db.system.name`.
    pub fn of_system(system: &str) -> Dialect {
        match system {
            "mysql" | "mariadb" => Dialect::Mysql,
            "sqlite" => Dialect::Sqlite,
            _ => Dialect::Standard,
        }
    }
}

/// Obfuscate a statement. `max_len` bounds the output (0: no bound); a
/// truncated statement ends with `...`.
pub fn obfuscate(sql: &str, max_len: usize) -> Obfuscated {
    obfuscate_dialect(sql, max_len, Dialect::Standard)
}

/// [`obfuscate`], with double-quoted tokens read as `dialect` reads them.
pub fn obfuscate_dialect(sql: &str, max_len: usize, dialect: Dialect) -> Obfuscated {
    let text = scrub(sql, dialect);
    let text = collapse_lists(&text);
    let (operation, collection) = summary(&text);
    let text = if max_len > 0 && text.len() > max_len {
        let mut cut = max_len.saturating_sub(3);
        while cut > 0 && !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &text[..cut])
    } else {
        text
    };
    Obfuscated {
        text,
        operation,
        collection,
    }
}

fn push_space(out: &mut String) {
    if !out.is_empty() && !out.ends_with(' ') {
        out.push(' ');
    }
}

/// Whether the double-quoted token ending at `end` is an identifier in
/// SQLite: after a keyword that names a table, or qualified by a `.`.
fn sqlite_identifier(out: &str, b: &[u8], end: usize) -> bool {
    let before = out.trim_end();
    if before.ends_with('.') || b.get(end) == Some(&b'.') {
        return true;
    }
    let word = before
        .rsplit(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    [
        "FROM", "JOIN", "INTO", "UPDATE", "TABLE", "EXISTS", "VIEW", "INDEX",
    ]
    .iter()
    .any(|k| word.eq_ignore_ascii_case(k))
}

fn scrub(sql: &str, dialect: Dialect) -> String {
    let b = sql.as_bytes();
    let n = b.len();
    let mut out = String::with_capacity(n);
    let mut i = 0;
    // Start of the pending run of ordinary bytes copied verbatim.
    while i < n {
        let c = b[i];
        match c {
            b'\'' => {
                // A prefix letter (E'..', N'..', X'..', B'..') was copied as an
                // identifier byte: drop it with the literal.
                let backslash = out.ends_with(['E', 'e']);
                if out.ends_with(['E', 'e', 'N', 'n', 'X', 'x', 'B', 'b'])
                    && (out.len() < 2 || !is_ident_byte(out.as_bytes()[out.len() - 2]))
                {
                    out.pop();
                }
                i = skip_quoted(b, i + 1, b'\'', backslash);
                out.push('?');
            }
            b'"' if dialect != Dialect::Standard && {
                let end = skip_quoted(b, i + 1, c, dialect == Dialect::Mysql);
                dialect == Dialect::Mysql || !sqlite_identifier(&out, b, end)
            } =>
            {
                // A string literal in this dialect.
                i = skip_quoted(b, i + 1, c, dialect == Dialect::Mysql);
                out.push('?');
            }
            b'"' | b'`' => {
                // Quoted identifier: kept as is.
                let end = skip_quoted(b, i + 1, c, false);
                out.push_str(&sql[i..end]);
                i = end;
            }
            b'-' if i + 1 < n && b[i + 1] == b'-' => {
                i = skip_line(b, i);
                push_space(&mut out);
            }
            b'#' => {
                i = skip_line(b, i);
                push_space(&mut out);
            }
            b'/' if i + 1 < n && b[i + 1] == b'*' => {
                i = match sql[i + 2..].find("*/") {
                    Some(p) => i + 2 + p + 2,
                    None => n,
                };
                push_space(&mut out);
            }
            b'$' if i + 1 < n
                && (b[i + 1] == b'$' || b[i + 1].is_ascii_alphabetic() || b[i + 1] == b'_') =>
            {
                // Dollar-quoted string, or a `$name` that is not one.
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&x| !(x.is_ascii_alphanumeric() || x == b'_'))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(t) if b[t] == b'$' => {
                        let tag = &sql[i..=t];
                        i = match sql[t + 1..].find(tag) {
                            Some(p) => t + 1 + p + tag.len(),
                            None => n,
                        };
                        out.push('?');
                    }
                    _ => {
                        out.push('$');
                        i += 1;
                    }
                }
            }
            b'0'..=b'9' => {
                let prev_ident = out.as_bytes().last().is_some_and(|&p| is_ident_byte(p));
                if prev_ident {
                    // Part of an identifier (t1, col_2) or a placeholder ($1).
                    out.push(c as char);
                    i += 1;
                } else {
                    i = skip_number(b, i);
                    out.push('?');
                }
            }
            b'.' if i + 1 < n
                && b[i + 1].is_ascii_digit()
                && !out.as_bytes().last().is_some_and(|&p| is_ident_byte(p)) =>
            {
                i = skip_number(b, i);
                out.push('?');
            }
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                push_space(&mut out);
                i += 1;
            }
            _ => {
                // Copy one whole UTF-8 character.
                let len = utf8_len(c);
                let end = (i + len).min(n);
                out.push_str(sql.get(i..end).unwrap_or("?"));
                i = end;
            }
        }
    }
    let trimmed = out.trim();
    if trimmed.len() != out.len() {
        trimmed.to_owned()
    } else {
        out
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Index just past the closing quote (doubled quotes are escapes).
fn skip_quoted(b: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            if i + 1 < b.len() && b[i + 1] == quote {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

fn skip_line(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&x| x == b'\n')
        .map_or(b.len(), |p| i + p + 1)
}

fn skip_number(b: &[u8], mut i: usize) -> usize {
    if b[i] == b'0' && i + 1 < b.len() && (b[i + 1] == b'x' || b[i + 1] == b'X') {
        i += 2;
        while i < b.len() && b[i].is_ascii_hexdigit() {
            i += 1;
        }
        return i;
    }
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
        i += 1;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            i = j;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    i
}

/// A list of placeholders only: `?`, `?, ?`, `%s, %s`, `$1, $2`, `:a, :b`.
fn is_placeholder_list(inner: &str) -> bool {
    let mut any = false;
    for item in inner.split(',') {
        let item = item.trim();
        let ok = item == "?"
            || item == "%s"
            || (item.len() > 1
                && item.starts_with('$')
                && item[1..].bytes().all(|c| c.is_ascii_digit()))
            || (item.len() > 1
                && (item.starts_with(':') || item.starts_with("%("))
                && item[1..]
                    .bytes()
                    .all(|c| is_ident_byte(c) || c == b')' || c == b'('));
        if !ok {
            return false;
        }
        any = true;
    }
    any
}

fn collapse_lists(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(p) = rest.find('(') {
        let (before, after) = rest.split_at(p);
        out.push_str(before);
        let Some(close) = after.find(')') else {
            out.push_str(after);
            return out;
        };
        let inner = &after[1..close];
        let upper_tail = out.trim_end().to_ascii_uppercase();
        if inner.contains(',') && upper_tail.ends_with(" IN") && is_placeholder_list(inner) {
            out.push_str("(?)");
            rest = &after[close + 1..];
            continue;
        }
        out.push_str(&after[..=close]);
        rest = &after[close + 1..];
        // VALUES (...), (...), ... → the first tuple only.
        if upper_tail.ends_with("VALUES") || upper_tail.ends_with("VALUES ") {
            let tuple = &after[..=close];
            loop {
                let t = rest.trim_start();
                let Some(next) = t.strip_prefix(',') else {
                    break;
                };
                let next = next.trim_start();
                if next.starts_with('(') {
                    if let Some(c) = next.find(')') {
                        if is_placeholder_list(&next[1..c]) || &next[..=c] == tuple {
                            rest = &next[c + 1..];
                            continue;
                        }
                    }
                }
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The table name in a token: `"t"`, `` `t` ``, `t(a, b)`, `t;` → `t`; a
/// subquery `(SELECT ...` gives nothing.
fn unquote(token: &str) -> &str {
    if token.starts_with('(') {
        return "";
    }
    let t = token.split('(').next().unwrap_or("");
    let t = t.trim_end_matches([';', ',', ')']);
    t.trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']')
}

fn summary(text: &str) -> (Option<String>, Option<String>) {
    let mut words = text.split(char::is_whitespace).filter(|w| !w.is_empty());
    let Some(first) = words.next() else {
        return (None, None);
    };
    let first = first.split('(').next().unwrap_or("");
    if first.is_empty() || !first.bytes().all(|c| c.is_ascii_alphabetic()) {
        return (None, None);
    }
    let op = first.to_ascii_uppercase();
    let after: &[&str] = match op.as_str() {
        "SELECT" | "DELETE" => &["FROM"],
        "INSERT" | "REPLACE" => &["INTO"],
        "UPDATE" => &[],
        "CREATE" | "DROP" | "ALTER" | "TRUNCATE" => &["TABLE"],
        _ => return (Some(op), None),
    };
    let collection = if after.is_empty() {
        words.next().map(unquote)
    } else {
        let mut found = None;
        let mut depth_guard = 0;
        for w in words.by_ref() {
            depth_guard += 1;
            if depth_guard > 64 {
                break;
            }
            if after.iter().any(|k| w.eq_ignore_ascii_case(k)) {
                found = words.next().map(unquote);
                // CREATE TABLE IF NOT EXISTS t, DROP TABLE IF EXISTS t
                let ddl = matches!(op.as_str(), "CREATE" | "DROP" | "ALTER");
                if ddl && found.is_some_and(|f| f.eq_ignore_ascii_case("IF")) {
                    let mut next = words.next();
                    if next.is_some_and(|w| w.eq_ignore_ascii_case("NOT")) {
                        next = words.next();
                    }
                    found = if next.is_some_and(|w| w.eq_ignore_ascii_case("EXISTS")) {
                        words.next().map(unquote)
                    } else {
                        None
                    };
                }
                break;
            }
        }
        found
    };
    let collection = collection
        .filter(|c| !c.is_empty() && c.bytes().all(|b| is_ident_byte(b) || b == b'.'))
        .map(str::to_owned);
    (Some(op), collection)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(s: &str) -> String {
        obfuscate(s, 0).text
    }

    #[test]
    fn double_quoted_strings_by_dialect() {
        let q = r#"SELECT * FROM "users" WHERE email = "a@b.com" AND "users"."id" = 1"#;
        let d = |d| obfuscate_dialect(q, 0, d).text;
        assert_eq!(
            d(Dialect::Standard),
            r#"SELECT * FROM "users" WHERE email = "a@b.com" AND "users"."id" = ?"#
        );
        assert_eq!(
            d(Dialect::Sqlite),
            r#"SELECT * FROM "users" WHERE email = ? AND "users"."id" = ?"#
        );
        assert_eq!(
            obfuscate_dialect(
                r#"SELECT 1 FROM t WHERE email = "a\"@b.com" OR n = 'x'"#,
                0,
                Dialect::Mysql
            )
            .text,
            "SELECT ? FROM t WHERE email = ? OR n = ?"
        );
        assert_eq!(Dialect::of_system("mariadb"), Dialect::Mysql);
        let once = obfuscate_dialect(q, 0, Dialect::Sqlite).text;
        assert_eq!(obfuscate_dialect(&once, 0, Dialect::Sqlite).text, once);
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            o("SELECT * FROM users WHERE id = 42"),
            "SELECT * FROM users WHERE id = ?"
        );
        assert_eq!(
            o("SELECT * FROM t WHERE name = 'O''Brien' AND x = -1.5e3"),
            "SELECT * FROM t WHERE name = ? AND x = -?"
        );
        assert_eq!(
            o("SELECT E'a\\'b', x'ff', 0xFF, .5, 1e10"),
            "SELECT ?, ?, ?, ?, ?"
        );
        assert_eq!(
            o("SELECT $$secret$$, $tag$x$y$tag$ FROM t"),
            "SELECT ?, ? FROM t"
        );
        assert_eq!(
            o("UPDATE t SET a = 'x' WHERE b = $1"),
            "UPDATE t SET a = ? WHERE b = $1"
        );
    }

    #[test]
    fn identifiers_and_placeholders_are_kept() {
        assert_eq!(
            o("SELECT t1.col_2, \"Weird 9\" FROM tab3 WHERE a = %s AND b = :name"),
            "SELECT t1.col_2, \"Weird 9\" FROM tab3 WHERE a = %s AND b = :name"
        );
        assert_eq!(
            o("SELECT `order` FROM `t` WHERE c = ?"),
            "SELECT `order` FROM `t` WHERE c = ?"
        );
    }

    #[test]
    fn comments_and_whitespace() {
        assert_eq!(o("SELECT 1 -- password=hunter2\nFROM t"), "SELECT ? FROM t");
        assert_eq!(
            o("SELECT /* token abc */ a\n\n\tFROM   t # mysql comment"),
            "SELECT a FROM t"
        );
    }

    #[test]
    fn lists_collapse() {
        assert_eq!(
            o("SELECT * FROM t WHERE id IN (1, 2, 3)"),
            "SELECT * FROM t WHERE id IN (?)"
        );
        assert_eq!(
            o("SELECT * FROM t WHERE id IN (%s, %s)"),
            "SELECT * FROM t WHERE id IN (?)"
        );
        assert_eq!(
            o("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z')"),
            "INSERT INTO t (a, b) VALUES (?, ?)"
        );
        assert_eq!(
            o("INSERT INTO t VALUES (%s, %s), (%s, %s)"),
            "INSERT INTO t VALUES (%s, %s)"
        );
        // A function call's arguments are not a list to collapse.
        assert_eq!(
            o("SELECT coalesce(a, b) FROM t"),
            "SELECT coalesce(a, b) FROM t"
        );
    }

    #[test]
    fn operation_and_collection() {
        let s = |q: &str| {
            let r = obfuscate(q, 0);
            (r.operation, r.collection)
        };
        let some = |a: &str, b: &str| (Some(a.to_owned()), Some(b.to_owned()));
        assert_eq!(
            s("select * from Users where id = 1"),
            some("SELECT", "Users")
        );
        assert_eq!(
            s("INSERT INTO \"orders\" VALUES (1)"),
            some("INSERT", "orders")
        );
        assert_eq!(
            s("UPDATE public.items SET a = 1"),
            some("UPDATE", "public.items")
        );
        assert_eq!(s("DELETE FROM t"), some("DELETE", "t"));
        assert_eq!(
            s("CREATE TABLE IF NOT EXISTS kv (k text)"),
            some("CREATE", "kv")
        );
        assert_eq!(s("BEGIN"), (Some("BEGIN".into()), None));
        assert_eq!(
            s("SELECT * FROM (SELECT 1) x"),
            (Some("SELECT".into()), None)
        );
        assert_eq!(s(""), (None, None));
    }

    #[test]
    fn bounded_and_idempotent() {
        let long = format!("SELECT {} FROM t", "a, ".repeat(1000));
        let r = obfuscate(&long, 100);
        assert!(r.text.len() <= 100 && r.text.ends_with("..."));
        for q in [
            "SELECT 'é' , 'ü' FROM t WHERE x = 1",
            "INSERT INTO t VALUES (1, 2), (3, 4)",
        ] {
            assert_eq!(o(&o(q)), o(q));
        }
        // Unterminated constructs end the statement, never panic.
        for q in [
            "SELECT 'abc",
            "SELECT /* x",
            "SELECT $a$ x",
            "SELECT \"x",
            "x'",
            "$",
            "0x",
        ] {
            let _ = o(q);
        }
    }
}
