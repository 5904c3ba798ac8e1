//! Why a load failed, and whether running it again can help.

use std::fmt;
use std::path::PathBuf;

use crate::Lane;

/// Where in an input file a row is: a 1-based line of an NDJSON file or a 1-based row of a
/// Parquet file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLocation {
    Line(u64),
    Row(u64),
}

impl fmt::Display for RowLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowLocation::Line(n) => write!(f, "line {n}"),
            RowLocation::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// Why a load stopped. Chunks committed before the error stay committed and are recorded in the
/// job; running the same load again resumes after them ([`LoadError::is_retryable`] says whether
/// that can succeed without changing anything).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A row of the input is malformed. The load stops at the first bad row; fix the file and run
    /// it again (a changed file is a new job; rows already loaded are upserted again unchanged).
    #[error("{}, {location}: {reason}", file.display())]
    BadRow {
        file: PathBuf,
        location: RowLocation,
        reason: String,
    },
    /// The file cannot be read (missing, unreadable, not a Parquet file the reader understands).
    #[error("{}: {reason}", file.display())]
    BadFile { file: PathBuf, reason: String },
    #[error("reading {}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tenant {0:?} does not exist (create it first)")]
    NoSuchTenant(String),
    #[error("{0:?} is not a tenant id (lower-case letters, digits, '_' and '-', at most 63)")]
    InvalidTenant(String),
    /// The server refused a chunk's data (a constraint or a value the server rejects that the
    /// loader's own checks let through). Nothing of the chunk was committed.
    #[error("{}: the {lane} chunk of {first} to {last} was rejected by the server: {source}", file.display())]
    ChunkRejected {
        file: PathBuf,
        lane: Lane,
        first: RowLocation,
        last: RowLocation,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Another run of the same job committed a chunk first (two `lily load` of one file at once).
    #[error("load job {job_id} was advanced by another run; only one run of a job can make progress at a time")]
    JobConflict { job_id: String },
    /// A [`crate::LoadObserver`] stopped the load before a chunk committed.
    #[error("load stopped before committing a {lane} chunk: {reason}")]
    Stopped { lane: Lane, reason: String },
    #[error("{context}: {source}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A connection for the load could not be opened (the message names it and its target).
    #[error("{0}")]
    Connect(#[from] lily_pg::PgError),
    /// The file reader thread panicked or was cancelled: a bug, not an input problem.
    #[error("the file reader failed: {0}")]
    Reader(String),
}

impl LoadError {
    /// The error without the input file's path: what a load job records and the API shows
    /// (an uploaded file's path is the server's spool, not the client's business; the job
    /// already names its file).
    pub fn without_path(&self) -> String {
        match self {
            LoadError::BadRow {
                location, reason, ..
            } => format!("{location}: {reason}"),
            LoadError::BadFile { reason, .. } => reason.clone(),
            LoadError::Io { source, .. } => format!("reading the file: {source}"),
            LoadError::ChunkRejected {
                lane,
                first,
                last,
                source,
                ..
            } => format!(
                "the {lane} chunk of {first} to {last} was rejected by the server: {}",
                lily_pg::describe(source)
            ),
            other => other.to_string(),
        }
    }

    pub(crate) fn pg(context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        LoadError::Postgres {
            context: context.into(),
            source,
        }
    }

    /// Whether running the same load again, unchanged, may succeed: lost connections, server
    /// restarts, serialization failures and deadlocks, resource exhaustion, a concurrent run of
    /// the job, a stop requested by the caller. Bad input, a missing tenant and rejected data are
    /// permanent until someone changes the input or the database.
    pub fn is_retryable(&self) -> bool {
        match self {
            LoadError::Postgres { source, .. } => pg_retryable(source),
            LoadError::Connect(e) => e.is_retryable(),
            LoadError::JobConflict { .. } | LoadError::Stopped { .. } => true,
            LoadError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut
            ),
            LoadError::ChunkRejected { source, .. } => pg_retryable(source),
            LoadError::BadRow { .. }
            | LoadError::BadFile { .. }
            | LoadError::NoSuchTenant(_)
            | LoadError::InvalidTenant(_)
            | LoadError::Reader(_) => false,
        }
    }

    /// The SQLSTATE of the underlying server error, if there is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            LoadError::Postgres { source, .. } | LoadError::ChunkRejected { source, .. } => {
                source.code().map(|c| c.code())
            }
            _ => None,
        }
    }
}

/// Connection loss (no SQLSTATE), class 08 (connection), 40 (serialization, deadlock), 53
/// (insufficient resources), 57P01-03 (shutdown, cannot connect now) and 55P03 (lock timeout) are
/// worth retrying.
fn pg_retryable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => e.is_closed() || e.as_db_error().is_none(),
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("40")
                || c.starts_with("53")
                || matches!(c, "57P01" | "57P02" | "57P03" | "55P03" | "57014")
        }
    }
}
