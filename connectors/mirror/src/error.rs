use arrow_schema::DataType;

/// Why the mirror stopped. [`MirrorError::is_retryable`] tells a transient failure (connection
/// lost, serialization failure, deadlock, server shutting down) from one that needs a person
/// (missing table or column, constraint violation, bad data).
///
/// The transaction in progress is rolled back and its batches are not acknowledged, so after a
/// restart capture delivers them again.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("invalid target database URL: {0}")]
    Config(String),

    #[error("cannot connect to the target database {target}: {detail}")]
    Connect {
        target: String,
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error(
        "target table {table} does not exist in the target database; create it with the source \
         table's columns and primary key"
    )]
    MissingTable { table: String },

    #[error(
        "target table {table} has no column {column:?}, which the source sends; add it (same name \
         and type) to the target table"
    )]
    MissingColumn { table: String, column: String },

    #[error(
        "table {table}, column {column:?}: lily-mirror cannot write Arrow values of type \
         {data_type} to PostgreSQL"
    )]
    UnsupportedType {
        table: String,
        column: String,
        data_type: DataType,
    },

    #[error("table {table}: malformed change batch: {reason}")]
    BadBatch { table: String, reason: String },

    #[error("{action} on target table {table} failed: {detail}")]
    Apply {
        table: String,
        action: &'static str,
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("{action} on the target database failed: {detail}")]
    Transaction {
        action: &'static str,
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl MirrorError {
    /// Whether retrying (after reconnecting, with the batches delivered again) can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            MirrorError::Connect { source, .. } => !is_auth_or_config(source),
            MirrorError::Apply { source, .. } | MirrorError::Transaction { source, .. } => {
                pg_retryable(source)
            }
            MirrorError::Config(_)
            | MirrorError::MissingTable { .. }
            | MirrorError::MissingColumn { .. }
            | MirrorError::UnsupportedType { .. }
            | MirrorError::BadBatch { .. } => false,
        }
    }

    /// Whether the target refused a connection because it is shutting down (SQLSTATE 57P03 with
    /// PostgreSQL's English message; a translated message is not recognized).
    pub(crate) fn is_target_shutting_down(&self) -> bool {
        match self {
            MirrorError::Connect { source, .. } => source.as_db_error().is_some_and(|db| {
                db.code().code() == "57P03" && db.message().contains("shutting down")
            }),
            _ => false,
        }
    }

    /// The target table the error concerns, as `schema.table`.
    pub fn table(&self) -> Option<&str> {
        match self {
            MirrorError::MissingTable { table }
            | MirrorError::MissingColumn { table, .. }
            | MirrorError::UnsupportedType { table, .. }
            | MirrorError::BadBatch { table, .. }
            | MirrorError::Apply { table, .. } => Some(table),
            _ => None,
        }
    }

    /// The SQLSTATE the server answered with, if the error came from the server.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            MirrorError::Connect { source, .. }
            | MirrorError::Apply { source, .. }
            | MirrorError::Transaction { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }

    pub(crate) fn apply(table: &str, action: &'static str, source: tokio_postgres::Error) -> Self {
        if source.code().map(|c| c.code()) == Some("42P01") {
            return MirrorError::MissingTable {
                table: table.into(),
            };
        }
        MirrorError::Apply {
            table: table.into(),
            action,
            detail: describe(&source),
            source,
        }
    }

    pub(crate) fn transaction(action: &'static str, source: tokio_postgres::Error) -> Self {
        MirrorError::Transaction {
            action,
            detail: describe(&source),
            source,
        }
    }
}

pub(crate) use lily_pg::describe;

fn is_auth_or_config(e: &tokio_postgres::Error) -> bool {
    match e.code().map(|c| c.code()) {
        // invalid_authorization_specification, invalid_password, invalid_catalog_name
        Some(code) => code.starts_with("28") || code == "3D000",
        None => false,
    }
}

/// Transient server conditions, and every client-side I/O failure (the connection is gone).
fn pg_retryable(e: &tokio_postgres::Error) -> bool {
    match e.code().map(|c| c.code()) {
        Some(code) => {
            code.starts_with("08") // connection exception
                || code.starts_with("53") // insufficient resources
                || code.starts_with("57P") // operator intervention (shutdown, crash)
                || matches!(code, "40001" | "40P01" | "55P03" | "57014")
        }
        None => true,
    }
}
