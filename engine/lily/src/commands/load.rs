//! `lily load`: bulk loads of asset files into the metastore, structural assets first, then
//! columns and BI fields in large COPY transactions on parallel writers, paced by change-data-capture
//! consumers; resumable (run the same command again).

use std::path::PathBuf;

pub(crate) async fn run(
    pg: &lily_pg::ConnectionConfig,
    tenant: &str,
    files: &[PathBuf],
    restart: bool,
    settings: lily_load::LoadConfig,
) -> anyhow::Result<()> {
    let mut client = crate::pipelines::connect(pg, lily_pg::Role::Load).await?;
    for file in files {
        // Extra bulk writers connect like the first connection.
        let loader = lily_load::Loader::new(settings.clone()).with_connect(pg.clone());
        let bars = tokio::spawn(lily_load::render_progress(loader.progress()));
        let request = lily_load::LoadRequest::new(tenant, "cli:load", file).restart(restart);
        let result = loader.load(&mut client, &request).await;
        drop(loader);
        let _ = bars.await;
        let report = result.map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        println!(
            "{}",
            serde_json::json!({
                "file": file.display().to_string(),
                "job": report.job_id,
                "resumed": report.resumed,
                "already_complete": report.already_complete,
                "structural_rows": report.structural.rows,
                "bulk_rows": report.bulk.rows,
                "lineage_rows": report.lineage_rows,
                "inserted": report.inserted,
                "updated": report.updated,
                "unchanged": report.unchanged,
                "bulk_rows_per_sec": report.bulk.rows_per_sec().round(),
                "bulk_paced_seconds": report.bulk.paced.as_secs_f64(),
                "seconds": report.elapsed.as_secs_f64(),
            })
        );
    }
    Ok(())
}
