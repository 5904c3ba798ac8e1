//! Inbound hooks: senders that push to the ingest API (`[[ingest.<type>]]`, one table per
//! tenant).

use std::marker::PhantomData;

use lily_inbound::HookKind;
use serde::de::DeserializeOwned;

use crate::settings::{self, SettingDoc};

/// An inbound hook connector: implement this in the connector's folder and add one line to
/// the registry. Its routes, SQL and payload parsing are its [`lily_inbound::InboundHook`].
pub trait HookConnector: Send + Sync + 'static {
    /// `[[ingest.<TYPE>]]` in the engine's config.
    const TYPE: &'static str;
    /// One line for `lily connectors` and the reference.
    const DESCRIPTION: &'static str;
    /// One tenant's table: `deny_unknown_fields`, a doc comment per field.
    type Config: DeserializeOwned + schemars::JsonSchema + Send + Sync;

    /// Checks one tenant's settings as written: no environment, no files.
    fn validate(config: &Self::Config) -> Result<(), String>;

    /// The sender with its tenants' hooks: reads their secrets.
    fn build(configs: Vec<Self::Config>) -> Result<HookKind, String>;
}

/// A registered hook connector, with its tables still as TOML.
pub trait HookEntry: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn settings(&self) -> Vec<SettingDoc>;
    /// Parses and validates every tenant's table (pure). `tables` is the value of
    /// `ingest.<type>`; `None` when no tenant configured the hook.
    fn check(&self, tables: Option<&toml::Value>) -> Result<(), String>;
    /// The sender with its configured tenants (none is fine: its routes are served all the
    /// same and answer a tenant without the hook as they answer a caller without credentials).
    fn build(&self, tables: Option<&toml::Value>) -> Result<HookKind, String>;
}

struct Entry<C>(PhantomData<fn() -> C>);

/// The registry entry of hook connector `C`.
pub fn hook<C: HookConnector>() -> Box<dyn HookEntry> {
    Box::new(Entry::<C>(PhantomData))
}

impl<C: HookConnector> Entry<C> {
    /// Every tenant's settings; an error names the table (`ingest.okta[1]`) and the key.
    fn parsed(tables: Option<&toml::Value>) -> Result<Vec<C::Config>, String> {
        let Some(tables) = tables else {
            return Ok(Vec::new());
        };
        let Some(tables) = tables.as_array() else {
            return Err(format!(
                "ingest.{}: a hook is a table, one per tenant: write `[[ingest.{}]]`",
                C::TYPE,
                C::TYPE
            ));
        };
        tables
            .iter()
            .enumerate()
            .map(|(i, table)| {
                let at = |e: String| format!("ingest.{}[{i}]: {e}", C::TYPE);
                let config: C::Config = settings::parse(table).map_err(|e| at(e.to_string()))?;
                C::validate(&config).map_err(at)?;
                Ok(config)
            })
            .collect()
    }
}

impl<C: HookConnector> HookEntry for Entry<C> {
    fn type_name(&self) -> &'static str {
        C::TYPE
    }
    fn description(&self) -> &'static str {
        C::DESCRIPTION
    }
    fn settings(&self) -> Vec<SettingDoc> {
        settings::docs::<C::Config>()
    }
    fn check(&self, tables: Option<&toml::Value>) -> Result<(), String> {
        Self::parsed(tables).map(|_| ())
    }
    fn build(&self, tables: Option<&toml::Value>) -> Result<HookKind, String> {
        C::build(Self::parsed(tables)?)
    }
}
