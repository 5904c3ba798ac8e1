//! Every connection the engine opens honours `sslmode = verify-full`: against a PostgreSQL that
//! accepts TCP connections only over TLS (`hostssl` lines only), capture, the pipelines (ledger,
//! reference look-ups, metastore sink), the ingest API, a bulk load, the mirror and the admin
//! commands all work; with a wrong CA each of them fails with an error naming the connection.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lily_pgharness::{ClusterOptions, PgCluster};
use serde_json::{json, Value};

fn lily(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lily"));
    cmd.args(args).env("NO_COLOR", "1").env("LILY_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run lily")
}

/// The engine as a child process, killed on drop.
struct Engine(std::process::Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn url(cluster: &PgCluster, db: &str, ca: &Path) -> String {
    format!(
        "postgres://{}:{}@{}:{}/{db}?sslmode=verify-full&sslrootcert={}",
        cluster.superuser(),
        cluster.password(),
        cluster.host(),
        cluster.port(),
        ca.display()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn wait_for(client: &tokio_postgres::Client, sql: &str, want: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = count(client, sql).await;
        if n == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {n}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_works_over_verify_full_and_names_itself_on_a_wrong_ca() {
    let opts = ClusterOptions::default()
        .with_tls_only()
        .setting("wal_level", "logical");
    let source = PgCluster::start_with(opts.clone()).await.unwrap();
    let warehouse = PgCluster::start_with(opts).await.unwrap();
    let ca = source.tls_ca_cert().unwrap().to_path_buf();
    let other_ca = warehouse.tls_ca_cert().unwrap().to_path_buf();
    source.create_database("meta").await.unwrap();
    warehouse.create_database("mirror").await.unwrap();

    // Plain TCP is refused: whatever works below went over TLS.
    let plain = lily_pg::connect(&source.connection("meta"), lily_pg::Role::Admin)
        .await
        .unwrap_err()
        .to_string();
    assert!(plain.contains("no encryption"), "{plain}");

    let src_url = url(&source, "meta", &ca);
    let mirror_url = url(&warehouse, "mirror", &other_ca);
    // Admin connections: migrate (both databases) and API keys.
    for u in [&src_url, &mirror_url] {
        let out = lily(&["migrate"], &[("LILY_DATABASE_URL", u)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta = source.connect("meta").await.unwrap();
    meta.batch_execute("INSERT INTO meta.tenants (tenant_id, name) VALUES ('acme', 'Acme')")
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    let sql_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql");
    std::fs::write(
        pipelines.join("propagate.toml"),
        std::fs::read_to_string(sql_dir.join("pipelines/propagate_tags.toml"))
            .unwrap()
            .replace(
                "../propagate_tags.sql",
                &sql_dir.join("propagate_tags.sql").display().to_string(),
            ),
    )
    .unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let port = free_port();
    let config = dir.path().join("lily.toml");
    std::fs::write(
        &config,
        format!(
            r#"pipelines = "pipelines"
[source]
url_env = "LILY_SRC_URL"
slot = "tls"
publication = "tls"
tables = ["meta.assets", "meta.lineage_edges", "meta.classifications"]
[http]
listen = "127.0.0.1:{port}"
[[consumer]]
type = "mirror"
name = "warehouse"
target_url_env = "LILY_MIRROR_URL"
[ingest]
load_spool_dir = "{}"
"#,
            spool.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let env = [
        ("LILY_SRC_URL", src_url.as_str()),
        ("LILY_MIRROR_URL", mirror_url.as_str()),
    ];
    let out = lily(
        &[
            "apikey",
            "create",
            "-c",
            cfg,
            "--tenant",
            "acme",
            "--name",
            "tls",
            "--scope",
            "assets:write",
            "--scope",
            "lineage:write",
            "--scope",
            "classifications:write",
            "--scope",
            "load:write",
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // Catalog connections: planning every pipeline.
    let out = lily(&["validate", "-c", cfg], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lily"));
    cmd.args(["run", "-c", cfg])
        .env("NO_COLOR", "1")
        .env("LILY_LOG", "warn")
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let _engine = Engine(cmd.spawn().unwrap());
    // Ready only once capture streams (so the slot exists and nothing written below is missed).
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
        {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "/readyz never turned 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count(
            &meta,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'tls' AND active"
        )
        .await,
        1
    );
    // A second engine on the same address: the port cannot be bound, which is fatal.
    let out = lily(&["run", "-c", cfg], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );

    // The ingest API's pool.
    let base = format!("http://127.0.0.1:{port}/v1/tenants/acme");
    let post = |path: &str, body: Value| {
        http.post(format!("{base}/{path}"))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let p = "pg";
    let r = post(
        "assets",
        json!({"upsert": [
            {"type_name": "Connection", "qualified_name": p, "name": p},
            {"type_name": "Database", "qualified_name": format!("{p}/db"), "name": "db", "parent_qualified_name": p},
            {"type_name": "Schema", "qualified_name": format!("{p}/db/s"), "name": "s", "parent_qualified_name": format!("{p}/db")},
            {"type_name": "Table", "qualified_name": format!("{p}/db/s/orders"), "name": "orders", "parent_qualified_name": format!("{p}/db/s")},
            {"type_name": "View", "qualified_name": format!("{p}/db/s/v"), "name": "v", "parent_qualified_name": format!("{p}/db/s")},
            {"type_name": "Process", "qualified_name": format!("{p}/etl"), "name": "etl"}
        ]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = post(
        "lineage",
        json!({"upsert": [{"upstream": format!("{p}/db/s/orders"), "downstream": format!("{p}/db/s/v"), "process": format!("{p}/etl")}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = post(
        "classifications",
        json!({"upsert": [{"qualified_name": format!("{p}/db/s/orders"), "tag": "PII", "propagate": true}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // Capture → look-up of the downstream view → metastore sink, recorded in the ledger.
    wait_for(
        &meta,
        "SELECT count(*) FROM meta.classifications c JOIN meta.assets a ON a.guid = c.asset_guid
          WHERE a.qualified_name = 'pg/db/s/v' AND c.source = 'propagated' AND c.tag = 'PII'",
        1,
        "propagated tags on the view",
    )
    .await;
    wait_for(
        &meta,
        "SELECT count(*) FROM lily.delivery_ledger WHERE pipeline = 'propagate'",
        1,
        "ledger rows",
    )
    .await;

    // A bulk load through the API, on a load connection of its own.
    let mut ndjson = String::new();
    for c in 0..5 {
        ndjson.push_str(
            &json!({"type_name": "Column", "qualified_name": format!("{p}/db/s/orders/c{c}"),
                    "name": format!("c{c}"), "parent_qualified_name": format!("{p}/db/s/orders")})
            .to_string(),
        );
        ndjson.push('\n');
    }
    let r = http
        .post(format!("{base}/loads"))
        .bearer_auth(&key)
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let location = job["location"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: Value = http
            .get(format!("http://127.0.0.1:{port}{location}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["status"] == "done" {
            break;
        }
        assert!(status["status"] != "failed", "{status}");
        assert!(Instant::now() < deadline, "load still {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The mirror applied everything to the other cluster, over TLS with that cluster's CA.
    let mirror = warehouse.connect("mirror").await.unwrap();
    wait_for(
        &mirror,
        "SELECT count(*) FROM meta.assets WHERE qualified_name LIKE 'pg/db/s/orders/c%'",
        5,
        "mirrored columns",
    )
    .await;

    // Every connection of the engine is encrypted, and each says what it is for.
    let rows = meta
        .query(
            "SELECT DISTINCT a.application_name, s.ssl FROM pg_stat_activity a
               JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'lily-%'",
            &[],
        )
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(rows.iter().all(|r| r.get::<_, bool>(1)), "{names:?}");
    for role in [
        "lily-capture",
        "lily-ledger",
        "lily-lookup",
        "lily-metastore-sink",
        "lily-ingest",
    ] {
        assert!(names.iter().any(|n| n == role), "{role} not in {names:?}");
    }
    drop(_engine);

    // A wrong CA: each connection fails with an error that names it and the certificate.
    let wrong = url(&source, "meta", &other_ca);
    let cfg_wrong = lily_pg::ConnectionConfig::parse(&wrong).unwrap();
    for role in [
        lily_pg::Role::Catalog,
        lily_pg::Role::Ledger,
        lily_pg::Role::Lookup,
        lily_pg::Role::Ingest,
        lily_pg::Role::Load,
        lily_pg::Role::Sink("metastore"),
        lily_pg::Role::Admin,
    ] {
        let e = lily_pg::connect(&cfg_wrong, role).await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&format!("{role} connection to 127.0.0.1:")),
            "{text}"
        );
        assert!(text.contains("certificate"), "{text}");
        assert!(!text.contains(source.password()), "{text}");
        assert!(!e.is_retryable(), "{text}");
    }
    let pool = lily_ingest::pool(&cfg_wrong, 1).unwrap();
    let e = format!("{:?}", pool.get().await.unwrap_err());
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    let e = lily_mirror::Mirror::connect(&url(&warehouse, "mirror", &ca))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("certificate"), "{e}");
    // The engine: `run` plans its pipelines first (the catalog connection); `check` opens the
    // capture connection.
    for (command, role) in [("run", "catalog"), ("check", "capture")] {
        let out = lily(
            &[command, "-c", cfg],
            &[("LILY_SRC_URL", &wrong), ("LILY_MIRROR_URL", &mirror_url)],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!("{role} connection to 127.0.0.1:"))
                && stderr.contains("certificate"),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains(source.password()), "{stderr}");
    }
    // The admin commands.
    let out = lily(&["migrate"], &[("LILY_DATABASE_URL", &wrong)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("admin connection") && stderr.contains("certificate"),
        "{stderr}"
    );
}
