//! `lily check`: the source can be captured (preflight), and every connector the config uses is
//! healthy: pipelines plan and each sink's healthcheck passes (reachable, credentials accepted,
//! permissions sufficient); each consumer's too. Nothing is written.

use lily_replication::{Connection, Mode};

use crate::config::FileConfig;

pub(crate) async fn run(cfg: &FileConfig) -> anyhow::Result<()> {
    let capture = cfg.capture_config()?;
    let mut conn = Connection::connect(&capture.connection, Mode::Normal).await?;
    let info = lily_replication::setup::preflight(&mut conn, &capture.source).await?;
    let slot = lily_replication::setup::inspect_slot(&mut conn, &capture.source.slot).await?;
    println!(
        "ok: server {} wal_sender_timeout {:?}; slot {}: {:?}",
        info.server_version_num, info.wal_sender_timeout, capture.source.slot, slot
    );
    let registry = lily_registry::registry();
    let mut failed = 0;
    let mut report = |what: String, health: lily_connector::Health| match health {
        Ok(detail) => println!("ok: {what}: {detail}"),
        Err(reason) => {
            println!("failed: {what}: {reason}");
            failed += 1;
        }
    };
    for c in &cfg.consumers {
        let what = format!("consumer {} ({})", c.name(), c.kind());
        let health = match registry.consumer(c.kind()) {
            Some(entry) => entry.healthcheck(&c.settings()).await,
            None => Err("unknown type".into()),
        };
        report(what, health);
    }
    if let Some(dir) = cfg.pipelines_dir() {
        let each = crate::pipelines::plan_each(&dir, &capture.connection, &registry).await?;
        for p in each {
            let (loaded, planned) = match p {
                Ok(p) => p,
                Err(problems) => {
                    for p in problems {
                        report(format!("pipeline {}", p.file.display()), Err(p.to_string()));
                    }
                    continue;
                }
            };
            for decl in &loaded.file.sinks {
                let sink = decl.name.get_ref();
                let what = format!("sink {}/{sink} ({})", loaded.name, decl.kind.get_ref());
                let columns = planned.sent_columns(sink).unwrap_or_default();
                let health = match registry.sink(decl.kind.get_ref()) {
                    Some(entry) => {
                        entry
                            .healthcheck(
                                &decl.settings_value(),
                                lily_connector::SinkContext {
                                    pipeline: &loaded.name,
                                    name: sink,
                                    columns: &columns,
                                    metastore: &capture.connection,
                                },
                            )
                            .await
                    }
                    None => Err("unknown type".into()),
                };
                report(what, health);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}
