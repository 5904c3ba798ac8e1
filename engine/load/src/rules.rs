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
    let control = if v.is_ascii() {
        v.bytes().any(|b| b < 0x20 || b == 0x7f)
    } else {
        v.chars().any(char::is_control)
    };
    if control {
        return Err(format!("{what} {v:?} contains a control character"));
    }
    Ok(())
}

/// How deeply the JSON text `raw` nests objects and arrays (strings skipped), stopping early
/// past `limit`.
pub fn json_depth(raw: &str, limit: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
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
                deepest = deepest.max(depth);
                if deepest > limit {
                    return deepest;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_printable() {
        assert!(check_name("n", "snow/db/t_1 \"quoted\"; drop").is_ok());
        assert!(check_name("n", "ünïcode/名前").is_ok());
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
        assert_eq!(json_depth(r#"{"a": [1, {"b": "}}]]{{["}]}"#, 128), 3);
        assert_eq!(json_depth(r#"{"a": "\"{"}"#, 128), 1);
        let deep = "[".repeat(500);
        assert!(json_depth(&deep, 128) > 128);
    }
}
