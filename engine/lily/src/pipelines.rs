//! Pipelines in the binary: `lily validate`, and loading/starting them for `lily run`/`dev`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lily_cdc::Capture;
use lily_pipeline::{Loaded, Planned, Problem};
use lily_runtime::Shutdown;
use tokio::task::JoinSet;

/// An ordinary connection to the metastore for `role` (TLS and session settings from `lily_pg`).
pub(crate) async fn connect(
    cfg: &lily_pg::ConnectionConfig,
    role: lily_pg::Role,
) -> anyhow::Result<tokio_postgres::Client> {
    Ok(lily_pg::connect(cfg, role).await?)
}

/// Loads and plans every pipeline in `dir`: each one planned (with its file), or its problems.
pub(crate) async fn plan_each(
    dir: &Path,
    pg: &lily_pg::ConnectionConfig,
    registry: &lily_connector::Registry,
) -> anyhow::Result<Vec<Result<(Loaded, Planned), Vec<Problem>>>> {
    let catalog = connect(pg, lily_pg::Role::Catalog).await?;
    let reader = lily_transform::MetastoreReader::new(pg.clone());
    let ctx = lily_pipeline::PlanContext {
        catalog: &catalog,
        metastore: pg.clone(),
        functions: lily_transform::functions(&reader),
        registry,
    };
    let mut out = Vec::new();
    for loaded in lily_pipeline::load_dir(dir, registry).map_err(|p| anyhow::anyhow!("{p}"))? {
        out.push(match loaded {
            Ok(l) => match lily_pipeline::plan(&l, &ctx).await {
                Ok(p) => Ok((l, p)),
                Err(p) => Err(p),
            },
            Err(p) => Err(p),
        });
    }
    Ok(out)
}

/// Loads and plans every pipeline in `dir`. Returns the ones that planned and every problem
/// of the others.
pub(crate) async fn plan_all(
    dir: &Path,
    pg: &lily_pg::ConnectionConfig,
    registry: &lily_connector::Registry,
) -> anyhow::Result<(Vec<Planned>, Vec<Problem>)> {
    let mut planned = Vec::new();
    let mut problems = Vec::new();
    for p in plan_each(dir, pg, registry).await? {
        match p {
            Ok((_, p)) => planned.push(p),
            Err(p) => problems.extend(p),
        }
    }
    Ok((planned, problems))
}

/// The row filters the publication can carry: a table gets one only when every reader of it
/// filters, and then it is the OR of their filters. Consumers (`log`, `mirror`) read every row,
/// so with any of them no table is filtered. Each pipeline still applies its own filter, since
/// it may receive rows that only another pipeline wanted.
pub(crate) fn publication_filters(
    planned: &[Planned],
    has_consumers: bool,
    tables: &[String],
) -> Vec<(String, String)> {
    if has_consumers {
        return Vec::new();
    }
    let mut out = Vec::new();
    for table in tables {
        let mut parts = Vec::new();
        let mut unfiltered = false;
        for p in planned {
            for (t, f) in &p.filters {
                if t == table {
                    match f {
                        Some(f) => parts.push(format!("({f})")),
                        None => unfiltered = true,
                    }
                }
            }
        }
        if !unfiltered && !parts.is_empty() {
            parts.dedup();
            out.push((table.clone(), parts.join(" OR ")));
        }
    }
    out
}

/// `lily validate`: every problem, one per line; an error when there is any.
/// Prints what plans and every problem; returns how many problems there were.
pub(crate) async fn validate(dir: &Path, pg: &lily_pg::ConnectionConfig) -> anyhow::Result<usize> {
    let (planned, problems) = plan_all(dir, pg, &lily_registry::registry()).await?;
    for p in &planned {
        println!(
            "ok: pipeline {} ({} → {})",
            p.name,
            p.tables.join(", "),
            p.output_columns().join(", ")
        );
    }
    for p in &problems {
        println!("error: {p}");
    }
    Ok(problems.len())
}

/// Starts the planned pipelines on `capture`: one subscription each, plus a task that prunes
/// their ledgers below the slot's confirmed position.
pub(crate) async fn start_all(
    planned: Vec<Planned>,
    capture: &mut Capture,
    pg: &lily_pg::ConnectionConfig,
    slot: &str,
    stop: Shutdown,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<usize> {
    let mut ledgers = Vec::new();
    let count = planned.len();
    for p in planned {
        let name = p.name.clone();
        let sub = capture.subscribe(format!("pipeline:{name}"));
        let pipeline = lily_pipeline::start(p, pg.clone(), stop.clone(), tasks)
            .await
            .with_context(|| format!("starting pipeline {name}"))?;
        ledgers.push(pipeline.ledger().clone());
        tracing::info!(pipeline = %name, "Pipeline started.");
        let stop = stop.clone();
        tasks.spawn(pipeline.run(sub, stop));
    }
    if !ledgers.is_empty() {
        tasks.spawn(prune_ledgers(pg.clone(), slot.to_string(), ledgers, stop));
    }
    Ok(count)
}

async fn prune_ledgers(
    pg: lily_pg::ConnectionConfig,
    slot: String,
    ledgers: Vec<Arc<lily_delivery::Ledger>>,
    stop: Shutdown,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.requested() => return,
        }
        let confirmed = async {
            let client = connect(&pg, lily_pg::Role::Catalog).await?;
            let row = client
                .query_opt(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await?;
            let lsn: Option<String> = row.and_then(|r| r.get(0));
            anyhow::Ok(lsn.and_then(|l| l.parse::<lily_cdc::Lsn>().ok()))
        }
        .await;
        if let Ok(Some(lsn)) = confirmed {
            for l in &ledgers {
                if let Err(error) = l.prune(lsn).await {
                    tracing::debug!(%error, "pruning the ledger failed; will retry");
                }
            }
        }
    }
}
