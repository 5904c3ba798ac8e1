//! Connection settings as libpq users write them, parsed once for every connection the engine
//! opens (replication, ledger, look-ups, ingest, loads, sinks).

use std::path::PathBuf;
use std::time::Duration;

use crate::Secret;

/// How the connection uses TLS, with libpq's meanings. `prefer` and `allow` are refused: a
/// connection that silently falls back to plain text is not one an operator can reason about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS, without checking the server's certificate (protects against passive sniffing only).
    Require,
    /// TLS; the certificate must chain to the configured root and name the host.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

/// Where and how to connect. A `host` that starts with `/` is the directory of a unix-domain
/// socket (libpq's rule); the socket file is `<host>/.s.PGSQL.<port>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Empty: look the password up in the passfile (see [`ConnectionConfig::password_for`]).
    pub password: Secret,
    pub dbname: String,
    pub sslmode: SslMode,
    /// PEM file of the CA that signs the server certificate (for `verify-full`).
    pub ssl_root_cert: Option<PathBuf>,
    /// The `.pgpass` file to read a missing password from; default `PGPASSFILE`, then
    /// `~/.pgpass`.
    pub passfile: Option<PathBuf>,
    /// Prefix of the `application_name` each connection reports: `<this>-<role>`.
    pub application_name: String,
    /// How long to wait for connect plus start-up.
    pub connect_timeout: Duration,
}

/// The default prefix of `application_name`.
pub const DEFAULT_APPLICATION_NAME: &str = "lily";

impl ConnectionConfig {
    /// A TCP config with libpq's defaults: port 5432, `sslmode=disable`, 10 s connect timeout.
    pub fn new(host: &str, user: &str, dbname: &str) -> Self {
        ConnectionConfig {
            host: host.to_string(),
            port: 5432,
            user: user.to_string(),
            password: Secret::default(),
            dbname: dbname.to_string(),
            sslmode: SslMode::Disable,
            ssl_root_cert: None,
            passfile: None,
            application_name: DEFAULT_APPLICATION_NAME.into(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Parses either form libpq accepts: a `postgres://` / `postgresql://` URL, or
    /// `key=value` pairs separated by spaces (values may be single-quoted, `\` escapes).
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.starts_with("postgres://") || t.starts_with("postgresql://") {
            Self::from_url(t)
        } else if t.contains('=') {
            Self::from_key_value(t)
        } else {
            Err("a connection string is either a postgres:// URL or key=value pairs".into())
        }
    }

    /// Parses `postgres://user:password@host:port/db?param=value&...`. The host may be a
    /// percent-encoded socket directory (`postgres://u@%2Fvar%2Frun%2Fpostgresql/db`), or be left
    /// empty and given as `?host=/dir`; IPv6 addresses go in brackets.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or("connection URL must start with postgres://")?;
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut cfg = ConnectionConfig::new("", "", "");
        if let Some(userinfo) = userinfo {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            cfg.user = percent_decode(user)?;
            cfg.password = Secret::new(percent_decode(password.unwrap_or(""))?);
        }
        if hostport.contains(',') {
            return Err("several hosts in one connection URL are not supported".into());
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or("unterminated [ in the connection URL's host")?;
            match after.strip_prefix(':') {
                Some(p) => (addr.to_string(), Some(p)),
                None if after.is_empty() => (addr.to_string(), None),
                None => return Err(format!("unexpected {after:?} after the host")),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (percent_decode(h)?, Some(p)),
                None => (percent_decode(hostport)?, None),
            }
        };
        cfg.host = host;
        if let Some(p) = port {
            cfg.port = parse_port(p)?;
        }
        if !path.is_empty() {
            cfg.dbname = percent_decode(path)?;
        }
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            cfg.set(k, &percent_decode(v)?)
                .map_err(|e| format!("connection URL parameter {k}: {e}"))?;
        }
        cfg.finish()
    }

    /// Parses `host=... port=... user=... dbname=... password='...' sslmode=...`.
    pub fn from_key_value(text: &str) -> Result<Self, String> {
        let mut cfg = ConnectionConfig::new("", "", "");
        let mut chars = text.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                key.push(c);
                chars.next();
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.next() != Some('=') {
                return Err(format!("connection string: missing \"=\" after {key:?}"));
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let mut value = String::new();
            if chars.peek() == Some(&'\'') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('\\') => match chars.next() {
                            Some(c) => value.push(c),
                            None => break,
                        },
                        Some('\'') => break,
                        Some(c) => value.push(c),
                        None => {
                            return Err(format!(
                                "connection string: unterminated quoted value for {key}"
                            ))
                        }
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    chars.next();
                    if c == '\\' {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    } else {
                        value.push(c);
                    }
                }
            }
            cfg.set(&key, &value)
                .map_err(|e| format!("connection string key {key}: {e}"))?;
        }
        cfg.finish()
    }

    /// One parameter with libpq's name.
    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "host" => {
                if value.contains(',') {
                    return Err("several hosts are not supported".into());
                }
                self.host = value.to_string()
            }
            "hostaddr" => self.host = value.to_string(),
            "port" => self.port = parse_port(value)?,
            "user" => self.user = value.to_string(),
            "password" => self.password = Secret::new(value),
            "dbname" => self.dbname = value.to_string(),
            "passfile" => self.passfile = Some(PathBuf::from(value)),
            "sslmode" => self.sslmode = value.parse()?,
            "sslrootcert" => self.ssl_root_cert = Some(PathBuf::from(value)),
            "application_name" => {
                if value.is_empty() || value.len() > 40 || !value.is_ascii() {
                    return Err("must be 1-40 ASCII characters".into());
                }
                self.application_name = value.to_string()
            }
            "connect_timeout" => {
                let secs: u64 = value
                    .parse()
                    .map_err(|_| format!("invalid number of seconds {value:?}"))?;
                // libpq treats 0 as "wait forever"; we always bound a connect.
                self.connect_timeout = Duration::from_secs(secs.clamp(1, 3600));
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
        Ok(())
    }

    /// Defaults that depend on other fields, then the checks every form shares.
    fn finish(mut self) -> Result<Self, String> {
        if self.host.is_empty() {
            return Err("the connection must name a host (or a socket directory)".into());
        }
        if self.user.is_empty() {
            self.user = std::env::var("USER")
                .ok()
                .filter(|u| !u.is_empty())
                .ok_or("the connection must name a user")?;
        }
        if self.dbname.is_empty() {
            self.dbname = self.user.clone();
        }
        if self.sslmode != SslMode::Disable && self.is_unix_socket() {
            return Err(format!(
                "sslmode={} over a unix-domain socket: PostgreSQL does not use TLS on local sockets; use sslmode=disable",
                self.sslmode
            ));
        }
        if self.sslmode == SslMode::VerifyFull && self.ssl_root_cert.is_none() {
            return Err("sslmode=verify-full needs sslrootcert (the CA's PEM file)".into());
        }
        Ok(self)
    }

    /// Whether `host` is a unix-domain socket directory.
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// The socket file of a unix-domain connection.
    pub fn socket_path(&self) -> PathBuf {
        PathBuf::from(&self.host).join(format!(".s.PGSQL.{}", self.port))
    }

    /// Where this connects, for messages: `host:port/db` or `/dir/.s.PGSQL.5432/db`. Never
    /// includes the password.
    pub fn target(&self) -> String {
        if self.is_unix_socket() {
            format!("{}/{}", self.socket_path().display(), self.dbname)
        } else if self.host.contains(':') {
            format!("[{}]:{}/{}", self.host, self.port, self.dbname)
        } else {
            format!("{}:{}/{}", self.host, self.port, self.dbname)
        }
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut c = self.clone();
        c.dbname = dbname.to_string();
        c
    }

    /// The password to send: the configured one, else the passfile's entry for this host, port,
    /// database and user, else none.
    pub fn password_for(&self) -> Secret {
        if !self.password.is_empty() {
            return self.password.clone();
        }
        let file = self
            .passfile
            .clone()
            .or_else(|| std::env::var_os("PGPASSFILE").map(PathBuf::from))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")));
        match file {
            Some(f) => crate::passfile::lookup(
                &f,
                // libpq matches a socket connection against "localhost".
                if self.is_unix_socket() {
                    "localhost"
                } else {
                    &self.host
                },
                self.port,
                &self.dbname,
                &self.user,
            )
            .map(Secret::new)
            .unwrap_or_default(),
            None => Secret::default(),
        }
    }
}

impl std::str::FromStr for ConnectionConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnectionConfig::parse(s)
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("invalid port {p:?}")),
        Ok(n) => Ok(n),
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
        let c = ConnectionConfig::parse(
            "postgres://lily:p%40ss@127.0.0.1:5433/meta?sslmode=verify-full&sslrootcert=/x/ca.pem&application_name=edge",
        )
        .unwrap();
        assert_eq!(c.user, "lily");
        assert_eq!(c.password.expose(), "p@ss");
        assert_eq!(c.port, 5433);
        assert_eq!(c.dbname, "meta");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.application_name, "edge");
        assert_eq!(c.target(), "127.0.0.1:5433/meta");
        assert!(!format!("{c:?}").contains("p@ss"));
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        for bad in [
            "mysql://x@y/z",
            "postgres://x@y/z?sslmode=maybe",
            "postgres://x@y/z?sslmode=prefer",
            "postgres://x@y:notaport/z",
            "postgres://x@y:0/z",
            "postgres://x@y/z?sslmode=verify-full",
            "postgres://x@a,b/z",
            "postgres://x@y/z?gssencmode=disable",
            "postgres://x@%2Ftmp/z?sslmode=require",
            "host=y user=x dbname='z",
            "host=y user",
            "just words",
        ] {
            assert!(ConnectionConfig::parse(bad).is_err(), "{bad} was accepted");
        }
        let e = ConnectionConfig::parse("postgres://x@y/z?sslmode=verify-full").unwrap_err();
        assert!(e.contains("sslrootcert"), "{e}");
    }

    #[test]
    fn unix_sockets_in_every_spelling() {
        for text in [
            "postgres://lily@%2Fvar%2Frun%2Fpostgresql:5433/meta",
            "postgres://lily@/meta?host=/var/run/postgresql&port=5433",
            "postgresql:///meta?host=%2Fvar%2Frun%2Fpostgresql&user=lily&port=5433",
            "host=/var/run/postgresql port=5433 user=lily dbname=meta",
        ] {
            let c = ConnectionConfig::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(c.is_unix_socket(), "{text}");
            assert_eq!(c.host, "/var/run/postgresql", "{text}");
            assert_eq!(c.port, 5433, "{text}");
            assert_eq!(c.user, "lily", "{text}");
            assert_eq!(c.dbname, "meta", "{text}");
            assert_eq!(
                c.socket_path(),
                PathBuf::from("/var/run/postgresql/.s.PGSQL.5433")
            );
        }
    }

    #[test]
    fn key_value_form_with_quotes_and_escapes() {
        let c = ConnectionConfig::parse(
            r"host=db.internal port = 6432 user=lily dbname=meta password='it\'s a pass' sslmode=require application_name=ops",
        )
        .unwrap();
        assert_eq!(c.host, "db.internal");
        assert_eq!(c.port, 6432);
        assert_eq!(c.password.expose(), "it's a pass");
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.application_name, "ops");
        let e = ConnectionConfig::parse("host=x user=y password=hunter2 bogus=1").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn ipv6_and_defaults() {
        let c = ConnectionConfig::parse("postgres://lily@[::1]:5433").unwrap();
        assert_eq!(c.host, "::1");
        assert_eq!(c.port, 5433);
        assert_eq!(c.dbname, "lily");
        assert_eq!(c.target(), "[::1]:5433/lily");
        let c = ConnectionConfig::parse("postgres://lily@db/meta").unwrap();
        assert_eq!(c.port, 5432);
        assert_eq!(c.sslmode, SslMode::Disable);
    }

    #[test]
    fn password_from_passfile() {
        let dir = std::env::temp_dir().join(format!("lily-pg-pass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(
            &file,
            "# comment\nother:5432:*:lily:wrong\ndb:*:meta:lily:s\\:cret\nlocalhost:5433:*:*:local\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let mut c = ConnectionConfig::parse("postgres://lily@db:5499/meta").unwrap();
        c.passfile = Some(file.clone());
        assert_eq!(c.password_for().expose(), "s:cret");
        let mut s = ConnectionConfig::parse("host=/run/pg port=5433 user=x dbname=y").unwrap();
        s.passfile = Some(file.clone());
        assert_eq!(s.password_for().expose(), "local");
        // A given password wins over the file.
        let mut given = ConnectionConfig::parse("postgres://lily:given@db/meta").unwrap();
        given.passfile = Some(file);
        assert_eq!(given.password_for().expose(), "given");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
