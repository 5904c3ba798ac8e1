//! The routes. Each handler authenticates first (so an anonymous caller learns nothing about
//! the body it sent), checks the credential's tenant and scope, validates the whole body, and
//! then writes it in one transaction with its audit row.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::handler::Handler;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use lily_auth::{Principal, Scope};
use lily_inbound::Method;

use crate::config::Limits;
use crate::error::ApiError;
use crate::loads::{is_job_id, rfc3339, LoadsError, MemState};
use crate::model::{
    check_name, valid_tag, valid_type_name, AssetsRequest, ClassificationsRequest, LineageRequest,
    WriteResult, ASSET_STATUSES, MAX_ITEMS,
};
use crate::store;
use crate::webhooks::Hooks;

/// What the handlers share.
pub struct Ingest {
    pub(crate) pool: deadpool_postgres::Pool,
    pub(crate) auth: lily_auth::Authenticator,
    pub(crate) hooks: Hooks,
    /// Bulk loads; `None` when no spool directory is configured (the load routes answer 404
    /// `not_enabled`).
    pub(crate) loads: Option<crate::Loads>,
    pub(crate) limits: Limits,
}

impl Ingest {
    pub fn new(
        pool: deadpool_postgres::Pool,
        auth: lily_auth::Authenticator,
        hooks: Hooks,
    ) -> Arc<Self> {
        Self::with_loads(pool, auth, hooks, None)
    }

    /// With bulk loads over the API (see [`crate::Loads`]).
    pub fn with_loads(
        pool: deadpool_postgres::Pool,
        auth: lily_auth::Authenticator,
        hooks: Hooks,
        loads: Option<crate::Loads>,
    ) -> Arc<Self> {
        Self::with_limits(pool, auth, hooks, loads, Limits::default())
    }

    /// With bulk loads and the given bounds on each request.
    pub fn with_limits(
        pool: deadpool_postgres::Pool,
        auth: lily_auth::Authenticator,
        hooks: Hooks,
        loads: Option<crate::Loads>,
        limits: Limits,
    ) -> Arc<Self> {
        Arc::new(Ingest {
            pool,
            auth,
            hooks,
            loads,
            limits,
        })
    }

    /// Whether the metastore answers a trivial query within `within` (for `/readyz`).
    pub async fn metastore_answers(&self, within: std::time::Duration) -> bool {
        let probe = async {
            let client = self.pool.get().await.ok()?;
            client.simple_query("SELECT 1").await.ok()
        };
        matches!(tokio::time::timeout(within, probe).await, Ok(Some(_)))
    }
}

/// The ingest routes, with JSON bodies limited to `max_body_bytes` (413 beyond). Load uploads
/// are streamed to disk and limited by the loads' own `max_load_bytes` instead.
pub fn router(ingest: Arc<Ingest>, max_body_bytes: usize) -> Router {
    routes(&ingest.hooks, max_body_bytes, ingest.limits.request_timeout)
        .router
        // Every answer has the documented error shape, unknown routes and methods included.
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(ingest)
}

async fn not_found() -> ApiError {
    ApiError::Client {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such route".into(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::Client {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: "this route does not take that method".into(),
    }
}

/// Every route [`router`] serves with `hooks`, as (method, path) with the method in lower case
/// as OpenAPI names operations: the list `openapi.json` is checked against.
pub fn served_routes(hooks: &Hooks) -> Vec<(&'static str, String)> {
    routes(hooks, 0, Limits::default().request_timeout)
        .served
        .into_iter()
        .map(|(method, path)| (method.as_str(), path))
        .collect()
}

fn routes(hooks: &Hooks, max_body_bytes: usize, deadline: std::time::Duration) -> Routes {
    // Mounted always, so the API's shape does not depend on configuration.
    let loads = Routes::default()
        .add(Method::Post, "/v1/tenants/{tenant}/loads", create_load)
        .add(
            Method::Get,
            "/v1/tenants/{tenant}/loads/{job_id}",
            load_status,
        )
        .layer(DefaultBodyLimit::disable());
    let mut api = Routes::default()
        .add(Method::Get, "/openapi.json", openapi)
        .add(Method::Post, "/v1/tenants/{tenant}/assets", assets)
        .add(Method::Post, "/v1/tenants/{tenant}/lineage", lineage)
        .add(
            Method::Post,
            "/v1/tenants/{tenant}/classifications",
            classifications,
        );
    for (hook, route) in hooks.routes() {
        let method = route.method;
        let path = format!("/v1/tenants/{{tenant}}/webhooks/{}", route.path);
        api =
            api.add(
                method,
                &path,
                move |State(s): State<Arc<Ingest>>,
                      Path(tenant): Path<String>,
                      request: Request| async move {
                    hook.deliver(&s, tenant, method, request).await
                },
            );
    }
    // Every JSON and webhook request ends within the deadline. Load uploads do not: they are
    // bounded by their idle timeout and size instead.
    api.router = api
        .router
        .layer(axum::middleware::from_fn(move |req, next| {
            within_deadline(deadline, req, next)
        }));
    api.layer(DefaultBodyLimit::max(max_body_bytes))
        .merge(loads)
}

/// Runs a request, answering 503 (retryable) when it takes longer than `deadline`. The
/// handler is dropped, which rolls its transaction back.
async fn within_deadline(
    deadline: std::time::Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(?deadline, "request took longer than its deadline");
            ApiError::Client {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "timeout",
                message: format!(
                    "the request did not finish within {} s; retry",
                    deadline.as_secs_f64()
                ),
            }
            .into_response()
        }
    }
}

/// A router and the (method, path) of every route in it, recorded by the call that adds the
/// route, so the list cannot drift from what is served.
#[derive(Default)]
struct Routes {
    router: Router<Arc<Ingest>>,
    served: Vec<(Method, String)>,
}

impl Routes {
    fn add<H, T>(mut self, method: Method, path: &str, handler: H) -> Self
    where
        H: Handler<T, Arc<Ingest>>,
        T: 'static,
    {
        let filter = match method {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
        };
        self.router = self.router.route(path, on(filter, handler));
        self.served.push((method, path.to_string()));
        self
    }

    /// `layer` on the routes added so far.
    fn layer(self, layer: DefaultBodyLimit) -> Self {
        Routes {
            router: self.router.layer(layer),
            served: self.served,
        }
    }

    fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.served.extend(other.served);
        self
    }
}

/// `GET /openapi.json`: the API's description. Unauthenticated: it holds no tenant's data.
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI)
}

/// A pooled connection as the client API keys are looked up with.
struct Pooled(deadpool_postgres::Object);

impl std::ops::Deref for Pooled {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        &self.0
    }
}

/// Authenticates the caller and checks it may do `scope` on `tenant`.
pub(crate) async fn authorize(
    s: &Ingest,
    headers: &HeaderMap,
    tenant: &str,
    scope: Scope,
) -> Result<Principal, ApiError> {
    authorize_any(s, headers, tenant, &[scope]).await
}

/// Authenticates the caller and checks it acts for `tenant` with at least one of `scopes`.
pub(crate) async fn authorize_any(
    s: &Ingest,
    headers: &HeaderMap,
    tenant: &str,
    scopes: &[Scope],
) -> Result<Principal, ApiError> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    // A connection only for an API key that must be looked up: an anonymous or malformed
    // credential never waits for one.
    let principal = s
        .auth
        .authenticate_with(header("authorization"), header("x-api-key"), || async {
            s.pool.get().await.map(Pooled).map_err(|e| {
                lily_auth::AuthError::unavailable(format!("no connection for the key look-up: {e}"))
            })
        })
        .await?;
    principal.require_tenant(tenant)?;
    let mut refused = None;
    for scope in scopes {
        match principal.require(*scope) {
            Ok(()) => return Ok(principal),
            Err(e) => refused = refused.or(Some(e)),
        }
    }
    Err(refused
        .map(ApiError::from)
        .unwrap_or_else(|| ApiError::internal("authorize_any without scopes")))
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

pub(crate) fn request_id() -> String {
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

fn unique<K: Eq + std::hash::Hash + std::fmt::Debug>(
    what: &str,
    keys: impl Iterator<Item = K>,
) -> Result<(), ApiError> {
    let mut seen = std::collections::HashSet::new();
    for k in keys {
        if seen.contains(&k) {
            return Err(ApiError::unprocessable(format!(
                "{what} {k:?} appears twice in the request"
            )));
        }
        seen.insert(k);
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
    request: Request,
) -> Result<Json<WriteResult>, ApiError> {
    let started = Instant::now();
    // From the headers alone, before a byte of the body is read: an anonymous caller costs
    // no body buffer.
    let principal = authorize(&s, request.headers(), &tenant, Scope::AssetsWrite).await?;
    let req = body(Json::<AssetsRequest>::from_request(request, &()).await)?;
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
        req.upsert
            .iter()
            .map(|a| a.qualified_name.as_str())
            .chain(req.delete.iter().map(String::as_str)),
    )?;
    let names: Vec<&str> = req
        .upsert
        .iter()
        .map(|a| a.qualified_name.as_str())
        .chain(req.delete.iter().map(String::as_str))
        .collect();
    let mut client = s.pool.get().await?;
    let tx = store::begin(&mut client, &tenant, &s.limits).await?;
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
    request: Request,
) -> Result<Json<WriteResult>, ApiError> {
    let started = Instant::now();
    // From the headers alone, before a byte of the body is read: an anonymous caller costs
    // no body buffer.
    let principal = authorize(&s, request.headers(), &tenant, Scope::LineageWrite).await?;
    let req = body(Json::<LineageRequest>::from_request(request, &()).await)?;
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
    // One edge twice would be written twice in one statement, which the server refuses.
    unique(
        "edge (upstream, downstream, process)",
        req.upsert
            .iter()
            .chain(&req.delete)
            .map(|e| (&e.upstream, &e.downstream, &e.process)),
    )?;
    let names: Vec<&str> = req
        .upsert
        .iter()
        .chain(&req.delete)
        .map(|e| e.downstream.as_str())
        .collect();
    let mut client = s.pool.get().await?;
    let tx = store::begin(&mut client, &tenant, &s.limits).await?;
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
    request: Request,
) -> Result<Json<WriteResult>, ApiError> {
    let started = Instant::now();
    // From the headers alone, before a byte of the body is read: an anonymous caller costs
    // no body buffer.
    let principal = authorize(&s, request.headers(), &tenant, Scope::ClassificationsWrite).await?;
    let req = body(Json::<ClassificationsRequest>::from_request(request, &()).await)?;
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
    unique(
        "classification (qualified_name, tag)",
        req.upsert
            .iter()
            .chain(&req.delete)
            .map(|t| (&t.qualified_name, &t.tag)),
    )?;
    let names: Vec<&str> = req
        .upsert
        .iter()
        .chain(&req.delete)
        .map(|t| t.qualified_name.as_str())
        .collect();
    let mut client = s.pool.get().await?;
    let tx = store::begin(&mut client, &tenant, &s.limits).await?;
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

/// `POST /v1/tenants/{tenant}/loads`: the body is the file. Authorized before a byte of it is
/// read; spooled to disk and fsynced before the 202.
async fn create_load(
    State(s): State<Arc<Ingest>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, HeaderMap, Json<serde_json::Value>), ApiError> {
    let principal = authorize(&s, &headers, &tenant, Scope::LoadWrite).await?;
    let loads = s.loads.as_ref().ok_or(LoadsError::NotEnabled)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let id = request_id();
    let accepted = loads
        .accept(
            &tenant,
            &principal.subject,
            &id,
            content_type,
            content_length,
            body,
        )
        .await?;
    let location = format!("/v1/tenants/{tenant}/loads/{}", accepted.job_id);
    tracing::info!(tenant, principal = %principal.subject, request = %id, job = %accepted.job_id,
        bytes = accepted.bytes, "load accepted");
    let mut out = HeaderMap::new();
    out.insert(
        header::LOCATION,
        location
            .parse()
            .map_err(|_| ApiError::internal("unrepresentable load location"))?,
    );
    Ok((
        StatusCode::ACCEPTED,
        out,
        Json(serde_json::json!({
            "job_id": accepted.job_id,
            "status": accepted.status,
            "bytes": accepted.bytes,
            "location": location,
        })),
    ))
}

/// `GET /v1/tenants/{tenant}/loads/{job_id}`: the job as the tenant may see it (row-level
/// security on lily.load_jobs), overlaid with what only this process knows (queued, retrying).
/// An unknown job and another tenant's job are the same 404.
async fn load_status(
    State(s): State<Arc<Ingest>>,
    Path((tenant, job_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize_any(
        &s,
        &headers,
        &tenant,
        &[Scope::LoadWrite, Scope::AssetsRead],
    )
    .await?;
    let loads = s.loads.as_ref().ok_or(LoadsError::NotEnabled)?;
    if !is_job_id(&job_id) {
        return Err(LoadsError::NotFound.into());
    }
    let memory = loads.status_of(&job_id).filter(|j| j.tenant == tenant);
    let mut client = s.pool.get().await?;
    let tx = store::begin(&mut client, &tenant, &s.limits).await?;
    // The tenant filter repeats what row-level security enforces.
    let row = tx
        .query_opt(
            "SELECT status, format, file_size, structural_rows, structural_done, lineage_rows,
                    bulk_rows, bulk_done, inserted, updated, unchanged, runs, last_error,
                    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                    to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
             FROM lily.load_jobs WHERE job_id = $1 AND tenant_id = $2",
            &[&job_id, &tenant],
        )
        .await?;
    tx.commit().await?;
    let body = match (row, memory) {
        (None, None) => return Err(LoadsError::NotFound.into()),
        (None, Some(m)) => serde_json::json!({
            "job_id": job_id,
            "status": m.state.as_str(),
            "format": null,
            "bytes": m.bytes,
            "structural": {"rows": 0, "done": false},
            "bulk": {"rows": 0, "done": false},
            "lineage_rows": 0,
            "inserted": 0,
            "updated": 0,
            "unchanged": 0,
            "runs": 0,
            "last_error": match &m.state {
                MemState::Failed(e) => Some(e.as_str()),
                _ => None,
            },
            "created_at": rfc3339(m.accepted_at),
            "finished_at": null,
        }),
        (Some(r), memory) => {
            // While this process still holds the job (queued, running, or waiting to retry after
            // a transient error the row already records as failed), that is its status.
            let status = match memory.map(|m| m.state) {
                Some(st @ (MemState::Queued | MemState::Running)) => st.as_str().to_string(),
                _ => r.get::<_, String>(0),
            };
            let n = |i: usize| r.get::<_, i64>(i);
            serde_json::json!({
                "job_id": job_id,
                "status": status,
                "format": r.get::<_, String>(1),
                "bytes": n(2),
                "structural": {"rows": n(3), "done": r.get::<_, bool>(4)},
                "bulk": {"rows": n(6), "done": r.get::<_, bool>(7)},
                "lineage_rows": n(5),
                "inserted": n(8),
                "updated": n(9),
                "unchanged": n(10),
                "runs": r.get::<_, i32>(11),
                "last_error": r.get::<_, Option<String>>(12),
                "created_at": r.get::<_, Option<String>>(13),
                "finished_at": r.get::<_, Option<String>>(14),
            })
        }
    };
    Ok(Json(body))
}
