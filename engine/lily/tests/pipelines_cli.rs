//! `lily validate` and `lily dlq` against a real metastore: every kind of bad pipeline is
//! reported with its file and line while good ones pass; dead letters are listed and replayed.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use lily_pgharness::PgCluster;
use lily_webhook::fake::{whsec, FakeReceiver, Response};

const KEY: &[u8] = b"an-example-key-of-32-bytes-long!";

fn lily(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lily"));
    cmd.args(args).env("NO_COLOR", "1").env("LILY_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run lily")
}

/// The engine as a child process, killed on drop so a failing assertion does not leave it
/// running.
struct Engine(std::process::Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

const CONFIG: &str = r#"
pipelines = "pipelines"
[source]
url_env = "LILY_SRC_URL"
slot = "cli"
publication = "cli"
tables = ["meta.classifications"]
[http]
listen = "127.0.0.1:0"
"#;

fn webhook_pipeline(transform: &str, extra_sink: &str) -> String {
    format!(
        r#"transform = "{transform}"
[[source]]
table = "meta.classifications"
[[sink]]
name = "hook"
type = "webhook"
key = "asset_guid"
{extra_sink}
[sink.settings]
url_env = "LILY_CLI_HOOK_URL"
secret_env = "LILY_CLI_HOOK_SECRET"
event_type = "metadata.tag.added"
[sink.delivery]
max_attempts = 2
initial_backoff_ms = 10
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reports_each_problem_with_file_and_line() {
    let cluster = PgCluster::start().await.unwrap();
    cluster.create_database("meta").await.unwrap();
    let url = cluster.url("meta");
    let client = cluster.connect("meta").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pipelines");
    std::fs::create_dir(&p).unwrap();
    write(dir.path(), "lily.toml", CONFIG);
    write(
        &p,
        "good.sql",
        "SELECT tag, asset_guid, _commit_lsn FROM classifications",
    );
    write(&p, "good.toml", &webhook_pipeline("good.sql", ""));
    write(
        &p,
        "syntax.sql",
        "SELECT tag,\n  _commit_lsn\nFROM classifications WHERE WHERE",
    );
    write(&p, "syntax.toml", &webhook_pipeline("syntax.sql", ""));
    write(
        &p,
        "column.sql",
        "SELECT tagz, _commit_lsn FROM classifications",
    );
    write(&p, "column.toml", &webhook_pipeline("column.sql", ""));
    write(
        &p,
        "types.sql",
        "SELECT tag * 2 AS t, _commit_lsn FROM classifications",
    );
    write(&p, "types.toml", &webhook_pipeline("types.sql", ""));
    write(
        &p,
        "nolsn.sql",
        "SELECT tag, asset_guid FROM classifications",
    );
    write(&p, "nolsn.toml", &webhook_pipeline("nolsn.sql", ""));
    write(
        &p,
        "table.toml",
        &webhook_pipeline("good.sql", "").replace("meta.classifications", "meta.nope"),
    );
    write(
        &p,
        "sinktype.toml",
        &webhook_pipeline("good.sql", "").replace("type = \"webhook\"", "type = \"pager\""),
    );
    write(
        &p,
        "unknownkey.toml",
        &webhook_pipeline("good.sql", "retries = 3"),
    );
    write(
        &p,
        "secret.toml",
        &webhook_pipeline("good.sql", "").replace("LILY_CLI_HOOK_SECRET", "LILY_CLI_UNSET_SECRET"),
    );
    write(
        &p,
        "keycol.toml",
        &webhook_pipeline("good.sql", "").replace("key = \"asset_guid\"", "key = \"guid\""),
    );
    let env = [
        ("LILY_SRC_URL", url.as_str()),
        ("LILY_CLI_HOOK_URL", "http://127.0.0.1:9/hook"),
        (
            "LILY_CLI_HOOK_SECRET",
            "whsec_YW4tZXhhbXBsZS1rZXktb2YtMzItYnl0ZXMtbG9uZyE=",
        ),
    ];
    let out = lily(
        &[
            "validate",
            "-c",
            dir.path().join("lily.toml").to_str().unwrap(),
        ],
        &env,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(!out.status.success());
    let has = |needle: &str| {
        assert!(
            stdout.lines().any(|l| l.contains(needle)),
            "no line containing {needle:?} in:\n{stdout}"
        )
    };
    has("ok: pipeline good");
    has("syntax.sql:3: ");
    has("column.sql:1: ");
    has("tagz");
    has("types.sql:1: ");
    has("nolsn.sql: the transform's output has no _commit_lsn column");
    has("table.toml:3: source table meta.nope does not exist");
    has("sinktype.toml:6: unknown sink type \"pager\"");
    has("unknownkey.toml:8: unknown field `retries`");
    has("environment variable LILY_CLI_UNSET_SECRET is not set");
    has("keycol.toml:7: key column \"guid\" is not in the transform's output");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("error:")).count(),
        9,
        "{stdout}"
    );
    // The secret's value never appears.
    assert!(!stdout.contains("YW4tZXhhbXBsZS1rZXkt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_once_the_receiver_is_fixed() {
    // Also: a pipeline that does not plan is refused at start and the others keep running.
    let cluster = PgCluster::start().await.unwrap();
    cluster.create_database("meta").await.unwrap();
    let url = cluster.url("meta");
    let client = cluster.connect("meta").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ('demo', 'Demo');
             INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name)
             VALUES (meta.asset_guid('demo', 'c1'), 'demo', 'Column', 'c1', 'c1');",
        )
        .await
        .unwrap();
    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    // The receiver rejects the first two deliveries for good.
    fake.push_response(Response::Status(422));
    fake.push_response(Response::Status(404));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pipelines");
    std::fs::create_dir(&p).unwrap();
    write(dir.path(), "lily.toml", CONFIG);
    write(
        &p,
        "tags.sql",
        "SELECT tag, asset_guid, _commit_lsn FROM classifications WHERE _op = 'insert'",
    );
    // A row filter: pushed into the publication (the only reader filters), and applied.
    write(
        &p,
        "tags.toml",
        &webhook_pipeline("tags.sql", "").replace(
            "table = \"meta.classifications\"",
            "table = \"meta.classifications\"\nfilter = \"tag <> 'Z'\"",
        ),
    );
    // A broken pipeline next to it is refused at start; the good one runs regardless.
    write(
        &p,
        "broken.sql",
        "SELECT nope, _commit_lsn FROM classifications",
    );
    write(&p, "broken.toml", &webhook_pipeline("broken.sql", ""));
    let secret = whsec(KEY);
    let hook = fake.url();
    let env = [
        ("LILY_SRC_URL", url.as_str()),
        ("LILY_CLI_HOOK_URL", hook.as_str()),
        ("LILY_CLI_HOOK_SECRET", secret.as_str()),
    ];
    let config = dir.path().join("lily.toml");
    let engine = Command::new(env!("CARGO_BIN_EXE_lily"))
        .args(["run", "-c", config.to_str().unwrap()])
        .envs(env)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let engine = Engine(engine);
    lily_tests::wait_streaming(&client, "cli").await;
    let rowfilter: Option<String> = client
        .query_one(
            "SELECT rowfilter FROM pg_publication_tables WHERE pubname = 'cli' AND tablename = 'classifications'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        rowfilter.as_deref().is_some_and(|f| f.contains("'Z'")),
        "{rowfilter:?}"
    );
    for tag in ["A", "Z", "B", "C"] {
        client
            .execute(
                "INSERT INTO meta.classifications (tenant_id, asset_guid, origin_guid, tag, source)
                 VALUES ('demo', meta.asset_guid('demo', 'c1'), meta.asset_guid('demo', 'c1'), $1, 'direct')",
                &[&tag],
            )
            .await
            .unwrap();
    }
    assert!(fake.wait_for_accepted(1, Duration::from_secs(30)).await);
    let mut letters = 0;
    for _ in 0..200 {
        letters = client
            .query_one("SELECT count(*) FROM lily.dead_letters", &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
        if letters == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(engine);
    assert_eq!(letters, 2);

    let c = config.to_str().unwrap();
    let listed = lily(&["dlq", "list", "-c", c], &env);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l["error"].as_str().unwrap().contains("422")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["error"].as_str().unwrap().contains("404")),
        "{text}"
    );
    assert_eq!(lines[0]["pipeline"], "tags");
    assert!(lines[0]["record"]["tag"].is_string());

    // The receiver is fixed (its script is empty now): replay delivers both, once.
    let before = fake.accepted_ids().len();
    let replayed = lily(&["dlq", "replay", "-c", c], &env);
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    assert_eq!(fake.accepted_ids().len(), before + 2);
    let pending = lily(&["dlq", "list", "-c", c], &env);
    assert_eq!(String::from_utf8_lossy(&pending.stdout).lines().count(), 0);
    let again = lily(&["dlq", "replay", "-c", c], &env);
    assert!(again.status.success());
    assert_eq!(
        fake.accepted_ids().len(),
        before + 2,
        "a replayed letter was sent twice"
    );
    let tags: std::collections::BTreeSet<String> = fake
        .deliveries()
        .iter()
        .filter(|d| d.accepted())
        .map(|d| {
            d.json.as_ref().unwrap()["data"]["tag"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        tags,
        ["A", "B", "C"].iter().map(|s| s.to_string()).collect()
    );
}

/// A replay that fails again (here past the sink's `max_attempts = 2`, with its backoff)
/// updates the letter in place and leaves it pending; `--id` replays only that letter; once the
/// receiver is fixed a replay marks both replayed and records them delivered in the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_replay_updates_the_letter_in_place_and_leaves_it_pending() {
    let cluster = PgCluster::start().await.unwrap();
    cluster.create_database("meta").await.unwrap();
    let url = cluster.url("meta");
    let client = cluster.connect("meta").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    // Two letters as live delivery leaves them: the row and its `dead_lettered` ledger entry.
    client
        .batch_execute(
            r#"INSERT INTO lily.dead_letters
                   (pipeline, sink, record_id, commit_lsn, commit_ts, order_key, record, error, attempts)
               VALUES ('tags', 'hook', 'tags:0/100:0', '0/100', now(), 'g1',
                       '{"tag": "A", "asset_guid": "g1"}', '422 first', 2),
                      ('tags', 'hook', 'tags:0/200:0', '0/200', now(), 'g2',
                       '{"tag": "B", "asset_guid": "g2"}', '404 first', 2);
               INSERT INTO lily.delivery_ledger (pipeline, sink, record_id, commit_lsn, outcome)
               VALUES ('tags', 'hook', 'tags:0/100:0', '0/100', 'dead_lettered'),
                      ('tags', 'hook', 'tags:0/200:0', '0/200', 'dead_lettered');"#,
        )
        .await
        .unwrap();
    let first: i64 = client
        .query_one("SELECT min(id) FROM lily.dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    fake.push_response(Response::Status(503));
    fake.push_response(Response::Status(503));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pipelines");
    std::fs::create_dir(&p).unwrap();
    write(dir.path(), "lily.toml", CONFIG);
    write(
        &p,
        "tags.sql",
        "SELECT tag, asset_guid, _commit_lsn FROM classifications WHERE _op = 'insert'",
    );
    write(&p, "tags.toml", &webhook_pipeline("tags.sql", ""));
    let secret = whsec(KEY);
    let hook = fake.url();
    let env = [
        ("LILY_SRC_URL", url.as_str()),
        ("LILY_CLI_HOOK_URL", hook.as_str()),
        ("LILY_CLI_HOOK_SECRET", secret.as_str()),
    ];
    let config = dir.path().join("lily.toml");
    let c = config.to_str().unwrap();
    let list = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = lily(&[&["dlq", "list", "-c", c], args].concat(), &env);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    let id = first.to_string();
    let failed = lily(&["dlq", "replay", "--id", &id, "-c", c], &env);
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert!(!failed.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("dead letter {first}: failed again: ")),
        "{stdout}"
    );
    // Both attempts the sink's settings allow, both for that letter.
    let sent: Vec<Option<String>> = fake.deliveries().into_iter().map(|d| d.id).collect();
    assert_eq!(sent, vec![Some("tags:0/100:0".to_string()); 2]);
    let pending = list(&[]);
    assert_eq!(pending.len(), 2, "not re-inserted as a second letter");
    assert_eq!(pending[0]["id"], first);
    assert_eq!(pending[0]["record_id"], "tags:0/100:0");
    assert_eq!(pending[0]["commit_lsn"], "0/100");
    let failed_at = pending[0]["failed_at"].as_str().unwrap();
    assert!(
        failed_at.len() == 20 && failed_at.as_bytes()[10] == b'T' && failed_at.ends_with('Z'),
        "{failed_at}"
    );
    assert_eq!(pending[0]["attempts"], 4);
    assert!(
        pending[0]["error"].as_str().unwrap().contains("503"),
        "{pending:?}"
    );
    assert_eq!(pending[0]["replayed"], false);
    assert_eq!(pending[0]["record"]["tag"], "A");
    assert_eq!(pending[1]["attempts"], 2);
    assert_eq!(pending[1]["error"], "404 first");

    // The receiver is fixed (its script is used up).
    let replayed = lily(&["dlq", "replay", "-c", c], &env);
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    // Different order keys take different lanes, so in either order.
    let mut accepted = fake.accepted_ids();
    accepted.sort();
    assert_eq!(accepted, vec!["tags:0/100:0", "tags:0/200:0"]);
    assert!(list(&[]).is_empty());
    let all = list(&["--all"]);
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|l| l["replayed"] == true), "{all:?}");
    let outcomes: Vec<String> = client
        .query(
            "SELECT outcome FROM lily.delivery_ledger ORDER BY record_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(outcomes, vec!["delivered", "delivered"]);
}

/// `lily load` from the command line: several writers, a JSON report per file, resumable
/// (a second run of the same file finds its job done); bad flags are refused before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_writes_the_file_with_several_writers_and_reports_json() {
    let cluster = PgCluster::start().await.unwrap();
    cluster.create_database("meta").await.unwrap();
    let url = cluster.url("meta");
    let client = cluster.connect("meta").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    client
        .batch_execute("INSERT INTO meta.tenants (tenant_id, name) VALUES ('demo', 'Demo')")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "lily.toml", CONFIG);
    let mut lines = vec![r#"{"type_name":"Table","qualified_name":"t","name":"t"}"#.to_string()];
    for i in 0..5000 {
        lines.push(format!(
            r#"{{"type_name":"Column","qualified_name":"t/c{i}","name":"c{i}","parent_qualified_name":"t"}}"#
        ));
    }
    write(dir.path(), "cols.ndjson", &lines.join("\n"));
    let config = dir.path().join("lily.toml");
    let file = dir.path().join("cols.ndjson");
    let args = |extra: &[&str]| {
        let mut a = vec!["load", "-c", config.to_str().unwrap(), "--tenant", "demo"];
        a.extend_from_slice(extra);
        a.push(file.to_str().unwrap());
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let env = [("LILY_SRC_URL", url.as_str())];
    let run = |extra: &[&str]| {
        let a = args(extra);
        lily(&a.iter().map(String::as_str).collect::<Vec<_>>(), &env)
    };

    let bad = run(&["--writers", "0"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--writers"));

    let out = run(&["--writers", "3", "--no-slot-pacing"]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(report["bulk_rows"], 5000);
    assert_eq!(report["structural_rows"], 1);
    assert_eq!(report["inserted"], 5001);
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM meta.assets WHERE tenant_id = 'demo'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5001);

    let again = run(&[]);
    assert!(again.status.success(), "{again:?}");
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&again.stdout).trim()).unwrap();
    assert_eq!(report["already_complete"], true);
}

/// `lily validate` checks the inbound hooks without a pipelines folder: secrets present, each
/// hook's tenant known; and a secret pasted where a variable name belongs is never echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_the_hooks_without_a_pipelines_folder() {
    let cluster = PgCluster::start().await.unwrap();
    cluster.create_database("meta").await.unwrap();
    let url = cluster.url("meta");
    let client = cluster.connect("meta").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    client
        .batch_execute("INSERT INTO meta.tenants (tenant_id, name) VALUES ('acme', 'Acme')")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = |hooks: &str| {
        let text = format!(
            "[source]\nurl_env = \"LILY_SRC_URL\"\nslot = \"cli\"\npublication = \"cli\"\n\
             tables = [\"meta.classifications\"]\n[http]\nlisten = \"127.0.0.1:0\"\n[ingest]\n{hooks}"
        );
        write(dir.path(), "lily.toml", &text);
        dir.path().join("lily.toml").to_str().unwrap().to_string()
    };
    let env = [
        ("LILY_SRC_URL", url.as_str()),
        ("LILY_CLI_OKTA_SECRET", "okta-secret-value"),
    ];

    // Fine: one hook, its secret set, its tenant known.
    let path =
        config("[[ingest.okta]]\ntenant_id = \"acme\"\nsecret_env = \"LILY_CLI_OKTA_SECRET\"\n");
    let out = lily(&["validate", "-c", &path], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok: okta hook of tenant acme"), "{stdout}");

    // An unset secret and an unknown tenant: each reported.
    let path = config(
        "[[ingest.monte_carlo]]\ntenant_id = \"acme\"\nsecret_env = \"LILY_CLI_UNSET_MC\"\n\
         [[ingest.okta]]\ntenant_id = \"nobody\"\nsecret_env = \"LILY_CLI_OKTA_SECRET\"\n",
    );
    let out = lily(&["validate", "-c", &path], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("environment variable LILY_CLI_UNSET_MC is not set"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ingest.okta: tenant \"nobody\" does not exist"),
        "{stdout}"
    );
    assert!(!stdout.contains("okta-secret-value"), "{stdout}");

    // A secret pasted as the variable's name, and a malformed tenant id: refused, not echoed.
    let path = config(
        "[[ingest.monte_carlo]]\ntenant_id = \"Acme; drop\"\nallow_unsigned = true\n\
         [[ingest.okta]]\ntenant_id = \"acme\"\nsecret_env = \"S3cr3t-PASTED-value!\"\n",
    );
    let out = lily(&["validate", "-c", &path], &env);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("tenant_id"), "{all}");
    let path =
        config("[[ingest.okta]]\ntenant_id = \"acme\"\nsecret_env = \"S3cr3t-PASTED-value!\"\n");
    let out = lily(&["validate", "-c", &path], &env);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("secret_env"), "{all}");
    assert!(
        !all.contains("PASTED"),
        "the pasted secret is echoed: {all}"
    );
}
