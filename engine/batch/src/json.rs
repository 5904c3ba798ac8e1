//! Rows of a batch as JSON objects: what webhook bodies, the metastore sink's parameters and
//! inbound hooks' SQL output are made of.

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use serde_json::{Map, Value};

/// One JSON object per row, keyed by column name, nulls kept (an absent key and a null column
/// mean different things to an upsert). Values as `arrow-json` writes them: numbers as numbers,
/// timestamps as RFC 3339 text, binary as hex.
pub fn objects(batch: &RecordBatch) -> Result<Vec<Map<String, Value>>, ArrowError> {
    let mut buf = Vec::new();
    {
        let mut w = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow_json::writer::JsonArray>(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&buf).map_err(|e| ArrowError::JsonError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, StringArray};
    use serde_json::json;

    use super::*;

    #[test]
    fn rows_keep_their_nulls_and_types() {
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef,
            ),
            (
                "name",
                Arc::new(StringArray::from(vec![None, Some("b")])) as ArrayRef,
            ),
        ])
        .unwrap();
        let rows = objects(&batch).unwrap();
        assert_eq!(
            Value::Array(rows.into_iter().map(Value::Object).collect()),
            json!([{"id": 1, "name": null}, {"id": null, "name": "b"}])
        );
    }

    #[test]
    fn an_empty_batch_is_no_rows() {
        let batch = RecordBatch::try_from_iter([(
            "id",
            Arc::new(Int64Array::from(Vec::<i64>::new())) as ArrayRef,
        )])
        .unwrap();
        assert!(objects(&batch).unwrap().is_empty());
    }
}
