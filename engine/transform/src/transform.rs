//! Planning a transform once and running it per change batch.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::{collect, ExecutionPlan};

use crate::change_table::{ChangeTable, Slot};
use crate::error::{Location, TransformError};

/// One source table of a transform: the name SQL uses and the Arrow schema of its change
/// batches (data columns plus the `_op`, `_lsn`, … metadata columns).
#[derive(Debug, Clone)]
pub struct SourceTable {
    pub name: String,
    pub schema: SchemaRef,
    /// A row filter (SQL boolean expression) applied before the transform sees the rows.
    pub filter: Option<String>,
}

/// A SQL transform, planned once against its source tables.
pub struct Transform {
    plan: Arc<dyn ExecutionPlan>,
    /// Whether the plan holds state between executions (join build sides, top-k heaps) and
    /// needs [`reset_plan_states`] before each run.
    stateful: bool,
    task_ctx: Arc<TaskContext>,
    slots: HashMap<String, Arc<Slot>>,
    output: SchemaRef,
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transform")
            .field("sources", &self.slots.keys().collect::<Vec<_>>())
            .field("output", &self.output)
            .finish()
    }
}

/// Plan nodes that keep nothing from one execution to the next.
const STATELESS_NODES: &[&str] = &[
    "SlotExec",
    "ProjectionExec",
    "FilterExec",
    "CoalesceBatchesExec",
    "CoalescePartitionsExec",
    "UnionExec",
    "UnnestExec",
    "AsyncFuncExec",
    "EmptyExec",
    "PlaceholderRowExec",
    "DataSourceExec",
    "GlobalLimitExec",
    "LocalLimitExec",
    "AggregateExec",
    "SortExec",
    "WindowAggExec",
    "BoundedWindowAggExec",
];

impl Transform {
    /// Parses, plans and optimizes `sql` (one query) against `sources`, with `functions`
    /// available to it. Every error carries the line and column DataFusion reports.
    pub async fn plan(
        sql: &str,
        sources: &[SourceTable],
        functions: &[ScalarUDF],
    ) -> Result<Transform, TransformError> {
        let mut config = SessionConfig::new()
            // One partition: batches are small and arrive one at a time; repartitioning them
            // across threads costs more than it saves, and the pipeline runs many in parallel.
            .with_target_partitions(1)
            .with_coalesce_batches(false)
            .with_batch_size(8192)
            .with_information_schema(false);
        let options = config.options_mut();
        options.sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
        options.sql_parser.collect_spans = true;
        // Dynamic filters are state inside a plan that reset_plan_states cannot clear.
        options.optimizer.enable_dynamic_filter_pushdown = false;
        options.optimizer.enable_topk_dynamic_filter_pushdown = false;
        options.optimizer.enable_join_dynamic_filter_pushdown = false;
        options.optimizer.enable_aggregate_dynamic_filter_pushdown = false;
        options.optimizer.enable_round_robin_repartition = false;
        let ctx = SessionContext::new_with_config(config);
        for f in functions {
            ctx.register_udf(f.clone());
        }
        let mut slots = HashMap::new();
        for source in sources {
            if slots.contains_key(&source.name) {
                return Err(TransformError::plan(format!(
                    "two source tables are both named {:?}",
                    source.name
                )));
            }
            let slot = Arc::new(Slot::default());
            let table = Arc::new(ChangeTable::new(source.schema.clone(), slot.clone()));
            match &source.filter {
                None => {
                    ctx.register_table(source.name.as_str(), table)
                        .map_err(|e| TransformError::plan(e.to_string()))?;
                }
                Some(filter) => {
                    // The filtered rows are what SQL sees under the table's name.
                    let frame = ctx
                        .read_table(table)
                        .map_err(|e| TransformError::plan(e.to_string()))?;
                    let predicate = frame
                        .parse_sql_expr(filter)
                        .map_err(|e| filter_error(&source.name, e))?;
                    let view = frame
                        .filter(predicate)
                        .map_err(|e| filter_error(&source.name, e))?
                        .into_view();
                    ctx.register_table(source.name.as_str(), view)
                        .map_err(|e| TransformError::plan(e.to_string()))?;
                }
            }
            slots.insert(source.name.clone(), slot);
        }
        let only_queries = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let frame = ctx
            .sql_with_options(sql, only_queries)
            .await
            .map_err(|e| plan_error(sql, e))?;
        let plan = frame
            .create_physical_plan()
            .await
            .map_err(|e| plan_error(sql, e))?;
        let stateful = !is_stateless(plan.as_ref());
        Ok(Transform {
            output: plan.schema(),
            plan,
            stateful,
            task_ctx: ctx.task_ctx(),
            slots,
        })
    }

    /// The schema of what [`Transform::run`] returns.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.output
    }

    /// Source table names, as registered.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.slots.keys().map(String::as_str)
    }

    /// Whether the plan needs its state reset before each run (joins, top-k).
    pub fn is_stateful(&self) -> bool {
        self.stateful
    }

    /// Runs the planned SQL with `batch` as the contents of `table` (every other source table
    /// is empty). Runs of one transform must not overlap; `&mut self` makes sure of that.
    pub async fn run(
        &mut self,
        table: &str,
        batch: RecordBatch,
    ) -> Result<Vec<RecordBatch>, TransformError> {
        let slot = self
            .slots
            .get(table)
            .ok_or_else(|| TransformError::UnknownSource(table.to_string()))?
            .clone();
        slot.set(Some(batch));
        let plan = if self.stateful {
            reset_plan_states(self.plan.clone())
                .map_err(|e| TransformError::execute(e.to_string(), false))?
        } else {
            self.plan.clone()
        };
        let result = collect(plan, self.task_ctx.clone()).await;
        slot.set(None);
        result.map_err(|e| {
            let retryable = is_retryable(&e);
            TransformError::execute(e.to_string(), retryable)
        })
    }
}

fn is_stateless(plan: &dyn ExecutionPlan) -> bool {
    STATELESS_NODES.contains(&plan.name())
        && plan.children().iter().all(|c| is_stateless(c.as_ref()))
}

/// Errors from reference-data functions that talk to the metastore are retryable: the same
/// batch can succeed once the connection is back. Everything else (casts, overflow, bad JSON)
/// fails the same way every time.
fn is_retryable(e: &DataFusionError) -> bool {
    e.to_string().contains(crate::reference::RETRYABLE_MARK)
}

fn filter_error(table: &str, e: DataFusionError) -> TransformError {
    TransformError::plan(format!("filter of {table}: {}", e.strip_backtrace()))
}

fn plan_error(sql: &str, e: DataFusionError) -> TransformError {
    let location = e
        .diagnostic()
        .and_then(|d| d.span)
        .map(|span| Location {
            line: span.start.line as usize,
            column: span.start.column as usize,
        })
        .or_else(|| Location::from_message(&e.to_string()));
    let message = match &e {
        DataFusionError::Diagnostic(d, _) => d.message.clone(),
        _ => e.strip_backtrace().to_string(),
    };
    let _ = sql;
    TransformError::Plan { message, location }
}

/// A row filter as PostgreSQL should see it in a publication: parsed as exactly one SQL
/// expression and printed back from the syntax tree, so nothing but that expression can reach
/// the DDL it is written into.
pub fn publication_filter(filter: &str) -> Result<String, TransformError> {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    use datafusion::sql::sqlparser::tokenizer::Token;
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(filter)
        .map_err(|e| TransformError::plan(format!("filter: {e}")))?;
    let expr = parser
        .parse_expr()
        .map_err(|e| TransformError::plan(format!("filter: {e}")))?;
    if parser.peek_token().token != Token::EOF {
        return Err(TransformError::plan(
            "filter: one expression expected, found more text after it".into(),
        ));
    }
    Ok(expr.to_string())
}

#[cfg(test)]
mod tests {
    use super::publication_filter;

    #[test]
    fn publication_filters_are_one_expression() {
        assert_eq!(
            publication_filter("tag IN ('PII',  'GDPR')").unwrap(),
            "tag IN ('PII', 'GDPR')"
        );
        assert!(publication_filter("true) ; DROP TABLE meta.assets; --").is_err());
        assert!(publication_filter("tag = 'a'; DELETE FROM x").is_err());
        assert_eq!(
            publication_filter("name = 'it''s'").unwrap(),
            "name = 'it''s'"
        );
    }
}
