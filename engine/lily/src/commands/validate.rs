//! `lily validate`: the config, its pipelines (when it names a folder) and its inbound hooks
//! (when it has `[ingest]`), checked against the real metastore without running anything.

use crate::config::FileConfig;
use crate::pipelines;

pub(crate) async fn run(cfg: &FileConfig) -> anyhow::Result<()> {
    let pg = cfg.capture_config()?.connection;
    let mut problems = 0;
    let mut checked = 0;
    if let Some(dir) = cfg.pipelines_dir() {
        problems += pipelines::validate(&dir, &pg).await?;
        checked += 1;
    }
    if let Some(ingest) = &cfg.ingest {
        problems += hooks(ingest, &pg).await?;
        checked += 1;
    }
    if checked == 0 {
        println!("ok: the config (it names no pipelines folder and has no [ingest])");
    }
    if problems == 0 {
        Ok(())
    } else {
        anyhow::bail!("{problems} problem(s)")
    }
}

/// Builds every configured hook (reading its secrets) and checks that each hook's tenant
/// exists; prints what is fine and each problem, and returns how many problems there were.
async fn hooks(
    ingest: &lily_ingest::IngestConfig,
    pg: &lily_pg::ConnectionConfig,
) -> anyhow::Result<usize> {
    let registry = lily_registry::registry();
    let mut problems = 0;
    let mut tenants: Vec<(&'static str, String)> = Vec::new();
    for entry in &registry.hooks {
        let Some(tables) = ingest.hooks.get(entry.type_name()) else {
            continue;
        };
        match entry.build(Some(tables)) {
            Ok(kind) => {
                for hook in &kind.hooks {
                    tenants.push((entry.type_name(), hook.tenant().to_string()));
                }
            }
            Err(e) => {
                println!("error: {e}");
                problems += 1;
            }
        }
    }
    if tenants.is_empty() {
        return Ok(problems);
    }
    let client = lily_pg::connect(pg, lily_pg::Role::Catalog).await?;
    let ids: Vec<&str> = tenants.iter().map(|(_, t)| t.as_str()).collect();
    let known: std::collections::HashSet<String> = client
        .query(
            "SELECT tenant_id FROM meta.tenants WHERE tenant_id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(|e| anyhow::anyhow!("reading meta.tenants: {}", lily_pg::describe(&e)))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (kind, tenant) in &tenants {
        if known.contains(tenant) {
            println!("ok: {kind} hook of tenant {tenant}");
        } else {
            println!("error: ingest.{kind}: tenant {tenant:?} does not exist in meta.tenants");
            problems += 1;
        }
    }
    Ok(problems)
}
