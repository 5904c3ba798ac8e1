//! Sink credentials: the one secret type of `lily-pg`, read from an environment variable or a
//! file, never from config text, and never printed.

pub use lily_pg::{is_env_name, Secret, SecretError, SecretSource};
