//! Capture throughput and latency against `pg_recvlogical` on the same WAL.
//!
//! Run: `cargo bench -p lily-cdc --bench replication` (env `LILY_BENCH_ROWS`, `LILY_BENCH_TXNS`,
//! `LILY_BENCH_ONLY=a,b,c`, `LILY_BENCH_LINGER_US`,
//! `LILY_BENCH_RUNS`, `LILY_BENCH_RATE`, `LILY_BENCH_SECONDS` scale it down or up).
//!
//! (a) one transaction of N asset-shaped rows, (b) M single-row transactions: for each, a pair
//! of slots is created per run *before* the workload, so `pg_recvlogical` and the engine decode
//! the very same WAL; runs alternate reference/engine and the medians are reported with their
//! ratio. Both read to the same end LSN; the engine's consumer builds Arrow batches and acks.
//! (c) commit→ack latency while single-row transactions are committed at a fixed rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use lily_cdc::{BatchKind, Capture, CaptureConfig};
use lily_pgharness::{ClusterOptions, PgCluster};
use lily_replication::{ConnectionConfig, SourceSpec};
use lily_runtime::ShutdownTrigger;

const DDL: &str = "
CREATE TABLE assets (
    guid uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    type_name text NOT NULL,
    qualified_name text NOT NULL,
    name text NOT NULL,
    parent_guid uuid,
    attributes jsonb NOT NULL,
    status text NOT NULL,
    version int8 NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE PUBLICATION bench_pub FOR TABLE assets;
CREATE PROCEDURE single_row_txns(n int) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..n LOOP
    INSERT INTO assets VALUES (gen_random_uuid(), 't1', 'Column', 'conn/db/schema/table/c' || i || '_' || random(),
      'c' || i, gen_random_uuid(), jsonb_build_object('dataType', 'varchar', 'description', repeat('x', 60)),
      'ACTIVE', 1, now());
    COMMIT;
  END LOOP;
END $$;
";

const BULK: &str = "INSERT INTO assets SELECT gen_random_uuid(), 't1', 'Column',
    'conn/db/schema/table/col_' || g || '_' || random(), 'col_' || g, gen_random_uuid(),
    jsonb_build_object('dataType', 'varchar', 'description', repeat('x', 60)), 'ACTIVE', 1, now()
    FROM generate_series(1, $1) g";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `LILY_BENCH_LINGER_US` overrides the engine's default group linger.
fn linger() -> Duration {
    match std::env::var("LILY_BENCH_LINGER_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(us) => Duration::from_micros(us),
        None => {
            CaptureConfig::new(
                ConnectionConfig::from_url("postgres://x@localhost/x").unwrap(),
                SourceSpec {
                    slot: "x".into(),
                    publication: "x".into(),
                    tables: vec![],
                    row_filters: Vec::new(),
                },
            )
            .batch_linger
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Time for pg_recvlogical to read `slot` up to `end`.
fn reference_run(cluster: &PgCluster, slot: &str, end: &str) -> Duration {
    let started = Instant::now();
    let status = std::process::Command::new(cluster.bin_dir().join("pg_recvlogical"))
        .args([
            "-d",
            &cluster.url("bench"),
            "--slot",
            slot,
            "--start",
            "--endpos",
            end,
            "-f",
            "/dev/null",
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=bench_pub",
            "--no-loop",
        ])
        .status()
        .expect("run pg_recvlogical");
    assert!(status.success(), "pg_recvlogical failed: {status}");
    started.elapsed()
}

/// Time for the engine to read `slot` up to `end` with a consumer that counts and acks.
async fn engine_run(cluster: &PgCluster, slot: &str, expect_rows: u64) -> Duration {
    let mut cfg = CaptureConfig::new(
        ConnectionConfig::from_url(&cluster.url("bench")).unwrap(),
        SourceSpec {
            slot: slot.into(),
            publication: "bench_pub".into(),
            tables: vec!["public.assets".into()],
            row_filters: Vec::new(),
        },
    );
    cfg.status_interval = Some(Duration::from_millis(100));
    cfg.batch_linger = linger();
    let started = Instant::now();
    let mut capture = Capture::new(cfg).unwrap();
    let mut sub = capture.subscribe("count");
    let (stop, stop_rx) = ShutdownTrigger::new();
    let task = tokio::spawn(capture.run(stop_rx));
    let mut rows = 0u64;
    // Done when every change has reached the consumer and been acknowledged, the engine's
    // equivalent of pg_recvlogical having written everything up to the end position.
    let mut done_at = None;
    while let Some(d) = sub.recv().await {
        rows += d.batch.num_rows() as u64;
        d.ack();
        if rows >= expect_rows {
            done_at = Some(started.elapsed());
            break;
        }
    }
    let elapsed = done_at.unwrap_or_else(|| started.elapsed());
    stop.trigger();
    drop(sub);
    task.await.unwrap().unwrap();
    assert!(
        rows >= expect_rows,
        "engine saw {rows} rows, expected {expect_rows}"
    );
    elapsed
}

async fn throughput(
    cluster: &PgCluster,
    c: &tokio_postgres::Client,
    label: &str,
    runs: u64,
    changes: u64,
    workload: &str,
) {
    for r in 0..runs {
        for side in ["ref", "lily"] {
            c.execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&format!("{label}_{side}_{r}")],
            )
            .await
            .unwrap();
        }
    }
    let t = Instant::now();
    c.batch_execute(workload).await.unwrap();
    let gen = t.elapsed();
    let end: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let (mut reference, mut engine) = (Vec::new(), Vec::new());
    for r in 0..runs {
        // Alternate which side reads first, so neither always gets the warmer WAL cache.
        let (rt, et) = if r % 2 == 0 {
            let rt = reference_run(cluster, &format!("{label}_ref_{r}"), &end);
            (
                rt,
                engine_run(cluster, &format!("{label}_lily_{r}"), changes).await,
            )
        } else {
            let et = engine_run(cluster, &format!("{label}_lily_{r}"), changes).await;
            (
                reference_run(cluster, &format!("{label}_ref_{r}"), &end),
                et,
            )
        };
        println!(
            "  {label} run {r}: pg_recvlogical {:.2}s ({:.0}/s), lily {:.2}s ({:.0}/s)",
            rt.as_secs_f64(),
            changes as f64 / rt.as_secs_f64(),
            et.as_secs_f64(),
            changes as f64 / et.as_secs_f64()
        );
        reference.push(changes as f64 / rt.as_secs_f64());
        engine.push(changes as f64 / et.as_secs_f64());
        for side in ["ref", "lily"] {
            drop_slot_when_released(c, &format!("{label}_{side}_{r}")).await;
        }
    }
    // Each run pairs the two readers on the same WAL at nearly the same time; the median of the
    // per-run ratios is the figure least moved by the machine's noise.
    let paired = median(engine.iter().zip(&reference).map(|(e, r)| e / r).collect());
    let (rm, em) = (median(reference), median(engine));
    println!(
        "{label}: {changes} changes (generated in {:.1}s); median pg_recvlogical {:.0} changes/s, lily {:.0} changes/s, ratio of medians {:.2}, median per-run ratio {paired:.2}",
        gen.as_secs_f64(),
        rm,
        em,
        em / rm
    );
}

/// The walsender of a finished run exits a moment after its client; wait for the slot to be free.
async fn drop_slot_when_released(c: &tokio_postgres::Client, slot: &str) {
    for _ in 0..200 {
        match c
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
        {
            Ok(_) => return,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("dropping {slot}: {e}"),
        }
    }
    panic!("slot {slot} stayed active");
}

async fn latency(cluster: &PgCluster, rate: u64, seconds: u64) {
    let mut cfg = CaptureConfig::new(
        ConnectionConfig::from_url(&cluster.url("bench")).unwrap(),
        SourceSpec {
            slot: "lat_lily".into(),
            publication: "bench_pub".into(),
            tables: vec!["public.assets".into()],
            row_filters: Vec::new(),
        },
    );
    cfg.status_interval = Some(Duration::from_millis(500));
    cfg.batch_linger = linger();
    let mut capture = Capture::new(cfg).unwrap();
    let mut sub = capture.subscribe("latency");
    let (stop, stop_rx) = ShutdownTrigger::new();
    let task = tokio::spawn(capture.run(stop_rx));
    let hist = Arc::new(std::sync::Mutex::new(
        hdrhistogram::Histogram::<u64>::new(3).unwrap(),
    ));
    let h = hist.clone();
    let seen = Arc::new(AtomicU64::new(0));
    let seen2 = seen.clone();
    let consumer = tokio::spawn(async move {
        while let Some(d) = sub.recv().await {
            if let BatchKind::Rows { records, .. } = &d.batch.kind {
                let now_us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_micros() as i64;
                let ts = records
                    .column_by_name("_commit_ts")
                    .unwrap()
                    .as_primitive::<TimestampMicrosecondType>();
                let mut h = h.lock().unwrap();
                for i in 0..ts.len() {
                    h.record((now_us - ts.value(i)).max(0) as u64).unwrap();
                }
                seen2.fetch_add(ts.len() as u64, Ordering::Relaxed);
            }
            d.ack();
        }
    });
    // Wait for the slot to exist and stream.
    let c = cluster.connect("bench").await.unwrap();
    for _ in 0..200 {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'lat_lily' AND active AND confirmed_flush_lsn IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let writers = 5u64;
    let per_writer = rate / writers;
    let total = per_writer * writers * seconds;
    let started = Instant::now();
    let mut gens = Vec::new();
    for w in 0..writers {
        let client = cluster.connect("bench").await.unwrap();
        gens.push(tokio::spawn(async move {
            let stmt = client
                .prepare(
                    "INSERT INTO assets VALUES (gen_random_uuid(), 't1', 'Table', 'lat/' || $1::text, 'n', NULL, '{}', 'ACTIVE', 1, now())",
                )
                .await
                .unwrap();
            let begin = Instant::now();
            for i in 0..per_writer * seconds {
                // Pace by the schedule, not by the previous insert, so the rate holds.
                let due = begin + Duration::from_micros(i * 1_000_000 / per_writer);
                tokio::time::sleep_until(due.into()).await;
                client.execute(&stmt, &[&format!("{w}-{i}")]).await.unwrap();
            }
        }));
    }
    for g in gens {
        g.await.unwrap();
    }
    let offered = total as f64 / started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.trigger();
    task.await.unwrap().unwrap();
    consumer.await.unwrap();
    let h = hist.lock().unwrap();
    println!(
        "latency: {total} single-row transactions at {offered:.0}/s achieved; commit→ack p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows = env_or("LILY_BENCH_ROWS", 1_000_000);
    let txns = env_or("LILY_BENCH_TXNS", 100_000);
    let runs = env_or("LILY_BENCH_RUNS", 5);
    let rate = env_or("LILY_BENCH_RATE", 5_000);
    let seconds = env_or("LILY_BENCH_SECONDS", 10);
    let cluster = PgCluster::start_with(
        ClusterOptions::default()
            .setting("max_wal_size", "8GB")
            .setting("checkpoint_timeout", "30min")
            .setting("max_replication_slots", "40")
            .setting("max_wal_senders", "40"),
    )
    .await
    .unwrap();
    cluster.create_database("bench").await.unwrap();
    let c = cluster.connect("bench").await.unwrap();
    c.batch_execute(DDL).await.unwrap();
    c.batch_execute(
        "CREATE SCHEMA lily; CREATE TABLE lily.checkpoints(slot_name text primary key, \
         confirmed_lsn pg_lsn not null, updated_at timestamptz not null default now());",
    )
    .await
    .unwrap();
    println!(
        "machine: {} cores; PostgreSQL {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        c.query_one("SHOW server_version", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    );

    throughput(
        &cluster,
        &c,
        "a_bulk",
        runs,
        rows,
        &BULK.replace("$1", &rows.to_string()),
    )
    .await;
    println!(
        "peak RSS of the bench process (engine in-process) after (a): {:.0} MB",
        peak_rss_mb()
    );
    c.batch_execute("TRUNCATE assets").await.unwrap();
    throughput(
        &cluster,
        &c,
        "b_small",
        runs,
        txns,
        &format!("CALL single_row_txns({txns})"),
    )
    .await;
    latency(&cluster, rate, seconds).await;
    println!(
        "peak RSS of the bench process at the end: {:.0} MB",
        peak_rss_mb()
    );
}
