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
//!
//! [`Ledger`] keeps the in-memory view, the group commit and the retry policy; a
//! [`LedgerStore`] only persists. [`Ledger::open`] uses the metastore; [`Ledger::with_store`]
//! takes any store, such as [`MemoryLedgerStore`] in tests. A replay of dead letters
//! (`crate::dead_letters`) runs the same runner on a ledger in replay mode, which records each
//! outcome on the letter itself instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lily_pgoutput::Lsn;
use tokio::sync::mpsc;

use crate::dead_letters::{DeadLetter, LetterFilter, ReplayBook};
use crate::sink::Record;
use lily_runtime::Shutdown;

mod memory;
mod postgres;

pub use memory::MemoryLedgerStore;
pub(crate) use postgres::PgLedgerStore;

/// Errors talking to the metastore about delivery state.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("delivery state in the metastore: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("delivery state in the metastore: {0}")]
    Connect(#[from] lily_pg::PgError),
    /// A store other than the metastore failed (the in-memory one's injected failures).
    #[error("delivery state: {0}")]
    Store(String),
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

/// One row of the ledger: `sink` finished the record `record_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub sink: String,
    pub record_id: String,
    pub commit_lsn: Lsn,
    pub outcome: Outcome,
}

/// Where a pipeline's ledger entries and dead letters persist. Calls are not retried by the
/// store; [`Ledger`] decides when to retry.
#[async_trait]
pub trait LedgerStore: Send + Sync + 'static {
    /// Everything `pipeline` finished and has not pruned: (sink, record id) to commit LSN.
    async fn load(&self, pipeline: &str) -> Result<HashMap<(String, String), Lsn>, LedgerError>;

    /// One group commit. Entries the store already holds are left as they are.
    async fn write(&self, pipeline: &str, entries: &[LedgerEntry]) -> Result<(), LedgerError>;

    /// The dead letter and its `dead_lettered` ledger entry, both or neither. A dead letter the
    /// store already holds for the record gets the new `error` and `attempts`.
    async fn dead_letter(
        &self,
        pipeline: &str,
        sink: &str,
        record: &Record,
        error: &str,
        attempts: u32,
    ) -> Result<(), LedgerError>;

    /// Deletes the pipeline's ledger entries at or below `confirmed` (dead letters stay);
    /// returns how many went.
    async fn prune(&self, pipeline: &str, confirmed: Lsn) -> Result<u64, LedgerError>;

    /// The dead letters `filter` selects, by id.
    async fn list_dead_letters(
        &self,
        filter: &LetterFilter,
    ) -> Result<Vec<DeadLetter>, LedgerError>;

    /// A replay delivered dead letter `letter` (of `pipeline` and `sink`, holding `record`):
    /// marks it replayed and records the record `delivered`, both or neither. The ledger entry
    /// the dead letter left (`dead_lettered`) becomes `delivered`.
    async fn mark_replayed(
        &self,
        pipeline: &str,
        sink: &str,
        letter: i64,
        record: &Record,
    ) -> Result<(), LedgerError>;

    /// A replay of dead letter `letter` failed for good: it takes `error`, adds `attempts` (this
    /// replay's) to its count and its failure time becomes now. It stays pending.
    async fn replay_failed(
        &self,
        letter: i64,
        error: &str,
        attempts: u32,
    ) -> Result<(), LedgerError>;
}

/// One pipeline's ledger: what is finished, in memory (above the confirmed LSN) and in the
/// store.
pub struct Ledger {
    pipeline: String,
    store: Arc<dyn LedgerStore>,
    finished: Mutex<HashMap<(String, String), Lsn>>,
    mode: Mode,
}

/// Where outcomes go besides the in-memory view.
enum Mode {
    /// Live traffic: delivered ids to the group-commit writer, failures to new dead letters.
    Live { writer: mpsc::Sender<LedgerEntry> },
    /// `lily dlq replay`: every outcome onto the letter replayed, before its record counts as
    /// finished, so the caller can report it.
    Replay(Arc<ReplayBook>),
}

impl Ledger {
    /// Loads what the pipeline finished earlier from the metastore and starts the group-commit
    /// writer.
    pub async fn open(
        pg: lily_pg::ConnectionConfig,
        pipeline: &str,
        shutdown: Shutdown,
    ) -> Result<Arc<Ledger>, LedgerError> {
        Self::with_store(
            Arc::new(postgres::PgLedgerStore::new(pg)),
            pipeline,
            shutdown,
        )
        .await
    }

    /// [`Ledger::open`] on any store.
    pub async fn with_store(
        store: Arc<dyn LedgerStore>,
        pipeline: &str,
        shutdown: Shutdown,
    ) -> Result<Arc<Ledger>, LedgerError> {
        let finished = store.load(pipeline).await?;
        let (tx, rx) = mpsc::channel(8192);
        // The writer holds the store, not the ledger, so it ends (after writing what is
        // queued) once the last handle of the ledger is dropped.
        tokio::spawn(write_loop(
            store.clone(),
            pipeline.to_string(),
            rx,
            shutdown,
        ));
        Ok(Arc::new(Ledger {
            pipeline: pipeline.to_string(),
            store,
            finished: Mutex::new(finished),
            mode: Mode::Live { writer: tx },
        }))
    }

    /// A ledger for replaying `book`'s letters (of one pipeline). It starts empty, so no
    /// letter is skipped for the `dead_lettered` entry it left, and it has no writer task: each
    /// outcome is written by the lane that reached it.
    pub(crate) fn for_replay(book: Arc<ReplayBook>) -> Arc<Ledger> {
        Arc::new(Ledger {
            pipeline: book.pipeline().to_string(),
            store: book.store().clone(),
            finished: Mutex::new(HashMap::new()),
            mode: Mode::Replay(book),
        })
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

    /// Records the outcome (in memory at once, in the store by the writer task; in replay
    /// mode on the letter, before returning).
    pub(crate) async fn finish(&self, sink: &str, record: &Record, outcome: Outcome) {
        self.finished
            .lock()
            .expect("ledger lock")
            .insert((sink.to_string(), record.id.clone()), record.commit_lsn);
        match &self.mode {
            Mode::Live { writer } => {
                let entry = LedgerEntry {
                    sink: sink.to_string(),
                    record_id: record.id.clone(),
                    commit_lsn: record.commit_lsn,
                    outcome,
                };
                // The writer only stops at shutdown; then the batch stays unacknowledged and
                // is replayed, which is what shutdown means.
                let _ = writer.send(entry).await;
            }
            // The runner finishes only deliveries this way; failures go to `dead_letter`.
            Mode::Replay(book) => book.delivered(sink, record).await,
        }
    }

    /// Writes a dead letter and its ledger entry together, retrying until it lands (or
    /// shutdown): a dead letter must never be lost. In replay mode the letter already exists:
    /// it takes the new error and attempts instead.
    pub async fn dead_letter(
        &self,
        sink: &str,
        record: &Record,
        error: &str,
        attempts: u32,
        shutdown: &Shutdown,
    ) -> bool {
        let landed = match &self.mode {
            Mode::Live { .. } => {
                until_stored(
                    &self.pipeline,
                    sink,
                    "writing a dead letter",
                    shutdown,
                    || {
                        self.store
                            .dead_letter(&self.pipeline, sink, record, error, attempts)
                    },
                )
                .await
            }
            Mode::Replay(book) => book.failed(sink, record, error, attempts, shutdown).await,
        };
        if landed {
            self.finished
                .lock()
                .expect("ledger lock")
                .insert((sink.to_string(), record.id.clone()), record.commit_lsn);
        }
        landed
    }

    /// Forgets entries at or below `confirmed`: PostgreSQL never sends those transactions again.
    pub async fn prune(&self, confirmed: Lsn) -> Result<u64, LedgerError> {
        self.finished
            .lock()
            .expect("ledger lock")
            .retain(|_, lsn| *lsn > confirmed);
        self.store.prune(&self.pipeline, confirmed).await
    }
}

/// Runs `write` until it succeeds (true) or, after a failure, shutdown has come (false).
pub(crate) async fn until_stored<F, Fut>(
    pipeline: &str,
    sink: &str,
    what: &str,
    shutdown: &Shutdown,
    mut write: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), LedgerError>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(pipeline = %pipeline, sink, error = %e, "{what} failed; retrying");
                // The wait ends early at shutdown: what is not stored stays pending.
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.requested() => return false,
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn write_loop(
    store: Arc<dyn LedgerStore>,
    pipeline: String,
    mut rx: mpsc::Receiver<LedgerEntry>,
    shutdown: Shutdown,
) {
    let mut pending: Vec<LedgerEntry> = Vec::new();
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
            match store.write(&pipeline, &pending).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(pipeline = %pipeline, error = %e, "ledger write failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.requested() => return,
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use lily_runtime::ShutdownTrigger;

    use super::*;

    fn record(n: u64) -> Record {
        Record {
            id: format!("p:{n}"),
            commit_lsn: Lsn(n),
            commit_ts_us: 0,
            key: None,
            fields: serde_json::Map::new(),
        }
    }

    fn entry(sink: &str, n: u64, outcome: Outcome) -> LedgerEntry {
        LedgerEntry {
            sink: sink.to_string(),
            record_id: format!("p:{n}"),
            commit_lsn: Lsn(n),
            outcome,
        }
    }

    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn finished_records_are_group_committed() {
        let store = Arc::new(MemoryLedgerStore::new());
        let (_stop, shutdown) = ShutdownTrigger::new();
        let ledger = Ledger::with_store(store.clone(), "p", shutdown)
            .await
            .unwrap();
        // Ten in a row without yielding: the writer finds them all queued and writes one group.
        for n in 1..=10 {
            ledger.finish("s", &record(n), Outcome::Delivered).await;
        }
        assert_eq!(ledger.len(), 10);
        eventually("the group commit", || store.entries("p").len() == 10).await;
        assert_eq!(store.group_commits(), vec![10]);
        assert_eq!(store.entries("p")[0], entry("s", 1, Outcome::Delivered));
    }

    #[tokio::test]
    async fn a_failed_group_commit_is_retried() {
        let store = Arc::new(MemoryLedgerStore::new());
        store.fail_writes(2);
        let (_stop, shutdown) = ShutdownTrigger::new();
        let ledger = Ledger::with_store(store.clone(), "p", shutdown)
            .await
            .unwrap();
        ledger.finish("s", &record(1), Outcome::Delivered).await;
        // In memory at once, whatever the store does.
        assert!(ledger.is_finished("s", "p:1"));
        eventually("the retried write", || store.entries("p").len() == 1).await;
        assert_eq!(store.group_commits(), vec![1]);
    }

    #[tokio::test]
    async fn open_loads_only_its_pipeline() {
        let store = Arc::new(MemoryLedgerStore::new());
        store
            .write(
                "p",
                &[
                    entry("s", 1, Outcome::Delivered),
                    entry("t", 2, Outcome::DeadLettered),
                ],
            )
            .await
            .unwrap();
        store
            .write("q", &[entry("s", 3, Outcome::Delivered)])
            .await
            .unwrap();
        let (_stop, shutdown) = ShutdownTrigger::new();
        let ledger = Ledger::with_store(store.clone(), "p", shutdown)
            .await
            .unwrap();
        assert_eq!(ledger.pipeline(), "p");
        assert_eq!(ledger.len(), 2);
        assert!(ledger.is_finished("s", "p:1"));
        assert!(ledger.is_finished("t", "p:2"));
        assert!(!ledger.is_finished("s", "p:2"));
        assert!(!ledger.is_finished("s", "p:3"));
    }

    #[tokio::test]
    async fn a_held_entry_is_kept_on_conflict() {
        let store = MemoryLedgerStore::new();
        store
            .write("p", &[entry("s", 1, Outcome::DeadLettered)])
            .await
            .unwrap();
        store
            .write("p", &[entry("s", 1, Outcome::Delivered)])
            .await
            .unwrap();
        assert_eq!(store.outcome("p", "s", "p:1"), Some(Outcome::DeadLettered));
        assert_eq!(store.group_commits(), vec![1, 1]);
    }

    #[tokio::test]
    async fn prune_forgets_entries_up_to_the_confirmed_lsn() {
        let store = Arc::new(MemoryLedgerStore::new());
        let (_stop, shutdown) = ShutdownTrigger::new();
        let ledger = Ledger::with_store(store.clone(), "p", shutdown.clone())
            .await
            .unwrap();
        let other = Ledger::with_store(store.clone(), "q", shutdown.clone())
            .await
            .unwrap();
        for n in 1..=4 {
            ledger.finish("s", &record(n), Outcome::Delivered).await;
        }
        other.finish("s", &record(1), Outcome::Delivered).await;
        assert!(
            ledger
                .dead_letter("s", &record(2), "boom", 1, &shutdown)
                .await
        );
        eventually("the writes", || {
            store.entries("p").len() == 4 && store.entries("q").len() == 1
        })
        .await;

        assert_eq!(ledger.prune(Lsn(2)).await.unwrap(), 2);
        assert_eq!(ledger.len(), 2);
        assert!(!ledger.is_finished("s", "p:2"));
        assert!(ledger.is_finished("s", "p:3"));
        let left: Vec<String> = store
            .entries("p")
            .into_iter()
            .map(|e| e.record_id)
            .collect();
        assert_eq!(left, vec!["p:3", "p:4"]);
        // Other pipelines and the dead letters stay.
        assert_eq!(store.entries("q").len(), 1);
        assert_eq!(store.dead_letters("p").len(), 1);
    }

    #[tokio::test]
    async fn a_second_dead_letter_updates_error_and_attempts() {
        let store = Arc::new(MemoryLedgerStore::new());
        let (_stop, shutdown) = ShutdownTrigger::new();
        let ledger = Ledger::with_store(store.clone(), "p", shutdown.clone())
            .await
            .unwrap();
        assert!(
            ledger
                .dead_letter("s", &record(1), "first", 3, &shutdown)
                .await
        );
        assert!(
            ledger
                .dead_letter("s", &record(1), "second", 5, &shutdown)
                .await
        );
        let dead = store.dead_letters("p");
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].error.as_str(), dead[0].attempts), ("second", 5));
        assert_eq!(store.outcome("p", "s", "p:1"), Some(Outcome::DeadLettered));
    }

    #[tokio::test]
    async fn a_dead_letter_gives_up_only_at_shutdown() {
        let store = Arc::new(MemoryLedgerStore::new());
        store.fail_dead_letters(u32::MAX);
        let (stop, shutdown) = ShutdownTrigger::new();
        let ledger = Ledger::with_store(store.clone(), "p", shutdown.clone())
            .await
            .unwrap();
        stop.trigger();
        assert!(
            !ledger
                .dead_letter("s", &record(1), "boom", 1, &shutdown)
                .await
        );
        assert!(!ledger.is_finished("s", "p:1"));
        assert!(store.dead_letters("p").is_empty());
    }
}
