//! Inbound webhooks. Each is bound to one tenant and authenticated by its own mechanism (Monte
//! Carlo's `x-mcd-signature`, Okta's shared-secret header), not by API keys. A payload becomes
//! an Arrow batch, goes through its pre-ingest SQL (`sql/ingest/*.sql`, the same transform stage
//! as the pipelines), and the rows are written in one transaction with the delivery's
//! de-duplication keys, so a repeated delivery changes nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_array::RecordBatch;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use lily_delivery::secret::{Secret, SecretSource};
use lily_transform::{SourceTable, Transform};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::store;

const MONTE_CARLO_SQL: &str = include_str!("../../../sql/ingest/monte_carlo_incidents.sql");
const OKTA_SQL: &str = include_str!("../../../sql/ingest/okta_directory.sql");

/// A Monte Carlo webhook of one tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonteCarloHookConfig {
    /// The tenant whose incidents this hook writes.
    pub tenant_id: String,
    /// Environment variable holding the signing secret set in Monte Carlo; give this or
    /// `secret_file`, or set `allow_unsigned`.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the signing secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Accept unsigned deliveries. Only for endpoints reachable from Monte Carlo's published
    /// addresses alone; anyone who can reach an unsigned endpoint can write incidents.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// Qualified name of the connection Monte Carlo's tables belong to; the asset is
    /// `<connection>/<database>/<schema>/<table>`. Without it, the asset whose qualified name
    /// ends in `/<database>/<schema>/<table>` is used when exactly one does.
    #[serde(default)]
    pub connection_qualified_name: Option<String>,
    /// Monte Carlo account id the deliveries must carry (others are refused).
    #[serde(default)]
    pub account_id: Option<String>,
}

struct MonteCarloHook {
    secret: Option<Secret>,
    connection: Option<String>,
    account_id: Option<String>,
}

/// Planned copies of one pre-ingest transform. A transform runs one batch at a time, so each
/// request takes a copy (planning another when all are busy) and gives it back: no lock is held
/// across the run.
struct TransformPool {
    sql: &'static str,
    schema: arrow_schema::SchemaRef,
    idle: Mutex<Vec<Transform>>,
}

impl TransformPool {
    async fn new(sql: &'static str, schema: arrow_schema::SchemaRef) -> Result<Self, String> {
        let pool = TransformPool {
            sql,
            schema,
            idle: Mutex::new(Vec::new()),
        };
        let first = pool.plan().await?;
        pool.idle.lock().expect("transform pool").push(first);
        Ok(pool)
    }

    async fn plan(&self) -> Result<Transform, String> {
        Transform::plan(
            self.sql,
            &[SourceTable {
                name: "events".into(),
                schema: self.schema.clone(),
                filter: None,
            }],
            &[],
        )
        .await
        .map_err(|e| e.to_string())
    }

    async fn run(&self, batch: RecordBatch) -> Result<Vec<Map<String, Value>>, ApiError> {
        let taken = self.idle.lock().expect("transform pool").pop();
        let mut t = match taken {
            Some(t) => t,
            None => self.plan().await.map_err(ApiError::internal)?,
        };
        let out = t.run("events", batch).await;
        self.idle.lock().expect("transform pool").push(t);
        let out = out.map_err(|e| ApiError::internal(format!("pre-ingest transform: {e}")))?;
        let mut rows = Vec::new();
        for b in &out {
            rows.extend(objects(b)?);
        }
        Ok(rows)
    }
}

fn objects(batch: &RecordBatch) -> Result<Vec<Map<String, Value>>, ApiError> {
    let mut buf = Vec::new();
    {
        let mut w = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow_json::writer::JsonArray>(&mut buf);
        w.write(batch)
            .and_then(|_| w.finish())
            .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&buf).map_err(|e| ApiError::internal(e.to_string()))
}

/// The configured webhooks.
pub struct Hooks {
    monte_carlo: HashMap<String, MonteCarloHook>,
    okta: HashMap<String, lily_okta::OktaHook>,
    monte_carlo_sql: TransformPool,
    okta_sql: TransformPool,
}

impl Hooks {
    /// Reads the secrets and plans the pre-ingest transforms.
    pub async fn build(
        monte_carlo: &[MonteCarloHookConfig],
        okta: &[lily_okta::OktaHookConfig],
    ) -> Result<Hooks, String> {
        let mut mc = HashMap::new();
        for c in monte_carlo {
            let source = SecretSource::from_pair(
                "secret",
                c.secret_env.as_deref(),
                c.secret_file.as_deref(),
            )
            .map_err(|e| format!("monte_carlo hook of {}: {e}", c.tenant_id))?;
            let secret = match (source, c.allow_unsigned) {
                (Some(s), _) => Some(
                    s.resolve()
                        .map_err(|e| format!("monte_carlo hook of {}: {e}", c.tenant_id))?,
                ),
                (None, true) => None,
                (None, false) => {
                    return Err(format!(
                        "monte_carlo hook of {}: give secret_env or secret_file, or allow_unsigned = true",
                        c.tenant_id
                    ))
                }
            };
            let hook = MonteCarloHook {
                secret,
                connection: c.connection_qualified_name.clone(),
                account_id: c.account_id.clone(),
            };
            if mc.insert(c.tenant_id.clone(), hook).is_some() {
                return Err(format!("two monte_carlo hooks for tenant {}", c.tenant_id));
            }
        }
        let mut ok = HashMap::new();
        for c in okta {
            let hook = c.build().map_err(|e| e.to_string())?;
            if ok.insert(c.tenant_id.clone(), hook).is_some() {
                return Err(format!("two okta hooks for tenant {}", c.tenant_id));
            }
        }
        Ok(Hooks {
            monte_carlo: mc,
            okta: ok,
            monte_carlo_sql: TransformPool::new(MONTE_CARLO_SQL, lily_montecarlo::events_schema())
                .await?,
            okta_sql: TransformPool::new(OKTA_SQL, lily_okta::events_schema()).await?,
        })
    }
}

fn not_configured() -> ApiError {
    ApiError::Client {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such webhook".into(),
    }
}

/// Marks `keys` as applied; returns the ones that were new.
async fn first_seen(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    source: &str,
    keys: &[String],
) -> Result<std::collections::HashSet<String>, ApiError> {
    let rows = tx
        .query(
            "INSERT INTO lily.inbound_events (tenant_id, source, event_id)
             SELECT $1, $2, k FROM unnest($3::text[]) AS k
             ON CONFLICT DO NOTHING RETURNING event_id",
            &[&tenant, &source, &keys],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn text<'a>(row: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    row.get(k).and_then(Value::as_str)
}

pub(crate) async fn monte_carlo(
    State(s): State<Arc<crate::api::Ingest>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let hook = s
        .hooks
        .monte_carlo
        .get(&tenant)
        .ok_or_else(not_configured)?;
    let signature = headers.get("x-mcd-signature").and_then(|v| v.to_str().ok());
    // Monte Carlo's own sample answers a bad signature with 403.
    lily_montecarlo::authenticate(
        hook.secret.as_ref().map(|s| s.expose().as_bytes()),
        &body,
        signature,
    )
    .map_err(|e| {
        tracing::info!(tenant, reason = %e, "Monte Carlo delivery refused");
        ApiError::Client {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: "forbidden".into(),
        }
    })?;
    let batch = lily_montecarlo::events_batch(&body).map_err(|e| ApiError::Client {
        status: StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
        code: "bad_payload",
        message: e.to_string(),
    })?;
    let rows = s.hooks.monte_carlo_sql.run(batch).await?;
    if let Some(want) = &hook.account_id {
        if rows
            .iter()
            .any(|r| text(r, "account_id") != Some(want.as_str()))
        {
            return Err(ApiError::Client {
                status: StatusCode::FORBIDDEN,
                code: "forbidden",
                message: "forbidden".into(),
            });
        }
    }
    let mut client = s.pool.get().await?;
    let tx = store::begin(&mut client, &tenant).await?;
    let keys: Vec<String> = rows
        .iter()
        .filter_map(|r| text(r, "event_key").map(str::to_string))
        .collect();
    let new = first_seen(&tx, &tenant, "monte_carlo", &keys).await?;
    let (mut written, mut unattached) = (0u64, 0u64);
    for r in rows
        .iter()
        .filter(|r| text(r, "event_key").is_some_and(|k| new.contains(k)))
    {
        let asset = match text(r, "table_path") {
            Some(path) => resolve_table(&tx, &tenant, hook.connection.as_deref(), path).await?,
            None => None,
        };
        if asset.is_none() {
            unattached += 1;
        }
        let payload: Value = text(r, "payload")
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or(Value::Null);
        written += tx
            .execute(
                "INSERT INTO meta.incidents AS i
                     (tenant_id, source, external_id, asset_guid, incident_type, severity, status, payload)
                 VALUES ($1, 'monte_carlo', $2, $3::text::uuid, $4, $5, $6, $7)
                 ON CONFLICT (tenant_id, source, external_id, asset_guid) DO UPDATE SET
                     incident_type = EXCLUDED.incident_type, severity = EXCLUDED.severity,
                     status = EXCLUDED.status, payload = EXCLUDED.payload, updated_at = now()
                 WHERE (i.incident_type, i.severity, i.status, i.payload)
                       IS DISTINCT FROM (EXCLUDED.incident_type, EXCLUDED.severity, EXCLUDED.status, EXCLUDED.payload)",
                &[
                    &tenant,
                    &text(r, "external_id").unwrap_or_default(),
                    &asset,
                    &text(r, "incident_type").unwrap_or("unknown"),
                    &text(r, "severity").unwrap_or("unknown"),
                    &text(r, "status").unwrap_or("open"),
                    &payload,
                ],
            )
            .await?;
    }
    let detail = json!({"events": rows.len(), "new": new.len(), "written": written, "unattached": unattached});
    store::audit(
        &tx,
        &tenant,
        "webhook:monte_carlo",
        "incidents.ingest",
        "",
        detail.clone(),
    )
    .await?;
    tx.commit().await?;
    metrics::histogram!("lily_ingest_seconds", "action" => "incidents.ingest")
        .record(started.elapsed().as_secs_f64());
    Ok(Json(detail))
}

/// The guid of the table a Monte Carlo `database/schema/table` path names, if it exists.
async fn resolve_table(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    connection: Option<&str>,
    path: &str,
) -> Result<Option<String>, ApiError> {
    match connection {
        Some(c) => {
            let guid = store::asset_guid(tenant, &format!("{c}/{path}")).to_string();
            let found = tx
                .query_opt(
                    "SELECT 1 FROM meta.assets WHERE guid = $1::text::uuid",
                    &[&guid],
                )
                .await?;
            Ok(found.map(|_| guid))
        }
        None => {
            // Without a configured connection: the one table whose name ends in the path.
            let rows = tx
                .query(
                    "SELECT guid::text FROM meta.assets
                     WHERE tenant_id = $1 AND type_name IN ('Table', 'View', 'MaterializedView')
                       AND lower(qualified_name) LIKE '%/' || $2
                     LIMIT 2",
                    &[&tenant, &path],
                )
                .await?;
            Ok((rows.len() == 1).then(|| rows[0].get(0)))
        }
    }
}

pub(crate) async fn okta_challenge(
    State(s): State<Arc<crate::api::Ingest>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    s.hooks.okta.get(&tenant).ok_or_else(not_configured)?;
    let value = headers
        .get("x-okta-verification-challenge")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    lily_okta::challenge(value)
        .map(Json)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

pub(crate) async fn okta_events(
    State(s): State<Arc<crate::api::Ingest>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let started = Instant::now();
    let hook = s.hooks.okta.get(&tenant).ok_or_else(not_configured)?;
    hook.check(
        headers
            .get(hook.header.as_str())
            .and_then(|v| v.to_str().ok()),
    )
    .map_err(|e| {
        tracing::info!(tenant, reason = %e, "Okta delivery refused");
        ApiError::Client {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: "invalid credentials".into(),
        }
    })?;
    let batch = lily_okta::events_batch(&body).map_err(|e| ApiError::Client {
        status: StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
        code: "bad_payload",
        message: e.to_string(),
    })?;
    let rows = s.hooks.okta_sql.run(batch).await?;
    let mut client = s.pool.get().await?;
    let tx = store::begin(&mut client, &tenant).await?;
    let mut keys: Vec<String> = rows
        .iter()
        .filter_map(|r| text(r, "event_uuid").map(str::to_string))
        .collect();
    keys.sort();
    keys.dedup();
    let new = first_seen(&tx, &tenant, "okta", &keys).await?;
    let mut applied = 0u64;
    for r in rows
        .iter()
        .filter(|r| text(r, "event_uuid").is_some_and(|k| new.contains(k)))
    {
        let published = text(r, "published").unwrap_or_default();
        applied += match text(r, "change") {
            Some("principal") => {
                tx.execute(
                    "INSERT INTO meta.principals AS p
                         (tenant_id, kind, external_id, login, display_name, status, last_event_at)
                     VALUES ($1, $2, $3, $4, $5, COALESCE($6, 'ACTIVE'), $7::text::timestamptz)
                     ON CONFLICT (tenant_id, kind, external_id) DO UPDATE SET
                         login = COALESCE(EXCLUDED.login, p.login),
                         display_name = COALESCE(EXCLUDED.display_name, p.display_name),
                         status = COALESCE($6, p.status),
                         last_event_at = EXCLUDED.last_event_at, updated_at = now()
                     WHERE p.last_event_at < EXCLUDED.last_event_at",
                    &[
                        &tenant,
                        &text(r, "kind"),
                        &text(r, "external_id"),
                        &text(r, "login").unwrap_or_default(),
                        &text(r, "display_name"),
                        &text(r, "status"),
                        &published,
                    ],
                )
                .await?
            }
            Some("membership") => {
                tx.execute(
                    "INSERT INTO meta.group_members AS m (tenant_id, group_id, user_id, member, last_event_at)
                     VALUES ($1, $2, $3, $4, $5::text::timestamptz)
                     ON CONFLICT (tenant_id, group_id, user_id) DO UPDATE SET
                         member = EXCLUDED.member, last_event_at = EXCLUDED.last_event_at
                     WHERE m.last_event_at < EXCLUDED.last_event_at",
                    &[
                        &tenant,
                        &text(r, "group_id"),
                        &text(r, "user_id"),
                        &r.get("member").and_then(Value::as_bool).unwrap_or(false),
                        &published,
                    ],
                )
                .await?
            }
            _ => 0,
        };
    }
    store::audit(
        &tx,
        &tenant,
        "webhook:okta",
        "directory.ingest",
        "",
        json!({"rows": rows.len(), "new_events": new.len(), "applied": applied}),
    )
    .await?;
    tx.commit().await?;
    metrics::histogram!("lily_ingest_seconds", "action" => "directory.ingest")
        .record(started.elapsed().as_secs_f64());
    // Okta wants an empty 200/204 within 3 s.
    Ok(StatusCode::NO_CONTENT)
}
