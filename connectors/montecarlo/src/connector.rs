//! Monte Carlo as an inbound hook connector of the registry.

use lily_connector::HookConnector;
use lily_inbound::HookKind;

use crate::MonteCarloHookConfig;

/// Monte Carlo's webhooks, `[[ingest.monte_carlo]]`.
pub struct MonteCarloConnector;

impl HookConnector for MonteCarloConnector {
    const TYPE: &'static str = "monte_carlo";
    const DESCRIPTION: &'static str = "Monte Carlo incident and alert webhooks (x-mcd-signature), written as incidents on the right assets";
    type Config = MonteCarloHookConfig;

    fn validate(config: &MonteCarloHookConfig) -> Result<(), String> {
        config.validate().map_err(|e| e.to_string())
    }

    fn build(configs: Vec<MonteCarloHookConfig>) -> Result<HookKind, String> {
        for c in configs
            .iter()
            .filter(|c| c.connection_qualified_name.is_none())
        {
            tracing::warn!(
                tenant = %c.tenant_id,
                "The Monte Carlo hook has no connection_qualified_name: each table it reports is \
                 matched by name across all the tenant's connections, and an incident whose name \
                 matches tables in two connections is stored unattached. Set it when the tenant's \
                 Monte Carlo account watches one warehouse."
            );
        }
        let hooks = configs
            .iter()
            .map(MonteCarloHookConfig::build)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(HookKind::of(hooks))
    }
}
