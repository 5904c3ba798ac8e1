//! `log` as a registered sink and as a registered consumer.

use std::sync::Arc;

use lily_cdc::Subscription;
use lily_connector::consumer::Running;
use lily_connector::{ConsumerConnector, ConsumerContext, Health, SinkConnector, SinkContext};
use lily_delivery::Sink;
use serde::Deserialize;

use crate::{LogSink, LogSinkConfig};

/// `type = "log"` sink: each output row as a JSON line on stdout.
pub struct LogSinkConnector;

impl SinkConnector for LogSinkConnector {
    const TYPE: &'static str = "log";
    const DESCRIPTION: &'static str = "each output row as a JSON line on stdout";
    type Config = LogSinkConfig;

    fn validate(_: &LogSinkConfig) -> Result<(), String> {
        Ok(())
    }

    async fn build(config: LogSinkConfig, cx: SinkContext<'_>) -> Result<Arc<dyn Sink>, String> {
        Ok(Arc::new(LogSink::stdout(
            config.label.as_deref().unwrap_or(cx.name),
        )))
    }

    async fn healthcheck(_: &LogSinkConfig, _: SinkContext<'_>) -> Health {
        Ok("writes to stdout".into())
    }
}

/// Settings of a `log` consumer: none besides its name.
#[derive(Debug, Default, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConsumerConfig {}

/// `type = "log"` consumer: every change of the stream as a JSON line on stdout.
pub struct LogConsumer;

impl ConsumerConnector for LogConsumer {
    const TYPE: &'static str = "log";
    const DESCRIPTION: &'static str = "every change of the stream as a JSON line on stdout";
    type Config = LogConsumerConfig;

    fn validate(_: &LogConsumerConfig) -> Result<(), String> {
        Ok(())
    }

    fn start(
        _: LogConsumerConfig,
        _: ConsumerContext<'_>,
        sub: Subscription,
    ) -> Result<Running, String> {
        Ok(Box::pin(async move {
            crate::run(sub, std::io::stdout())
                .await
                .map_err(|e| e.to_string())
        }))
    }

    async fn healthcheck(_: &LogConsumerConfig) -> Health {
        Ok("writes to stdout".into())
    }
}
