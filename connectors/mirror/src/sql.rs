//! SQL text of the set-based statements. Every value arrives as one `text[]` parameter per column,
//! unnested into a row source `u(c0, c1, ...)` and cast to the target column's type; the aliases
//! are generated, so no source name is ever spliced in unquoted.

use std::fmt::Write as _;

use crate::table::TablePlan;

pub use lily_pg::quote_ident;

/// `"schema"."table"`.
pub fn quote_qualified(schema: &str, table: &str) -> String {
    lily_pg::QualifiedName::new(schema, table).quoted()
}

/// `unnest($1::text[], ..., $n::text[]) AS u(a0, ..., an)` for the given aliases.
fn unnest(aliases: &[String]) -> String {
    let mut s = String::from("unnest(");
    for i in 0..aliases.len() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "${}::text[]", i + 1);
    }
    s.push_str(") AS u(");
    s.push_str(&aliases.join(", "));
    s.push(')');
    s
}

fn aliases(prefix: &str, cols: &[usize]) -> Vec<String> {
    cols.iter().map(|c| format!("{prefix}{c}")).collect()
}

fn cast(plan: &TablePlan, col: usize, alias: &str) -> String {
    format!("u.{alias}::{}", plan.columns[col].cast)
}

fn idents(plan: &TablePlan, cols: &[usize]) -> String {
    cols.iter()
        .map(|&c| plan.columns[c].ident.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `t.k = u.kN::type AND ...` for the key columns read from aliases `prefix{col}`.
fn key_match(plan: &TablePlan, table_alias: &str, keys: &[usize], prefix: &str) -> String {
    keys.iter()
        .map(|&k| {
            format!(
                "{table_alias}.{} = {}",
                plan.columns[k].ident,
                cast(plan, k, &format!("{prefix}{k}"))
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `o.c IS NOT DISTINCT FROM u.oN::type AND ...` over every column (text comparison for types
/// without equality).
fn row_match(plan: &TablePlan, table_alias: &str, prefix: &str) -> String {
    (0..plan.columns.len())
        .map(|c| {
            let col = &plan.columns[c];
            let value = cast(plan, c, &format!("{prefix}{c}"));
            if col.compare_as_text {
                format!(
                    "{table_alias}.{}::text IS NOT DISTINCT FROM ({value})::text",
                    col.ident
                )
            } else {
                format!("{table_alias}.{} IS NOT DISTINCT FROM {value}", col.ident)
            }
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn conflict_clause(plan: &TablePlan, keys: &[usize], set_cols: &[usize]) -> String {
    let updates: Vec<String> = set_cols
        .iter()
        .filter(|c| !keys.contains(c))
        .map(|&c| format!("{0} = EXCLUDED.{0}", plan.columns[c].ident))
        .collect();
    if updates.is_empty() {
        format!(" ON CONFLICT ({}) DO NOTHING", idents(plan, keys))
    } else {
        format!(
            " ON CONFLICT ({}) DO UPDATE SET {}",
            idents(plan, keys),
            updates.join(", ")
        )
    }
}

/// `INSERT … SELECT` of the columns `cols` from the unnested array parameters.
fn insert_select(plan: &TablePlan, cols: &[usize]) -> String {
    let a = aliases("c", cols);
    let values: Vec<String> = cols
        .iter()
        .zip(&a)
        .map(|(&c, a)| cast(plan, c, a))
        .collect();
    format!(
        "INSERT INTO {} AS t ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}",
        plan.qualified,
        idents(plan, cols),
        values.join(", "),
        unnest(&a)
    )
}

/// Inserts or overwrites whole rows: parameters are the columns `cols` (all of them).
pub(crate) fn upsert(plan: &TablePlan, keys: &[usize], cols: &[usize]) -> String {
    insert_select(plan, cols) + &conflict_clause(plan, keys, cols)
}

/// Updates the columns `cols` (which include the key) of existing rows found by key; the other
/// columns keep their value. Parameters are `cols`.
pub(crate) fn update_by_key(plan: &TablePlan, keys: &[usize], cols: &[usize]) -> Option<String> {
    let a = aliases("c", cols);
    let sets: Vec<String> = cols
        .iter()
        .filter(|c| !keys.contains(c))
        .map(|&c| {
            format!(
                "{} = {}",
                plan.columns[c].ident,
                cast(plan, c, &format!("c{c}"))
            )
        })
        .collect();
    if sets.is_empty() {
        return None;
    }
    Some(format!(
        "UPDATE {} AS t SET {} FROM {} WHERE {}",
        plan.qualified,
        sets.join(", "),
        unnest(&a),
        key_match(plan, "t", keys, "c")
    ))
}

/// Inserts rows whose columns `kept` come from the parameters and whose other columns are copied
/// from the existing row at another key (a key-changing update that left TOASTed columns out).
/// Parameters: `cols`, then the old key columns.
pub(crate) fn move_row(plan: &TablePlan, keys: &[usize], cols: &[usize]) -> String {
    let copied: Vec<usize> = (0..plan.columns.len())
        .filter(|c| !cols.contains(c))
        .collect();
    let mut a = aliases("c", cols);
    a.extend(aliases("k", keys));
    let mut values: Vec<String> = cols
        .iter()
        .map(|&c| cast(plan, c, &format!("c{c}")))
        .collect();
    values.extend(
        copied
            .iter()
            .map(|&c| format!("o.{}", plan.columns[c].ident)),
    );
    let all: Vec<usize> = cols.iter().chain(&copied).copied().collect();
    format!(
        "INSERT INTO {q} AS t ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {} JOIN {q} AS o ON {}{}",
        idents(plan, &all),
        values.join(", "),
        unnest(&a),
        key_match(plan, "o", keys, "k"),
        conflict_clause(plan, keys, &all),
        q = plan.qualified,
    )
}

/// Deletes rows by key. Parameters: the key columns.
pub(crate) fn delete_by_key(plan: &TablePlan, keys: &[usize]) -> String {
    let a = aliases("c", keys);
    format!(
        "DELETE FROM {} AS t USING {} WHERE {}",
        plan.qualified,
        unnest(&a),
        key_match(plan, "t", keys, "c")
    )
}

/// Plain inserts (tables without a key). Parameters: every column.
pub(crate) fn insert(plan: &TablePlan) -> String {
    let cols: Vec<usize> = (0..plan.columns.len()).collect();
    insert_select(plan, &cols)
}

/// Deletes one row equal to each old image (tables without a key). Parameters: every column of
/// the old image. The images of one statement must be distinct.
pub(crate) fn delete_whole_row(plan: &TablePlan) -> String {
    let cols: Vec<usize> = (0..plan.columns.len()).collect();
    let a = aliases("o", &cols);
    format!(
        "DELETE FROM {q} AS t WHERE t.ctid = ANY (ARRAY(SELECT (SELECT o.ctid FROM {q} AS o WHERE {} LIMIT 1) \
         FROM {}))",
        row_match(plan, "o", "o"),
        unnest(&a),
        q = plan.qualified,
    )
}

/// Updates one row equal to each old image (tables without a key) to the new values of `cols`.
/// Parameters: `cols` of the new image, then every column of the old image.
pub(crate) fn update_whole_row(plan: &TablePlan, cols: &[usize]) -> Option<String> {
    if cols.is_empty() {
        return None;
    }
    let all: Vec<usize> = (0..plan.columns.len()).collect();
    let mut a = aliases("c", cols);
    a.extend(aliases("o", &all));
    let sets: Vec<String> = cols
        .iter()
        .map(|&c| {
            format!(
                "{} = v.c{c}::{}",
                plan.columns[c].ident, plan.columns[c].cast
            )
        })
        .collect();
    Some(format!(
        "UPDATE {q} AS t SET {} FROM (SELECT (SELECT o.ctid FROM {q} AS o WHERE {} LIMIT 1) AS tid, u.* \
         FROM {}) AS v WHERE t.ctid = v.tid",
        sets.join(", "),
        row_match(plan, "o", "o"),
        unnest(&a),
        q = plan.qualified,
    ))
}
