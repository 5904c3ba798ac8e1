//! An Okta event hook's settings and how they become a ready [`OktaHook`].
//!
//! As for the sinks, [`OktaHookConfig::validate`] looks only at the text (for `lily check`), and
//! [`OktaHookConfig::build`] reads the secret from the environment or a file.

use std::path::PathBuf;

use lily_pg::{Secret, SecretError, SecretSource};
use serde::Deserialize;

use crate::hook::{check_secret, OktaError};

fn default_header() -> String {
    "authorization".to_string()
}

/// One Okta event hook, e.g.
///
/// ```toml
/// tenant_id = "acme"
/// secret_env = "LILY_OKTA_HOOK_SECRET"
/// header = "authorization"    # the default
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OktaHookConfig {
    /// The tenant whose directory (meta.principals, meta.group_members) this hook keeps
    /// current: lower-case letters, digits, `_` and `-`, as meta.tenants requires.
    pub tenant_id: String,
    /// Name of an environment variable holding the secret Okta sends in `header` (the hook's
    /// `authScheme.value`). Give this or `secret_file`, not both.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Path of a file holding that secret (one trailing newline is ignored). Give this or
    /// `secret_env`, not both.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The header carrying the secret (the hook's `authScheme.key`). Default `authorization`;
    /// matched case-insensitively.
    #[serde(default = "default_header")]
    pub header: String,
}

/// A config that cannot be used. No variant carries the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Problems in the text, all of them.
    #[error("okta hook: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The secret could not be read.
    #[error("okta hook secret: {0}")]
    Secret(#[from] SecretError),
}

/// A configured hook, ready to check requests. `Debug` shows the secret as `<redacted>`.
#[derive(Debug, Clone)]
pub struct OktaHook {
    pub tenant_id: String,
    /// The secret header's name, lower case.
    pub header: String,
    secret: Secret,
}

impl OktaHook {
    /// A hook from parts (tests, or a server that reads its secrets elsewhere).
    pub fn new(tenant_id: impl Into<String>, header: &str, secret: Secret) -> Self {
        OktaHook {
            tenant_id: tenant_id.into(),
            header: header.to_ascii_lowercase(),
            secret,
        }
    }

    /// [`check_secret`] against this hook's secret.
    pub fn check(&self, presented: Option<&str>) -> Result<(), OktaError> {
        check_secret(&self.secret, presented)
    }
}

impl OktaHookConfig {
    /// Checks the settings as written, without reading the environment or any file. Reports
    /// every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(e) = lily_inbound::check_tenant_id(&self.tenant_id) {
            problems.push(format!("tenant_id: {e}"));
        }
        match self.secret_source() {
            Ok(Some(_)) => {}
            Ok(None) => problems.push(
                "secret_env or secret_file is required: the secret header is Okta's only \
                 authentication"
                    .to_string(),
            ),
            Err(e) => problems.push(e),
        }
        if let Err(e) = check_header_name(&self.header) {
            problems.push(format!("header: {e}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Validates and reads the secret.
    pub fn build(&self) -> Result<OktaHook, ConfigError> {
        self.validate()?;
        let source = self.secret_source().ok().flatten().ok_or_else(|| {
            ConfigError::Invalid(vec!["secret_env or secret_file is required".into()])
        })?;
        Ok(OktaHook::new(
            self.tenant_id.clone(),
            &self.header,
            source.resolve()?,
        ))
    }

    fn secret_source(&self) -> Result<Option<SecretSource>, String> {
        SecretSource::from_pair(
            "secret",
            self.secret_env.as_deref(),
            self.secret_file.as_deref(),
        )
    }
}

/// An HTTP field name (RFC 9110 token).
fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(*c)))
    {
        Some(bad) => Err(format!(
            "`{name}` is not an HTTP header name (contains {bad:?})"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OktaHookConfig, toml::de::Error> {
        toml::from_str(text)
    }

    fn problems(cfg: &OktaHookConfig) -> String {
        match cfg.validate() {
            Err(e @ ConfigError::Invalid(_)) => e.to_string(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let cfg = parse("tenant_id = \"acme\"\nsecret_env = \"OKTA_SECRET\"").unwrap();
        assert_eq!(cfg.header, "authorization");
        cfg.validate().unwrap();
        let err = parse("tenant_id = \"acme\"\nsecret_env = \"S\"\nsecret = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `secret`"), "{err}");
    }

    #[test]
    fn every_problem_is_reported() {
        let cfg = OktaHookConfig {
            tenant_id: "Acme Corp".into(),
            secret_env: Some("1BAD".into()),
            secret_file: None,
            header: "x okta".into(),
        };
        let msg = problems(&cfg);
        assert!(
            msg.contains("tenant_id: `Acme Corp` is not a tenant id"),
            "{msg}"
        );
        assert!(
            msg.contains("secret_env must be an environment variable name"),
            "{msg}"
        );
        assert!(!msg.contains("1BAD"), "the value is echoed: {msg}");
        assert!(
            msg.contains("header: `x okta` is not an HTTP header name"),
            "{msg}"
        );
        let cfg = OktaHookConfig {
            tenant_id: "acme".into(),
            secret_env: None,
            secret_file: None,
            header: "authorization".into(),
        };
        assert!(problems(&cfg).contains("secret_env or secret_file is required"));
        let cfg = OktaHookConfig {
            secret_env: Some("A".into()),
            secret_file: Some("/run/s".into()),
            ..cfg
        };
        assert!(problems(&cfg).contains("not both"));
    }

    #[test]
    fn build_reads_the_secret_and_never_shows_it() {
        let file = std::env::temp_dir().join(format!("lily-okta-secret-{}", std::process::id()));
        std::fs::write(&file, "okta-static-secret\n").unwrap();
        let cfg = OktaHookConfig {
            tenant_id: "acme".into(),
            secret_env: None,
            secret_file: Some(file.clone()),
            header: "X-Lily-Okta".into(),
        };
        let hook = cfg.build().unwrap();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(hook.header, "x-lily-okta");
        hook.check(Some("okta-static-secret")).unwrap();
        assert_eq!(hook.check(Some("nope")), Err(OktaError::WrongSecret));
        let shown = format!("{hook:?}");
        assert!(
            !shown.contains("okta-static-secret") && shown.contains("<redacted>"),
            "{shown}"
        );
        // A missing file is named, not read.
        let err = cfg.build().unwrap_err().to_string();
        assert!(
            err.starts_with("okta hook secret: cannot read secret file"),
            "{err}"
        );
    }
}
