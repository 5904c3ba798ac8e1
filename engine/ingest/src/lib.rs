//! The ingest API: authenticated, tenant-scoped writes of assets, lineage, classifications and
//! incidents, the inbound webhooks (each a [`lily_inbound::InboundHook`] of its connector,
//! registered in [`Hooks`]), and bulk loads of uploaded files (run in the background by
//! [`Loads`]). Mounted by the `lily` binary next to /healthz, /readyz and /metrics; described by
//! `openapi.json`, which it serves at /openapi.json.

mod api;
mod config;
mod error;
mod loads;
mod model;
mod schedule;
pub mod server;
mod store;
mod webhooks;

pub use api::{router, served_routes, Ingest};
pub use config::{IngestConfig, Limits};
pub use error::ApiError;
pub use lily_inbound::HookKind;
pub use loads::{Loads, LoadsError, LoadsSettings};
pub use model::{AssetIn, AssetsRequest, WriteResult, MAX_ITEMS};
pub use store::asset_guid;
pub use webhooks::{Hooks, HooksError};

/// The OpenAPI document of the ingest API.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// A pool of metastore connections for the ingest API (owner role; each request switches to
/// `lily_ingest` inside its transaction), waiting at most the default
/// [`Limits::pool_wait`] for a connection.
/// Connections carry TLS and the session settings of `lily_pg`, named `lily-ingest`.
pub fn pool(
    pg: &lily_pg::ConnectionConfig,
    size: usize,
) -> Result<deadpool_postgres::Pool, String> {
    pool_with_wait(pg, size, Limits::default().pool_wait)
}

/// [`pool`], waiting at most `wait` for a connection (then the request gets 503). Opening a
/// connection is bounded by the connection settings' `connect_timeout`.
pub fn pool_with_wait(
    pg: &lily_pg::ConnectionConfig,
    size: usize,
    wait: std::time::Duration,
) -> Result<deadpool_postgres::Pool, String> {
    let (config, tls) =
        lily_pg::tokio_parts(pg, lily_pg::Role::Ingest).map_err(|e| e.to_string())?;
    let mgr = deadpool_postgres::Manager::new(config, tls);
    deadpool_postgres::Pool::builder(mgr)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(pg.connect_timeout))
        .recycle_timeout(Some(wait))
        .build()
        .map_err(|e| e.to_string())
}
