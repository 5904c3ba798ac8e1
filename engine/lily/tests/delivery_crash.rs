//! `kill -9` of the `lily` binary while a webhook pipeline is delivering, then a restart.
//!
//! What it proves: every committed row reaches the receiver (nothing lost), and no record the
//! ledger held as delivered when the engine died is sent again by the second run; the only
//! repeats are records that were in flight (sent, not yet in the ledger) at the kill, and they
//! carry the same `webhook-id`, so the receiver can drop them.
//!
//! Run with `cargo test -p lily --test delivery_crash -- --nocapture` to see the figures.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lily_pgharness::PgCluster;
use lily_webhook::fake::{whsec, FakeReceiver, Response};

const KEY: &[u8] = b"an-example-key-of-32-bytes-long!";
const ROWS: usize = 400;

/// The engine as a child process; SIGKILLed on drop too, so a failing assertion does not leave
/// it running.
struct Engine(Child);

impl Engine {
    /// SIGKILL, and reap.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(config: &Path, dir: &Path, label: &str, url: &str, hook: &str) -> Engine {
    let child = Command::new(env!("CARGO_BIN_EXE_lily"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("LILY_SRC_URL", url)
        .env("LILY_HOOK_URL", hook)
        .env("LILY_HOOK_SECRET", whsec(KEY))
        .env("LILY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(File::create(dir.join(format!("{label}.out"))).unwrap())
        .stderr(File::create(dir.join(format!("{label}.err"))).unwrap())
        .spawn()
        .expect("spawn lily");
    Engine(child)
}

async fn ledger_ids(client: &tokio_postgres::Client) -> HashSet<String> {
    client
        .query(
            "SELECT record_id FROM lily.delivery_ledger WHERE pipeline = 'tags' AND outcome = 'delivered'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_loses_nothing_and_does_not_resend_what_the_ledger_holds() {
    let cluster = PgCluster::start().await.unwrap();
    cluster.create_database("meta").await.unwrap();
    let url = cluster.url("meta");
    let client = cluster.connect("meta").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ('demo', 'Demo');
             INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name)
             SELECT meta.asset_guid('demo', 'col' || i), 'demo', 'Column', 'col' || i, 'col' || i
             FROM generate_series(1, 8) i;",
        )
        .await
        .unwrap();

    // A slow receiver: 20 ms per request, so deliveries are in flight when the engine dies.
    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    for _ in 0..(ROWS * 2) {
        fake.push_response(Response::Delay(Duration::from_millis(20)));
    }

    let dir = tempfile::tempdir().unwrap();
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    std::fs::write(
        pipes.join("tags.sql"),
        "SELECT tenant_id, tag, asset_guid, _commit_lsn, _commit_ts FROM classifications WHERE _op = 'insert'",
    )
    .unwrap();
    std::fs::write(
        pipes.join("tags.toml"),
        r#"
transform = "tags.sql"
[[source]]
table = "meta.classifications"
[[sink]]
name = "hook"
type = "webhook"
key = "asset_guid"
[sink.settings]
url_env = "LILY_HOOK_URL"
secret_env = "LILY_HOOK_SECRET"
event_type = "metadata.tag.added"
[sink.delivery]
concurrency = 4
initial_backoff_ms = 50
"#,
    )
    .unwrap();
    let config = dir.path().join("lily.toml");
    std::fs::write(
        &config,
        r#"
pipelines = "pipelines"
[source]
url_env = "LILY_SRC_URL"
slot = "crash_hooks"
publication = "crash_hooks"
tables = ["meta.classifications"]
[http]
listen = "127.0.0.1:0"
"#,
    )
    .unwrap();

    let mut first = spawn(&config, dir.path(), "run1", &url, &fake.url());
    lily_tests::wait_streaming(&client, "crash_hooks").await;
    let mut tags = BTreeSet::new();
    for i in 0..ROWS {
        let t = format!("tag{i:04}");
        client
            .execute(
                "INSERT INTO meta.classifications (tenant_id, asset_guid, origin_guid, tag, source)
                 VALUES ('demo', meta.asset_guid('demo', $1), meta.asset_guid('demo', $1), $2, 'direct')",
                &[&format!("col{}", i % 8 + 1), &t],
            )
            .await
            .unwrap();
        tags.insert(t);
    }
    // Kill once a good part is delivered and the rest is queued or in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.accepted_ids().len() < ROWS / 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill(); // SIGKILL
    let killed_at = Instant::now();
    let in_ledger = ledger_ids(&client).await;
    let before: HashSet<String> = fake.accepted_ids().into_iter().collect();
    assert!(
        !in_ledger.is_empty() && in_ledger.len() < ROWS,
        "kill came too early or too late: {}",
        in_ledger.len()
    );
    // The ledger only holds what the receiver took.
    assert!(in_ledger.is_subset(&before));

    let mut second = spawn(&config, dir.path(), "run2", &url, &fake.url());
    let deadline = Instant::now() + Duration::from_secs(90);
    let received_tags = |f: &FakeReceiver| -> BTreeSet<String> {
        f.deliveries()
            .iter()
            .filter(|d| d.accepted())
            .filter_map(|d| d.json.as_ref()?["data"]["tag"].as_str().map(str::to_string))
            .collect()
    };
    while received_tags(&fake) != tags && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.kill();

    let got = received_tags(&fake);
    let missing: Vec<_> = tags.difference(&got).collect();
    assert!(missing.is_empty(), "lost rows: {missing:?}");
    let resent_from_ledger: Vec<String> = fake
        .deliveries()
        .iter()
        .filter(|d| d.received_at > killed_at)
        .filter_map(|d| d.id.clone())
        .filter(|id| in_ledger.contains(id))
        .collect();
    assert!(
        resent_from_ledger.is_empty(),
        "the second run re-sent {} record(s) the ledger held: {:?}",
        resent_from_ledger.len(),
        &resent_from_ledger[..resent_from_ledger.len().min(5)]
    );
    let repeats = fake.duplicate_count();
    eprintln!(
        "kill -9 after {} accepted ({} in the ledger); after restart all {ROWS} delivered; \
         {repeats} id(s) received twice (in flight at the kill), 0 re-sent from the ledger",
        before.len(),
        in_ledger.len()
    );
    assert!(
        repeats <= before.len() - in_ledger.len() + 8,
        "more repeats ({repeats}) than records in flight at the kill"
    );
    assert!(fake.deliveries().iter().all(|d| d.signature_valid));
}
