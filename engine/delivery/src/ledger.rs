//! The delivery ledger and the dead-letter table, in the `lily` schema of the metastore.
//!
//! A record's id goes into the ledger once its sink has finished with it (delivered or
//! dead-lettered). After a crash or a reconnect, capture replays from the last confirmed LSN;
//! records the ledger holds are skipped, so side effects are not repeated. Delivered ids are
//! group-committed by one writer task and the batch's acknowledgement does not wait for that
//! write: a delivered record is never lost, only possibly repeated (with the same id) if the
//! process dies before both the write and the confirmation. Waiting would tie the slot's
//! confirmation to the metastore accepting new connections, which it refuses while it shuts
//! down, and a server shutdown waits for that very confirmation. Dead letters are different:
//! they are written before the acknowledgement, or the row would be lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lily_pgoutput::Lsn;
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;

use crate::sink::Record;

/// Errors talking to the metastore about delivery state.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("delivery state in the metastore: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// A lazily (re)connected client.
pub(crate) struct Reconnecting {
    config: tokio_postgres::Config,
    client: Mutex<Option<Arc<Client>>>,
}

impl Reconnecting {
    pub(crate) fn new(config: tokio_postgres::Config) -> Self {
        Reconnecting {
            config,
            client: Mutex::new(None),
        }
    }

    pub(crate) async fn get(&self) -> Result<Arc<Client>, LedgerError> {
        if let Some(c) = self.client.lock().expect("client lock").as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let (client, conn) = self.config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "ledger connection ended");
            }
        });
        // Group-committed writes of thousands of rows can pass the JIT cost threshold;
        // compiling costs more than the insert.
        client.batch_execute("SET jit = off").await?;
        let client = Arc::new(client);
        *self.client.lock().expect("client lock") = Some(client.clone());
        Ok(client)
    }
}

/// What happened to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    DeadLettered,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

struct Entry {
    sink: String,
    id: String,
    lsn: Lsn,
    outcome: Outcome,
}

/// One pipeline's ledger: what is finished, in memory (above the confirmed LSN) and in the
/// metastore.
pub struct Ledger {
    pipeline: String,
    db: Arc<Reconnecting>,
    finished: Mutex<HashMap<(String, String), Lsn>>,
    writer: mpsc::Sender<Entry>,
}

impl Ledger {
    /// Loads what the pipeline finished earlier and starts the group-commit writer.
    pub async fn open(
        pg: tokio_postgres::Config,
        pipeline: &str,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Ledger>, LedgerError> {
        let db = Arc::new(Reconnecting::new(pg));
        let client = db.get().await?;
        let rows = client
            .query(
                "SELECT sink, record_id, commit_lsn::text FROM lily.delivery_ledger WHERE pipeline = $1",
                &[&pipeline],
            )
            .await?;
        let mut finished = HashMap::with_capacity(rows.len());
        for r in rows {
            let lsn: String = r.get(2);
            finished.insert(
                (r.get::<_, String>(0), r.get::<_, String>(1)),
                lsn.parse().unwrap_or(Lsn(0)),
            );
        }
        let (tx, rx) = mpsc::channel(8192);
        let ledger = Arc::new(Ledger {
            pipeline: pipeline.to_string(),
            db,
            finished: Mutex::new(finished),
            writer: tx,
        });
        tokio::spawn(write_loop(ledger.clone(), rx, shutdown));
        Ok(ledger)
    }

    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// Whether `sink` already finished the record `id`.
    pub fn is_finished(&self, sink: &str, id: &str) -> bool {
        self.finished
            .lock()
            .expect("ledger lock")
            .contains_key(&(sink.to_string(), id.to_string()))
    }

    /// Number of records held in memory (those above the last prune).
    pub fn len(&self) -> usize {
        self.finished.lock().expect("ledger lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records the outcome (in memory at once, in the metastore by the writer task).
    pub(crate) async fn finish(&self, sink: &str, record: &Record, outcome: Outcome) {
        self.finished
            .lock()
            .expect("ledger lock")
            .insert((sink.to_string(), record.id.clone()), record.commit_lsn);
        let entry = Entry {
            sink: sink.to_string(),
            id: record.id.clone(),
            lsn: record.commit_lsn,
            outcome,
        };
        // The writer only stops at shutdown; then the batch stays unacknowledged and is
        // replayed, which is what shutdown means.
        let _ = self.writer.send(entry).await;
    }

    /// Writes a dead letter and its ledger entry in one statement, retrying until it lands
    /// (or shutdown): a dead letter must never be lost.
    pub async fn dead_letter(
        &self,
        sink: &str,
        record: &Record,
        error: &str,
        attempts: u32,
        shutdown: &watch::Receiver<bool>,
    ) -> bool {
        let body = serde_json::Value::Object(record.fields.clone());
        let mut wait = Duration::from_millis(100);
        loop {
            let result = async {
                let client = self.db.get().await?;
                client
                    .execute(
                        "WITH d AS (
                            INSERT INTO lily.dead_letters
                                (pipeline, sink, record_id, commit_lsn, commit_ts, order_key,
                                 record, error, attempts)
                            VALUES ($1, $2, $3, $4::text::pg_lsn,
                                    to_timestamp($5::float8 / 1e6), $6, $7, $8, $9)
                            ON CONFLICT (pipeline, sink, record_id) DO UPDATE
                                SET error = EXCLUDED.error, attempts = EXCLUDED.attempts,
                                    failed_at = now(), replayed_at = NULL)
                         INSERT INTO lily.delivery_ledger (pipeline, sink, record_id, commit_lsn, outcome)
                         VALUES ($1, $2, $3, $4::text::pg_lsn, 'dead_lettered')
                         ON CONFLICT DO NOTHING",
                        &[
                            &self.pipeline,
                            &sink,
                            &record.id,
                            &record.commit_lsn.to_string(),
                            &(record.commit_ts_us as f64),
                            &record.key,
                            &body,
                            &error,
                            &(attempts as i32),
                        ],
                    )
                    .await?;
                Ok::<_, LedgerError>(())
            }
            .await;
            match result {
                Ok(()) => {
                    self.finished
                        .lock()
                        .expect("ledger lock")
                        .insert((sink.to_string(), record.id.clone()), record.commit_lsn);
                    return true;
                }
                Err(e) => {
                    tracing::warn!(pipeline = %self.pipeline, sink, error = %e, "writing a dead letter failed; retrying");
                    if *shutdown.borrow() {
                        return false;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Forgets entries at or below `confirmed`: PostgreSQL never sends those transactions again.
    pub async fn prune(&self, confirmed: Lsn) -> Result<u64, LedgerError> {
        self.finished
            .lock()
            .expect("ledger lock")
            .retain(|_, lsn| *lsn > confirmed);
        let client = self.db.get().await?;
        Ok(client
            .execute(
                "DELETE FROM lily.delivery_ledger WHERE pipeline = $1 AND commit_lsn <= $2::text::pg_lsn",
                &[&self.pipeline, &confirmed.to_string()],
            )
            .await?)
    }
}

async fn write_loop(
    ledger: Arc<Ledger>,
    mut rx: mpsc::Receiver<Entry>,
    shutdown: watch::Receiver<bool>,
) {
    let mut pending: Vec<Entry> = Vec::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(e) => pending.push(e),
                None => return,
            }
        }
        while pending.len() < 4096 {
            match rx.try_recv() {
                Ok(e) => pending.push(e),
                Err(_) => break,
            }
        }
        let mut wait = Duration::from_millis(50);
        loop {
            match write(&ledger, &pending).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(pipeline = %ledger.pipeline, error = %e, "ledger write failed; retrying");
                    if *shutdown.borrow() {
                        return;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        pending.clear();
    }
}

async fn write(ledger: &Ledger, entries: &[Entry]) -> Result<(), LedgerError> {
    let client = ledger.db.get().await?;
    let sinks: Vec<&str> = entries.iter().map(|e| e.sink.as_str()).collect();
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let lsns: Vec<String> = entries.iter().map(|e| e.lsn.to_string()).collect();
    let outcomes: Vec<&str> = entries.iter().map(|e| e.outcome.as_str()).collect();
    client
        .execute(
            "INSERT INTO lily.delivery_ledger (pipeline, sink, record_id, commit_lsn, outcome)
             SELECT $1, s, r, l::pg_lsn, o FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS u(s, r, l, o)
             ON CONFLICT DO NOTHING",
            &[&ledger.pipeline, &sinks, &ids, &lsns, &outcomes],
        )
        .await?;
    Ok(())
}
