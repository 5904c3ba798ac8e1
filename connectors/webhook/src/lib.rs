//! Webhook sink (Standard Webhooks v1).
//!
//! Each record becomes one `POST` whose body is `{"type", "timestamp", "data"}`, signed with
//! HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}` and sent with the `webhook-id`,
//! `webhook-timestamp` and `webhook-signature` headers. The record's id is the `webhook-id`, so
//! a replayed record is recognisable as a duplicate by the receiver. The sink sends and
//! classifies; retries, backoff and dead letters belong to the delivery engine.
//!
//! Build a sink from its config table:
//!
//! ```no_run
//! # fn demo(table: toml::Value) -> Result<(), Box<dyn std::error::Error>> {
//! let config: lily_webhook::WebhookConfig = table.try_into()?;
//! config.validate()?; // text only: what `lily check` can report
//! let sink = config.build()?; // reads the URL/secret variables or files
//! # Ok(()) }
//! ```
//!
//! With the `fake` feature, [`fake::FakeReceiver`] is a Standard Webhooks consumer for tests.

mod config;
mod connector;
mod endpoint;
mod envelope;
mod outcome;
mod signing;
mod sink;

#[cfg(feature = "fake")]
pub mod fake;

pub use config::{ConfigError, WebhookConfig};
pub use connector::Webhook;
pub use sink::WebhookSink;
