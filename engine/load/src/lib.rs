//! Bulk loads of assets (NDJSON, Parquet) into the metastore with COPY: a structural lane first,
//! a bulk lane for columns, resumable.
//!
//! An estate is about 10% containers (connections, databases, schemas, tables, dashboards,
//! processes) and 90% leaves (columns, BI fields). A load reads its file twice:
//!
//! 1. **Structural lane.** Every non-leaf asset and every lineage edge, in transactions of at
//!    most [`LoadConfig::structural_chunk_rows`] rows (1,000), so that the containers become
//!    visible within about a second of being read. This pass also checks every row of the file.
//! 2. **Bulk lane.** The leaves ([`LaneRules`]: `Column`, `BIField` and configured types), in
//!    large transactions: binary `COPY` into a session-local TEMP staging table, then one
//!    `INSERT ... SELECT ... ON CONFLICT (guid) DO UPDATE ... WHERE` changed into `meta.assets`.
//!    Unchanged rows are not rewritten (no version bump, no change event).
//!
//! Guids are computed here (UUIDv5, as `meta.asset_guid`) so every row, its parent and its
//! lineage ends are named without a server look-up; a guid derived from another tenant's id can
//! never be produced, so a load can only touch its own tenant's rows.
//!
//! **Resuming.** A job (`lily.load_jobs`) is identified by the tenant and the file's
//! fingerprint. Each chunk's rows and the lane's new file position commit in one transaction, so
//! after a crash the job says exactly what is committed and a re-run of the same file skips it.
//!
//! **Bad input.** The load stops at the first bad row with its file, line (row) and reason.
//! Chunks committed before it stay; as the structural pass checks the whole file, a bad row
//! anywhere stops the load before any bulk row is written.
//!
//! **Parallel bulk writers.** The bulk lane writes [`LoadConfig::bulk_writers`] chunks at once,
//! each on its own connection (with [`Loader::with_connect`]). They take their throttle permits
//! and commit in file order, so the committed rows are always a prefix of the file and resuming
//! stays exact. A chunk sharing an asset with a chunk still in flight waits for it (two open
//! transactions inserting one key would wait on each other).
//!
//! **Pacing on change-data-capture.** While a logical replication slot of the database is active,
//! bulk chunks are capped at [`LoadConfig::replicated_chunk_rows`] and wait whenever the slot is
//! more than [`LoadConfig::max_replication_lag_bytes`] behind: a consumer gets a transaction only
//! after every transaction committed before it, so a near-real-time change committed during a
//! load waits behind at most that much bulk WAL. The load then runs as fast as its consumers read.
//!
//! **Sharing the server.** Bulk chunks take a permit of a [`Throttle`] that loaders of all tenants
//! can share; the structural lane and other writers never wait on it.
//!
//! ```no_run
//! # async fn demo(mut client: tokio_postgres::Client) -> Result<(), lily_load::LoadError> {
//! let loader = lily_load::Loader::default();
//! let request = lily_load::LoadRequest::new("acme", "cli:load", "assets.ndjson");
//! let report = loader.load(&mut client, &request).await?;
//! println!("{} bulk rows at {:.0} rows/s", report.bulk.rows, report.bulk.rows_per_sec());
//! # Ok(()) }
//! ```

mod chunk;
mod error;
mod job;
mod loader;
mod partition;
mod progress;
mod record;
pub mod rules;
mod source;
mod throttle;

pub use error::{LoadError, RowLocation};
pub use job::JobTotals;
pub use loader::{
    ChunkInfo, LaneReport, LoadConfig, LoadObserver, LoadReport, LoadRequest, Loader,
};
#[cfg(feature = "cli")]
pub use progress::render_progress;
pub use progress::Progress;
pub use record::{asset_guid, LaneRules};
pub use source::Format;
pub use throttle::Throttle;

/// The id of the job that loading `path` into `tenant` is (`lily.load_jobs.job_id`, 32 hex
/// digits), without connecting: the ingest API names the job before its load starts. Depends on
/// the file's size, modification time and content, so the file must not change afterwards.
/// Blocking (reads up to 2 MiB of the file).
pub fn job_id_of(
    tenant: &str,
    path: &std::path::Path,
    format: Option<Format>,
) -> Result<String, LoadError> {
    let file = job::inspect(path, format)?;
    Ok(job::job_id(tenant, &file.fingerprint))
}

/// The two lanes of a load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Containers, processes, lineage: small transactions, first.
    #[default]
    Structural,
    /// Leaf assets: large COPY transactions, after the structural lane.
    Bulk,
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lane::Structural => "structural",
            Lane::Bulk => "bulk",
        })
    }
}
