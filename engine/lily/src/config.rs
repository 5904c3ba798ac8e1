//! The engine's config file (TOML). Unknown keys are errors; secrets are never in the file,
//! only the name of the environment variable or file that holds them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lily_replication::{ConnectionConfig, Secret, SourceSpec, SslMode};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The PostgreSQL metastore to capture changes from.
    pub source: SourceConfig,
    /// Bounds that close a batch.
    #[serde(default)]
    pub batch: BatchConfig,
    /// The HTTP endpoint for /metrics, /healthz and /readyz.
    #[serde(default)]
    pub http: HttpConfig,
    /// Consumers; every one receives every batch.
    #[serde(default, rename = "consumer")]
    pub consumers: Vec<ConsumerConfig>,
    /// Folder of pipeline files (`*.toml`), relative to this file. Their source tables are
    /// added to the captured tables.
    pub pipelines: Option<PathBuf>,
    /// The ingest API (authenticated writes and inbound webhooks), served on `http.listen`.
    pub ingest: Option<lily_ingest::IngestConfig>,
    /// The folder this file was read from (set by `load`, not written in the file).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Where and what to capture.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name of an environment variable holding a full `postgres://` URL (password included).
    /// Use either this or host/port/user/dbname.
    pub url_env: Option<String>,
    /// Server host name or address.
    pub host: Option<String>,
    /// Server port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Role to connect as; it needs the REPLICATION attribute.
    pub user: Option<String>,
    /// Database holding the metastore.
    pub dbname: Option<String>,
    /// Name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// Path of a file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// disable, require or verify-full.
    #[serde(default = "default_sslmode")]
    pub sslmode: String,
    /// PEM file of the CA for verify-full.
    pub sslrootcert: Option<PathBuf>,
    /// Replication slot name (a-z, 0-9, _).
    pub slot: String,
    /// Publication name (a-z, 0-9, _); created if missing.
    pub publication: String,
    /// Tables to capture, as schema.table.
    pub tables: Vec<String>,
    /// Standby status cadence in milliseconds; default a third of wal_sender_timeout (≤ 10 s).
    pub status_interval_ms: Option<u64>,
}

fn default_port() -> u16 {
    5432
}
fn default_sslmode() -> String {
    "disable".into()
}

/// Batch bounds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Rows at which a batch closes, even inside a transaction.
    #[serde(default = "default_rows")]
    pub max_rows: usize,
    /// Approximate bytes at which a batch closes.
    #[serde(default = "default_bytes")]
    pub max_bytes: usize,
    /// Milliseconds a batch with rows waits for more.
    #[serde(default = "default_latency")]
    pub max_latency_ms: u64,
    /// Batches a consumer may hold unacknowledged before capture waits.
    #[serde(default = "default_queue")]
    pub consumer_queue: usize,
    /// Microseconds a finished group of transactions waits for the next one (0: send at once).
    #[serde(default = "default_linger")]
    pub linger_us: u64,
}

fn default_linger() -> u64 {
    1000
}

fn default_rows() -> usize {
    8192
}
fn default_bytes() -> usize {
    8 << 20
}
fn default_latency() -> u64 {
    50
}
fn default_queue() -> usize {
    16
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: default_rows(),
            max_bytes: default_bytes(),
            max_latency_ms: default_latency(),
            consumer_queue: default_queue(),
            linger_us: default_linger(),
        }
    }
}

/// The HTTP endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, e.g. 127.0.0.1:9187.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_listen() -> String {
    "127.0.0.1:9187".into()
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
        }
    }
}

/// One consumer of the change stream.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConsumerConfig {
    /// Writes every change as a JSON line to stdout.
    Log {
        /// Name used in logs and metrics.
        name: String,
    },
    /// Applies every change to another PostgreSQL database with the same tables.
    Mirror {
        /// Name used in logs and metrics.
        name: String,
        /// Name of an environment variable holding the target's `postgres://` URL.
        target_url_env: String,
    },
}

impl ConsumerConfig {
    pub fn name(&self) -> &str {
        match self {
            ConsumerConfig::Log { name } | ConsumerConfig::Mirror { name, .. } => name,
        }
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        let mut cfg: FileConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.base_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    /// Pure checks: no network, no environment.
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.source;
        match (&s.url_env, &s.host) {
            (Some(_), Some(_)) => return Err("[source]: give url_env or host, not both".into()),
            (None, None) => return Err("[source]: give url_env or host".into()),
            _ => {}
        }
        if s.host.is_some() && (s.user.is_none() || s.dbname.is_none()) {
            return Err("[source]: host needs user and dbname".into());
        }
        if s.password_env.is_some() && s.password_file.is_some() {
            return Err("[source]: give password_env or password_file, not both".into());
        }
        s.sslmode
            .parse::<SslMode>()
            .map_err(|e| format!("[source] sslmode: {e}"))?;
        if let Some(i) = &self.ingest {
            i.validate().map_err(|e| format!("[ingest]: {e}"))?;
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.consumers {
            if !names.insert(c.name()) {
                return Err(format!("consumer name {:?} is used twice", c.name()));
            }
        }
        self.batch_capture_check()
    }

    fn batch_capture_check(&self) -> Result<(), String> {
        let mut cfg = lily_cdc::CaptureConfig::new(
            ConnectionConfig::from_url("postgres://x@localhost/x").expect("static URL"),
            self.source_spec(),
        );
        self.apply_batch(&mut cfg);
        cfg.validate()
    }

    /// The pipelines folder, resolved against the config file's folder.
    pub fn pipelines_dir(&self) -> Option<PathBuf> {
        self.pipelines.as_ref().map(|p| self.base_dir.join(p))
    }

    pub fn source_spec(&self) -> SourceSpec {
        SourceSpec {
            slot: self.source.slot.clone(),
            publication: self.source.publication.clone(),
            tables: self.source.tables.clone(),
            row_filters: Vec::new(),
        }
    }

    fn apply_batch(&self, cfg: &mut lily_cdc::CaptureConfig) {
        cfg.batch_max_rows = self.batch.max_rows;
        cfg.batch_max_bytes = self.batch.max_bytes;
        cfg.batch_max_latency = Duration::from_millis(self.batch.max_latency_ms);
        cfg.consumer_queue = self.batch.consumer_queue;
        cfg.batch_linger = Duration::from_micros(self.batch.linger_us);
        cfg.status_interval = self.source.status_interval_ms.map(Duration::from_millis);
    }

    /// Resolves secrets from the environment or files and builds the capture config.
    pub fn capture_config(&self) -> anyhow::Result<lily_cdc::CaptureConfig> {
        let s = &self.source;
        let connection = if let Some(var) = &s.url_env {
            let url = std::env::var(var).map_err(|_| {
                anyhow::anyhow!("[source] url_env: environment variable {var} is not set")
            })?;
            ConnectionConfig::from_url(&url)
                .map_err(|e| anyhow::anyhow!("[source] URL in {var}: {e}"))?
        } else {
            let password = match (&s.password_env, &s.password_file) {
                (Some(var), _) => std::env::var(var).map_err(|_| {
                    anyhow::anyhow!("[source] password_env: environment variable {var} is not set")
                })?,
                (_, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("[source] password_file {}: {e}", path.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
                _ => String::new(),
            };
            ConnectionConfig {
                host: s.host.clone().unwrap_or_default(),
                port: s.port,
                user: s.user.clone().unwrap_or_default(),
                password: Secret::new(password),
                dbname: s.dbname.clone().unwrap_or_default(),
                sslmode: s.sslmode.parse().map_err(|e: String| anyhow::anyhow!(e))?,
                ssl_root_cert: s.sslrootcert.clone(),
                application_name: "lily".into(),
                connect_timeout: Duration::from_secs(10),
            }
        };
        let mut cfg = lily_cdc::CaptureConfig::new(connection, self.source_spec());
        self.apply_batch(&mut cfg);
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[source]
host = "127.0.0.1"
user = "lily"
dbname = "meta"
password_env = "LILY_TEST_PASSWORD"
slot = "lily_main"
publication = "lily_main"
tables = ["meta.assets"]

[[consumer]]
type = "log"
name = "stdout"
"#;

    #[test]
    fn accepts_a_good_file() {
        let cfg: FileConfig = toml::from_str(GOOD).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.consumers.len(), 1);
    }

    #[test]
    fn rejects_unknown_keys_bad_names_and_inline_passwords() {
        let unknown = GOOD.replace("slot = ", "slots = \"x\"\nslot = ");
        assert!(toml::from_str::<FileConfig>(&unknown)
            .unwrap_err()
            .to_string()
            .contains("slots"));
        let inline = GOOD.replace(
            "password_env = \"LILY_TEST_PASSWORD\"",
            "password = \"hunter2\"",
        );
        let err = toml::from_str::<FileConfig>(&inline)
            .unwrap_err()
            .to_string();
        assert!(err.contains("password"), "{err}");
        let bad_slot = GOOD.replace("slot = \"lily_main\"", "slot = \"x'; drop\"");
        let cfg: FileConfig = toml::from_str(&bad_slot).unwrap();
        assert!(cfg.validate().unwrap_err().contains("slot"));
        let bad_consumer = GOOD.replace("type = \"log\"", "type = \"fax\"");
        assert!(toml::from_str::<FileConfig>(&bad_consumer).is_err());
    }

    #[test]
    fn shipped_example_is_valid() {
        let path = std::path::PathBuf::from(
            std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
        )
        .join("examples/metastore.toml");
        FileConfig::load(&path).unwrap();
    }

    #[test]
    fn missing_secret_is_a_clear_error() {
        let cfg: FileConfig =
            toml::from_str(&GOOD.replace("LILY_TEST_PASSWORD", "LILY_SURELY_UNSET_VAR")).unwrap();
        let err = cfg.capture_config().unwrap_err().to_string();
        assert!(err.contains("LILY_SURELY_UNSET_VAR"), "{err}");
    }
}
