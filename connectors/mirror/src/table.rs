//! What the mirror knows about one target table: its quoted name, the type to cast each source
//! column to, and which columns identify a row.

use std::collections::HashMap;
use std::sync::Arc;

use lily_batch::TableSchema;
use lily_pgoutput::ReplicaIdentity;

use crate::error::MirrorError;
use crate::sql::{quote_ident, quote_qualified};

/// One source column and how it lands in the target.
#[derive(Debug, Clone)]
pub(crate) struct ColumnPlan {
    /// Quoted target column name.
    pub ident: String,
    /// The target column's type without modifier, as `format_type` spells it (`numeric`,
    /// `text[]`, `public.mood`); values are cast to it and the column's modifier applies on
    /// assignment.
    pub cast: String,
    /// Compare as text when matching whole rows: the type has no equality operator (json, xml,
    /// geometric types, and arrays of them).
    pub compare_as_text: bool,
}

/// How rows are identified in the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// These source columns (positions) are a unique key in the target: upserts, deletes and
    /// updates by key.
    Key(Vec<usize>),
    /// No key: updates and deletes match one row equal in every column to the old image.
    WholeRow,
}

#[derive(Debug)]
pub(crate) struct TablePlan {
    /// The source shape this plan was built for.
    pub schema: Arc<TableSchema>,
    /// `schema.table`, unquoted, for messages.
    pub display: String,
    /// `"schema"."table"`.
    pub qualified: String,
    pub columns: Vec<ColumnPlan>,
    pub identity: Identity,
    pub by_name: HashMap<String, usize>,
}

const CATALOG_QUERY: &str = "\
SELECT a.attname::text, format_type(a.atttypid, -1), \
       COALESCE(a.attnum = ANY (pk.indkey::int2[]), false), \
       COALESCE(elem.typname, t.typname)::text \
FROM pg_catalog.pg_class c \
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
LEFT JOIN pg_catalog.pg_type elem ON elem.oid = t.typelem AND t.typcategory = 'A' \
LEFT JOIN pg_catalog.pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary \
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
ORDER BY a.attnum";

const NO_EQUALITY: [&str; 9] = [
    "json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle",
];

impl TablePlan {
    /// Looks the table up in the target's catalog and matches its columns to the source's.
    pub async fn load(
        client: &tokio_postgres::Client,
        schema: Arc<TableSchema>,
    ) -> Result<TablePlan, MirrorError> {
        let display = schema.qualified_name();
        let rows = client
            .query(CATALOG_QUERY, &[&schema.namespace, &schema.name])
            .await
            .map_err(|e| MirrorError::apply(&display, "reading the target table's columns", e))?;
        if rows.is_empty() {
            return Err(MirrorError::MissingTable { table: display });
        }
        struct TargetColumn {
            cast: String,
            primary: bool,
            base_type: String,
        }
        let target: HashMap<String, TargetColumn> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    TargetColumn {
                        cast: r.get(1),
                        primary: r.get(2),
                        base_type: r.get(3),
                    },
                )
            })
            .collect();
        let mut columns = Vec::with_capacity(schema.columns.len());
        let mut by_name = HashMap::with_capacity(schema.columns.len());
        for (i, c) in schema.columns.iter().enumerate() {
            let Some(t) = target.get(&c.name) else {
                return Err(MirrorError::MissingColumn {
                    table: display,
                    column: c.name.clone(),
                });
            };
            columns.push(ColumnPlan {
                ident: quote_ident(&c.name),
                cast: t.cast.clone(),
                compare_as_text: NO_EQUALITY.contains(&t.base_type.as_str()),
            });
            by_name.insert(c.name.clone(), i);
        }

        let source_key: Vec<usize> = schema.key_columns().map(|(i, _)| i).collect();
        let target_pk: Vec<&String> = target
            .iter()
            .filter(|(_, t)| t.primary)
            .map(|(n, _)| n)
            .collect();
        let target_key: Option<Vec<usize>> = (!target_pk.is_empty())
            .then(|| {
                target_pk
                    .iter()
                    .map(|n| by_name.get(*n).copied())
                    .collect::<Option<Vec<_>>>()
            })
            .flatten()
            .map(|mut v| {
                v.sort_unstable();
                v
            });
        // Under REPLICA IDENTITY FULL every column is flagged as key: use the target's primary
        // key if the source sends all of its columns, else match whole rows.
        let identity = match schema.replica_identity {
            ReplicaIdentity::Full => match target_key {
                Some(k) => Identity::Key(k),
                None => Identity::WholeRow,
            },
            _ if !source_key.is_empty() => Identity::Key(source_key),
            _ => match target_key {
                Some(k) => Identity::Key(k),
                None => Identity::WholeRow,
            },
        };
        Ok(TablePlan {
            qualified: quote_qualified(&schema.namespace, &schema.name),
            display,
            schema,
            columns,
            identity,
            by_name,
        })
    }

    /// Whether this plan was built for `schema` (same columns and identity).
    pub fn matches(&self, schema: &Arc<TableSchema>) -> bool {
        Arc::ptr_eq(&self.schema, schema)
            || (self.schema.columns == schema.columns
                && self.schema.replica_identity == schema.replica_identity)
    }
}
