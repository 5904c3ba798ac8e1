//! The replication client takes the same connection settings as every other connection
//! (`lily-pg`); only its wire code is its own.

pub use lily_pg::{ConnectionConfig, Secret, SslMode};
