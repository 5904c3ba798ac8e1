//! What a connector is, to the engine.
//!
//! A connector declares its type name, a settings struct (`deny_unknown_fields`, a doc comment
//! per field, `JsonSchema` so the docs and `lily connectors` are generated from those comments),
//! a pure `validate`, an async `build` and a `healthcheck` that `lily check` runs. The engine
//! holds every connector in one [`Registry`], built by the binary from one list; nothing else
//! names a connector.
//!
//! - [`sink`]: output sinks of pipelines ([`SinkConnector`]).
//! - [`consumer`]: consumers of the raw change stream ([`ConsumerConnector`]).
//! - [`hook`]: inbound hooks the ingest API serves ([`HookConnector`]).
//! - [`settings`]: typed settings from TOML with the offending key named, and their docs.

pub mod consumer;
pub mod hook;
pub mod settings;
pub mod sink;

pub use consumer::{consumer, ConsumerConnector, ConsumerContext, ConsumerEntry};
pub use hook::{hook, HookConnector, HookEntry};
pub use settings::{SettingDoc, SettingsError};
pub use sink::{sink, SinkConnector, SinkContext, SinkEntry};

/// The result of a healthcheck: what was checked, in one line (`reachable`, `can write
/// meta.classifications`, ...), or why it failed.
pub type Health = Result<String, String>;

/// Every connector the engine knows, each registered once.
pub struct Registry {
    pub sinks: Vec<Box<dyn SinkEntry>>,
    pub consumers: Vec<Box<dyn ConsumerEntry>>,
    pub hooks: Vec<Box<dyn HookEntry>>,
}

impl Registry {
    pub fn sink(&self, type_name: &str) -> Option<&dyn SinkEntry> {
        self.sinks
            .iter()
            .find(|s| s.type_name() == type_name)
            .map(|s| s.as_ref())
    }

    pub fn consumer(&self, type_name: &str) -> Option<&dyn ConsumerEntry> {
        self.consumers
            .iter()
            .find(|s| s.type_name() == type_name)
            .map(|s| s.as_ref())
    }

    pub fn hook(&self, type_name: &str) -> Option<&dyn HookEntry> {
        self.hooks
            .iter()
            .find(|h| h.type_name() == type_name)
            .map(|h| h.as_ref())
    }

    pub fn hook_types(&self) -> Vec<&'static str> {
        self.hooks.iter().map(|h| h.type_name()).collect()
    }

    pub fn sink_types(&self) -> Vec<&'static str> {
        self.sinks.iter().map(|s| s.type_name()).collect()
    }

    pub fn consumer_types(&self) -> Vec<&'static str> {
        self.consumers.iter().map(|s| s.type_name()).collect()
    }

    /// The settings reference in Markdown: one section per connector, one row per setting,
    /// from the settings structs' doc comments. `docs/connectors-reference.md` is this text.
    pub fn reference_markdown(&self) -> String {
        let mut out = String::from(
            "# Connector settings reference\n\n\
             Generated from the settings structs' doc comments by `lily connectors --markdown`; \
             a test fails when this file is stale.\n",
        );
        let section = |out: &mut String, title: &str, docs: &[SettingDoc]| {
            out.push_str(&format!("\n### {title}\n\n"));
            if docs.is_empty() {
                out.push_str("No settings.\n");
                return;
            }
            out.push_str("| setting | type | required | default | meaning |\n");
            out.push_str("| --- | --- | --- | --- | --- |\n");
            for d in docs {
                out.push_str(&format!(
                    "| `{}` | {} | {} | {} | {} |\n",
                    d.name,
                    d.kind,
                    if d.required { "yes" } else { "no" },
                    d.default
                        .as_deref()
                        .map(|v| format!("`{v}`"))
                        .unwrap_or_default(),
                    d.doc.replace('\n', " ").replace('|', "\\|")
                ));
            }
        };
        out.push_str("\n## Sinks (`[[sink]] type = ...` in pipeline files, `[sink.settings]`)\n");
        for s in &self.sinks {
            section(
                &mut out,
                &format!("`{}`: {}", s.type_name(), s.description()),
                &s.settings(),
            );
        }
        out.push_str("\n## Consumers (`[[consumer]] type = ...` in the engine's config)\n");
        for c in &self.consumers {
            section(
                &mut out,
                &format!("`{}`: {}", c.type_name(), c.description()),
                &c.settings(),
            );
        }
        out.push_str("\n## Inbound hooks (`[[ingest.<type>]]` in the engine's config)\n");
        for h in &self.hooks {
            section(
                &mut out,
                &format!("`{}`: {}", h.type_name(), h.description()),
                &h.settings(),
            );
        }
        out
    }
}
