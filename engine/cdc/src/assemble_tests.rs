//! Direct tests of the batch assembler's state machine, fed hand-built pgoutput messages.
//!
//! Time is read inside the assembler (`Instant::now()`), so the latency and linger bounds are
//! driven here with bounds of zero (always due) or an hour (never due within a test), and the
//! caller's timer is played by calling `on_deadline` directly.

use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, TimestampMicrosecondType, UInt32Type, UInt64Type};
use arrow_array::RecordBatch;
use bytes::Bytes;
use lily_batch::{oid, TableSchema, OP_DELETE, OP_INSERT, OP_UPDATE};
use lily_pgoutput::{
    Begin, Column, Commit, Delete, Insert, LogicalMessage, Lsn, Message, OldTuple, Origin,
    Relation, ReplicaIdentity, Truncate, Tuple, Update, Value,
};

use super::{Assembler, Emit, Limits};
use crate::error::CaptureError;
use crate::event::BatchKind;

const HOUR: Duration = Duration::from_secs(3600);
const TABLE_A: u32 = 16_401;
const TABLE_B: u32 = 16_402;

/// Bounds that never trigger on their own: every close in a test is one it asks for.
fn limits() -> Limits {
    Limits {
        max_rows: 1_000_000,
        max_bytes: 1 << 40,
        max_latency: HOUR,
        linger: Duration::ZERO,
    }
}

fn relation(id: u32, name: &str, columns: &[(&str, u32)]) -> Message {
    Message::Relation(Relation {
        id,
        namespace: "public".into(),
        name: name.into(),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .enumerate()
            .map(|(i, (name, type_oid))| Column {
                is_key: i == 0,
                name: (*name).into(),
                type_oid: *type_oid,
                type_modifier: -1,
            })
            .collect(),
    })
}

/// `a (id int4 key, v text)`.
fn relation_a() -> Message {
    relation(TABLE_A, "a", &[("id", oid::INT4), ("v", oid::TEXT)])
}

/// `b (id int4 key)`.
fn relation_b() -> Message {
    relation(TABLE_B, "b", &[("id", oid::INT4)])
}

fn begin(xid: u32, final_lsn: u64, commit_ts: i64) -> Message {
    Message::Begin(Begin {
        final_lsn: Lsn(final_lsn),
        commit_ts,
        xid,
    })
}

fn commit(commit_lsn: u64, end_lsn: u64, commit_ts: i64) -> Message {
    Message::Commit(Commit {
        flags: 0,
        commit_lsn: Lsn(commit_lsn),
        end_lsn: Lsn(end_lsn),
        commit_ts,
    })
}

fn tuple(values: &[&str]) -> Tuple {
    Tuple(
        values
            .iter()
            .map(|v| Value::Text(Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
    )
}

fn insert(relation_id: u32, values: &[&str]) -> Message {
    Message::Insert(Insert {
        relation_id,
        new: tuple(values),
    })
}

/// Feeds one message at `wal_start`, panicking on error, and returns what it emitted.
fn feed(asm: &mut Assembler, wal_start: u64, msg: Message) -> Vec<Emit> {
    let mut out = Vec::new();
    asm.on_message(Lsn(wal_start), msg, &mut out)
        .unwrap_or_else(|e| panic!("message at {wal_start:#x} failed: {e}"));
    out
}

/// Feeds one message that must fail, and checks it emitted nothing.
fn feed_err(asm: &mut Assembler, wal_start: u64, msg: Message) -> CaptureError {
    let mut out = Vec::new();
    let err = asm
        .on_message(Lsn(wal_start), msg, &mut out)
        .expect_err("message should be rejected");
    assert!(out.is_empty(), "a rejected message emitted batches");
    err
}

fn close(asm: &mut Assembler, more_buffered: bool) -> Vec<Emit> {
    let mut out = Vec::new();
    asm.maybe_close(more_buffered, &mut out);
    out
}

fn deadline(asm: &mut Assembler) -> Vec<Emit> {
    let mut out = Vec::new();
    asm.on_deadline(&mut out);
    out
}

fn rows(e: &Emit) -> (&TableSchema, &RecordBatch) {
    match &e.kind {
        BatchKind::Rows { table, records } => (table, records),
        other => panic!("expected a Rows batch, got {other:?}"),
    }
}

fn ids(batch: &RecordBatch) -> Vec<i32> {
    let col = batch.column_by_name("id").expect("id column");
    col.as_primitive::<Int32Type>().values().to_vec()
}

fn ops(batch: &RecordBatch) -> Vec<&str> {
    let col = batch.column_by_name(lily_batch::OP_COLUMN).unwrap();
    col.as_string::<i32>().iter().map(Option::unwrap).collect()
}

fn u64s(batch: &RecordBatch, name: &str) -> Vec<u64> {
    let col = batch.column_by_name(name).unwrap();
    col.as_primitive::<UInt64Type>().values().to_vec()
}

fn commit_lsns(batch: &RecordBatch) -> Vec<u64> {
    u64s(batch, lily_batch::COMMIT_LSN_COLUMN)
}

/// Asserts `e` is the group-closing marker with this commit and checkpoint.
fn assert_commit_marker(e: &Emit, commit_lsn: u64, checkpoint: u64) {
    assert!(
        matches!(e.kind, BatchKind::Commit),
        "expected a Commit marker, got {:?}",
        e.kind
    );
    assert_eq!(e.commit_lsn, Lsn(commit_lsn));
    assert_eq!(e.checkpoint, Some(Lsn(checkpoint)));
}

#[test]
fn one_transaction_gives_one_batch_per_table_with_commit_metadata() {
    let mut asm = Assembler::new(limits());
    feed(&mut asm, 0xE00, relation_a());
    feed(&mut asm, 0xE10, relation_b());
    feed(&mut asm, 0xEF0, begin(7, 0x1000, 123_456));
    // Interleaved changes to two tables: nothing leaves before the commit.
    let changes = [
        (0xF00, insert(TABLE_A, &["1", "a"])),
        (0xF10, insert(TABLE_B, &["10"])),
        (
            0xF20,
            Message::Update(Update {
                relation_id: TABLE_A,
                old: None,
                new: tuple(&["1", "b"]),
            }),
        ),
        (
            0xF30,
            Message::Delete(Delete {
                relation_id: TABLE_B,
                old: OldTuple::Key(tuple(&["10"])),
            }),
        ),
        (0xF40, insert(TABLE_A, &["2", "c"])),
    ];
    for (lsn, msg) in changes {
        assert!(feed(&mut asm, lsn, msg).is_empty());
    }
    assert!(close(&mut asm, false).is_empty(), "open transaction closed");
    assert!(feed(&mut asm, 0x1000, commit(0x1000, 0x1008, 123_456)).is_empty());

    let out = close(&mut asm, false);
    assert_eq!(out.len(), 2, "one batch per table");
    // Tables in order of first appearance; only the group's last batch carries the checkpoint.
    let (ta, a) = rows(&out[0]);
    let (tb, b) = rows(&out[1]);
    assert_eq!(ta.qualified_name(), "public.a");
    assert_eq!(tb.qualified_name(), "public.b");
    assert_eq!(out[0].checkpoint, None);
    assert_eq!(out[1].checkpoint, Some(Lsn(0x1008)));
    assert!(out.iter().all(|e| e.commit_lsn == Lsn(0x1000)));
    assert!(out.iter().all(|e| e.commit_ts == 123_456));

    assert_eq!(ids(a), [1, 1, 2]);
    assert_eq!(ops(a), [OP_INSERT, OP_UPDATE, OP_INSERT]);
    assert_eq!(u64s(a, lily_batch::LSN_COLUMN), [0xF00, 0xF20, 0xF40]);
    assert_eq!(commit_lsns(a), [0x1000; 3]);
    // The column is Unix-epoch microseconds; `Emit::commit_ts` stays on PostgreSQL's epoch.
    let ts = a.column_by_name(lily_batch::COMMIT_TS_COLUMN).unwrap();
    let unix_us = 123_456 + lily_pgoutput::PG_EPOCH_OFFSET_SECS * 1_000_000;
    assert_eq!(
        ts.as_primitive::<TimestampMicrosecondType>().values(),
        &[unix_us; 3]
    );
    let xid = a.column_by_name(lily_batch::XID_COLUMN).unwrap();
    assert_eq!(xid.as_primitive::<UInt32Type>().values(), &[7; 3]);

    assert_eq!(ids(b), [10, 10]);
    assert_eq!(ops(b), [OP_INSERT, OP_DELETE]);
    assert_eq!(u64s(b, lily_batch::LSN_COLUMN), [0xF10, 0xF30]);
    assert!(!asm.has_pending());
    assert!(!asm.has_bare());
}

#[test]
fn lingering_group_collects_back_to_back_transactions() {
    let mut asm = Assembler::new(Limits {
        max_latency: 2 * HOUR,
        linger: HOUR,
        ..limits()
    });
    feed(&mut asm, 0x10, relation_a());
    feed(&mut asm, 0x20, begin(1, 0x100, 1_000));
    feed(&mut asm, 0x30, insert(TABLE_A, &["1", "x"]));
    feed(&mut asm, 0x100, commit(0x100, 0x108, 1_000));
    // Nothing buffered, but the linger keeps the finished group open for the next transaction.
    assert!(close(&mut asm, false).is_empty());
    assert!(asm.has_pending());
    let before = Instant::now();
    let d = asm.deadline().expect("a lingering group has a deadline");
    assert!(d <= before + HOUR, "the linger, not the latency bound");
    assert!(d > before + HOUR - Duration::from_secs(60));

    feed(&mut asm, 0x110, begin(2, 0x200, 2_000));
    feed(&mut asm, 0x120, insert(TABLE_A, &["2", "y"]));
    // Inside a transaction only the latency bound counts.
    let d = asm.deadline().unwrap();
    assert!(
        d > Instant::now() + HOUR,
        "the linger applies between transactions only"
    );
    feed(&mut asm, 0x200, commit(0x200, 0x208, 2_000));
    assert!(close(&mut asm, false).is_empty());

    // The caller's timer fires: both transactions leave in one batch.
    let out = deadline(&mut asm);
    assert_eq!(out.len(), 1);
    let (_, batch) = rows(&out[0]);
    assert_eq!(ids(batch), [1, 2]);
    assert_eq!(commit_lsns(batch), [0x100, 0x200], "per-row commit LSN");
    assert_eq!(out[0].commit_lsn, Lsn(0x200), "the batch's last commit");
    assert_eq!(out[0].commit_ts, 2_000);
    assert_eq!(out[0].checkpoint, Some(Lsn(0x208)));
    assert!(!asm.has_pending());
    assert_eq!(asm.deadline(), None);
}

#[test]
fn latency_bound_closes_group_even_with_frames_buffered() {
    let mut asm = Assembler::new(Limits {
        max_latency: Duration::ZERO,
        linger: HOUR,
        ..limits()
    });
    feed(&mut asm, 0x10, relation_a());
    feed(&mut asm, 0x20, begin(1, 0x100, 0));
    feed(&mut asm, 0x30, insert(TABLE_A, &["1", "x"]));
    feed(&mut asm, 0x100, commit(0x100, 0x108, 0));
    let out = close(&mut asm, true);
    assert_eq!(out.len(), 1);
    assert_eq!(rows(&out[0]).1.num_rows(), 1);
    assert_eq!(out[0].checkpoint, Some(Lsn(0x108)));
}

/// The module and `Limits::linger` docs say a group closes on a commit "when no further frame is
/// already buffered" and that the linger applies "when no frame is buffered", so back-to-back
/// transactions already in the buffer share a batch (the behaviour before the linger existed).
/// But `deadline()` includes `first_commit_at + linger` whether or not frames are buffered, so
/// with a zero linger `maybe_close(true, ..)` closes the group at every commit, and with the
/// default 1 ms linger a buffered stream closes 1 ms after its first commit rather than at the
/// latency bound.
#[test]
#[ignore = "bug: with linger = 0 a buffered frame does not keep the group open (deadline() counts the linger while frames are buffered)"]
fn buffered_frames_keep_group_open_with_zero_linger() {
    let mut asm = Assembler::new(limits());
    feed(&mut asm, 0x10, relation_a());
    feed(&mut asm, 0x20, begin(1, 0x100, 0));
    feed(&mut asm, 0x30, insert(TABLE_A, &["1", "x"]));
    feed(&mut asm, 0x100, commit(0x100, 0x108, 0));
    // The next transaction is already buffered: wait for it.
    assert!(
        close(&mut asm, true).is_empty(),
        "group closed although more frames were buffered"
    );
    feed(&mut asm, 0x110, begin(2, 0x200, 0));
    feed(&mut asm, 0x120, insert(TABLE_A, &["2", "y"]));
    feed(&mut asm, 0x200, commit(0x200, 0x208, 0));
    let out = close(&mut asm, false);
    assert_eq!(out.len(), 1);
    assert_eq!(ids(rows(&out[0]).1), [1, 2]);
}

#[test]
fn max_rows_splits_an_open_transaction_without_checkpoint() {
    let mut asm = Assembler::new(Limits {
        max_rows: 3,
        ..limits()
    });
    feed(&mut asm, 0x10, relation_a());
    feed(&mut asm, 0x20, begin(9, 0x900, 99));
    assert!(feed(&mut asm, 0x30, insert(TABLE_A, &["1", "x"])).is_empty());
    assert!(feed(&mut asm, 0x40, insert(TABLE_A, &["2", "x"])).is_empty());
    let out = feed(&mut asm, 0x50, insert(TABLE_A, &["3", "x"]));
    assert_eq!(out.len(), 1, "the third row reaches max_rows");
    assert_eq!(ids(rows(&out[0]).1), [1, 2, 3]);
    // Not committed yet: no checkpoint, but the transaction's commit LSN from Begin.
    assert_eq!(out[0].checkpoint, None);
    assert_eq!(out[0].commit_lsn, Lsn(0x900));
    assert_eq!(out[0].commit_ts, 99);

    assert!(feed(&mut asm, 0x60, insert(TABLE_A, &["4", "x"])).is_empty());
    assert!(feed(&mut asm, 0x70, insert(TABLE_A, &["5", "x"])).is_empty());
    feed(&mut asm, 0x900, commit(0x900, 0x908, 99));
    let out = close(&mut asm, false);
    assert_eq!(out.len(), 1);
    let (_, batch) = rows(&out[0]);
    assert_eq!(ids(batch), [4, 5]);
    assert_eq!(commit_lsns(batch), [0x900, 0x900]);
    assert_eq!(out[0].checkpoint, Some(Lsn(0x908)));
}

#[test]
fn transaction_filling_batches_exactly_ends_with_commit_marker() {
    let mut asm = Assembler::new(Limits {
        max_rows: 2,
        ..limits()
    });
    feed(&mut asm, 0x10, relation_a());
    feed(&mut asm, 0x20, begin(3, 0x300, 5));
    feed(&mut asm, 0x30, insert(TABLE_A, &["1", "x"]));
    let out = feed(&mut asm, 0x40, insert(TABLE_A, &["2", "x"]));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].checkpoint, None);
    feed(&mut asm, 0x300, commit(0x300, 0x308, 5));
    // Every row already left, so a marker must carry the checkpoint (not a bare checkpoint:
    // consumers that apply transactionally need to see where the group ends).
    let out = close(&mut asm, false);
    assert_eq!(out.len(), 1);
    assert_commit_marker(&out[0], 0x300, 0x308);
    assert_eq!(out[0].commit_ts, 5);
    assert!(!asm.has_bare());
}

#[test]
fn split_sends_earlier_committed_rows_first_with_their_checkpoint() {
    let mut asm = Assembler::new(Limits {
        max_rows: 4,
        linger: HOUR,
        ..limits()
    });
    feed(&mut asm, 0x10, relation_a());
    feed(&mut asm, 0x11, relation_b());
    feed(&mut asm, 0x20, begin(1, 0x100, 1));
    feed(&mut asm, 0x30, insert(TABLE_A, &["1", "x"]));
    feed(&mut asm, 0x40, insert(TABLE_B, &["10"]));
    feed(&mut asm, 0x100, commit(0x100, 0x108, 1));
    assert!(close(&mut asm, false).is_empty(), "lingering");

    feed(&mut asm, 0x110, begin(2, 0x200, 2));
    assert!(feed(&mut asm, 0x120, insert(TABLE_A, &["2", "y"])).is_empty());
    // Fourth row in the group: split inside transaction 2.
    let out = feed(&mut asm, 0x130, insert(TABLE_A, &["3", "y"]));
    assert_eq!(out.len(), 3);
    // Committed rows of every table first, the last of them carrying transaction 1's end...
    let (ta, a1) = rows(&out[0]);
    assert_eq!(ta.name, "a");
    assert_eq!(ids(a1), [1]);
    assert_eq!((out[0].commit_lsn, out[0].checkpoint), (Lsn(0x100), None));
    let (tb, b1) = rows(&out[1]);
    assert_eq!(tb.name, "b");
    assert_eq!(ids(b1), [10]);
    assert_eq!(
        (out[1].commit_lsn, out[1].checkpoint),
        (Lsn(0x100), Some(Lsn(0x108)))
    );
    // ...then the open transaction's rows, without a checkpoint.
    let (ta, a2) = rows(&out[2]);
    assert_eq!(ta.name, "a");
    assert_eq!(ids(a2), [2, 3]);
    assert_eq!(commit_lsns(a2), [0x200, 0x200]);
    assert_eq!((out[2].commit_lsn, out[2].checkpoint), (Lsn(0x200), None));

    feed(&mut asm, 0x200, commit(0x200, 0x208, 2));
    assert!(close(&mut asm, false).is_empty(), "lingering");
    let out = deadline(&mut asm);
    assert_eq!(out.len(), 1);
    assert_commit_marker(&out[0], 0x200, 0x208);
}

#[test]
fn max_bytes_is_checked_every_64_rows_and_at_commit() {
    // Any row exceeds one byte; the byte bound is only looked at every 64th row (it walks the
    // builders) and between frames.
    let mut asm = Assembler::new(Limits {
        max_bytes: 1,
        linger: HOUR,
        ..limits()
    });
    feed(&mut asm, 0x10, relation_a());
    feed(&mut asm, 0x20, begin(1, 0x10_000, 0));
    for i in 1..64 {
        let out = feed(&mut asm, 0x100 + i, insert(TABLE_A, &[&i.to_string(), "x"]));
        assert!(out.is_empty(), "flushed early at row {i}");
    }
    let out = feed(&mut asm, 0x200, insert(TABLE_A, &["64", "x"]));
    assert_eq!(out.len(), 1);
    let (_, batch) = rows(&out[0]);
    assert_eq!(batch.num_rows(), 64);
    assert_eq!(ids(batch), (1..=64).collect::<Vec<_>>());
    assert_eq!(out[0].checkpoint, None);

    feed(&mut asm, 0x210, insert(TABLE_A, &["65", "x"]));
    feed(&mut asm, 0x10_000, commit(0x10_000, 0x10_008, 0));
    // Frames buffered and the linger not due, but the group is over the byte bound.
    let out = close(&mut asm, true);
    assert_eq!(out.len(), 1);
    assert_eq!(ids(rows(&out[0]).1), [65]);
    assert_eq!(out[0].checkpoint, Some(Lsn(0x10_008)));
}

#[test]
fn latency_deadline_inside_a_transaction_sends_open_rows() {
    let mut asm = Assembler::new(limits());
    assert_eq!(asm.deadline(), None);
    assert!(
        deadline(&mut asm).is_empty(),
        "nothing pending, nothing sent"
    );
    assert!(!asm.has_bare());

    feed(&mut asm, 0x10, relation_a());
    feed(&mut asm, 0x20, begin(4, 0x400, 44));
    assert!(asm.in_transaction());
    assert_eq!(asm.deadline(), None, "no rows yet");
    let before = Instant::now();
    feed(&mut asm, 0x30, insert(TABLE_A, &["1", "x"]));
    let d = asm.deadline().expect("rows are waiting");
    assert!(d >= before + HOUR && d <= Instant::now() + HOUR);
    assert!(
        close(&mut asm, false).is_empty(),
        "an open transaction never closes"
    );

    let out = deadline(&mut asm);
    assert_eq!(out.len(), 1);
    assert_eq!(ids(rows(&out[0]).1), [1]);
    assert_eq!(out[0].commit_lsn, Lsn(0x400));
    assert_eq!(out[0].checkpoint, None);
    assert!(!asm.has_pending());
    assert_eq!(asm.deadline(), None);

    feed(&mut asm, 0x400, commit(0x400, 0x408, 44));
    assert!(!asm.in_transaction());
    assert!(asm.has_pending(), "the commit still has to be sent");
    let out = close(&mut asm, false);
    assert_eq!(out.len(), 1);
    assert_commit_marker(&out[0], 0x400, 0x408);
}

#[test]
fn relation_change_sends_pending_rows_with_the_old_shape() {
    let mut asm = Assembler::new(limits());
    feed(&mut asm, 0x10, relation(TABLE_A, "a", &[("id", oid::INT4)]));
    feed(&mut asm, 0x20, begin(5, 0x500, 0));
    feed(&mut asm, 0x30, insert(TABLE_A, &["1"]));
    // The same shape again (as under publish_via_partition_root) changes nothing.
    let again = relation(TABLE_A, "a", &[("id", oid::INT4)]);
    assert!(feed(&mut asm, 0x38, again).is_empty());
    feed(&mut asm, 0x40, insert(TABLE_A, &["2"]));

    // A new column: the pending rows go out first, typed with the old schema.
    let out = feed(&mut asm, 0x50, relation_a());
    assert_eq!(out.len(), 1);
    let (old, batch) = rows(&out[0]);
    assert_eq!(old.columns.len(), 1);
    assert_eq!(batch.num_columns(), 1 + lily_batch::METADATA_COLUMNS.len());
    assert_eq!(ids(batch), [1, 2]);
    assert_eq!((out[0].commit_lsn, out[0].checkpoint), (Lsn(0x500), None));

    feed(&mut asm, 0x60, insert(TABLE_A, &["3", "new"]));
    feed(&mut asm, 0x500, commit(0x500, 0x508, 0));
    let out = close(&mut asm, false);
    assert_eq!(out.len(), 1);
    let (new, batch) = rows(&out[0]);
    assert_eq!(new.columns.len(), 2);
    assert_eq!(ids(batch), [3]);
    let v = batch.column_by_name("v").unwrap().as_string::<i32>();
    assert_eq!(v.value(0), "new");
    assert_eq!(out[0].checkpoint, Some(Lsn(0x508)));
}

#[test]
fn truncate_is_its_own_batch_after_the_rows_before_it() {
    let mut asm = Assembler::new(limits());
    feed(&mut asm, 0x10, relation_a());
    feed(&mut asm, 0x11, relation_b());
    feed(&mut asm, 0x20, begin(6, 0x600, 66));
    feed(&mut asm, 0x30, insert(TABLE_A, &["1", "x"]));
    let truncate = Message::Truncate(Truncate {
        cascade: true,
        restart_identity: false,
        relation_ids: vec![TABLE_B, TABLE_A],
    });
    let out = feed(&mut asm, 0x40, truncate);
    assert_eq!(out.len(), 2);
    // The row written before the truncate goes first, so order is preserved downstream.
    assert_eq!(ids(rows(&out[0]).1), [1]);
    assert_eq!(out[0].checkpoint, None);
    match &out[1].kind {
        BatchKind::Truncate {
            tables,
            cascade,
            restart_identity,
        } => {
            let names: Vec<_> = tables.iter().map(|t| t.qualified_name()).collect();
            assert_eq!(names, ["public.b", "public.a"]);
            assert!(*cascade);
            assert!(!*restart_identity);
        }
        other => panic!("expected a Truncate batch, got {other:?}"),
    }
    assert_eq!(out[1].commit_lsn, Lsn(0x600));
    assert_eq!(out[1].commit_ts, 66);
    assert_eq!(out[1].checkpoint, None);

    feed(&mut asm, 0x600, commit(0x600, 0x608, 66));
    let out = close(&mut asm, false);
    assert_eq!(out.len(), 1);
    assert_commit_marker(&out[0], 0x600, 0x608);
}

#[test]
fn logical_messages_are_their_own_batches() {
    let mut asm = Assembler::new(limits());
    feed(&mut asm, 0x10, relation_a());
    // Non-transactional, outside any transaction: no commit to report.
    let out = feed(
        &mut asm,
        0x20,
        Message::Message(LogicalMessage {
            transactional: false,
            lsn: Lsn(0x20),
            prefix: "audit".into(),
            content: Bytes::from_static(b"hello"),
        }),
    );
    assert_eq!(out.len(), 1);
    match &out[0].kind {
        BatchKind::Message {
            transactional,
            prefix,
            content,
            lsn,
        } => {
            assert!(!*transactional);
            assert_eq!(prefix, "audit");
            assert_eq!(&content[..], b"hello");
            assert_eq!(*lsn, Lsn(0x20));
        }
        other => panic!("expected a Message batch, got {other:?}"),
    }
    assert_eq!((out[0].commit_lsn, out[0].commit_ts), (Lsn::ZERO, 0));
    assert_eq!(out[0].checkpoint, None);

    // Transactional, after a row: the row first, then the message with the transaction's commit.
    feed(&mut asm, 0x30, begin(7, 0x700, 77));
    feed(&mut asm, 0x40, insert(TABLE_A, &["1", "x"]));
    let out = feed(
        &mut asm,
        0x50,
        Message::Message(LogicalMessage {
            transactional: true,
            lsn: Lsn(0x50),
            prefix: "audit".into(),
            content: Bytes::from_static(b"in txn"),
        }),
    );
    assert_eq!(out.len(), 2);
    assert_eq!(ids(rows(&out[0]).1), [1]);
    assert!(matches!(
        out[1].kind,
        BatchKind::Message {
            transactional: true,
            ..
        }
    ));
    assert_eq!((out[1].commit_lsn, out[1].commit_ts), (Lsn(0x700), 77));
    assert_eq!(out[1].checkpoint, None);

    feed(&mut asm, 0x700, commit(0x700, 0x708, 77));
    let out = close(&mut asm, false);
    assert_eq!(out.len(), 1);
    assert_commit_marker(&out[0], 0x700, 0x708);
}

#[test]
fn transaction_without_rows_leaves_a_bare_checkpoint() {
    let mut asm = Assembler::new(limits());
    feed(&mut asm, 0x20, begin(8, 0x800, 88));
    // Origin messages are ignored.
    let origin = Message::Origin(Origin {
        commit_lsn: Lsn(0x800),
        name: "elsewhere".into(),
    });
    assert!(feed(&mut asm, 0x21, origin).is_empty());
    feed(&mut asm, 0x800, commit(0x800, 0x808, 88));
    assert!(asm.has_pending());
    assert!(
        close(&mut asm, false).is_empty(),
        "no batch for an empty group"
    );
    assert!(!asm.has_pending());
    assert!(asm.has_bare());
    let bare = asm.take_bare().expect("bare checkpoint");
    assert_eq!((bare.lsn, bare.commit_ts), (Lsn(0x808), 88));
    assert!(!asm.has_bare());
    assert!(asm.take_bare().is_none());
}

#[test]
fn rejected_changes_leave_the_batch_intact() {
    let mut asm = Assembler::new(limits());
    feed(&mut asm, 0x10, relation_a());

    // A row change outside a transaction is a protocol error.
    let err = feed_err(&mut asm, 0x18, insert(TABLE_A, &["1", "x"]));
    assert!(
        matches!(&err, CaptureError::Replication(lily_replication::ReplicationError::Protocol(m)) if m.contains("outside a transaction")),
        "{err:?}"
    );

    feed(&mut asm, 0x20, begin(1, 0x100, 0));
    let err = feed_err(&mut asm, 0x30, insert(99, &["1"]));
    assert!(matches!(err, CaptureError::UnknownRelation(99)), "{err:?}");

    // A value that does not parse as int4 names the table, and appends nothing.
    let err = feed_err(&mut asm, 0x40, insert(TABLE_A, &["not a number", "x"]));
    match &err {
        CaptureError::Batch { table, .. } => assert_eq!(table, "public.a"),
        other => panic!("expected a Batch error, got {other:?}"),
    }
    feed(&mut asm, 0x50, insert(TABLE_A, &["2", "x"]));

    // A truncate naming an unknown table fails before flushing the pending row.
    let truncate = Message::Truncate(Truncate {
        cascade: false,
        restart_identity: false,
        relation_ids: vec![TABLE_A, 99],
    });
    let err = feed_err(&mut asm, 0x60, truncate);
    assert!(matches!(err, CaptureError::UnknownRelation(99)), "{err:?}");

    feed(&mut asm, 0x100, commit(0x100, 0x108, 0));
    let out = close(&mut asm, false);
    assert_eq!(out.len(), 1);
    let (_, batch) = rows(&out[0]);
    assert_eq!(ids(batch), [2], "only the accepted row");
    assert_eq!(u64s(batch, lily_batch::LSN_COLUMN), [0x50]);
    assert_eq!(out[0].checkpoint, Some(Lsn(0x108)));
}

#[test]
fn reset_drops_half_built_rows_and_relations() {
    let mut asm = Assembler::new(Limits {
        linger: HOUR,
        ..limits()
    });
    feed(&mut asm, 0x10, relation_a());
    feed(&mut asm, 0x20, begin(1, 0x100, 0));
    feed(&mut asm, 0x30, insert(TABLE_A, &["1", "x"]));
    feed(&mut asm, 0x100, commit(0x100, 0x108, 0));
    feed(&mut asm, 0x110, begin(2, 0x200, 0));
    feed(&mut asm, 0x120, insert(TABLE_A, &["2", "x"]));
    assert!(asm.has_pending());

    // A new session replays from the last confirmed boundary; nothing unsent survives.
    asm.reset();
    assert!(!asm.in_transaction());
    assert!(!asm.has_pending());
    assert_eq!(asm.deadline(), None);
    assert!(deadline(&mut asm).is_empty());
    assert!(!asm.has_bare());

    // Relations are forgotten too, until the new session announces them again.
    feed(&mut asm, 0x20, begin(1, 0x100, 0));
    let err = feed_err(&mut asm, 0x30, insert(TABLE_A, &["1", "x"]));
    assert!(
        matches!(err, CaptureError::UnknownRelation(TABLE_A)),
        "{err:?}"
    );
    feed(&mut asm, 0x31, relation_a());
    feed(&mut asm, 0x32, insert(TABLE_A, &["1", "x"]));
    feed(&mut asm, 0x100, commit(0x100, 0x108, 0));
    let out = deadline(&mut asm);
    assert_eq!(out.len(), 1);
    assert_eq!(ids(rows(&out[0]).1), [1]);
    assert_eq!(out[0].checkpoint, Some(Lsn(0x108)));
}
