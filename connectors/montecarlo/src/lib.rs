//! Monte Carlo webhooks: x-mcd-signature verification and incident payloads as change rows.
//!
//! An inbound call goes through three steps, each its own function so the server decides what
//! to answer at each:
//!
//! 1. [`signature::authenticate`] (or [`signature::verify`]) checks `x-mcd-signature`, an
//!    HMAC-SHA512 that Monte Carlo computes over a Python rendering of the body rather than
//!    the body itself;
//! 2. [`payload::events_batch`] turns the body into the `events` batch, one row per event and
//!    table it names;
//! 3. `sql/ingest/monte_carlo_incidents.sql`, run by the SQL stage, maps those rows to
//!    `meta.incidents`.
//!
//! ```
//! let body = br#"{"account": {"id": "a"}, "action": "incident", "type": "open_x_incident",
//!   "payload": {"incident_id": "i", "event_list": [{"table_name": null,
//!     "rule": {"comparisons": [{"full_table_id": "db:s.t", "threshold": 49.0}]}}]}}"#;
//! let signature = lily_montecarlo::signature::sign(b"secret", body)?;
//! lily_montecarlo::signature::verify(b"secret", body, Some(&signature))?;
//! let batch = lily_montecarlo::payload::events_batch(body)?;
//! assert_eq!(batch.num_rows(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With the `fake` feature, [`fake`] builds Monte Carlo deliveries for tests.

mod nonprintable;
pub mod payload;
mod pyform;
pub mod signature;

#[cfg(feature = "fake")]
pub mod fake;

pub use payload::{events_batch, events_schema, Mcon, PayloadError, TableRef};
pub use signature::{authenticate, verify, Authenticity, SignatureError};
