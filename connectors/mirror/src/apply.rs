//! Turns one table's change batch into a few set-based statements.
//!
//! Tables with a key: the batch's rows are folded, in order, into the final state of every key
//! they touch (deleted, or a row and where each of its values comes from). Keys are then unique,
//! so the whole batch becomes at most one statement of each kind: copy-moves (key-changing
//! updates that left TOASTed columns out), deletes, upserts, and partial updates (updates that
//! left TOASTed columns out), run in that order.
//!
//! Tables without a key (REPLICA IDENTITY FULL, no primary key): consecutive rows with the same
//! operation run as one statement, split wherever a row could match a row an earlier one in the
//! same statement wrote or matched.

use std::collections::{HashMap, HashSet};

use arrow_array::cast::AsArray;
use arrow_array::{Array, ListArray, RecordBatch, StringArray, StructArray};
use lily_batch::{OLD_COLUMN, OP_COLUMN, OP_DELETE, OP_INSERT, OP_UPDATE, UNCHANGED_TOAST_COLUMN};

use crate::error::MirrorError;
use crate::params::TextArray;
use crate::render::ColumnText;
use crate::sql;
use crate::table::{Identity, TablePlan};

/// A statement to run: its SQL text, what it does (for errors) and its `text[]` parameters.
pub(crate) struct Step {
    pub sql: String,
    pub action: &'static str,
    pub params: Vec<TextArray>,
    pub rows: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Insert,
    Update,
    Delete,
}

/// Where to read a key from: a row's new image (data columns) or its old image (`_old`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeySrc {
    row: usize,
    old: bool,
}

/// The state a key ends the batch in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Final {
    Deleted(KeySrc),
    Row {
        /// The row whose new image holds the values.
        row: usize,
        /// Columns whose value comes from an earlier row of the batch: (column, row).
        overrides: Vec<(usize, usize)>,
        /// Columns whose value is not in the batch (unchanged TOAST): kept from the target.
        missing: Vec<usize>,
        /// Where the missing values are: `None` = the target row at this same key, `Some` = the
        /// target row at another key (the row was moved by a key-changing update).
        from: Option<KeySrc>,
    },
}

/// Typed views of one batch.
struct View<'a> {
    plan: &'a TablePlan,
    data: Vec<ColumnText<'a>>,
    old: Option<Vec<ColumnText<'a>>>,
    old_struct: Option<&'a StructArray>,
    ops: &'a StringArray,
    toast: Option<&'a ListArray>,
}

impl<'a> View<'a> {
    fn new(plan: &'a TablePlan, records: &'a RecordBatch) -> Result<View<'a>, MirrorError> {
        let bad = |reason: String| MirrorError::BadBatch {
            table: plan.display.clone(),
            reason,
        };
        let ncols = plan.columns.len();
        if records.num_columns() < ncols {
            return Err(bad(format!(
                "{} columns, but the table has {ncols}",
                records.num_columns()
            )));
        }
        let view = |i: usize, array: &'a dyn Array| {
            ColumnText::new(array).map_err(|t| MirrorError::UnsupportedType {
                table: plan.display.clone(),
                column: plan.schema.columns[i].name.clone(),
                data_type: t.0,
            })
        };
        let data = (0..ncols)
            .map(|i| view(i, records.column(i).as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let ops = records
            .column_by_name(OP_COLUMN)
            .and_then(|a| a.as_string_opt::<i32>())
            .ok_or_else(|| bad(format!("no Utf8 column {OP_COLUMN}")))?;
        let old_struct = records
            .column_by_name(OLD_COLUMN)
            .and_then(|a| a.as_struct_opt());
        let old = match old_struct {
            Some(s) if s.num_columns() == ncols => Some(
                (0..ncols)
                    .map(|i| view(i, s.column(i).as_ref()))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(s) => {
                return Err(bad(format!(
                    "{OLD_COLUMN} has {} fields, but the table has {ncols} columns",
                    s.num_columns()
                )))
            }
            None => None,
        };
        let toast = records
            .column_by_name(UNCHANGED_TOAST_COLUMN)
            .and_then(|a| a.as_list_opt::<i32>());
        Ok(View {
            plan,
            data,
            old,
            old_struct,
            ops,
            toast,
        })
    }

    fn op(&self, row: usize) -> Result<Op, MirrorError> {
        match self.ops.is_valid(row).then(|| self.ops.value(row)) {
            Some(OP_INSERT) => Ok(Op::Insert),
            Some(OP_UPDATE) => Ok(Op::Update),
            Some(OP_DELETE) => Ok(Op::Delete),
            other => Err(MirrorError::BadBatch {
                table: self.plan.display.clone(),
                reason: format!("row {row} has {OP_COLUMN} = {other:?}"),
            }),
        }
    }

    fn has_old(&self, row: usize) -> bool {
        self.old.is_some() && self.old_struct.is_some_and(|s| s.is_valid(row))
    }

    fn cols(&self, src: KeySrc) -> &[ColumnText<'a>] {
        match (&self.old, src.old) {
            (Some(old), true) => old,
            _ => &self.data,
        }
    }

    /// Positions of the columns whose new value is an unchanged TOAST value not in the stream.
    fn missing(&self, row: usize) -> Result<Vec<usize>, MirrorError> {
        let Some(toast) = self.toast else {
            return Ok(Vec::new());
        };
        if toast.is_null(row) || toast.value_length(row) == 0 {
            return Ok(Vec::new());
        }
        let names = toast.value(row);
        let names = names
            .as_string_opt::<i32>()
            .ok_or_else(|| MirrorError::BadBatch {
                table: self.plan.display.clone(),
                reason: format!("{UNCHANGED_TOAST_COLUMN} is not a list of Utf8"),
            })?;
        let mut cols = Vec::with_capacity(names.len());
        for name in names.iter().flatten() {
            let c = *self
                .plan
                .by_name
                .get(name)
                .ok_or_else(|| MirrorError::BadBatch {
                    table: self.plan.display.clone(),
                    reason: format!("{UNCHANGED_TOAST_COLUMN} names unknown column {name:?}"),
                })?;
            cols.push(c);
        }
        cols.sort_unstable();
        cols.dedup();
        Ok(cols)
    }

    /// An unambiguous byte string of the given columns' texts (length-prefixed, nulls marked).
    fn image(
        &self,
        src: KeySrc,
        cols: impl Iterator<Item = usize>,
        scratch: &mut String,
    ) -> Vec<u8> {
        let readers = self.cols(src);
        let mut out = Vec::new();
        for c in cols {
            scratch.clear();
            if readers[c].write(src.row, scratch) {
                out.push(b'v');
                out.extend_from_slice(&(scratch.len() as u64).to_le_bytes());
                out.extend_from_slice(scratch.as_bytes());
            } else {
                out.push(b'n');
            }
        }
        out
    }
}

/// The statements that apply `records` (rows of `plan`'s table) to the target.
pub(crate) fn plan_batch(
    plan: &TablePlan,
    records: &RecordBatch,
) -> Result<Vec<Step>, MirrorError> {
    let view = View::new(plan, records)?;
    match &plan.identity {
        Identity::Key(keys) => keyed(&view, keys, records.num_rows()),
        Identity::WholeRow => whole_row(&view, records.num_rows()),
    }
}

fn keyed(view: &View<'_>, keys: &[usize], n: usize) -> Result<Vec<Step>, MirrorError> {
    let mut index: HashMap<Vec<u8>, usize> = HashMap::with_capacity(n);
    let mut finals: Vec<Final> = Vec::with_capacity(n);
    let mut scratch = String::new();
    let set =
        |index: &mut HashMap<Vec<u8>, usize>, finals: &mut Vec<Final>, key: Vec<u8>, f: Final| {
            match index.get(&key) {
                Some(&i) => finals[i] = f,
                None => {
                    index.insert(key, finals.len());
                    finals.push(f);
                }
            }
        };
    for row in 0..n {
        let op = view.op(row)?;
        let new_src = KeySrc { row, old: false };
        let old_src = view.has_old(row).then_some(KeySrc { row, old: true });
        match op {
            Op::Insert => {
                let key = view.image(new_src, keys.iter().copied(), &mut scratch);
                let f = Final::Row {
                    row,
                    overrides: Vec::new(),
                    missing: Vec::new(),
                    from: None,
                };
                set(&mut index, &mut finals, key, f);
            }
            Op::Delete => {
                let src = old_src.unwrap_or(new_src);
                let key = view.image(src, keys.iter().copied(), &mut scratch);
                set(&mut index, &mut finals, key, Final::Deleted(src));
            }
            Op::Update => {
                let new_key = view.image(new_src, keys.iter().copied(), &mut scratch);
                let (old_key, moved_from) = match old_src {
                    Some(src) => {
                        let k = view.image(src, keys.iter().copied(), &mut scratch);
                        let moved = k != new_key;
                        (k, moved.then_some(src))
                    }
                    None => (new_key.clone(), None),
                };
                let missing: Vec<usize> = view
                    .missing(row)?
                    .into_iter()
                    .filter(|c| !keys.contains(c))
                    .collect();
                let mut overrides = Vec::new();
                let mut still_missing = Vec::new();
                let mut from = None;
                if !missing.is_empty() {
                    match index.get(&old_key).map(|&i| &finals[i]) {
                        Some(Final::Row {
                            row: prev_row,
                            overrides: prev_over,
                            missing: prev_missing,
                            from: prev_from,
                        }) => {
                            for &c in &missing {
                                if prev_missing.contains(&c) {
                                    still_missing.push(c);
                                } else {
                                    let src = prev_over
                                        .iter()
                                        .find(|(pc, _)| *pc == c)
                                        .map_or(*prev_row, |(_, r)| *r);
                                    overrides.push((c, src));
                                }
                            }
                            if !still_missing.is_empty() {
                                from = prev_from.or(moved_from);
                            }
                        }
                        _ => {
                            still_missing = missing;
                            from = moved_from;
                        }
                    }
                }
                if let Some(src) = moved_from {
                    set(&mut index, &mut finals, old_key, Final::Deleted(src));
                }
                let f = Final::Row {
                    row,
                    overrides,
                    missing: still_missing,
                    from,
                };
                set(&mut index, &mut finals, new_key, f);
            }
        }
    }
    drop(index);

    let plan = view.plan;
    let ncols = plan.columns.len();
    let mut moves: HashMap<Vec<usize>, Vec<&Final>> = HashMap::new();
    let mut deletes: Vec<KeySrc> = Vec::new();
    let mut upserts: Vec<&Final> = Vec::new();
    let mut partials: HashMap<Vec<usize>, Vec<&Final>> = HashMap::new();
    for f in &finals {
        match f {
            Final::Deleted(src) => deletes.push(*src),
            Final::Row { missing, from, .. } if missing.is_empty() => {
                let _ = from;
                upserts.push(f);
            }
            Final::Row {
                missing,
                from: Some(_),
                ..
            } => moves.entry(missing.clone()).or_default().push(f),
            Final::Row {
                missing,
                from: None,
                ..
            } => partials.entry(missing.clone()).or_default().push(f),
        }
    }

    let render_rows = |rows: &[&Final], cols: &[usize], with_from: bool| -> Vec<TextArray> {
        let mut arrays: Vec<TextArray> = (0..cols.len() + if with_from { keys.len() } else { 0 })
            .map(|_| TextArray::with_capacity(rows.len()))
            .collect();
        for f in rows {
            let Final::Row {
                row,
                overrides,
                from,
                ..
            } = f
            else {
                continue;
            };
            for (a, &c) in arrays.iter_mut().zip(cols) {
                let src = overrides
                    .iter()
                    .find(|(oc, _)| *oc == c)
                    .map_or(*row, |(_, r)| *r);
                a.push_from(&view.data[c], src);
            }
            if with_from {
                let src = from.expect("moves have a source key");
                let readers = view.cols(src);
                for (a, &k) in arrays[cols.len()..].iter_mut().zip(keys) {
                    a.push_from(&readers[k], src.row);
                }
            }
        }
        arrays
    };

    let mut steps = Vec::new();
    let mut shapes: Vec<_> = moves.into_iter().collect();
    shapes.sort_by(|a, b| a.0.cmp(&b.0));
    for (missing, rows) in shapes {
        let cols: Vec<usize> = (0..ncols).filter(|c| !missing.contains(c)).collect();
        steps.push(Step {
            sql: sql::move_row(plan, keys, &cols),
            action: "copying moved rows (key-changing updates with unchanged TOAST values)",
            params: render_rows(&rows, &cols, true),
            rows: rows.len(),
        });
    }
    if !deletes.is_empty() {
        let mut arrays: Vec<TextArray> = keys
            .iter()
            .map(|_| TextArray::with_capacity(deletes.len()))
            .collect();
        for src in &deletes {
            let readers = view.cols(*src);
            for (a, &k) in arrays.iter_mut().zip(keys) {
                a.push_from(&readers[k], src.row);
            }
        }
        steps.push(Step {
            sql: sql::delete_by_key(plan, keys),
            action: "delete",
            params: arrays,
            rows: deletes.len(),
        });
    }
    if !upserts.is_empty() {
        let cols: Vec<usize> = (0..ncols).collect();
        steps.push(Step {
            sql: sql::upsert(plan, keys, &cols),
            action: "upsert",
            params: render_rows(&upserts, &cols, false),
            rows: upserts.len(),
        });
    }
    let mut shapes: Vec<_> = partials.into_iter().collect();
    shapes.sort_by(|a, b| a.0.cmp(&b.0));
    for (missing, rows) in shapes {
        let cols: Vec<usize> = (0..ncols).filter(|c| !missing.contains(c)).collect();
        if let Some(sql) = sql::update_by_key(plan, keys, &cols) {
            steps.push(Step {
                sql,
                action: "update (keeping unchanged TOAST values)",
                params: render_rows(&rows, &cols, false),
                rows: rows.len(),
            });
        }
    }
    Ok(steps)
}

fn whole_row(view: &View<'_>, n: usize) -> Result<Vec<Step>, MirrorError> {
    let plan = view.plan;
    let ncols = plan.columns.len();
    let all: Vec<usize> = (0..ncols).collect();
    let mut steps = Vec::new();
    let mut scratch = String::new();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let old_image = |row: usize| -> Result<KeySrc, MirrorError> {
        if view.has_old(row) {
            Ok(KeySrc { row, old: true })
        } else {
            Err(MirrorError::BadBatch {
                table: plan.display.clone(),
                reason: format!(
                    "row {row} is an update without an old image, but the target table has no key to find it by"
                ),
            })
        }
    };
    let mut i = 0;
    while i < n {
        let op = view.op(i)?;
        let missing = if op == Op::Update {
            view.missing(i)?
        } else {
            Vec::new()
        };
        seen.clear();
        let mut j = i;
        while j < n && view.op(j)? == op {
            match op {
                Op::Insert => {}
                Op::Delete => {
                    let src = if view.has_old(j) {
                        KeySrc { row: j, old: true }
                    } else {
                        KeySrc { row: j, old: false }
                    };
                    if !seen.insert(view.image(src, all.iter().copied(), &mut scratch)) {
                        break;
                    }
                }
                Op::Update => {
                    if j > i && view.missing(j)? != missing {
                        break;
                    }
                    let old = view.image(old_image(j)?, all.iter().copied(), &mut scratch);
                    if seen.contains(&old) {
                        break;
                    }
                    seen.insert(old);
                    seen.insert(view.image(
                        KeySrc { row: j, old: false },
                        all.iter().copied(),
                        &mut scratch,
                    ));
                }
            }
            j += 1;
        }
        let rows = i..j;
        match op {
            Op::Insert => {
                let mut arrays: Vec<TextArray> = all
                    .iter()
                    .map(|_| TextArray::with_capacity(j - i))
                    .collect();
                for r in rows {
                    for (a, c) in arrays.iter_mut().zip(&view.data) {
                        a.push_from(c, r);
                    }
                }
                steps.push(Step {
                    sql: sql::insert(plan),
                    action: "insert",
                    params: arrays,
                    rows: j - i,
                });
            }
            Op::Delete => {
                let mut arrays: Vec<TextArray> = all
                    .iter()
                    .map(|_| TextArray::with_capacity(j - i))
                    .collect();
                for r in rows {
                    let src = if view.has_old(r) {
                        KeySrc { row: r, old: true }
                    } else {
                        KeySrc { row: r, old: false }
                    };
                    for (a, c) in arrays.iter_mut().zip(view.cols(src)) {
                        a.push_from(c, r);
                    }
                }
                steps.push(Step {
                    sql: sql::delete_whole_row(plan),
                    action: "delete (matching the whole old row)",
                    params: arrays,
                    rows: j - i,
                });
            }
            Op::Update => {
                let cols: Vec<usize> = (0..ncols).filter(|c| !missing.contains(c)).collect();
                if let Some(sql) = sql::update_whole_row(plan, &cols) {
                    let mut arrays: Vec<TextArray> = (0..cols.len() + ncols)
                        .map(|_| TextArray::with_capacity(j - i))
                        .collect();
                    for r in rows {
                        for (a, &c) in arrays.iter_mut().zip(&cols) {
                            a.push_from(&view.data[c], r);
                        }
                        let old = view.cols(old_image(r)?);
                        for (a, c) in arrays[cols.len()..].iter_mut().zip(old) {
                            a.push_from(c, r);
                        }
                    }
                    steps.push(Step {
                        sql,
                        action: "update (matching the whole old row)",
                        params: arrays,
                        rows: j - i,
                    });
                }
            }
        }
        i = j;
    }
    Ok(steps)
}

#[cfg(test)]
mod tests;
