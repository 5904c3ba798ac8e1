//! Okta as an inbound hook connector of the registry.

use lily_connector::HookConnector;
use lily_inbound::HookKind;

use crate::OktaHookConfig;

/// Okta's event hooks, `[[ingest.okta]]`.
pub struct OktaConnector;

impl HookConnector for OktaConnector {
    const TYPE: &'static str = "okta";
    const DESCRIPTION: &'static str = "Okta event hooks (verification challenge, shared-secret header): users and group memberships";
    type Config = OktaHookConfig;

    fn validate(config: &OktaHookConfig) -> Result<(), String> {
        config.validate().map_err(|e| e.to_string())
    }

    fn build(configs: Vec<OktaHookConfig>) -> Result<HookKind, String> {
        let hooks = configs
            .iter()
            .map(OktaHookConfig::build)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(HookKind::of(hooks))
    }
}
