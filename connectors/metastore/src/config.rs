//! What the sink is told to do, as it appears in the engine's TOML file, and the checks that need
//! no database.

use std::collections::HashSet;

use serde::Deserialize;

/// PostgreSQL truncates longer identifiers (NAMEDATALEN - 1 bytes) when they appear in SQL, so a
/// longer name would look one thing up in the catalog and write to another.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Settings of one metastore sink.
///
/// ```toml
/// table = "meta.classifications"
/// mode = "upsert"
/// update_columns = ["propagate", "updated_at"]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetastoreSinkConfig {
    /// Target table as `schema.table`. Each part is either a bare name, taken exactly as written
    /// (no case folding, no dots or double quotes), or an SQL double-quoted identifier with `""`
    /// for a quote, for names holding dots or quotes: `public."we""ird.name"`.
    pub table: String,
    /// What to do with each row: `upsert` (insert, or overwrite the row with the same key),
    /// `insert` (insert; a row whose key exists is skipped) or `delete` (delete the row with the
    /// row's key).
    #[serde(default)]
    pub mode: Mode,
    /// Columns identifying a row. They must be exactly the columns of the table's primary key or
    /// of one of its unique constraints or indexes (not partial, not on expressions, not
    /// deferrable), in any order. Default: the primary key.
    #[serde(default)]
    pub key_columns: Option<Vec<String>>,
    /// `upsert` only: the columns an existing row gets overwritten in (those the incoming row
    /// carries). Default: every non-key column the incoming row carries.
    #[serde(default)]
    pub update_columns: Option<Vec<String>>,
    /// Milliseconds a delivery's statement may take (1 to 3,600,000). Past it the statement is
    /// abandoned (and cancelled on the server by `statement_timeout`), the connection is
    /// replaced and the delivery is retried: a metastore that stops answering cannot hold the
    /// pipeline. Default 30000.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
}

fn default_statement_timeout_ms() -> u64 {
    30_000
}

/// How rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `INSERT ... ON CONFLICT (key) DO UPDATE`.
    #[default]
    Upsert,
    /// `INSERT ... ON CONFLICT (key) DO NOTHING`.
    Insert,
    /// `DELETE` of the rows whose key columns equal the incoming row's.
    Delete,
}

impl Mode {
    /// As written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Upsert => "upsert",
            Mode::Insert => "insert",
            Mode::Delete => "delete",
        }
    }
}

/// A configuration that cannot work whatever the database holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid metastore sink configuration: {0}")]
pub struct ConfigError(String);

impl MetastoreSinkConfig {
    /// Checks the settings on their own (the table's shape is checked by
    /// [`MetastoreSink::connect`](crate::MetastoreSink::connect)).
    pub fn validate(&self) -> Result<(), ConfigError> {
        split_table_name(&self.table)?;
        if !(1..=3_600_000).contains(&self.statement_timeout_ms) {
            return Err(ConfigError(
                "statement_timeout_ms must be between 1 and 3600000".into(),
            ));
        }
        if let Some(keys) = &self.key_columns {
            check_column_list("key_columns", keys)?;
        }
        if let Some(updates) = &self.update_columns {
            if self.mode != Mode::Upsert {
                return Err(ConfigError(format!(
                    "update_columns only applies to mode = \"upsert\", not {:?}",
                    self.mode.as_str()
                )));
            }
            check_column_list("update_columns", updates)?;
            if let Some(keys) = &self.key_columns {
                if let Some(both) = updates.iter().find(|u| keys.contains(u)) {
                    return Err(ConfigError(format!(
                        "column {both:?} is in both key_columns and update_columns; a key column \
                         is never overwritten"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The target table as (schema, table), unquoted.
    pub(crate) fn table_parts(&self) -> Result<(String, String), ConfigError> {
        split_table_name(&self.table)
    }
}

fn check_column_list(setting: &str, columns: &[String]) -> Result<(), ConfigError> {
    if columns.is_empty() {
        let hint = if setting == "update_columns" {
            "; to leave existing rows alone use mode = \"insert\""
        } else {
            ""
        };
        return Err(ConfigError(format!(
            "{setting} is empty; leave it out for the default{hint}"
        )));
    }
    let mut seen = HashSet::new();
    for c in columns {
        check_identifier(setting, c)?;
        if !seen.insert(c.as_str()) {
            return Err(ConfigError(format!("{setting} names {c:?} twice")));
        }
    }
    Ok(())
}

fn check_identifier(what: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError(format!("{what}: empty name")));
    }
    if name.contains('\0') {
        return Err(ConfigError(format!(
            "{what}: {name:?} contains a NUL character"
        )));
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(ConfigError(format!(
            "{what}: {name:?} is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte limit for names"
        )));
    }
    Ok(())
}

/// Splits `schema.table` into its two names (see [`MetastoreSinkConfig::table`]), with
/// `lily_pg`'s one rule for qualified names.
fn split_table_name(text: &str) -> Result<(String, String), ConfigError> {
    let q = lily_pg::QualifiedName::parse(text).map_err(|e| ConfigError(e.to_string()))?;
    Ok((q.schema, q.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(table: &str) -> MetastoreSinkConfig {
        MetastoreSinkConfig {
            table: table.into(),
            mode: Mode::Upsert,
            key_columns: None,
            update_columns: None,
            statement_timeout_ms: 30_000,
        }
    }

    #[test]
    fn table_names() {
        let parts = |t: &str| split_table_name(t);
        assert_eq!(
            parts("meta.classifications").unwrap(),
            ("meta".into(), "classifications".into())
        );
        assert_eq!(
            parts(r#"public."we""ird; table""#).unwrap(),
            ("public".into(), r#"we"ird; table"#.into())
        );
        assert_eq!(
            parts(r#""a.b"."c.d""#).unwrap(),
            ("a.b".into(), "c.d".into())
        );
        // Bare names are exact: no case folding.
        assert_eq!(parts("Meta.T").unwrap(), ("Meta".into(), "T".into()));
        for bad in [
            "",
            "classifications",
            "meta.",
            ".t",
            "a.b.c",
            r#"a."b"#,
            r#"a.b"c""#,
            r#""a"x.b"#,
            "a.\"\"",
            "a.b\0",
        ] {
            assert!(parts(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!("meta.{}", "x".repeat(64));
        assert!(parts(&long).unwrap_err().to_string().contains("63-byte"));
    }

    #[test]
    fn validate_lists() {
        assert!(cfg("meta.t").validate().is_ok());
        let mut c = cfg("meta.t");
        c.key_columns = Some(vec!["a".into(), "a".into()]);
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
        c.key_columns = Some(vec![]);
        assert!(c.validate().unwrap_err().to_string().contains("empty"));
        c.key_columns = Some(vec!["a".into()]);
        c.update_columns = Some(vec!["b".into(), "a".into()]);
        assert!(c.validate().unwrap_err().to_string().contains("both"));
        c.update_columns = Some(vec![]);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("mode = \"insert\""));
        c.update_columns = Some(vec!["b".into()]);
        assert!(c.validate().is_ok());
        c.mode = Mode::Delete;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("only applies"));
    }

    #[test]
    fn from_toml() {
        let v: toml::Value = toml::from_str(
            r#"
            table = "meta.incidents"
            mode = "insert"
            key_columns = ["tenant_id", "source", "external_id", "asset_guid"]
            "#,
        )
        .unwrap();
        let c: MetastoreSinkConfig = v.try_into().unwrap();
        assert_eq!(c.mode, Mode::Insert);
        assert_eq!(c.key_columns.as_ref().map(Vec::len), Some(4));
        assert!(c.validate().is_ok());

        let defaults: MetastoreSinkConfig = toml::from_str(r#"table = "meta.t""#).unwrap();
        assert_eq!(defaults, cfg("meta.t"));

        assert!(toml::from_str::<MetastoreSinkConfig>("table = \"a.b\"\ncolumns = []").is_err());
        assert!(
            toml::from_str::<MetastoreSinkConfig>("table = \"a.b\"\nmode = \"merge\"").is_err()
        );
        assert!(toml::from_str::<MetastoreSinkConfig>("mode = \"insert\"").is_err());
    }
}
