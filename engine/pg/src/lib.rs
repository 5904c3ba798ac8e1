//! The PostgreSQL floor every crate stands on.
//!
//! - [`ConnectionConfig`]: what libpq users write (URL or `key=value`, unix-domain sockets,
//!   `.pgpass`/`passfile`, `sslmode`, CA file, `application_name`), parsed once.
//! - [`Secret`] and [`SecretSource`]: the one secret type; it never prints.
//! - [`connect`]: every ordinary (non-replication) connection goes through it, so TLS, the session
//!   settings and the per-[`Role`] `application_name` are decided in one place.
//! - [`tls`]: the rustls client configuration, shared with the replication transport.
//! - [`QualifiedName`] and [`quote_ident`]: one parsing and quoting rule for `schema.table`.

mod config;
mod connect;
mod error;
mod name;
mod passfile;
mod secret;
pub mod tls;

pub use config::{ConnectionConfig, SslMode};
pub use connect::{connect, tokio_parts, Role, SESSION_OPTIONS};
pub use error::{describe, describe_db, PgError};
pub use name::{quote_ident, quote_literal, NameError, QualifiedName};
pub use secret::{is_env_name, Secret, SecretError, SecretSource};
