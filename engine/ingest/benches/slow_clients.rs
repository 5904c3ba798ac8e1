//! Slow and silent clients against the ingest API (BENCHMARKS.md, "Ingest API under slow
//! clients"): `cargo bench --workspace --bench slow_clients`.
//!
//! An authenticated client writes one asset per request, `LILY_BENCH_REQUESTS` times (default
//! 2,000), first on a quiet server, then while another process holds `LILY_BENCH_IDLE`
//! (default 10,000) anonymous connections on unfinished headers and `LILY_BENCH_SLOW` (default
//! 200) authenticated clients trickling request bodies, each reconnecting as soon as the
//! server drops it. The server is the engine's own (`lily_ingest::server`, default limits).
//! Prints p50, p99 and max of both phases and the ratio of the p99s (target ≤ 2).

use std::io::BufRead;
use std::time::{Duration, Instant};

use lily_auth::{ApiKeys, Authenticator};
use lily_pgharness::PgCluster;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Ok(addr) = std::env::var("LILY_BENCH_ATTACK") {
        rt.block_on(attack(addr));
    } else {
        rt.block_on(measure());
    }
}

/// The attacker process: holds the idle and slow connections until killed; says `ready` once
/// every one is open.
async fn attack(addr: String) {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let idle = env_or("LILY_BENCH_IDLE", 10_000);
    let slow = env_or("LILY_BENCH_SLOW", 200);
    let key = std::env::var("LILY_BENCH_KEY").unwrap();
    let (opened_tx, mut opened) = tokio::sync::mpsc::unbounded_channel::<()>();
    for _ in 0..idle {
        let (addr, opened_tx) = (addr.clone(), opened_tx.clone());
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    .await
                    .is_err()
                {
                    continue;
                }
                if std::mem::take(&mut first) {
                    let _ = opened_tx.send(());
                }
                let mut buf = [0u8; 256];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            }
        });
    }
    for _ in 0..slow {
        let (addr, key, opened_tx) = (addr.clone(), key.clone(), opened_tx.clone());
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let Ok(s) = tokio::net::TcpStream::connect(&addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let (mut r, mut w) = s.into_split();
                let head = format!(
                    "POST /v1/tenants/acme/assets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
                     Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{{\"upsert\": ["
                );
                if w.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                if std::mem::take(&mut first) {
                    let _ = opened_tx.send(());
                }
                let trickle = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if w.write_all(b" ").await.is_err() {
                            return;
                        }
                    }
                });
                let mut buf = [0u8; 256];
                while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
                trickle.abort();
            }
        });
    }
    drop(opened_tx);
    for _ in 0..idle + slow {
        opened.recv().await;
    }
    println!("ready");
    std::future::pending::<()>().await;
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// One asset per request, sequentially on one keep-alive connection.
async fn phase(base: &str, key: &str, tag: &str, n: usize) -> Vec<Duration> {
    let http = reqwest::Client::new();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let qn = format!("conn/{tag}/{i}");
        let body =
            json!({"upsert": [{"type_name": "Connection", "qualified_name": qn, "name": "c"}]});
        let started = Instant::now();
        let resp = http
            .post(format!("{base}/v1/tenants/acme/assets"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            200,
            "{}",
            resp.text().await.unwrap()
        );
        lat.push(started.elapsed());
    }
    lat.sort();
    lat
}

fn report(name: &str, lat: &[Duration]) -> Duration {
    let p99 = pct(lat, 0.99);
    println!(
        "{name}: {} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        pct(lat, 0.5).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
    p99
}

async fn measure() {
    let requests = env_or("LILY_BENCH_REQUESTS", 2_000);
    let pg = PgCluster::start().await.unwrap();
    pg.create_database("ingest").await.unwrap();
    let client = pg.connect("ingest").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    client
        .batch_execute("INSERT INTO meta.tenants (tenant_id, name) VALUES ('acme', 'Acme')")
        .await
        .unwrap();
    let (key, _) = ApiKeys::uncached()
        .create(&client, "acme", "bench", ["assets:write"].iter())
        .await
        .unwrap();
    let key = key.expose_secret().to_string();
    let ingest = lily_ingest::Ingest::new(
        lily_ingest::pool(&pg.connection("ingest"), 8).unwrap(),
        Authenticator::new(ApiKeys::new(), None),
        lily_ingest::Hooks::default(),
    );
    let app = lily_ingest::router(ingest, 4 << 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let (_stop, shutdown) = lily_runtime::ShutdownTrigger::new();
    tokio::spawn(lily_ingest::server::serve(
        listener,
        app,
        shutdown,
        lily_ingest::server::ServerLimits::default(),
    ));

    // Warm-up (connection, key cache, plans), then the quiet phase.
    phase(&base, &key, "warm", 200).await;
    let quiet = phase(&base, &key, "quiet", requests).await;

    let mut attacker = std::process::Command::new(std::env::current_exe().unwrap())
        .env("LILY_BENCH_ATTACK", addr.to_string())
        .env("LILY_BENCH_KEY", &key)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let opened = Instant::now();
    let stdout = attacker.stdout.take().unwrap();
    tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
    })
    .await
    .unwrap();
    println!(
        "{} idle and {} slow-body connections open in {:.1} s",
        env_or("LILY_BENCH_IDLE", 10_000),
        env_or("LILY_BENCH_SLOW", 200),
        opened.elapsed().as_secs_f64()
    );
    let attacked = phase(&base, &key, "attacked", requests).await;
    attacker.kill().unwrap();
    let _ = attacker.wait();

    let q = report("quiet", &quiet);
    let a = report("under slow clients", &attacked);
    println!(
        "p99 ratio under slow clients / quiet: {:.2} (target ≤ 2)",
        a.as_secs_f64() / q.as_secs_f64()
    );
}
