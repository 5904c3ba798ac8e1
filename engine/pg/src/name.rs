//! One rule for `schema.table` and for quoting identifiers and literals.

use std::fmt;

/// PostgreSQL's limit on a name (NAMEDATALEN - 1), in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// A name that cannot be a PostgreSQL identifier or `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(String);

/// `schema.table` as written in config and pipeline files. Each part is taken as written (no
/// case folding); a part holding a dot or a double quote is written double-quoted, with `""`
/// for a quote. The schema is required: a bare table name would depend on `search_path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    pub fn parse(text: &str) -> Result<Self, NameError> {
        let bad = |why: &str| {
            NameError(format!(
                "table {text:?}: {why}; expected schema.table, with either part double-quoted (\"\" for a quote) if it holds a dot or a quote"
            ))
        };
        let (schema, rest) = parse_part(text).map_err(|why| bad(&why))?;
        let rest = match rest.strip_prefix('.') {
            Some(rest) => rest,
            None if rest.is_empty() => return Err(bad("no schema given")),
            None => return Err(bad(&format!("unexpected {rest:?} after the schema name"))),
        };
        let (name, rest) = parse_part(rest).map_err(|why| bad(&why))?;
        if !rest.is_empty() {
            return Err(bad(&format!("unexpected {rest:?} after the table name")));
        }
        check_identifier(&schema).map_err(|why| bad(&why))?;
        check_identifier(&name).map_err(|why| bad(&why))?;
        Ok(QualifiedName { schema, name })
    }

    /// `"schema"."table"`, safe to splice into SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for QualifiedName {
    /// The form [`QualifiedName::parse`] reads back: parts quoted only where they must be.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |p: &str| {
            if p.contains(['.', '"']) {
                quote_ident(p)
            } else {
                p.to_string()
            }
        };
        write!(f, "{}.{}", part(&self.schema), part(&self.name))
    }
}

impl std::str::FromStr for QualifiedName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QualifiedName::parse(s)
    }
}

/// Checks a single name: not empty, no NUL, at most 63 bytes.
pub fn check_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.contains('\0') {
        return Err(format!("{name:?} contains a NUL character"));
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!(
            "{name:?} is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte limit for names"
        ));
    }
    Ok(())
}

/// `"name"` with embedded quotes doubled. Any string is safe inside the quotes; a name with NUL
/// cannot exist in PostgreSQL (parsing refuses it).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled (the server runs with standard_conforming_strings).
pub fn quote_literal(value: &str) -> Result<String, NameError> {
    if value.contains('\0') {
        return Err(NameError(format!("invalid text {value:?}: contains NUL")));
    }
    Ok(format!("'{}'", value.replace('\'', "''")))
}

/// One name at the start of `s` and what follows it.
fn parse_part(s: &str) -> Result<(String, &str), String> {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                name.push(c);
                continue;
            }
            // A doubled quote stands for one quote; a single one ends the name.
            if quoted[i + 1..].starts_with('"') {
                name.push('"');
                chars.next();
            } else {
                return Ok((name, &quoted[i + 1..]));
            }
        }
        Err("unterminated double quote".into())
    } else {
        let end = s.find(['.', '"']).unwrap_or(s.len());
        if end == 0 {
            return Err("empty name".into());
        }
        if s[end..].starts_with('"') {
            return Err("a double quote inside a bare name".into());
        }
        Ok((s[..end].to_string(), &s[end..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_quote_and_round_trip() {
        let q = QualifiedName::parse("meta.classifications").unwrap();
        assert_eq!(q, QualifiedName::new("meta", "classifications"));
        assert_eq!(q.quoted(), "\"meta\".\"classifications\"");
        let odd = QualifiedName::parse("\"my.schema\".\"a \"\"b\"\"\"").unwrap();
        assert_eq!(odd.schema, "my.schema");
        assert_eq!(odd.name, "a \"b\"");
        assert_eq!(odd.quoted(), "\"my.schema\".\"a \"\"b\"\"\"");
        assert_eq!(QualifiedName::parse(&odd.to_string()).unwrap(), odd);
        assert_eq!(QualifiedName::parse("Meta.Assets").unwrap().name, "Assets");
    }

    #[test]
    fn refuses_hostile_and_malformed_names() {
        for bad in [
            "assets",
            "a.b.c",
            ".b",
            "a.",
            "\"a.b",
            "a\"b.c",
            "a.b\0",
            "",
            &format!("a.{}", "x".repeat(64)),
        ] {
            assert!(QualifiedName::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let e = QualifiedName::parse("a.b.c").unwrap_err().to_string();
        assert!(e.contains("schema.table"), "{e}");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("x\"; drop"), "\"x\"\"; drop\"");
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        assert!(quote_literal("a\0").is_err());
    }
}
