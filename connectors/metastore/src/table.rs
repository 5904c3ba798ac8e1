//! The target table as the catalog describes it, checked against the configuration once, when
//! the sink is built.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::config::{MetastoreSinkConfig, Mode};
use crate::error::BuildError;
use crate::sql::{quote_ident, quote_qualified};

/// One column of the target table.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub name: String,
    /// Quoted name.
    pub ident: String,
    /// The type without modifier, as `format_type` spells it (quoted and schema-qualified as
    /// needed). Values are read as this type and the column's modifier (`varchar(10)`) applies
    /// on assignment, which refuses an overlong value instead of truncating it.
    pub type_sql: String,
    pub not_null: bool,
    /// A default, an identity or a generated column: an insert may leave it out.
    pub has_default: bool,
    /// `GENERATED ALWAYS AS (...) STORED`: it cannot be written at all.
    pub generated: bool,
    /// The type has no equality operator (json, xml, geometric types...), so "has the row
    /// changed" compares its text form.
    pub compare_as_text: bool,
}

/// A unique key the conflict target of `ON CONFLICT` can name.
#[derive(Debug, Clone)]
struct UniqueKey {
    name: String,
    primary: bool,
    nulls_not_distinct: bool,
    columns: Vec<String>,
}

/// Everything a write needs to know about the table, resolved from the configuration.
#[derive(Debug)]
pub(crate) struct Target {
    /// The table as configured, for messages.
    pub display: String,
    /// `"schema"."table"`.
    pub qualified: String,
    pub mode: Mode,
    pub columns: Vec<Column>,
    pub by_name: HashMap<String, usize>,
    /// Positions of the key columns, in key order.
    pub key: Vec<usize>,
    /// Name of the constraint or index the key columns are.
    pub key_name: String,
    /// `NULLS NOT DISTINCT`: rows whose key holds NULLs still collide.
    pub nulls_not_distinct: bool,
    /// Positions of the configured `update_columns`, if any.
    pub update_columns: Option<Vec<usize>>,
}

const RELATION_QUERY: &str = "\
SELECT c.oid, c.relkind::text, \
       has_any_column_privilege(c.oid, 'INSERT'), has_any_column_privilege(c.oid, 'UPDATE'), \
       has_any_column_privilege(c.oid, 'SELECT'), has_table_privilege(c.oid, 'DELETE') \
FROM pg_catalog.pg_class c \
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
WHERE n.nspname = $1 AND c.relname = $2";

const COLUMNS_QUERY: &str = "\
SELECT a.attname::text, pg_catalog.format_type(a.atttypid, -1), a.attnotnull, \
       a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', a.attgenerated <> '' \
FROM pg_catalog.pg_attribute a \
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
ORDER BY a.attnum";

// Unique indexes ON CONFLICT can use as arbiter: no predicate, no expressions, not deferrable,
// valid. The columns are the key columns only (INCLUDE columns are not part of the key). A
// foreign key also points at its referenced index through conindid, hence the contype filter.
const KEYS_QUERY: &str = "\
SELECT COALESCE(con.conname, ic.relname)::text, i.indisprimary, i.indnullsnotdistinct, \
       ARRAY(SELECT a.attname::text \
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE k.ord <= i.indnkeyatts \
             ORDER BY k.ord) \
FROM pg_catalog.pg_index i \
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
LEFT JOIN pg_catalog.pg_constraint con \
       ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u') \
WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indimmediate \
  AND i.indpred IS NULL AND i.indexprs IS NULL \
ORDER BY i.indisprimary DESC, 1";

impl Target {
    /// Reads the table's definition and checks the configuration against it.
    pub async fn load(client: &Client, cfg: &MetastoreSinkConfig) -> Result<Target, BuildError> {
        let (schema, name) = cfg.table_parts()?;
        let display = cfg.table.clone();
        let catalog = |e| BuildError::catalog(&display, e);

        let rel = client
            .query_opt(RELATION_QUERY, &[&schema, &name])
            .await
            .map_err(catalog)?
            .ok_or_else(|| BuildError::UnknownTable {
                table: display.clone(),
                schema: schema.clone(),
                name: name.clone(),
            })?;
        let oid: u32 = rel.try_get(0).map_err(catalog)?;
        let relkind: String = rel.try_get(1).map_err(catalog)?;
        if let Some(kind) = not_a_table(&relkind) {
            return Err(BuildError::NotATable {
                table: display,
                kind,
            });
        }
        let privileges = [
            ("INSERT", rel.try_get::<_, bool>(2).map_err(catalog)?),
            ("UPDATE", rel.try_get::<_, bool>(3).map_err(catalog)?),
            ("SELECT", rel.try_get::<_, bool>(4).map_err(catalog)?),
            ("DELETE", rel.try_get::<_, bool>(5).map_err(catalog)?),
        ];
        // SELECT: ON CONFLICT ... WHERE and DELETE ... WHERE read the existing rows' columns.
        let needed: &[&str] = match cfg.mode {
            Mode::Upsert => &["INSERT", "UPDATE", "SELECT"],
            Mode::Insert => &["INSERT"],
            Mode::Delete => &["DELETE", "SELECT"],
        };
        if let Some((privilege, _)) = privileges
            .iter()
            .find(|(p, granted)| !granted && needed.contains(p))
        {
            return Err(BuildError::MissingPrivilege {
                table: display,
                privilege,
                mode: cfg.mode.as_str(),
            });
        }

        let mut columns = Vec::new();
        for row in client
            .query(COLUMNS_QUERY, &[&oid])
            .await
            .map_err(catalog)?
        {
            let name: String = row.try_get(0).map_err(catalog)?;
            columns.push(Column {
                ident: quote_ident(&name),
                name,
                type_sql: row.try_get(1).map_err(catalog)?,
                not_null: row.try_get(2).map_err(catalog)?,
                has_default: row.try_get(3).map_err(catalog)?,
                generated: row.try_get(4).map_err(catalog)?,
                compare_as_text: false,
            });
        }
        let by_name: HashMap<String, usize> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();

        let mut keys = Vec::new();
        for row in client.query(KEYS_QUERY, &[&oid]).await.map_err(catalog)? {
            keys.push(UniqueKey {
                name: row.try_get(0).map_err(catalog)?,
                primary: row.try_get(1).map_err(catalog)?,
                nulls_not_distinct: row.try_get(2).map_err(catalog)?,
                columns: row.try_get(3).map_err(catalog)?,
            });
        }

        let key = choose_key(&display, cfg, &keys)?;
        let key_positions = resolve(&display, &by_name, &key.columns, "key_columns")?;
        if cfg.mode != Mode::Delete {
            if let Some(&g) = key_positions.iter().find(|&&k| columns[k].generated) {
                return Err(BuildError::UnusableColumn {
                    table: display,
                    column: columns[g].name.clone(),
                    setting: "key_columns",
                    reason: "is a generated column, so rows cannot carry its value",
                });
            }
        }
        let update_columns = match &cfg.update_columns {
            None => None,
            Some(names) => {
                let positions = resolve(&display, &by_name, names, "update_columns")?;
                for &p in &positions {
                    let reason = if columns[p].generated {
                        Some("is a generated column and cannot be written")
                    } else if key_positions.contains(&p) {
                        Some("is part of the key; a key column is never overwritten")
                    } else {
                        None
                    };
                    if let Some(reason) = reason {
                        return Err(BuildError::UnusableColumn {
                            table: display,
                            column: columns[p].name.clone(),
                            setting: "update_columns",
                            reason,
                        });
                    }
                }
                Some(positions)
            }
        };

        let qualified = quote_qualified(&schema, &name);
        mark_text_comparisons(client, &display, &qualified, &mut columns).await?;
        Ok(Target {
            display,
            qualified,
            mode: cfg.mode,
            columns,
            by_name,
            key: key_positions,
            key_name: key.name.clone(),
            nulls_not_distinct: key.nulls_not_distinct,
            update_columns,
        })
    }

    /// Problems writing rows with exactly these columns would run into (see
    /// [`MetastoreSink::check_columns`](crate::MetastoreSink::check_columns)).
    pub fn column_problems(&self, output: &[String]) -> Vec<String> {
        let mut problems = Vec::new();
        let table = &self.display;
        for name in output {
            match self.by_name.get(name) {
                None => problems.push(format!(
                    "output column {name:?} is not a column of table {table}"
                )),
                Some(&i) if self.columns[i].generated && self.mode != Mode::Delete => problems.push(format!(
                    "output column {name:?} is a generated column of table {table} and cannot be written"
                )),
                Some(_) => {}
            }
        }
        let has = |c: &Column| output.contains(&c.name);
        for &k in &self.key {
            if !has(&self.columns[k]) {
                problems.push(format!(
                    "the output lacks key column {:?} ({} of table {table}), which every row must carry",
                    self.columns[k].name, self.key_name
                ));
            }
        }
        if self.mode != Mode::Delete {
            for (i, c) in self.columns.iter().enumerate() {
                // Missing key columns are reported above already.
                if c.not_null && !c.has_default && !has(c) && !self.key.contains(&i) {
                    problems.push(format!(
                        "the output lacks column {:?} of table {table}, which is NOT NULL without a default",
                        c.name
                    ));
                }
            }
        }
        for &u in self.update_columns.iter().flatten() {
            if !has(&self.columns[u]) {
                problems.push(format!(
                    "update column {:?} is not among the output columns, so it is never updated",
                    self.columns[u].name
                ));
            }
        }
        problems
    }
}

fn not_a_table(relkind: &str) -> Option<&'static str> {
    match relkind {
        "r" | "p" => None,
        "v" => Some("view"),
        "m" => Some("materialized view"),
        "f" => Some("foreign table"),
        "S" => Some("sequence"),
        "i" | "I" => Some("index"),
        "c" => Some("composite type"),
        "t" => Some("TOAST table"),
        _ => Some("relation of another kind"),
    }
}

/// The configured key columns as a unique key of the table, or the primary key.
fn choose_key<'k>(
    table: &str,
    cfg: &MetastoreSinkConfig,
    keys: &'k [UniqueKey],
) -> Result<&'k UniqueKey, BuildError> {
    let candidates = || {
        if keys.is_empty() {
            return "none".to_string();
        }
        keys.iter()
            .map(|k| format!("{} {:?}", k.name, k.columns))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match &cfg.key_columns {
        None => keys
            .iter()
            .find(|k| k.primary)
            .ok_or_else(|| BuildError::NoPrimaryKey {
                table: table.to_string(),
                candidates: candidates(),
            }),
        Some(wanted) => {
            let mut wanted_sorted: Vec<&String> = wanted.iter().collect();
            wanted_sorted.sort();
            // The primary key sorts first, so it wins over a unique index on the same columns.
            keys.iter()
                .find(|k| {
                    let mut have: Vec<&String> = k.columns.iter().collect();
                    have.sort();
                    have == wanted_sorted
                })
                .ok_or_else(|| BuildError::NotAKey {
                    table: table.to_string(),
                    columns: wanted.clone(),
                    candidates: candidates(),
                })
        }
    }
}

fn resolve(
    table: &str,
    by_name: &HashMap<String, usize>,
    names: &[String],
    setting: &'static str,
) -> Result<Vec<usize>, BuildError> {
    names
        .iter()
        .map(|n| {
            by_name
                .get(n)
                .copied()
                .ok_or_else(|| BuildError::UnknownColumn {
                    table: table.to_string(),
                    column: n.clone(),
                    setting,
                })
        })
        .collect()
}

/// Finds the columns whose type has no `=` operator by asking the server to plan a comparison:
/// first all columns at once (the usual outcome: every type has one), then one by one. A
/// catalog-only test would have to follow domains, arrays, enums, ranges and composites the way
/// the parser does; planning is exact and costs one round trip per table.
async fn mark_text_comparisons(
    client: &Client,
    display: &str,
    qualified: &str,
    columns: &mut [Column],
) -> Result<(), BuildError> {
    let probe = |cols: &[&Column]| {
        let list = cols
            .iter()
            .map(|c| format!("t.{}", c.ident))
            .collect::<Vec<_>>()
            .join(", ");
        format!("SELECT ({list}) IS NOT DISTINCT FROM ({list}) FROM {qualified} AS t WHERE false")
    };
    let no_operator = |e: &tokio_postgres::Error| {
        e.code().map(|c| c.code()) == Some("42883") // undefined_function
    };
    let writable: Vec<&Column> = columns.iter().filter(|c| !c.generated).collect();
    if writable.is_empty() {
        return Ok(());
    }
    match client.prepare(&probe(&writable)).await {
        Ok(_) => return Ok(()),
        Err(e) if no_operator(&e) => {}
        Err(e) => return Err(BuildError::catalog(display, e)),
    }
    for c in columns.iter_mut() {
        match client.prepare(&probe(&[c])).await {
            Ok(_) => {}
            Err(e) if no_operator(&e) => c.compare_as_text = true,
            Err(e) => return Err(BuildError::catalog(display, e)),
        }
    }
    Ok(())
}
