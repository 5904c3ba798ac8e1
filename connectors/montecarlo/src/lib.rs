//! Monte Carlo webhooks: x-mcd-signature verification and incident payloads as change rows.
//!
//! [`MonteCarloHook`], built from a tenant's [`MonteCarloHookConfig`], is the ingest server's
//! [`lily_inbound::InboundHook`] for Monte Carlo. A delivery goes through three steps:
//!
//! 1. [`signature::authenticate`] (or [`signature::verify`]) checks `x-mcd-signature`, an
//!    HMAC-SHA512 that Monte Carlo computes over a Python rendering of the body rather than
//!    the body itself;
//! 2. [`payload::events_batch`] turns the body into the `events` batch, one row per event and
//!    table it names;
//! 3. `sql/monte_carlo_incidents.sql` (this crate's), run by the SQL stage, maps those rows to
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

mod config;
mod connector;
mod inbound;
mod nonprintable;
pub mod payload;
mod pyform;
pub mod signature;

#[cfg(feature = "fake")]
pub mod fake;

pub use config::{ConfigError, MonteCarloHook, MonteCarloHookConfig};
pub use connector::MonteCarloConnector;
pub use payload::{Mcon, PayloadError, TableRef};
pub use signature::{authenticate, verify, Authenticity, SignatureError};
