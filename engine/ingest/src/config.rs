//! The `[ingest]` section of the engine's config file.

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
    pub monte_carlo: Vec<crate::MonteCarloHookConfig>,
    /// Okta event hooks, one per tenant, at `/v1/tenants/{tenant}/webhooks/okta`.
    #[serde(default)]
    pub okta: Vec<lily_okta::OktaHookConfig>,
}

fn default_max_body() -> usize {
    4 * 1024 * 1024
}

fn default_pool() -> usize {
    8
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
        Ok(())
    }
}
