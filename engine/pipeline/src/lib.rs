//! Declarative pipelines: source tables → a SQL transform → sinks.
//!
//! - [`file`]: the pipeline file format and its pure checks.
//! - [`build`]: loading, planning against the real schemas, building sinks, starting.
//! - [`pipeline`]: the running pipeline: transform per batch, records to sinks, acknowledgement
//!   once every record is delivered or dead-lettered.
//! - [`records`]: output rows → delivery records with stable idempotency keys.
//! - [`catalog`]: table schemas from the PostgreSQL catalog, typed as capture types them.

pub mod build;
pub mod catalog;
pub mod file;
pub mod pipeline;
pub mod records;

pub use build::{load, load_dir, plan, start, Loaded, PlanContext, Planned};
pub use file::Problem;
pub use pipeline::{Pipeline, TRANSFORM_STAGE};
