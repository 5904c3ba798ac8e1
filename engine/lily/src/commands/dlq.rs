//! `lily dlq list` and `lily dlq replay`: the dead-letter table. The table's queries and the
//! replay itself are `lily_delivery`'s ([`DeadLetters`]); this is arguments and printing.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use lily_delivery::{DeadLetters, LetterFilter, ReplayTarget, Replayed};

use crate::config::FileConfig;
use crate::pipelines::plan_each;
use crate::DlqAction;
use lily_runtime::ShutdownTrigger;

pub(crate) async fn run(cfg: &FileConfig, action: DlqAction) -> anyhow::Result<()> {
    let pg = cfg.capture_config()?.connection;
    match action {
        DlqAction::List { pipeline, all } => list(&pg, pipeline, all).await,
        DlqAction::Replay { pipeline, id } => {
            let dir = cfg
                .pipelines_dir()
                .context("the config names no pipelines folder")?;
            replay(&pg, &dir, pipeline, id).await
        }
    }
}

pub(crate) async fn list(
    pg: &lily_pg::ConnectionConfig,
    pipeline: Option<String>,
    all: bool,
) -> anyhow::Result<()> {
    let filter = LetterFilter {
        pipeline,
        id: None,
        replayed: all,
    };
    let letters = DeadLetters::open(pg.clone()).list(&filter).await?;
    for l in &letters {
        let line = serde_json::json!({
            "id": l.id,
            "pipeline": l.pipeline,
            "sink": l.sink,
            "record_id": l.record.id,
            "commit_lsn": l.record.commit_lsn.to_string(),
            "attempts": l.attempts,
            "error": l.error,
            "failed_at": l.failed_at_utc(),
            "replayed": l.replayed_at.is_some(),
            "record": l.record.fields,
        });
        println!("{line}");
    }
    eprintln!("{} dead letter(s)", letters.len());
    Ok(())
}

/// Sends pending dead letters again through their sink as the pipeline files now define it
/// (fix the endpoint or the data, then replay), with its delivery settings. A success marks
/// the letter replayed and records it in the ledger; a failure updates its error and attempts
/// and leaves it pending.
pub(crate) async fn replay(
    pg: &lily_pg::ConnectionConfig,
    dir: &Path,
    pipeline: Option<String>,
    id: Option<i64>,
) -> anyhow::Result<()> {
    let mut targets = HashMap::new();
    for planned in plan_each(dir, pg, &lily_registry::registry()).await? {
        let (loaded, planned) = match planned {
            Ok(p) => p,
            Err(problems) => {
                for p in &problems {
                    eprintln!("warning: {p}");
                }
                continue;
            }
        };
        for decl in &loaded.file.sinks {
            let name = decl.name.get_ref();
            let Some(sink) = planned.sink(name) else {
                continue;
            };
            // As `lily_pipeline::start` reads them for live traffic.
            let settings = decl
                .delivery
                .as_ref()
                .map(|d| d.get_ref().clone())
                .unwrap_or_default();
            let target = ReplayTarget {
                sink: sink.clone(),
                settings,
            };
            targets.insert((planned.name.clone(), name.clone()), target);
        }
    }

    let table = DeadLetters::open(pg.clone());
    let filter = LetterFilter {
        pipeline,
        id,
        replayed: false,
    };
    let letters = table.list(&filter).await?;
    // Ctrl-C stops retry waits; the letters not finished by then stay pending.
    let (stop, shutdown) = ShutdownTrigger::new();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.trigger();
        }
    });
    let outcomes = table
        .replay(
            &letters,
            |pipeline, sink| {
                targets
                    .get(&(pipeline.to_string(), sink.to_string()))
                    .cloned()
            },
            shutdown,
        )
        .await;

    let (mut ok, mut failed, mut skipped) = (0, 0, 0);
    for (l, outcome) in letters.iter().zip(outcomes) {
        let letter = l.id;
        match outcome {
            Replayed::Delivered => {
                println!("dead letter {letter}: delivered");
                ok += 1;
            }
            Replayed::Failed { error, .. } => {
                println!("dead letter {letter}: failed again: {error}");
                failed += 1;
            }
            Replayed::Interrupted => {
                println!("dead letter {letter}: interrupted; still pending");
                failed += 1;
            }
            Replayed::NoSink => {
                eprintln!(
                    "dead letter {letter}: pipeline {} has no sink {} now (a transform failure, or the pipeline changed); skipped",
                    l.pipeline, l.sink
                );
                skipped += 1;
            }
        }
    }
    eprintln!("replayed {ok}, failed {failed}, skipped {skipped}");
    if failed > 0 {
        anyhow::bail!("{failed} dead letter(s) failed again");
    }
    Ok(())
}
