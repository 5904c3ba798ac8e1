//! The metastore sink as a registered connector.

use std::sync::Arc;

use lily_connector::{Health, SinkConnector, SinkContext};
use lily_delivery::Sink;

use crate::{MetastoreSink, MetastoreSinkConfig};

/// `type = "metastore"`: set-based writes of output rows into a metastore table.
pub struct Metastore;

impl SinkConnector for Metastore {
    const TYPE: &'static str = "metastore";
    const DESCRIPTION: &'static str =
        "upsert, insert or delete output rows in a metastore table, many rows per statement";
    type Config = MetastoreSinkConfig;

    fn validate(config: &MetastoreSinkConfig) -> Result<(), String> {
        config.validate().map_err(|e| e.to_string())
    }

    async fn build(
        config: MetastoreSinkConfig,
        cx: SinkContext<'_>,
    ) -> Result<Arc<dyn Sink>, String> {
        let sink = MetastoreSink::connect(cx.metastore.clone(), config)
            .await
            .map_err(|e| e.to_string())?;
        sink.check_columns(cx.columns)?;
        Ok(Arc::new(sink))
    }

    /// Connecting checks the table, its key and the role's privileges; nothing is written.
    async fn healthcheck(config: &MetastoreSinkConfig, cx: SinkContext<'_>) -> Health {
        let sink = MetastoreSink::connect(cx.metastore.clone(), config.clone())
            .await
            .map_err(|e| e.to_string())?;
        sink.check_columns(cx.columns)?;
        Ok(format!(
            "can {} rows of {} on {}",
            config.mode.as_str(),
            config.table,
            cx.metastore.target()
        ))
    }
}
