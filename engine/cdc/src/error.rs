use lily_replication::ReplicationError;

/// Why capture stopped.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("cannot turn changes of {table} into a batch: {source}")]
    Batch {
        table: String,
        #[source]
        source: lily_batch::BatchError,
    },
    #[error("change for relation {0} arrived before its Relation message")]
    UnknownRelation(u32),
    #[error("consumer {0:?} stopped taking batches; capture cannot confirm past its position")]
    ConsumerGone(String),
    #[error("invalid capture configuration: {0}")]
    Config(String),
}

impl CaptureError {
    pub fn is_retryable(&self) -> bool {
        match self {
            CaptureError::Replication(e) => e.is_retryable(),
            _ => false,
        }
    }
}
