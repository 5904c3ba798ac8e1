//! `lily apikey`: API keys of the ingest API. A key's secret is printed once, at creation;
//! the metastore keeps only its hash.

pub(crate) async fn create(
    pg: &lily_pg::ConnectionConfig,
    tenant: &str,
    name: &str,
    scopes: &[String],
) -> anyhow::Result<()> {
    let client = crate::pipelines::connect(pg, lily_pg::Role::Admin).await?;
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

pub(crate) async fn list(pg: &lily_pg::ConnectionConfig, tenant: &str) -> anyhow::Result<()> {
    let client = crate::pipelines::connect(pg, lily_pg::Role::Admin).await?;
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
    pg: &lily_pg::ConnectionConfig,
    tenant: &str,
    key_id: &str,
) -> anyhow::Result<()> {
    let client = crate::pipelines::connect(pg, lily_pg::Role::Admin).await?;
    if lily_auth::ApiKeys::new()
        .revoke(&client, tenant, key_id)
        .await?
    {
        // Servers cache a verified key; another process's revocation reaches them when the
        // entry expires.
        eprintln!(
            "key {key_id} revoked; a running server that used it in the last {} s accepts it \
             until its cached entry expires (at most {} s from now)",
            lily_auth::ApiKeys::DEFAULT_CACHE_TTL.as_secs(),
            lily_auth::ApiKeys::DEFAULT_CACHE_TTL.as_secs()
        );
        Ok(())
    } else {
        anyhow::bail!("tenant {tenant} has no active key {key_id}")
    }
}

pub(crate) async fn run(
    pg: &lily_pg::ConnectionConfig,
    action: crate::ApikeyAction,
) -> anyhow::Result<()> {
    match action {
        crate::ApikeyAction::Create {
            tenant,
            name,
            scopes,
        } => create(pg, &tenant, &name, &scopes).await,
        crate::ApikeyAction::List { tenant } => list(pg, &tenant).await,
        crate::ApikeyAction::Revoke { tenant, id } => revoke(pg, &tenant, &id).await,
    }
}
