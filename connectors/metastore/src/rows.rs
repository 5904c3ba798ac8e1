//! Turning the records of one call into the statement's parameters: each field checked against
//! the table, rows with the same key reduced to one, rows grouped by the columns they carry.

use std::collections::HashMap;
use std::io::Write as _;

use lily_delivery::{Record, SinkError};
use serde_json::Value;

use crate::config::Mode;
use crate::table::Target;

/// Rows carrying the same columns, as the JSON array `jsonb_to_recordset` reads.
#[derive(Debug)]
pub(crate) struct Group {
    /// Positions of the columns the rows carry, ascending.
    pub columns: Vec<usize>,
    pub json: String,
}

struct Row<'a> {
    /// Position of the (last merged) record in the call: the order the server's own
    /// deduplication goes by.
    ord: usize,
    /// By column position; `None` = the record does not carry the column.
    values: Vec<Option<&'a Value>>,
}

/// Groups the records for [`crate::sql::statement`]. A record that can never be written (a
/// field that is no column, a missing key column) fails the call permanently; the delivery
/// engine then retries the records one by one and dead-letters only that one.
pub(crate) fn group(target: &Target, records: &[Record]) -> Result<Vec<Group>, SinkError> {
    let mut rows: Vec<Row> = Vec::with_capacity(records.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (ord, record) in records.iter().enumerate() {
        let values = read_record(target, record)?;
        let key = dedupe_key(target, &values);
        match key.as_ref().and_then(|k| seen.get(k)) {
            // Records arrive in commit order. Upserting them one after the other leaves the
            // later record's values, on top of the earlier one's for columns only that one
            // carries; inserting-or-skipping leaves the first; deleting twice is deleting once.
            Some(&i) => {
                if target.mode == Mode::Upsert {
                    let row = &mut rows[i];
                    row.ord = ord;
                    for (slot, v) in row.values.iter_mut().zip(values) {
                        if v.is_some() {
                            *slot = v;
                        }
                    }
                }
            }
            None => {
                if let Some(k) = key {
                    seen.insert(k, rows.len());
                }
                rows.push(Row { ord, values });
            }
        }
    }

    let mut groups: Vec<(Vec<usize>, Vec<u8>)> = Vec::new();
    let mut by_shape: HashMap<Vec<usize>, usize> = HashMap::new();
    for row in &rows {
        let shape: Vec<usize> = row
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|_| i))
            .collect();
        let g = *by_shape.entry(shape.clone()).or_insert_with(|| {
            groups.push((shape, b"[".to_vec()));
            groups.len() - 1
        });
        let (shape, buf) = &mut groups[g];
        if buf.len() > 1 {
            buf.push(b',');
        }
        write_row(buf, row, shape).map_err(|e| {
            SinkError::permanent(format!("encoding a row for {} failed: {e}", target.display))
        })?;
    }
    groups
        .into_iter()
        .map(|(columns, mut buf)| {
            buf.push(b']');
            // serde_json writes UTF-8 only; the check costs one pass over the bytes.
            let json = String::from_utf8(buf).map_err(|e| {
                SinkError::permanent(format!("encoding rows for {} failed: {e}", target.display))
            })?;
            Ok(Group { columns, json })
        })
        .collect()
}

/// The record's fields by column position. In delete mode only the key columns are kept (the
/// others are not written, so a generated column is fine there), but every field must still name
/// a column: a misspelt field is a configuration error whatever the mode.
fn read_record<'a>(
    target: &Target,
    record: &'a Record,
) -> Result<Vec<Option<&'a Value>>, SinkError> {
    let table = &target.display;
    let mut values = vec![None; target.columns.len()];
    for (name, value) in &record.fields {
        let Some(&i) = target.by_name.get(name) else {
            return Err(SinkError::permanent(format!(
                "record {}: field {name:?} is not a column of table {table}",
                record.id
            )));
        };
        if target.columns[i].generated && target.mode != Mode::Delete {
            return Err(SinkError::permanent(format!(
                "record {}: field {name:?} is a generated column of table {table} and cannot be written",
                record.id
            )));
        }
        if target.mode != Mode::Delete || target.key.contains(&i) {
            values[i] = Some(value);
        }
    }
    if let Some(&missing) = target.key.iter().find(|&&k| values[k].is_none()) {
        return Err(SinkError::permanent(format!(
            "record {}: lacks key column {:?} ({} of table {table}), which every row must carry",
            record.id, target.columns[missing].name, target.key_name
        )));
    }
    Ok(values)
}

/// The key's JSON text, or `None` when the row collides with no other (a NULL in a key whose
/// NULLs are distinct). Equal JSON means an equal key; the server additionally merges keys that
/// are spelt differently but equal as values.
fn dedupe_key(target: &Target, values: &[Option<&Value>]) -> Option<String> {
    let key: Vec<&Value> = target
        .key
        .iter()
        .map(|&k| values[k].unwrap_or(&Value::Null))
        .collect();
    if !target.nulls_not_distinct && key.iter().any(|v| v.is_null()) {
        return None;
    }
    serde_json::to_string(&key).ok()
}

fn write_row(buf: &mut Vec<u8>, row: &Row, shape: &[usize]) -> Result<(), serde_json::Error> {
    write!(buf, "{{\"n\":{}", row.ord).map_err(serde_json::Error::io)?;
    for &c in shape {
        write!(buf, ",\"c{c}\":").map_err(serde_json::Error::io)?;
        // Every column of the shape is carried by the row; null keeps the JSON valid anyway.
        serde_json::to_writer(&mut *buf, row.values[c].unwrap_or(&Value::Null))?;
    }
    buf.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::sql::quote_ident;
    use crate::table::Column;

    fn target(mode: Mode) -> Target {
        let columns: Vec<Column> = ["k", "a", "b", "g"]
            .iter()
            .map(|n| Column {
                name: n.to_string(),
                ident: quote_ident(n),
                type_sql: "text".into(),
                not_null: *n == "k",
                has_default: false,
                generated: *n == "g",
                compare_as_text: false,
            })
            .collect();
        Target {
            display: "s.t".into(),
            qualified: "\"s\".\"t\"".into(),
            mode,
            by_name: columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect(),
            columns,
            key: vec![0],
            key_name: "t_pkey".into(),
            nulls_not_distinct: false,
            update_columns: None,
        }
    }

    fn rec(id: &str, fields: Value) -> Record {
        Record {
            id: id.into(),
            commit_lsn: lily_pgoutput::Lsn(1),
            commit_ts_us: 0,
            key: None,
            fields: fields.as_object().cloned().unwrap_or_default(),
        }
    }

    fn parsed(g: &Group) -> Value {
        serde_json::from_str(&g.json).unwrap()
    }

    #[test]
    fn upsert_merges_same_key_keeping_later_values() {
        let t = target(Mode::Upsert);
        let groups = group(
            &t,
            &[
                rec("1", json!({"k": "x", "a": "old", "b": "kept"})),
                rec("2", json!({"k": "y", "a": "other"})),
                rec("3", json!({"k": "x", "a": "new"})),
            ],
        )
        .unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].columns, vec![0, 1, 2]);
        assert_eq!(
            parsed(&groups[0]),
            json!([{"n": 2, "c0": "x", "c1": "new", "c2": "kept"}])
        );
        assert_eq!(groups[1].columns, vec![0, 1]);
        assert_eq!(
            parsed(&groups[1]),
            json!([{"n": 1, "c0": "y", "c1": "other"}])
        );
    }

    #[test]
    fn insert_keeps_first_and_delete_reads_keys_only() {
        let recs = [
            rec("1", json!({"k": "x", "a": "first"})),
            rec("2", json!({"k": "x", "a": "second"})),
        ];
        let groups = group(&target(Mode::Insert), &recs).unwrap();
        assert_eq!(
            parsed(&groups[0]),
            json!([{"n": 0, "c0": "x", "c1": "first"}])
        );
        let groups = group(&target(Mode::Delete), &recs).unwrap();
        assert_eq!(groups[0].columns, vec![0]);
        assert_eq!(parsed(&groups[0]), json!([{"n": 0, "c0": "x"}]));
    }

    #[test]
    fn null_keys_are_distinct_unless_declared_otherwise() {
        let mut t = target(Mode::Upsert);
        t.key = vec![0, 1];
        let recs = [
            rec("1", json!({"k": "x", "a": null})),
            rec("2", json!({"k": "x", "a": null})),
        ];
        assert_eq!(
            parsed(&group(&t, &recs).unwrap()[0])
                .as_array()
                .unwrap()
                .len(),
            2
        );
        t.nulls_not_distinct = true;
        assert_eq!(
            parsed(&group(&t, &recs).unwrap()[0])
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn bad_records_are_permanent() {
        let t = target(Mode::Upsert);
        let err = group(&t, &[rec("r1", json!({"k": "x", "nope\"; --": 1}))]).unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(err.to_string().contains("r1"), "{err}");
        let err = group(&t, &[rec("r2", json!({"a": 1}))]).unwrap_err();
        assert!(err.to_string().contains("lacks key column \"k\""), "{err}");
        let err = group(&t, &[rec("r3", json!({"k": "x", "g": 1}))]).unwrap_err();
        assert!(err.to_string().contains("generated"), "{err}");
    }
}
