use std::fmt;
use std::path::PathBuf;

/// A secret string (a password). It never prints: `Debug` and `Display` show `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How the connection uses TLS, with libpq's meanings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS, without checking the server's certificate (protects against passive sniffing only).
    Require,
    /// TLS, the certificate must chain to the configured root and name the host.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "require" => Ok(SslMode::Require),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(format!(
                "unknown sslmode {other:?}: expected disable, require or verify-full"
            )),
        }
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub dbname: String,
    pub sslmode: SslMode,
    /// PEM file of the CA that signs the server certificate (for `verify-full`).
    pub ssl_root_cert: Option<PathBuf>,
    pub application_name: String,
    /// How long to wait for TCP connect plus start-up.
    pub connect_timeout: std::time::Duration,
}

impl ConnectionConfig {
    /// Parses a `postgres://user:password@host:port/db?sslmode=..&sslrootcert=..` URL.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or("connection URL must start with postgres://")?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = authority
            .rsplit_once('@')
            .ok_or("connection URL must name a user: postgres://user@host/db")?;
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("invalid port {p:?} in connection URL"))?,
            ),
            None => (hostport, 5432),
        };
        let (db, query) = path.split_once('?').unwrap_or((path, ""));
        let mut cfg = ConnectionConfig {
            host: host.to_string(),
            port,
            user: percent_decode(user)?,
            password: Secret::new(percent_decode(password.unwrap_or(""))?),
            dbname: if db.is_empty() {
                percent_decode(user)?
            } else {
                percent_decode(db)?
            },
            sslmode: SslMode::Disable,
            ssl_root_cert: None,
            application_name: "lily".into(),
            connect_timeout: std::time::Duration::from_secs(10),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => cfg.sslmode = v.parse()?,
                "sslrootcert" => cfg.ssl_root_cert = Some(PathBuf::from(percent_decode(v)?)),
                "application_name" => cfg.application_name = percent_decode(v)?,
                "connect_timeout" => {
                    cfg.connect_timeout = std::time::Duration::from_secs(
                        v.parse()
                            .map_err(|_| format!("invalid connect_timeout {v:?}"))?,
                    )
                }
                other => return Err(format!("unknown connection URL parameter {other:?}")),
            }
        }
        if cfg.host.is_empty() {
            return Err("connection URL must name a host".into());
        }
        Ok(cfg)
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("invalid percent-encoding in connection URL")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "connection URL is not UTF-8 after decoding".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_url_and_hides_password() {
        let c = ConnectionConfig::from_url(
            "postgres://lily:p%40ss@127.0.0.1:5433/meta?sslmode=verify-full&sslrootcert=/x/ca.pem",
        )
        .unwrap();
        assert_eq!(c.user, "lily");
        assert_eq!(c.password.expose(), "p@ss");
        assert_eq!(c.port, 5433);
        assert_eq!(c.dbname, "meta");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert!(!format!("{c:?}").contains("p@ss"));
        assert!(ConnectionConfig::from_url("mysql://x@y/z").is_err());
        assert!(ConnectionConfig::from_url("postgres://x@y/z?sslmode=maybe").is_err());
        assert!(ConnectionConfig::from_url("postgres://x@y:notaport/z").is_err());
    }
}
