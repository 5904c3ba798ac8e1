//! Text of the one statement a delivery runs.
//!
//! Rows travel as one JSON array per group of rows carrying the same columns (a `text`
//! parameter, cast to jsonb) and are read back with `jsonb_to_recordset`. Their keys are
//! generated (`n` = position in the call, `c<i>` = the table's i-th column), so the only names
//! from outside spliced into the text are the table's own, always quoted; types come from the
//! server's `format_type`, which quotes them itself.
//!
//! Each group is one data-modifying CTE, so a call is one statement: atomic, and safe on a
//! connection other calls use at the same time (no BEGIN/COMMIT to interleave).

use std::fmt::Write as _;

use crate::config::Mode;
use crate::table::Target;

pub(crate) use lily_pg::quote_ident;

/// `"schema"."table"`.
pub(crate) fn quote_qualified(schema: &str, table: &str) -> String {
    lily_pg::QualifiedName::new(schema, table).quoted()
}

/// The statement writing groups of rows with the given column sets (`$1` is the first group's
/// JSON). It returns one bigint: the number of rows inserted, updated or deleted.
pub(crate) fn statement(target: &Target, shapes: &[&[usize]]) -> String {
    let mut sql = String::from("WITH ");
    for (g, shape) in shapes.iter().enumerate() {
        if g > 0 {
            sql.push_str(", ");
        }
        let body = match target.mode {
            Mode::Upsert | Mode::Insert => insert(target, g + 1, shape),
            Mode::Delete => delete(target, g + 1),
        };
        let _ = write!(sql, "w{g} AS ({body} RETURNING 1)");
    }
    sql.push_str(" SELECT ");
    for g in 0..shapes.len() {
        if g > 0 {
            sql.push_str(" + ");
        }
        let _ = write!(sql, "(SELECT count(*) FROM w{g})");
    }
    sql
}

/// `jsonb_to_recordset($p::jsonb) AS x(n bigint, c0 type, ...)`.
fn recordset(target: &Target, param: usize, columns: &[usize]) -> String {
    let mut s = format!("jsonb_to_recordset(${param}::jsonb) AS x(n bigint");
    for &c in columns {
        let _ = write!(s, ", c{c} {}", target.columns[c].type_sql);
    }
    s.push(')');
    s
}

fn idents(target: &Target, columns: &[usize]) -> String {
    columns
        .iter()
        .map(|&c| target.columns[c].ident.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Upsert and insert. Rows of one call that hit the same key are reduced to one first, by the
/// key type's own equality (so `'ABC…'` and `'abc…'` are one uuid): ON CONFLICT DO UPDATE
/// refuses to touch a row twice in one statement, and it keeps the outcome of applying the rows
/// one after the other: the last row for an upsert, the first for insert-or-skip.
fn insert(target: &Target, param: usize, shape: &[usize]) -> String {
    let key_x: Vec<String> = target.key.iter().map(|k| format!("x.c{k}")).collect();
    let mut distinct = key_x.join(", ");
    // Under NULLS DISTINCT, rows whose key holds a NULL never collide: keep each of them by
    // making its ordinal part of the dedupe key.
    let nullable: Vec<&String> = target
        .key
        .iter()
        .zip(&key_x)
        .filter(|(&k, _)| !target.columns[k].not_null)
        .map(|(_, x)| x)
        .collect();
    if !target.nulls_not_distinct && !nullable.is_empty() {
        let any_null = nullable
            .iter()
            .map(|x| format!("{x} IS NULL"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let _ = write!(distinct, ", CASE WHEN {any_null} THEN x.n END");
    }
    let order = if target.mode == Mode::Upsert {
        "DESC"
    } else {
        "ASC"
    };
    let values = shape
        .iter()
        .map(|c| format!("x.c{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut s = format!(
        "INSERT INTO {table} AS t ({cols}) SELECT {values} FROM (SELECT DISTINCT ON ({distinct}) * \
         FROM {rs} ORDER BY {distinct}, x.n {order}) AS x ON CONFLICT ({keys}) ",
        table = target.qualified,
        cols = idents(target, shape),
        rs = recordset(target, param, shape),
        keys = idents(target, &target.key),
    );
    let updates: Vec<usize> = match (target.mode, &target.update_columns) {
        (Mode::Upsert, Some(configured)) => configured
            .iter()
            .copied()
            .filter(|c| shape.contains(c))
            .collect(),
        (Mode::Upsert, None) => shape
            .iter()
            .copied()
            .filter(|c| !target.key.contains(c))
            .collect(),
        _ => Vec::new(),
    };
    if updates.is_empty() {
        s.push_str("DO NOTHING");
        return s;
    }
    let set = updates
        .iter()
        .map(|&c| format!("{0} = EXCLUDED.{0}", target.columns[c].ident))
        .collect::<Vec<_>>()
        .join(", ");
    let side = |alias: &str| {
        updates
            .iter()
            .map(|&c| {
                let col = &target.columns[c];
                if col.compare_as_text {
                    format!("{alias}.{}::text", col.ident)
                } else {
                    format!("{alias}.{}", col.ident)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    // A row that would not change is left alone: no new row version, no WAL, no update
    // triggers, and no change event for the engine's own capture of the metastore to feed back
    // into the pipeline (a replayed delivery is then truly a no-op).
    let _ = write!(
        s,
        "DO UPDATE SET {set} WHERE ({}) IS DISTINCT FROM ({})",
        side("t"),
        side("EXCLUDED")
    );
    s
}

/// Delete by key. Duplicate keys in one call are harmless here (a row is deleted once).
fn delete(target: &Target, param: usize) -> String {
    let cond = target
        .key
        .iter()
        .map(|&k| {
            let col = &target.columns[k];
            // Under NULLS NOT DISTINCT a NULL in the key is a value like any other.
            if target.nulls_not_distinct && !col.not_null {
                format!("t.{} IS NOT DISTINCT FROM x.c{k}", col.ident)
            } else {
                format!("t.{} = x.c{k}", col.ident)
            }
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "DELETE FROM {} AS t USING {} WHERE {cond}",
        target.qualified,
        recordset(target, param, &target.key)
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::table::Column;

    fn col(name: &str, type_sql: &str, not_null: bool) -> Column {
        Column {
            name: name.into(),
            ident: quote_ident(name),
            type_sql: type_sql.into(),
            not_null,
            has_default: false,
            generated: false,
            compare_as_text: type_sql == "json",
        }
    }

    fn target(mode: Mode) -> Target {
        let columns = vec![
            col("id", "uuid", true),
            col(r#"we"ird; col"#, "text", false),
            col("doc", "json", false),
        ];
        Target {
            display: "s.t".into(),
            qualified: quote_qualified("s", r#"t"; DROP TABLE x; --"#),
            mode,
            by_name: columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect::<HashMap<_, _>>(),
            columns,
            key: vec![0],
            key_name: "t_pkey".into(),
            nulls_not_distinct: false,
            update_columns: None,
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_qualified("a.b", "c;d"), r#""a.b"."c;d""#);
    }

    #[test]
    fn upsert_text() {
        let t = target(Mode::Upsert);
        let sql = statement(&t, &[&[0, 1, 2]]);
        assert_eq!(
            sql,
            r#"WITH w0 AS (INSERT INTO "s"."t""; DROP TABLE x; --" AS t ("id", "we""ird; col", "doc") SELECT x.c0, x.c1, x.c2 FROM (SELECT DISTINCT ON (x.c0) * FROM jsonb_to_recordset($1::jsonb) AS x(n bigint, c0 uuid, c1 text, c2 json) ORDER BY x.c0, x.n DESC) AS x ON CONFLICT ("id") DO UPDATE SET "we""ird; col" = EXCLUDED."we""ird; col", "doc" = EXCLUDED."doc" WHERE (t."we""ird; col", t."doc"::text) IS DISTINCT FROM (EXCLUDED."we""ird; col", EXCLUDED."doc"::text) RETURNING 1) SELECT (SELECT count(*) FROM w0)"#
        );
    }

    #[test]
    fn key_only_upsert_does_nothing_on_conflict() {
        let t = target(Mode::Upsert);
        assert!(statement(&t, &[&[0]]).contains("ON CONFLICT (\"id\") DO NOTHING RETURNING 1"));
    }

    #[test]
    fn insert_keeps_first_and_groups_sum() {
        let t = target(Mode::Insert);
        let sql = statement(&t, &[&[0, 1], &[0, 2]]);
        assert!(sql.contains("ORDER BY x.c0, x.n ASC"), "{sql}");
        assert!(sql.contains("$2::jsonb"), "{sql}");
        assert!(
            sql.ends_with("SELECT (SELECT count(*) FROM w0) + (SELECT count(*) FROM w1)"),
            "{sql}"
        );
        assert_eq!(sql.matches("DO NOTHING").count(), 2);
    }

    #[test]
    fn update_columns_limit_the_set_list() {
        let mut t = target(Mode::Upsert);
        t.update_columns = Some(vec![2]);
        let sql = statement(&t, &[&[0, 1, 2]]);
        assert!(
            sql.contains(r#"DO UPDATE SET "doc" = EXCLUDED."doc" WHERE"#),
            "{sql}"
        );
        // Configured but not carried by the rows: not overwritten with a default.
        assert!(statement(&t, &[&[0, 1]]).contains("DO NOTHING"));
    }

    #[test]
    fn nullable_keys() {
        let mut t = target(Mode::Upsert);
        t.key = vec![0, 1];
        let sql = statement(&t, &[&[0, 1]]);
        assert!(
            sql.contains(r#"DISTINCT ON (x.c0, x.c1, CASE WHEN x.c1 IS NULL THEN x.n END)"#),
            "{sql}"
        );
        t.nulls_not_distinct = true;
        assert!(statement(&t, &[&[0, 1]]).contains("DISTINCT ON (x.c0, x.c1) *"));
        t.mode = Mode::Delete;
        assert_eq!(
            statement(&t, &[&[0, 1]]),
            r#"WITH w0 AS (DELETE FROM "s"."t""; DROP TABLE x; --" AS t USING jsonb_to_recordset($1::jsonb) AS x(n bigint, c0 uuid, c1 text) WHERE t."id" = x.c0 AND t."we""ird; col" IS NOT DISTINCT FROM x.c1 RETURNING 1) SELECT (SELECT count(*) FROM w0)"#
        );
    }
}
