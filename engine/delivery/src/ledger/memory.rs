//! A ledger store in memory, for tests: the metastore's semantics without a PostgreSQL.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use lily_pgoutput::Lsn;

use super::{LedgerEntry, LedgerError, LedgerStore, Outcome};
use crate::dead_letters::{DeadLetter, LetterFilter};
use crate::sink::Record;

/// Keyed like the tables' unique keys: (pipeline, sink, record id).
type Key = (String, String, String);

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<Key, (Lsn, Outcome)>,
    dead_letters: BTreeMap<Key, DeadLetter>,
    /// The last dead-letter id given out (the table's `bigserial`).
    last_letter: i64,
    group_commits: Vec<usize>,
    fail_writes: u32,
    fail_dead_letters: u32,
    fail_replay_records: u32,
}

impl State {
    fn letter_mut(&mut self, id: i64) -> Option<&mut DeadLetter> {
        self.dead_letters.values_mut().find(|d| d.id == id)
    }
}

/// [`LedgerStore`] in memory, with the conflict rules of the SQL one (a held entry is kept; a
/// second dead letter for a record updates its error and attempts; a replayed letter's entry
/// becomes `delivered`), and injectable failures.
#[derive(Debug, Default)]
pub struct MemoryLedgerStore {
    state: Mutex<State>,
}

impl MemoryLedgerStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory ledger lock")
    }

    /// The pipeline's ledger entries, by sink and record id.
    pub fn entries(&self, pipeline: &str) -> Vec<LedgerEntry> {
        self.state()
            .entries
            .iter()
            .filter(|((p, _, _), _)| p == pipeline)
            .map(|((_, sink, id), (lsn, outcome))| LedgerEntry {
                sink: sink.clone(),
                record_id: id.clone(),
                commit_lsn: *lsn,
                outcome: *outcome,
            })
            .collect()
    }

    /// The outcome the store holds for one record, if any.
    pub fn outcome(&self, pipeline: &str, sink: &str, id: &str) -> Option<Outcome> {
        self.state()
            .entries
            .get(&(pipeline.to_string(), sink.to_string(), id.to_string()))
            .map(|(_, o)| *o)
    }

    /// The pipeline's dead letters, pending and replayed, by sink and record id.
    pub fn dead_letters(&self, pipeline: &str) -> Vec<DeadLetter> {
        self.state()
            .dead_letters
            .values()
            .filter(|d| d.pipeline == pipeline)
            .cloned()
            .collect()
    }

    /// Sizes of the group commits ([`LedgerStore::write`] calls) that landed, in order.
    pub fn group_commits(&self) -> Vec<usize> {
        self.state().group_commits.clone()
    }

    /// Makes the next `n` [`LedgerStore::write`] calls fail, as an unreachable metastore would.
    pub fn fail_writes(&self, n: u32) {
        self.state().fail_writes = n;
    }

    /// Makes the next `n` [`LedgerStore::dead_letter`] calls fail.
    pub fn fail_dead_letters(&self, n: u32) {
        self.state().fail_dead_letters = n;
    }

    /// Makes the next `n` [`LedgerStore::mark_replayed`] and [`LedgerStore::replay_failed`]
    /// calls fail.
    pub fn fail_replay_records(&self, n: u32) {
        self.state().fail_replay_records = n;
    }
}

/// Takes one injected failure if any is left.
fn injected(left: &mut u32, what: &str) -> Result<(), LedgerError> {
    if *left == 0 {
        return Ok(());
    }
    *left -= 1;
    Err(LedgerError::Store(format!("injected failure of {what}")))
}

fn key(pipeline: &str, sink: &str, id: &str) -> Key {
    (pipeline.to_string(), sink.to_string(), id.to_string())
}

#[async_trait]
impl LedgerStore for MemoryLedgerStore {
    async fn load(&self, pipeline: &str) -> Result<HashMap<(String, String), Lsn>, LedgerError> {
        Ok(self
            .state()
            .entries
            .iter()
            .filter(|((p, _, _), _)| p == pipeline)
            .map(|((_, sink, id), (lsn, _))| ((sink.clone(), id.clone()), *lsn))
            .collect())
    }

    async fn write(&self, pipeline: &str, entries: &[LedgerEntry]) -> Result<(), LedgerError> {
        let mut state = self.state();
        injected(&mut state.fail_writes, "a ledger write")?;
        for e in entries {
            state
                .entries
                .entry(key(pipeline, &e.sink, &e.record_id))
                .or_insert((e.commit_lsn, e.outcome));
        }
        state.group_commits.push(entries.len());
        Ok(())
    }

    async fn dead_letter(
        &self,
        pipeline: &str,
        sink: &str,
        record: &Record,
        error: &str,
        attempts: u32,
    ) -> Result<(), LedgerError> {
        let mut state = self.state();
        injected(&mut state.fail_dead_letters, "a dead letter")?;
        let k = key(pipeline, sink, &record.id);
        let now = SystemTime::now();
        let next = state.last_letter + 1;
        let letter = state
            .dead_letters
            .entry(k.clone())
            .and_modify(|d| {
                d.error = error.to_string();
                d.attempts = attempts;
                d.failed_at = now;
                d.replayed_at = None;
            })
            .or_insert_with(|| DeadLetter {
                id: next,
                pipeline: pipeline.to_string(),
                sink: sink.to_string(),
                record: record.clone(),
                error: error.to_string(),
                attempts,
                failed_at: now,
                replayed_at: None,
            });
        if letter.id == next {
            state.last_letter = next;
        }
        state
            .entries
            .entry(k)
            .or_insert((record.commit_lsn, Outcome::DeadLettered));
        Ok(())
    }

    async fn prune(&self, pipeline: &str, confirmed: Lsn) -> Result<u64, LedgerError> {
        let mut state = self.state();
        let before = state.entries.len();
        state
            .entries
            .retain(|(p, _, _), (lsn, _)| p != pipeline || *lsn > confirmed);
        Ok((before - state.entries.len()) as u64)
    }

    async fn list_dead_letters(
        &self,
        filter: &LetterFilter,
    ) -> Result<Vec<DeadLetter>, LedgerError> {
        let mut letters: Vec<DeadLetter> = self
            .state()
            .dead_letters
            .values()
            .filter(|d| filter.pipeline.as_ref().is_none_or(|p| *p == d.pipeline))
            .filter(|d| filter.id.is_none_or(|id| id == d.id))
            .filter(|d| filter.replayed || d.replayed_at.is_none())
            .cloned()
            .collect();
        letters.sort_by_key(|d| d.id);
        Ok(letters)
    }

    async fn mark_replayed(
        &self,
        pipeline: &str,
        sink: &str,
        letter: i64,
        record: &Record,
    ) -> Result<(), LedgerError> {
        let mut state = self.state();
        injected(&mut state.fail_replay_records, "marking a letter replayed")?;
        if let Some(d) = state.letter_mut(letter) {
            d.replayed_at = Some(SystemTime::now());
        }
        state
            .entries
            .entry(key(pipeline, sink, &record.id))
            .and_modify(|(_, outcome)| *outcome = Outcome::Delivered)
            .or_insert((record.commit_lsn, Outcome::Delivered));
        Ok(())
    }

    async fn replay_failed(
        &self,
        letter: i64,
        error: &str,
        attempts: u32,
    ) -> Result<(), LedgerError> {
        let mut state = self.state();
        injected(&mut state.fail_replay_records, "recording a failed replay")?;
        if let Some(d) = state.letter_mut(letter) {
            d.error = error.to_string();
            d.attempts = d.attempts.saturating_add(attempts);
            d.failed_at = SystemTime::now();
        }
        Ok(())
    }
}
