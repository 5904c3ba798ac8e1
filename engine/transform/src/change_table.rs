//! A source table as SQL sees it: one change batch at a time.
//!
//! The physical plan is built once per pipeline with a [`SlotExec`] leaf per source table. Each
//! run puts the current batch into the table's [`Slot`] and executes the same plan again, so no
//! SQL is parsed, planned or optimized per batch.

use std::fmt;
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Result;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};

/// The batch a source table holds during one run; empty between runs and for the tables the
/// current batch does not belong to.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    batch: Mutex<Option<RecordBatch>>,
}

impl Slot {
    pub(crate) fn set(&self, batch: Option<RecordBatch>) {
        *self.batch.lock().expect("slot lock poisoned") = batch;
    }

    fn get(&self) -> Option<RecordBatch> {
        self.batch.lock().expect("slot lock poisoned").clone()
    }
}

/// The table provider registered under a source table's name.
#[derive(Debug)]
pub(crate) struct ChangeTable {
    schema: SchemaRef,
    slot: Arc<Slot>,
}

impl ChangeTable {
    pub(crate) fn new(schema: SchemaRef, slot: Arc<Slot>) -> Self {
        ChangeTable { schema, slot }
    }
}

#[async_trait]
impl TableProvider for ChangeTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Arc::new(SlotExec {
            schema,
            projection: projection.cloned(),
            slot: self.slot.clone(),
            properties: Arc::new(properties),
        }))
    }
}

/// The plan leaf that reads whatever its slot holds when it is executed.
pub(crate) struct SlotExec {
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    slot: Arc<Slot>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for SlotExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotExec")
            .field("projection", &self.projection)
            .finish()
    }
}

impl DisplayAs for SlotExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SlotExec: projection={:?}", self.projection)
    }
}

impl ExecutionPlan for SlotExec {
    fn name(&self) -> &str {
        "SlotExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let batches = match self.slot.get() {
            Some(batch) => vec![match &self.projection {
                Some(p) => batch.project(p)?,
                None => batch,
            }],
            None => vec![],
        };
        Ok(Box::pin(MemoryStream::try_new(
            batches,
            self.schema.clone(),
            None,
        )?))
    }
}
