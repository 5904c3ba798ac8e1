//! Ingest API throughput and latency (BENCHMARKS.md): `cargo bench -p lily-ingest --bench ingest`.
//! Four concurrent clients post batches of `LILY_BENCH_BATCH` (default 500) column assets under
//! one table for `LILY_BENCH_SECONDS` (default 10); prints assets/s and the request latency
//! percentiles. Also single-asset requests (the near-real-time shape) for the same time.

use std::time::{Duration, Instant};

use lily_auth::{ApiKeys, Authenticator};
use lily_pgharness::PgCluster;
use serde_json::json;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run(base: &str, key: &str, batch: u64, seconds: u64, tag: &str) {
    let clients = 4u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = format!("{base}/v1/tenants/acme/assets");
        let key = key.to_string();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut lat = Vec::new();
            let mut n = 0u64;
            let mut i = 0u64;
            while started.elapsed() < Duration::from_secs(seconds) {
                let upsert: Vec<_> = (0..batch)
                    .map(|j| {
                        let qn = format!("conn/db/sch/t/{tag}{c}_{i}_{j}");
                        json!({"type_name": "Column", "qualified_name": qn, "name": "c",
                               "parent_qualified_name": "conn/db/sch/t",
                               "attributes": {"dataType": "varchar"}})
                    })
                    .collect();
                let t = Instant::now();
                let resp = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({ "upsert": upsert }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    resp.status().as_u16(),
                    200,
                    "{}",
                    resp.text().await.unwrap()
                );
                lat.push(t.elapsed());
                n += batch;
                i += 1;
            }
            (n, lat)
        }));
    }
    let mut total = 0;
    let mut lat = Vec::new();
    for t in tasks {
        let (n, l) = t.await.unwrap();
        total += n;
        lat.extend(l);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "ingest: {batch} assets/request, 4 clients, {} requests: {:.0} assets/s; request p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        total as f64 / secs,
        q(0.5),
        q(0.99),
        q(1.0)
    );
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LILY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let cluster = PgCluster::start().await.unwrap();
            cluster.create_database("ingest").await.unwrap();
            let client = cluster.connect("ingest").await.unwrap();
            lily_metastore::migrate(&client).await.unwrap();
            client
                .batch_execute(
                    "INSERT INTO meta.tenants (tenant_id, name) VALUES ('acme', 'Acme');
                     INSERT INTO meta.assets (guid, tenant_id, type_name, name, qualified_name, parent_guid)
                     VALUES (meta.asset_guid('acme', 'conn/db/sch/t'), 'acme', 'Table', 't', 'conn/db/sch/t', NULL);",
                )
                .await
                .unwrap();
            let (key, _) = ApiKeys::uncached()
                .create(&client, "acme", "bench", ["assets:write"])
                .await
                .unwrap();
            let pool = lily_ingest::pool(&cluster.connection("ingest"), 8).unwrap();
            let app = lily_ingest::router(
                lily_ingest::Ingest::new(
                    pool,
                    Authenticator::new(ApiKeys::new(), None),
                    lily_ingest::Hooks::default(),
                ),
                64 * 1024 * 1024,
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            let seconds = env_or("LILY_BENCH_SECONDS", 10);
            run(&base, key.expose_secret(), env_or("LILY_BENCH_BATCH", 500), seconds, "b").await;
            run(&base, key.expose_secret(), 1, seconds, "s").await;
        });
}
