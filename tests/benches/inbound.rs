//! The 80-20 rule under load (BENCHMARKS.md): while one tenant's bulk load of column rows runs,
//! another tenant writes tables through the ingest API every 100 ms; how long until each table
//! is visible in the metastore (the API answered: committed) and on the CDC stream (a capture
//! consumer of `meta.assets` received it).
//!
//! `cargo bench -p lily-tests --bench inbound`; `LILY_BENCH_ROWS` (default 2,000,000) sets the
//! load's column rows (plus one table per 100 columns); `LILY_BENCH_MAX_LAG_MIB` (default: the
//! loader's) the slot lag the bulk lane waits at.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use lily_auth::{ApiKeys, Authenticator};
use lily_cdc::BatchKind;
use lily_pgharness::PgCluster;
use lily_tests::{capture_config, start_capture};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_estate(path: &std::path::Path, columns: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(
        f,
        r#"{{"type_name":"Connection","qualified_name":"wh","name":"wh"}}"#
    )
    .unwrap();
    writeln!(f, r#"{{"type_name":"Database","qualified_name":"wh/db","name":"db","parent_qualified_name":"wh"}}"#).unwrap();
    writeln!(f, r#"{{"type_name":"Schema","qualified_name":"wh/db/s","name":"s","parent_qualified_name":"wh/db"}}"#).unwrap();
    for i in 0..columns {
        let t = i / 100;
        if i % 100 == 0 {
            writeln!(f, r#"{{"type_name":"Table","qualified_name":"wh/db/s/t{t}","name":"t{t}","parent_qualified_name":"wh/db/s"}}"#).unwrap();
        }
        writeln!(f, r#"{{"type_name":"Column","qualified_name":"wh/db/s/t{t}/c{i}","name":"c{i}","parent_qualified_name":"wh/db/s/t{t}","attributes":{{"dataType":"varchar","order":{i}}}}}"#).unwrap();
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let rows = env_or("LILY_BENCH_ROWS", 2_000_000);
    let cluster = PgCluster::start().await.unwrap();
    cluster.create_database("inbound").await.unwrap();
    let url = cluster.url("inbound");
    let client = cluster.connect("inbound").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ('bulk', 'Bulk'), ('nrt', 'Near real time');",
        )
        .await
        .unwrap();
    let (key, _) = ApiKeys::uncached()
        .create(&client, "nrt", "bench", ["assets:write"])
        .await
        .unwrap();
    let pool = lily_ingest::pool(&url.parse().unwrap(), 4).unwrap();
    let app = lily_ingest::router(
        lily_ingest::Ingest::new(
            pool,
            Authenticator::new(ApiKeys::new(), None),
            lily_ingest::Hooks::default(),
        ),
        1 << 20,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        http.post(format!("{base}/v1/tenants/nrt/assets"))
            .bearer_auth(key.expose_secret())
            .json(&body)
            .send()
    };
    let r = post(serde_json::json!({"upsert": [
        {"type_name": "Connection", "qualified_name": "pg", "name": "pg"},
        {"type_name": "Database", "qualified_name": "pg/db", "name": "db", "parent_qualified_name": "pg"},
        {"type_name": "Schema", "qualified_name": "pg/db/s", "name": "s", "parent_qualified_name": "pg/db"}
    ]}))
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("estate.ndjson");
    write_estate(&file, rows);

    // The CDC stream of meta.assets: note when each near-real-time table arrives.
    let (capture, mut sub) = start_capture(
        capture_config(&url, "inbound", "inbound", &["meta.assets"]),
        "probe",
    );
    lily_tests::wait_streaming(&client, "inbound").await;
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let streamed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (seen2, streamed2) = (seen.clone(), streamed.clone());
    let consumer = tokio::spawn(async move {
        while let Some(d) = sub.recv().await {
            if let BatchKind::Rows { records, .. } = &d.batch.kind {
                let now = Instant::now();
                streamed2.fetch_add(
                    records.num_rows() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                let tenants = records
                    .column_by_name("tenant_id")
                    .unwrap()
                    .as_string::<i32>();
                let names = records
                    .column_by_name("qualified_name")
                    .unwrap()
                    .as_string::<i32>();
                let mut s = seen2.lock().unwrap();
                for i in 0..records.num_rows() {
                    if tenants.value(i) == "nrt" {
                        s.entry(names.value(i).to_string()).or_insert(now);
                    }
                }
            }
            d.ack();
        }
    });

    let writers_cfg: lily_pg::ConnectionConfig = url.parse().unwrap();
    let mut load_client = lily_pg::connect(&writers_cfg, lily_pg::Role::Load)
        .await
        .unwrap();
    let loading = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let loading2 = loading.clone();
    let load = tokio::spawn(async move {
        let loader = lily_load::Loader::new(load_config()).with_connect(writers_cfg);
        let request = lily_load::LoadRequest::new("bulk", "bench", &file);
        let report = loader.load(&mut load_client, &request).await.unwrap();
        loading2.store(false, std::sync::atomic::Ordering::Release);
        report
    });

    let mut sent: Vec<(String, Instant, Duration)> = Vec::new();
    let mut i = 0;
    while loading.load(std::sync::atomic::Ordering::Acquire) {
        let qn = format!("pg/db/s/t{i}");
        let t = Instant::now();
        let r = post(serde_json::json!({"upsert": [
            {"type_name": "Table", "qualified_name": qn, "name": format!("t{i}"), "parent_qualified_name": "pg/db/s"}
        ]}))
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        sent.push((qn, t, t.elapsed()));
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = load.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen.lock().unwrap().len() < sent.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    capture.stop().await.unwrap();
    let _ = consumer.await;
    let seen = seen.lock().unwrap();
    let mut api: Vec<f64> = sent.iter().map(|s| s.2.as_secs_f64() * 1e3).collect();
    let mut cdc: Vec<f64> = sent
        .iter()
        .map(|(qn, t, _)| {
            seen.get(qn)
                .map(|s| (*s - *t).as_secs_f64() * 1e3)
                .unwrap_or(f64::INFINITY)
        })
        .collect();
    println!(
        "inbound: load of {} rows ({} bulk) in {:.1} s = {:.0} bulk rows/s (chunks paced {:.1} s in all); {} changes streamed",
        report.structural.rows + report.bulk.rows,
        report.bulk.rows,
        report.elapsed.as_secs_f64(),
        report.bulk.rows_per_sec(),
        report.bulk.paced.as_secs_f64(),
        streamed.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "inbound: {} tables via the API during the load: visible in the metastore (API answered) p50 {:.1} ms, p99 {:.1} ms; on the CDC stream p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        sent.len(),
        pct(&mut api, 0.5),
        pct(&mut api, 0.99),
        pct(&mut cdc, 0.5),
        pct(&mut cdc, 0.99),
        pct(&mut cdc, 1.0),
    );
}

/// The loader's defaults, with `LILY_BENCH_MAX_LAG_MIB` if set.
fn load_config() -> lily_load::LoadConfig {
    let mut cfg = lily_load::LoadConfig::default();
    if let Ok(mib) = std::env::var("LILY_BENCH_MAX_LAG_MIB") {
        let mib: u64 = mib
            .parse()
            .expect("LILY_BENCH_MAX_LAG_MIB: a whole number of MiB");
        cfg.max_replication_lag_bytes = Some(mib << 20);
    }
    println!(
        "loader pacing: slot lag limit {:?} bytes",
        cfg.max_replication_lag_bytes
    );
    cfg
}
