//! Turning a transform's output batches into delivery records.

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMicrosecondType, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Schema};
use lily_pgoutput::Lsn;
use serde_json::{Map, Value};

/// The metadata column every transform must select: idempotency keys are built per commit.
pub const COMMIT_LSN: &str = "_commit_lsn";
/// Optional: the commit time, for webhook timestamps and lag metrics.
pub const COMMIT_TS: &str = "_commit_ts";

/// One output row, before it is shaped for each sink.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRow {
    pub id: String,
    pub commit_lsn: Lsn,
    pub commit_ts_us: i64,
    /// Every output column, metadata included.
    pub columns: Map<String, Value>,
}

/// Checks an output schema at plan time.
pub fn check_output(schema: &Schema) -> Result<(), String> {
    match schema.field_with_name(COMMIT_LSN) {
        Ok(f) if f.data_type() == &DataType::UInt64 => {}
        Ok(f) => {
            return Err(format!(
                "output column {COMMIT_LSN} must be the source's {COMMIT_LSN} (UInt64), not {}",
                f.data_type()
            ))
        }
        Err(_) => {
            return Err(format!(
                "the transform's output has no {COMMIT_LSN} column: select it (idempotency keys \
                 and checkpoints are built per commit)"
            ))
        }
    }
    if let Ok(f) = schema.field_with_name(COMMIT_TS) {
        if !matches!(
            f.data_type(),
            DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, _)
        ) {
            return Err(format!(
                "output column {COMMIT_TS} must be the source's {COMMIT_TS}"
            ));
        }
    }
    Ok(())
}

/// Numbers output rows within their commit. Positions continue across the batches of a split
/// transaction and restart on replay from a checkpoint (always a transaction boundary), so the
/// same row gets the same id every time.
#[derive(Debug, Default)]
pub struct Positions {
    next: HashMap<u64, u64>,
}

impl Positions {
    fn take(&mut self, lsn: u64) -> u64 {
        let n = self.next.entry(lsn).or_insert(0);
        let p = *n;
        *n += 1;
        p
    }

    /// Keeps only the counter of the newest commit (a split transaction continues there).
    fn retain_newest(&mut self) {
        if let Some(max) = self.next.keys().max().copied() {
            self.next.retain(|k, _| *k == max);
        }
    }
}

/// Converts output batches to rows. `fallback_ts_us` is the batch's commit time, used when the
/// output has no `_commit_ts`.
pub fn to_rows(
    pipeline: &str,
    batches: &[RecordBatch],
    positions: &mut Positions,
    fallback_ts_us: i64,
) -> Result<Vec<OutputRow>, String> {
    let mut out = Vec::new();
    for batch in batches {
        if batch.num_rows() == 0 {
            continue;
        }
        let lsns = batch
            .column_by_name(COMMIT_LSN)
            .ok_or("output has no _commit_lsn")?
            .as_primitive::<UInt64Type>()
            .clone();
        let ts = batch
            .column_by_name(COMMIT_TS)
            .map(|c| c.as_primitive::<TimestampMicrosecondType>().clone());
        let objects = crate::pipeline::batch_to_objects(batch)?;
        for (i, columns) in objects.into_iter().enumerate() {
            let lsn = lsns.value(i);
            let commit_ts_us = match &ts {
                Some(t) if t.is_valid(i) => t.value(i),
                _ => fallback_ts_us,
            };
            let position = positions.take(lsn);
            out.push(OutputRow {
                id: format!("{pipeline}:{}:{position}", Lsn(lsn)),
                commit_lsn: Lsn(lsn),
                commit_ts_us,
                columns,
            });
        }
    }
    positions.retain_newest();
    Ok(out)
}

/// A row's value as an ordering key: strings as they are, anything else as JSON text; null is
/// no key.
pub fn key_text(v: Option<&Value>) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow_array::{StringArray, UInt64Array};
    use arrow_schema::Field;

    fn batch(lsns: &[u64], tags: &[&str]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("tag", DataType::Utf8, true),
                Field::new(COMMIT_LSN, DataType::UInt64, false),
            ])),
            vec![
                Arc::new(StringArray::from(tags.to_vec())),
                Arc::new(UInt64Array::from(lsns.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn positions_are_per_commit_and_continue_across_batches() {
        let mut p = Positions::default();
        let a = to_rows("p", &[batch(&[16, 16, 32], &["a", "b", "c"])], &mut p, 0).unwrap();
        let ids: Vec<&str> = a.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["p:0/10:0", "p:0/10:1", "p:0/20:0"]);
        // The transaction at 0/20 was split; its next batch continues the count.
        let b = to_rows("p", &[batch(&[32, 48], &["d", "e"])], &mut p, 0).unwrap();
        let ids: Vec<&str> = b.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["p:0/20:1", "p:0/30:0"]);
        assert_eq!(b[0].columns["tag"], Value::String("d".into()));
        // Replay from the checkpoint gives the same ids.
        let mut fresh = Positions::default();
        let again = to_rows(
            "p",
            &[batch(&[16, 16, 32], &["a", "b", "c"])],
            &mut fresh,
            0,
        )
        .unwrap();
        assert_eq!(again, a);
    }

    #[test]
    fn output_must_carry_commit_lsn() {
        let s = Schema::new(vec![Field::new("tag", DataType::Utf8, true)]);
        assert!(check_output(&s).unwrap_err().contains("_commit_lsn"));
        let s = Schema::new(vec![Field::new(COMMIT_LSN, DataType::Utf8, true)]);
        assert!(check_output(&s).unwrap_err().contains("UInt64"));
    }
}
