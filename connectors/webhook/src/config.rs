//! A webhook sink's settings, as written in a pipeline's config, and how they become a sink.
//!
//! Checking is split in two: [`WebhookConfig::validate`] looks only at the text (so `lily
//! check` can report every mistake without the production environment), and
//! [`WebhookConfig::build`] reads the URL and secret from the environment or a file.

use std::env::VarError;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lily_delivery::secret::{SecretError, SecretSource};
use serde::Deserialize;

use crate::endpoint::Endpoint;
use crate::signing::SigningKey;
use crate::sink::{Settings, WebhookSink};

/// The spec: "time out after 15–30 s"; the low end, so a hung receiver holds a worker briefly.
const DEFAULT_TIMEOUT_MS: u64 = 15_000;
/// Past five minutes the receiver is hung rather than slow, and its timestamp check would
/// start to bite on the next attempt's clock skew anyway; the engine's retry is the better tool.
const MAX_TIMEOUT_MS: u64 = 300_000;
/// The spec asks senders to "keep the body thin, under about 20 KB", and consumers size their
/// limits on that. A row larger than this is better sent as a reference than inline, so it is
/// dead-lettered where it can be seen, rather than rejected by some receivers and not others.
const DEFAULT_MAX_BODY_BYTES: usize = 20 * 1024;
/// A hard ceiling for operators who raise the limit: common gateways stop at about 1 MB, and
/// each in-flight record's body is held in memory.
const MAX_MAX_BODY_BYTES: usize = 1024 * 1024;

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

/// One webhook sink's table, e.g.
///
/// ```toml
/// url_env = "LILY_WEBHOOK_URL"
/// secret_env = "LILY_WEBHOOK_SECRET"
/// event_type = "metadata.column.tagged"
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The receiver's URL, written out (http or https). Give this or `url_env`, not both.
    #[serde(default)]
    pub url: Option<String>,
    /// Name of an environment variable holding the receiver's URL, for URLs that embed a
    /// token. Give this or `url`, not both.
    #[serde(default)]
    pub url_env: Option<String>,
    /// Name of an environment variable holding the signing secret, `whsec_` + base64 of a
    /// 24–64-byte key. Give this or `secret_file`, not both.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Path of a file holding the signing secret (one trailing newline is ignored). Give this
    /// or `secret_env`, not both.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The Standard Webhooks `type` of every event this sink sends, e.g.
    /// `metadata.column.tagged`: dot-separated segments of `[a-zA-Z0-9_]`.
    pub event_type: String,
    /// How long one attempt may take, from connecting to the end of the answer, in
    /// milliseconds (1 to 300000). Default 15000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest request body sent, in bytes (1 to 1048576); a record whose body is larger fails
    /// permanently and goes to the dead-letter table. Default 20480, the spec's "about 20 KB".
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

/// `Debug` shows a literal `url` as `scheme://host/path`: a token in its query or credentials
/// must not reach a log through a `{:?}` of the config.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.url.as_deref().map(|u| match Endpoint::parse(u) {
            Ok(e) => e.to_string(),
            Err(_) => "<not a valid URL>".to_string(),
        });
        f.debug_struct("WebhookConfig")
            .field("url", &url)
            .field("url_env", &self.url_env)
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("event_type", &self.event_type)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// Why a webhook sink could not be set up. Messages name settings, variables and files, never
/// the value of a secret or a URL's query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The table is wrong in itself: every problem found, one per entry.
    #[error("webhook sink config: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The URL from `url_env` is missing or unusable.
    #[error("webhook sink url: {0}")]
    Url(String),
    /// The signing secret could not be read.
    #[error("webhook sink signing secret: {0}")]
    Secret(#[from] SecretError),
    /// The signing secret was read but is not a usable `whsec_` secret.
    #[error("webhook sink signing secret from {origin} {reason}")]
    SecretFormat {
        /// Where it was read: `environment variable NAME` or `file PATH`.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be set up (TLS initialisation).
    #[error("webhook sink: cannot set up the HTTP client: {0}")]
    Client(String),
}

impl WebhookConfig {
    /// Checks the settings as written, without reading the environment or any file. Reports
    /// every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        match (&self.url, &self.url_env) {
            (Some(_), Some(_)) => problems.push("give url or url_env, not both".to_string()),
            (None, None) => problems.push("url or url_env is required".to_string()),
            (Some(url), None) => {
                if let Err(e) = Endpoint::parse(url) {
                    problems.push(format!("url: {e}"));
                }
            }
            (None, Some(name)) => {
                if let Err(e) = check_env_name(name) {
                    problems.push(format!("url_env: {e}"));
                }
            }
        }
        match self.secret_source() {
            Ok(Some(SecretSource::Env(name))) => {
                if let Err(e) = check_env_name(&name) {
                    problems.push(format!("secret_env: {e}"));
                }
            }
            Ok(Some(SecretSource::File(_))) => {}
            Ok(None) => problems.push(
                "secret_env or secret_file is required: Standard Webhooks requests are signed"
                    .to_string(),
            ),
            Err(e) => problems.push(e),
        }
        if let Err(e) = check_event_type(&self.event_type) {
            problems.push(format!("event_type: {e}"));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            problems.push(format!(
                "timeout_ms must be 1 to {MAX_TIMEOUT_MS}, not {}",
                self.timeout_ms
            ));
        }
        if !(1..=MAX_MAX_BODY_BYTES).contains(&self.max_body_bytes) {
            problems.push(format!(
                "max_body_bytes must be 1 to {MAX_MAX_BODY_BYTES}, not {}",
                self.max_body_bytes
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Validates, reads the URL and the signing secret, and sets up the sink's HTTP client.
    pub fn build(&self) -> Result<WebhookSink, ConfigError> {
        self.build_with_env(|name| std::env::var(name))
    }

    /// [`WebhookConfig::build`] with the URL variable looked up through `env`, so tests need
    /// not change the process environment (which other test threads read concurrently).
    fn build_with_env(
        &self,
        env: impl Fn(&str) -> Result<String, VarError>,
    ) -> Result<WebhookSink, ConfigError> {
        self.validate()?;
        let endpoint = self.endpoint(env)?;
        let source = self.secret_source().ok().flatten().ok_or_else(|| {
            ConfigError::Invalid(vec!["secret_env or secret_file is required".into()])
        })?;
        let secret = source.resolve()?;
        let key =
            SigningKey::from_whsec(secret.expose()).map_err(|e| ConfigError::SecretFormat {
                origin: describe(&source),
                reason: e.to_string(),
            })?;
        if !endpoint.is_https() {
            // Allowed for receivers on a private network and for tests, but worth a word: the
            // signature proves origin, it does not hide the payload.
            tracing::warn!(endpoint = %endpoint, "webhook sink sends over plain http");
        }
        WebhookSink::new(Settings {
            endpoint,
            key,
            event_type: self.event_type.clone(),
            timeout: Duration::from_millis(self.timeout_ms),
            max_body_bytes: self.max_body_bytes,
        })
    }

    fn secret_source(&self) -> Result<Option<SecretSource>, String> {
        SecretSource::from_pair(
            "secret",
            self.secret_env.as_deref(),
            self.secret_file.as_deref(),
        )
    }

    /// The receiver's URL, from the config text or the named variable. Errors name the
    /// variable, never its value.
    pub(crate) fn endpoint(
        &self,
        env: impl Fn(&str) -> Result<String, VarError>,
    ) -> Result<Endpoint, ConfigError> {
        if let Some(url) = &self.url {
            return Endpoint::parse(url).map_err(|e| ConfigError::Url(format!("url: {e}")));
        }
        let name = self
            .url_env
            .as_deref()
            .ok_or_else(|| ConfigError::Invalid(vec!["url or url_env is required".into()]))?;
        let value = match env(name) {
            Ok(v) if v.trim().is_empty() => {
                return Err(ConfigError::Url(format!(
                    "environment variable {name} is empty"
                )))
            }
            Ok(v) => v,
            Err(VarError::NotPresent) => {
                return Err(ConfigError::Url(format!(
                    "environment variable {name} is not set"
                )))
            }
            Err(VarError::NotUnicode(_)) => {
                return Err(ConfigError::Url(format!(
                    "environment variable {name} is not valid UTF-8"
                )))
            }
        };
        Endpoint::parse(value.trim())
            .map_err(|e| ConfigError::Url(format!("environment variable {name}: {e}")))
    }
}

/// Where a secret was read, for messages.
fn describe(source: &SecretSource) -> String {
    match source {
        SecretSource::Env(name) => format!("environment variable {name}"),
        SecretSource::File(path) => format!("file {}", path.display()),
    }
}

/// Names a shell can export: a mistyped name should fail at `validate`, not at start-up.
fn check_env_name(name: &str) -> Result<(), String> {
    if lily_delivery::secret::is_env_name(name) {
        Ok(())
    } else if name.is_empty() {
        Err("is empty".to_string())
    } else {
        // The value is not repeated: it may be the secret itself, pasted in the wrong place.
        Err(
            "is not an environment variable name (letters, digits and `_`, not starting with \
             a digit; the value given is not shown)"
                .to_string(),
        )
    }
}

/// The spec's `type`: dot-separated segments of `[a-zA-Z0-9_]`, none empty.
fn check_event_type(event_type: &str) -> Result<(), String> {
    if event_type.is_empty() {
        return Err("is empty".to_string());
    }
    for segment in event_type.split('.') {
        if segment.is_empty() {
            return Err(format!(
                "`{event_type}` has an empty segment (a leading, trailing or doubled `.`)"
            ));
        }
        if let Some(bad) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
        {
            return Err(format!(
                "`{event_type}` contains {bad:?}; segments are made of a-z, A-Z, 0-9 and `_`"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::to_whsec;

    fn parse(text: &str) -> Result<WebhookConfig, toml::de::Error> {
        toml::from_str(text)
    }

    fn valid() -> WebhookConfig {
        parse(
            r#"
            url = "https://hooks.example.com/lily?token=tok_abcdef"
            secret_env = "LILY_TEST_WEBHOOK_SECRET_UNSET"
            event_type = "metadata.column.tagged"
            "#,
        )
        .unwrap()
    }

    fn problems(cfg: &WebhookConfig) -> String {
        match cfg.validate() {
            Err(e @ ConfigError::Invalid(_)) => e.to_string(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn secret_file(content: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), content).unwrap();
        file
    }

    fn no_env(_: &str) -> Result<String, VarError> {
        Err(VarError::NotPresent)
    }

    #[test]
    fn defaults_and_a_valid_table() {
        let cfg = valid();
        assert_eq!(cfg.timeout_ms, 15_000);
        assert_eq!(cfg.max_body_bytes, 20_480);
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = parse(
            r#"
            url = "https://hooks.example.com/x"
            secret_env = "S"
            event_type = "a.b"
            timeout = 5
            "#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `timeout`"), "{err}");
    }

    #[test]
    fn url_and_url_env_are_exclusive_and_one_is_required() {
        let mut cfg = valid();
        cfg.url_env = Some("HOOK_URL".into());
        assert!(problems(&cfg).contains("give url or url_env, not both"));
        cfg.url = None;
        cfg.url_env = None;
        assert!(problems(&cfg).contains("url or url_env is required"));
        cfg.url_env = Some("9LIVES".into());
        assert!(problems(&cfg).contains("is not an environment variable name"));
        assert!(!problems(&cfg).contains("9LIVES"), "{}", problems(&cfg));
    }

    #[test]
    fn url_must_be_http_and_errors_hide_it() {
        let mut cfg = valid();
        cfg.url = Some("ftp://files.example.com/drop".into());
        assert!(problems(&cfg).contains("scheme `ftp` is not allowed"));
        cfg.url = Some("hooks.example.com/x?token=tok_abcdef".into());
        let msg = problems(&cfg);
        assert!(msg.contains("url: not a valid URL"), "{msg}");
        assert!(!msg.contains("tok_abcdef"), "{msg}");
    }

    #[test]
    fn secret_is_required_and_exclusive() {
        let mut cfg = valid();
        cfg.secret_env = None;
        assert!(problems(&cfg).contains("secret_env or secret_file is required"));
        cfg.secret_env = Some("S".into());
        cfg.secret_file = Some("/run/secrets/hook".into());
        assert!(problems(&cfg).contains("give secret_env or secret_file, not both"));
    }

    #[test]
    fn event_type_segments_are_checked() {
        for (bad, expect) in [
            ("", "event_type: is empty"),
            ("metadata..tagged", "empty segment"),
            (".tagged", "empty segment"),
            ("column.tagged.", "empty segment"),
            ("column-tagged", "contains '-'"),
            ("column tagged", "contains ' '"),
            ("colümn.tagged", "contains 'ü'"),
        ] {
            let mut cfg = valid();
            cfg.event_type = bad.into();
            let msg = problems(&cfg);
            assert!(msg.contains(expect), "{bad:?}: {msg}");
        }
        let mut cfg = valid();
        cfg.event_type = "Row_2.changed.v1".into();
        cfg.validate().unwrap();
    }

    #[test]
    fn limits_are_checked_and_all_problems_reported() {
        let mut cfg = valid();
        cfg.timeout_ms = 0;
        cfg.max_body_bytes = 10 * 1024 * 1024;
        cfg.event_type = "a b".into();
        let msg = problems(&cfg);
        assert!(
            msg.contains("timeout_ms must be 1 to 300000, not 0"),
            "{msg}"
        );
        assert!(msg.contains("max_body_bytes must be 1 to 1048576"), "{msg}");
        assert!(msg.contains("event_type"), "{msg}");
    }

    #[test]
    fn missing_secret_env_is_named() {
        let err = valid().build_with_env(no_env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "webhook sink signing secret: environment variable \
             LILY_TEST_WEBHOOK_SECRET_UNSET is not set"
        );
    }

    #[test]
    fn missing_or_bad_url_env_is_named_not_shown() {
        let file = secret_file(&to_whsec(&[1; 32]));
        let mut cfg = valid();
        cfg.url = None;
        cfg.url_env = Some("LILY_HOOK_URL".into());
        cfg.secret_env = None;
        cfg.secret_file = Some(file.path().to_path_buf());
        let err = cfg.build_with_env(no_env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "webhook sink url: environment variable LILY_HOOK_URL is not set"
        );
        let err = cfg
            .build_with_env(|_| Ok("gopher://h/x?token=tok_abcdef".into()))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("LILY_HOOK_URL") && msg.contains("`gopher`"),
            "{msg}"
        );
        assert!(!msg.contains("tok_abcdef"), "{msg}");
        let sink = cfg
            .build_with_env(|_| Ok("https://h.example.com/in?token=tok_abcdef\n".into()))
            .unwrap();
        let shown = format!("{sink:?}");
        assert!(shown.contains("https://h.example.com/in"), "{shown}");
        assert!(!shown.contains("tok_abcdef"), "{shown}");
    }

    #[test]
    fn secret_prefix_and_length_are_checked() {
        let mut cfg = valid();
        cfg.secret_env = None;

        let file = secret_file("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\n");
        cfg.secret_file = Some(file.path().to_path_buf());
        let msg = cfg.build_with_env(no_env).unwrap_err().to_string();
        assert!(
            msg.contains(&format!("file {}", file.path().display())),
            "{msg}"
        );
        assert!(msg.contains("does not start with `whsec_`"), "{msg}");
        assert!(!msg.contains("c2VjcmV0"), "{msg}");

        let file = secret_file(&to_whsec(b"sixteen byte key"));
        cfg.secret_file = Some(file.path().to_path_buf());
        let msg = cfg.build_with_env(no_env).unwrap_err().to_string();
        assert!(msg.contains("decodes to 16 bytes"), "{msg}");
        assert!(msg.contains("24 to 64 bytes"), "{msg}");

        let file = secret_file("whsec_%%%");
        cfg.secret_file = Some(file.path().to_path_buf());
        let msg = cfg.build_with_env(no_env).unwrap_err().to_string();
        assert!(msg.contains("not valid base64"), "{msg}");
    }

    #[test]
    fn secret_never_in_debug_output() {
        let secret = to_whsec(b"a key of exactly thirty-two b!!!");
        let file = secret_file(&secret);
        let mut cfg = valid();
        cfg.secret_env = None;
        cfg.secret_file = Some(file.path().to_path_buf());
        let sink = cfg.build_with_env(no_env).unwrap();
        let encoded = secret.trim_start_matches("whsec_");
        for shown in [format!("{sink:?}"), format!("{cfg:?}")] {
            assert!(!shown.contains(encoded), "{shown}");
            assert!(!shown.contains("thirty-two"), "{shown}");
            // The literal URL's token is hidden too.
            assert!(!shown.contains("tok_abcdef"), "{shown}");
        }
    }
}
