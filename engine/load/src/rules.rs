//! The catalog's rules for what a written asset, edge or tag may hold, shared by the ingest
//! API and bulk loads so both refuse the same input: names present, bounded and free of
//! control characters, type names and tags in their alphabets, attributes no deeper than
//! JSON parsers of the API go.

/// Longest qualified name, name or reference, in bytes.
pub const MAX_NAME_BYTES: usize = 2_048;

/// Deepest nesting of an asset's attributes (objects and arrays), the API's JSON parser's
/// own limit.
pub const MAX_ATTRIBUTE_DEPTH: usize = 128;

/// `^[A-Z][A-Za-z0-9]{0,63}$`, as the `assets_type_name_bytes` check of `meta.assets`.
pub fn valid_type_name(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_uppercase()
        && b.iter().all(u8::is_ascii_alphanumeric)
}

/// `^[A-Za-z0-9][A-Za-z0-9_ -]{0,63}$`: tags name policies and appear in warehouse DDL, so they
/// are kept to a safe alphabet.
pub fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b' '))
}

/// Names are data (quotes and semicolons are fine: every write is parameterized), but they must
/// be present, bounded and free of control characters (which also keeps NUL, which PostgreSQL
/// text cannot hold, out).
pub fn check_name(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if v.len() > MAX_NAME_BYTES {
        return Err(format!("{what} is longer than {MAX_NAME_BYTES} bytes"));
    }
    if has_control(v.as_bytes()) {
        return Err(format!("{what} {v:?} contains a control character"));
    }
    Ok(())
}

/// Whether UTF-8 text holds a control character (`char::is_control`: C0, DEL, C1), in one
/// pass over the bytes: C1 characters are U+0080..U+009F, encoded `C2 80`..`C2 9F`. Bulk loads
/// check three names per row, so this stays off the per-character decode.
fn has_control(b: &[u8]) -> bool {
    b.iter().enumerate().any(|(i, &c)| {
        c < 0x20
            || c == 0x7f
            || (c == 0xc2 && b.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)))
    })
}

/// Whether the JSON text `raw` nests objects and arrays (strings skipped) more than `limit`
/// levels deep.
pub fn nests_deeper_than(raw: &str, limit: usize) -> bool {
    // Nesting deeper than `limit` takes more than `2 * limit` bytes (an opening and a closing
    // bracket per level): shorter text, nearly every row's attributes, needs no scan.
    if raw.len() <= 2 * limit {
        return false;
    }
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    for b in raw.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_printable() {
        assert!(check_name("n", "snow/db/t_1 \"quoted\"; drop").is_ok());
        assert!(check_name("n", "ünïcode/名前").is_ok());
        // Every character that decodes to a control, and only those (U+00A0 is `C2 A0`).
        assert!(check_name("n", "no-break\u{a0}space").is_ok());
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            let s = format!("a{c}b");
            assert_eq!(check_name("n", &s).is_err(), c.is_control(), "{c:?}");
        }
        for bad in [
            "",
            "a\u{0}b",
            "tab\there",
            "esc\u{1b}[31m",
            "del\u{7f}",
            "c1\u{85}",
        ] {
            assert!(check_name("n", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("n", &"x".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(check_name("n", &"x".repeat(MAX_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn type_names_and_tags() {
        assert!(valid_type_name("Table") && valid_type_name("MaterializedView"));
        assert!(!valid_type_name("table") && !valid_type_name("Ta-ble") && !valid_type_name(""));
        assert!(valid_tag("PII") && valid_tag("gdpr_eu 2"));
        assert!(!valid_tag("-x") && !valid_tag("a;b") && !valid_tag(""));
    }

    #[test]
    fn depth_skips_strings() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(!nests_deeper_than(&nested(128), 128));
        assert!(nests_deeper_than(&nested(129), 128));
        // Brackets inside strings (escaped quotes included) are text.
        let text = format!(r#"{{"a": "{}\"{}"}}"#, "[".repeat(300), "{".repeat(300));
        assert!(!nests_deeper_than(&text, 128));
        // Short text is within the limit whatever it holds.
        assert!(!nests_deeper_than(&"[".repeat(200), 128));
    }
}
