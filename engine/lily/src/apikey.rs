//! `lily apikey`: API keys of the ingest API. A key's secret is printed once, at creation;
//! the metastore keeps only its hash.

pub(crate) async fn create(
    pg: &tokio_postgres::Config,
    tenant: &str,
    name: &str,
    scopes: &[String],
) -> anyhow::Result<()> {
    let client = crate::pipelines::connect(pg).await?;
    let (key, info) = lily_auth::ApiKeys::new()
        .create(&client, tenant, name, scopes)
        .await?;
    eprintln!(
        "created key {} for tenant {} with scopes {:?}; the key is printed once:",
        info.key_id,
        info.tenant_id,
        info.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>()
    );
    println!("{}", key.expose_secret());
    Ok(())
}

pub(crate) async fn list(pg: &tokio_postgres::Config, tenant: &str) -> anyhow::Result<()> {
    let client = crate::pipelines::connect(pg).await?;
    for k in lily_auth::ApiKeys::new().list(&client, tenant).await? {
        println!(
            "{}",
            serde_json::json!({
                "key_id": k.key_id,
                "tenant": k.tenant_id,
                "name": k.name,
                "scopes": k.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                "revoked": k.revoked_at.is_some(),
            })
        );
    }
    Ok(())
}

pub(crate) async fn revoke(
    pg: &tokio_postgres::Config,
    tenant: &str,
    key_id: &str,
) -> anyhow::Result<()> {
    let client = crate::pipelines::connect(pg).await?;
    if lily_auth::ApiKeys::new()
        .revoke(&client, tenant, key_id)
        .await?
    {
        eprintln!("key {key_id} revoked");
        Ok(())
    } else {
        anyhow::bail!("tenant {tenant} has no active key {key_id}")
    }
}
