//! Throwaway PostgreSQL clusters started from the installed server binaries.
//!
//! Every integration test and `lily dev` gets its own cluster: `initdb` into a fresh temporary
//! directory, a free TCP port on 127.0.0.1, SCRAM authentication for the `lily` superuser with a
//! random password, `wal_level = logical`, and optionally TLS with a freshly generated CA. Nothing
//! depends on a PostgreSQL server that is already running.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lily_pgharness::HarnessError> {
//! let cluster = lily_pgharness::PgCluster::start().await?;
//! cluster.create_database("app").await?;
//! let client = cluster.connect("app").await?;
//! client.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await.unwrap();
//! # Ok(()) }
//! ```
//!
//! PostgreSQL refuses to run as root. When the process runs as root (as on the CI machines), the
//! server binaries run as the `postgres` OS user (created by the Debian `postgresql` package; or
//! the user named by `LILY_PG_OS_USER`) and the cluster directory is handed to that user.
//!
//! Dropping a [`PgCluster`] stops the server (`pg_ctl stop -m immediate`) and removes its
//! directory. A process killed by a signal leaves both behind (under the temporary directory,
//! prefix `lily-pg-`); each directory records its creator's pid, and the next cluster start
//! stops and removes those whose creator is gone.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tempfile::TempDir;

/// The superuser every cluster is initialised with.
pub const SUPERUSER: &str = "lily";
/// The address the server listens on.
pub const HOST: &str = "127.0.0.1";
/// How many times [`PgCluster::start_with`] picks a new port when the chosen one was taken.
const PORT_ATTEMPTS: usize = 5;
/// Lines of the server log quoted in a start failure.
const LOG_TAIL_LINES: usize = 30;
/// The file (inside the data directory) the harness writes its settings to; postgresql.conf
/// includes it last, so it overrides initdb's defaults.
const SETTINGS_FILE: &str = "lily_harness.conf";
/// The server log, inside the data directory (`pg_ctl -l`).
const LOG_FILE: &str = "lily-server.log";

const INSTALL_HINT: &str =
    "install PostgreSQL with: apt-get install -y postgresql, or set LILY_PG_BINDIR to the directory holding initdb, pg_ctl and postgres";

/// What went wrong starting or driving a throwaway cluster. Each message says what failed and
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("PostgreSQL server binaries (initdb, pg_ctl) not found; looked in {searched}. {INSTALL_HINT}")]
    BinariesNotFound { searched: String },
    #[error("LILY_PG_BINDIR={dir} does not contain initdb and pg_ctl; point it at PostgreSQL's bin directory (e.g. /usr/lib/postgresql/15/bin), or unset it and {INSTALL_HINT}")]
    BadBinDir { dir: String },
    #[error("running as root, but there is no OS user {user:?} to run PostgreSQL as (PostgreSQL refuses to run as root). Install the Debian package, which creates it: apt-get install -y postgresql; or create the user: useradd --system --create-home {user}; or set LILY_PG_OS_USER to another unprivileged user; or run as a non-root user")]
    NoClusterUser { user: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("PostgreSQL did not start: {reason}. Server log {log}, last lines:\n{tail}")]
    StartFailed {
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{what}: {source}")]
    Postgres {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("could not generate the TLS certificates for the test cluster: {0}")]
    Tls(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl HarnessError {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }

    fn pg(what: impl Into<String>, source: tokio_postgres::Error) -> Self {
        HarnessError::Postgres {
            what: what.into(),
            source,
        }
    }
}

/// How to start a cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Extra `postgresql.conf` settings as (name, value); they override the harness defaults.
    /// Values are written quoted (`name = 'value'`); a value already wrapped in single quotes is
    /// written as given. Setting `port` pins the port (no retry on a clash).
    pub settings: Vec<(String, String)>,
    /// Turn on TLS with a server certificate signed by a fresh CA ([`PgCluster::tls_ca_cert`]).
    /// Plain connections keep working; `pg_hba.conf` uses `host` lines, not `hostssl`.
    pub tls: bool,
    /// TLS, and TCP connections without it are refused (`hostssl` lines only). The harness's own
    /// [`PgCluster::connect`] then goes over the unix-domain socket.
    pub tls_only: bool,
}

impl ClusterOptions {
    /// Adds one setting (builder style).
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Turns TLS on (builder style).
    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Turns TLS on and refuses plain TCP connections (builder style).
    pub fn with_tls_only(mut self) -> Self {
        self.tls = true;
        self.tls_only = true;
        self
    }
}

/// The OS user the server runs as when we are root.
#[derive(Debug, Clone)]
struct OsUser {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

/// A running (or stopped) throwaway PostgreSQL cluster. See the crate docs.
#[derive(Debug)]
pub struct PgCluster {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    password: String,
    owner: Option<OsUser>,
    tls_ca: Option<PathBuf>,
    tls_only: bool,
    running: AtomicBool,
    // Last: removed after Drop::drop stopped the server.
    root: TempDir,
}

impl PgCluster {
    /// Starts a cluster with the default settings.
    pub async fn start() -> Result<PgCluster, HarnessError> {
        Self::start_with(ClusterOptions::default()).await
    }

    /// Starts a cluster with extra settings and/or TLS.
    pub async fn start_with(opts: ClusterOptions) -> Result<PgCluster, HarnessError> {
        // The set-up is a handful of short blocking steps (initdb, file writes, key generation);
        // run them off the async executor.
        let (mut cluster, fixed_port, lines) =
            tokio::task::spawn_blocking(move || Self::init(&opts))
                .await
                .map_err(|e| HarnessError::io("cluster set-up task", std::io::Error::other(e)))??;
        // On failure `cluster` drops here: the server (if any) is stopped, the directory removed.
        cluster.start_on_free_port(fixed_port, &lines).await?;
        Ok(cluster)
    }

    fn init(opts: &ClusterOptions) -> Result<(PgCluster, Option<u16>, Vec<String>), HarnessError> {
        let bin_dir = find_bin_dir()?;
        let owner = if running_as_root() {
            let name = std::env::var("LILY_PG_OS_USER").unwrap_or_else(|_| "postgres".into());
            Some(lookup_user(&name)?.ok_or(HarnessError::NoClusterUser { user: name })?)
        } else {
            None
        };

        reap_orphans(&bin_dir, owner.as_ref());
        let root = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .map_err(|e| HarnessError::io("creating the cluster's temporary directory", e))?;
        // Who created the cluster: a later harness stops it if this process died without Drop.
        std::fs::write(
            root.path().join(OWNER_PID_FILE),
            std::process::id().to_string(),
        )
        .map_err(|e| HarnessError::io("writing the cluster's owner pid", e))?;
        let data_dir = root.path().join("data");
        let socket_dir = root.path().join("sock");
        let log_file = data_dir.join(LOG_FILE);
        std::fs::create_dir(&socket_dir)
            .map_err(|e| HarnessError::io(format!("creating {}", socket_dir.display()), e))?;
        if let Some(u) = &owner {
            // The temp dir is 0700 and ours; hand it over so the server user can create `data`.
            for p in [root.path(), socket_dir.as_path()] {
                chown(p, u)?;
            }
            check_traversable(root.path(), u)?;
        }

        let password = random_hex(18)?;
        let mut cluster = PgCluster {
            bin_dir,
            data_dir,
            socket_dir,
            log_file,
            port: 0,
            password,
            owner,
            tls_ca: None,
            tls_only: opts.tls_only,
            running: AtomicBool::new(false),
            root,
        };
        // Validate the caller's settings before spending an initdb on them.
        let (fixed_port, lines) = cluster.settings_lines(opts)?;
        cluster.initdb()?;
        if opts.tls || opts.tls_only {
            cluster.write_tls_files()?;
        }
        cluster.write_hba()?;
        cluster.include_settings_file()?;
        Ok((cluster, fixed_port, lines))
    }

    fn initdb(&self) -> Result<(), HarnessError> {
        let pwfile = self.root.path().join("pwfile");
        write_file(&pwfile, self.password.as_bytes(), 0o600)?;
        if let Some(u) = &self.owner {
            chown(&pwfile, u)?;
        }
        let run = |locale: &str| -> Result<Output, HarnessError> {
            let mut cmd = self.owner_command("initdb");
            cmd.arg("-D")
                .arg(&self.data_dir)
                .args([
                    "-U",
                    SUPERUSER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["-E", "UTF8", &format!("--locale={locale}"), "--no-sync"]);
            output_of(&mut cmd, "initdb")
        };
        let first = run("C.UTF-8")?;
        let result = if first.status.success() {
            Ok(())
        } else {
            // C.UTF-8 is missing on some systems; C works everywhere.
            tracing::debug!("initdb with C.UTF-8 failed, retrying with --locale=C");
            let _ = std::fs::remove_dir_all(&self.data_dir);
            let second = run("C")?;
            if second.status.success() {
                Ok(())
            } else {
                Err(command_failed(
                    &format!("initdb -D {}", self.data_dir.display()),
                    &second,
                    Some(&format!(
                        "with --locale=C.UTF-8 it said:\n{}",
                        String::from_utf8_lossy(&first.stderr).trim_end()
                    )),
                ))
            }
        };
        let _ = std::fs::remove_file(&pwfile);
        result
    }

    fn write_hba(&self) -> Result<(), HarnessError> {
        let tcp = if self.tls_only { "hostssl" } else { "host   " };
        let hba = format!(
            "\
# Written by lily-pgharness.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
local   replication  all                  trust
{tcp} all          all   127.0.0.1/32   scram-sha-256
{tcp} replication  all   127.0.0.1/32   scram-sha-256
"
        );
        // Overwriting keeps initdb's owner and mode.
        std::fs::write(self.data_dir.join("pg_hba.conf"), hba)
            .map_err(|e| HarnessError::io("writing pg_hba.conf", e))
    }

    /// The harness defaults followed by the caller's settings (later lines win). Returns the port
    /// the caller pinned, if any.
    fn settings_lines(
        &self,
        opts: &ClusterOptions,
    ) -> Result<(Option<u16>, Vec<String>), HarnessError> {
        let socket_dir = self.socket_dir.display().to_string();
        let mut settings: Vec<(String, String)> = [
            ("listen_addresses", HOST),
            ("unix_socket_directories", socket_dir.as_str()),
            ("wal_level", "logical"),
            ("max_wal_senders", "20"),
            ("max_replication_slots", "20"),
            ("password_encryption", "scram-sha-256"),
            ("fsync", "off"),
            ("full_page_writes", "off"),
            ("synchronous_commit", "on"),
            ("shared_buffers", "128MB"),
            ("max_connections", "200"),
            ("wal_sender_timeout", "60s"),
            ("logging_collector", "off"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if opts.tls {
            settings.push(("ssl".into(), "on".into()));
            settings.push((
                "ssl_cert_file".into(),
                self.data_dir.join("server.crt").display().to_string(),
            ));
            settings.push((
                "ssl_key_file".into(),
                self.data_dir.join("server.key").display().to_string(),
            ));
        }
        let mut fixed_port = None;
        for (k, v) in &opts.settings {
            if k.trim().is_empty() || k.contains(['=', '\n', '#']) || v.contains('\n') {
                return Err(HarnessError::InvalidArgument(format!(
                    "setting {k:?} = {v:?} is not a single postgresql.conf line"
                )));
            }
            if k.trim().eq_ignore_ascii_case("port") {
                let p = v.trim().trim_matches('\'');
                fixed_port = Some(p.parse::<u16>().map_err(|_| {
                    HarnessError::InvalidArgument(format!("port setting {v:?} is not a port"))
                })?);
                continue;
            }
            settings.push((k.trim().to_string(), v.clone()));
        }
        let lines = settings
            .into_iter()
            .map(|(k, v)| format!("{k} = {}", conf_quote(&v)))
            .collect();
        Ok((fixed_port, lines))
    }

    fn include_settings_file(&self) -> Result<(), HarnessError> {
        let conf = self.data_dir.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(|e| HarnessError::io(format!("opening {}", conf.display()), e))?;
        writeln!(
            f,
            "\n# lily-pgharness settings override everything above.\ninclude '{SETTINGS_FILE}'"
        )
        .map_err(|e| HarnessError::io(format!("writing {}", conf.display()), e))
    }

    fn write_settings(&self, lines: &[String], port: u16) -> Result<(), HarnessError> {
        let mut text =
            String::from("# Written by lily-pgharness; included last by postgresql.conf.\n");
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        let _ = writeln!(text, "port = {port}");
        let path = self.data_dir.join(SETTINGS_FILE);
        write_file(&path, text.as_bytes(), 0o600)?;
        if let Some(u) = &self.owner {
            chown(&path, u)?;
        }
        Ok(())
    }

    /// First start: pick a free port, start, and pick another if the server lost the race for it.
    async fn start_on_free_port(
        &mut self,
        fixed_port: Option<u16>,
        lines: &[String],
    ) -> Result<(), HarnessError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.port = match fixed_port {
                Some(p) => p,
                None => free_port()?,
            };
            self.write_settings(lines, self.port)?;
            let log_before = std::fs::metadata(&self.log_file)
                .map(|m| m.len())
                .unwrap_or(0);
            match self.pg_ctl(&["start"], "start").await {
                Ok(()) => {
                    self.running.store(true, Ordering::SeqCst);
                    tracing::debug!(port = self.port, data_dir = %self.data_dir.display(), "test cluster started");
                    return Ok(());
                }
                Err(e) => {
                    let log = read_from(&self.log_file, log_before);
                    let clash = log.contains("could not bind")
                        || log.contains("Address already in use")
                        || log.contains("could not create any TCP/IP sockets");
                    if clash && fixed_port.is_none() && attempt < PORT_ATTEMPTS {
                        tracing::debug!(
                            port = self.port,
                            attempt,
                            "port taken, retrying on another"
                        );
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Runs `pg_ctl -D DATA -w -t 60 [-l LOG] ACTION...`; a failure quotes the server log.
    async fn pg_ctl(&self, action: &[&str], what: &str) -> Result<(), HarnessError> {
        let mut cmd = self.owner_command("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).args(["-w", "-t", "60"]);
        if action[0] != "stop" {
            cmd.arg("-l").arg(&self.log_file);
        }
        cmd.args(action);
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .map_err(|e| {
                HarnessError::io(
                    format!("running {}", self.bin_dir.join("pg_ctl").display()),
                    e,
                )
            })?;
        if out.status.success() {
            return Ok(());
        }
        let reason = format!(
            "`pg_ctl {}` failed ({}): {}",
            action.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if what == "stop" {
            return Err(HarnessError::Command {
                command: format!("pg_ctl -D {} stop", self.data_dir.display()),
                status: out.status.to_string(),
                output: format!(
                    "{reason}\nserver log tail:\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                ),
            });
        }
        Err(HarnessError::StartFailed {
            reason,
            log: self.log_file.clone(),
            tail: self.log_tail(LOG_TAIL_LINES),
        })
    }

    /// The address clients connect to: always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port the server listens on; stable across [`restart`](Self::restart) and
    /// [`stop`](Self::stop)/[`start_again`](Self::start_again).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser: `lily`.
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password, random per cluster (hex, so it needs no escaping in URLs).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgres://lily:PASSWORD@127.0.0.1:PORT/db?sslmode=disable`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@{HOST}:{}/{}?sslmode=disable",
            self.password,
            self.port,
            percent_encode(db)
        )
    }

    /// A tokio-postgres config for `db` as the superuser over TCP, `sslmode=disable`. For TLS set
    /// `ssl_mode(SslMode::Require)` on it and connect with a TLS connector trusting
    /// [`tls_ca_cert`](Self::tls_ca_cert).
    pub fn config(&self, db: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(HOST)
            .port(self.port)
            .user(SUPERUSER)
            .password(self.password.as_str())
            .dbname(db)
            .ssl_mode(tokio_postgres::config::SslMode::Disable)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// Connection settings for `db` as the superuser over TCP, `sslmode=disable`: what the
    /// engine's crates take.
    pub fn connection(&self, db: &str) -> lily_pg::ConnectionConfig {
        let mut c = lily_pg::ConnectionConfig::new(HOST, SUPERUSER, db);
        c.port = self.port;
        c.password = lily_pg::Secret::new(self.password.as_str());
        c
    }

    /// Like [`connection`](Self::connection), with `sslmode=verify-full` against the cluster's
    /// CA. Panics unless the cluster was started with TLS.
    pub fn tls_connection(&self, db: &str) -> lily_pg::ConnectionConfig {
        let mut c = self.connection(db);
        c.sslmode = lily_pg::SslMode::VerifyFull;
        c.ssl_root_cert = Some(
            self.tls_ca
                .clone()
                .expect("tls_connection needs a cluster started with TLS"),
        );
        c
    }

    /// Connects to `db` as the superuser (SCRAM over TCP; over the unix-domain socket for a
    /// TLS-only cluster) and spawns the connection task on the current tokio runtime.
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client, HarnessError> {
        let mut config = self.config(db);
        if self.tls_only {
            config.host_path(&self.socket_dir);
        }
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
            HarnessError::pg(
                format!(
                    "connecting to database {db:?} on {HOST}:{} as {SUPERUSER}",
                    self.port
                ),
                e,
            )
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "test cluster connection ended");
            }
        });
        Ok(client)
    }

    /// `CREATE DATABASE name` (the name is quoted as an identifier).
    pub async fn create_database(&self, name: &str) -> Result<(), HarnessError> {
        let client = self.connect("postgres").await?;
        client
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
            .await
            .map_err(|e| HarnessError::pg(format!("CREATE DATABASE {name:?}"), e))
    }

    /// `CREATE ROLE name WITH attrs PASSWORD 'password'`; `attrs` is SQL role options such as
    /// `"LOGIN REPLICATION"` (a test helper: it is not sanitised beyond refusing `;`).
    pub async fn create_role(
        &self,
        name: &str,
        password: &str,
        attrs: &str,
    ) -> Result<(), HarnessError> {
        if attrs.contains(';') {
            return Err(HarnessError::InvalidArgument(format!(
                "role attributes {attrs:?} must be role options like \"LOGIN REPLICATION\""
            )));
        }
        let client = self.connect("postgres").await?;
        client
            .batch_execute(&format!(
                "CREATE ROLE {} WITH {attrs} PASSWORD {}",
                quote_ident(name),
                quote_literal(password)
            ))
            .await
            .map_err(|e| HarnessError::pg(format!("CREATE ROLE {name:?}"), e))
    }

    /// The directory holding the server binaries this cluster runs (initdb, pg_ctl,
    /// pg_recvlogical, psql...).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The cluster's data directory (PGDATA).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory holding the server's Unix socket (trust authentication).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server log (`pg_ctl -l`), inside the data directory.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The last `lines` lines of the server log (empty if there is none yet).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = read_from(&self.log_file, 0);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// PEM of the CA that signed the server certificate, when started with `tls`.
    pub fn tls_ca_cert(&self) -> Option<&Path> {
        self.tls_ca.as_deref()
    }

    /// Whether the harness started the server and has not stopped it since.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// `pg_ctl restart -m fast`, on the same port.
    pub async fn restart(&self) -> Result<(), HarnessError> {
        self.pg_ctl(&["-m", "fast", "restart"], "restart").await?;
        self.running.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// `pg_ctl stop -m fast`; [`start_again`](Self::start_again) brings it back.
    pub async fn stop(&self) -> Result<(), HarnessError> {
        self.pg_ctl(&["-m", "fast", "stop"], "stop").await?;
        self.running.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Starts a stopped cluster again, on the same port.
    pub async fn start_again(&self) -> Result<(), HarnessError> {
        self.pg_ctl(&["start"], "start").await?;
        self.running.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// A [`Command`] for `bin_dir/program`, set to run as the cluster's OS user (the `postgres`
    /// user when we are root), in the cluster's directory, with `PGHOST`, `PGPORT`, `PGUSER`,
    /// `PGPASSWORD` and `PGDATABASE=postgres` pointing at this cluster (override as needed).
    pub fn run_as_owner(&self, program: &str) -> Command {
        let mut cmd = self.owner_command(program);
        cmd.env("PGHOST", HOST)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", SUPERUSER)
            .env("PGPASSWORD", &self.password)
            .env("PGDATABASE", "postgres");
        cmd
    }

    /// `bin_dir/program` as the cluster's OS user, with no PG* variables from our environment.
    fn owner_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.current_dir(self.root.path()).stdin(Stdio::null());
        for var in [
            "PGDATA",
            "PGHOST",
            "PGHOSTADDR",
            "PGPORT",
            "PGUSER",
            "PGPASSWORD",
            "PGPASSFILE",
            "PGDATABASE",
            "PGOPTIONS",
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGSSLMODE",
            "PGAPPNAME",
        ] {
            cmd.env_remove(var);
        }
        if let Some(u) = &self.owner {
            // std drops root's supplementary groups when it switches uid as root.
            cmd.uid(u.uid)
                .gid(u.gid)
                .env("HOME", &u.home)
                .env("USER", &u.name)
                .env("LOGNAME", &u.name);
        }
        cmd
    }

    fn write_tls_files(&mut self) -> Result<(), HarnessError> {
        let (ca_pem, cert_pem, key_pem) =
            generate_tls().map_err(|e| HarnessError::Tls(e.to_string()))?;
        let ca = self.data_dir.join("ca.crt");
        let crt = self.data_dir.join("server.crt");
        let key = self.data_dir.join("server.key");
        write_file(&ca, ca_pem.as_bytes(), 0o644)?;
        write_file(&crt, cert_pem.as_bytes(), 0o644)?;
        // PostgreSQL insists: owned by the server user, no group/other access.
        write_file(&key, key_pem.as_bytes(), 0o600)?;
        if let Some(u) = &self.owner {
            for p in [&ca, &crt, &key] {
                chown(p, u)?;
            }
        }
        self.tls_ca = Some(ca);
        Ok(())
    }
}

impl Drop for PgCluster {
    /// Stops the server (`pg_ctl stop -m immediate`, synchronously) if it is up; the temporary
    /// directory is removed right after.
    fn drop(&mut self) {
        if !self.data_dir.join("postmaster.pid").exists() {
            return;
        }
        let mut cmd = self.owner_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "30", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match cmd.status() {
            Ok(s) if s.success() => {}
            Ok(s) => {
                tracing::warn!(status = %s, data_dir = %self.data_dir.display(), "pg_ctl stop -m immediate failed while dropping the test cluster")
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not run pg_ctl while dropping the test cluster")
            }
        }
    }
}

/// Prefix of every cluster directory in the temp dir.
const DIR_PREFIX: &str = "lily-pg-";
/// File in a cluster directory holding the pid of the process that created it.
const OWNER_PID_FILE: &str = "owner.pid";

/// Stops and removes clusters left behind by processes that died without dropping them
/// (a test killed by a timeout or SIGKILL). Only directories whose recorded creator is no longer
/// running are touched; failures are logged and skipped.
fn reap_orphans(bin_dir: &Path, owner: Option<&OsUser>) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_ours = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        if !is_ours {
            continue;
        }
        // No pid yet: a cluster being created right now by another process.
        let Some(pid) = std::fs::read_to_string(dir.join(OWNER_PID_FILE))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let data = dir.join("data");
        if data.join("postmaster.pid").exists() {
            let mut cmd = Command::new(bin_dir.join("pg_ctl"));
            if let Some(u) = owner {
                cmd.uid(u.uid).gid(u.gid);
            }
            let _ = cmd
                .arg("-D")
                .arg(&data)
                .args(["-w", "-t", "30", "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), pid, "Removed a cluster left by a process that died.")
            }
            Err(error) => {
                tracing::warn!(%error, dir = %dir.display(), "Could not remove an orphaned cluster.")
            }
        }
    }
}

/// Finds the server binaries: `LILY_PG_BINDIR`; the highest `/usr/lib/postgresql/<N>/bin`
/// holding initdb; `pg_config --bindir`; `PATH`.
pub fn find_bin_dir() -> Result<PathBuf, HarnessError> {
    let usable = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("LILY_PG_BINDIR").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        return if usable(&dir) {
            Ok(dir)
        } else {
            Err(HarnessError::BadBinDir {
                dir: dir.display().to_string(),
            })
        };
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_string();
            let version = name
                .split('.')
                .map(|p| p.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            usable(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && usable(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|d| usable(d)) {
            return Ok(dir);
        }
    }
    Err(HarnessError::BinariesNotFound {
        searched: "$LILY_PG_BINDIR, /usr/lib/postgresql/<N>/bin, `pg_config --bindir` and $PATH"
            .into(),
    })
}

/// Effective uid 0, from `/proc/self/status` (no libc call needed).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Looks a user up in /etc/passwd.
fn lookup_user(name: &str) -> Result<Option<OsUser>, HarnessError> {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| HarnessError::io("reading /etc/passwd to find the PostgreSQL OS user", e))?;
    Ok(passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[0] != name {
            return None;
        }
        Some(OsUser {
            name: name.to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: PathBuf::from(f[5]),
        })
    }))
}

fn chown(path: &Path, user: &OsUser) -> Result<(), HarnessError> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(|e| {
        HarnessError::io(
            format!("handing {} to OS user {}", path.display(), user.name),
            e,
        )
    })
}

/// The server user must be able to reach the cluster directory through every parent.
fn check_traversable(dir: &Path, user: &OsUser) -> Result<(), HarnessError> {
    use std::os::unix::fs::MetadataExt;
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.mode();
        let ok = if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(HarnessError::io(
                format!(
                    "OS user {} cannot enter {} (mode {:o}), so it cannot use the cluster directory {}; set TMPDIR to a directory it can reach, e.g. TMPDIR=/tmp",
                    user.name,
                    ancestor.display(),
                    mode & 0o7777,
                    dir.display()
                ),
                std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            ));
        }
    }
    Ok(())
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), HarnessError> {
    let ctx = || format!("writing {}", path.display());
    let mut f = std::fs::File::create(path).map_err(|e| HarnessError::io(ctx(), e))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| HarnessError::io(ctx(), e))?;
    f.write_all(contents)
        .map_err(|e| HarnessError::io(ctx(), e))
}

/// A file's text from byte `from` on (lossy; empty when unreadable).
fn read_from(path: &Path, from: u64) -> String {
    use std::io::{Seek, SeekFrom};
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn output_of(cmd: &mut Command, what: &str) -> Result<Output, HarnessError> {
    cmd.output().map_err(|e| {
        HarnessError::io(
            format!(
                "running {what} ({})",
                Path::new(cmd.get_program()).display()
            ),
            e,
        )
    })
}

fn command_failed(command: &str, out: &Output, extra: Option<&str>) -> HarnessError {
    let mut output = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        let _ = write!(output, "\nstdout:\n{}", stdout.trim_end());
    }
    if let Some(extra) = extra {
        let _ = write!(output, "\n{extra}");
    }
    HarnessError::Command {
        command: command.to_string(),
        status: out.status.to_string(),
        output,
    }
}

fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| HarnessError::io("finding a free TCP port on 127.0.0.1", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| HarnessError::io("finding a free TCP port on 127.0.0.1", e))
}

fn random_hex(bytes: usize) -> Result<String, HarnessError> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| HarnessError::io("reading /dev/urandom for the cluster password", e))?;
    Ok(buf.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// A CA and a server certificate it signed (SAN: localhost, 127.0.0.1), as PEM:
/// (CA cert, server cert, server key).
fn generate_tls() -> Result<(String, String, String), rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "lily-pgharness throwaway CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(Vec::<String>::new())?;
    server.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;
    Ok((ca_cert.pem(), server_cert.pem(), server_key.serialize_pem()))
}

/// A postgresql.conf value: single-quoted, quotes doubled and backslashes escaped; a value the
/// caller already quoted is kept.
fn conf_quote(v: &str) -> String {
    if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// A SQL identifier, double-quoted.
pub use lily_pg::quote_ident;

/// A SQL string literal (standard_conforming_strings on).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn percent_encode(s: &str) -> String {
    s.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(conf_quote("128MB"), "'128MB'");
        assert_eq!(conf_quote("'on'"), "'on'");
        assert_eq!(conf_quote("it's"), "'it''s'");
        assert_eq!(conf_quote(r"a\b"), r"'a\\b'");
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_literal("o'k"), "'o''k'");
        assert_eq!(percent_encode("my db/x"), "my%20db%2Fx");
    }

    #[test]
    fn root_detection_reads_proc() {
        // Whatever we are, the answer must agree with the effective uid `id -u` reports.
        let out = Command::new("id").arg("-u").output().unwrap();
        let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(running_as_root(), uid == "0");
    }

    #[test]
    fn passwd_lookup() {
        let root = lookup_user("root")
            .unwrap()
            .expect("root is in /etc/passwd");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(lookup_user("no-such-user-lily").unwrap().is_none());
    }

    #[test]
    fn certificates_generate() {
        let (ca, cert, key) = generate_tls().unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    }
}
