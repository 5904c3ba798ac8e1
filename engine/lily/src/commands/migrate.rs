//! `lily migrate`: the metastore schema, idempotently.

use anyhow::Context;

pub(crate) async fn run(url_env: &str) -> anyhow::Result<()> {
    let url = std::env::var(url_env)
        .with_context(|| format!("environment variable {url_env} is not set"))?;
    migrate(&url).await
}

pub(crate) async fn migrate(url: &str) -> anyhow::Result<()> {
    let cfg = lily_pg::ConnectionConfig::parse(url)
        .map_err(|e| anyhow::anyhow!("the metastore's connection string: {e}"))?;
    let client = lily_pg::connect(&cfg, lily_pg::Role::Admin).await?;
    let report = lily_metastore::migrate(&client).await?;
    tracing::info!(?report, "Migrations done.");
    Ok(())
}
