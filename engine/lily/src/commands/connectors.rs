//! `lily connectors`: every registered connector with its settings, from the settings structs'
//! doc comments; `--markdown` prints the reference kept in `docs/connectors-reference.md`.

pub(crate) fn run(markdown: bool) {
    let registry = lily_registry::registry();
    if markdown {
        print!("{}", registry.reference_markdown());
        return;
    }
    let print =
        |kind: &str, name: &str, description: &str, settings: &[lily_connector::SettingDoc]| {
            println!("{kind} {name}: {description}");
            for s in settings {
                let mut facts = vec![s.kind.replace("\\|", "|").replace('`', "")];
                facts.push(if s.required {
                    "required".into()
                } else {
                    "optional".into()
                });
                if let Some(d) = &s.default {
                    facts.push(format!("default {d}"));
                }
                println!("    {} ({}): {}", s.name, facts.join(", "), s.doc);
            }
        };
    for s in &registry.sinks {
        print("sink", s.type_name(), s.description(), &s.settings());
    }
    for c in &registry.consumers {
        print("consumer", c.type_name(), c.description(), &c.settings());
    }
    for h in &registry.hooks {
        print("hook", h.type_name(), h.description(), &h.settings());
    }
}
