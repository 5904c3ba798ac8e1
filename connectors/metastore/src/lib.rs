//! Metastore sink: writes pipeline output rows back into a table of the PostgreSQL metastore
//! (enrichment, such as upserting propagated classifications into `meta.classifications`).
//!
//! ```no_run
//! # async fn demo(pg: lily_pg::ConnectionConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use lily_metastore_sink::{MetastoreSink, MetastoreSinkConfig};
//! let table: toml::Value = toml::from_str(r#"table = "meta.classifications""#)?;
//! let cfg: MetastoreSinkConfig = table.try_into()?;
//! let sink = MetastoreSink::connect(pg, cfg).await?;
//! # Ok(()) }
//! ```
//!
//! Each delivery call is one statement: the records become a JSON array read with
//! `jsonb_to_recordset`, rows with the same key are reduced to one, and the table is written with
//! `INSERT ... ON CONFLICT (key) DO UPDATE` (rows that would not change are left alone),
//! `ON CONFLICT (key) DO NOTHING`, or `DELETE ... USING`. Records carrying different sets of
//! fields are written by one data-modifying CTE per set, still in one statement: a field a
//! record lacks keeps its column's default on insert and its current value on update.

mod config;
mod connector;
mod error;
mod rows;
mod sink;
mod sql;
mod table;

pub use config::{ConfigError, MetastoreSinkConfig, Mode};
pub use connector::Metastore;
pub use error::BuildError;
pub use sink::MetastoreSink;
