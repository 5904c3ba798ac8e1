//! Inbound webhooks: the server's half of every [`InboundHook`]. A sender's connector says how
//! a request is authenticated, how its body becomes the `events` batch, which SQL maps that
//! batch and which column identifies a row; this module does the rest the same way for every
//! sender: the tenant's hook (each is bound to one tenant and authenticated by its own
//! mechanism, not by API keys), the pre-ingest SQL (planned once, run per delivery, the same
//! transform stage as the pipelines), and one transaction that records the rows' keys in
//! `lily.inbound_events`, writes the new ones and audits the delivery, so a repeated delivery
//! changes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_array::RecordBatch;
use axum::body::Bytes;
use axum::extract::FromRequest;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use lily_inbound::{
    Ack, Admission, HookError, HookKind, InboundHook, Method, Request, Route, TenantHook, Writes,
};
use lily_transform::{SourceTable, Transform};
use serde_json::{json, Map, Value};

use crate::api::Ingest;
use crate::error::ApiError;
use crate::store;

/// Why the hooks could not be set up. All are configuration mistakes: fix and restart.
#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    #[error("two {hook} hooks for tenant {tenant}")]
    DuplicateTenant { hook: &'static str, tenant: String },
    /// Two senders under one name would share their de-duplication keys.
    #[error("two kinds of hook are named {0}")]
    DuplicateSource(&'static str),
    #[error("the {hook} hook's route /webhooks/{path}: {problem}")]
    BadRoute {
        hook: &'static str,
        path: &'static str,
        problem: &'static str,
    },
    #[error("the {hook} hook's pre-ingest SQL: {message}")]
    Sql { hook: &'static str, message: String },
}

/// The registered kinds of hook, each with the hooks its tenants configured. The engine
/// registers every inbound connector of its registry, configured or not.
#[derive(Default)]
pub struct Hooks {
    registered: Vec<Arc<Sender>>,
}

impl Hooks {
    /// Adds a kind of hook with its tenants' hooks (none is fine: its routes are served all the
    /// same, answering every tenant as a caller without credentials, so the API's shape does not depend on
    /// configuration). Plans its SQL once, now, so a broken query fails at start-up.
    pub async fn register(&mut self, kind: HookKind) -> Result<(), HooksError> {
        let source = kind.source;
        if self.registered.iter().any(|r| r.kind.source == source) {
            return Err(HooksError::DuplicateSource(source));
        }
        for (i, route) in kind.routes.iter().enumerate() {
            let problem = if !is_segment(route.path) {
                Some("not one path segment of lower-case letters, digits and `-`")
            } else if kind.routes[..i].contains(route) {
                Some("listed twice")
            } else if self
                .registered
                .iter()
                .any(|r| r.kind.routes.iter().any(|other| other.path == route.path))
            {
                Some("another hook's")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(HooksError::BadRoute {
                    hook: source,
                    path: route.path,
                    problem,
                });
            }
        }
        let mut tenants = HashMap::new();
        for (i, hook) in kind.hooks.iter().enumerate() {
            if tenants.insert(hook.tenant().to_string(), i).is_some() {
                return Err(HooksError::DuplicateTenant {
                    hook: source,
                    tenant: hook.tenant().to_string(),
                });
            }
        }
        let sql = TransformPool::new(kind.sql, kind.events_schema.clone())
            .await
            .map_err(|message| HooksError::Sql {
                hook: source,
                message,
            })?;
        self.registered
            .push(Arc::new(Sender { kind, tenants, sql }));
        Ok(())
    }

    /// [`Hooks::register`] for sender `H` with these tenants' hooks.
    pub async fn register_hooks<H: InboundHook>(
        &mut self,
        hooks: Vec<H>,
    ) -> Result<(), HooksError> {
        self.register(HookKind::of(hooks)).await
    }

    /// Every route of every registered hook, with the hook that serves it.
    pub(crate) fn routes(&self) -> impl Iterator<Item = (Arc<Sender>, Route)> + '_ {
        self.registered
            .iter()
            .flat_map(|r| r.kind.routes.iter().map(move |route| (r.clone(), *route)))
    }
}

fn is_segment(path: &str) -> bool {
    !path.is_empty()
        && path
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// One kind of hook: its tenants' hooks and its planned SQL.
pub(crate) struct Sender {
    kind: HookKind,
    /// Index in `kind.hooks` by tenant: looked up on every delivery.
    tenants: HashMap<String, usize>,
    sql: TransformPool,
}

impl Sender {
    fn hook(&self, tenant: &str) -> Option<&dyn TenantHook> {
        self.tenants
            .get(tenant)
            .map(|&i| self.kind.hooks[i].as_ref())
    }

    /// One request to one of the kind's routes, for `tenant`.
    pub(crate) async fn deliver(
        &self,
        s: &Ingest,
        tenant: String,
        method: Method,
        mut http: axum::extract::Request,
    ) -> Result<Response, ApiError> {
        let started = Instant::now();
        let source = self.kind.source;
        let key = self.kind.idempotency_key;
        // The body extractor needs only the body and its limit, not the headers.
        let headers = std::mem::take(http.headers_mut());
        // The body is read (within the size limit) whether or not the tenant has the hook, so
        // that neither the answer nor its status tells which tenants configured it.
        let body = Bytes::from_request(http, &())
            .await
            .map_err(|e| ApiError::Client {
                status: e.status(),
                code: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    "too_large"
                } else {
                    "bad_request"
                },
                message: e.body_text(),
            })?;
        let request = Request {
            method,
            headers: &HeaderView(&headers),
            body: &body,
        };
        let Some(hook) = self.hook(&tenant) else {
            // Answered as a configured tenant answers a caller without the credential.
            return match (self.kind.admit_unknown_tenant)(&request) {
                Ok(Admission::Answer(answer)) => Ok(Json(answer).into_response()),
                Ok(Admission::Ingest) => Err(refused(
                    source,
                    &tenant,
                    HookError::Unauthenticated("no hook for this tenant".into()),
                )),
                Err(e) => Err(refused(source, &tenant, e)),
            };
        };
        let admission = hook.admit(&request);
        match admission.map_err(|e| refused(source, &tenant, e))? {
            Admission::Answer(answer) => return Ok(Json(answer).into_response()),
            Admission::Ingest => {}
        }
        let batch = hook
            .events(&body)
            .map_err(|e| refused(source, &tenant, e))?;
        let rows = self.sql.run(batch).await?;
        check_ids(&rows, key)?;
        let mut client = s.pool.get().await?;
        let tx = store::begin(&mut client, &tenant, &s.limits).await?;
        // Sorted, so concurrent deliveries of overlapping keys take their locks in one order.
        let mut keys: Vec<String> = rows
            .iter()
            .filter_map(|r| text(r, key).map(str::to_string))
            .collect();
        keys.sort();
        keys.dedup();
        let new = first_seen(&tx, &tenant, source, &keys).await?;
        let fresh: Vec<&Map<String, Value>> = rows
            .iter()
            .filter(|r| text(r, key).is_some_and(|k| new.contains(k)))
            .collect();
        let (action, detail) = match hook.writes() {
            Writes::Incidents { connection } => {
                let (written, unattached) =
                    write_incidents(&tx, &tenant, source, connection, &fresh).await?;
                let detail = json!({
                    "events": rows.len(),
                    "new": new.len(),
                    "written": written,
                    "unattached": unattached,
                });
                ("incidents.ingest", detail)
            }
            Writes::Directory => {
                let applied = write_directory(&tx, &tenant, &fresh).await?;
                let detail =
                    json!({"rows": rows.len(), "new_events": new.len(), "applied": applied});
                ("directory.ingest", detail)
            }
        };
        store::audit(
            &tx,
            &tenant,
            &format!("webhook:{source}"),
            action,
            "",
            detail.clone(),
        )
        .await?;
        tx.commit().await?;
        metrics::histogram!("lily_ingest_seconds", "action" => action)
            .record(started.elapsed().as_secs_f64());
        Ok(match self.kind.ack {
            Ack::Summary => Json(detail).into_response(),
            Ack::NoContent => StatusCode::NO_CONTENT.into_response(),
        })
    }
}

/// Longest identifier a sender may give (an incident id, a user or group id), in bytes. The
/// keys are indexed, and a btree entry holds at most about 2,700 bytes: a longer id would fail
/// in the database on every redelivery. Real ids are tens of bytes.
pub const MAX_EXTERNAL_ID_BYTES: usize = 512;

/// Refuses a delivery whose identifiers are too long to be stored: a 400 the sender does not
/// retry, not a database error it would retry forever.
fn check_ids(rows: &[Map<String, Value>], key: &str) -> Result<(), ApiError> {
    for r in rows {
        for column in [key, "external_id", "group_id", "user_id"] {
            if let Some(id) = text(r, column) {
                if id.len() > MAX_EXTERNAL_ID_BYTES {
                    return Err(ApiError::Client {
                        status: StatusCode::BAD_REQUEST,
                        code: "bad_payload",
                        message: format!(
                            "{column} is {} bytes long; at most {MAX_EXTERNAL_ID_BYTES}",
                            id.len()
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Request headers as hooks read them: a value that is not visible ASCII counts as absent.
struct HeaderView<'a>(&'a HeaderMap);

impl lily_inbound::Headers for HeaderView<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A hook's refusal as an answer. Authentication failures say no more than their class (the
/// reason is logged); a bad body says which field.
fn refused(hook: &'static str, tenant: &str, e: HookError) -> ApiError {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    match e {
        HookError::Unauthenticated(reason) => {
            tracing::info!(tenant, hook, %reason, "Inbound delivery refused.");
            ApiError::Client {
                status,
                code: "unauthorized",
                message: "invalid credentials".into(),
            }
        }
        HookError::Forbidden(reason) => {
            tracing::info!(tenant, hook, %reason, "Inbound delivery refused.");
            ApiError::Client {
                status,
                code: "forbidden",
                message: "forbidden".into(),
            }
        }
        HookError::BadRequest(message) => ApiError::bad_request(message),
        HookError::BadPayload(message) | HookError::Batch(message) => ApiError::Client {
            status,
            code: "bad_payload",
            message,
        },
    }
}

/// Writes incident rows to `meta.incidents` (see [`Writes::Incidents`] for the columns);
/// returns how many rows changed and how many name no known table. The tables every row
/// names are resolved in one query. An incident's status never moves backwards (open, then
/// investigating, then resolved): a late, older delivery does not reopen a resolved incident.
async fn write_incidents(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    source: &str,
    connection: Option<&str>,
    rows: &[&Map<String, Value>],
) -> Result<(u64, u64), ApiError> {
    let mut paths: Vec<&str> = rows.iter().filter_map(|r| text(r, "table_path")).collect();
    paths.sort_unstable();
    paths.dedup();
    let tables = resolve_tables(tx, tenant, connection, &paths).await?;
    let (mut written, mut unattached) = (0u64, 0u64);
    for r in rows {
        let asset = text(r, "table_path").and_then(|p| tables.get(p));
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
                 VALUES ($1, $2, $3, $4::text::uuid, $5, $6, $7, $8)
                 ON CONFLICT (tenant_id, source, external_id, asset_guid) DO UPDATE SET
                     incident_type = EXCLUDED.incident_type, severity = EXCLUDED.severity,
                     status = EXCLUDED.status, payload = EXCLUDED.payload, updated_at = now()
                 WHERE (i.incident_type, i.severity, i.status, i.payload)
                       IS DISTINCT FROM (EXCLUDED.incident_type, EXCLUDED.severity, EXCLUDED.status, EXCLUDED.payload)
                   AND (CASE EXCLUDED.status WHEN 'resolved' THEN 2 WHEN 'investigating' THEN 1 ELSE 0 END)
                       >= (CASE i.status WHEN 'resolved' THEN 2 WHEN 'investigating' THEN 1 ELSE 0 END)",
                &[
                    &tenant,
                    &source,
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
    Ok((written, unattached))
}

/// Applies principal and membership changes (see [`Writes::Directory`] for the columns), each
/// only when newer than the stored state; returns how many changed a row.
async fn write_directory(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    rows: &[&Map<String, Value>],
) -> Result<u64, ApiError> {
    let mut applied = 0u64;
    for r in rows {
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
    Ok(applied)
}

/// The guids of the tables that `paths` (`database/schema/table`, lower case) name, by path;
/// a path naming no table, or (without a connection) more than one, is absent. One query for
/// the whole delivery.
async fn resolve_tables(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    connection: Option<&str>,
    paths: &[&str],
) -> Result<HashMap<String, String>, ApiError> {
    if paths.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = match connection {
        // The asset's guid follows from its qualified name: look the guids up by key.
        Some(c) => {
            let guids: Vec<String> = paths
                .iter()
                .map(|p| store::asset_guid(tenant, &format!("{c}/{p}")).to_string())
                .collect();
            tx.query(
                "SELECT p.path, a.guid::text
                 FROM unnest($1::text[], $2::text[]) AS p(path, guid)
                 JOIN meta.assets a ON a.guid = p.guid::uuid",
                &[&paths, &guids],
            )
            .await?
        }
        // Without a configured connection: the one table whose qualified name ends in
        // '/' || path, found by its last segment (an index) and checked without wildcards.
        None => {
            tx.query(
                "SELECT p.path, min(a.guid::text)
                 FROM unnest($2::text[]) AS p(path)
                 JOIN meta.assets a
                   ON a.tenant_id = $1
                  AND a.type_name IN ('Table', 'View', 'MaterializedView')
                  AND meta.last_segment(a.qualified_name) = split_part(p.path, '/', -1)
                  AND right(lower(a.qualified_name), length(p.path) + 1) = '/' || p.path
                 GROUP BY p.path
                 HAVING count(*) = 1",
                &[&tenant, &paths],
            )
            .await?
        }
    };
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Marks `keys` as applied; returns the ones that were new.
async fn first_seen(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    source: &str,
    keys: &[String],
) -> Result<HashSet<String>, ApiError> {
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
    lily_batch::json::objects(batch).map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hook whose routes are all that matters here.
    struct Routed<const BAD: bool>;

    impl<const BAD: bool> InboundHook for Routed<BAD> {
        const SOURCE: &'static str = if BAD { "bad" } else { "clash" };
        const ROUTES: &'static [Route] = &[Route {
            method: Method::Post,
            path: if BAD { "Not/One" } else { "okta" },
        }];
        const SQL: &'static str = "SELECT 1";
        const IDEMPOTENCY_KEY: &'static str = "k";
        const ACK: Ack = Ack::NoContent;

        fn events_schema() -> arrow_schema::SchemaRef {
            Arc::new(arrow_schema::Schema::empty())
        }

        fn tenant(&self) -> &str {
            "acme"
        }

        fn admit(&self, _: &Request<'_>) -> Result<Admission, HookError> {
            Ok(Admission::Ingest)
        }

        fn events(&self, _: &[u8]) -> Result<RecordBatch, HookError> {
            Err(HookError::Batch("unused".into()))
        }

        fn writes(&self) -> Writes<'_> {
            Writes::Directory
        }
    }

    #[tokio::test]
    async fn registration_refuses_what_would_be_ambiguous() {
        let unsigned: lily_montecarlo::MonteCarloHookConfig =
            toml::from_str("tenant_id = \"acme\"\nallow_unsigned = true").unwrap();
        let mut hooks = Hooks::default();
        let err = hooks
            .register_hooks(vec![unsigned.build().unwrap(), unsigned.build().unwrap()])
            .await
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "two monte_carlo hooks for tenant acme");

        let mut hooks = Hooks::default();
        hooks
            .register_hooks(Vec::<lily_montecarlo::MonteCarloHook>::new())
            .await
            .unwrap();
        hooks
            .register_hooks(Vec::<lily_okta::OktaHook>::new())
            .await
            .unwrap();
        let served: Vec<(Method, &str)> = hooks.routes().map(|(_, r)| (r.method, r.path)).collect();
        assert_eq!(
            served,
            [
                (Method::Post, "monte-carlo"),
                (Method::Get, "okta"),
                (Method::Post, "okta")
            ]
        );
        let again = hooks
            .register_hooks(Vec::<lily_okta::OktaHook>::new())
            .await;
        assert!(matches!(again, Err(HooksError::DuplicateSource("okta"))));
        let clash = hooks.register_hooks(Vec::<Routed<false>>::new()).await;
        assert_eq!(
            clash.err().unwrap().to_string(),
            "the clash hook's route /webhooks/okta: another hook's"
        );
        let bad = hooks.register_hooks(Vec::<Routed<true>>::new()).await;
        assert!(
            matches!(
                bad,
                Err(HooksError::BadRoute {
                    path: "Not/One",
                    ..
                })
            ),
            "{bad:?}"
        );
        assert_eq!(hooks.routes().count(), 3, "nothing half-registered");
    }
}
