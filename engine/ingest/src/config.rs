//! The `[ingest]` section of the engine's config file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The ingest API. Without this section the binary serves only /healthz, /readyz and /metrics.
///
/// Keys other than the settings below are inbound hooks, `[[ingest.<type>]]` with a type of
/// the engine's registry (`monte_carlo`, `okta`, ...): [`IngestConfig::validate`] refuses any
/// other key, as `deny_unknown_fields` would (which serde cannot combine with the flattened
/// hook tables).
#[derive(Debug, Deserialize)]
pub struct IngestConfig {
    /// Largest request body accepted, in bytes; bigger ones get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Connections to the metastore for near-real-time writes.
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    /// Accept OIDC access tokens from this issuer (besides API keys).
    #[serde(default)]
    pub oidc: Option<lily_auth::OidcConfig>,
    /// Directory where uploaded bulk-load files (`POST /v1/tenants/{tenant}/loads`) wait and
    /// load; files of unfinished loads left there resume at the next start. One per process,
    /// on a disk with room for `max_queued_loads` uploads. Without it the load routes answer
    /// 404 `not_enabled`.
    #[serde(default)]
    pub load_spool_dir: Option<PathBuf>,
    /// Largest bulk-load upload, in bytes (413 beyond). Not bounded by `max_body_bytes`: the
    /// body goes to disk, not memory.
    #[serde(default = "default_max_load")]
    pub max_load_bytes: u64,
    /// Seconds an upload may send nothing before it is dropped with 408, freeing its place in
    /// the queue.
    #[serde(default = "default_upload_idle")]
    pub load_upload_idle_secs: u64,
    /// Bulk loads running at once, each on a connection of its own (outside `pool_size`).
    #[serde(default = "default_concurrent_loads")]
    pub max_concurrent_loads: usize,
    /// Accepted loads waiting to run (uploads in progress included) beyond which an upload gets
    /// 429 with Retry-After.
    #[serde(default = "default_queued_loads")]
    pub max_queued_loads: usize,
    /// Accepted loads of one tenant waiting at once (uploads in progress included) beyond which
    /// that tenant's uploads get 429, so one tenant cannot take the whole queue.
    #[serde(default = "default_queued_loads_per_tenant")]
    pub max_queued_loads_per_tenant: usize,
    /// Seconds a running load keeps its slot while another tenant's load waits; then it
    /// yields at its next chunk and resumes at its next turn. Tenants take turns.
    #[serde(default = "default_load_time_slice_secs")]
    pub load_time_slice_secs: u64,
    /// Slowest average upload rate, in bytes per second, once an upload has run for
    /// `load_upload_idle_secs` (408 below it). 0 turns the check off.
    #[serde(default = "default_load_upload_min_bytes_per_sec")]
    pub load_upload_min_bytes_per_sec: u64,
    /// Longest a request waits for a metastore connection, in milliseconds (503 beyond).
    #[serde(default = "default_pool_wait_ms")]
    pub pool_wait_ms: u64,
    /// `statement_timeout` of each request's transaction, in milliseconds.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// `lock_timeout` of each request's transaction, in milliseconds: a write that waits this
    /// long for a lock is answered 503 instead of holding its connection.
    #[serde(default = "default_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
    /// Longest a JSON or webhook request may take, end to end, in seconds (503 beyond). Load
    /// uploads are bounded by `load_upload_idle_secs` and `max_load_bytes` instead.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// The inbound hooks by type: each an array of tables, one per tenant, whose settings the
    /// hook's connector parses.
    #[serde(flatten)]
    pub hooks: BTreeMap<String, toml::Value>,
}

fn default_queued_loads_per_tenant() -> usize {
    4
}

fn default_load_time_slice_secs() -> u64 {
    30
}

fn default_load_upload_min_bytes_per_sec() -> u64 {
    16 << 10
}

fn default_pool_wait_ms() -> u64 {
    2_000
}

fn default_statement_timeout_ms() -> u64 {
    15_000
}

fn default_lock_timeout_ms() -> u64 {
    3_000
}

fn default_request_timeout_secs() -> u64 {
    30
}

/// The bounds on each ingest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Waiting for a pooled connection.
    pub pool_wait: Duration,
    /// `statement_timeout` in the request's transaction.
    pub statement_timeout: Duration,
    /// `lock_timeout` in the request's transaction.
    pub lock_timeout: Duration,
    /// The whole request (JSON and webhook routes).
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pool_wait: Duration::from_millis(default_pool_wait_ms()),
            statement_timeout: Duration::from_millis(default_statement_timeout_ms()),
            lock_timeout: Duration::from_millis(default_lock_timeout_ms()),
            request_timeout: Duration::from_secs(default_request_timeout_secs()),
        }
    }
}

fn default_max_body() -> usize {
    4 * 1024 * 1024
}

fn default_pool() -> usize {
    8
}

fn default_max_load() -> u64 {
    16 << 30
}

fn default_upload_idle() -> u64 {
    60
}

fn default_concurrent_loads() -> usize {
    1
}

fn default_queued_loads() -> usize {
    16
}

impl IngestConfig {
    /// Checks the values before anything is built; `hook_types` are the inbound hook types
    /// the engine knows (its registry's).
    pub fn validate(&self, hook_types: &[&str]) -> Result<(), String> {
        for (key, value) in &self.hooks {
            if !hook_types.contains(&key.as_str()) {
                return Err(format!(
                    "ingest: unknown key `{key}`; inbound hook types are {}",
                    hook_types.join(", ")
                ));
            }
            let tables = value
                .as_array()
                .is_some_and(|a| a.iter().all(toml::Value::is_table));
            if !tables {
                return Err(format!(
                    "ingest.{key}: a hook is a table, one per tenant: write `[[ingest.{key}]]`"
                ));
            }
        }
        if self.max_body_bytes < 1024 {
            return Err("ingest.max_body_bytes must be at least 1024".into());
        }
        if self.pool_size == 0 || self.pool_size > 256 {
            return Err("ingest.pool_size must be between 1 and 256".into());
        }
        if self.max_load_bytes < 1024 || self.max_load_bytes > 1 << 40 {
            return Err("ingest.max_load_bytes must be between 1024 and 1 TiB".into());
        }
        if self.load_upload_idle_secs == 0 || self.load_upload_idle_secs > 3600 {
            return Err("ingest.load_upload_idle_secs must be between 1 and 3600".into());
        }
        if self.max_concurrent_loads == 0 || self.max_concurrent_loads > 32 {
            return Err("ingest.max_concurrent_loads must be between 1 and 32".into());
        }
        if self.max_queued_loads == 0 || self.max_queued_loads > 1024 {
            return Err("ingest.max_queued_loads must be between 1 and 1024".into());
        }
        if !(1..=1024).contains(&self.max_queued_loads_per_tenant) {
            return Err("ingest.max_queued_loads_per_tenant must be between 1 and 1024".into());
        }
        if !(1..=86_400).contains(&self.load_time_slice_secs) {
            return Err("ingest.load_time_slice_secs must be between 1 and 86400".into());
        }
        if !(10..=60_000).contains(&self.pool_wait_ms) {
            return Err("ingest.pool_wait_ms must be between 10 and 60000".into());
        }
        if !(100..=3_600_000).contains(&self.statement_timeout_ms) {
            return Err("ingest.statement_timeout_ms must be between 100 and 3600000".into());
        }
        if !(10..=3_600_000).contains(&self.lock_timeout_ms) {
            return Err("ingest.lock_timeout_ms must be between 10 and 3600000".into());
        }
        if !(1..=3600).contains(&self.request_timeout_secs) {
            return Err("ingest.request_timeout_secs must be between 1 and 3600".into());
        }
        if self
            .load_spool_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err("ingest.load_spool_dir must not be empty".into());
        }
        Ok(())
    }

    /// The bounds on each request.
    pub fn limits(&self) -> Limits {
        Limits {
            pool_wait: Duration::from_millis(self.pool_wait_ms),
            statement_timeout: Duration::from_millis(self.statement_timeout_ms),
            lock_timeout: Duration::from_millis(self.lock_timeout_ms),
            request_timeout: Duration::from_secs(self.request_timeout_secs),
        }
    }

    /// The bulk-load settings, when loads are enabled (`load_spool_dir` set).
    pub fn loads(&self) -> Option<crate::LoadsSettings> {
        let dir = self.load_spool_dir.as_ref()?;
        let mut settings = crate::LoadsSettings::new(dir);
        settings.max_load_bytes = self.max_load_bytes;
        settings.upload_idle = std::time::Duration::from_secs(self.load_upload_idle_secs);
        settings.max_concurrent = self.max_concurrent_loads;
        settings.max_queued = self.max_queued_loads;
        // A tenant's share cannot exceed the whole queue.
        settings.max_queued_per_tenant =
            self.max_queued_loads_per_tenant.min(self.max_queued_loads);
        settings.time_slice = Duration::from_secs(self.load_time_slice_secs);
        settings.upload_min_rate = self.load_upload_min_bytes_per_sec;
        Some(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOOKS: &[&str] = &["monte_carlo", "okta"];

    #[test]
    fn keys_that_are_no_setting_must_be_hooks() {
        let parse = |text: &str| toml::from_str::<IngestConfig>(text).unwrap();
        let typo = parse("load_spool = \"x\"").validate(HOOKS).unwrap_err();
        assert_eq!(
            typo,
            "ingest: unknown key `load_spool`; inbound hook types are monte_carlo, okta"
        );
        let hooks = parse("[[okta]]\ntenant_id = \"a\"\n[[okta]]\ntenant_id = \"b\"");
        hooks.validate(HOOKS).unwrap();
        assert_eq!(hooks.hooks["okta"].as_array().unwrap().len(), 2);
        let not_tables = parse("okta = \"a\"").validate(HOOKS).unwrap_err();
        assert!(not_tables.contains("[[ingest.okta]]"), "{not_tables}");
        // The settings keep their types through the flattening.
        let typed = parse("max_body_bytes = 2048\npool_size = 3");
        assert_eq!((typed.max_body_bytes, typed.pool_size), (2048, 3));
        assert!(toml::from_str::<IngestConfig>("pool_size = \"three\"").is_err());
    }

    #[test]
    fn loads_are_off_by_default_and_validated() {
        let cfg: IngestConfig = toml::from_str("").unwrap();
        cfg.validate(HOOKS).unwrap();
        assert!(cfg.loads().is_none());
        let cfg: IngestConfig = toml::from_str(
            "load_spool_dir = \"/var/spool/lily\"\nmax_load_bytes = 1048576\nmax_concurrent_loads = 2\nmax_queued_loads = 4\nload_upload_idle_secs = 5",
        )
        .unwrap();
        cfg.validate(HOOKS).unwrap();
        let loads = cfg.loads().unwrap();
        assert_eq!(loads.spool_dir, PathBuf::from("/var/spool/lily"));
        assert_eq!(
            (loads.max_load_bytes, loads.max_concurrent, loads.max_queued),
            (1 << 20, 2, 4)
        );
        assert_eq!(loads.upload_idle, std::time::Duration::from_secs(5));
        for bad in [
            "max_load_bytes = 10",
            "max_concurrent_loads = 0",
            "max_concurrent_loads = 33",
            "max_queued_loads = 0",
            "load_upload_idle_secs = 0",
            "load_upload_idle_secs = 3601",
            "load_spool_dir = \"\"",
        ] {
            let cfg: IngestConfig = toml::from_str(bad).unwrap();
            assert!(cfg.validate(HOOKS).is_err(), "{bad}");
        }
        let defaults: IngestConfig = toml::from_str("load_spool_dir = \"s\"").unwrap();
        let loads = defaults.loads().unwrap();
        assert_eq!(
            (loads.max_load_bytes, loads.max_concurrent, loads.max_queued),
            (16 << 30, 1, 16)
        );
        assert_eq!(loads.upload_idle, std::time::Duration::from_secs(60));
    }
}
