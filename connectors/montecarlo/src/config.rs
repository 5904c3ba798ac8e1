//! A Monte Carlo webhook's settings and how they become a ready [`MonteCarloHook`].
//!
//! As for Okta's hook, [`MonteCarloHookConfig::validate`] looks only at the text, and
//! [`MonteCarloHookConfig::build`] reads the secret from the environment or a file.

use std::path::PathBuf;

use lily_pg::{Secret, SecretError, SecretSource};
use serde::Deserialize;

/// The Monte Carlo webhook of one tenant, e.g.
///
/// ```toml
/// tenant_id = "acme"
/// secret_env = "LILY_MC_SECRET"
/// connection_qualified_name = "snowflake-prod"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MonteCarloHookConfig {
    /// The tenant whose incidents this hook writes.
    pub tenant_id: String,
    /// Environment variable holding the signing secret set in Monte Carlo; give this or
    /// `secret_file`, or set `allow_unsigned`.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the signing secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Accept unsigned deliveries. Only for endpoints reachable from Monte Carlo's published
    /// addresses alone; anyone who can reach an unsigned endpoint can write incidents.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// Qualified name of the connection Monte Carlo's tables belong to; the asset is
    /// `<connection>/<database>/<schema>/<table>`. Without it, the asset whose qualified name
    /// ends in `/<database>/<schema>/<table>` is used when exactly one does.
    #[serde(default)]
    pub connection_qualified_name: Option<String>,
    /// Monte Carlo account id the deliveries must carry (others are refused).
    #[serde(default)]
    pub account_id: Option<String>,
}

/// A config that cannot be used. No variant carries the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The settings as written are wrong.
    #[error("monte_carlo hook of {tenant}: {problem}")]
    Invalid { tenant: String, problem: String },
    /// The secret could not be read.
    #[error("monte_carlo hook of {tenant}: {source}")]
    Secret { tenant: String, source: SecretError },
}

/// The configured hook of one tenant, ready to check deliveries. `Debug` shows the secret as
/// `<redacted>`.
#[derive(Debug, Clone)]
pub struct MonteCarloHook {
    pub(crate) tenant_id: String,
    /// `None` when unsigned deliveries are allowed.
    pub(crate) secret: Option<Secret>,
    pub(crate) connection: Option<String>,
    pub(crate) account_id: Option<String>,
}

impl MonteCarloHookConfig {
    /// Checks the settings as written, without reading the environment or any file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        lily_inbound::check_tenant_id(&self.tenant_id).map_err(|e| ConfigError::Invalid {
            tenant: self.tenant_id.clone(),
            problem: format!("tenant_id: {e}"),
        })?;
        self.secret_source().map(|_| ())
    }

    /// Validates and reads the secret.
    pub fn build(&self) -> Result<MonteCarloHook, ConfigError> {
        self.validate()?;
        let secret = match self.secret_source()? {
            Some(source) => Some(source.resolve().map_err(|source| ConfigError::Secret {
                tenant: self.tenant_id.clone(),
                source,
            })?),
            None => None,
        };
        Ok(MonteCarloHook {
            tenant_id: self.tenant_id.clone(),
            secret,
            connection: self.connection_qualified_name.clone(),
            account_id: self.account_id.clone(),
        })
    }

    /// Where the secret comes from; `None` only when unsigned deliveries are allowed.
    fn secret_source(&self) -> Result<Option<SecretSource>, ConfigError> {
        let invalid = |problem: String| ConfigError::Invalid {
            tenant: self.tenant_id.clone(),
            problem,
        };
        let source = SecretSource::from_pair(
            "secret",
            self.secret_env.as_deref(),
            self.secret_file.as_deref(),
        )
        .map_err(invalid)?;
        match (source, self.allow_unsigned) {
            (Some(s), _) => Ok(Some(s)),
            (None, true) => Ok(None),
            (None, false) => Err(invalid(
                "give secret_env or secret_file, or allow_unsigned = true".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MonteCarloHookConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn a_secret_or_an_explicit_opt_out_is_required() {
        let cfg = parse("tenant_id = \"acme\"").unwrap();
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "monte_carlo hook of acme: give secret_env or secret_file, or allow_unsigned = true"
        );
        let unsigned = parse("tenant_id = \"acme\"\nallow_unsigned = true").unwrap();
        let hook = unsigned.build().unwrap();
        assert!(hook.secret.is_none());
        let both =
            parse("tenant_id = \"acme\"\nsecret_env = \"A\"\nsecret_file = \"/run/s\"").unwrap();
        assert!(matches!(both.validate(), Err(ConfigError::Invalid { .. })));
        let err = parse("tenant_id = \"acme\"\nsecret = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `secret`"), "{err}");
    }

    #[test]
    fn build_reads_the_secret_and_never_shows_it() {
        let file = std::env::temp_dir().join(format!("lily-mc-secret-{}", std::process::id()));
        std::fs::write(&file, "mc-signing-secret\n").unwrap();
        let cfg = MonteCarloHookConfig {
            tenant_id: "acme".into(),
            secret_env: None,
            secret_file: Some(file.clone()),
            allow_unsigned: false,
            connection_qualified_name: Some("snow".into()),
            account_id: Some("acct-1".into()),
        };
        let hook = cfg.build().unwrap();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            hook.secret.as_ref().map(|s| s.expose()),
            Some("mc-signing-secret")
        );
        let shown = format!("{hook:?}");
        assert!(
            !shown.contains("mc-signing-secret") && shown.contains("<redacted>"),
            "{shown}"
        );
        // A missing file is named, not read.
        let err = cfg.build().unwrap_err();
        assert!(matches!(err, ConfigError::Secret { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("monte_carlo hook of acme: cannot read secret file"),
            "{err}"
        );
    }
}
