//! The one way the engine opens an ordinary (non-replication) connection.

use std::fmt;

use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{ConnectionConfig, PgError, SslMode};

/// Session settings every connection starts with, sent in the start-up packet (so pooled
/// connections get them too, at no extra round trip). `jit = off`: the engine's statements are
/// key probes and group-committed writes whose cost estimates can pass the JIT threshold, and
/// compiling then costs more than running (seen as seconds of lag at 5k changes/s).
pub const SESSION_OPTIONS: &str = "-c jit=off";

/// What a connection is for. It names the connection in errors and in `application_name`
/// (`lily-<role>`), so `pg_stat_activity` shows who is who.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The replication stream and its set-up queries.
    Capture,
    /// Reading the catalog to plan pipelines; checks.
    Catalog,
    /// The delivery ledger and dead letters.
    Ledger,
    /// Reference look-ups from SQL transforms.
    Lookup,
    /// The ingest API's pool.
    Ingest,
    /// Bulk loads.
    Load,
    /// A sink writing to PostgreSQL, by its type (`metastore`).
    Sink(&'static str),
    /// The mirror consumer's target.
    Mirror,
    /// Commands run by hand (migrate, API keys, slot status).
    Admin,
}

impl Role {
    fn suffix(self) -> String {
        match self {
            Role::Capture => "capture".into(),
            Role::Catalog => "catalog".into(),
            Role::Ledger => "ledger".into(),
            Role::Lookup => "lookup".into(),
            Role::Ingest => "ingest".into(),
            Role::Load => "load".into(),
            Role::Sink(kind) => format!("{kind}-sink"),
            Role::Mirror => "mirror".into(),
            Role::Admin => "admin".into(),
        }
    }

    /// `<prefix>-<role>`, e.g. `lily-ledger`, `lily-metastore-sink`.
    pub fn application_name(self, prefix: &str) -> String {
        format!("{prefix}-{}", self.suffix())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Sink(kind) => write!(f, "{kind} sink"),
            other => f.write_str(&other.suffix()),
        }
    }
}

/// A tokio-postgres config and TLS connector for `cfg` in `role`: for pools, which connect
/// themselves. [`connect`] uses the same parts.
pub fn tokio_parts(
    cfg: &ConnectionConfig,
    role: Role,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), PgError> {
    let mut c = tokio_postgres::Config::new();
    // tokio-postgres, like libpq, reads a host starting with '/' as a socket directory.
    c.host(&cfg.host)
        .port(cfg.port)
        .user(&cfg.user)
        .dbname(&cfg.dbname)
        .application_name(role.application_name(&cfg.application_name))
        .connect_timeout(cfg.connect_timeout)
        .options(SESSION_OPTIONS)
        .ssl_mode(match cfg.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
    let password = cfg.password_for();
    if !password.is_empty() {
        c.password(password.expose());
    }
    let tls = crate::tls::client_config(cfg).map_err(|reason| PgError::Tls {
        role,
        target: cfg.target(),
        reason,
    })?;
    Ok((c, MakeRustlsConnect::new(tls)))
}

/// Connects for `role`, with TLS as `sslmode` says and the session settings of
/// [`SESSION_OPTIONS`], and spawns the connection task on the current runtime. The whole
/// connect (socket, TLS, authentication, start-up) is bounded by `connect_timeout`:
/// tokio-postgres bounds only the socket, so a server that accepts and never answers would
/// otherwise hold the caller forever.
pub async fn connect(cfg: &ConnectionConfig, role: Role) -> Result<Client, PgError> {
    let (config, tls) = tokio_parts(cfg, role)?;
    let (client, connection) = tokio::time::timeout(cfg.connect_timeout, config.connect(tls))
        .await
        .map_err(|_| PgError::Timeout {
            role,
            target: cfg.target(),
            after: cfg.connect_timeout,
        })?
        .map_err(|source| PgError::Connect {
            role,
            target: cfg.target(),
            detail: crate::error::describe(&source),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, %role, "Connection ended.");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_that_never_answers_is_bounded_by_connect_timeout() {
        // Accepts the TCP connection, then says nothing.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let mut cfg = ConnectionConfig::new("127.0.0.1", "u", "d");
        cfg.port = port;
        cfg.connect_timeout = std::time::Duration::from_millis(300);
        let started = std::time::Instant::now();
        let e = connect(&cfg, Role::Ledger).await.unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(matches!(e, PgError::Timeout { .. }), "{e}");
        assert!(e.is_retryable());
        assert!(
            e.to_string().contains("ledger connection to 127.0.0.1:"),
            "{e}"
        );
        hold.abort();
    }

    #[test]
    fn names_per_role() {
        assert_eq!(Role::Ledger.application_name("lily"), "lily-ledger");
        assert_eq!(
            Role::Sink("metastore").application_name("lily"),
            "lily-metastore-sink"
        );
        assert_eq!(Role::Sink("metastore").to_string(), "metastore sink");
    }

    #[test]
    fn parts_carry_tls_and_settings() {
        let cfg = ConnectionConfig::parse("postgres://u:pw@db:6000/m?sslmode=require").unwrap();
        let (c, _) = tokio_parts(&cfg, Role::Lookup).unwrap();
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(c.get_application_name(), Some("lily-lookup"));
        assert_eq!(c.get_options(), Some(SESSION_OPTIONS));
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        let missing_ca = ConnectionConfig {
            ssl_root_cert: Some("/nonexistent/ca.pem".into()),
            sslmode: SslMode::VerifyFull,
            ..cfg
        };
        let e = match tokio_parts(&missing_ca, Role::Ingest) {
            Ok(_) => panic!("a missing CA file was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("ingest") && e.contains("db:6000/m") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }
}
