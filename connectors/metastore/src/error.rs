//! Errors of building the sink, and how a failed write is classified for the delivery engine.

use lily_delivery::SinkError;

use crate::config::ConfigError;

/// Why [`MetastoreSink::connect`](crate::MetastoreSink::connect) refused to build the sink.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error("cannot connect to the metastore database: {0}")]
    Connect(#[source] lily_pg::PgError),

    #[error("reading the definition of table {table} failed: {detail}")]
    Catalog {
        table: String,
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error(
        "table {table} does not exist in the metastore database (no table {name:?} in schema \
         {schema:?}; names are matched exactly, without case folding)"
    )]
    UnknownTable {
        table: String,
        schema: String,
        name: String,
    },

    #[error("{table} is a {kind}, not a table; the metastore sink writes to tables")]
    NotATable { table: String, kind: &'static str },

    #[error("table {table} has no column {column:?} (named in {setting})")]
    UnknownColumn {
        table: String,
        column: String,
        setting: &'static str,
    },

    #[error("table {table}: column {column:?} (named in {setting}) {reason}")]
    UnusableColumn {
        table: String,
        column: String,
        setting: &'static str,
        reason: &'static str,
    },

    #[error(
        "table {table} has no primary key; set key_columns to the columns of one of its unique \
         keys: {candidates}"
    )]
    NoPrimaryKey { table: String, candidates: String },

    #[error(
        "key_columns {columns:?} are not the columns of a primary key or unique constraint of \
         table {table} (usable keys: {candidates})"
    )]
    NotAKey {
        table: String,
        columns: Vec<String>,
        candidates: String,
    },

    #[error(
        "the role connecting to the metastore lacks the {privilege} privilege on table {table}, \
         which mode = {mode:?} needs; GRANT it"
    )]
    MissingPrivilege {
        table: String,
        privilege: &'static str,
        mode: &'static str,
    },
}

impl BuildError {
    /// Whether building again later can succeed without a configuration change (the database
    /// was unreachable or shutting down). Authentication and unknown-database failures need a
    /// person, like every other variant.
    pub fn is_retryable(&self) -> bool {
        match self {
            BuildError::Connect(e) => e.is_retryable(),
            BuildError::Catalog { source, .. } => match source.code().map(|c| c.code()) {
                Some(code) => !code.starts_with("28") && code != "3D000",
                None => true,
            },
            _ => false,
        }
    }

    pub(crate) fn catalog(table: &str, source: tokio_postgres::Error) -> Self {
        BuildError::Catalog {
            table: table.to_string(),
            detail: describe(&source),
            source,
        }
    }
}

/// Turns a failed write into the delivery engine's verdict.
///
/// Permanent: what the same rows will hit again however often they are sent, i.e. the data or
/// the schema is wrong: integrity (class 23: unique, check, not-null, foreign key), data
/// exceptions (22: bad input syntax, out of range, too long), syntax or undefined objects and
/// privileges (42), cardinality (21), WITH CHECK OPTION (44) and unsupported features (0A).
///
/// Retryable: everything else. That covers serialization failures and deadlocks (40001,
/// 40P01), shutdowns and restarts (57P01, 57P03), lost connections (08xxx, and every client-side
/// error: closed socket, I/O, timeout) and resource shortages (53xxx). An unknown condition is
/// retried rather than dead-lettered: sending again costs little, losing a row to the dead-letter
/// table needs a person to replay it.
pub(crate) fn classify(table: &str, e: &tokio_postgres::Error) -> SinkError {
    match e.as_db_error() {
        Some(db) => {
            let message = format!("writing to {table} failed: {}", describe_db(db));
            let class = db.code().code().get(..2).unwrap_or("");
            if matches!(class, "21" | "22" | "23" | "42" | "44" | "0A") {
                SinkError::permanent(message)
            } else {
                SinkError::retryable(message)
            }
        }
        None => SinkError::retryable(format!(
            "writing to {table} failed: {} (the connection is opened again on the next attempt)",
            describe(e)
        )),
    }
}

pub(crate) use lily_pg::{describe, describe_db};
