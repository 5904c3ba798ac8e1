//! The engine's config file (TOML). Unknown keys are errors; secrets are never in the file,
//! only the name of the environment variable or file that holds them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lily_pg::{ConnectionConfig, SecretSource, SslMode};
use lily_replication::SourceSpec;
use serde::Deserialize;
use toml::Spanned;

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
    /// Consumers; every one receives every batch. Each table has `type` (a registered consumer,
    /// see `lily connectors`), `name`, and that consumer's settings.
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
    /// The file's text, to turn positions into lines (set by `load`).
    #[serde(skip)]
    pub text: String,
}

/// Where and what to capture.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name of an environment variable holding the connection string, as libpq takes it: a
    /// `postgres://` URL or `key=value` pairs (password included, or found in the passfile).
    /// Use either this or host/port/user/dbname.
    pub url_env: Option<String>,
    /// Server host name or address, or the directory of a unix-domain socket (`/var/run/postgresql`).
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
    /// A `.pgpass` file to read the password from when none is given (default `PGPASSFILE`,
    /// then `~/.pgpass`).
    pub passfile: Option<PathBuf>,
    /// Prefix of the `application_name` of every connection (`<prefix>-capture`,
    /// `<prefix>-ledger`, ...); default `lily`.
    pub application_name: Option<String>,
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
    /// Connections served at once; more wait in the listen backlog. The process raises its
    /// open-files limit to fit, when the system allows.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a client may take to send a request's headers (also an idle keep-alive
    /// connection's wait for its next request) before the connection is closed.
    #[serde(default = "default_header_read_timeout_secs")]
    pub header_read_timeout_secs: u64,
}

fn default_listen() -> String {
    "127.0.0.1:9187".into()
}

fn default_max_connections() -> usize {
    crate::http::ServerLimits::default().max_connections
}

fn default_header_read_timeout_secs() -> u64 {
    crate::http::ServerLimits::default()
        .header_read_timeout
        .as_secs()
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            max_connections: default_max_connections(),
            header_read_timeout_secs: default_header_read_timeout_secs(),
        }
    }
}

/// One `[[consumer]]` table: `type`, `name` and the consumer's own settings, each key with its
/// position so a problem is reported at its line.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct ConsumerConfig(Spanned<BTreeMap<Spanned<String>, toml::Value>>);

impl ConsumerConfig {
    fn get(&self, key: &str) -> Option<&toml::Value> {
        self.0
            .get_ref()
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v)
    }

    /// The consumer type (`type = "..."`).
    pub fn kind(&self) -> &str {
        self.get("type")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    }

    /// Name used in logs and metrics.
    pub fn name(&self) -> &str {
        self.get("name")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    }

    /// Everything but `type` and `name`: the connector's settings.
    pub fn settings(&self) -> toml::Value {
        toml::Value::Table(
            self.0
                .get_ref()
                .iter()
                .filter(|(k, _)| !matches!(k.get_ref().as_str(), "type" | "name"))
                .map(|(k, v)| (k.get_ref().clone(), v.clone()))
                .collect(),
        )
    }

    /// The byte offset of `key` (or of the table when it has no such key).
    fn offset_of(&self, key: Option<&str>) -> usize {
        key.and_then(|key| {
            self.0
                .get_ref()
                .keys()
                .find(|k| k.get_ref() == key)
                .map(|k| k.span().start)
        })
        .unwrap_or(self.0.span().start)
    }

    /// Pure checks against the registry: `type` names a registered consumer, `name` is there,
    /// the settings fit. The message starts with `line N:` of the offending key.
    fn validate(&self, text: &str, registry: &lily_connector::Registry) -> Result<(), String> {
        let line = |key: Option<&str>| {
            let at = self.offset_of(key).min(text.len());
            text[..at].bytes().filter(|b| *b == b'\n').count() + 1
        };
        if self.name().is_empty() {
            return Err(format!(
                "line {}: [[consumer]] needs name = \"...\"",
                line(Some("name"))
            ));
        }
        let Some(entry) = registry.consumer(self.kind()) else {
            return Err(format!(
                "line {}: consumer {:?}: unknown type {:?}; known types: {}",
                line(Some("type")),
                self.name(),
                self.kind(),
                registry.consumer_types().join(", ")
            ));
        };
        entry.check(&self.settings()).map_err(|e| {
            format!(
                "line {}: consumer {:?} ({}): {e}",
                line(e.key.as_deref()),
                self.name(),
                self.kind()
            )
        })
    }
}

/// A TOML error as `line N: message`, without the source line toml would quote: that line
/// may hold a secret pasted where a name belongs (`password = "..."`), and errors go to logs.
/// Quoted strings in the message (serde's "invalid type: string \"...\"") are left out too.
pub(crate) fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let mut message = String::new();
    let mut rest = e.message();
    // `string "…"` -> `a string`.
    while let Some(at) = rest.find("string \"") {
        message.push_str(&rest[..at]);
        message.push_str("a string");
        let after = &rest[at + "string \"".len()..];
        rest = after.find('"').map_or("", |end| &after[end + 1..]);
    }
    message.push_str(rest);
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message,
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        let mut cfg = FileConfig::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), toml_problem(&text, &e)))?;
        cfg.base_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    /// Parses the text (syntax, unknown keys); [`FileConfig::validate`] checks the rest.
    pub fn parse(text: &str) -> Result<FileConfig, toml::de::Error> {
        let mut cfg: FileConfig = toml::from_str(text)?;
        cfg.text = text.to_string();
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
        let mode = s
            .sslmode
            .parse::<SslMode>()
            .map_err(|e| format!("[source] sslmode: {e}"))?;
        if mode == SslMode::VerifyFull && s.host.is_some() && s.sslrootcert.is_none() {
            return Err(
                "[source]: sslmode = \"verify-full\" needs sslrootcert (the CA's PEM file)".into(),
            );
        }
        if let Some(name) = &s.application_name {
            if name.is_empty() || name.len() > 40 || !name.is_ascii() {
                return Err("[source] application_name: use 1-40 ASCII characters".into());
            }
        }
        if !(1..=1_000_000).contains(&self.http.max_connections) {
            return Err("[http] max_connections must be between 1 and 1000000".into());
        }
        if !(1..=600).contains(&self.http.header_read_timeout_secs) {
            return Err("[http] header_read_timeout_secs must be between 1 and 600".into());
        }
        let registry = lily_registry::registry();
        if let Some(i) = &self.ingest {
            i.validate(&registry.hook_types())
                .map_err(|e| format!("[ingest]: {e}"))?;
            for hook in &registry.hooks {
                hook.check(i.hooks.get(hook.type_name()))
                    .map_err(|e| format!("[ingest]: {e}"))?;
            }
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.consumers {
            c.validate(&self.text, &registry)?;
            if !names.insert(c.name()) {
                return Err(format!("consumer name {:?} is used twice", c.name()));
            }
        }
        self.batch_capture_check()
    }

    fn batch_capture_check(&self) -> Result<(), String> {
        let mut cfg = lily_cdc::CaptureConfig::new(
            ConnectionConfig::new("localhost", "x", "x"),
            self.source_spec(),
        );
        self.apply_batch(&mut cfg);
        cfg.validate()
    }

    /// What `lily run` runs: capture (secrets resolved), consumers, pipelines, HTTP, ingest.
    pub(crate) fn engine_spec(&self) -> anyhow::Result<crate::engine::Spec<'_>> {
        Ok(crate::engine::Spec {
            capture: self.capture_config()?,
            consumers: self
                .consumers
                .iter()
                .map(|c| crate::engine::ConsumerSpec {
                    kind: c.kind().to_string(),
                    name: c.name().to_string(),
                    settings: c.settings(),
                })
                .collect(),
            pipelines_dir: self.pipelines_dir(),
            listen: &self.http.listen,
            http_limits: crate::http::ServerLimits {
                max_connections: self.http.max_connections,
                header_read_timeout: std::time::Duration::from_secs(
                    self.http.header_read_timeout_secs,
                ),
            },
            ingest: self.ingest.as_ref(),
        })
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
            let url = SecretSource::Env(var.clone())
                .resolve()
                .map_err(|e| anyhow::anyhow!("[source] url_env: {e}"))?;
            // The parser's messages name the key, never a value, so no password is echoed.
            let mut c = ConnectionConfig::parse(url.expose())
                .map_err(|e| anyhow::anyhow!("[source] connection string in {var}: {e}"))?;
            if c.passfile.is_none() {
                c.passfile = s.passfile.clone();
            }
            c
        } else {
            let source = SecretSource::from_pair(
                "password",
                s.password_env.as_deref(),
                s.password_file.as_deref(),
            )
            .map_err(|e| anyhow::anyhow!("[source] {e}"))?;
            let password = match source {
                Some(src) => src
                    .resolve()
                    .map_err(|e| anyhow::anyhow!("[source] password: {e}"))?,
                None => Default::default(),
            };
            let mut c = ConnectionConfig::new(
                s.host.as_deref().unwrap_or_default(),
                s.user.as_deref().unwrap_or_default(),
                s.dbname.as_deref().unwrap_or_default(),
            );
            c.port = s.port;
            c.password = password;
            c.sslmode = s.sslmode.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            c.ssl_root_cert = s.sslrootcert.clone();
            c.passfile = s.passfile.clone();
            c
        };
        let mut connection = connection;
        if let Some(name) = &s.application_name {
            connection.application_name = name.clone();
        }
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
        let cfg = FileConfig::parse(GOOD).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.consumers.len(), 1);
        assert_eq!(cfg.consumers[0].kind(), "log");
        assert_eq!(cfg.consumers[0].name(), "stdout");
    }

    #[test]
    fn consumer_problems_name_their_line() {
        let check = |text: &str| FileConfig::parse(text).unwrap().validate().unwrap_err();
        let e = check(&GOOD.replace("type = \"log\"", "type = \"fax\""));
        assert!(
            e.starts_with(
                "line 12: consumer \"stdout\": unknown type \"fax\"; known types: log, mirror"
            ),
            "{e}"
        );
        let e = check(&GOOD.replace("name = \"stdout\"", "name = \"stdout\"\nlabel = \"x\""));
        assert!(
            e.starts_with("line 14: consumer \"stdout\" (log): label: unknown field `label`"),
            "{e}"
        );
        let mirror = GOOD.replace("type = \"log\"", "type = \"mirror\"");
        let e = check(&mirror);
        assert!(e.contains("consumer \"stdout\" (mirror): "), "{e}");
        assert!(e.contains("target_url_env"), "{e}");
        let e =
            check(&mirror.replace("name = \"stdout\"", "name = \"stdout\"\ntarget_url_env = 5"));
        assert!(
            e.starts_with("line 14: consumer \"stdout\" (mirror): target_url_env: "),
            "{e}"
        );
        let ok = mirror.replace(
            "name = \"stdout\"",
            "name = \"stdout\"\ntarget_url_env = \"X\"",
        );
        FileConfig::parse(&ok).unwrap().validate().unwrap();
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
        let err = toml::from_str::<FileConfig>(&inline).unwrap_err();
        let shown = toml_problem(&inline, &err);
        assert!(shown.contains("password"), "{shown}");
        assert!(!shown.contains("hunter2"), "the secret is echoed: {shown}");
        // A secret in a field of another type is not echoed either.
        let typed = GOOD.replace(
            "slot = \"lily_main\"",
            "slot = \"lily_main\"\nbatch_max_rows = \"hunter2\"",
        );
        if let Err(err) = toml::from_str::<FileConfig>(&typed) {
            let shown = toml_problem(&typed, &err);
            assert!(!shown.contains("hunter2"), "the secret is echoed: {shown}");
            assert!(shown.starts_with("line "), "{shown}");
        }
        let bad_slot = GOOD.replace("slot = \"lily_main\"", "slot = \"x'; drop\"");
        let cfg = FileConfig::parse(&bad_slot).unwrap();
        assert!(cfg.validate().unwrap_err().contains("slot"));
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
