//! The capture pipeline: replication stream → pgoutput messages → Arrow change batches → every
//! subscribed consumer, with the LSN confirmed to PostgreSQL only past what all consumers acked.
//!
//! - [`capture`]: the session loop (connect, preflight, slot, stream, reconnect with backoff).
//! - [`assemble`]: groups decoded messages into batches on transaction and size/latency bounds.
//! - [`ack`]: tracks acknowledgements and turns them into a confirmable LSN.
//! - [`checkpoint`]: the engine's record of its slot in `lily.checkpoints`.
//! - [`event`] and [`subscription`]: what consumers receive and how they acknowledge it.

pub mod ack;
mod assemble;
pub mod capture;
pub mod checkpoint;
mod config;
mod error;
pub mod event;
pub mod subscription;

pub use capture::Capture;
pub use config::CaptureConfig;
pub use error::CaptureError;
pub use event::{BatchKind, ChangeBatch};
pub use lily_batch::TableSchema;
pub use lily_pgoutput::Lsn;
pub use subscription::{Ack, Delivery, Subscription};
