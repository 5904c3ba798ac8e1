use std::sync::Arc;

use arrow_array::RecordBatch;
use lily_batch::TableSchema;
use lily_pgoutput::{Lsn, PgTimestamp};

/// What one batch carries.
#[derive(Debug, Clone)]
pub enum BatchKind {
    /// Row changes of one table, in commit order.
    Rows {
        table: Arc<TableSchema>,
        records: RecordBatch,
    },
    /// `TRUNCATE` of one or more tables.
    Truncate {
        tables: Vec<Arc<TableSchema>>,
        cascade: bool,
        restart_identity: bool,
    },
    /// The end of a group whose batches were all sent before its last commit was read (the
    /// transaction ended in a truncate or message, or its rows filled batches exactly). It
    /// carries the group's checkpoint so a transactional consumer knows to commit.
    Commit,
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        transactional: bool,
        prefix: String,
        content: bytes::Bytes,
        lsn: Lsn,
    },
}

/// One unit handed to consumers.
///
/// Batches hold whole transactions, except that a transaction larger than the size bound is
/// split into several batches. `checkpoint` is set on the last batch of a group that ends on a
/// transaction boundary: once it and every batch before it are acknowledged, capture confirms
/// that LSN to PostgreSQL. A consumer that applies transactionally commits at each checkpoint.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    /// Position in this process's stream; strictly increasing.
    pub seq: u64,
    pub kind: BatchKind,
    /// Commit LSN of the last transaction the batch touches.
    pub commit_lsn: Lsn,
    pub commit_ts: PgTimestamp,
    /// The end LSN to confirm when this batch closes a group of whole transactions.
    pub checkpoint: Option<Lsn>,
}

impl ChangeBatch {
    pub fn num_rows(&self) -> usize {
        match &self.kind {
            BatchKind::Rows { records, .. } => records.num_rows(),
            _ => 0,
        }
    }
}
