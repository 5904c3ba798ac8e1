use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use lily_batch::{BatchBuilder, RowMeta, TableSchema};
use lily_pgoutput::{Column, OldTuple, Relation, ReplicaIdentity, Tuple, Value};

use super::*;
use crate::table::ColumnPlan;

fn relation(identity: ReplicaIdentity, cols: &[(&str, u32, bool)]) -> Arc<TableSchema> {
    let rel = Relation {
        id: 1,
        namespace: "public".into(),
        name: "t".into(),
        replica_identity: identity,
        columns: cols
            .iter()
            .map(|(name, oid, key)| Column {
                is_key: *key,
                name: name.to_string(),
                type_oid: *oid,
                type_modifier: -1,
            })
            .collect(),
    };
    Arc::new(TableSchema::from_relation(&rel, &HashMap::new()).unwrap())
}

fn plan(schema: Arc<TableSchema>, identity: Identity) -> TablePlan {
    let columns = schema
        .columns
        .iter()
        .map(|c| ColumnPlan {
            ident: crate::sql::quote_ident(&c.name),
            cast: c.pg_type.clone(),
            compare_as_text: false,
        })
        .collect();
    let by_name = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), i))
        .collect();
    TablePlan {
        display: schema.qualified_name(),
        qualified: crate::sql::quote_qualified(&schema.namespace, &schema.name),
        schema,
        columns,
        identity,
        by_name,
    }
}

fn tuple(vals: &[Option<&str>]) -> Tuple {
    Tuple(
        vals.iter()
            .map(|v| match v {
                Some("<toast>") => Value::UnchangedToast,
                Some(s) => Value::Text(Bytes::copy_from_slice(s.as_bytes())),
                None => Value::Null,
            })
            .collect(),
    )
}

enum Change<'a> {
    Ins(&'a [Option<&'a str>]),
    Upd(Option<&'a [Option<&'a str>]>, &'a [Option<&'a str>]),
    Del(&'a [Option<&'a str>]),
}

fn batch(schema: &Arc<TableSchema>, changes: &[Change<'_>], full: bool) -> RecordBatch {
    let mut b = BatchBuilder::new(schema.clone());
    let meta = RowMeta::default();
    let old = |v: &[Option<&str>]| {
        if full {
            OldTuple::Old(tuple(v))
        } else {
            OldTuple::Key(tuple(v))
        }
    };
    for c in changes {
        match c {
            Change::Ins(v) => b.push_insert(&meta, &tuple(v)).unwrap(),
            Change::Upd(o, n) => b
                .push_update(&meta, o.map(old).as_ref(), &tuple(n))
                .unwrap(),
            Change::Del(o) => b.push_delete(&meta, &old(o)).unwrap(),
        }
    }
    b.finish()
}

fn params(step: &Step) -> Vec<Vec<Option<&str>>> {
    step.params.iter().map(|p| p.values()).collect()
}

/// Columns as rows, sorted, for order-insensitive comparison.
fn rows_of(step: &Step) -> Vec<Vec<Option<String>>> {
    let cols = params(step);
    let mut rows: Vec<Vec<Option<String>>> = (0..step.rows)
        .map(|r| cols.iter().map(|c| c[r].map(str::to_string)).collect())
        .collect();
    rows.sort();
    rows
}

fn r(vals: &[Option<&str>]) -> Vec<Option<String>> {
    vals.iter().map(|v| v.map(str::to_string)).collect()
}

const INT8: u32 = 20;
const TEXT: u32 = 25;

#[test]
fn inserts_updates_and_deletes_fold_per_key() {
    let schema = relation(
        ReplicaIdentity::Default,
        &[("id", INT8, true), ("v", TEXT, false)],
    );
    let p = plan(schema.clone(), Identity::Key(vec![0]));
    let rb = batch(
        &schema,
        &[
            Change::Ins(&[Some("1"), Some("a")]),
            Change::Ins(&[Some("2"), Some("b")]),
            Change::Upd(None, &[Some("1"), Some("a2")]),
            Change::Del(&[Some("2"), None]),
            Change::Ins(&[Some("3"), None]),
            Change::Upd(None, &[Some("1"), Some("a3")]),
        ],
        false,
    );
    let steps = plan_batch(&p, &rb).unwrap();
    assert_eq!(steps.len(), 2, "one delete and one upsert");
    assert_eq!(steps[0].action, "delete");
    assert_eq!(rows_of(&steps[0]), vec![r(&[Some("2")])]);
    assert!(steps[0]
        .sql
        .starts_with("DELETE FROM \"public\".\"t\" AS t USING unnest($1::text[])"));
    assert_eq!(steps[1].action, "upsert");
    assert_eq!(
        rows_of(&steps[1]),
        vec![r(&[Some("1"), Some("a3")]), r(&[Some("3"), None])]
    );
    assert!(
        steps[1]
            .sql
            .ends_with("ON CONFLICT (\"id\") DO UPDATE SET \"v\" = EXCLUDED.\"v\""),
        "{}",
        steps[1].sql
    );
}

#[test]
fn key_chains_delete_every_vacated_key() {
    // 1 -> 2, then 2 -> 3: keys 1 and 2 end deleted, 3 holds the row (a naive "delete old keys,
    // upsert new rows" would resurrect 2).
    let schema = relation(
        ReplicaIdentity::Default,
        &[("id", INT8, true), ("v", TEXT, false)],
    );
    let p = plan(schema.clone(), Identity::Key(vec![0]));
    let rb = batch(
        &schema,
        &[
            Change::Upd(Some(&[Some("1"), None]), &[Some("2"), Some("x")]),
            Change::Upd(Some(&[Some("2"), None]), &[Some("3"), Some("y")]),
        ],
        false,
    );
    let steps = plan_batch(&p, &rb).unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(rows_of(&steps[0]), vec![r(&[Some("1")]), r(&[Some("2")])]);
    assert_eq!(rows_of(&steps[1]), vec![r(&[Some("3"), Some("y")])]);

    // A swap through a third key: 1 -> 9, 2 -> 1, 9 -> 2.
    let rb = batch(
        &schema,
        &[
            Change::Upd(Some(&[Some("1"), None]), &[Some("9"), Some("one")]),
            Change::Upd(Some(&[Some("2"), None]), &[Some("1"), Some("two")]),
            Change::Upd(Some(&[Some("9"), None]), &[Some("2"), Some("one")]),
        ],
        false,
    );
    let steps = plan_batch(&p, &rb).unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(rows_of(&steps[0]), vec![r(&[Some("9")])]);
    assert_eq!(
        rows_of(&steps[1]),
        vec![r(&[Some("1"), Some("two")]), r(&[Some("2"), Some("one")])]
    );
}

#[test]
fn unchanged_toast_keeps_the_target_value_or_an_earlier_one() {
    let schema = relation(
        ReplicaIdentity::Default,
        &[("id", INT8, true), ("big", TEXT, false), ("n", INT8, false)],
    );
    let p = plan(schema.clone(), Identity::Key(vec![0]));
    let rb = batch(
        &schema,
        &[
            // Row 1 is only in the target: a partial update keeps its `big`.
            Change::Upd(None, &[Some("1"), Some("<toast>"), Some("10")]),
            // Row 2 is inserted in this batch: the later update takes `big` from the insert.
            Change::Ins(&[Some("2"), Some("BIG"), Some("1")]),
            Change::Upd(None, &[Some("2"), Some("<toast>"), Some("2")]),
            // Row 3 moves to key 4 without its `big`: copied from the target row 3.
            Change::Upd(
                Some(&[Some("3"), None, None]),
                &[Some("4"), Some("<toast>"), Some("7")],
            ),
        ],
        false,
    );
    let steps = plan_batch(&p, &rb).unwrap();
    let actions: Vec<&str> = steps.iter().map(|s| s.action).collect();
    assert_eq!(
        actions,
        vec![
            "copying moved rows (key-changing updates with unchanged TOAST values)",
            "delete",
            "upsert",
            "update (keeping unchanged TOAST values)"
        ]
    );
    // Move: new id and n, then the old key to copy `big` from.
    assert_eq!(
        rows_of(&steps[0]),
        vec![r(&[Some("4"), Some("7"), Some("3")])]
    );
    assert!(
        steps[0]
            .sql
            .contains("JOIN \"public\".\"t\" AS o ON o.\"id\" = u.k0::int8"),
        "{}",
        steps[0].sql
    );
    assert_eq!(rows_of(&steps[1]), vec![r(&[Some("3")])]);
    assert_eq!(
        rows_of(&steps[2]),
        vec![r(&[Some("2"), Some("BIG"), Some("2")])]
    );
    assert_eq!(rows_of(&steps[3]), vec![r(&[Some("1"), Some("10")])]);
    assert_eq!(
        steps[3].sql,
        "UPDATE \"public\".\"t\" AS t SET \"n\" = u.c2::int8 FROM unnest($1::text[], $2::text[]) AS u(c0, c2) \
         WHERE t.\"id\" = u.c0::int8"
    );
}

#[test]
fn whole_row_tables_split_where_rows_could_collide() {
    let schema = relation(
        ReplicaIdentity::Full,
        &[("a", TEXT, true), ("b", INT8, true)],
    );
    let p = plan(schema.clone(), Identity::WholeRow);
    let rb = batch(
        &schema,
        &[
            Change::Ins(&[Some("x"), Some("1")]),
            Change::Ins(&[Some("x"), Some("1")]),
            Change::Del(&[Some("x"), Some("1")]),
            Change::Del(&[Some("x"), Some("1")]),
            Change::Upd(Some(&[Some("y"), None]), &[Some("y"), Some("2")]),
            Change::Upd(Some(&[Some("y"), Some("2")]), &[Some("y"), Some("3")]),
        ],
        true,
    );
    let steps = plan_batch(&p, &rb).unwrap();
    let shape: Vec<(&str, usize)> = steps.iter().map(|s| (s.action, s.rows)).collect();
    assert_eq!(
        shape,
        vec![
            ("insert", 2),
            ("delete (matching the whole old row)", 1),
            ("delete (matching the whole old row)", 1),
            ("update (matching the whole old row)", 1),
            ("update (matching the whole old row)", 1),
        ]
    );
    assert_eq!(
        params(&steps[3]),
        vec![
            vec![Some("y")],
            vec![Some("2")],
            vec![Some("y")],
            vec![None]
        ]
    );
    assert!(
        steps[1]
            .sql
            .contains("o.\"b\" IS NOT DISTINCT FROM u.o1::int8 LIMIT 1"),
        "{}",
        steps[1].sql
    );
}

#[test]
fn full_identity_with_a_target_key_uses_it() {
    let schema = relation(
        ReplicaIdentity::Full,
        &[("id", INT8, true), ("v", TEXT, true)],
    );
    let p = plan(schema.clone(), Identity::Key(vec![0]));
    let rb = batch(
        &schema,
        &[
            Change::Upd(Some(&[Some("1"), Some("a")]), &[Some("1"), Some("b")]),
            Change::Upd(Some(&[Some("5"), Some("c")]), &[Some("6"), Some("c")]),
            Change::Del(&[Some("7"), Some("d")]),
        ],
        true,
    );
    let steps = plan_batch(&p, &rb).unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(rows_of(&steps[0]), vec![r(&[Some("5")]), r(&[Some("7")])]);
    assert_eq!(
        rows_of(&steps[1]),
        vec![r(&[Some("1"), Some("b")]), r(&[Some("6"), Some("c")])]
    );
}

#[test]
fn identifiers_are_quoted() {
    let schema = Arc::new({
        let rel = Relation {
            id: 1,
            namespace: "my schema".into(),
            name: "we\"ird; name".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                Column {
                    is_key: true,
                    name: "i\"d".into(),
                    type_oid: INT8,
                    type_modifier: -1,
                },
                Column {
                    is_key: false,
                    name: "drop table x;".into(),
                    type_oid: TEXT,
                    type_modifier: -1,
                },
            ],
        };
        TableSchema::from_relation(&rel, &HashMap::new()).unwrap()
    });
    let p = plan(schema.clone(), Identity::Key(vec![0]));
    let rb = batch(&schema, &[Change::Ins(&[Some("1"), Some("v")])], false);
    let steps = plan_batch(&p, &rb).unwrap();
    assert_eq!(
        steps[0].sql,
        "INSERT INTO \"my schema\".\"we\"\"ird; name\" AS t (\"i\"\"d\", \"drop table x;\") OVERRIDING SYSTEM VALUE \
         SELECT u.c0::int8, u.c1::text FROM unnest($1::text[], $2::text[]) AS u(c0, c1) \
         ON CONFLICT (\"i\"\"d\") DO UPDATE SET \"drop table x;\" = EXCLUDED.\"drop table x;\""
    );
}
