//! Tenant-scoped writes to the metastore. Each request is one transaction that runs as the
//! `lily_ingest` role with `lily.tenant` set to the authenticated tenant, so row-level security
//! confines it to that tenant's rows even if a handler got the tenant wrong. Every write is
//! set-based (arrays bound as parameters): names are data, never SQL text.

use deadpool_postgres::Transaction;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::model::{AssetIn, EdgeIn, TagIn, WriteResult};

/// The namespace of asset guids: guid = UUIDv5(namespace, tenant || ':' || qualified_name), as
/// `meta.asset_guid` computes it (tested against it).
const ASSET_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x52f8f556_8327_42c9_834a_d942b515e43f);

pub fn asset_guid(tenant: &str, qualified_name: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(
        &ASSET_NAMESPACE,
        format!("{tenant}:{qualified_name}").as_bytes(),
    )
}

/// Opens the request's transaction as the tenant, bounded: a statement that runs longer than
/// the statement timeout, or waits for a lock longer than the lock timeout, fails (503, a
/// retry may succeed) instead of holding the connection. One round trip after `BEGIN`:
/// `set_config('role', ..., true)` is `SET LOCAL ROLE`.
pub(crate) async fn begin<'a>(
    client: &'a mut deadpool_postgres::Object,
    tenant: &str,
    limits: &crate::config::Limits,
) -> Result<Transaction<'a>, ApiError> {
    let tx = client.transaction().await?;
    let ms = |d: std::time::Duration| format!("{}ms", d.as_millis().max(1));
    tx.execute(
        "SELECT set_config('role', 'lily_ingest', true), set_config('lily.tenant', $1, true), \
                set_config('statement_timeout', $2, true), set_config('lock_timeout', $3, true)",
        &[
            &tenant,
            &ms(limits.statement_timeout),
            &ms(limits.lock_timeout),
        ],
    )
    .await?;
    Ok(tx)
}

/// Records who wrote what, in the write's own transaction (so an audit row exists exactly when
/// the write does).
pub(crate) async fn audit(
    tx: &Transaction<'_>,
    tenant: &str,
    principal: &str,
    action: &str,
    request_id: &str,
    detail: Value,
) -> Result<(), ApiError> {
    tx.execute(
        "INSERT INTO lily.audit_log (tenant_id, principal, action, request_id, detail)
         VALUES ($1, $2, $3, $4, $5)",
        &[&tenant, &principal, &action, &request_id, &detail],
    )
    .await?;
    Ok(())
}

/// The qualified names (of `names`) with no asset in the tenant.
async fn missing(
    tx: &Transaction<'_>,
    tenant: &str,
    names: &[&str],
) -> Result<Vec<String>, ApiError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let guids: Vec<String> = names
        .iter()
        .map(|n| asset_guid(tenant, n).to_string())
        .collect();
    // One primary-key probe per name (LATERAL ... LIMIT 1 keeps it a parameterized nested loop,
    // so run-time pruning reads one partition instead of all 32).
    let rows = tx
        .query(
            "SELECT p.qn FROM unnest($1::text[], $2::text[]) AS p(qn, guid)
             LEFT JOIN LATERAL (
                 SELECT 1 AS found FROM meta.assets x WHERE x.guid = p.guid::uuid LIMIT 1
             ) f ON true
             WHERE f.found IS NULL",
            &[&names, &guids],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn listed(names: &[String]) -> String {
    let shown: Vec<String> = names.iter().take(5).map(|n| format!("{n:?}")).collect();
    let more = names.len().saturating_sub(5);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

pub(crate) async fn write_assets(
    tx: &Transaction<'_>,
    tenant: &str,
    upsert: &[AssetIn],
    delete: &[String],
) -> Result<WriteResult, ApiError> {
    let mut result = WriteResult::default();
    if !upsert.is_empty() {
        let mut guids = Vec::with_capacity(upsert.len());
        let mut parents: Vec<Option<String>> = Vec::with_capacity(upsert.len());
        let mut types = Vec::with_capacity(upsert.len());
        let mut names = Vec::with_capacity(upsert.len());
        let mut qns = Vec::with_capacity(upsert.len());
        let mut attrs: Vec<Value> = Vec::with_capacity(upsert.len());
        let mut statuses = Vec::with_capacity(upsert.len());
        for a in upsert {
            guids.push(asset_guid(tenant, &a.qualified_name).to_string());
            parents.push(
                a.parent_qualified_name
                    .as_ref()
                    .map(|p| asset_guid(tenant, p).to_string()),
            );
            types.push(a.type_name.as_str());
            names.push(a.name.as_str());
            qns.push(a.qualified_name.as_str());
            attrs.push(Value::Object(a.attributes.clone().unwrap_or_default()));
            statuses.push(a.status.as_deref().unwrap_or("ACTIVE"));
        }
        // An upsert that changes nothing writes nothing (no new row version, no change event).
        result.written = tx
            .execute(
                "INSERT INTO meta.assets AS a
                     (guid, parent_guid, tenant_id, type_name, name, qualified_name, attributes, status)
                 SELECT i.guid::uuid, i.parent::uuid, $1, i.type_name, i.name, i.qn, i.attributes, i.status
                 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::text[])
                      AS i(guid, parent, type_name, name, qn, attributes, status)
                 ON CONFLICT (guid) DO UPDATE SET
                     parent_guid = EXCLUDED.parent_guid, type_name = EXCLUDED.type_name,
                     name = EXCLUDED.name, attributes = EXCLUDED.attributes, status = EXCLUDED.status,
                     version = a.version + 1, updated_at = now()
                 WHERE (a.parent_guid, a.type_name, a.name, a.attributes, a.status)
                       IS DISTINCT FROM
                       (EXCLUDED.parent_guid, EXCLUDED.type_name, EXCLUDED.name, EXCLUDED.attributes, EXCLUDED.status)",
                &[&tenant, &guids, &parents, &types, &names, &qns, &attrs, &statuses],
            )
            .await?;
        // Parents must exist by the end of the transaction (in the metastore already, or in
        // this request). A reference to an asset that does not exist is refused, not held:
        // holding it would publish a child whose parent nobody may ever send.
        let wanted: Vec<&str> = upsert
            .iter()
            .filter_map(|a| a.parent_qualified_name.as_deref())
            .collect();
        let absent = missing(tx, tenant, &wanted).await?;
        if !absent.is_empty() {
            return Err(ApiError::unprocessable(format!(
                "parent asset does not exist: {} (send parents first or in the same request)",
                listed(&absent)
            )));
        }
    }
    if !delete.is_empty() {
        let guids: Vec<String> = delete
            .iter()
            .map(|q| asset_guid(tenant, q).to_string())
            .collect();
        let children = tx
            .query(
                "SELECT c.qualified_name FROM meta.assets c
                 WHERE c.parent_guid = ANY($1::text[]::uuid[]) AND NOT c.guid = ANY($1::text[]::uuid[])
                 LIMIT 6",
                &[&guids],
            )
            .await?;
        if !children.is_empty() {
            let names: Vec<String> = children.iter().map(|r| r.get(0)).collect();
            return Err(ApiError::conflict(format!(
                "cannot delete an asset that still has children: {} (delete them in the same request)",
                listed(&names)
            )));
        }
        tx.execute(
            "DELETE FROM meta.classifications WHERE asset_guid = ANY($1::text[]::uuid[])
                 OR origin_guid = ANY($1::text[]::uuid[])",
            &[&guids],
        )
        .await?;
        tx.execute(
            "DELETE FROM meta.lineage_edges WHERE upstream_guid = ANY($1::text[]::uuid[])
                 OR downstream_guid = ANY($1::text[]::uuid[]) OR process_guid = ANY($1::text[]::uuid[])",
            &[&guids],
        )
        .await?;
        result.deleted = tx
            .execute(
                "DELETE FROM meta.assets WHERE guid = ANY($1::text[]::uuid[])",
                &[&guids],
            )
            .await?;
    }
    Ok(result)
}

pub(crate) async fn write_lineage(
    tx: &Transaction<'_>,
    tenant: &str,
    upsert: &[EdgeIn],
    delete: &[EdgeIn],
) -> Result<WriteResult, ApiError> {
    let mut result = WriteResult::default();
    let cols = |edges: &[EdgeIn]| -> [Vec<String>; 3] {
        [
            edges
                .iter()
                .map(|e| asset_guid(tenant, &e.upstream).to_string())
                .collect(),
            edges
                .iter()
                .map(|e| asset_guid(tenant, &e.downstream).to_string())
                .collect(),
            edges
                .iter()
                .map(|e| asset_guid(tenant, &e.process).to_string())
                .collect(),
        ]
    };
    if !upsert.is_empty() {
        let mut names: Vec<&str> = upsert
            .iter()
            .flat_map(|e| {
                [
                    e.upstream.as_str(),
                    e.downstream.as_str(),
                    e.process.as_str(),
                ]
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        let absent = missing(tx, tenant, &names).await?;
        if !absent.is_empty() {
            return Err(ApiError::unprocessable(format!(
                "lineage names an asset that does not exist: {}",
                listed(&absent)
            )));
        }
        let [u, d, p] = cols(upsert);
        result.written = tx
            .execute(
                "INSERT INTO meta.lineage_edges (upstream_guid, downstream_guid, process_guid, tenant_id)
                 SELECT u::uuid, d::uuid, p::uuid, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS e(u, d, p)
                 ON CONFLICT DO NOTHING",
                &[&u, &d, &p, &tenant],
            )
            .await?;
    }
    if !delete.is_empty() {
        let [u, d, p] = cols(delete);
        result.deleted = tx
            .execute(
                "DELETE FROM meta.lineage_edges l
                 USING unnest($1::text[], $2::text[], $3::text[]) AS e(u, d, p)
                 WHERE l.upstream_guid = e.u::uuid AND l.downstream_guid = e.d::uuid
                   AND l.process_guid = e.p::uuid",
                &[&u, &d, &p],
            )
            .await?;
    }
    Ok(result)
}

pub(crate) async fn write_classifications(
    tx: &Transaction<'_>,
    tenant: &str,
    upsert: &[TagIn],
    delete: &[TagIn],
) -> Result<WriteResult, ApiError> {
    let mut result = WriteResult::default();
    if !upsert.is_empty() {
        let mut names: Vec<&str> = upsert.iter().map(|t| t.qualified_name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let absent = missing(tx, tenant, &names).await?;
        if !absent.is_empty() {
            return Err(ApiError::unprocessable(format!(
                "classification names an asset that does not exist: {}",
                listed(&absent)
            )));
        }
        let guids: Vec<String> = upsert
            .iter()
            .map(|t| asset_guid(tenant, &t.qualified_name).to_string())
            .collect();
        let tags: Vec<&str> = upsert.iter().map(|t| t.tag.as_str()).collect();
        let propagate: Vec<bool> = upsert.iter().map(|t| t.propagate).collect();
        result.written = tx
            .execute(
                "INSERT INTO meta.classifications AS c (asset_guid, origin_guid, tenant_id, tag, source, propagate)
                 SELECT g::uuid, g::uuid, $4, t, 'direct', p
                 FROM unnest($1::text[], $2::text[], $3::bool[]) AS i(g, t, p)
                 ON CONFLICT (asset_guid, tag, origin_guid) DO UPDATE SET propagate = EXCLUDED.propagate,
                     updated_at = now()
                 WHERE c.propagate IS DISTINCT FROM EXCLUDED.propagate",
                &[&guids, &tags, &propagate, &tenant],
            )
            .await?;
    }
    if !delete.is_empty() {
        let guids: Vec<String> = delete
            .iter()
            .map(|t| asset_guid(tenant, &t.qualified_name).to_string())
            .collect();
        let tags: Vec<&str> = delete.iter().map(|t| t.tag.as_str()).collect();
        result.deleted = tx
            .execute(
                "DELETE FROM meta.classifications c
                 USING unnest($1::text[], $2::text[]) AS d(g, t)
                 WHERE c.asset_guid = d.g::uuid AND c.origin_guid = d.g::uuid AND c.tag = d.t",
                &[&guids, &tags],
            )
            .await?;
    }
    Ok(result)
}

/// The audit detail of a write: counts, and the first few names.
pub(crate) fn detail(result: &WriteResult, names: &[&str]) -> Value {
    json!({
        "written": result.written,
        "deleted": result.deleted,
        "items": names.len(),
        "sample": names.iter().take(5).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_matches_the_documented_derivation() {
        // Python: uuid.uuid5(uuid.UUID('52f8f556-8327-42c9-834a-d942b515e43f'), 'demo:conn')
        let g = asset_guid("demo", "conn");
        assert_eq!(g.get_version_num(), 5);
        assert_ne!(g, asset_guid("other", "conn"));
    }
}
