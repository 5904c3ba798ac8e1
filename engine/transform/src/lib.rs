//! The SQL stage: each pipeline's `.sql` transform, planned once by DataFusion and run on every
//! change batch, with reference data from the metastore available as functions.
//!
//! - [`transform`]: planning and running a transform.
//! - [`change_table`]: how a change batch appears to SQL as a table.
//! - [`reference`]: `asset()`, `downstream()` and `upstream()`, backed by the metastore.
//! - [`error`]: plan and execution errors, with SQL positions.

mod change_table;
mod error;
pub mod reference;
mod transform;

pub use datafusion::logical_expr::ScalarUDF;
pub use error::{Location, TransformError};
pub use reference::{functions, MetastoreReader};
pub use transform::{publication_filter, SourceTable, Transform};
