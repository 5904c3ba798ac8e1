//! `lily dlq list` and `lily dlq replay`: the dead-letter table.

use std::path::Path;

use lily_delivery::Record;

use crate::pipelines::{connect, plan_all};

pub(crate) async fn list(
    pg: &tokio_postgres::Config,
    pipeline: Option<&str>,
    all: bool,
) -> anyhow::Result<()> {
    let client = connect(pg).await?;
    let rows = client
        .query(
            "SELECT id, pipeline, sink, record_id, commit_lsn::text, attempts, error,
                    to_char(failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    replayed_at IS NOT NULL, record::text
             FROM lily.dead_letters
             WHERE ($1::text IS NULL OR pipeline = $1) AND ($2 OR replayed_at IS NULL)
             ORDER BY id",
            &[&pipeline, &all],
        )
        .await?;
    for r in &rows {
        let line = serde_json::json!({
            "id": r.get::<_, i64>(0),
            "pipeline": r.get::<_, String>(1),
            "sink": r.get::<_, String>(2),
            "record_id": r.get::<_, String>(3),
            "commit_lsn": r.get::<_, String>(4),
            "attempts": r.get::<_, i32>(5),
            "error": r.get::<_, String>(6),
            "failed_at": r.get::<_, String>(7),
            "replayed": r.get::<_, bool>(8),
            "record": serde_json::from_str::<serde_json::Value>(&r.get::<_, String>(9))?,
        });
        println!("{line}");
    }
    eprintln!("{} dead letter(s)", rows.len());
    Ok(())
}

/// Sends pending dead letters again through their sink as the pipeline files now define it
/// (fix the endpoint or the data, then replay). A success marks the letter replayed and
/// records it in the ledger; a failure updates its error and attempts and leaves it pending.
pub(crate) async fn replay(
    pg: &tokio_postgres::Config,
    dir: &Path,
    pipeline: Option<&str>,
    id: Option<i64>,
) -> anyhow::Result<()> {
    let (planned, problems) = plan_all(dir, pg).await?;
    for p in &problems {
        eprintln!("warning: {p}");
    }
    let client = connect(pg).await?;
    let rows = client
        .query(
            "SELECT id, pipeline, sink, record_id, commit_lsn::text,
                    (extract(epoch FROM commit_ts) * 1e6)::int8, order_key, record
             FROM lily.dead_letters
             WHERE replayed_at IS NULL AND ($1::text IS NULL OR pipeline = $1)
               AND ($2::int8 IS NULL OR id = $2)
             ORDER BY id",
            &[&pipeline, &id],
        )
        .await?;
    let (mut ok, mut failed, mut skipped) = (0, 0, 0);
    for r in rows {
        let letter: i64 = r.get(0);
        let pipe: String = r.get(1);
        let sink_name: String = r.get(2);
        let Some(sink) = planned
            .iter()
            .find(|p| p.name == pipe)
            .and_then(|p| p.sink(&sink_name))
        else {
            eprintln!(
                "dead letter {letter}: pipeline {pipe} has no sink {sink_name} now (a transform failure, or the pipeline changed); skipped"
            );
            skipped += 1;
            continue;
        };
        let fields = match r.get::<_, serde_json::Value>(7) {
            serde_json::Value::Object(m) => m,
            _ => Default::default(),
        };
        let record = Record {
            id: r.get(3),
            commit_lsn: r.get::<_, String>(4).parse().unwrap_or(lily_cdc::Lsn(0)),
            commit_ts_us: r.get(5),
            key: r.get(6),
            fields,
        };
        match sink.deliver(std::slice::from_ref(&record)).await {
            Ok(()) => {
                client
                    .execute(
                        "WITH u AS (UPDATE lily.dead_letters SET replayed_at = now() WHERE id = $1)
                         INSERT INTO lily.delivery_ledger (pipeline, sink, record_id, commit_lsn, outcome)
                         VALUES ($2, $3, $4, $5::text::pg_lsn, 'delivered')
                         ON CONFLICT (pipeline, sink, record_id) DO UPDATE SET outcome = 'delivered', finished_at = now()",
                        &[&letter, &pipe, &sink_name, &record.id, &record.commit_lsn.to_string()],
                    )
                    .await?;
                println!("dead letter {letter}: delivered");
                ok += 1;
            }
            Err(e) => {
                client
                    .execute(
                        "UPDATE lily.dead_letters SET error = $2, attempts = attempts + 1, failed_at = now() WHERE id = $1",
                        &[&letter, &e.to_string()],
                    )
                    .await?;
                println!("dead letter {letter}: failed again: {e}");
                failed += 1;
            }
        }
    }
    eprintln!("replayed {ok}, failed {failed}, skipped {skipped}");
    if failed > 0 {
        anyhow::bail!("{failed} dead letter(s) failed again");
    }
    Ok(())
}
