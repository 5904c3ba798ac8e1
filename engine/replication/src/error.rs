use std::io;

/// What went wrong talking to PostgreSQL. [`ReplicationError::is_retryable`] tells a reconnect
/// loop whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("server error {code}: {message}{}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default(), hint.as_deref().map(|h| format!(" hint: {h}")).unwrap_or_default())]
    Server {
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    #[error("authentication failed for user {user:?}: {reason}")]
    Auth { user: String, reason: String },
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("{0}")]
    Decode(#[from] lily_pgoutput::DecodeError),
    /// The source cannot replicate as configured; the message says what to change.
    #[error("{0}")]
    Setup(String),
    #[error("replication slot {slot:?} is lost: {reason}. Changes after LSN {confirmed} cannot be replayed from it; re-create the slot and re-snapshot (see `lily slot --help`), the engine will not silently restart from the current position")]
    SlotLost {
        slot: String,
        confirmed: String,
        reason: String,
    },
    #[error("timed out: {0}")]
    Timeout(String),
}

impl ReplicationError {
    /// Errors worth a reconnect with backoff: lost connections, server restarts, too many clients.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReplicationError::Connect { .. }
            | ReplicationError::Io(_)
            | ReplicationError::Timeout(_) => true,
            ReplicationError::Server { code, .. } => {
                // 08: connection exception; 57P01-03: admin/crash shutdown, cannot connect now;
                // 53300: too many connections; 55006: object in use (slot still held by a dying
                // walsender after a reconnect); 40001/40P01: serialization/deadlock.
                code.starts_with("08")
                    || matches!(
                        code.as_str(),
                        "57P01" | "57P02" | "57P03" | "53300" | "55006" | "40001" | "40P01"
                    )
            }
            _ => false,
        }
    }

    /// The SQLSTATE of a server error.
    pub fn server_code(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}
