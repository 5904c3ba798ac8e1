use crate::connect::Role;

/// A connection that could not be made or set up. Every message names the connection's role and
/// its target (never a password), so a log line says which of the engine's connections failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection settings are wrong; retrying cannot help.
    #[error("{0}")]
    Config(String),
    /// TLS could not be set up on our side (CA file unreadable, no certificate in it).
    #[error("TLS for the {role} connection to {target}: {reason}")]
    Tls {
        role: Role,
        target: String,
        reason: String,
    },
    /// The server did not complete the start-up within `connect_timeout`.
    #[error("{role} connection to {target} timed out after {after:?}")]
    Timeout {
        role: Role,
        target: String,
        after: std::time::Duration,
    },
    /// Connecting, the TLS handshake, or authentication failed.
    #[error("{role} connection to {target} failed: {detail}")]
    Connect {
        role: Role,
        target: String,
        /// The whole cause: tokio-postgres' own text stops at "db error" or "error performing
        /// TLS handshake".
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// A tokio-postgres error with its cause: the server's SQLSTATE, message and the fields that
/// locate it, or the chain of sources (the TLS verifier's reason, the socket error).
/// tokio-postgres' own text stops at "db error" or "error performing TLS handshake".
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return describe_db(db);
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// A server error as `SQLSTATE message (constraint: ..) (column: ..) (detail: ..) (hint: ..)`.
pub fn describe_db(db: &tokio_postgres::error::DbError) -> String {
    let mut s = format!("{} {}", db.code().code(), db.message());
    for (what, value) in [
        ("constraint", db.constraint()),
        ("column", db.column()),
        ("detail", db.detail()),
        ("hint", db.hint()),
    ] {
        if let Some(v) = value {
            s.push_str(&format!(" ({what}: {v})"));
        }
    }
    s
}

impl PgError {
    /// Whether trying again later may succeed: a server that is down or restarting, a network
    /// error. Wrong settings, a refused certificate and refused credentials are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            PgError::Config(_) | PgError::Tls { .. } => false,
            PgError::Timeout { .. } => true,
            PgError::Connect { source, .. } => match source.code() {
                // 28xxx: authentication; 3D000: no such database; 42501: no permission.
                Some(code) => {
                    let c = code.code();
                    !(c.starts_with("28") || c == "3D000" || c == "42501")
                }
                // A TLS verification failure is not fixed by waiting.
                None => !describe(source).contains("certificate"),
            },
        }
    }
}
