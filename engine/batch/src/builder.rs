//! [`BatchBuilder`]: appends row changes to typed Arrow builders.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMicrosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, ListArray, RecordBatch, StructArray};
use arrow_buffer::{NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, FieldRef, Fields};
use lily_pgoutput::{OldTuple, Tuple, Value};

use crate::parse::{parse_into, Arenas, Cell, ParseErr, PG_EPOCH_OFFSET_MICROS};
use crate::types::{ColType, Kind, UTC};
use crate::{
    truncate_value, BatchError, InvalidValue, RowMeta, TableSchema, OLD_COLUMN,
    UNCHANGED_TOAST_COLUMN,
};

/// `_op` values.
pub const OP_INSERT: &str = "insert";
pub const OP_UPDATE: &str = "update";
pub const OP_DELETE: &str = "delete";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Insert => OP_INSERT,
            Op::Update => OP_UPDATE,
            Op::Delete => OP_DELETE,
        }
    }
}

/// Resolved storage for the current row's cells.
struct Ctx<'r, 'a> {
    elems: &'r [Cell<'a>],
    text: &'r str,
    bytes: &'r [u8],
}

/// A typed Arrow builder for one scalar kind.
enum ScalarBuilder {
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    UInt32(UInt32Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Date32(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl ScalarBuilder {
    fn new(kind: Kind, data_type: &DataType) -> Self {
        match kind {
            Kind::Bool => Self::Bool(BooleanBuilder::new()),
            Kind::Int16 => Self::Int16(Int16Builder::new()),
            Kind::Int32 => Self::Int32(Int32Builder::new()),
            Kind::Int64 => Self::Int64(Int64Builder::new()),
            Kind::Oid => Self::UInt32(UInt32Builder::new()),
            Kind::Float32 => Self::Float32(Float32Builder::new()),
            Kind::Float64 => Self::Float64(Float64Builder::new()),
            Kind::Decimal { .. } => {
                Self::Decimal(Decimal128Builder::new().with_data_type(data_type.clone()))
            }
            Kind::Text | Kind::Uuid => Self::Utf8(StringBuilder::new()),
            Kind::Bytea => Self::Binary(BinaryBuilder::new()),
            Kind::Date => Self::Date32(Date32Builder::new()),
            Kind::Timestamp | Kind::TimestampTz => Self::Timestamp(
                TimestampMicrosecondBuilder::new().with_data_type(data_type.clone()),
            ),
        }
    }

    /// Appends a cell; returns the variable-length bytes it added.
    #[inline]
    fn append(&mut self, cell: &Cell<'_>, ctx: &Ctx<'_, '_>) -> usize {
        match (self, *cell) {
            (b, Cell::Null) => {
                b.append_null();
                0
            }
            (Self::Bool(b), Cell::Bool(v)) => {
                b.append_value(v);
                0
            }
            (Self::Int16(b), Cell::Int(v)) => {
                b.append_value(v as i16);
                0
            }
            (Self::Int32(b), Cell::Int(v)) => {
                b.append_value(v as i32);
                0
            }
            (Self::Int64(b), Cell::Int(v)) => {
                b.append_value(v);
                0
            }
            (Self::Timestamp(b), Cell::Int(v)) => {
                b.append_value(v);
                0
            }
            (Self::Date32(b), Cell::Int(v)) => {
                b.append_value(v as i32);
                0
            }
            (Self::UInt32(b), Cell::UInt(v)) => {
                b.append_value(v);
                0
            }
            (Self::Float32(b), Cell::F32(v)) => {
                b.append_value(v);
                0
            }
            (Self::Float64(b), Cell::F64(v)) => {
                b.append_value(v);
                0
            }
            (Self::Decimal(b), Cell::Dec(lo, hi)) => {
                b.append_value(((u128::from(hi) << 64) | u128::from(lo)) as i128);
                0
            }
            (Self::Utf8(b), Cell::Str(s)) => {
                b.append_value(s);
                s.len()
            }
            (Self::Utf8(b), Cell::ArenaStr(start, end)) => {
                b.append_value(&ctx.text[start..end]);
                end - start
            }
            (Self::Binary(b), Cell::ArenaBytes(start, end)) => {
                b.append_value(&ctx.bytes[start..end]);
                end - start
            }
            (_, cell) => unreachable!("cell {cell:?} parsed for the wrong builder"),
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::Int16(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::UInt32(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Decimal(b) => b.append_null(),
            Self::Utf8(b) => b.append_null(),
            Self::Binary(b) => b.append_null(),
            Self::Date32(b) => b.append_null(),
            Self::Timestamp(b) => b.append_null(),
        }
    }

    fn append_nulls(&mut self, n: usize) {
        match self {
            Self::Bool(b) => b.append_nulls(n),
            Self::Int16(b) => b.append_nulls(n),
            Self::Int32(b) => b.append_nulls(n),
            Self::Int64(b) => b.append_nulls(n),
            Self::UInt32(b) => b.append_nulls(n),
            Self::Float32(b) => b.append_nulls(n),
            Self::Float64(b) => b.append_nulls(n),
            Self::Decimal(b) => b.append_nulls(n),
            Self::Utf8(b) => b.append_nulls(n),
            Self::Binary(b) => b.append_nulls(n),
            Self::Date32(b) => b.append_nulls(n),
            Self::Timestamp(b) => b.append_nulls(n),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int16(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::UInt32(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Decimal(b) => Arc::new(b.finish()),
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::Binary(b) => Arc::new(b.finish()),
            Self::Date32(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

/// A List column: element builder plus offsets and validity.
struct ListColumn {
    field: FieldRef,
    elem_width: usize,
    values: ScalarBuilder,
    values_len: usize,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
}

enum ColumnBuilder {
    Scalar(ScalarBuilder),
    List(Box<ListColumn>),
}

impl ColumnBuilder {
    fn new(ty: ColType, data_type: &DataType) -> Self {
        match (ty, data_type) {
            (ColType::Scalar(kind), dt) => Self::Scalar(ScalarBuilder::new(kind, dt)),
            (ColType::List(kind), DataType::List(field)) => Self::List(Box::new(ListColumn {
                field: field.clone(),
                elem_width: kind.fixed_width(),
                values: ScalarBuilder::new(kind, field.data_type()),
                values_len: 0,
                offsets: vec![0],
                nulls: NullBufferBuilder::new(0),
            })),
            (ColType::List(_), dt) => unreachable!("list column with data type {dt}"),
        }
    }

    /// Appends a cell; returns the variable-length bytes it added.
    #[inline]
    fn append(&mut self, cell: &Cell<'_>, ctx: &Ctx<'_, '_>) -> usize {
        match self {
            Self::Scalar(b) => b.append(cell, ctx),
            Self::List(l) => match *cell {
                Cell::Null => {
                    l.offsets.push(l.values_len as i32);
                    l.nulls.append_null();
                    0
                }
                Cell::List(start, end) => {
                    let mut bytes = 0;
                    for elem in &ctx.elems[start..end] {
                        bytes += l.values.append(elem, ctx) + l.elem_width;
                    }
                    l.values_len += end - start;
                    l.offsets.push(l.values_len as i32);
                    l.nulls.append_non_null();
                    bytes
                }
                cell => unreachable!("cell {cell:?} parsed for a list column"),
            },
        }
    }

    fn append_nulls(&mut self, n: usize) {
        match self {
            Self::Scalar(b) => b.append_nulls(n),
            Self::List(l) => {
                let end = l.values_len as i32;
                l.offsets.extend(std::iter::repeat_n(end, n));
                l.nulls.append_n_nulls(n);
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Scalar(b) => b.finish(),
            Self::List(l) => {
                let offsets = std::mem::replace(&mut l.offsets, vec![0]);
                l.values_len = 0;
                Arc::new(ListArray::new(
                    l.field.clone(),
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    l.values.finish(),
                    l.nulls.finish(),
                ))
            }
        }
    }
}

/// Cells of the row being pushed. Kept between rows (emptied) so pushing does not allocate.
#[derive(Default)]
struct Scratch<'a> {
    new: Vec<Cell<'a>>,
    old: Vec<Cell<'a>>,
    elems: Vec<Cell<'a>>,
}

/// Empties a vector and hands back its allocation with a different borrow lifetime.
/// (Collecting a mapped `vec::IntoIter` into a same-layout element type reuses the buffer.)
fn recycle<'b>(mut v: Vec<Cell<'_>>) -> Vec<Cell<'b>> {
    v.clear();
    v.into_iter().map(|_| Cell::Null).collect()
}

impl Scratch<'_> {
    fn recycle<'b>(self) -> Scratch<'b> {
        Scratch {
            new: recycle(self.new),
            old: recycle(self.old),
            elems: recycle(self.elems),
        }
    }
}

/// Builds one [`RecordBatch`] of row changes for one table.
///
/// Every push validates and parses the whole row before appending anything, so a push that fails
/// leaves the batch as it was and the caller may report the error and carry on.
pub struct BatchBuilder {
    schema: Arc<TableSchema>,
    types: Vec<ColType>,
    columns: Vec<ColumnBuilder>,
    old_columns: Vec<ColumnBuilder>,
    old_valid: NullBufferBuilder,
    old_fields: Fields,
    toast_field: FieldRef,
    op: StringBuilder,
    lsn: UInt64Builder,
    commit_lsn: UInt64Builder,
    commit_ts: TimestampMicrosecondBuilder,
    xid: UInt32Builder,
    unchanged_toast: ListBuilder<StringBuilder>,
    /// Rows at the end of the batch whose `_old` is null and not yet appended to `old_columns`
    /// (null runs are appended in bulk, or become an all-null array at finish).
    old_pending_nulls: usize,
    /// Rows in the batch with an old image.
    old_rows: usize,
    /// Likewise for `_unchanged_toast`.
    toast_pending_nulls: usize,
    toast_rows: usize,
    len: usize,
    bytes: usize,
    /// Fixed bytes every row adds (data and metadata slots).
    row_bytes: usize,
    /// Fixed bytes of one row of `_old` children.
    old_row_bytes: usize,
    scratch: Scratch<'static>,
    arenas: Arenas,
    toast_columns: Vec<usize>,
}

impl std::fmt::Debug for BatchBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchBuilder")
            .field("table", &self.schema.qualified_name())
            .field("len", &self.len)
            .field("approx_bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl BatchBuilder {
    /// A builder for `schema`.
    ///
    /// # Panics
    ///
    /// If `schema` was assembled by hand with a column data type [`TableSchema::from_relation`]
    /// never produces.
    pub fn new(schema: Arc<TableSchema>) -> Self {
        let types: Vec<ColType> = schema
            .columns
            .iter()
            .map(|c| {
                ColType::from_spec(c.type_oid, &c.data_type).unwrap_or_else(|| {
                    panic!(
                        "table {}, column {:?}: unsupported data type {}",
                        schema.qualified_name(),
                        c.name,
                        c.data_type
                    )
                })
            })
            .collect();
        let make = || -> Vec<ColumnBuilder> {
            types
                .iter()
                .zip(&schema.columns)
                .map(|(ty, c)| ColumnBuilder::new(*ty, &c.data_type))
                .collect()
        };
        let columns = make();
        let old_columns = make();
        let old_fields = match schema
            .arrow
            .field_with_name(OLD_COLUMN)
            .map(|f| f.data_type())
        {
            Ok(DataType::Struct(fields)) => fields.clone(),
            _ => panic!(
                "table {}: the Arrow schema has no struct column {OLD_COLUMN}",
                schema.qualified_name()
            ),
        };
        let toast_field = match schema
            .arrow
            .field_with_name(UNCHANGED_TOAST_COLUMN)
            .map(|f| f.data_type())
        {
            Ok(DataType::List(item)) => item.clone(),
            _ => panic!(
                "table {}: the Arrow schema has no list column {UNCHANGED_TOAST_COLUMN}",
                schema.qualified_name()
            ),
        };
        let data_width: usize = types
            .iter()
            .map(|t| match t {
                ColType::Scalar(k) => k.fixed_width(),
                ColType::List(_) => 4,
            })
            .sum();
        // Data slots, plus _op (6 bytes + offset), _lsn, _commit_lsn, _commit_ts and _xid.
        let row_bytes = data_width + 10 + 8 + 8 + 8 + 4;
        let ncols = types.len();
        BatchBuilder {
            schema,
            types,
            columns,
            old_columns,
            old_valid: NullBufferBuilder::new(0),
            old_fields,
            toast_field,
            op: StringBuilder::new(),
            lsn: UInt64Builder::new(),
            commit_lsn: UInt64Builder::new(),
            commit_ts: TimestampMicrosecondBuilder::new().with_timezone(UTC),
            xid: UInt32Builder::new(),
            unchanged_toast: ListBuilder::new(StringBuilder::new()),
            old_pending_nulls: 0,
            old_rows: 0,
            toast_pending_nulls: 0,
            toast_rows: 0,
            len: 0,
            bytes: 0,
            row_bytes,
            old_row_bytes: data_width,
            scratch: Scratch {
                new: Vec::with_capacity(ncols),
                old: Vec::with_capacity(ncols),
                elems: Vec::new(),
            },
            arenas: Arenas::default(),
            toast_columns: Vec::new(),
        }
    }

    pub fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }

    /// Rows pushed since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A running estimate of the memory the batch will take, for size-bound flushing.
    pub fn approx_bytes(&self) -> usize {
        self.bytes
    }

    /// Appends an insert.
    pub fn push_insert(&mut self, meta: &RowMeta, new: &Tuple) -> Result<(), BatchError> {
        self.push(Op::Insert, meta, Some(new), None)
    }

    /// Appends an update. Unchanged TOAST values in `new` are taken from `old` when it carries
    /// them, and listed in `_unchanged_toast` (with a null data value) when it does not.
    pub fn push_update(
        &mut self,
        meta: &RowMeta,
        old: Option<&OldTuple>,
        new: &Tuple,
    ) -> Result<(), BatchError> {
        self.push(Op::Update, meta, Some(new), old)
    }

    /// Appends a delete. The data columns hold the old image (only the key columns for
    /// [`OldTuple::Key`]), and so does `_old`.
    pub fn push_delete(&mut self, meta: &RowMeta, old: &OldTuple) -> Result<(), BatchError> {
        self.push(Op::Delete, meta, None, Some(old))
    }

    fn push(
        &mut self,
        op: Op,
        meta: &RowMeta,
        new: Option<&Tuple>,
        old: Option<&OldTuple>,
    ) -> Result<(), BatchError> {
        let mut scratch = std::mem::take(&mut self.scratch).recycle();
        self.arenas.clear();
        self.toast_columns.clear();
        let parsed = self.parse_row(&mut scratch, op, new, old);
        if parsed.is_ok() {
            self.append_row(&scratch, op, meta, old.is_some());
        }
        self.scratch = scratch.recycle();
        parsed
    }

    /// Parses the old and new tuples into `scratch` without touching the builders.
    fn parse_row<'a>(
        &mut self,
        scratch: &mut Scratch<'a>,
        op: Op,
        new: Option<&'a Tuple>,
        old: Option<&'a OldTuple>,
    ) -> Result<(), BatchError> {
        let ncols = self.types.len();
        if let Some(old) = old {
            let tuple = old.tuple();
            self.check_len("old", tuple)?;
            for (i, value) in tuple.0.iter().enumerate() {
                // An unchanged-TOAST marker in an old image carries no value: null in `_old`.
                match value {
                    Value::Null | Value::UnchangedToast => scratch.old.push(Cell::Null),
                    Value::Text(raw) => {
                        let ty = self.types[i];
                        if let Err(e) = parse_into(
                            ty,
                            raw,
                            &mut scratch.old,
                            &mut scratch.elems,
                            &mut self.arenas,
                        ) {
                            return Err(self.value_error(i, raw, e));
                        }
                    }
                    Value::Binary(_) => return Err(self.binary_error(i)),
                }
            }
        }
        match new {
            None => scratch.new.extend_from_slice(&scratch.old),
            Some(tuple) => {
                self.check_len("new", tuple)?;
                for (i, value) in tuple.0.iter().enumerate() {
                    match value {
                        Value::Null => scratch.new.push(Cell::Null),
                        Value::Text(raw) => {
                            let ty = self.types[i];
                            if let Err(e) = parse_into(
                                ty,
                                raw,
                                &mut scratch.new,
                                &mut scratch.elems,
                                &mut self.arenas,
                            ) {
                                return Err(self.value_error(i, raw, e));
                            }
                        }
                        Value::UnchangedToast => {
                            // The value did not change, so an old image that has it has it right.
                            let cell = match scratch.old.get(i) {
                                Some(cell) if *cell != Cell::Null => *cell,
                                _ => {
                                    self.toast_columns.push(i);
                                    Cell::Null
                                }
                            };
                            scratch.new.push(cell);
                        }
                        Value::Binary(_) => return Err(self.binary_error(i)),
                    }
                }
            }
        }
        debug_assert_eq!(scratch.new.len(), ncols);
        debug_assert!(op != Op::Insert || scratch.old.is_empty());
        Ok(())
    }

    fn check_len(&self, which: &'static str, tuple: &Tuple) -> Result<(), BatchError> {
        if tuple.0.len() == self.types.len() {
            Ok(())
        } else {
            Err(BatchError::ColumnCount {
                table: self.schema.qualified_name(),
                which,
                expected: self.types.len(),
                got: tuple.0.len(),
            })
        }
    }

    #[cold]
    #[inline(never)]
    fn value_error(&self, i: usize, raw: &[u8], e: ParseErr) -> BatchError {
        let c = &self.schema.columns[i];
        BatchError::InvalidValue(Box::new(InvalidValue {
            table: self.schema.qualified_name(),
            column: c.name.clone(),
            pg_type: c.pg_type.clone(),
            arrow_type: c.data_type.to_string(),
            value: truncate_value(raw),
            reason: e.reason,
            hint: e.hint.text(),
        }))
    }

    #[cold]
    #[inline(never)]
    fn binary_error(&self, i: usize) -> BatchError {
        let c = &self.schema.columns[i];
        BatchError::BinaryValue {
            table: self.schema.qualified_name(),
            column: c.name.clone(),
            pg_type: c.pg_type.clone(),
        }
    }

    /// Appends a parsed row to every builder. Cannot fail.
    fn append_row(&mut self, scratch: &Scratch<'_>, op: Op, meta: &RowMeta, has_old: bool) {
        let ctx = Ctx {
            elems: &scratch.elems,
            text: &self.arenas.text,
            bytes: &self.arenas.bytes,
        };
        let mut bytes = self.row_bytes;
        for (b, cell) in self.columns.iter_mut().zip(&scratch.new) {
            bytes += b.append(cell, &ctx);
        }
        if has_old {
            self.old_valid.append_non_null();
            if self.old_pending_nulls > 0 {
                for b in &mut self.old_columns {
                    b.append_nulls(self.old_pending_nulls);
                }
                bytes += self.old_pending_nulls * self.old_row_bytes;
                self.old_pending_nulls = 0;
            }
            bytes += self.old_row_bytes;
            for (b, cell) in self.old_columns.iter_mut().zip(&scratch.old) {
                bytes += b.append(cell, &ctx);
            }
            self.old_rows += 1;
        } else {
            self.old_valid.append_null();
            self.old_pending_nulls += 1;
        }
        self.op.append_value(op.as_str());
        self.lsn.append_value(meta.lsn.0);
        self.commit_lsn.append_value(meta.commit_lsn.0);
        self.commit_ts
            .append_value(meta.commit_ts.saturating_add(PG_EPOCH_OFFSET_MICROS));
        self.xid.append_value(meta.xid);
        if self.toast_columns.is_empty() {
            self.toast_pending_nulls += 1;
        } else {
            if self.toast_pending_nulls > 0 {
                self.unchanged_toast.append_nulls(self.toast_pending_nulls);
                bytes += self.toast_pending_nulls * 4;
                self.toast_pending_nulls = 0;
            }
            bytes += 4;
            self.toast_rows += 1;
            for &i in &self.toast_columns {
                let name = &self.schema.columns[i].name;
                self.unchanged_toast.values().append_value(name);
                bytes += name.len() + 4;
            }
            self.unchanged_toast.append(true);
        }
        self.len += 1;
        self.bytes += bytes;
    }

    /// Returns the batch built so far and resets the builder for the next one.
    pub fn finish(&mut self) -> RecordBatch {
        let len = self.len;
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len() + 7);
        arrays.extend(self.columns.iter_mut().map(ColumnBuilder::finish));
        arrays.push(Arc::new(self.op.finish()));
        arrays.push(Arc::new(self.lsn.finish()));
        arrays.push(Arc::new(self.commit_lsn.finish()));
        arrays.push(Arc::new(self.commit_ts.finish()));
        arrays.push(Arc::new(self.xid.finish()));
        let old_valid = self.old_valid.finish();
        let old = if self.old_rows == 0 {
            StructArray::new_null(self.old_fields.clone(), len)
        } else {
            let pending = std::mem::take(&mut self.old_pending_nulls);
            let old: Vec<ArrayRef> = self
                .old_columns
                .iter_mut()
                .map(|b| {
                    b.append_nulls(pending);
                    b.finish()
                })
                .collect();
            StructArray::try_new_with_length(self.old_fields.clone(), old, old_valid, len)
                .expect("_old arrays match the _old fields")
        };
        arrays.push(Arc::new(old));
        let toast = if self.toast_rows == 0 {
            ListArray::new_null(self.toast_field.clone(), len)
        } else {
            self.unchanged_toast.append_nulls(self.toast_pending_nulls);
            self.unchanged_toast.finish()
        };
        arrays.push(Arc::new(toast));
        self.len = 0;
        self.bytes = 0;
        self.old_pending_nulls = 0;
        self.old_rows = 0;
        self.toast_pending_nulls = 0;
        self.toast_rows = 0;
        RecordBatch::try_new(self.schema.arrow.clone(), arrays)
            .expect("built arrays match the table's Arrow schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycle_keeps_the_allocation() {
        let mut v: Vec<Cell<'static>> = Vec::with_capacity(16);
        v.push(Cell::Null);
        let ptr = v.as_ptr() as usize;
        let s = String::from("x");
        let mut w: Vec<Cell<'_>> = recycle(v);
        w.push(Cell::Str(&s));
        assert_eq!(w.as_ptr() as usize, ptr);
        assert!(w.capacity() >= 16);
        let back: Vec<Cell<'static>> = recycle(w);
        assert_eq!(back.as_ptr() as usize, ptr);
    }
}
