//! Sinks: where a pipeline's output rows go.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use lily_delivery::Sink;
use serde::de::DeserializeOwned;

use crate::settings::{self, SettingDoc, SettingsError};
use crate::Health;

/// What a sink is built with besides its settings.
#[derive(Clone, Copy)]
pub struct SinkContext<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// The sink's name in the pipeline.
    pub name: &'a str,
    /// The output columns each record carries, in order.
    pub columns: &'a [String],
    /// The metastore, for sinks that write to it.
    pub metastore: &'a lily_pg::ConnectionConfig,
}

/// A sink connector: implement this in the connector's folder and add one line to the
/// registry.
pub trait SinkConnector: Send + Sync + 'static {
    /// `type = "..."` in a pipeline's `[[sink]]`.
    const TYPE: &'static str;
    /// One line for `lily connectors` and the reference.
    const DESCRIPTION: &'static str;
    /// The `[sink.settings]` table: `deny_unknown_fields`, a doc comment per field.
    type Config: DeserializeOwned + schemars::JsonSchema + Send + Sync;

    /// Checks the settings as written: no network, no environment, no files.
    fn validate(config: &Self::Config) -> Result<(), String>;

    /// Builds the sink: reads secrets, connects where it must, checks what can be checked.
    fn build(
        config: Self::Config,
        cx: SinkContext<'_>,
    ) -> impl Future<Output = Result<Arc<dyn Sink>, String>> + Send;

    /// For `lily check`: the remote is reachable, the credentials are accepted and the
    /// permissions suffice, as far as the remote's API lets us tell without side effects.
    fn healthcheck(
        config: &Self::Config,
        cx: SinkContext<'_>,
    ) -> impl Future<Output = Health> + Send;
}

/// A registered sink connector, with its settings still as TOML.
#[async_trait]
pub trait SinkEntry: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn settings(&self) -> Vec<SettingDoc>;
    /// Parses and validates the settings (pure).
    fn check(&self, settings: &toml::Value) -> Result<(), SettingsError>;
    async fn build(
        &self,
        settings: &toml::Value,
        cx: SinkContext<'_>,
    ) -> Result<Arc<dyn Sink>, SettingsError>;
    async fn healthcheck(&self, settings: &toml::Value, cx: SinkContext<'_>) -> Health;
}

struct Entry<C>(PhantomData<fn() -> C>);

/// The registry entry of sink connector `C`.
pub fn sink<C: SinkConnector>() -> Box<dyn SinkEntry> {
    Box::new(Entry::<C>(PhantomData))
}

impl<C: SinkConnector> Entry<C> {
    fn parsed(settings: &toml::Value) -> Result<C::Config, SettingsError> {
        let config: C::Config = settings::parse(settings)?;
        C::validate(&config).map_err(SettingsError::whole)?;
        Ok(config)
    }
}

#[async_trait]
impl<C: SinkConnector> SinkEntry for Entry<C> {
    fn type_name(&self) -> &'static str {
        C::TYPE
    }
    fn description(&self) -> &'static str {
        C::DESCRIPTION
    }
    fn settings(&self) -> Vec<SettingDoc> {
        settings::docs::<C::Config>()
    }
    fn check(&self, settings: &toml::Value) -> Result<(), SettingsError> {
        Self::parsed(settings).map(|_| ())
    }
    async fn build(
        &self,
        settings: &toml::Value,
        cx: SinkContext<'_>,
    ) -> Result<Arc<dyn Sink>, SettingsError> {
        let config = Self::parsed(settings)?;
        C::build(config, cx).await.map_err(SettingsError::whole)
    }
    async fn healthcheck(&self, settings: &toml::Value, cx: SinkContext<'_>) -> Health {
        let config = Self::parsed(settings).map_err(|e| e.to_string())?;
        C::healthcheck(&config, cx).await
    }
}
