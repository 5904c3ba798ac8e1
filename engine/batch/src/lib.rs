//! Arrow record batches of row changes, one schema per table, typed from pgoutput `Relation`
//! messages.
//!
//! A [`TableSchema`] is derived from a `Relation`; a [`BatchBuilder`]
//! appends inserts, updates and deletes to typed Arrow builders and hands out a
//! [`RecordBatch`](arrow_array::RecordBatch) on [`finish`](BatchBuilder::finish).
//!
//! Layout of a batch: the table's columns in relation order (all nullable), then the metadata
//! columns [`OP_COLUMN`], [`LSN_COLUMN`], [`COMMIT_LSN_COLUMN`], [`COMMIT_TS_COLUMN`],
//! [`XID_COLUMN`], [`OLD_COLUMN`] and [`UNCHANGED_TOAST_COLUMN`].
//!
//! Values arrive in PostgreSQL's text output format; the replication session must run with
//! `DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits=3` and `bytea_output=hex`.

mod builder;
pub mod json;
mod parse;
mod types;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use lily_pgoutput::{Lsn, PgTimestamp, Relation, ReplicaIdentity, Type};

pub use builder::{BatchBuilder, OP_DELETE, OP_INSERT, OP_UPDATE};
pub use types::oid;

/// `_op` (Utf8, non-null): [`OP_INSERT`], [`OP_UPDATE`] or [`OP_DELETE`].
pub const OP_COLUMN: &str = "_op";
/// `_lsn` (UInt64, non-null): LSN of the change's XLogData frame.
pub const LSN_COLUMN: &str = "_lsn";
/// `_commit_lsn` (UInt64, non-null): LSN of the transaction's commit record.
pub const COMMIT_LSN_COLUMN: &str = "_commit_lsn";
/// `_commit_ts` (Timestamp(µs, "+00:00"), non-null): commit time of the transaction.
pub const COMMIT_TS_COLUMN: &str = "_commit_ts";
/// `_xid` (UInt32, non-null): transaction id.
pub const XID_COLUMN: &str = "_xid";
/// `_old` (Struct of the data fields, nullable): the old image of updates and deletes.
pub const OLD_COLUMN: &str = "_old";
/// `_unchanged_toast` (`List<Utf8>`, nullable): columns whose unchanged TOAST value is not in the
/// stream; their data value is null.
pub const UNCHANGED_TOAST_COLUMN: &str = "_unchanged_toast";

/// Every metadata column, in batch order after the data columns.
pub const METADATA_COLUMNS: [&str; 7] = [
    OP_COLUMN,
    LSN_COLUMN,
    COMMIT_LSN_COLUMN,
    COMMIT_TS_COLUMN,
    XID_COLUMN,
    OLD_COLUMN,
    UNCHANGED_TOAST_COLUMN,
];

/// Field metadata key: PostgreSQL type name (`int4`, `_text`, `public.mood`).
pub const META_PG_TYPE: &str = "pg.type";
/// Field metadata key: PostgreSQL type OID, in decimal.
pub const META_PG_TYPE_OID: &str = "pg.type_oid";
/// Field metadata key, set to `"true"` on replica identity key columns (absent otherwise).
pub const META_PG_KEY: &str = "pg.key";
/// Schema metadata keys naming the table.
pub const META_PG_NAMESPACE: &str = "pg.namespace";
pub const META_PG_TABLE: &str = "pg.table";
pub const META_PG_RELATION_ID: &str = "pg.relation_id";

/// One column of a table and its Arrow type.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Part of the replica identity key.
    pub is_key: bool,
    /// `int4`, `jsonb`, `_int4`, or `namespace.name` for types announced by a `Type` message.
    pub pg_type: String,
    pub data_type: DataType,
}

impl ColumnSpec {
    /// The column's Arrow field (nullable, with `pg.*` metadata).
    pub fn field(&self) -> Field {
        let mut meta = HashMap::with_capacity(3);
        meta.insert(META_PG_TYPE.to_string(), self.pg_type.clone());
        meta.insert(META_PG_TYPE_OID.to_string(), self.type_oid.to_string());
        if self.is_key {
            meta.insert(META_PG_KEY.to_string(), "true".to_string());
        }
        Field::new(&self.name, self.data_type.clone(), true).with_metadata(meta)
    }
}

/// The Arrow shape of one table's change batches.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    pub relation_id: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<ColumnSpec>,
    /// Data columns, then the metadata columns.
    pub arrow: SchemaRef,
}

impl TableSchema {
    /// Types the columns of a `Relation` message. `custom_types` holds the `Type` messages seen
    /// so far, by OID; they only name the types (which map to Utf8).
    pub fn from_relation(
        rel: &Relation,
        custom_types: &HashMap<u32, Type>,
    ) -> Result<TableSchema, BatchError> {
        let columns = rel
            .columns
            .iter()
            .map(|c| ColumnSpec {
                name: c.name.clone(),
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                is_key: c.is_key,
                pg_type: types::type_name(c.type_oid, custom_types),
                data_type: types::ColType::for_column(c.type_oid, c.type_modifier).data_type(),
            })
            .collect();
        TableSchema::from_columns(
            rel.id,
            rel.namespace.clone(),
            rel.name.clone(),
            rel.replica_identity,
            columns,
        )
    }

    /// Assembles a schema from already-typed columns (e.g. a stored schema), checking the column
    /// names and data types.
    pub fn from_columns(
        relation_id: u32,
        namespace: String,
        name: String,
        replica_identity: ReplicaIdentity,
        columns: Vec<ColumnSpec>,
    ) -> Result<TableSchema, BatchError> {
        let table = format!("{namespace}.{name}");
        for c in &columns {
            if METADATA_COLUMNS.contains(&c.name.as_str()) {
                return Err(BatchError::ReservedColumnName {
                    table,
                    column: c.name.clone(),
                });
            }
            if types::ColType::from_spec(c.type_oid, &c.data_type).is_none() {
                return Err(BatchError::UnsupportedDataType {
                    table,
                    column: c.name.clone(),
                    data_type: c.data_type.to_string(),
                });
            }
        }
        let data: Fields = columns.iter().map(ColumnSpec::field).collect();
        let mut fields: Vec<Field> = data.iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(metadata_fields(data));
        let meta = HashMap::from([
            (META_PG_NAMESPACE.to_string(), namespace.clone()),
            (META_PG_TABLE.to_string(), name.clone()),
            (META_PG_RELATION_ID.to_string(), relation_id.to_string()),
        ]);
        Ok(TableSchema {
            relation_id,
            namespace,
            name,
            replica_identity,
            columns,
            arrow: Arc::new(Schema::new_with_metadata(fields, meta)),
        })
    }

    /// `namespace.name`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    /// The replica identity key columns, with their positions.
    pub fn key_columns(&self) -> impl Iterator<Item = (usize, &ColumnSpec)> {
        self.columns.iter().enumerate().filter(|(_, c)| c.is_key)
    }

    /// Index of the first metadata column in [`arrow`](Self::arrow) (= number of data columns).
    pub fn metadata_offset(&self) -> usize {
        self.columns.len()
    }
}

fn metadata_fields(data: Fields) -> [Field; 7] {
    [
        Field::new(OP_COLUMN, DataType::Utf8, false),
        Field::new(LSN_COLUMN, DataType::UInt64, false),
        Field::new(COMMIT_LSN_COLUMN, DataType::UInt64, false),
        Field::new(
            COMMIT_TS_COLUMN,
            DataType::Timestamp(TimeUnit::Microsecond, Some(types::UTC.into())),
            false,
        ),
        Field::new(XID_COLUMN, DataType::UInt32, false),
        Field::new(OLD_COLUMN, DataType::Struct(data), true),
        Field::new(
            UNCHANGED_TOAST_COLUMN,
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            true,
        ),
    ]
}

/// Where a row change sits in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowMeta {
    /// LSN of the change's XLogData frame.
    pub lsn: Lsn,
    pub commit_lsn: Lsn,
    pub commit_ts: PgTimestamp,
    pub xid: u32,
}

/// A row or schema the batch builder cannot represent.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(
        "table {table}: column \"{column}\" has the name of a metadata column lily adds to every \
         batch ({}); rename the column in PostgreSQL or remove the table from the publication",
        METADATA_COLUMNS.join(", ")
    )]
    ReservedColumnName { table: String, column: String },

    #[error(
        "table {table}: column \"{column}\" has Arrow type {data_type}, which lily-batch cannot \
         build; derive the schema with TableSchema::from_relation"
    )]
    UnsupportedDataType {
        table: String,
        column: String,
        data_type: String,
    },

    /// A value that does not parse as its column's type. Boxed to keep `Result` small on the
    /// per-row path.
    #[error(transparent)]
    InvalidValue(Box<InvalidValue>),

    #[error(
        "table {table}, column \"{column}\" (pg type {pg_type}): received a binary-format value, \
         but lily only decodes text format; start replication without the binary 'true' option"
    )]
    BinaryValue {
        table: String,
        column: String,
        pg_type: String,
    },

    #[error(
        "table {table}: the {which} tuple has {got} columns but the relation has {expected}; the \
         table schema is stale, rebuild it from the latest Relation message"
    )]
    ColumnCount {
        table: String,
        which: &'static str,
        expected: usize,
        got: usize,
    },
}

/// Details of [`BatchError::InvalidValue`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "table {table}, column \"{column}\" (pg type {pg_type}, Arrow {arrow_type}): cannot convert \
     value {value}: {reason}; {hint}"
)]
pub struct InvalidValue {
    pub table: String,
    pub column: String,
    pub pg_type: String,
    pub arrow_type: String,
    /// The offending value, quoted, cut to about 64 characters.
    pub value: String,
    pub reason: &'static str,
    /// What to do about it.
    pub hint: &'static str,
}

/// Quotes a value for an error message, cut to 64 characters.
pub(crate) fn truncate_value(raw: &[u8]) -> String {
    const MAX: usize = 64;
    let text = String::from_utf8_lossy(raw);
    let mut chars = text.char_indices();
    match chars.nth(MAX) {
        Some((cut, _)) => format!("{:?}... ({} bytes)", &text[..cut], raw.len()),
        None => format!("{text:?}"),
    }
}
