//! Delivery that loses nothing: a pipeline whose webhook receiver errors, times out, throttles
//! with Retry-After and rejects for good. Every output row must end delivered or dead-lettered,
//! rows of one key must arrive in commit order, and a restart must not resend what the ledger
//! holds as delivered.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use lily_cdc::Capture;
use lily_pgharness::PgCluster;
use lily_runtime::ShutdownTrigger;
use lily_tests::capture_config;
use lily_webhook::fake::{whsec, FakeReceiver, Response};
use tokio::task::JoinSet;

const KEY: &[u8] = b"an-example-key-of-32-bytes-long!";

const SQL: &str = "-- sources: meta.classifications
SELECT tenant_id, tag, asset_guid, _commit_lsn, _commit_ts
FROM classifications WHERE _op = 'insert'
";

fn pipeline_toml(url_env: &str, secret_env: &str, attempts: u32) -> String {
    format!(
        r#"
name = "tags"
transform = "tags.sql"

[[source]]
table = "meta.classifications"

[[sink]]
name = "hook"
type = "webhook"
key = "asset_guid"

[sink.settings]
url_env = "{url_env}"
secret_env = "{secret_env}"
event_type = "metadata.tag.added"
timeout_ms = 300

[sink.delivery]
max_attempts = {attempts}
initial_backoff_ms = 20
max_backoff_ms = 200
concurrency = 4
"#
    )
}

struct Running {
    stop: ShutdownTrigger,
    capture: tokio::task::JoinHandle<Result<(), lily_cdc::CaptureError>>,
    tasks: JoinSet<()>,
}

impl Running {
    async fn stop(mut self) {
        self.stop.trigger();
        tokio::time::timeout(Duration::from_secs(60), self.capture)
            .await
            .expect("capture stops")
            .unwrap()
            .unwrap();
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn start(url: &str, dir: &Path, slot: &str) -> Running {
    let pg: lily_pg::ConnectionConfig = url.parse().unwrap();
    let catalog = lily_pg::connect(&pg, lily_pg::Role::Catalog).await.unwrap();
    let reader = lily_transform::MetastoreReader::new(pg.clone());
    let registry = lily_registry::registry();
    let ctx = lily_pipeline::PlanContext {
        catalog: &catalog,
        metastore: pg.clone(),
        functions: lily_transform::functions(&reader),
        registry: &registry,
    };
    let loaded =
        lily_pipeline::load(&dir.join("tags.toml"), &registry).unwrap_or_else(|p| panic!("{p:?}"));
    let planned = lily_pipeline::plan(&loaded, &ctx)
        .await
        .unwrap_or_else(|p| panic!("{p:?}"));
    let mut capture =
        Capture::new(capture_config(url, slot, slot, &["meta.classifications"])).unwrap();
    let sub = capture.subscribe("pipeline:tags");
    let (stop, stop_rx) = ShutdownTrigger::new();
    let mut tasks = JoinSet::new();
    let pipeline = lily_pipeline::start(planned, pg, stop_rx.clone(), &mut tasks)
        .await
        .unwrap();
    tasks.spawn(pipeline.run(sub, stop_rx.clone()));
    let capture = tokio::spawn(async move { capture.run(stop_rx).await });
    Running {
        stop,
        capture,
        tasks,
    }
}

async fn seed(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ('demo', 'Demo');
             INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name)
             SELECT meta.asset_guid('demo', 'col' || i), 'demo', 'Column', 'col' || i, 'col' || i
             FROM generate_series(1, 5) i;",
        )
        .await
        .unwrap();
}

/// Inserts `n` tags round-robin over 5 assets, one transaction each; returns (asset guid, tag)
/// in commit order.
async fn tag(client: &tokio_postgres::Client, from: usize, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in from..from + n {
        let qn = format!("col{}", i % 5 + 1);
        let t = format!("tag{i:04}");
        let row = client
            .query_one(
                "INSERT INTO meta.classifications (tenant_id, asset_guid, origin_guid, tag, source)
                 VALUES ('demo', meta.asset_guid('demo', $1), meta.asset_guid('demo', $1), $2, 'direct')
                 RETURNING asset_guid::text",
                &[&qn, &t],
            )
            .await
            .unwrap();
        out.push((row.get(0), t));
    }
    out
}

async fn dead_letters(client: &tokio_postgres::Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT record->>'tag', error FROM lily.dead_letters WHERE pipeline = 'tags' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// (asset, tag) of each accepted delivery, in arrival order.
fn accepted(fake: &FakeReceiver) -> Vec<(String, String)> {
    fake.deliveries()
        .iter()
        .filter(|d| d.accepted())
        .map(|d| {
            let data = &d.json.as_ref().unwrap()["data"];
            (
                data["asset_guid"].as_str().unwrap().to_string(),
                data["tag"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_ends_delivered_or_dead_lettered_in_key_order() {
    let cluster = PgCluster::start().await.unwrap();
    cluster.create_database("meta").await.unwrap();
    let url = cluster.url("meta");
    let client = cluster.connect("meta").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    seed(&client).await;

    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    // A hostile script: server errors, a timeout, throttling with Retry-After, a permanent 400,
    // then a 410 (gone, also permanent), then normal service.
    for r in [
        Response::Status(500),
        Response::Status(502),
        Response::Delay(Duration::from_millis(800)),
        Response::Status429 {
            retry_after_secs: 1,
        },
        Response::Status(400),
        Response::Status(503),
        Response::Status(410),
    ] {
        fake.push_response(r);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tags.sql"), SQL).unwrap();
    std::fs::write(
        dir.path().join("tags.toml"),
        pipeline_toml("LILY_T1_URL", "LILY_T1_SECRET", 6),
    )
    .unwrap();
    std::env::set_var("LILY_T1_URL", fake.url());
    std::env::set_var("LILY_T1_SECRET", whsec(KEY));

    let running = start(&url, dir.path(), "deliv1").await;
    lily_tests::wait_streaming(&client, "deliv1").await;
    let committed = tag(&client, 0, 60).await;

    // Everything ends delivered or dead-lettered.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = BTreeSet::from_iter(accepted(&fake).into_iter().map(|(_, t)| t)).len()
            + dead_letters(&client).await.len();
        if done >= committed.len() || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await;

    let got = accepted(&fake);
    let dead = dead_letters(&client).await;
    let delivered: BTreeSet<String> = got.iter().map(|(_, t)| t.clone()).collect();
    let lettered: BTreeSet<String> = dead.iter().map(|(t, _)| t.clone()).collect();
    let all: BTreeSet<String> = committed.iter().map(|(_, t)| t.clone()).collect();
    assert!(
        delivered.is_disjoint(&lettered),
        "a row both delivered and dead-lettered"
    );
    assert_eq!(
        delivered.union(&lettered).cloned().collect::<BTreeSet<_>>(),
        all,
        "rows lost"
    );
    // Exactly the two permanent rejections were dead-lettered, each with its reason.
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().any(|(_, e)| e.contains("400")), "{dead:?}");
    assert!(dead.iter().any(|(_, e)| e.contains("410")), "{dead:?}");
    // Every request was signed correctly.
    assert!(
        fake.deliveries().iter().all(|d| d.signature_valid),
        "bad signature"
    );
    // Per key, accepted deliveries follow commit order.
    let order: HashMap<&str, usize> = committed
        .iter()
        .enumerate()
        .map(|(i, (_, t))| (t.as_str(), i))
        .collect();
    let mut last: HashMap<String, usize> = HashMap::new();
    for (asset, t) in &got {
        let pos = order[t.as_str()];
        if let Some(prev) = last.insert(asset.clone(), pos) {
            assert!(prev <= pos, "asset {asset}: {t} arrived after a later tag");
        }
    }
    // The dead letters can be replayed once the receiver is fixed: covered by the CLI test.
}

/// A PostgreSQL restart under a running pipeline: capture reconnects and replays from the
/// confirmed position. Nothing is lost, and an id always names the same row (a replayed row
/// keeps its id; what the ledger holds is not sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_replays_with_the_same_ids() {
    let cluster = PgCluster::start().await.unwrap();
    cluster.create_database("meta").await.unwrap();
    let url = cluster.url("meta");
    let client = cluster.connect("meta").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    seed(&client).await;
    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tags.sql"), SQL).unwrap();
    std::fs::write(
        dir.path().join("tags.toml"),
        pipeline_toml("LILY_T2_URL", "LILY_T2_SECRET", 50),
    )
    .unwrap();
    std::env::set_var("LILY_T2_URL", fake.url());
    std::env::set_var("LILY_T2_SECRET", whsec(KEY));
    let running = start(&url, dir.path(), "deliv2").await;
    lily_tests::wait_streaming(&client, "deliv2").await;
    let mut committed = tag(&client, 0, 40).await;
    drop(client);
    cluster.restart().await.unwrap();
    let client = cluster.connect("meta").await.unwrap();
    committed.extend(tag(&client, 40, 40).await);
    let want: BTreeSet<String> = committed.iter().map(|(_, t)| t.clone()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let got: BTreeSet<String> = accepted(&fake).into_iter().map(|(_, t)| t).collect();
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await;
    let got: BTreeSet<String> = accepted(&fake).into_iter().map(|(_, t)| t).collect();
    assert_eq!(got, want, "rows lost across the restart");
    // Same id, same row: the numbering restarts with the replay.
    let mut by_id: HashMap<String, serde_json::Value> = HashMap::new();
    for d in fake.deliveries().iter().filter(|d| d.accepted()) {
        let data = d.json.as_ref().unwrap()["data"].clone();
        let id = d.id.clone().unwrap();
        if let Some(prev) = by_id.insert(id.clone(), data.clone()) {
            assert_eq!(prev, data, "id {id} named two different rows");
        }
    }
    eprintln!(
        "restart: {} rows delivered, {} ids received more than once",
        want.len(),
        fake.duplicate_count()
    );
}
