//! A running pipeline: change batches of its source tables → its transform → its sinks, with
//! each batch acknowledged only once every output record is delivered or dead-lettered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::RecordBatch;
use lily_cdc::{BatchKind, Delivery, Subscription};
use lily_delivery::{Completion, Ledger, Record, SinkRunner};
use lily_transform::{Transform, TransformError};
use serde_json::{Map, Value};

use crate::records::{key_text, to_rows, OutputRow, Positions};
use lily_runtime::Shutdown;

/// The name dead letters of rows the transform itself rejected are filed under.
pub const TRANSFORM_STAGE: &str = "(transform)";

/// Most rows the pipeline joins from queued batches into one transform run.
const MAX_GROUP_ROWS: usize = 4096;

/// One sink of a running pipeline.
pub struct PipelineSink {
    pub(crate) runner: SinkRunner,
    pub(crate) key: Option<String>,
    pub(crate) columns: Option<Vec<String>>,
}

impl PipelineSink {
    pub fn runner(&self) -> &SinkRunner {
        &self.runner
    }

    fn record(&self, row: &OutputRow) -> Record {
        let fields: Map<String, Value> = match &self.columns {
            Some(cols) => cols
                .iter()
                .map(|c| {
                    (
                        c.clone(),
                        row.columns.get(c).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect(),
            None => row
                .columns
                .iter()
                .filter(|(k, _)| !k.starts_with('_'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        Record {
            id: row.id.clone(),
            commit_lsn: row.commit_lsn,
            commit_ts_us: row.commit_ts_us,
            key: self.key.as_ref().and_then(|k| key_text(row.columns.get(k))),
            fields,
        }
    }
}

/// A pipeline ready to run.
pub struct Pipeline {
    pub(crate) name: String,
    /// `schema.table` → the name SQL knows it by.
    pub(crate) sources: HashMap<String, String>,
    pub(crate) transform: Transform,
    pub(crate) sinks: Vec<PipelineSink>,
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) positions: Positions,
    /// Highest change LSN seen; a batch starting at or below it is a replay (capture
    /// reconnected), so positions restart with it.
    pub(crate) last_change_lsn: u64,
}

impl Pipeline {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn sinks(&self) -> &[PipelineSink] {
        &self.sinks
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Consumes `sub` until capture ends. On shutdown, capture stops reading and waits a while
    /// for what consumers hold; the pipeline goes on handling that, without retry waits.
    ///
    /// When the pipeline has fallen behind, the batches already queued for the same table are
    /// transformed together (up to [`MAX_GROUP_ROWS`]): the per-batch costs, above all the
    /// reference look-ups in the metastore, are then paid once per group, so a backlog drains
    /// instead of growing. A pipeline that keeps up sees one batch at a time, as captured.
    pub async fn run(mut self, mut sub: Subscription, shutdown: Shutdown) {
        let mut next: Option<Delivery> = None;
        loop {
            let first = match next.take() {
                Some(d) => d,
                None => match sub.recv().await {
                    Some(d) => d,
                    None => break,
                },
            };
            let Some((table, first_records)) = self.rows_of(&first) else {
                first.ack();
                continue;
            };
            let mut group = vec![first];
            let mut rows = first_records.num_rows();
            while rows < MAX_GROUP_ROWS {
                let Some(d) = sub.try_recv() else { break };
                match self.rows_of(&d) {
                    Some((t, r)) if t == table && r.schema() == first_records.schema() => {
                        rows += r.num_rows();
                        group.push(d);
                    }
                    // Another table or a new schema: it starts the next group.
                    Some(_) => {
                        next = Some(d);
                        break;
                    }
                    // Truncates, messages and commit markers carry no rows for a transform.
                    None => d.ack(),
                }
            }
            if !self.handle(&table, group, &shutdown).await {
                break;
            }
        }
        tracing::info!(pipeline = %self.name, "Pipeline stopped.");
    }

    /// The SQL name and rows of a delivery of one of the pipeline's source tables.
    fn rows_of(&self, delivery: &Delivery) -> Option<(String, RecordBatch)> {
        match &delivery.batch.kind {
            BatchKind::Rows { table, records } => self
                .sources
                .get(&table.qualified_name())
                .map(|name| (name.clone(), records.clone())),
            _ => None,
        }
    }

    /// Handles consecutive deliveries of one table as one batch; false when shutdown
    /// interrupted it (the batches stay unacknowledged and are replayed after the restart).
    async fn handle(&mut self, table: &str, group: Vec<Delivery>, shutdown: &Shutdown) -> bool {
        let batches: Vec<RecordBatch> = group
            .iter()
            .filter_map(|d| self.rows_of(d))
            .map(|(_, r)| r)
            .collect();
        let records = if batches.len() == 1 {
            batches[0].clone()
        } else {
            match arrow_select::concat::concat_batches(&batches[0].schema(), &batches) {
                Ok(r) => r,
                Err(e) => {
                    // Same table and schema, so this cannot fail short of a bug; handle the
                    // batches one by one rather than lose them.
                    tracing::error!(pipeline = %self.name, error = %e, "joining batches failed");
                    for d in group {
                        if !Box::pin(self.handle(table, vec![d], shutdown)).await {
                            return false;
                        }
                    }
                    return true;
                }
            }
        };
        let fallback_ts =
            lily_pgoutput::PG_EPOCH_OFFSET_SECS * 1_000_000 + group[0].batch.commit_ts;
        let acks: Vec<_> = group.into_iter().map(|d| d.ack).collect();
        self.note_replay(&records);
        metrics::histogram!("lily_pipeline_group_batches", "pipeline" => self.name.clone())
            .record(acks.len() as f64);
        let started = std::time::Instant::now();
        let Some(output) = self
            .transform_batch(table, &records, fallback_ts, shutdown)
            .await
        else {
            return false;
        };
        metrics::histogram!("lily_transform_seconds", "pipeline" => self.name.clone())
            .record(started.elapsed().as_secs_f64());
        let rows = match to_rows(&self.name, &output, &mut self.positions, fallback_ts) {
            Ok(rows) => rows,
            Err(e) => {
                // The output could not be encoded (a type JSON cannot carry): a bug in the
                // transform, but not a reason to lose the batch silently. Dead-letter its input.
                tracing::error!(pipeline = %self.name, error = %e, "encoding transform output failed");
                self.dead_letter_input(
                    &records,
                    &format!("encoding output: {e}"),
                    fallback_ts,
                    shutdown,
                )
                .await;
                Vec::new()
            }
        };
        metrics::counter!("lily_pipeline_output_rows_total", "pipeline" => self.name.clone())
            .increment(rows.len() as u64);
        let done = Completion::new(rows.len() * self.sinks.len(), move || {
            for ack in acks {
                ack.ack();
            }
        });
        for row in &rows {
            for sink in &self.sinks {
                sink.runner.submit(sink.record(row), done.clone()).await;
            }
        }
        true
    }

    fn note_replay(&mut self, records: &RecordBatch) {
        let Some(col) = records.column_by_name(lily_batch::LSN_COLUMN) else {
            return;
        };
        let lsns = col.as_primitive::<UInt64Type>();
        if lsns.is_empty() {
            return;
        }
        let first = lsns.value(0);
        if first <= self.last_change_lsn {
            tracing::info!(pipeline = %self.name, "Replayed changes: numbering restarts from the checkpoint.");
            self.positions = Positions::default();
        }
        self.last_change_lsn = lsns.values().iter().copied().max().unwrap_or(first);
    }

    /// Runs the transform. A retryable failure (the metastore is unreachable) is retried with
    /// backoff; any other failure is retried row by row, and the rows that fail on their own
    /// are dead-lettered with the error, so one bad row never holds back the rest.
    async fn transform_batch(
        &mut self,
        table: &str,
        records: &RecordBatch,
        fallback_ts: i64,
        shutdown: &Shutdown,
    ) -> Option<Vec<RecordBatch>> {
        match self.run_retrying(table, records, shutdown).await? {
            Ok(out) => Some(out),
            Err(e) => {
                tracing::warn!(pipeline = %self.name, error = %e, rows = records.num_rows(), "transform failed on a batch; isolating rows");
                let mut out = Vec::new();
                for i in 0..records.num_rows() {
                    let one = records.slice(i, 1);
                    match self.run_retrying(table, &one, shutdown).await? {
                        Ok(o) => out.extend(o),
                        Err(e) => {
                            self.dead_letter_input(
                                &one,
                                &format!("transform: {e}"),
                                fallback_ts,
                                shutdown,
                            )
                            .await;
                        }
                    }
                }
                Some(out)
            }
        }
    }

    /// `None` at shutdown; `Some(Err)` for a failure that retrying cannot fix.
    async fn run_retrying(
        &mut self,
        table: &str,
        records: &RecordBatch,
        shutdown: &Shutdown,
    ) -> Option<Result<Vec<RecordBatch>, TransformError>> {
        let mut backoff =
            lily_runtime::Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            match self.transform.run(table, records.clone()).await {
                Ok(out) => return Some(Ok(out)),
                Err(e) if e.is_retryable() => {
                    let wait = backoff.next_wait();
                    tracing::warn!(pipeline = %self.name, error = %e, retry_in = ?wait, "transform needs the metastore; retrying");
                    let s = shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = s.requested() => return None,
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    async fn dead_letter_input(
        &self,
        rows: &RecordBatch,
        error: &str,
        fallback_ts: i64,
        shutdown: &Shutdown,
    ) {
        let lsns = rows
            .column_by_name(lily_batch::COMMIT_LSN_COLUMN)
            .map(|c| c.as_primitive::<UInt64Type>().clone());
        let change_lsns = rows
            .column_by_name(lily_batch::LSN_COLUMN)
            .map(|c| c.as_primitive::<UInt64Type>().clone());
        let objects = match batch_to_objects(rows) {
            Ok(o) => o,
            Err(e) => vec![
                Map::from_iter([("encoding_error".to_string(), Value::String(e))]);
                rows.num_rows()
            ],
        };
        for (i, fields) in objects.into_iter().enumerate() {
            let commit = lsns.as_ref().map(|a| a.value(i)).unwrap_or(0);
            let change = change_lsns.as_ref().map(|a| a.value(i)).unwrap_or(0);
            let record = Record {
                id: format!(
                    "{}:{}:in:{}",
                    self.name,
                    lily_pgoutput::Lsn(commit),
                    lily_pgoutput::Lsn(change)
                ),
                commit_lsn: lily_pgoutput::Lsn(commit),
                commit_ts_us: fallback_ts,
                key: None,
                fields,
            };
            tracing::warn!(pipeline = %self.name, record = %record.id, error, "dead-lettering an input row");
            self.ledger
                .dead_letter(TRANSFORM_STAGE, &record, error, 1, shutdown)
                .await;
        }
    }
}

/// Rows as JSON objects (nulls kept).
pub(crate) fn batch_to_objects(batch: &RecordBatch) -> Result<Vec<Map<String, Value>>, String> {
    lily_batch::json::objects(batch).map_err(|e| e.to_string())
}
