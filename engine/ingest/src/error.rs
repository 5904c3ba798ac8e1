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
            ApiError::Store(e) => match e.code().map(|c| c.code()) {
                // Constraint violations are the caller's data.
                Some(c) if c.starts_with("23") || c.starts_with("22") => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                // Row-level security refused a row: never expected past the handler's own
                // tenant check, so it is answered like any other refusal.
                Some("42501") => StatusCode::FORBIDDEN,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            },
            ApiError::Pool(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Loads(e) => match e {
                LoadsError::NotEnabled | LoadsError::NotFound => StatusCode::NOT_FOUND,
                LoadsError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                LoadsError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                LoadsError::Empty => StatusCode::UNPROCESSABLE_ENTITY,
                LoadsError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
                LoadsError::Body(_) => StatusCode::BAD_REQUEST,
                LoadsError::Idle(_) => StatusCode::REQUEST_TIMEOUT,
                LoadsError::ShuttingDown | LoadsError::Spool(_) | LoadsError::Inspect(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
        }
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
            ApiError::Store(e) if status == StatusCode::UNPROCESSABLE_ENTITY => (
                "unprocessable",
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| "invalid data".into()),
            ),
            ApiError::Loads(e) => match e {
                LoadsError::NotEnabled => ("not_enabled", e.to_string()),
                LoadsError::NotFound => ("not_found", e.to_string()),
                LoadsError::UnsupportedMediaType(_) => ("unsupported_media_type", e.to_string()),
                LoadsError::TooLarge { .. } => ("too_large", e.to_string()),
                LoadsError::Empty => ("unprocessable", e.to_string()),
                LoadsError::Busy(_) => ("busy", e.to_string()),
                LoadsError::Body(_) => ("bad_request", e.to_string()),
                LoadsError::Idle(_) => ("timeout", e.to_string()),
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
