//! The webhook sink as a registered connector.

use std::sync::Arc;
use std::time::Duration;

use lily_connector::{Health, SinkConnector, SinkContext};
use lily_delivery::Sink;

use crate::WebhookConfig;

/// `type = "webhook"`: one signed Standard Webhooks `POST` per row.
pub struct Webhook;

impl SinkConnector for Webhook {
    const TYPE: &'static str = "webhook";
    const DESCRIPTION: &'static str =
        "one signed POST per row (Standard Webhooks v1), retried on 408/425/429/5xx with Retry-After";
    type Config = WebhookConfig;

    fn validate(config: &WebhookConfig) -> Result<(), String> {
        config.validate().map_err(|e| e.to_string())
    }

    async fn build(config: WebhookConfig, _cx: SinkContext<'_>) -> Result<Arc<dyn Sink>, String> {
        Ok(Arc::new(config.build().map_err(|e| e.to_string())?))
    }

    /// The URL and signing secret resolve, and the receiver answers HTTP at all (a `HEAD`,
    /// which sends no event; any status counts: receivers often refuse `HEAD` with 405).
    async fn healthcheck(config: &WebhookConfig, _cx: SinkContext<'_>) -> Health {
        config.build().map_err(|e| e.to_string())?;
        let endpoint = config
            .endpoint(|name| std::env::var(name))
            .map_err(|e| e.to_string())?;
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|e| e.to_string())?;
        match client.head(endpoint.url().clone()).send().await {
            Ok(answer) => Ok(format!(
                "{endpoint} reachable (HEAD answered {})",
                answer.status().as_u16()
            )),
            Err(e) => Err(endpoint.scrub(&format!("{endpoint} not reachable: {e}"))),
        }
    }
}
