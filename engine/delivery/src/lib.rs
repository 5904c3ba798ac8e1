//! The sink contract and the delivery engine around it.
//!
//! - [`sink`]: what a sink implements ([`Sink`]) and receives ([`Record`]).
//! - [`runner`]: per sink, lanes by ordering key, retries with backoff and `Retry-After`, a
//!   token-bucket rate limit, dead letters.
//! - [`ledger`]: which records are finished, so replays do not repeat side effects; the
//!   dead-letter table; where both persist ([`LedgerStore`]: the metastore, or memory in tests).
//! - `dead_letters`: listing dead letters, and replaying them through the runner
//!   ([`DeadLetters`]).
//! - [`completion`]: counts a batch's records down to its acknowledgement.
//! - [`settings`]: the per-sink delivery settings of a pipeline file.
//! - [`secret`]: sink credentials from the environment or files, never printed.

pub mod completion;
mod dead_letters;
pub mod ledger;
mod rate;
pub mod runner;
pub mod secret;
pub mod settings;
pub mod sink;
#[cfg(test)]
mod test_sink;

pub use completion::Completion;
pub use dead_letters::{DeadLetter, DeadLetters, LetterFilter, ReplayTarget, Replayed};
pub use ledger::{Ledger, LedgerEntry, LedgerError, LedgerStore, MemoryLedgerStore, Outcome};
pub use runner::{SinkRunner, SinkStats};
pub use settings::DeliverySettings;
pub use sink::{Record, Sink, SinkError};
