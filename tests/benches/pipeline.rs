//! Pipeline benchmarks (BENCHMARKS.md): the transform stage alone, and end to end from a commit
//! in PostgreSQL to a signed webhook received.
//!
//! `cargo bench -p lily-tests --bench pipeline` runs all three; `LILY_BENCH_ONLY=overhead,
//! throughput,e2e` picks, `LILY_BENCH_RATE` (default 5000) and `LILY_BENCH_SECONDS` (default 10)
//! shape the end-to-end run (`LILY_BENCH_LINGER_US`, default 2000, is capture's linger;
//! `LILY_BENCH_CONCURRENCY`, default 16, the webhook sink's; `LILY_BENCH_SQL` another transform
//! file), `LILY_BENCH_RUNS` (default 5) repeats the throughput run.
//!
//! - overhead: one 1-row change batch through a filter + projection transform, 20,000 times;
//!   p50/p99/max of the run call (planning happened once, before).
//! - throughput: 100,000 captured changes (13 batches) through the same transform, ten passes,
//!   = 1M changes per run; the median of the runs.
//! - e2e: single-row transactions tagging columns PII at a fixed rate, through capture, the
//!   `pii_tagged_columns.sql` transform (one metastore look-up per batch) and the webhook sink,
//!   into a Standard Webhooks receiver on loopback; latency from the commit timestamp to the
//!   receiver reading the request.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_array::RecordBatch;
use lily_cdc::{BatchKind, Capture};
use lily_pgharness::PgCluster;
use lily_runtime::ShutdownTrigger;
use lily_tests::capture_config;
use lily_transform::{SourceTable, Transform};
use lily_webhook::fake::{whsec, FakeReceiver};

const FILTER_PROJECT: &str = "SELECT tenant_id, tag, asset_guid, _op, _commit_lsn, _commit_ts
FROM classifications WHERE _op = 'insert' AND tag IN ('PII', 'GDPR')";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wanted(name: &str) -> bool {
    match std::env::var("LILY_BENCH_ONLY") {
        Ok(v) => v.split(',').any(|p| p.trim() == name),
        Err(_) => true,
    }
}

async fn seed(client: &tokio_postgres::Client, columns: usize) {
    client
        .batch_execute(&format!(
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ('demo', 'Demo');
             INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name, parent_guid)
             VALUES (meta.asset_guid('demo', 'conn'), 'demo', 'Connection', 'conn', 'conn', NULL),
                    (meta.asset_guid('demo', 'conn/db/sch/t'), 'demo', 'Table', 'conn/db/sch/t', 't',
                     meta.asset_guid('demo', 'conn'));
             INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name, parent_guid)
             SELECT meta.asset_guid('demo', 'conn/db/sch/t/c' || i), 'demo', 'Column',
                    'conn/db/sch/t/c' || i, 'c' || i, meta.asset_guid('demo', 'conn/db/sch/t')
             FROM generate_series(1, {columns}) i;"
        ))
        .await
        .unwrap();
}

/// 100,000 captured inserts into meta.classifications (half PII), as capture batches them.
async fn captured_batches(cluster: &PgCluster) -> (Vec<RecordBatch>, SourceTable) {
    cluster.create_database("tput").await.unwrap();
    let url = cluster.url("tput");
    let client = cluster.connect("tput").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    seed(&client, 50_000).await;
    let mut capture = Capture::new(capture_config(
        &url,
        "tput",
        "tput",
        &["meta.classifications"],
    ))
    .unwrap();
    let mut sub = capture.subscribe("bench");
    let (stop, stop_rx) = ShutdownTrigger::new();
    let task = tokio::spawn(async move { capture.run(stop_rx).await });
    lily_tests::wait_streaming(&client, "tput").await;
    client
        .batch_execute(
            "INSERT INTO meta.classifications (tenant_id, asset_guid, origin_guid, tag, source)
             SELECT 'demo', g, g, t, 'direct'
             FROM (SELECT meta.asset_guid('demo', 'conn/db/sch/t/c' || i) g,
                          CASE WHEN j = 1 THEN 'PII' ELSE 'Internal' END t
                   FROM generate_series(1, 50000) i, generate_series(1, 2) j) x",
        )
        .await
        .unwrap();
    let mut batches = Vec::new();
    let mut rows = 0;
    while rows < 100_000 {
        let d = sub.recv().await.unwrap();
        if let BatchKind::Rows { records, .. } = &d.batch.kind {
            rows += records.num_rows();
            batches.push(records.clone());
        }
        d.ack();
    }
    let schema = lily_pipeline::catalog::table_schema(&client, "meta.classifications")
        .await
        .unwrap()
        .unwrap();
    stop.trigger();
    task.await.unwrap().unwrap();
    (
        batches,
        SourceTable {
            name: "classifications".into(),
            schema: schema.arrow.clone(),
            filter: None,
        },
    )
}

async fn overhead(batches: &[RecordBatch], source: &SourceTable) {
    let mut t = Transform::plan(FILTER_PROJECT, std::slice::from_ref(source), &[])
        .await
        .unwrap();
    // A PII row, so the row passes the filter and is projected.
    let batch = &batches[0];
    let one = (0..batch.num_rows())
        .map(|i| batch.slice(i, 1))
        .find(|b| lily_tests::batch_objects(b)[0]["tag"] == serde_json::Value::String("PII".into()))
        .unwrap();
    for _ in 0..1000 {
        t.run("classifications", one.clone()).await.unwrap();
    }
    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for _ in 0..20_000 {
        let s = Instant::now();
        let out = t.run("classifications", one.clone()).await.unwrap();
        h.record(s.elapsed().as_nanos() as u64).unwrap();
        assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    }
    println!(
        "overhead: 1-row batch, filter+projection, 20000 runs: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs",
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.value_at_quantile(0.999) as f64 / 1e3,
        h.max() as f64 / 1e3
    );
}

async fn throughput(batches: &[RecordBatch], source: &SourceTable, runs: u64) {
    let mut t = Transform::plan(FILTER_PROJECT, std::slice::from_ref(source), &[])
        .await
        .unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut rates = Vec::new();
    for _ in 0..runs {
        let s = Instant::now();
        let mut out = 0;
        for _ in 0..10 {
            for b in batches {
                out += t
                    .run("classifications", b.clone())
                    .await
                    .unwrap()
                    .iter()
                    .map(|b| b.num_rows())
                    .sum::<usize>();
            }
        }
        let secs = s.elapsed().as_secs_f64();
        assert_eq!(out, rows * 10 / 2);
        rates.push((rows * 10) as f64 / secs);
    }
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "throughput: {} changes per run in {} batches, {runs} runs: median {:.0} rows/s (min {:.0}, max {:.0})",
        rows * 10,
        batches.len() * 10,
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
}

async fn e2e(cluster: &PgCluster, rate: u64, seconds: u64) {
    cluster.create_database("e2e").await.unwrap();
    let url = cluster.url("e2e");
    let client = cluster.connect("e2e").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    let total = rate * seconds;
    seed(&client, total as usize).await;
    let key: [u8; 32] = *b"bench-key-of-thirty-two-bytes!!!";
    let fake = FakeReceiver::start(vec![key.to_vec()]).await;
    std::env::set_var("LILY_BENCH_HOOK_URL", fake.url());
    std::env::set_var("LILY_BENCH_HOOK_SECRET", whsec(&key));
    let dir = tempfile::tempdir().unwrap();
    let sql_dir = manifest_dir().join("../sql");
    std::fs::write(
        dir.path().join("pii.toml"),
        format!(
            r#"
name = "pii"
transform = "{}"
[[source]]
table = "meta.classifications"
[[sink]]
name = "hook"
type = "webhook"
key = "column_guid"
[sink.settings]
url_env = "LILY_BENCH_HOOK_URL"
secret_env = "LILY_BENCH_HOOK_SECRET"
event_type = "metadata.column.tagged"
[sink.delivery]
concurrency = {}
"#,
            std::env::var("LILY_BENCH_SQL")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|_| sql_dir.join("pii_tagged_columns.sql"))
                .display(),
            env_or("LILY_BENCH_CONCURRENCY", 16)
        ),
    )
    .unwrap();
    let pg: lily_pg::ConnectionConfig = url.parse().unwrap();
    let reader = lily_transform::MetastoreReader::new(pg.clone());
    let registry = lily_registry::registry();
    let ctx = lily_pipeline::PlanContext {
        catalog: &client,
        metastore: pg.clone(),
        functions: lily_transform::functions(&reader),
        registry: &registry,
    };
    let loaded = lily_pipeline::load(&dir.path().join("pii.toml"), &registry).unwrap();
    let planned = lily_pipeline::plan(&loaded, &ctx).await.unwrap();
    let mut cfg = capture_config(&url, "e2e", "e2e", &["meta.classifications"]);
    cfg.status_interval = Some(Duration::from_millis(500));
    // A 2 ms linger: at thousands of single-row commits a second, batches of about ten rows, so
    // one metastore look-up per ten rows; 1 ms measured worse (more look-ups), 5 ms adds its wait.
    cfg.batch_linger = Duration::from_micros(env_or("LILY_BENCH_LINGER_US", 2_000));
    let mut capture = Capture::new(cfg).unwrap();
    let sub = capture.subscribe("pipeline:pii");
    // A second consumer of the same stream: commit → batch in hand, to split the latency.
    let mut probe = capture.subscribe("probe");
    let probe_hist = Arc::new(std::sync::Mutex::new(
        hdrhistogram::Histogram::<u64>::new(3).unwrap(),
    ));
    let ph = probe_hist.clone();
    tokio::spawn(async move {
        use arrow_array::cast::AsArray;
        while let Some(d) = probe.recv().await {
            if let BatchKind::Rows { records, .. } = &d.batch.kind {
                let now_us = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_micros() as i64;
                let ts = records
                    .column_by_name("_commit_ts")
                    .unwrap()
                    .as_primitive::<arrow_array::types::TimestampMicrosecondType>();
                let mut h = ph.lock().unwrap();
                for i in 0..ts.len() {
                    h.record((now_us - ts.value(i)).max(0) as u64).unwrap();
                }
            }
            d.ack();
        }
    });
    let (stop, stop_rx) = ShutdownTrigger::new();
    let mut tasks = tokio::task::JoinSet::new();
    let pipeline = lily_pipeline::start(planned, pg, stop_rx.clone(), &mut tasks)
        .await
        .unwrap();
    tasks.spawn(pipeline.run(sub, stop_rx.clone()));
    let cap = tokio::spawn(async move { capture.run(stop_rx).await });
    lily_tests::wait_streaming(&client, "e2e").await;

    let writers = 5u64;
    let per_writer = rate / writers;
    let started = Instant::now();
    let mut gens = Vec::new();
    for w in 0..writers {
        let c = cluster.connect("e2e").await.unwrap();
        gens.push(tokio::spawn(async move {
            let stmt = c
                .prepare(
                    "INSERT INTO meta.classifications (tenant_id, asset_guid, origin_guid, tag, source)
                     VALUES ('demo', meta.asset_guid('demo', $1), meta.asset_guid('demo', $1), 'PII', 'direct')",
                )
                .await
                .unwrap();
            let begin = Instant::now();
            for i in 0..per_writer * seconds {
                let due = begin + Duration::from_micros(i * 1_000_000 / per_writer);
                tokio::time::sleep_until(due.into()).await;
                let col = format!("conn/db/sch/t/c{}", i * writers + w + 1);
                c.execute(&stmt, &[&col]).await.unwrap();
            }
        }));
    }
    for g in gens {
        g.await.unwrap();
    }
    let offered = total as f64 / started.elapsed().as_secs_f64();
    let all = fake
        .wait_for_accepted(total as usize, Duration::from_secs(120))
        .await;
    stop.trigger();
    cap.await.unwrap().unwrap();
    while tasks.join_next().await.is_some() {}
    assert!(
        all,
        "only {} of {total} webhooks arrived",
        fake.accepted_ids().len()
    );

    // Receipt wall-clock time from the fake's Instant, against the commit time in the body.
    let (i0, s0) = (Instant::now(), SystemTime::now());
    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for d in fake.deliveries().iter().filter(|d| d.accepted()) {
        let received = s0 - (i0 - d.received_at);
        let received_us = received.duration_since(UNIX_EPOCH).unwrap().as_micros() as i64;
        let ts = d.json.as_ref().unwrap()["timestamp"].as_str().unwrap();
        let commit_us = parse_rfc3339_us(ts);
        h.record((received_us - commit_us).max(0) as u64).unwrap();
    }
    {
        let p = probe_hist.lock().unwrap();
        println!(
            "e2e: commit → batch at a plain consumer of the same stream: p50 {:.2} ms, p99 {:.2} ms",
            p.value_at_quantile(0.5) as f64 / 1e3,
            p.value_at_quantile(0.99) as f64 / 1e3
        );
    }
    println!(
        "e2e: {total} single-row commits at {offered:.0}/s offered; commit → webhook received: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; duplicates {}",
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.value_at_quantile(0.999) as f64 / 1e3,
        h.max() as f64 / 1e3,
        fake.duplicate_count()
    );
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` → microseconds since the epoch (UTC, years 1970..).
fn parse_rfc3339_us(s: &str) -> i64 {
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let (y, mo, d) = (n(0, 4), n(5, 7), n(8, 10));
    let (h, mi, sec) = (n(11, 13), n(14, 16), n(17, 19));
    let frac = s[20..s.len() - 1].to_string();
    let micros = format!("{frac:0<6}")[..6].parse::<i64>().unwrap();
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000) + micros
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LILY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cluster = PgCluster::start_with(
            lily_pgharness::ClusterOptions::default().setting("max_wal_senders", "10"),
        )
        .await
        .unwrap();
        if wanted("overhead") || wanted("throughput") {
            let (batches, source) = captured_batches(&cluster).await;
            let batches = Arc::new(batches);
            if wanted("overhead") {
                overhead(&batches, &source).await;
            }
            if wanted("throughput") {
                throughput(&batches, &source, env_or("LILY_BENCH_RUNS", 5)).await;
            }
        }
        if wanted("e2e") {
            e2e(
                &cluster,
                env_or("LILY_BENCH_RATE", 5_000),
                env_or("LILY_BENCH_SECONDS", 10),
            )
            .await;
        }
    });
}

/// This package's directory, read when the test runs: a build directory shared between
/// checkouts may hold a binary compiled in another one, so the compile-time value could point
/// there.
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
}
