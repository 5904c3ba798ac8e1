//! Typed decoding of the messages PostgreSQL's `pgoutput` plugin sends with `proto_version '1'`.
//!
//! The decoder is pure: it takes the payload of one `XLogData` frame and returns one [`Message`].
//! Column values stay as [`Bytes`] slices of the frame (no copy); turning text into typed values is
//! the job of the batch builder, which knows the column types from the [`Relation`] message.

mod decode;
mod lsn;

pub use decode::{decode, DecodeError};
pub use lsn::{Lsn, ParseLsnError};

use bytes::Bytes;

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's timestamp epoch.
pub type PgTimestamp = i64;

/// Seconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_SECS: i64 = 946_684_800;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(Type),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    /// A logical decoding message written with `pg_logical_emit_message`.
    Message(LogicalMessage),
}

/// `B`: a transaction starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Begin {
    /// LSN of the commit record; equals [`Commit::commit_lsn`].
    pub final_lsn: Lsn,
    pub commit_ts: PgTimestamp,
    pub xid: u32,
}

/// `C`: a transaction commits.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once the transaction is processed.
    pub end_lsn: Lsn,
    pub commit_ts: PgTimestamp,
}

/// `O`: the transaction came from another replication origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

/// How a table identifies the old row of updates and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing; updates and deletes cannot be replicated.
    Nothing,
    /// `f`: the whole old row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Part of the replica identity key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod`: e.g. numeric precision/scale, varchar length; -1 when none.
    pub type_modifier: i32,
}

/// `R`: the shape of a table, sent before its first change in a session and after every change to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

/// `Y`: a non-built-in type used by a following relation.
#[derive(Debug, Clone, PartialEq)]
pub struct Type {
    pub id: u32,
    pub namespace: String,
    pub name: String,
}

/// One column value in a tuple.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `n`: SQL NULL.
    Null,
    /// `u`: a TOASTed value that did not change; its content is not in the stream.
    UnchangedToast,
    /// `t`: the value in the type's text output format.
    Text(Bytes),
    /// `b`: the value in binary format (only with `binary 'true'`).
    Binary(Bytes),
}

/// A row as sent by pgoutput: one value per column of the relation, in column order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tuple(pub Vec<Value>);

/// Which old image an update or delete carries.
#[derive(Debug, Clone, PartialEq)]
pub enum OldTuple {
    /// `K`: only the replica identity key columns are set; the others are [`Value::Null`].
    Key(Tuple),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Old(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Old(t) => t,
        }
    }
}

/// `I`
#[derive(Debug, Clone, PartialEq)]
pub struct Insert {
    pub relation_id: u32,
    pub new: Tuple,
}

/// `U`: `old` is present when the key changed (DEFAULT/INDEX) or always (FULL).
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub relation_id: u32,
    pub old: Option<OldTuple>,
    pub new: Tuple,
}

/// `D`
#[derive(Debug, Clone, PartialEq)]
pub struct Delete {
    pub relation_id: u32,
    pub old: OldTuple,
}

/// `T`: one or more tables were truncated.
#[derive(Debug, Clone, PartialEq)]
pub struct Truncate {
    pub cascade: bool,
    pub restart_identity: bool,
    pub relation_ids: Vec<u32>,
}

/// `M`: a message emitted with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogicalMessage {
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}
