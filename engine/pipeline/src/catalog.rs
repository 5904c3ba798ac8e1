//! Table schemas read from the PostgreSQL catalog, typed exactly as capture types the Relation
//! messages of the same tables, so a transform planned against them plans against the batches
//! it will receive.

use std::collections::HashMap;
use std::sync::Arc;

use lily_batch::TableSchema;
use lily_pgoutput::{Column, Relation, ReplicaIdentity, Type};
use tokio_postgres::Client;

/// Reads `schema.table`'s published columns. `Ok(None)` when there is no such table.
pub async fn table_schema(
    client: &Client,
    qualified: &str,
) -> Result<Option<Arc<TableSchema>>, String> {
    let (schema, table) = qualified
        .split_once('.')
        .ok_or_else(|| format!("{qualified:?} is not schema.table"))?;
    let rows = client
        .query(
            "SELECT c.oid, c.relreplident::text, a.attname::text, a.atttypid, a.atttypmod,
                    COALESCE(a.attnum = ANY (
                        CASE c.relreplident
                            WHEN 'f' THEN NULL
                            WHEN 'i' THEN (SELECT i.indkey::int2[] FROM pg_index i
                                           WHERE i.indrelid = c.oid AND i.indisreplident)
                            ELSE (SELECT i.indkey::int2[] FROM pg_index i
                                  WHERE i.indrelid = c.oid AND i.indisprimary)
                        END), c.relreplident = 'f') AS is_key,
                    t.typtype::text, tn.nspname::text, t.typname::text
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                                AND a.attgenerated = ''
             JOIN pg_type t ON t.oid = a.atttypid
             JOIN pg_namespace tn ON tn.oid = t.typnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
             ORDER BY a.attnum",
            &[&schema, &table],
        )
        .await
        .map_err(|e| format!("reading the columns of {qualified}: {e}"))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let oid: u32 = rows[0].get(0);
    let identity: String = rows[0].get(1);
    let mut custom_types = HashMap::new();
    let columns = rows
        .iter()
        .map(|r| {
            let type_oid: u32 = r.get(3);
            // Types outside pg_catalog arrive as Type messages in the stream; do the same here.
            let type_ns: String = r.get(6);
            if type_ns != "pg_catalog" {
                custom_types.insert(
                    type_oid,
                    Type {
                        id: type_oid,
                        namespace: type_ns,
                        name: r.get(7),
                    },
                );
            }
            Column {
                is_key: r.get(5),
                name: r.get(2),
                type_oid,
                type_modifier: r.get(4),
            }
        })
        .collect();
    let relation = Relation {
        id: oid,
        namespace: schema.to_string(),
        name: table.to_string(),
        replica_identity: match identity.as_str() {
            "f" => ReplicaIdentity::Full,
            "n" => ReplicaIdentity::Nothing,
            "i" => ReplicaIdentity::Index,
            _ => ReplicaIdentity::Default,
        },
        columns,
    };
    TableSchema::from_relation(&relation, &custom_types)
        .map(|s| Some(Arc::new(s)))
        .map_err(|e| e.to_string())
}
