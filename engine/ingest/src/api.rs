//! The routes. Each handler authenticates first (so an anonymous caller learns nothing about
//! the body it sent), checks the credential's tenant and scope, validates the whole body, and
//! then writes it in one transaction with its audit row.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use lily_auth::{Principal, Scope};

use crate::error::ApiError;
use crate::model::{
    check_name, valid_tag, valid_type_name, AssetsRequest, ClassificationsRequest, LineageRequest,
    WriteResult, ASSET_STATUSES, MAX_ITEMS,
};
use crate::store;

/// Every route of the ingest API as (method, path), the list `openapi.json` is checked against.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/tenants/{tenant}/assets"),
    ("post", "/v1/tenants/{tenant}/lineage"),
    ("post", "/v1/tenants/{tenant}/classifications"),
    ("post", "/v1/tenants/{tenant}/webhooks/monte-carlo"),
    ("get", "/v1/tenants/{tenant}/webhooks/okta"),
    ("post", "/v1/tenants/{tenant}/webhooks/okta"),
];

/// What the handlers share.
pub struct Ingest {
    pub(crate) pool: deadpool_postgres::Pool,
    pub(crate) auth: lily_auth::Authenticator,
    pub(crate) hooks: crate::webhooks::Hooks,
}

impl Ingest {
    pub fn new(
        pool: deadpool_postgres::Pool,
        auth: lily_auth::Authenticator,
        hooks: crate::webhooks::Hooks,
    ) -> Arc<Self> {
        Arc::new(Ingest { pool, auth, hooks })
    }
}

/// The ingest routes, with bodies limited to `max_body_bytes` (413 beyond).
pub fn router(ingest: Arc<Ingest>, max_body_bytes: usize) -> Router {
    Router::new()
        .route(ROUTES[0].1, post(assets))
        .route(ROUTES[1].1, post(lineage))
        .route(ROUTES[2].1, post(classifications))
        .route(ROUTES[3].1, post(crate::webhooks::monte_carlo))
        .route(
            ROUTES[4].1,
            get(crate::webhooks::okta_challenge).post(crate::webhooks::okta_events),
        )
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(ingest)
}

/// Authenticates the caller and checks it may do `scope` on `tenant`.
async fn authorize(
    s: &Ingest,
    headers: &HeaderMap,
    tenant: &str,
    scope: Scope,
) -> Result<Principal, ApiError> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let client = s.pool.get().await?;
    let principal = s
        .auth
        .authenticate(header("authorization"), header("x-api-key"), &client)
        .await?;
    principal.require_tenant(tenant)?;
    principal.require(scope)?;
    Ok(principal)
}

/// A body the JSON extractor refused, as a clear client error with the extractor's own status
/// (400 syntax or UTF-8, 413 too large, 415 not JSON, 422 wrong shape or unknown field).
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match b {
        Ok(Json(v)) => Ok(v),
        Err(r) => Err(ApiError::Client {
            status: r.status(),
            code: match r.status() {
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
                _ => "bad_request",
            },
            message: r.body_text(),
        }),
    }
}

fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn check_count(n: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::unprocessable(
            "nothing to write: the lists are empty",
        ));
    }
    if n > MAX_ITEMS {
        return Err(ApiError::Client {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_large",
            message: format!("{n} items; at most {MAX_ITEMS} per request (use bulk loads)"),
        });
    }
    Ok(())
}

fn unique<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> Result<(), ApiError> {
    let mut seen = std::collections::HashSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(ApiError::unprocessable(format!(
                "{what} {n:?} appears twice in the request"
            )));
        }
    }
    Ok(())
}

/// Audits and commits a request's transaction.
async fn finish(
    tx: deadpool_postgres::Transaction<'_>,
    tenant: &str,
    principal: &Principal,
    action: &str,
    names: Vec<&str>,
    result: WriteResult,
    started: Instant,
) -> Result<Json<WriteResult>, ApiError> {
    let id = request_id();
    store::audit(
        &tx,
        tenant,
        &principal.subject,
        action,
        &id,
        store::detail(&result, &names),
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("lily_ingest_requests_total", "action" => action.to_string()).increment(1);
    metrics::histogram!("lily_ingest_seconds", "action" => action.to_string())
        .record(started.elapsed().as_secs_f64());
    tracing::debug!(tenant, principal = %principal.subject, action, request = %id, "ingested");
    Ok(Json(result))
}

async fn assets(
    State(s): State<Arc<Ingest>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    req: Result<Json<AssetsRequest>, JsonRejection>,
) -> Result<Json<WriteResult>, ApiError> {
    let started = Instant::now();
    let principal = authorize(&s, &headers, &tenant, Scope::AssetsWrite).await?;
    let req = body(req)?;
    check_count(req.upsert.len() + req.delete.len())?;
    for a in &req.upsert {
        check_name("qualified_name", &a.qualified_name).map_err(ApiError::unprocessable)?;
        check_name("name", &a.name).map_err(ApiError::unprocessable)?;
        if let Some(p) = &a.parent_qualified_name {
            check_name("parent_qualified_name", p).map_err(ApiError::unprocessable)?;
            if *p == a.qualified_name {
                return Err(ApiError::unprocessable(format!(
                    "asset {:?} names itself as its parent",
                    a.qualified_name
                )));
            }
        }
        if !valid_type_name(&a.type_name) {
            return Err(ApiError::unprocessable(format!(
                "type_name {:?} of {:?} is not a type name (e.g. Table, Column)",
                a.type_name, a.qualified_name
            )));
        }
        if let Some(st) = &a.status {
            if !ASSET_STATUSES.contains(&st.as_str()) {
                return Err(ApiError::unprocessable(format!(
                    "status {st:?} of {:?} is not one of {ASSET_STATUSES:?}",
                    a.qualified_name
                )));
            }
        }
    }
    for q in &req.delete {
        check_name("qualified_name", q).map_err(ApiError::unprocessable)?;
    }
    unique(
        "qualified_name",
        req.upsert.iter().map(|a| a.qualified_name.as_str()),
    )?;
    let names: Vec<&str> = req
        .upsert
        .iter()
        .map(|a| a.qualified_name.as_str())
        .chain(req.delete.iter().map(String::as_str))
        .collect();
    let mut client = s.pool.get().await?;
    let tx = store::begin(&mut client, &tenant).await?;
    let result = store::write_assets(&tx, &tenant, &req.upsert, &req.delete).await?;
    finish(
        tx,
        &tenant,
        &principal,
        "assets.write",
        names,
        result,
        started,
    )
    .await
}

async fn lineage(
    State(s): State<Arc<Ingest>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    req: Result<Json<LineageRequest>, JsonRejection>,
) -> Result<Json<WriteResult>, ApiError> {
    let started = Instant::now();
    let principal = authorize(&s, &headers, &tenant, Scope::LineageWrite).await?;
    let req = body(req)?;
    check_count(req.upsert.len() + req.delete.len())?;
    for e in req.upsert.iter().chain(&req.delete) {
        for (what, v) in [
            ("upstream", &e.upstream),
            ("downstream", &e.downstream),
            ("process", &e.process),
        ] {
            check_name(what, v).map_err(ApiError::unprocessable)?;
        }
        if e.upstream == e.downstream {
            return Err(ApiError::unprocessable(format!(
                "edge from {:?} to itself",
                e.upstream
            )));
        }
    }
    let names: Vec<&str> = req
        .upsert
        .iter()
        .chain(&req.delete)
        .map(|e| e.downstream.as_str())
        .collect();
    let mut client = s.pool.get().await?;
    let tx = store::begin(&mut client, &tenant).await?;
    let result = store::write_lineage(&tx, &tenant, &req.upsert, &req.delete).await?;
    finish(
        tx,
        &tenant,
        &principal,
        "lineage.write",
        names,
        result,
        started,
    )
    .await
}

async fn classifications(
    State(s): State<Arc<Ingest>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    req: Result<Json<ClassificationsRequest>, JsonRejection>,
) -> Result<Json<WriteResult>, ApiError> {
    let started = Instant::now();
    let principal = authorize(&s, &headers, &tenant, Scope::ClassificationsWrite).await?;
    let req = body(req)?;
    check_count(req.upsert.len() + req.delete.len())?;
    for t in req.upsert.iter().chain(&req.delete) {
        check_name("qualified_name", &t.qualified_name).map_err(ApiError::unprocessable)?;
        if !valid_tag(&t.tag) {
            return Err(ApiError::unprocessable(format!(
                "tag {:?} is not a tag name (letters, digits, space, '_' and '-', at most 64)",
                t.tag
            )));
        }
    }
    let names: Vec<&str> = req
        .upsert
        .iter()
        .chain(&req.delete)
        .map(|t| t.qualified_name.as_str())
        .collect();
    let mut client = s.pool.get().await?;
    let tx = store::begin(&mut client, &tenant).await?;
    let result = store::write_classifications(&tx, &tenant, &req.upsert, &req.delete).await?;
    finish(
        tx,
        &tenant,
        &principal,
        "classifications.write",
        names,
        result,
        started,
    )
    .await
}
