//! The one list of the engine's connectors. Adding a connector is its folder under
//! `connectors/` plus one line here (and its dependency line in this crate's `Cargo.toml`).

use lily_connector::{consumer, hook, sink, Registry};

/// Every connector the engine can run.
pub fn registry() -> Registry {
    Registry {
        sinks: vec![
            sink::<lily_webhook::Webhook>(),
            sink::<lily_metastore_sink::Metastore>(),
            sink::<lily_log::LogSinkConnector>(),
        ],
        consumers: vec![
            consumer::<lily_log::LogConsumer>(),
            consumer::<lily_mirror::MirrorConsumer>(),
        ],
        hooks: vec![
            hook::<lily_montecarlo::MonteCarloConnector>(),
            hook::<lily_okta::OktaConnector>(),
        ],
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn type_names_are_unique_and_documented() {
        let r = super::registry();
        let mut sinks = r.sink_types();
        sinks.sort();
        sinks.dedup();
        assert_eq!(
            sinks.len(),
            r.sinks.len(),
            "a sink type is registered twice"
        );
        let mut consumers = r.consumer_types();
        consumers.sort();
        consumers.dedup();
        assert_eq!(
            consumers.len(),
            r.consumers.len(),
            "a consumer type is registered twice"
        );
        for s in &r.sinks {
            for d in s.settings() {
                assert!(
                    !d.doc.is_empty(),
                    "sink {} setting {} has no doc comment",
                    s.type_name(),
                    d.name
                );
            }
        }
        let mut hooks = r.hook_types();
        hooks.sort();
        hooks.dedup();
        assert_eq!(
            hooks.len(),
            r.hooks.len(),
            "a hook type is registered twice"
        );
        for h in &r.hooks {
            for d in h.settings() {
                assert!(
                    !d.doc.is_empty(),
                    "hook {} setting {} has no doc comment",
                    h.type_name(),
                    d.name
                );
            }
        }
        for c in &r.consumers {
            for d in c.settings() {
                assert!(
                    !d.doc.is_empty(),
                    "consumer {} setting {} has no doc comment",
                    c.type_name(),
                    d.name
                );
            }
        }
    }
}

/// `docs/connectors-reference.md` is the registry's generated reference, so the docs cannot drift
/// from the settings structs' doc comments. To refresh it after changing a connector's settings:
/// `LILY_UPDATE_DOCS=1 cargo test -p lily-registry` (or `lily connectors --markdown`).
#[cfg(test)]
mod docs {
    #[test]
    fn the_settings_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/connectors-reference.md");
        let generated = super::registry().reference_markdown();
        if std::env::var_os("LILY_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &generated).expect("write the reference");
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{} is stale: run `LILY_UPDATE_DOCS=1 cargo test -p lily-registry` and commit it",
            path.display()
        );
    }
}
