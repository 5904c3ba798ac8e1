//! The contract every sink implements, and what it is given.

use std::time::Duration;

use async_trait::async_trait;
use lily_pgoutput::Lsn;

/// One output row of a pipeline, on its way to one sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Idempotency key: `{pipeline}:{commit_lsn}:{position}`. The same row gets the same id on
    /// every replay (after a crash, a reconnect or `lily dlq replay`), so sinks pass it on as the
    /// receiver's deduplication key (e.g. `webhook-id`).
    pub id: String,
    /// Commit LSN of the transaction the row came from.
    pub commit_lsn: Lsn,
    /// Commit time of that transaction, microseconds since the Unix epoch.
    pub commit_ts_us: i64,
    /// Value of the pipeline's ordering key column; rows with the same key are delivered in
    /// commit order. `None` when the sink declares no key.
    pub key: Option<String>,
    /// The row's payload columns (engine metadata columns, named `_…`, are left out).
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SinkError {
    /// Worth another attempt (timeouts, 429, 5xx, a dropped connection). `retry_after` is the
    /// receiver's own request, and wins over the computed backoff.
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Will fail again however often it is tried (400, 404, 410, a constraint violation): the
    /// record goes to the dead-letter table with this message.
    #[error("{message}")]
    Permanent { message: String },
}

impl SinkError {
    pub fn retryable(message: impl Into<String>) -> Self {
        SinkError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError::Permanent {
            message: message.into(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Retryable { .. })
    }
}

/// A destination. The delivery engine around it owns retries, backoff, rate limits, ordering,
/// the ledger and dead letters; a sink only sends and classifies the outcome.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// The connector type (`webhook`, `metastore`, `log`), for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Most records one [`Sink::deliver`] call takes. Per-message APIs say 1; set-based sinks
    /// (the metastore) take many. A failed multi-record call is retried record by record, so a
    /// permanent failure dead-letters only the record that causes it.
    fn max_batch(&self) -> usize {
        1
    }

    /// Send `records` (at most [`Sink::max_batch`]). `Ok` means all of them were accepted; the
    /// call must be safe to repeat with the same records (the ids make it idempotent).
    async fn deliver(&self, records: &[Record]) -> Result<(), SinkError>;
}
