//! Okta event hooks: the verification challenge, the shared-secret header, System Log events as change rows.
//!
//! [`OktaHook`], built from a tenant's [`OktaHookConfig`], is the ingest server's
//! [`lily_inbound::InboundHook`] for Okta, which handles it in three steps:
//!
//! 1. the one-time verification GET: answer 200 with [`challenge`] of the
//!    `X-Okta-Verification-Challenge` header;
//! 2. every POST: [`OktaHook::check`] (or [`check_secret`]) the configured header, which holds a
//!    static secret (Okta does not sign deliveries), then [`events::events_batch`] the body and
//!    answer 200 or 204 at once (Okta waits 3 s, retries once, never after a 4xx);
//! 3. `sql/okta_directory.sql` (this crate's), run by the SQL stage on that batch, gives the
//!    principal and membership changes; dedupe on `event_uuid` and apply in `published` order.
//!
//! ```
//! use lily_pg::Secret;
//! let hook = lily_okta::OktaHook::new("acme", "Authorization", Secret::new("s3cret"));
//! hook.check(Some("s3cret"))?;
//! let answer = lily_okta::challenge("abc")?;
//! assert_eq!(answer.to_string(), r#"{"verification":"abc"}"#);
//! let body = br#"{"eventType": "com.okta.event_hook", "data": {"events": []}}"#;
//! assert_eq!(lily_okta::events::events_batch(body)?.num_rows(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With the `fake` feature, [`fake`] is an Okta org that sends event hook requests.

mod config;
mod connector;
pub mod events;
mod hook;
mod inbound;
mod time;

#[cfg(feature = "fake")]
pub mod fake;

pub use config::{ConfigError, OktaHook, OktaHookConfig};
pub use connector::OktaConnector;
pub use hook::{challenge, check_secret, OktaError, CHALLENGE_HEADER, MAX_CHALLENGE_BYTES};
