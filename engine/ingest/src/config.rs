//! The `[ingest]` section of the engine's config file.

use std::path::PathBuf;

use serde::Deserialize;

/// The ingest API. Without this section the binary serves only /healthz, /readyz and /metrics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Monte Carlo webhooks, one per tenant, at `/v1/tenants/{tenant}/webhooks/monte-carlo`.
    #[serde(default)]
    pub monte_carlo: Vec<lily_montecarlo::MonteCarloHookConfig>,
    /// Okta event hooks, one per tenant, at `/v1/tenants/{tenant}/webhooks/okta`.
    #[serde(default)]
    pub okta: Vec<lily_okta::OktaHookConfig>,
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
    /// Checks the values before anything is built.
    pub fn validate(&self) -> Result<(), String> {
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
        if self
            .load_spool_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err("ingest.load_spool_dir must not be empty".into());
        }
        Ok(())
    }

    /// The bulk-load settings, when loads are enabled (`load_spool_dir` set).
    pub fn loads(&self) -> Option<crate::LoadsSettings> {
        let dir = self.load_spool_dir.as_ref()?;
        let mut settings = crate::LoadsSettings::new(dir);
        settings.max_load_bytes = self.max_load_bytes;
        settings.upload_idle = std::time::Duration::from_secs(self.load_upload_idle_secs);
        settings.max_concurrent = self.max_concurrent_loads;
        settings.max_queued = self.max_queued_loads;
        Some(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_are_off_by_default_and_validated() {
        let cfg: IngestConfig = toml::from_str("").unwrap();
        cfg.validate().unwrap();
        assert!(cfg.loads().is_none());
        let cfg: IngestConfig = toml::from_str(
            "load_spool_dir = \"/var/spool/lily\"\nmax_load_bytes = 1048576\nmax_concurrent_loads = 2\nmax_queued_loads = 4\nload_upload_idle_secs = 5",
        )
        .unwrap();
        cfg.validate().unwrap();
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
            assert!(cfg.validate().is_err(), "{bad}");
        }
        assert!(toml::from_str::<IngestConfig>("load_spool = \"x\"").is_err());
        let defaults: IngestConfig = toml::from_str("load_spool_dir = \"s\"").unwrap();
        let loads = defaults.loads().unwrap();
        assert_eq!(
            (loads.max_load_bytes, loads.max_concurrent, loads.max_queued),
            (16 << 30, 1, 16)
        );
        assert_eq!(loads.upload_idle, std::time::Duration::from_secs(60));
    }
}
