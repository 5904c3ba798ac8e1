//! The PostgreSQL side of capture: a logical replication client written on `postgres-protocol`.
//!
//! - [`wire`]: one connection (TCP, optional TLS, SCRAM/MD5/password auth, simple queries, COPY BOTH).
//! - [`setup`]: checks the server can replicate, and creates or validates the publication and slot.
//! - [`stream`]: `START_REPLICATION` and the frame loop; standby status goes out from its own task
//!   on its own timer, so a consumer that stops reading never lets `wal_sender_timeout` kill us.

mod config;
mod error;
pub mod setup;
pub mod stream;
pub mod wire;

pub use config::{ConnectionConfig, Secret, SslMode};
pub use error::ReplicationError;
pub use lily_pgoutput::Lsn;
pub use setup::{SlotState, SourceSpec};
pub use stream::{Feedback, ReplicationStream, StartOptions, WalEvent};
pub use wire::{Connection, Mode, SimpleRow};
