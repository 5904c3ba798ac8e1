//! Consumers: read every change batch of the stream (the `log` printer, the `mirror`).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use async_trait::async_trait;
use lily_cdc::Subscription;
use serde::de::DeserializeOwned;

use crate::settings::{self, SettingDoc, SettingsError};
use crate::Health;

/// A running consumer: ends when its subscription ends, or with an error.
pub type Running = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// What a consumer is started with besides its settings.
#[derive(Clone, Copy)]
pub struct ConsumerContext<'a> {
    /// The consumer's name (logs, metrics, its acknowledgement slot).
    pub name: &'a str,
}

/// A consumer connector: implement this in the connector's folder and add one line to the
/// registry.
pub trait ConsumerConnector: Send + Sync + 'static {
    /// `type = "..."` in a `[[consumer]]` table.
    const TYPE: &'static str;
    /// One line for `lily connectors` and the reference.
    const DESCRIPTION: &'static str;
    /// The rest of the `[[consumer]]` table (besides `type` and `name`).
    type Config: DeserializeOwned + schemars::JsonSchema + Send + Sync;

    /// Checks the settings as written: no network, no environment, no files.
    fn validate(config: &Self::Config) -> Result<(), String>;

    /// Resolves what the settings name (environment, files) and returns the consumer, ready to
    /// run on `sub`. Errors here stop the engine before capture starts.
    fn start(
        config: Self::Config,
        cx: ConsumerContext<'_>,
        sub: Subscription,
    ) -> Result<Running, String>;

    /// For `lily check`.
    fn healthcheck(config: &Self::Config) -> impl Future<Output = Health> + Send;
}

/// A registered consumer connector, with its settings still as TOML.
#[async_trait]
pub trait ConsumerEntry: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn settings(&self) -> Vec<SettingDoc>;
    fn check(&self, settings: &toml::Value) -> Result<(), SettingsError>;
    fn start(
        &self,
        settings: &toml::Value,
        cx: ConsumerContext<'_>,
        sub: Subscription,
    ) -> Result<Running, SettingsError>;
    async fn healthcheck(&self, settings: &toml::Value) -> Health;
}

struct Entry<C>(PhantomData<fn() -> C>);

/// The registry entry of consumer connector `C`.
pub fn consumer<C: ConsumerConnector>() -> Box<dyn ConsumerEntry> {
    Box::new(Entry::<C>(PhantomData))
}

impl<C: ConsumerConnector> Entry<C> {
    fn parsed(settings: &toml::Value) -> Result<C::Config, SettingsError> {
        let config: C::Config = settings::parse(settings)?;
        C::validate(&config).map_err(SettingsError::whole)?;
        Ok(config)
    }
}

#[async_trait]
impl<C: ConsumerConnector> ConsumerEntry for Entry<C> {
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
    fn start(
        &self,
        settings: &toml::Value,
        cx: ConsumerContext<'_>,
        sub: Subscription,
    ) -> Result<Running, SettingsError> {
        let config = Self::parsed(settings)?;
        C::start(config, cx, sub).map_err(SettingsError::whole)
    }
    async fn healthcheck(&self, settings: &toml::Value) -> Health {
        let config = Self::parsed(settings).map_err(|e| e.to_string())?;
        C::healthcheck(&config).await
    }
}
