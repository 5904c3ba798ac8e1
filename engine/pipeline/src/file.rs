//! Pipeline files: one TOML file per pipeline, naming its source tables, its SQL transform and
//! its sinks. Every problem is reported with the file and line it comes from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use lily_delivery::DeliverySettings;
use serde::Deserialize;
use toml::Spanned;

/// One pipeline, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Name used in logs, metrics, idempotency keys, the ledger and dead letters
    /// (a-z, 0-9, `-`, `_`; at most 63 characters). Default: the file name without `.toml`.
    pub name: Option<Spanned<String>>,
    /// What the pipeline is for, one line.
    pub description: Option<String>,
    /// The SQL transform: a `.sql` file, relative to this file.
    pub transform: Spanned<String>,
    /// Tables whose changes the transform reads.
    #[serde(rename = "source")]
    pub sources: Vec<SourceDecl>,
    /// Where the transform's output rows go.
    #[serde(rename = "sink")]
    pub sinks: Vec<SinkDecl>,
}

/// A source table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDecl {
    /// `schema.table` in the metastore; SQL sees its changes as a table named `table`.
    pub table: Spanned<String>,
    /// A row filter (a SQL boolean expression over the table's columns). It is applied before
    /// the transform and also added to the publication where PostgreSQL allows it, so rows
    /// that no pipeline wants are not decoded at all.
    pub filter: Option<Spanned<String>>,
}

/// A sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkDecl {
    /// Name, unique in the pipeline (a-z, 0-9, `-`, `_`).
    pub name: Spanned<String>,
    /// Connector type, one of the registry's sinks (`lily connectors` lists them).
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// Output column whose value orders delivery: rows with equal values are delivered one at
    /// a time, in commit order. Without it rows may be delivered in any order.
    pub key: Option<Spanned<String>>,
    /// Output columns to send, in this order; default every column not starting with `_`.
    pub columns: Option<Spanned<Vec<String>>>,
    /// Connector settings (see `lily connectors` or the connector settings reference). Keys
    /// keep their position, so a problem with one is reported at its own line.
    #[serde(default)]
    pub settings: Option<Spanned<BTreeMap<Spanned<String>, toml::Value>>>,
    /// Retries, backoff, rate limit and concurrency.
    #[serde(default)]
    pub delivery: Option<Spanned<DeliverySettings>>,
}

impl SinkDecl {
    /// The settings as the connector reads them (an empty table when there are none).
    pub fn settings_value(&self) -> toml::Value {
        toml::Value::Table(
            self.settings
                .as_ref()
                .map(|s| {
                    s.get_ref()
                        .iter()
                        .map(|(k, v)| (k.get_ref().clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    /// A problem with this sink's settings, at the offending key's own line when it has one,
    /// else at `[sink.settings]`, else at `type`.
    pub(crate) fn settings_problem(
        &self,
        src: &Source<'_>,
        e: &lily_connector::SettingsError,
    ) -> Problem {
        let key_line = e.key.as_ref().and_then(|key| {
            self.settings.as_ref().and_then(|s| {
                s.get_ref()
                    .keys()
                    .find(|k| k.get_ref() == key)
                    .map(|k| src.line_of(k.span().start))
            })
        });
        let line = key_line
            .or_else(|| self.settings.as_ref().map(|s| src.line_of(s.span().start)))
            .unwrap_or_else(|| src.line_of(self.kind.span().start));
        Problem {
            file: src.path.to_path_buf(),
            line: Some(line),
            message: format!(
                "sink {:?} ({}): {e}",
                self.name.get_ref(),
                self.kind.get_ref()
            ),
        }
    }
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// A file's text, to turn byte offsets into lines.
pub(crate) struct Source<'a> {
    pub(crate) path: &'a Path,
    pub(crate) text: &'a str,
}

impl Source<'_> {
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    pub(crate) fn problem<T>(&self, at: &Spanned<T>, message: impl Into<String>) -> Problem {
        Problem {
            file: self.path.to_path_buf(),
            line: Some(self.line_of(at.span().start)),
            message: message.into(),
        }
    }

    pub(crate) fn whole(&self, message: impl Into<String>) -> Problem {
        Problem {
            file: self.path.to_path_buf(),
            line: None,
            message: message.into(),
        }
    }
}

/// Valid pipeline and sink names: they end up in idempotency keys and metric labels.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl PipelineFile {
    /// Parses a pipeline file; syntax errors and unknown keys come back with their line.
    pub fn parse(path: &Path, text: &str) -> Result<PipelineFile, Problem> {
        toml::from_str(text).map_err(|e| {
            let src = Source { path, text };
            Problem {
                file: path.to_path_buf(),
                line: e.span().map(|s| src.line_of(s.start)),
                message: e.message().to_string(),
            }
        })
    }

    /// The pipeline's name: declared, or the file stem.
    pub fn name_for(&self, path: &Path) -> String {
        match &self.name {
            Some(n) => n.get_ref().clone(),
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    /// Pure checks (no files, network or environment): names, duplicates, sink types and each
    /// sink's settings against its connector.
    pub fn validate(
        &self,
        path: &Path,
        text: &str,
        registry: &lily_connector::Registry,
    ) -> Vec<Problem> {
        let src = Source { path, text };
        let mut problems = Vec::new();
        let name = self.name_for(path);
        if !valid_name(&name) {
            let message =
                format!("pipeline name {name:?} must be 1-63 characters of a-z, 0-9, '-' and '_'");
            problems.push(match &self.name {
                Some(n) => src.problem(n, message),
                None => src.whole(message),
            });
        }
        if !self.transform.get_ref().ends_with(".sql") {
            problems.push(src.problem(&self.transform, "transform must name a .sql file"));
        }
        if self.sources.is_empty() {
            problems.push(src.whole("a pipeline needs at least one [[source]]"));
        }
        let mut seen = Vec::new();
        for s in &self.sources {
            let t = s.table.get_ref();
            match t.split_once('.') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains('.') => {
                    if seen.contains(&b.to_string()) {
                        problems.push(src.problem(
                            &s.table,
                            format!("two sources are named {b:?}; SQL could not tell them apart"),
                        ));
                    }
                    seen.push(b.to_string());
                }
                _ => problems.push(src.problem(
                    &s.table,
                    format!("source table {t:?} must be written schema.table"),
                )),
            }
            if let Some(f) = &s.filter {
                if f.get_ref().trim().is_empty() {
                    problems.push(src.problem(f, "filter is empty"));
                }
            }
        }
        if self.sinks.is_empty() {
            problems.push(src.whole("a pipeline needs at least one [[sink]]"));
        }
        let mut names = Vec::new();
        for sink in &self.sinks {
            let n = sink.name.get_ref();
            if !valid_name(n) {
                problems.push(src.problem(
                    &sink.name,
                    format!("sink name {n:?} must be 1-63 characters of a-z, 0-9, '-' and '_'"),
                ));
            }
            if names.contains(n) {
                problems.push(src.problem(&sink.name, format!("sink name {n:?} is used twice")));
            }
            names.push(n.clone());
            let kind = sink.kind.get_ref();
            match registry.sink(kind) {
                Some(entry) => {
                    if let Err(e) = entry.check(&sink.settings_value()) {
                        problems.push(sink.settings_problem(&src, &e));
                    }
                }
                None => problems.push(src.problem(
                    &sink.kind,
                    format!(
                        "unknown sink type {kind:?}; known types: {}",
                        registry.sink_types().join(", ")
                    ),
                )),
            }
            if let Some(d) = &sink.delivery {
                if let Err(e) = d.get_ref().validate() {
                    problems.push(src.problem(d, format!("[sink.delivery]: {e}")));
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "pii-webhook"
transform = "pii.sql"

[[source]]
table = "meta.classifications"
filter = "tag = 'PII'"

[[sink]]
name = "hook"
type = "webhook"
key = "asset_guid"
[sink.settings]
url = "http://127.0.0.1:1/"
[sink.delivery]
max_attempts = 3
"#;

    /// Settings of the test registry's `webhook`.
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct HookSettings {
        /// Where to send.
        url: String,
        /// Attempt timeout.
        #[serde(default)]
        timeout_ms: u64,
    }

    struct Hook;

    impl lily_connector::SinkConnector for Hook {
        const TYPE: &'static str = "webhook";
        const DESCRIPTION: &'static str = "test";
        type Config = HookSettings;
        fn validate(c: &HookSettings) -> Result<(), String> {
            if c.url.starts_with("http") {
                Ok(())
            } else {
                Err("url must be http(s)".into())
            }
        }
        async fn build(
            _: HookSettings,
            _: lily_connector::SinkContext<'_>,
        ) -> Result<std::sync::Arc<dyn lily_delivery::Sink>, String> {
            Err("not in unit tests".into())
        }
        async fn healthcheck(
            _: &HookSettings,
            _: lily_connector::SinkContext<'_>,
        ) -> lily_connector::Health {
            Ok("ok".into())
        }
    }

    fn registry() -> lily_connector::Registry {
        lily_connector::Registry {
            sinks: vec![lily_connector::sink::<Hook>()],
            consumers: Vec::new(),
            hooks: Vec::new(),
        }
    }

    #[test]
    fn parses_and_validates() {
        let p = Path::new("p.toml");
        let f = PipelineFile::parse(p, GOOD).unwrap();
        assert!(f.validate(p, GOOD, &registry()).is_empty());
        assert_eq!(f.name_for(p), "pii-webhook");
        assert_eq!(
            f.sinks[0].delivery.as_ref().unwrap().get_ref().max_attempts,
            3
        );
    }

    #[test]
    fn unknown_key_has_a_line() {
        let text = GOOD.replace("key = \"asset_guid\"", "kee = \"asset_guid\"");
        let e = PipelineFile::parse(Path::new("p.toml"), &text).unwrap_err();
        assert_eq!(e.line, Some(12), "{e}");
        assert!(e.message.contains("unknown field `kee`"), "{e}");
        let text = GOOD.replace("max_attempts = 3", "max_attempts = 3\nretries = 4");
        let e = PipelineFile::parse(Path::new("p.toml"), &text).unwrap_err();
        assert!(e.message.contains("unknown field `retries`"), "{e}");
        assert_eq!(e.line, Some(17), "{e}");
    }

    #[test]
    fn bad_values_are_named_with_lines() {
        let text = GOOD
            .replace("type = \"webhook\"", "type = \"carrier-pigeon\"")
            .replace("meta.classifications", "classifications")
            .replace("max_attempts = 3", "max_attempts = 0");
        let p = Path::new("p.toml");
        let f = PipelineFile::parse(p, &text).unwrap();
        let problems: Vec<String> = f
            .validate(p, &text, &registry())
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert!(
            problems
                .iter()
                .any(|m| m.starts_with("p.toml:6: source table")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|m| m.starts_with("p.toml:11: unknown sink type \"carrier-pigeon\"")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|m| m.contains("max_attempts")),
            "{problems:?}"
        );
    }

    #[test]
    fn settings_problems_point_at_the_key() {
        let p = Path::new("p.toml");
        let check = |text: &str| -> Vec<String> {
            let f = PipelineFile::parse(p, text).unwrap();
            f.validate(p, text, &registry())
                .iter()
                .map(|p| p.to_string())
                .collect()
        };
        // A misspelt key: its own line (15), not the `[sink.settings]` header (13).
        let typo = GOOD.replace("url = ", "timeout_ms = 5\nurll = ");
        let problems = check(&typo);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .starts_with("p.toml:15: sink \"hook\" (webhook): urll: unknown field `urll`"),
            "{problems:?}"
        );
        // A value of the wrong type: that key's line.
        let wrong = GOOD.replace("url = ", "timeout_ms = \"soon\"\nurl = ");
        let problems = check(&wrong);
        assert!(
            problems[0].starts_with("p.toml:14: sink \"hook\" (webhook): timeout_ms: "),
            "{problems:?}"
        );
        // A missing key or the connector's own validation: the header's line.
        let problems = check(&GOOD.replace("url = \"http://127.0.0.1:1/\"", "timeout_ms = 1"));
        assert!(problems[0].starts_with("p.toml:13: "), "{problems:?}");
        assert!(problems[0].contains("missing field `url`"), "{problems:?}");
        let problems = check(&GOOD.replace("http://127.0.0.1:1/", "ftp://x"));
        assert!(problems[0].starts_with("p.toml:13: "), "{problems:?}");
        assert!(problems[0].contains("url must be http(s)"), "{problems:?}");
    }
}
