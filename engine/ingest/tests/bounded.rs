//! Every wait on the request path is bounded: a held lock, an exhausted pool or a slow
//! statement give a prompt, retryable 503, and a caller without credentials is refused without
//! waiting for the database at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lily_auth::{ApiKeys, Authenticator};
use lily_ingest::{Hooks, Ingest, Limits};
use lily_pgharness::PgCluster;
use serde_json::{json, Value};

struct Setup {
    cluster: PgCluster,
    admin: tokio_postgres::Client,
    key: String,
}

async fn setup() -> Setup {
    let cluster = PgCluster::start().await.unwrap();
    cluster.create_database("ingest").await.unwrap();
    let admin = cluster.connect("ingest").await.unwrap();
    lily_metastore::migrate(&admin).await.unwrap();
    admin
        .batch_execute("INSERT INTO meta.tenants (tenant_id, name) VALUES ('acme', 'Acme')")
        .await
        .unwrap();
    let (key, _) = ApiKeys::uncached()
        .create(&admin, "acme", "writer", ["assets:write"].iter())
        .await
        .unwrap();
    Setup {
        key: key.expose_secret().to_string(),
        cluster,
        admin,
    }
}

/// Serves the API on a pool of `size` connections with `limits`.
async fn serve(s: &Setup, size: usize, limits: Limits) -> (String, Arc<Ingest>) {
    let pool = lily_ingest::pool_with_wait(&s.cluster.connection("ingest"), size, limits.pool_wait)
        .unwrap();
    let api = Ingest::with_limits(
        pool,
        Authenticator::new(ApiKeys::new(), None),
        Hooks::default(),
        None,
        limits,
    );
    let app = lily_ingest::router(api.clone(), 1 << 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, api)
}

fn asset(name: &str) -> Value {
    json!({"upsert": [{"type_name": "Connection", "qualified_name": name, "name": name}]})
}

/// (status, `retry-after` present, body, how long it took).
async fn write(base: &str, key: Option<&str>, name: &str) -> (u16, bool, Value, Duration) {
    let started = Instant::now();
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v1/tenants/acme/assets"))
        .json(&asset(name));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp.headers().contains_key("retry-after");
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, retry, body, started.elapsed())
}

async fn hold_assets_lock(s: &Setup) -> tokio_postgres::Client {
    let holder = s.cluster.connect("ingest").await.unwrap();
    holder
        .batch_execute("BEGIN; LOCK TABLE meta.assets IN EXCLUSIVE MODE")
        .await
        .unwrap();
    holder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_and_an_exhausted_pool_give_prompt_503s() {
    let s = setup().await;
    let limits = Limits {
        pool_wait: Duration::from_millis(300),
        statement_timeout: Duration::from_secs(10),
        lock_timeout: Duration::from_millis(1500),
        request_timeout: Duration::from_secs(20),
    };
    // One connection, so the first blocked write exhausts the pool.
    let (base, _) = serve(&s, 1, limits).await;
    // Warm the key cache: later writes authenticate without a connection.
    let (st, _, body, _) = write(&base, Some(&s.key), "warm").await;
    assert_eq!(st, 200, "{body}");

    let holder = hold_assets_lock(&s).await;
    let blocked = {
        let (base, key) = (base.clone(), s.key.clone());
        tokio::spawn(async move { write(&base, Some(&key), "blocked").await })
    };
    // Let the blocked write take the only connection.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // No credentials: refused at once, though no connection is free.
    let (st, _, body, took) = write(&base, None, "anon").await;
    assert_eq!(st, 401, "{body}");
    assert!(
        took < Duration::from_millis(250),
        "anonymous 401 took {took:?}"
    );
    // A malformed key: the same.
    let (st, _, _, took) = write(&base, Some("lily_nonsense"), "anon").await;
    assert_eq!(st, 401);
    assert!(
        took < Duration::from_millis(250),
        "malformed key took {took:?}"
    );

    // An authenticated write finds no connection within the pool wait: 503, retry.
    let (st, retry, body, took) = write(&base, Some(&s.key), "second").await;
    assert_eq!(st, 503, "{body}");
    assert!(retry, "503 without retry-after");
    assert!(took < Duration::from_secs(2), "pool wait took {took:?}");

    // The blocked write gives up at the lock timeout: 503, retry, nothing written.
    let (st, retry, body, took) = blocked.await.unwrap();
    assert_eq!(st, 503, "{body}");
    assert!(retry);
    assert!(took < Duration::from_secs(5), "lock wait took {took:?}");

    holder.batch_execute("ROLLBACK").await.unwrap();
    let (st, _, body, _) = write(&base, Some(&s.key), "after").await;
    assert_eq!(st, 200, "{body}");
    let names: Vec<String> = s
        .admin
        .query("SELECT qualified_name FROM meta.assets ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["after", "warm"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_ends_at_its_deadline_and_writes_nothing() {
    let s = setup().await;
    let limits = Limits {
        pool_wait: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(30),
        lock_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(1),
    };
    let (base, _) = serve(&s, 2, limits).await;
    let holder = hold_assets_lock(&s).await;
    let (st, retry, body, took) = write(&base, Some(&s.key), "late").await;
    assert_eq!(st, 503, "{body}");
    assert!(retry);
    assert_eq!(body["error"]["code"], "timeout", "{body}");
    assert!(took < Duration::from_secs(3), "deadline took {took:?}");
    holder.batch_execute("ROLLBACK").await.unwrap();
    // The abandoned transaction was rolled back: the row is not there, and the API works.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (st, _, body, _) = write(&base, Some(&s.key), "on-time").await;
    assert_eq!(st, 200, "{body}");
    let late: i64 = s
        .admin
        .query_one(
            "SELECT count(*) FROM meta.assets WHERE qualified_name = 'late'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(late, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_metastore() {
    let s = setup().await;
    let (_, api) = serve(&s, 2, Limits::default()).await;
    assert!(api.metastore_answers(Duration::from_secs(2)).await);
    s.cluster.stop().await.unwrap();
    let started = Instant::now();
    assert!(!api.metastore_answers(Duration::from_secs(1)).await);
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A caller without credentials is answered from the headers: the body it announces is never
/// waited for, so holding connections with large unsent bodies costs the server nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_callers_are_refused_before_their_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup().await;
    let (base, _) = serve(&s, 2, Limits::default()).await;
    let addr = base.trim_start_matches("http://").to_string();
    for (path, auth) in [
        ("/v1/tenants/acme/assets", ""),
        (
            "/v1/tenants/acme/lineage",
            "Authorization: Bearer lily_bad\r\n",
        ),
        ("/v1/tenants/acme/classifications", ""),
    ] {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}\
             Content-Length: 900000\r\n\r\n{{\"upsert\""
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
            .await
            .expect("answered before the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
        assert!(started.elapsed() < Duration::from_secs(1), "{path}");
    }
}
