//! Errors as HTTP answers: `{"error": {"code": "...", "message": "..."}}`. Client errors say
//! what was wrong; authentication failures and server faults say no more than their class.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::loads::LoadsError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong (400, 413, 415, 422): the message says what.
    #[error("{message}")]
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// 401 / 403 / 503 from authentication; the reason is logged, not returned.
    #[error("{0}")]
    Auth(#[from] lily_auth::AuthError),
    /// The metastore refused or failed; retryable ones answer 503.
    #[error("metastore: {0}")]
    Store(#[from] tokio_postgres::Error),
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A bulk-load upload or status request refused.
    #[error("{0}")]
    Loads(#[from] LoadsError),
}

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::Client {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }

    /// A fault of the server's own (a transform that cannot run): 500, logged.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(%message, "ingest fault");
        ApiError::Client {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error".into(),
        }
    }

    pub(crate) fn unprocessable(message: impl Into<String>) -> Self {
        ApiError::Client {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "unprocessable",
            message: message.into(),
        }
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        ApiError::Client {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: message.into(),
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::Client { status, .. } => *status,
            ApiError::Auth(e) => {
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
            ApiError::Store(e) => store_status(e),
            ApiError::Pool(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Loads(e) => match e {
                LoadsError::NotEnabled | LoadsError::NotFound => StatusCode::NOT_FOUND,
                LoadsError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                LoadsError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                LoadsError::Empty => StatusCode::UNPROCESSABLE_ENTITY,
                LoadsError::Busy(_) | LoadsError::TenantBusy(_) => StatusCode::TOO_MANY_REQUESTS,
                LoadsError::Body(_) => StatusCode::BAD_REQUEST,
                LoadsError::Idle(_) | LoadsError::TooSlow(_) => StatusCode::REQUEST_TIMEOUT,
                LoadsError::ShuttingDown | LoadsError::Spool(_) | LoadsError::Inspect(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
        }
    }
}

/// What a metastore error means for the request. Only what a retry can fix is 503 (with
/// `Retry-After`): a lost connection, a timeout, a lock or serialization conflict, a server
/// short of resources or shutting down. The request's own data (integrity, data, cardinality and
/// size limits) is 422: sending it again gives the same answer. Anything else (a statement the
/// server cannot plan) is the server's bug: 500.
fn store_status(e: &tokio_postgres::Error) -> StatusCode {
    sqlstate_status(e.code().map(|c| c.code()))
}

fn sqlstate_status(code: Option<&str>) -> StatusCode {
    let Some(code) = code else {
        // No SQLSTATE: the connection failed or closed.
        return StatusCode::SERVICE_UNAVAILABLE;
    };
    if code == "42501" {
        // Row-level security refused a row: never expected past the handler's own tenant
        // check, so it is answered like any other refusal.
        return StatusCode::FORBIDDEN;
    }
    match code.get(..2).unwrap_or_default() {
        // Integrity, data, cardinality (a row named twice), program limits (an index row
        // too big).
        "23" | "22" | "21" | "54" => StatusCode::UNPROCESSABLE_ENTITY,
        // Connection, transaction rollback (serialization, deadlock), resources, object not
        // in prerequisite state (lock_timeout), operator intervention (statement timeout,
        // shutdown), system errors.
        "08" | "40" | "53" | "55" | "57" | "58" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The server's message for a refused write, with what it means for the request where the
/// server's words are about the statement rather than the data.
fn unprocessable_message(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        return "invalid data".into();
    };
    match db.code().code() {
        "21000" => format!(
            "the request names the same row more than once ({})",
            db.message()
        ),
        "54000" => format!(
            "a value is too large for the metastore's index or limits ({})",
            db.message()
        ),
        _ => db.message().to_string(),
    }
}

/// How long a client should wait before sending a load again when the queue is full.
const BUSY_RETRY_AFTER_SECS: &str = "30";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (code, message) = match &self {
            ApiError::Client { code, message, .. } => (*code, message.clone()),
            ApiError::Auth(e) => {
                tracing::info!(reason = %e, "request refused");
                (
                    if status == StatusCode::FORBIDDEN {
                        "forbidden"
                    } else if status == StatusCode::SERVICE_UNAVAILABLE {
                        "unavailable"
                    } else {
                        "unauthorized"
                    },
                    e.public_message().to_string(),
                )
            }
            ApiError::Store(e) if status == StatusCode::UNPROCESSABLE_ENTITY => {
                tracing::info!(error = %lily_pg::describe(e), "write refused by the metastore");
                ("unprocessable", unprocessable_message(e))
            }
            ApiError::Store(e) if status == StatusCode::INTERNAL_SERVER_ERROR => {
                tracing::error!(error = %lily_pg::describe(e), "ingest fault");
                ("internal", "internal error".into())
            }
            ApiError::Loads(e) => match e {
                LoadsError::NotEnabled => ("not_enabled", e.to_string()),
                LoadsError::NotFound => ("not_found", e.to_string()),
                LoadsError::UnsupportedMediaType(_) => ("unsupported_media_type", e.to_string()),
                LoadsError::TooLarge { .. } => ("too_large", e.to_string()),
                LoadsError::Empty => ("unprocessable", e.to_string()),
                LoadsError::Busy(_) | LoadsError::TenantBusy(_) => ("busy", e.to_string()),
                LoadsError::Body(_) => ("bad_request", e.to_string()),
                LoadsError::Idle(_) | LoadsError::TooSlow(_) => ("timeout", e.to_string()),
                LoadsError::ShuttingDown => ("unavailable", e.to_string()),
                LoadsError::Spool(_) | LoadsError::Inspect(_) => {
                    tracing::error!(error = %e, "could not spool a load");
                    (
                        "unavailable",
                        "the upload could not be stored; retry".into(),
                    )
                }
            },
            ApiError::Store(_) if status == StatusCode::FORBIDDEN => {
                tracing::error!(error = %self, "row-level security refused a write");
                ("forbidden", "forbidden".into())
            }
            ApiError::Store(e) => {
                tracing::warn!(error = %lily_pg::describe(e), "ingest failed; the client may retry");
                ("unavailable", "the metastore is unavailable; retry".into())
            }
            _ => {
                tracing::warn!(error = %self, "ingest failed; the client may retry");
                ("unavailable", "the metastore is unavailable; retry".into())
            }
        };
        let mut resp = (
            status,
            Json(serde_json::json!({"error": {"code": code, "message": message}})),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(
                "retry-after",
                axum::http::HeaderValue::from_static(BUSY_RETRY_AFTER_SECS),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_retry_can_fix_is_503() {
        for (code, status) in [
            (None, 503),
            (Some("08006"), 503), // connection failure
            (Some("40001"), 503), // serialization failure
            (Some("40P01"), 503), // deadlock
            (Some("53300"), 503), // too many connections
            (Some("55P03"), 503), // lock_timeout
            (Some("57014"), 503), // statement_timeout
            (Some("57P01"), 503), // admin shutdown
            (Some("23505"), 422), // unique violation
            (Some("23503"), 422), // foreign key
            (Some("22001"), 422), // value too long
            (Some("21000"), 422), // ON CONFLICT affecting a row twice
            (Some("54000"), 422), // index row too large
            (Some("42501"), 403), // row-level security
            (Some("42P01"), 500), // the server's own bug: no such table
            (Some("42601"), 500), // syntax error
            (Some("XX000"), 500),
        ] {
            assert_eq!(sqlstate_status(code).as_u16(), status, "{code:?}");
        }
    }
}
