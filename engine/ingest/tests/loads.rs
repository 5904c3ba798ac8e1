//! Bulk loads over the ingest API against a real PostgreSQL: uploads spooled and loaded in the
//! background, the job's status through GET, authorization, limits, bad rows, and resuming what
//! a previous process left in the spool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use lily_auth::{ApiKeys, Authenticator};
use lily_ingest::{Loads, LoadsSettings};
use lily_pgharness::PgCluster;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Server {
    base: String,
    addr: std::net::SocketAddr,
    cluster: PgCluster,
    client: tokio_postgres::Client,
    /// Keys by name: acme_load (load:write), acme_read (assets:read), acme_assets
    /// (assets:write only), globex_load.
    keys: HashMap<&'static str, String>,
    key_ids: HashMap<&'static str, String>,
    http: reqwest::Client,
    spool: PathBuf,
    _spool_dir: tempfile::TempDir,
    loads: Loads,
}

/// Starts the API with loads spooled in a new directory, after `prepare` put files there.
async fn start(tune: impl FnOnce(&mut LoadsSettings), prepare: impl FnOnce(&Path)) -> Server {
    let cluster = PgCluster::start().await.unwrap();
    cluster.create_database("ingest").await.unwrap();
    let client = cluster.connect("ingest").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ('acme', 'Acme'), ('globex', 'Globex')",
        )
        .await
        .unwrap();
    let admin = ApiKeys::uncached();
    let (mut keys, mut key_ids) = (HashMap::new(), HashMap::new());
    for (name, tenant, scope) in [
        ("acme_load", "acme", "load:write"),
        ("acme_read", "acme", "assets:read"),
        ("acme_assets", "acme", "assets:write"),
        ("globex_load", "globex", "load:write"),
    ] {
        let (presented, _) = admin.create(&client, tenant, name, [scope]).await.unwrap();
        keys.insert(name, presented.expose_secret().to_string());
        key_ids.insert(name, presented.key_id().to_string());
    }
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = spool_dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    prepare(&spool);
    let pg: tokio_postgres::Config = cluster.url("ingest").parse().unwrap();
    let mgr = deadpool_postgres::Manager::new(pg.clone(), tokio_postgres::NoTls);
    let pool = deadpool_postgres::Pool::builder(mgr)
        .max_size(4)
        .build()
        .unwrap();
    let mut settings = LoadsSettings::new(&spool);
    tune(&mut settings);
    let loads = Loads::new(settings, cluster.connection("ingest")).unwrap();
    loads.start().await.unwrap();
    let ingest = lily_ingest::Ingest::with_loads(
        pool,
        Authenticator::new(ApiKeys::uncached(), None),
        lily_ingest::Hooks::default(),
        Some(loads.clone()),
    );
    // A small JSON limit: uploads must not be bound by it.
    let app = lily_ingest::router(ingest, 1024);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        base: format!("http://{addr}"),
        addr,
        cluster,
        client,
        keys,
        key_ids,
        http: reqwest::Client::new(),
        spool,
        _spool_dir: spool_dir,
        loads,
    }
}

impl Server {
    async fn upload(
        &self,
        key: Option<&str>,
        tenant: &str,
        ctype: &str,
        body: Vec<u8>,
    ) -> (u16, HashMap<String, String>, Value) {
        let mut req = self
            .http
            .post(format!("{}/v1/tenants/{tenant}/loads", self.base))
            .header("content-type", ctype)
            .body(body);
        if let Some(k) = key {
            req = req.bearer_auth(&self.keys[k]);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let text = resp.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.keys[key])
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Uploads with `key` (expects 202) and polls the job until it ends.
    async fn upload_and_wait(&self, key: &str, tenant: &str, ctype: &str, body: Vec<u8>) -> Value {
        let (st, _, accepted) = self.upload(Some(key), tenant, ctype, body).await;
        assert_eq!(st, 202, "{accepted}");
        self.wait(key, accepted["location"].as_str().unwrap()).await
    }

    /// Polls the job until it is done or failed.
    async fn wait(&self, key: &str, location: &str) -> Value {
        for _ in 0..600 {
            let (st, body) = self.get(key, location).await;
            assert_eq!(st, 200, "{body}");
            if body["status"] == "done" || body["status"] == "failed" {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the load at {location} did not end");
    }

    async fn count(&self, sql: &str) -> i64 {
        self.client.query_one(sql, &[]).await.unwrap().get(0)
    }

    fn spooled(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.spool)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Waits until the spool holds nothing (a job's files go right after it ends).
    async fn spool_drains(&self) {
        for _ in 0..100 {
            if self.spooled().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the spool still holds {:?}", self.spooled());
    }
}

/// Rows of a small estate: a connection, a database, a schema, `tables` tables with three
/// columns each (before their table), a process, and a lineage edge between the first two
/// tables: 4 + 4 * `tables` assets.
fn estate(prefix: &str, tables: usize) -> Vec<Value> {
    let mut rows = vec![
        json!({"type_name": "Connection", "qualified_name": prefix, "name": prefix}),
        json!({"type_name": "Database", "qualified_name": format!("{prefix}/db"), "name": "db", "parent_qualified_name": prefix}),
        json!({"type_name": "Schema", "qualified_name": format!("{prefix}/db/s"), "name": "s", "parent_qualified_name": format!("{prefix}/db")}),
    ];
    for t in 0..tables {
        let table = format!("{prefix}/db/s/t{t}");
        for c in 0..3 {
            rows.push(json!({"type_name": "Column", "qualified_name": format!("{table}/c{c}"), "name": format!("c{c}"),
                "parent_qualified_name": table, "attributes": {"dataType": "text", "order": c}}));
        }
        rows.push(
            json!({"type_name": "Table", "qualified_name": table, "name": format!("t{t}"),
            "parent_qualified_name": format!("{prefix}/db/s"), "attributes": {"rowCount": t}}),
        );
    }
    rows.push(
        json!({"type_name": "Process", "qualified_name": format!("{prefix}/etl"), "name": "etl"}),
    );
    if tables > 1 {
        rows.push(
            json!({"kind": "lineage", "upstream": format!("{prefix}/db/s/t0"),
            "downstream": format!("{prefix}/db/s/t1"), "process": format!("{prefix}/etl")}),
        );
    }
    rows
}

fn ndjson(rows: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        out.extend_from_slice(r.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// The same rows as Parquet, string columns named like the NDJSON fields.
fn parquet(rows: &[Value]) -> Vec<u8> {
    let cols = [
        "kind",
        "type_name",
        "qualified_name",
        "name",
        "parent_qualified_name",
        "attributes",
        "upstream",
        "downstream",
        "process",
    ];
    let arrays: Vec<(&str, ArrayRef)> = cols
        .iter()
        .map(|c| {
            let values: Vec<Option<String>> = rows
                .iter()
                .map(|r| match &r[*c] {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                })
                .collect();
            (*c, Arc::new(StringArray::from(values)) as ArrayRef)
        })
        .collect();
    let batch = RecordBatch::try_from_iter(arrays).unwrap();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_and_parquet_uploads_load_in_the_background_and_are_audited() {
    let s = start(|_| {}, |_| {}).await;
    let rows = estate("snow", 4);
    // Far bigger than the JSON routes' 1 KiB limit.
    let body = ndjson(&rows);
    assert!(body.len() > 1024);
    let (st, headers, accepted) = s
        .upload(
            Some("acme_load"),
            "acme",
            "application/x-ndjson",
            body.clone(),
        )
        .await;
    assert_eq!(st, 202, "{accepted}");
    let job_id = accepted["job_id"].as_str().unwrap().to_string();
    assert_eq!(job_id.len(), 32);
    let location = format!("/v1/tenants/acme/loads/{job_id}");
    assert_eq!(accepted["location"], location);
    assert_eq!(headers["location"], location);
    assert_eq!(accepted["bytes"], body.len());
    assert!(
        ["queued", "running"].contains(&accepted["status"].as_str().unwrap()),
        "{accepted}"
    );

    let job = s.wait("acme_load", &location).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["format"], "ndjson");
    assert_eq!(job["bytes"], body.len());
    // 3 containers, 4 tables and a process (the edge counts as a lineage row); 12 columns.
    assert_eq!(job["structural"], json!({"rows": 8, "done": true}));
    assert_eq!(job["bulk"], json!({"rows": 12, "done": true}));
    assert_eq!(job["lineage_rows"], 1);
    assert_eq!(job["inserted"], 20);
    assert_eq!(job["runs"], 1);
    assert_eq!(job["last_error"], Value::Null);
    assert!(job["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(job["finished_at"].is_string());
    // The job id is the loader's own.
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM lily.load_jobs WHERE job_id = '{job_id}' AND tenant_id = 'acme'"
        ))
        .await,
        1
    );
    assert_eq!(
        s.count(
            "SELECT count(*) FROM meta.assets WHERE tenant_id = 'acme' AND qualified_name LIKE 'snow%'"
        )
        .await,
        20
    );
    assert_eq!(
        s.count("SELECT count(*) FROM meta.assets WHERE tenant_id <> 'acme'")
            .await,
        0
    );
    assert_eq!(
        s.count("SELECT count(*) FROM meta.lineage_edges WHERE tenant_id = 'acme'")
            .await,
        1
    );
    // Audited as the uploading key, with the API's request id.
    let audit = s
        .client
        .query(
            "SELECT tenant_id, principal, request_id, detail->>'job_id', detail->>'outcome'
             FROM lily.audit_log WHERE action = 'load'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    let a = &audit[0];
    assert_eq!(a.get::<_, String>(0), "acme");
    assert_eq!(
        a.get::<_, String>(1),
        format!("key:{}", s.key_ids["acme_load"])
    );
    assert_eq!(a.get::<_, Option<String>>(2).unwrap().len(), 16);
    assert_eq!(a.get::<_, String>(3), job_id);
    assert_eq!(a.get::<_, String>(4), "done");
    // A finished job's files leave the spool.
    s.spool_drains().await;

    // assets:read may look; another tenant may not (the same 404 as an unknown job).
    let (st, seen) = s.get("acme_read", &location).await;
    assert_eq!((st, &seen["status"]), (200, &json!("done")));
    let (st, other) = s
        .get("globex_load", &format!("/v1/tenants/globex/loads/{job_id}"))
        .await;
    assert_eq!(st, 404, "{other}");
    let (_, unknown) = s
        .get(
            "globex_load",
            "/v1/tenants/globex/loads/0123456789abcdef0123456789abcdef",
        )
        .await;
    assert_eq!(other, unknown);
    assert_eq!(other["error"]["code"], "not_found");
    for bad in [
        "nothex",
        "0123456789ABCDEF0123456789ABCDEF",
        "..%2F..%2Fetc",
    ] {
        let (st, _) = s
            .get("acme_load", &format!("/v1/tenants/acme/loads/{bad}"))
            .await;
        assert_eq!(st, 404, "{bad}");
    }

    // Parquet, declared; and NDJSON sent as octet-stream (format detected).
    let rows = estate("pq", 2);
    let job = s
        .upload_and_wait(
            "acme_load",
            "acme",
            "application/vnd.apache.parquet",
            parquet(&rows),
        )
        .await;
    assert_eq!(
        (&job["status"], &job["format"]),
        (&json!("done"), &json!("parquet")),
        "{job}"
    );
    assert_eq!(job["inserted"], 12);
    let job = s
        .upload_and_wait(
            "globex_load",
            "globex",
            "application/octet-stream",
            ndjson(&estate("gx", 1)),
        )
        .await;
    assert_eq!(
        (&job["status"], &job["format"]),
        (&json!("done"), &json!("ndjson")),
        "{job}"
    );
    assert_eq!(
        s.count("SELECT count(*) FROM meta.assets WHERE tenant_id = 'acme'")
            .await,
        32
    );
    assert_eq!(
        s.count("SELECT count(*) FROM meta.assets WHERE tenant_id = 'globex'")
            .await,
        8
    );
    s.spool_drains().await;
    s.loads.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_fails_the_job_with_its_line() {
    let s = start(|_| {}, |_| {}).await;
    let mut body = ndjson(&estate("snow", 1));
    body.extend_from_slice(b"{\"type_name\":\"Table\",\"name\":\"no qualified name\"}\n");
    let bad_line = body.iter().filter(|b| **b == b'\n').count();
    let job = s
        .upload_and_wait("acme_load", "acme", "application/jsonl", body)
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = job["last_error"].as_str().unwrap();
    assert!(error.contains(&format!("line {bad_line}")), "{error}");
    assert!(error.contains("missing qualified_name"), "{error}");
    // The server's spool path is not the client's business.
    let spool = s.spool.display().to_string();
    assert!(!error.contains(&spool), "{error}");
    assert!(!error.contains(".load"), "{error}");
    // The structural pass checks every row first: nothing of the bad file's bulk lane.
    assert_eq!(job["bulk"]["rows"], 0);
    // Failed for its data: running it again cannot help, so the file is not kept.
    s.spool_drains().await;
    let (st, _) = s
        .get(
            "globex_load",
            &format!(
                "/v1/tenants/globex/loads/{}",
                job["job_id"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(st, 404);
    assert_eq!(
        s.count("SELECT count(*) FROM lily.audit_log WHERE action = 'load' AND detail->>'outcome' = 'failed'")
            .await,
        1
    );
}

/// Sends the head of a chunked upload and `chunks` of the body, without ending it.
async fn chunked_upload(
    s: &Server,
    key: &str,
    tenant: &str,
    chunks: &[Vec<u8>],
    end: bool,
) -> tokio::net::TcpStream {
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut out = format!(
        "POST /v1/tenants/{tenant}/loads HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\
         content-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n",
        s.addr, s.keys[key]
    )
    .into_bytes();
    for c in chunks {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    if end {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    // One write: the whole request reaches the server together.
    conn.write_all(&out).await.unwrap();
    conn
}

/// The status code of the response on `conn`.
async fn response_status(conn: &mut tokio::net::TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut piece).await.unwrap();
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&piece[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_authorized_typed_and_bounded() {
    let s = start(
        |l| {
            l.max_load_bytes = 4096;
            l.max_queued = 1;
        },
        |_| {},
    )
    .await;
    let body = ndjson(&estate("snow", 1));
    assert!(body.len() < 4096);
    // No credential, a key without load:write, another tenant's key: refused before the body
    // is read, and nothing reaches the spool.
    let (st, _, resp) = s
        .upload(None, "acme", "application/x-ndjson", body.clone())
        .await;
    assert_eq!(st, 401, "{resp}");
    let (st, _, resp) = s
        .upload(
            Some("acme_assets"),
            "acme",
            "application/x-ndjson",
            body.clone(),
        )
        .await;
    assert_eq!(st, 403, "{resp}");
    assert_eq!(resp["error"]["message"], "forbidden");
    let (st, _, resp) = s
        .upload(
            Some("globex_load"),
            "acme",
            "application/x-ndjson",
            body.clone(),
        )
        .await;
    assert_eq!(st, 403, "{resp}");
    // A key without load:write or assets:read cannot look at jobs either.
    let (st, _) = s
        .get(
            "acme_assets",
            "/v1/tenants/acme/loads/0123456789abcdef0123456789abcdef",
        )
        .await;
    assert_eq!(st, 403);
    // Not a load format.
    for ctype in ["application/json", "text/plain"] {
        let (st, _, resp) = s
            .upload(Some("acme_load"), "acme", ctype, body.clone())
            .await;
        assert_eq!(st, 415, "{ctype}: {resp}");
        assert_eq!(resp["error"]["code"], "unsupported_media_type");
    }
    // Empty.
    let (st, _, resp) = s
        .upload(
            Some("acme_load"),
            "acme",
            "application/x-ndjson",
            Vec::new(),
        )
        .await;
    assert_eq!(st, 422, "{resp}");
    // Over max_load_bytes: by its declared length, and streamed (chunked, no length).
    let big = vec![b' '; 5000];
    let (st, _, resp) = s
        .upload(Some("acme_load"), "acme", "application/x-ndjson", big)
        .await;
    assert_eq!(st, 413, "{resp}");
    assert_eq!(resp["error"]["code"], "too_large");
    let mut conn = chunked_upload(
        &s,
        "acme_load",
        "acme",
        &[vec![b' '; 3000], vec![b' '; 3000]],
        true,
    )
    .await;
    assert_eq!(response_status(&mut conn).await, 413);
    drop(conn);
    assert!(s.spooled().is_empty(), "{:?}", s.spooled());
    assert_eq!(s.count("SELECT count(*) FROM lily.load_jobs").await, 0);
    assert_eq!(s.count("SELECT count(*) FROM meta.assets").await, 0);

    // A full queue: one upload in progress holds the only place; the next gets 429.
    let slow = chunked_upload(&s, "acme_load", "acme", &[body[..100].to_vec()], false).await;
    for _ in 0..100 {
        if !s.spooled().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.spooled().len(), 1, "the upload is being spooled");
    let (st, headers, resp) = s
        .upload(
            Some("acme_load"),
            "acme",
            "application/x-ndjson",
            body.clone(),
        )
        .await;
    assert_eq!(st, 429, "{resp}");
    assert!(headers.contains_key("retry-after"));
    // The client goes away mid-upload: its partial file is removed and its place freed.
    drop(slow);
    s.spool_drains().await;
    let job = s
        .upload_and_wait("acme_load", "acme", "application/x-ndjson", body)
        .await;
    assert_eq!(job["status"], "done", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_dropped_and_frees_its_place() {
    let s = start(
        |l| {
            l.max_queued = 1;
            l.upload_idle = Duration::from_secs(1);
        },
        |_| {},
    )
    .await;
    let body = ndjson(&estate("snow", 1));
    // The client sends a first piece and then nothing, holding the only queue place.
    let started = std::time::Instant::now();
    let mut stalled = chunked_upload(&s, "acme_load", "acme", &[body[..100].to_vec()], false).await;
    let status = tokio::time::timeout(Duration::from_secs(30), response_status(&mut stalled))
        .await
        .expect("a stalled upload is answered");
    assert_eq!(status, 408);
    assert!(started.elapsed() >= Duration::from_secs(1));
    // Its partial file is gone, nothing was loaded, and the place is free for the next upload.
    s.spool_drains().await;
    assert_eq!(s.count("SELECT count(*) FROM lily.load_jobs").await, 0);
    assert_eq!(s.count("SELECT count(*) FROM meta.assets").await, 0);
    let job = s
        .upload_and_wait("acme_load", "acme", "application/x-ndjson", body)
        .await;
    assert_eq!(job["status"], "done", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_files_of_a_previous_process_resume_on_start() {
    let rows = ndjson(&estate("old", 3));
    let mut job_id = String::new();
    let s = start(
        |_| {},
        |spool| {
            // What a previous process left: an accepted upload with its sidecar, and an upload
            // that was still arriving when it stopped.
            let tmp = spool.join("upload-1234.part");
            std::fs::write(&tmp, &rows).unwrap();
            job_id = lily_load::job_id_of("acme", &tmp, None).unwrap();
            std::fs::rename(&tmp, spool.join(format!("{job_id}.load"))).unwrap();
            let sidecar = json!({
                "version": 1, "job_id": job_id, "tenant": "acme", "principal": "key:previous",
                "request_id": "00000000000000aa", "format": "ndjson", "bytes": rows.len(),
            });
            std::fs::write(spool.join(format!("{job_id}.json")), sidecar.to_string()).unwrap();
            std::fs::write(spool.join("upload-5678.part"), b"{\"type_name\"").unwrap();
        },
    )
    .await;
    let job = s
        .wait("acme_read", &format!("/v1/tenants/acme/loads/{job_id}"))
        .await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["inserted"], 16);
    s.spool_drains().await;
    let audit = s
        .client
        .query_one(
            "SELECT principal, request_id FROM lily.audit_log WHERE action = 'load'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(audit.get::<_, String>(0), "key:previous");
    assert_eq!(audit.get::<_, String>(1), "00000000000000aa");
    // Shut down, start again with nothing spooled: nothing runs twice.
    s.loads.shutdown().await;
    s.loads.shutdown().await;
    assert_eq!(s.count("SELECT runs::bigint FROM lily.load_jobs").await, 1);
}

/// The metastore goes down in the middle of a load: the load is retried from its checkpoint
/// once the server is back and ends done, with every asset written exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_resumes_after_the_metastore_restarts() {
    let s = start(
        |t| {
            t.retry_backoff = Duration::from_millis(300);
            t.load.bulk_chunk_rows = 2_000;
            t.load.bulk_chunk_min_rows = 2_000;
        },
        |_| {},
    )
    .await;
    let tables = 40_000;
    let rows = estate("big", tables);
    let (st, _, body) = s
        .upload(
            Some("acme_load"),
            "acme",
            "application/x-ndjson",
            ndjson(&rows),
        )
        .await;
    assert_eq!(st, 202, "{body}");
    let location = body["location"].as_str().unwrap().to_string();
    // Down once some bulk chunks have committed, and long enough for a retry to fail.
    let columns =
        "SELECT count(*) FROM meta.assets WHERE tenant_id = 'acme' AND type_name = 'Column'";
    let mut waited = 0;
    while s.count(columns).await == 0 {
        waited += 1;
        assert!(waited < 3000, "no bulk chunk committed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.cluster.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.cluster.start_again().await.unwrap();

    // The API's own connections recover too; a poll may fail while they reconnect.
    let mut status = Value::Null;
    for _ in 0..1200 {
        let (st, body) = s.get("acme_load", &location).await;
        if st == 200 && (body["status"] == "done" || body["status"] == "failed") {
            status = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["status"], "done", "{status}");
    assert!(status["runs"].as_i64().unwrap() >= 2, "{status}");
    let client = s.cluster.connect("ingest").await.unwrap();
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let expected = (4 + 4 * tables) as i64;
    assert_eq!(
        count("SELECT count(*) FROM meta.assets WHERE tenant_id = 'acme'").await,
        expected
    );
    assert_eq!(
        count("SELECT count(*) FROM meta.assets WHERE tenant_id = 'acme' AND version <> 1").await,
        0,
        "nothing written twice"
    );
    s.spool_drains().await;
}

/// One tenant cannot take the whole queue: past its share its uploads get 429 while another
/// tenant's still get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_take_the_whole_queue() {
    let s = start(
        |l| {
            l.max_queued = 4;
            l.max_queued_per_tenant = 2;
        },
        |_| {},
    )
    .await;
    let body = ndjson(&estate("snow", 1));
    // Two globex uploads in progress hold globex's share.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            chunked_upload(&s, "globex_load", "globex", &[body[..100].to_vec()], false).await,
        );
    }
    for _ in 0..100 {
        if s.spooled().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.spooled().len(), 2, "{:?}", s.spooled());
    let (st, headers, resp) = s
        .upload(
            Some("globex_load"),
            "globex",
            "application/x-ndjson",
            body.clone(),
        )
        .await;
    assert_eq!(st, 429, "{resp}");
    assert!(headers.contains_key("retry-after"));
    assert!(resp.to_string().contains("of this tenant"), "{resp}");
    // acme still gets in, and its load runs.
    let job = s
        .upload_and_wait("acme_load", "acme", "application/x-ndjson", body)
        .await;
    assert_eq!(job["status"], "done", "{job}");
    drop(held);
    s.spool_drains().await;
}

/// A client that never stops sending but trickles bytes cannot hold its queue place: once the
/// upload has run for the idle time, it must average the minimum rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_upload_is_dropped() {
    let s = start(
        |l| {
            l.max_queued = 1;
            l.upload_idle = Duration::from_secs(1);
            l.upload_min_rate = 1024;
        },
        |_| {},
    )
    .await;
    let body = ndjson(&estate("snow", 1));
    let conn = chunked_upload(&s, "acme_load", "acme", &[b"{".to_vec()], false).await;
    let (mut read, mut write) = conn.into_split();
    // One byte every 200 ms: never idle for a second, far below 1 KiB/s.
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b"1\r\n \r\n").await.is_err() {
                return;
            }
        }
    });
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf))
        .await
        .expect("the trickling upload is answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("bytes/s"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    trickle.abort();
    s.spool_drains().await;
    // The place is free again.
    let job = s
        .upload_and_wait("acme_load", "acme", "application/x-ndjson", body)
        .await;
    assert_eq!(job["status"], "done", "{job}");
}

/// With one run slot, a tenant's small load does not wait for another tenant's large one to
/// finish: the large load gives the slot up at a chunk boundary after its time slice, and
/// resumes from its checkpoint, loading every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_take_turns_for_the_run_slot() {
    let s = start(
        |l| {
            l.max_concurrent = 1;
            l.time_slice = Duration::from_millis(200);
            // Small chunks: many chunk boundaries in the large load.
            l.load.structural_chunk_rows = 50;
            l.load.bulk_chunk_rows = 200;
            l.load.bulk_chunk_min_rows = 50;
        },
        |_| {},
    )
    .await;
    let big = ndjson(&estate("big", 5_000));
    let (st, _, accepted) = s
        .upload(Some("globex_load"), "globex", "application/x-ndjson", big)
        .await;
    assert_eq!(st, 202, "{accepted}");
    let big_at = accepted["location"].as_str().unwrap().to_string();
    // Once the large load runs, acme's small one arrives.
    for _ in 0..200 {
        let (_, job) = s.get("globex_load", &big_at).await;
        if job["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let small = s
        .upload_and_wait(
            "acme_load",
            "acme",
            "application/x-ndjson",
            ndjson(&estate("small", 1)),
        )
        .await;
    assert_eq!(small["status"], "done", "{small}");
    let (_, big_then) = s.get("globex_load", &big_at).await;
    assert_ne!(
        big_then["status"], "done",
        "the small load waited for the large one: {big_then}"
    );
    let big_job = s.wait("globex_load", &big_at).await;
    assert_eq!(big_job["status"], "done", "{big_job}");
    assert_eq!(
        s.count("SELECT count(*) FROM meta.assets WHERE tenant_id = 'globex'")
            .await,
        4 + 4 * 5_000
    );
}

/// A bulk load refuses what the API refuses (one rule set): control characters in names,
/// names over 2,048 bytes, attributes nested past 128 levels; the job fails at the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_refuse_what_the_api_refuses() {
    let s = start(|_| {}, |_| {}).await;
    let deep = format!("{}1{}", "{\"a\":".repeat(1000), "}".repeat(1000));
    let cases = [
        (
            json!({"type_name": "Table", "qualified_name": "ld/esc\u{1b}[31mred", "name": "esc"})
                .to_string(),
            "control character",
        ),
        (
            json!({"type_name": "Table", "qualified_name": "ld/tab", "name": "tab\nnewline"})
                .to_string(),
            "control character",
        ),
        (
            json!({"type_name": "Table", "qualified_name": "x".repeat(5008), "name": "long"})
                .to_string(),
            "longer than 2048 bytes",
        ),
        (
            format!(
                r#"{{"type_name": "Table", "qualified_name": "ld/deep", "name": "deep", "attributes": {deep}}}"#
            ),
            "deeper than 128",
        ),
    ];
    for (line, why) in cases {
        let mut body = ndjson(&estate("ok", 1));
        let bad_line = body.iter().filter(|b| **b == b'\n').count() + 1;
        body.extend_from_slice(line.as_bytes());
        body.push(b'\n');
        let job = s
            .upload_and_wait("acme_load", "acme", "application/x-ndjson", body)
            .await;
        assert_eq!(job["status"], "failed", "{why}: {job}");
        let error = job["last_error"].as_str().unwrap();
        assert!(error.contains(&format!("line {bad_line}")), "{error}");
        assert!(error.contains(why), "{error}");
    }
    // Nothing of the refused rows is in the catalog.
    assert_eq!(
        s.count("SELECT count(*) FROM meta.assets WHERE qualified_name LIKE 'ld/%' OR length(qualified_name) > 2048")
            .await,
        0
    );
}
