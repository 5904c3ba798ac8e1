//! Turns decoded pgoutput messages into batches.
//!
//! Rows go into one builder per table. A group of batches closes on a transaction boundary,
//! when no further frame is already buffered, or when the size or latency bound is reached, so
//! back-to-back small transactions share a batch and a quiet stream is sent at once. A single
//! transaction larger than the bounds is split: the rows of transactions already committed go
//! out first with the group's checkpoint, the open transaction's rows follow without one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lily_batch::{BatchBuilder, RowMeta, TableSchema};
use lily_pgoutput::{Lsn, Message, PgTimestamp, Type};

use crate::error::CaptureError;
use crate::event::BatchKind;

/// A batch ready to be numbered and sent.
pub(crate) struct Emit {
    pub kind: BatchKind,
    pub commit_lsn: Lsn,
    pub commit_ts: PgTimestamp,
    pub checkpoint: Option<Lsn>,
}

/// A checkpoint with no batch to carry it (a transaction that touched no published rows).
pub(crate) struct BareCheckpoint {
    pub lsn: Lsn,
    pub commit_ts: PgTimestamp,
}

struct Txn {
    xid: u32,
    commit_lsn: Lsn,
    commit_ts: PgTimestamp,
}

struct Pending {
    builder: BatchBuilder,
    /// Rows belonging to transactions that have committed.
    committed: usize,
}

pub(crate) struct Limits {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_latency: Duration,
    /// How long a finished group waits for the next transaction before it is sent, when no
    /// frame is buffered. Zero sends at once; a little lets a fast stream of small
    /// transactions share batches.
    pub linger: Duration,
}

pub(crate) struct Assembler {
    limits: Limits,
    relations: HashMap<u32, Arc<TableSchema>>,
    types: HashMap<u32, Type>,
    pending: HashMap<u32, Pending>,
    /// Tables with pending rows, in order of first appearance in the group.
    order: Vec<u32>,
    rows: usize,
    first_row_at: Option<Instant>,
    txn: Option<Txn>,
    /// End LSN and time of the last commit in the open group.
    group_end: Option<(Lsn, Lsn, PgTimestamp)>,
    /// When the group's first transaction committed (start of the linger).
    first_commit_at: Option<Instant>,
    /// A closed group's checkpoint that no batch carries.
    bare: Option<BareCheckpoint>,
    /// Batches of the open group already sent without its checkpoint.
    group_sent: bool,
}

impl Assembler {
    pub fn new(limits: Limits) -> Self {
        Assembler {
            limits,
            relations: HashMap::new(),
            types: HashMap::new(),
            pending: HashMap::new(),
            order: Vec::new(),
            rows: 0,
            first_row_at: None,
            txn: None,
            group_end: None,
            first_commit_at: None,
            bare: None,
            group_sent: false,
        }
    }

    pub fn has_bare(&self) -> bool {
        self.bare.is_some()
    }

    /// A checkpoint left by a group with no rows; the caller registers it.
    pub fn take_bare(&mut self) -> Option<BareCheckpoint> {
        self.bare.take()
    }

    /// A fresh session replays from a transaction boundary; anything half-built is dropped
    /// (it was never sent, so it will be sent again) and relations are re-announced.
    pub fn reset(&mut self) {
        self.pending.clear();
        self.order.clear();
        self.rows = 0;
        self.first_row_at = None;
        self.txn = None;
        self.group_end = None;
        self.first_commit_at = None;
        self.bare = None;
        self.group_sent = false;
        self.relations.clear();
    }

    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    pub fn has_pending(&self) -> bool {
        self.rows > 0 || self.group_end.is_some()
    }

    /// When the latency bound forces a flush, if rows are waiting.
    pub fn deadline(&self) -> Option<Instant> {
        let latency = self.first_row_at.map(|t| t + self.limits.max_latency);
        // The linger applies between transactions only; an open one closes on its commit.
        let linger = match self.txn {
            None => self.first_commit_at.map(|t| t + self.limits.linger),
            Some(_) => None,
        };
        match (latency, linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn bytes(&self) -> usize {
        self.pending
            .values()
            .map(|p| p.builder.approx_bytes())
            .sum()
    }

    fn over_bounds(&self) -> bool {
        self.rows >= self.limits.max_rows || self.bytes() >= self.limits.max_bytes
    }

    /// Handles one message; batches that must go out now are appended to `out`.
    pub fn on_message(
        &mut self,
        wal_start: Lsn,
        msg: Message,
        out: &mut Vec<Emit>,
    ) -> Result<(), CaptureError> {
        match msg {
            Message::Begin(b) => {
                self.txn = Some(Txn {
                    xid: b.xid,
                    commit_lsn: b.final_lsn,
                    commit_ts: b.commit_ts,
                });
            }
            Message::Commit(c) => {
                self.txn = None;
                for p in self.pending.values_mut() {
                    p.committed = p.builder.len();
                }
                self.group_end = Some((c.commit_lsn, c.end_lsn, c.commit_ts));
                // A group of commits without rows still has to close in time.
                let now = Instant::now();
                self.first_row_at.get_or_insert(now);
                self.first_commit_at.get_or_insert(now);
                metrics::gauge!("lily_replication_lag_seconds")
                    .set((crate::ack::now_pg_micros() - c.commit_ts).max(0) as f64 / 1e6);
            }
            Message::Origin(_) => {}
            Message::Type(t) => {
                self.types.insert(t.id, t);
            }
            Message::Relation(r) => {
                // With publish_via_partition_root the root's Relation is sent again for every
                // partition first touched in a session; an unchanged shape changes nothing.
                if self.relations.get(&r.id).is_some_and(|s| same_shape(s, &r)) {
                    return Ok(());
                }
                let schema = TableSchema::from_relation(&r, &self.types).map_err(|source| {
                    CaptureError::Batch {
                        table: format!("{}.{}", r.namespace, r.name),
                        source,
                    }
                })?;
                if self.pending.contains_key(&r.id) {
                    // The table's shape changed under pending rows: send them with the old shape.
                    self.flush(false, out);
                }
                tracing::debug!(table = %schema.qualified_name(), columns = schema.columns.len(), "Relation.");
                self.relations.insert(r.id, Arc::new(schema));
            }
            Message::Insert(i) => {
                let meta = self.row_meta(wal_start)?;
                let p = self.pending_for(i.relation_id)?;
                p.builder
                    .push_insert(&meta, &i.new)
                    .map_err(|e| batch_err(&p.builder, e))?;
                self.row_added(out);
            }
            Message::Update(u) => {
                let meta = self.row_meta(wal_start)?;
                let p = self.pending_for(u.relation_id)?;
                p.builder
                    .push_update(&meta, u.old.as_ref(), &u.new)
                    .map_err(|e| batch_err(&p.builder, e))?;
                self.row_added(out);
            }
            Message::Delete(d) => {
                let meta = self.row_meta(wal_start)?;
                let p = self.pending_for(d.relation_id)?;
                p.builder
                    .push_delete(&meta, &d.old)
                    .map_err(|e| batch_err(&p.builder, e))?;
                self.row_added(out);
            }
            Message::Truncate(t) => {
                let mut tables = Vec::with_capacity(t.relation_ids.len());
                for id in &t.relation_ids {
                    tables.push(
                        self.relations
                            .get(id)
                            .cloned()
                            .ok_or(CaptureError::UnknownRelation(*id))?,
                    );
                }
                self.flush(false, out);
                let (commit_lsn, commit_ts) = self.current_commit();
                out.push(Emit {
                    kind: BatchKind::Truncate {
                        tables,
                        cascade: t.cascade,
                        restart_identity: t.restart_identity,
                    },
                    commit_lsn,
                    commit_ts,
                    checkpoint: None,
                });
                self.group_sent = true;
            }
            Message::Message(m) => {
                self.flush(false, out);
                let (commit_lsn, commit_ts) = self.current_commit();
                out.push(Emit {
                    kind: BatchKind::Message {
                        transactional: m.transactional,
                        prefix: m.prefix,
                        content: m.content,
                        lsn: m.lsn,
                    },
                    commit_lsn,
                    commit_ts,
                    checkpoint: None,
                });
                self.group_sent = true;
            }
        }
        Ok(())
    }

    fn current_commit(&self) -> (Lsn, PgTimestamp) {
        match (&self.txn, &self.group_end) {
            (Some(t), _) => (t.commit_lsn, t.commit_ts),
            (None, Some((commit, _, ts))) => (*commit, *ts),
            (None, None) => (Lsn::ZERO, 0),
        }
    }

    fn row_meta(&self, lsn: Lsn) -> Result<RowMeta, CaptureError> {
        let txn = self.txn.as_ref().ok_or_else(|| {
            CaptureError::Replication(lily_replication::ReplicationError::Protocol(
                "row change outside a transaction".into(),
            ))
        })?;
        Ok(RowMeta {
            lsn,
            commit_lsn: txn.commit_lsn,
            commit_ts: txn.commit_ts,
            xid: txn.xid,
        })
    }

    fn pending_for(&mut self, relation_id: u32) -> Result<&mut Pending, CaptureError> {
        if !self.pending.contains_key(&relation_id) {
            let schema = self
                .relations
                .get(&relation_id)
                .cloned()
                .ok_or(CaptureError::UnknownRelation(relation_id))?;
            self.order.push(relation_id);
            self.pending.insert(
                relation_id,
                Pending {
                    builder: BatchBuilder::new(schema),
                    committed: 0,
                },
            );
        }
        Ok(self.pending.get_mut(&relation_id).expect("inserted above"))
    }

    fn row_added(&mut self, out: &mut Vec<Emit>) {
        self.rows += 1;
        if self.first_row_at.is_none() {
            self.first_row_at = Some(Instant::now());
        }
        // Checking bytes walks the builders; every 64 rows is often enough.
        if self.rows >= self.limits.max_rows || (self.rows.is_multiple_of(64) && self.over_bounds())
        {
            self.flush(false, out);
        }
    }

    /// Called between frames: closes the group if it ended on a commit and nothing more is
    /// waiting, or a bound is reached. Returns a checkpoint that no batch carries, if any.
    pub fn maybe_close(&mut self, more_buffered: bool, out: &mut Vec<Emit>) {
        if self.txn.is_some() || self.group_end.is_none() {
            return;
        }
        let due = self.deadline().is_some_and(|d| Instant::now() >= d);
        let idle_now = !more_buffered && self.limits.linger.is_zero();
        if due || idle_now || self.over_bounds() {
            self.flush(true, out);
        }
        // Otherwise the group waits for more frames or for its deadline (the caller's timer).
    }

    /// The latency bound passed while waiting for frames.
    pub fn on_deadline(&mut self, out: &mut Vec<Emit>) {
        let at_boundary = self.txn.is_none();
        self.flush(at_boundary, out);
    }

    /// Sends every pending row: committed rows first, carrying the group's checkpoint, then
    /// rows of the open transaction. `at_boundary` says no transaction is open.
    fn flush(&mut self, at_boundary: bool, out: &mut Vec<Emit>) {
        let group_end = self.group_end.take();
        let txn_commit = self.txn.as_ref().map(|t| (t.commit_lsn, t.commit_ts));
        let mut committed = Vec::new();
        let mut open = Vec::new();
        for id in self.order.drain(..) {
            let Some(mut p) = self.pending.remove(&id) else {
                continue;
            };
            let table = p.builder.schema().clone();
            let records = p.builder.finish();
            let n = records.num_rows();
            let c = if at_boundary { n } else { p.committed.min(n) };
            if c > 0 {
                committed.push((table.clone(), records.slice(0, c)));
            }
            if c < n {
                open.push((table, records.slice(c, n - c)));
            }
            metrics::histogram!("lily_batch_rows").record(n as f64);
        }
        self.rows = 0;
        self.first_row_at = None;
        self.first_commit_at = None;

        if let Some((commit_lsn, end_lsn, commit_ts)) = group_end {
            let count = committed.len();
            for (i, (table, records)) in committed.into_iter().enumerate() {
                out.push(Emit {
                    kind: BatchKind::Rows { table, records },
                    commit_lsn,
                    commit_ts,
                    checkpoint: (i + 1 == count).then_some(end_lsn),
                });
            }
            if count == 0 && self.group_sent {
                out.push(Emit {
                    kind: BatchKind::Commit,
                    commit_lsn,
                    commit_ts,
                    checkpoint: Some(end_lsn),
                });
            } else if count == 0 {
                self.bare = Some(BareCheckpoint {
                    lsn: end_lsn,
                    commit_ts,
                });
            }
            self.group_sent = false;
        } else {
            open.splice(0..0, committed);
        }
        if !open.is_empty() {
            self.group_sent = true;
            let (commit_lsn, commit_ts) = txn_commit.unwrap_or((Lsn::ZERO, 0));
            for (table, records) in open {
                out.push(Emit {
                    kind: BatchKind::Rows { table, records },
                    commit_lsn,
                    commit_ts,
                    checkpoint: None,
                });
            }
        }
    }
}

fn batch_err(builder: &BatchBuilder, source: lily_batch::BatchError) -> CaptureError {
    CaptureError::Batch {
        table: builder.schema().qualified_name(),
        source,
    }
}

fn same_shape(schema: &TableSchema, r: &lily_pgoutput::Relation) -> bool {
    schema.namespace == r.namespace
        && schema.name == r.name
        && schema.replica_identity == r.replica_identity
        && schema.columns.len() == r.columns.len()
        && schema.columns.iter().zip(&r.columns).all(|(a, b)| {
            a.name == b.name
                && a.type_oid == b.type_oid
                && a.type_modifier == b.type_modifier
                && a.is_key == b.is_key
        })
}

#[cfg(test)]
#[path = "assemble_tests.rs"]
mod tests;
