//! The dead-letter table: listing letters, and replaying them through their sinks.
//!
//! A replay goes through the same [`SinkRunner`] as live traffic, with the sink's delivery
//! settings: rate limit, retries with backoff and `Retry-After`, lanes, and per-key order by
//! the letter's stored order key. Its ledger is in replay mode ([`Ledger::for_replay`]): a
//! letter that is delivered is marked replayed with a `delivered` ledger entry; one that fails
//! past its retries (or for good) takes the new error, its attempts grow, and it stays pending
//! rather than becoming a second dead letter.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::task::JoinSet;

use crate::completion::Completion;
use crate::ledger::{until_stored, Ledger, LedgerError, LedgerStore, PgLedgerStore};
use crate::runner::SinkRunner;
use crate::settings::DeliverySettings;
use crate::sink::{Record, Sink};
use lily_runtime::Shutdown;

/// A row of `lily.dead_letters`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The table's id (`lily dlq replay --id`).
    pub id: i64,
    pub pipeline: String,
    pub sink: String,
    /// The record as its sink was given it; `key` is the stored order key.
    pub record: Record,
    /// The last failure.
    pub error: String,
    /// Attempts so far, over the delivery and every replay since.
    pub attempts: u32,
    /// When it last failed.
    pub failed_at: SystemTime,
    /// When a replay delivered it; `None` while it is pending.
    pub replayed_at: Option<SystemTime>,
}

impl DeadLetter {
    /// [`DeadLetter::failed_at`] in UTC to the second, as `lily dlq list` prints it.
    pub fn failed_at_utc(&self) -> String {
        chrono::DateTime::<chrono::Utc>::from(self.failed_at)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
}

/// Which dead letters to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LetterFilter {
    /// Only this pipeline's.
    pub pipeline: Option<String>,
    /// Only the letter with this id.
    pub id: Option<i64>,
    /// Replayed letters too, not only pending ones.
    pub replayed: bool,
}

/// Where a letter's replay goes: the sink as the pipeline files now build it, and its
/// `[sink.delivery]` settings.
#[derive(Clone)]
pub struct ReplayTarget {
    pub sink: Arc<dyn Sink>,
    pub settings: DeliverySettings,
}

/// What became of one letter in a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// The sink took it; it is marked replayed and its record recorded `delivered`.
    Delivered,
    /// It failed past its retries or for good (`attempts` in this replay); it has the new
    /// error and attempts and stays pending.
    Failed { error: String, attempts: u32 },
    /// Its pipeline has no such sink now; not sent.
    NoSink,
    /// Shutdown came before its outcome was recorded; it stays pending as it was (it may have
    /// been delivered: the next replay sends it again with the same id).
    Interrupted,
}

/// The dead-letter table of a store.
pub struct DeadLetters {
    store: Arc<dyn LedgerStore>,
}

impl DeadLetters {
    /// The table in the metastore.
    pub fn open(pg: lily_pg::ConnectionConfig) -> DeadLetters {
        Self::with_store(Arc::new(PgLedgerStore::new(pg)))
    }

    /// The table in any store, such as [`crate::MemoryLedgerStore`] in tests.
    pub fn with_store(store: Arc<dyn LedgerStore>) -> DeadLetters {
        DeadLetters { store }
    }

    /// The letters `filter` selects, by id.
    pub async fn list(&self, filter: &LetterFilter) -> Result<Vec<DeadLetter>, LedgerError> {
        self.store.list_dead_letters(filter).await
    }

    /// Sends `letters` (pending ones, as [`DeadLetters::list`] gives them) again, each through
    /// the runner of the [`ReplayTarget`] `target` gives for its pipeline and sink, and returns
    /// what became of each, in the order of `letters`. Every sink's runner runs at once, as in
    /// a pipeline; letters are submitted by id, so letters with the same order key go in the
    /// order they failed. After `shutdown` no record waits for a retry; the letters left are
    /// [`Replayed::Interrupted`].
    pub async fn replay(
        &self,
        letters: &[DeadLetter],
        target: impl Fn(&str, &str) -> Option<ReplayTarget>,
        shutdown: Shutdown,
    ) -> Vec<Replayed> {
        let mut order: Vec<&DeadLetter> = letters.iter().collect();
        order.sort_by_key(|l| l.id);
        order.dedup_by_key(|l| l.id);

        let mut targets: HashMap<(&str, &str), Option<ReplayTarget>> = HashMap::new();
        for l in &order {
            targets
                .entry((l.pipeline.as_str(), l.sink.as_str()))
                .or_insert_with(|| target(&l.pipeline, &l.sink));
        }
        // One book (and ledger) per pipeline, as a pipeline has one ledger for its sinks.
        let mut ids: HashMap<&str, HashMap<(String, String), i64>> = HashMap::new();
        for l in &order {
            if matches!(
                targets.get(&(l.pipeline.as_str(), l.sink.as_str())),
                Some(Some(_))
            ) {
                ids.entry(&l.pipeline)
                    .or_default()
                    .insert((l.sink.clone(), l.record.id.clone()), l.id);
            }
        }
        let books: HashMap<&str, Arc<ReplayBook>> = ids
            .into_iter()
            .map(|(pipeline, letters)| {
                let book = ReplayBook {
                    pipeline: pipeline.to_string(),
                    store: self.store.clone(),
                    letters,
                    outcomes: Mutex::new(HashMap::new()),
                    shutdown: shutdown.clone(),
                };
                (pipeline, Arc::new(book))
            })
            .collect();
        let ledgers: HashMap<&str, Arc<Ledger>> = books
            .iter()
            .map(|(p, b)| (*p, Ledger::for_replay(b.clone())))
            .collect();

        let mut tasks = JoinSet::new();
        let mut runners: HashMap<(&str, &str), SinkRunner> = HashMap::new();
        for (&(pipeline, sink), t) in targets.iter_mut() {
            if let Some(t) = t.take() {
                let runner = SinkRunner::start(
                    sink,
                    t.sink,
                    t.settings,
                    ledgers[pipeline].clone(),
                    shutdown.clone(),
                    &mut tasks,
                );
                runners.insert((pipeline, sink), runner);
            }
        }
        let sent: Vec<&DeadLetter> = order
            .into_iter()
            .filter(|l| runners.contains_key(&(l.pipeline.as_str(), l.sink.as_str())))
            .collect();
        // Nobody waits for this count but the lanes' end: after shutdown some records stay
        // unfinished.
        let done = Completion::new(sent.len(), || {});
        for l in &sent {
            let runner = &runners[&(l.pipeline.as_str(), l.sink.as_str())];
            runner.submit(l.record.clone(), done.clone()).await;
        }
        // Dropping the runners closes the lanes: they deliver what is queued, then end.
        drop(runners);
        while let Some(ended) = tasks.join_next().await {
            if let Err(e) = ended {
                tracing::error!(error = %e, "A replay lane ended abnormally.");
            }
        }

        let sent: HashSet<i64> = sent.iter().map(|l| l.id).collect();
        letters
            .iter()
            .map(|l| {
                if !sent.contains(&l.id) {
                    return Replayed::NoSink;
                }
                books
                    .get(l.pipeline.as_str())
                    .and_then(|b| b.take(l.id))
                    .unwrap_or(Replayed::Interrupted)
            })
            .collect()
    }
}

/// One pipeline's letters in a replay, and what became of each: the replay-mode side of
/// [`Ledger`].
pub(crate) struct ReplayBook {
    pipeline: String,
    store: Arc<dyn LedgerStore>,
    /// (sink, record id) to letter id.
    letters: HashMap<(String, String), i64>,
    outcomes: Mutex<HashMap<i64, Replayed>>,
    /// For recording a delivery, which the runner finishes without a shutdown signal.
    shutdown: Shutdown,
}

impl ReplayBook {
    pub(crate) fn pipeline(&self) -> &str {
        &self.pipeline
    }

    pub(crate) fn store(&self) -> &Arc<dyn LedgerStore> {
        &self.store
    }

    fn letter(&self, sink: &str, record: &Record) -> Option<i64> {
        let letter = self
            .letters
            .get(&(sink.to_string(), record.id.clone()))
            .copied();
        if letter.is_none() {
            // Only this book's letters are submitted to its runners.
            tracing::error!(pipeline = %self.pipeline, sink, record = %record.id, "A replayed record has no dead letter.");
        }
        letter
    }

    fn set(&self, letter: i64, outcome: Replayed) {
        self.outcomes
            .lock()
            .expect("replay book lock")
            .insert(letter, outcome);
    }

    fn take(&self, letter: i64) -> Option<Replayed> {
        self.outcomes
            .lock()
            .expect("replay book lock")
            .remove(&letter)
    }

    /// The sink took `record`: marks its letter replayed, retrying until that lands (or
    /// shutdown, which leaves the letter pending).
    pub(crate) async fn delivered(&self, sink: &str, record: &Record) {
        let Some(letter) = self.letter(sink, record) else {
            return;
        };
        let marked = until_stored(
            &self.pipeline,
            sink,
            "marking a dead letter replayed",
            &self.shutdown,
            || {
                self.store
                    .mark_replayed(&self.pipeline, sink, letter, record)
            },
        )
        .await;
        if marked {
            self.set(letter, Replayed::Delivered);
        }
    }

    /// `record` failed again: its letter takes `error` and `attempts`, retrying until that
    /// lands. False when shutdown came first, as for a live dead letter.
    pub(crate) async fn failed(
        &self,
        sink: &str,
        record: &Record,
        error: &str,
        attempts: u32,
        shutdown: &Shutdown,
    ) -> bool {
        let Some(letter) = self.letter(sink, record) else {
            return true;
        };
        let recorded = until_stored(
            &self.pipeline,
            sink,
            "recording a failed replay",
            shutdown,
            || self.store.replay_failed(letter, error, attempts),
        )
        .await;
        if recorded {
            let error = error.to_string();
            self.set(letter, Replayed::Failed { error, attempts });
        }
        recorded
    }
}

#[cfg(test)]
#[path = "dead_letters_tests.rs"]
mod tests;
