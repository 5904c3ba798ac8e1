//! The mirror as a registered consumer.

use lily_cdc::Subscription;
use lily_connector::consumer::Running;
use lily_connector::{ConsumerConnector, ConsumerContext, Health};
use lily_pg::SecretSource;
use serde::Deserialize;

/// Settings of a `mirror` consumer.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// Name of an environment variable holding the target's connection string (a
    /// `postgres://` URL or `key=value` pairs, as libpq takes them; TLS with `sslmode`).
    pub target_url_env: String,
}

impl MirrorConfig {
    fn url(&self) -> Result<String, String> {
        SecretSource::Env(self.target_url_env.clone())
            .resolve()
            .map(|s| s.expose().to_string())
            .map_err(|e| format!("target_url_env: {e}"))
    }
}

/// `type = "mirror"`: applies every change to another PostgreSQL database with the same tables.
pub struct MirrorConsumer;

impl ConsumerConnector for MirrorConsumer {
    const TYPE: &'static str = "mirror";
    const DESCRIPTION: &'static str =
        "applies every change to another PostgreSQL database with the same tables, in commit order";
    type Config = MirrorConfig;

    fn validate(config: &MirrorConfig) -> Result<(), String> {
        if config.target_url_env.is_empty() {
            return Err("target_url_env is empty".into());
        }
        Ok(())
    }

    fn start(
        config: MirrorConfig,
        _: ConsumerContext<'_>,
        sub: Subscription,
    ) -> Result<Running, String> {
        let url = config.url()?;
        Ok(Box::pin(async move {
            crate::run(&url, sub).await.map_err(|e| e.to_string())
        }))
    }

    /// Connects to the target and reads its catalog; nothing is written.
    async fn healthcheck(config: &MirrorConfig) -> Health {
        let url = config.url()?;
        let mirror = crate::Mirror::connect(&url)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!("connected to {}", mirror.target()))
    }
}
