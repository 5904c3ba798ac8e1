//! Loads against a real throwaway PostgreSQL (lily-pgharness), migrated to the latest schema.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use lily_load::{
    asset_guid, ChunkInfo, Format, Lane, LoadConfig, LoadError, LoadObserver, LoadRequest, Loader,
    RowLocation, Throttle,
};
use lily_pgharness::PgCluster;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::{json, Value};
use tokio_postgres::Client;

async fn metastore() -> (PgCluster, Client) {
    let pg = PgCluster::start().await.unwrap();
    pg.create_database("lily").await.unwrap();
    let client = pg.connect("lily").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ('t1', 'one'), ('t2', 'two')",
        )
        .await
        .unwrap();
    (pg, client)
}

/// Small chunks, so a few thousand rows make many transactions.
fn small_chunks() -> LoadConfig {
    LoadConfig {
        structural_chunk_rows: 100,
        bulk_chunk_rows: 500,
        bulk_chunk_min_rows: 100,
        ..LoadConfig::default()
    }
}

/// What an asset should look like after the load.
#[derive(Debug, Clone, PartialEq)]
struct Want {
    type_name: String,
    name: String,
    parent: Option<String>,
    status: String,
    attributes: Value,
}

/// A generated estate: the file's rows in file order and the state they should produce.
struct Estate {
    rows: Vec<Value>,
    assets: BTreeMap<String, Want>,
    edges: Vec<(String, String, Option<String>)>,
    structural: usize,
    bulk: usize,
}

impl Estate {
    /// One connection and database, 4 schemas, `tables` tables of `columns` columns each, a
    /// dashboard with BI fields, a process per pair of neighbouring tables with its lineage edge.
    /// Columns of odd tables come *before* their table in the file, so only the structural-first
    /// order makes parents exist before children.
    fn new(tables: usize, columns: usize) -> Estate {
        let mut e = Estate {
            rows: Vec::new(),
            assets: BTreeMap::new(),
            edges: Vec::new(),
            structural: 0,
            bulk: 0,
        };
        e.asset(
            "Connection",
            "snow",
            "snow",
            None,
            json!({"host": "acme.snowflake"}),
        );
        e.asset("Database", "snow/DB", "DB", Some("snow"), json!({}));
        for s in 0..4 {
            e.asset(
                "Schema",
                &format!("snow/DB/S{s}"),
                &format!("S{s}"),
                Some("snow/DB"),
                json!({"description": format!("schema {s}")}),
            );
        }
        for t in 0..tables {
            let schema = format!("snow/DB/S{}", t % 4);
            let table = format!("{schema}/T{t}");
            let table_row = |e: &mut Estate| {
                e.asset(
                    if t % 10 == 9 { "View" } else { "Table" },
                    &table,
                    &format!("T{t}"),
                    Some(&schema),
                    json!({"rowCount": t * 100, "ownerUsers": ["ann"]}),
                )
            };
            if t % 2 == 0 {
                table_row(&mut e);
            }
            for c in 0..columns {
                e.asset(
                    "Column",
                    &format!("{table}/C{c}"),
                    &format!("C{c}"),
                    Some(&table),
                    json!({"dataType": "NUMBER", "order": c, "isNullable": c % 3 == 0}),
                );
            }
            if t % 2 == 1 {
                table_row(&mut e);
            }
            if t > 0 {
                let process = format!("etl/{t}");
                e.asset(
                    "Process",
                    &process,
                    &process,
                    None,
                    json!({"sql": "INSERT ..."}),
                );
                e.edge(
                    &format!("snow/DB/S{}/T{}", (t - 1) % 4, t - 1),
                    &table,
                    Some(&process),
                );
            }
        }
        e.asset("Dashboard", "bi/sales", "sales", None, json!({}));
        for f in 0..30 {
            e.asset(
                "BIField",
                &format!("bi/sales/F{f}"),
                &format!("F{f}"),
                Some("bi/sales"),
                json!({"formula": "sum(x)"}),
            );
        }
        // An edge without a process.
        e.edge("snow/DB/S0/T0", "bi/sales", None);
        e
    }

    fn asset(&mut self, type_name: &str, qn: &str, name: &str, parent: Option<&str>, attrs: Value) {
        let mut row = json!({"type_name": type_name, "qualified_name": qn, "name": name});
        if let Some(p) = parent {
            row["parent_qualified_name"] = json!(p);
        }
        if attrs.as_object().is_some_and(|o| !o.is_empty()) {
            row["attributes"] = attrs.clone();
        }
        self.rows.push(row);
        if matches!(type_name, "Column" | "BIField") {
            self.bulk += 1;
        } else {
            self.structural += 1;
        }
        self.assets.insert(
            qn.to_string(),
            Want {
                type_name: type_name.into(),
                name: name.into(),
                parent: parent.map(str::to_string),
                status: "ACTIVE".into(),
                attributes: attrs,
            },
        );
    }

    fn edge(&mut self, up: &str, down: &str, process: Option<&str>) {
        let mut row = json!({"kind": "lineage", "upstream": up, "downstream": down});
        if let Some(p) = process {
            row["process"] = json!(p);
        }
        self.rows.push(row);
        self.structural += 1;
        self.edges
            .push((up.into(), down.into(), process.map(str::to_string)));
    }

    fn write_ndjson(&self, path: &Path) {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        for r in &self.rows {
            writeln!(f, "{r}").unwrap();
        }
        f.flush().unwrap();
    }

    /// The same rows as Parquet, string columns, `row_group` rows per row group.
    fn write_parquet(&self, path: &Path, row_group: usize) {
        let cols = [
            "kind",
            "type_name",
            "qualified_name",
            "name",
            "parent_qualified_name",
            "status",
            "attributes",
            "upstream",
            "downstream",
            "process",
        ];
        let arrays: Vec<(&str, ArrayRef)> = cols
            .iter()
            .map(|c| {
                let values: Vec<Option<String>> = self
                    .rows
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
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(row_group))
            .build();
        let f = std::fs::File::create(path).unwrap();
        let mut w = ArrowWriter::try_new(f, batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
}

/// The tenant's assets as (qualified_name -> Want), parents named by qualified name (a parent
/// guid with no asset shows as `<missing>`).
async fn assets_of(client: &Client, tenant: &str) -> BTreeMap<String, Want> {
    let rows = client
        .query(
            "SELECT a.qualified_name, a.type_name, a.name,
                    CASE WHEN a.parent_guid IS NULL THEN NULL ELSE coalesce(p.qualified_name, '<missing>') END,
                    a.status, a.attributes
             FROM meta.assets a LEFT JOIN meta.assets p ON p.guid = a.parent_guid
             WHERE a.tenant_id = $1",
            &[&tenant],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                Want {
                    type_name: r.get(1),
                    name: r.get(2),
                    parent: r.get(3),
                    status: r.get(4),
                    attributes: r.get(5),
                },
            )
        })
        .collect()
}

async fn edges_of(client: &Client, tenant: &str) -> usize {
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM meta.lineage_edges WHERE tenant_id = $1",
            &[&tenant],
        )
        .await
        .unwrap()
        .get(0);
    n as usize
}

async fn versions(client: &Client, tenant: &str) -> BTreeMap<i64, i64> {
    client
        .query(
            "SELECT version, count(*) FROM meta.assets WHERE tenant_id = $1 GROUP BY 1",
            &[&tenant],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Records every chunk commit, and can stop the load before a chosen chunk commits.
#[derive(Default)]
struct Recorder {
    committed: Mutex<Vec<ChunkInfo>>,
    stop_before: Option<(Lane, u64)>,
    tag: &'static str,
    order: Option<Arc<Mutex<Vec<&'static str>>>>,
}

impl LoadObserver for Recorder {
    fn before_commit(&self, chunk: &ChunkInfo) -> Result<(), String> {
        if self.stop_before == Some((chunk.lane, chunk.index)) {
            return Err(format!(
                "test stop before {} chunk {}",
                chunk.lane, chunk.index
            ));
        }
        if chunk.lane == Lane::Bulk {
            if let Some(order) = &self.order {
                order.lock().unwrap().push(self.tag);
            }
        }
        Ok(())
    }

    fn after_commit(&self, chunk: &ChunkInfo) {
        self.committed.lock().unwrap().push(chunk.clone());
    }
}

/// Bulk-lane assets (columns and BI fields) among `assets`.
fn count_bulk(assets: &BTreeMap<String, Want>) -> u64 {
    assets
        .values()
        .filter(|w| w.type_name == "Column" || w.type_name == "BIField")
        .count() as u64
}

async fn job_row(client: &Client, job_id: &str) -> tokio_postgres::Row {
    client
        .query_one(
            "SELECT status, structural_done, bulk_done, structural_rows, lineage_rows, bulk_rows,
                    inserted, updated, unchanged, runs, last_error, bulk_line
             FROM lily.load_jobs WHERE job_id = $1",
            &[&job_id],
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn ndjson_load_structural_first_with_parents_lineage_and_audit() {
    let (_pg, mut client) = metastore().await;
    let dir = tempfile::tempdir().unwrap();
    let estate = Estate::new(60, 50);
    let path = dir.path().join("estate.ndjson");
    estate.write_ndjson(&path);

    let recorder = Arc::new(Recorder::default());
    let loader = Loader::new(small_chunks()).with_observer(recorder.clone());
    let progress = loader.progress();
    let report = loader
        .load(
            &mut client,
            &LoadRequest::new("t1", "cli:load", &path).request_id("req-1"),
        )
        .await
        .unwrap();

    // Everything is there, parents resolve to the right assets, lineage edges too.
    assert_eq!(assets_of(&client, "t1").await, estate.assets);
    assert_eq!(edges_of(&client, "t1").await, estate.edges.len());
    let (up, down, process) = &estate.edges[0];
    let found: i64 = client
        .query_one(
            "SELECT count(*) FROM meta.lineage_edges
             WHERE upstream_guid = meta.asset_guid('t1', $1) AND downstream_guid = meta.asset_guid('t1', $2)
               AND process_guid = meta.asset_guid('t1', $3)",
            &[up, down, process.as_ref().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(found, 1);
    let nil_process: i64 = client
        .query_one(
            "SELECT count(*) FROM meta.lineage_edges WHERE process_guid = '00000000-0000-0000-0000-000000000000'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(nil_process, 1);

    // The report and the job agree with the file.
    let lineage = estate.edges.len() as u64;
    assert_eq!(report.format, Format::Ndjson);
    assert_eq!(report.structural.rows, estate.structural as u64);
    assert_eq!(report.lineage_rows, lineage);
    assert_eq!(report.bulk.rows, estate.bulk as u64);
    assert_eq!(report.inserted, estate.assets.len() as u64);
    assert_eq!((report.updated, report.unchanged), (0, 0));
    assert!(!report.resumed && !report.already_complete);
    assert_eq!(report.job.runs, 1);
    assert!(report.bulk.rows_per_sec() > 0.0);
    let job = job_row(&client, &report.job_id).await;
    assert_eq!(job.get::<_, &str>(0), "done");
    assert!(job.get::<_, bool>(1) && job.get::<_, bool>(2));
    assert_eq!(
        job.get::<_, i64>(3) + job.get::<_, i64>(4),
        estate.structural as i64
    );
    assert_eq!(job.get::<_, i64>(5), estate.bulk as i64);

    // Structural before bulk: every structural chunk committed before the first bulk chunk,
    // in small transactions; and the transaction ids agree.
    let chunks = recorder.committed.lock().unwrap().clone();
    let first_bulk = chunks.iter().position(|c| c.lane == Lane::Bulk).unwrap();
    assert!(first_bulk > 1, "several structural chunks expected");
    assert!(chunks[first_bulk..].iter().all(|c| c.lane == Lane::Bulk));
    assert!(chunks[..first_bulk]
        .iter()
        .all(|c| c.asset_rows + c.edge_rows <= 100));
    assert!(chunks[first_bulk..].iter().all(|c| c.asset_rows <= 500));
    let row = client
        .query_one(
            "SELECT max(xmin::text::bigint) FILTER (WHERE type_name NOT IN ('Column', 'BIField')),
                    min(xmin::text::bigint) FILTER (WHERE type_name IN ('Column', 'BIField'))
             FROM meta.assets WHERE tenant_id = 't1'",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, i64>(0) < row.get::<_, i64>(1));

    // Progress ended on the bulk lane, at the end of the file.
    let last = progress.borrow().clone();
    assert_eq!(last.lane, Lane::Bulk);
    assert!(last.lane_done);
    assert_eq!(last.rows, estate.bulk as u64);
    assert_eq!(last.position, last.total);

    // One audit row, with the counts.
    let audit = client
        .query_one(
            "SELECT principal, action, request_id, detail FROM lily.audit_log WHERE tenant_id = 't1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(audit.get::<_, &str>(0), "cli:load");
    assert_eq!(audit.get::<_, &str>(1), "load");
    assert_eq!(audit.get::<_, Option<&str>>(2), Some("req-1"));
    let detail: Value = audit.get(3);
    assert_eq!(detail["outcome"], "done");
    assert_eq!(detail["run"]["bulk_rows"], estate.bulk);
    assert_eq!(detail["run"]["inserted"], estate.assets.len());
    assert_eq!(detail["job"]["lineage_rows"], lineage);

    // Running the same file again finds the finished job and does nothing but audit.
    let again = loader
        .load(&mut client, &LoadRequest::new("t1", "cli:load", &path))
        .await
        .unwrap();
    assert!(again.already_complete);
    assert_eq!(again.job_id, report.job_id);
    assert_eq!((again.structural.rows, again.bulk.rows), (0, 0));
    assert_eq!(again.job.runs, 2);
    // A forced restart rewrites nothing: every row is unchanged, versions stay 1.
    let restart = loader
        .load(
            &mut client,
            &LoadRequest::new("t1", "cli:load", &path).restart(true),
        )
        .await
        .unwrap();
    assert_eq!(restart.unchanged, estate.assets.len() as u64);
    assert_eq!((restart.inserted, restart.updated), (0, 0));
    assert_eq!(
        versions(&client, "t1").await,
        BTreeMap::from([(1, estate.assets.len() as i64)])
    );
    let audits: i64 = client
        .query_one(
            "SELECT count(*) FROM lily.audit_log WHERE action = 'load'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audits, 3);
}

#[tokio::test]
async fn guids_match_the_sql_function() {
    let (_pg, client) = metastore().await;
    let names = [
        "snow/DB/S0/T0/C0",
        "",
        "a'b\"c;d",
        "'); DROP TABLE meta.assets; --",
        "ünïcødé/表/🦀",
        "back\\slash\ttab\nnewline",
        &"long/".repeat(400),
    ];
    for tenant in ["t1", "t2", "x-y_z"] {
        for qn in names {
            let sql: String = client
                .query_one("SELECT meta.asset_guid($1, $2)::text", &[&tenant, &qn])
                .await
                .unwrap()
                .get(0);
            assert_eq!(asset_guid(tenant, qn).to_string(), sql, "{tenant} {qn:?}");
        }
    }
}

#[tokio::test]
async fn parquet_loads_the_same_as_ndjson_and_resumes_by_row() {
    let (_pg, mut client) = metastore().await;
    let dir = tempfile::tempdir().unwrap();
    let estate = Estate::new(40, 60);
    let ndjson = dir.path().join("e.ndjson");
    let parquet = dir.path().join("e.parquet");
    estate.write_ndjson(&ndjson);
    estate.write_parquet(&parquet, 700);

    Loader::new(small_chunks())
        .load(&mut client, &LoadRequest::new("t1", "cli:load", &ndjson))
        .await
        .unwrap();

    // Stop the Parquet load before its 4th bulk chunk, then resume.
    let stopper = Arc::new(Recorder {
        stop_before: Some((Lane::Bulk, 3)),
        ..Recorder::default()
    });
    let err = Loader::new(small_chunks())
        .with_observer(stopper)
        .load(&mut client, &LoadRequest::new("t2", "cli:load", &parquet))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Stopped {
                lane: Lane::Bulk,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_retryable());
    let partial = assets_of(&client, "t2").await;
    let bulk_done = partial
        .values()
        .filter(|w| w.type_name == "Column" || w.type_name == "BIField")
        .count();
    assert_eq!(bulk_done, 3 * 500);

    let report = Loader::new(small_chunks())
        .load(&mut client, &LoadRequest::new("t2", "cli:load", &parquet))
        .await
        .unwrap();
    assert_eq!(report.format, Format::Parquet);
    assert!(report.resumed);
    assert!(report.structural.already_done);
    assert_eq!(report.bulk.rows, (estate.bulk - 3 * 500) as u64);
    assert_eq!(report.job.bulk_rows, estate.bulk as u64);
    assert_eq!(report.job.inserted, estate.assets.len() as u64);
    assert_eq!(assets_of(&client, "t2").await, estate.assets);
    assert_eq!(assets_of(&client, "t1").await, estate.assets);
    assert_eq!(edges_of(&client, "t2").await, estate.edges.len());
    assert_eq!(
        versions(&client, "t2").await,
        BTreeMap::from([(1, estate.assets.len() as i64)])
    );
}

#[tokio::test]
async fn interrupted_load_resumes_exactly() {
    let (pg, mut client) = metastore().await;
    let dir = tempfile::tempdir().unwrap();
    let estate = Estate::new(50, 80);
    let path = dir.path().join("e.ndjson");
    estate.write_ndjson(&path);

    // 1. A failure injected before the 5th bulk chunk commits: 4 chunks stay.
    let stopper = Arc::new(Recorder {
        stop_before: Some((Lane::Bulk, 4)),
        ..Recorder::default()
    });
    let err = Loader::new(small_chunks())
        .with_observer(stopper.clone())
        .load(&mut client, &LoadRequest::new("t1", "cli:load", &path))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("test stop"), "{err}");
    let committed_bulk = stopper
        .committed
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.lane == Lane::Bulk)
        .map(|c| c.asset_rows)
        .sum::<u64>();
    assert_eq!(committed_bulk, 4 * 500);
    assert_eq!(count_bulk(&assets_of(&client, "t1").await), committed_bulk);
    let report_id = lily_load_job_id(&client).await;
    let job = job_row(&client, &report_id).await;
    assert_eq!(job.get::<_, &str>(0), "failed");
    assert!(job
        .get::<_, Option<&str>>(10)
        .unwrap()
        .contains("test stop"));
    assert_eq!(job.get::<_, i64>(5) as u64, committed_bulk);
    let failed_audit: Value = client
        .query_one(
            "SELECT detail FROM lily.audit_log ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed_audit["outcome"], "failed");

    // 2. The next run is cancelled in the middle of a chunk (the future dropped, as when the
    // process dies), right after its 2nd bulk chunk committed; its connection goes away too.
    let cancel = Arc::new(tokio::sync::Notify::new());
    struct CancelAfter(u64, Arc<tokio::sync::Notify>, Mutex<u64>);
    impl LoadObserver for CancelAfter {
        fn after_commit(&self, chunk: &ChunkInfo) {
            if chunk.lane == Lane::Bulk {
                let mut n = self.2.lock().unwrap();
                *n += 1;
                if *n == self.0 {
                    self.1.notify_one();
                }
            }
        }
    }
    let loader = Loader::new(small_chunks()).with_observer(Arc::new(CancelAfter(
        2,
        cancel.clone(),
        Mutex::new(0),
    )));
    let mut second = pg.connect("lily").await.unwrap();
    let request = LoadRequest::new("t1", "cli:load", &path);
    tokio::select! {
        r = loader.load(&mut second, &request) => panic!("not cancelled: {r:?}"),
        // A few milliseconds into the next chunk's transaction.
        _ = async { cancel.notified().await; tokio::time::sleep(Duration::from_millis(3)).await } => {}
    }
    drop(second);
    let after_cancel = job_row(&client, &report_id).await;
    let committed_after_cancel = after_cancel.get::<_, i64>(5) as u64;
    assert!(committed_after_cancel >= committed_bulk + 2 * 500);
    assert_eq!(
        count_bulk(&assets_of(&client, "t1").await),
        committed_after_cancel
    );

    // 3. A plain re-run finishes: exactly the file, nothing written twice.
    let report = Loader::new(small_chunks())
        .load(&mut client, &LoadRequest::new("t1", "cli:load", &path))
        .await
        .unwrap();
    assert!(report.resumed && report.structural.already_done);
    assert_eq!(
        report.bulk.rows,
        estate.bulk as u64 - committed_after_cancel
    );
    assert_eq!(report.job.runs, 3);
    assert_eq!(report.job.bulk_rows, estate.bulk as u64);
    assert_eq!(report.job.inserted, estate.assets.len() as u64);
    assert_eq!((report.job.updated, report.job.unchanged), (0, 0));
    assert_eq!(assets_of(&client, "t1").await, estate.assets);
    assert_eq!(
        versions(&client, "t1").await,
        BTreeMap::from([(1, estate.assets.len() as i64)])
    );
    assert_eq!(job_row(&client, &report_id).await.get::<_, &str>(0), "done");
}

async fn lily_load_job_id(client: &Client) -> String {
    client
        .query_one("SELECT job_id FROM lily.load_jobs", &[])
        .await
        .unwrap()
        .get(0)
}

fn write_lines(dir: &Path, name: &str, lines: &[&[u8]]) -> PathBuf {
    let p = dir.join(name);
    let mut data = Vec::new();
    for l in lines {
        data.extend_from_slice(l);
        data.push(b'\n');
    }
    std::fs::write(&p, data).unwrap();
    p
}

#[tokio::test]
async fn bad_rows_stop_the_load_with_file_line_and_reason() {
    let (_pg, mut client) = metastore().await;
    let dir = tempfile::tempdir().unwrap();
    let conn: &[u8] = br#"{"type_name":"Connection","qualified_name":"c","name":"c"}"#;
    let col: &[u8] =
        br#"{"type_name":"Column","qualified_name":"c/t/x","name":"x","parent_qualified_name":"c/t"}"#;
    let table: &[u8] =
        br#"{"type_name":"Table","qualified_name":"c/t","name":"t","parent_qualified_name":"c"}"#;
    let cases: Vec<(&str, Vec<&[u8]>, u64, &str)> = vec![
        (
            "json.ndjson",
            vec![conn, col, b"", br#"{"type_name":"Column","#, table],
            4,
            "invalid JSON",
        ),
        (
            "qn.ndjson",
            vec![conn, col, br#"{"type_name":"Table","name":"t"}"#],
            3,
            "missing qualified_name",
        ),
        (
            "type.ndjson",
            vec![
                conn,
                br#"{"type_name":"table","qualified_name":"q","name":"q"}"#,
            ],
            2,
            "bad type_name",
        ),
        (
            "utf8.ndjson",
            vec![
                conn,
                b"{\"type_name\":\"Table\",\"qualified_name\":\"q\xff\xfe\",\"name\":\"q\"}",
            ],
            2,
            "invalid UTF-8",
        ),
        (
            "attrs.ndjson",
            vec![
                conn,
                br#"{"type_name":"Table","qualified_name":"q","name":"q","attributes":"x"}"#,
            ],
            2,
            "attributes must be a JSON object",
        ),
        (
            "kind.ndjson",
            vec![conn, br#"{"kind":"lineage","upstream":"c"}"#],
            2,
            "missing downstream",
        ),
        (
            "array.ndjson",
            vec![conn, b"[1,2]"],
            2,
            "expected a JSON object",
        ),
        (
            "field.ndjson",
            vec![
                conn,
                br#"{"type_name":"Table","qualified_name":"q","name":5}"#,
            ],
            2,
            "bad field at column",
        ),
    ];
    let loader = Loader::new(small_chunks());
    for (name, lines, line, reason) in cases {
        let path = write_lines(dir.path(), name, &lines);
        let err = loader
            .load(&mut client, &LoadRequest::new("t1", "cli:load", &path))
            .await
            .unwrap_err();
        match &err {
            LoadError::BadRow {
                file,
                location,
                reason: why,
            } => {
                assert_eq!(file, &path);
                assert_eq!(*location, RowLocation::Line(line), "{name}: {err}");
                assert!(why.contains(reason), "{name}: {err}");
            }
            other => panic!("{name}: {other}"),
        }
        assert!(!err.is_retryable());
        let msg = err.to_string();
        assert!(
            msg.contains(name) && msg.contains(&format!("line {line}")),
            "{msg}"
        );
    }
    // Structural rows before a bad row are committed; bulk rows never are (the structural pass
    // checked the whole file first).
    let kinds: Vec<(String, i64)> = client
        .query(
            "SELECT type_name, count(*) FROM meta.assets GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(kinds, vec![("Connection".to_string(), 1)]);
    let failed: i64 = client
        .query_one(
            "SELECT count(*) FROM lily.load_jobs WHERE status = 'failed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 8);

    // Fixed, the file loads (CRLF line ends and blank lines are fine).
    let fixed = write_lines(
        dir.path(),
        "fixed.ndjson",
        &[conn, b"", col, b"  ", &[table, b"\r"].concat()],
    );
    let report = loader
        .load(&mut client, &LoadRequest::new("t1", "cli:load", &fixed))
        .await
        .unwrap();
    assert_eq!((report.structural.rows, report.bulk.rows), (2, 1));
    assert_eq!((report.inserted, report.unchanged), (2, 1));

    // Parquet: a bad row is named by its row number.
    let estate = {
        let mut e = Estate::new(2, 3);
        e.rows[5]["type_name"] = json!("not a type");
        e
    };
    let pq = dir.path().join("bad.parquet");
    estate.write_parquet(&pq, 4);
    let err = loader
        .load(&mut client, &LoadRequest::new("t2", "cli:load", &pq))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            LoadError::BadRow {
                location: RowLocation::Row(6),
                ..
            }
        ),
        "{err}"
    );
    // Not NDJSON, not Parquet.
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"PAR1 but not really").unwrap();
    let err = loader
        .load(&mut client, &LoadRequest::new("t2", "cli:load", &junk))
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::BadFile { .. }), "{err}");
    // Unknown tenants are refused before anything is read.
    let err = loader
        .load(&mut client, &LoadRequest::new("nobody", "cli:load", &fixed))
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::NoSuchTenant(_)), "{err}");
    let err = loader
        .load(
            &mut client,
            &LoadRequest::new("Bad'Tenant", "cli:load", &fixed),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::InvalidTenant(_)), "{err}");
}

#[tokio::test]
async fn hostile_names_are_data() {
    let (_pg, mut client) = metastore().await;
    let dir = tempfile::tempdir().unwrap();
    let mut e = Estate {
        rows: Vec::new(),
        assets: BTreeMap::new(),
        edges: Vec::new(),
        structural: 0,
        bulk: 0,
    };
    let hostile = [
        "conn'; DROP TABLE meta.assets; --",
        "a\"b\\c",
        "semi;colon,comma",
        // Control characters are refused, as the API refuses them (record.rs); the rest of
        // what COPY text escapes is data.
        "no-break\u{a0}space\u{2028}separator",
        "ünïcødé/表/🦀",
        "$1 %s {} \\N",
        "\\.",
    ];
    e.asset(
        "Connection",
        hostile[0],
        hostile[0],
        None,
        json!({"x'": "y\"; --", "\\N": null}),
    );
    for (i, h) in hostile.iter().enumerate().skip(1) {
        let qn = format!("{}/{h}", hostile[0]);
        e.asset(
            "Table",
            &qn,
            h,
            Some(hostile[0]),
            json!({"i": i, "name": h}),
        );
        e.asset(
            "Column",
            &format!("{qn}/{h}"),
            h,
            Some(&qn),
            json!({"note": format!("{h}{h}")}),
        );
    }
    e.edge(hostile[1], hostile[2], Some(hostile[3]));
    let path = dir.path().join("hostile.ndjson");
    e.write_ndjson(&path);
    Loader::default()
        .load(&mut client, &LoadRequest::new("t1", "key:abc'; --", &path))
        .await
        .unwrap();
    assert_eq!(assets_of(&client, "t1").await, e.assets);
    assert_eq!(edges_of(&client, "t1").await, 1);
    let principal: String = client
        .query_one("SELECT principal FROM lily.audit_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(principal, "key:abc'; --");
}

#[tokio::test]
async fn a_tenant_never_touches_another_tenants_rows() {
    let (_pg, mut client) = metastore().await;
    let dir = tempfile::tempdir().unwrap();
    let estate = Estate::new(10, 20);
    let path = dir.path().join("e.ndjson");
    estate.write_ndjson(&path);
    let loader = Loader::new(small_chunks());
    let a = loader
        .load(&mut client, &LoadRequest::new("t1", "cli:load", &path))
        .await
        .unwrap();
    let before: Vec<(String, String, i64, String)> = client
        .query(
            "SELECT guid::text, attributes::text, version, updated_at::text FROM meta.assets
             WHERE tenant_id = 't1' ORDER BY guid",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();

    // The same qualified names, other attributes, as tenant t2.
    let mut other = Estate::new(10, 20);
    for r in &mut other.rows {
        if r.get("kind").is_none() {
            r["attributes"] = json!({"tenant": "t2"});
        }
    }
    let path2 = dir.path().join("e2.ndjson");
    other.write_ndjson(&path2);
    let b = loader
        .load(&mut client, &LoadRequest::new("t2", "cli:load", &path2))
        .await
        .unwrap();
    assert_ne!(a.job_id, b.job_id);
    assert_eq!(
        b.inserted,
        estate.assets.len() as u64,
        "no conflicts with t1"
    );
    // The very same file as t2 is another job.
    let c = loader
        .load(&mut client, &LoadRequest::new("t2", "cli:load", &path))
        .await
        .unwrap();
    assert!(!c.already_complete);
    assert_ne!(c.job_id, a.job_id);
    assert_eq!(c.updated, estate.assets.len() as u64);

    let after: Vec<(String, String, i64, String)> = client
        .query(
            "SELECT guid::text, attributes::text, version, updated_at::text FROM meta.assets
             WHERE tenant_id = 't1' ORDER BY guid",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(before, after);
    let t2_versions = versions(&client, "t2").await;
    assert_eq!(
        t2_versions,
        BTreeMap::from([(2, estate.assets.len() as i64)])
    );
    let shared: i64 = client
        .query_one(
            "SELECT count(*) FROM meta.assets a JOIN meta.assets b USING (guid) WHERE a.tenant_id <> b.tenant_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(shared, 0);
}

#[tokio::test]
async fn repeated_and_changed_rows_upsert_last_wins() {
    let (_pg, mut client) = metastore().await;
    let dir = tempfile::tempdir().unwrap();
    let line = |qn: &str, v: u32| {
        json!({"type_name": "Column", "qualified_name": qn, "name": "c", "attributes": {"v": v}})
            .to_string()
    };
    // c0 repeated within one chunk, c1 across chunks (bulk chunks of 100 rows).
    let mut lines = vec![line("c0", 1), line("c0", 2)];
    lines.extend((0..150).map(|i| line(&format!("x{i}"), 0)));
    lines.push(line("c1", 1));
    lines.extend((150..250).map(|i| line(&format!("x{i}"), 0)));
    lines.push(line("c1", 2));
    let path = dir.path().join("dup.ndjson");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let cfg = LoadConfig {
        bulk_chunk_rows: 100,
        bulk_chunk_min_rows: 100,
        ..LoadConfig::default()
    };
    let report = Loader::new(cfg.clone())
        .load(&mut client, &LoadRequest::new("t1", "cli:load", &path))
        .await
        .unwrap();
    assert_eq!(report.bulk.rows, lines.len() as u64);
    assert_eq!(report.inserted, 252);
    assert_eq!(report.updated, 1, "c1 again in a later chunk");
    let got: Vec<(String, Value, i64)> = client
        .query(
            "SELECT qualified_name, attributes, version FROM meta.assets
             WHERE qualified_name IN ('c0', 'c1') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("c0".into(), json!({"v": 2}), 1),
            ("c1".into(), json!({"v": 2}), 2)
        ]
    );

    // A new file changing 3 rows (one of them only its status): exactly those are rewritten.
    let mut changed = lines.clone();
    changed[10] = line("x8", 9);
    changed[20] = line("x18", 9);
    changed[30] =
        json!({"type_name": "Column", "qualified_name": "x28", "name": "c", "attributes": {"v": 0}, "status": "DELETED"})
            .to_string();
    let path2 = dir.path().join("changed.ndjson");
    std::fs::write(&path2, changed.join("\n")).unwrap();
    let report = Loader::new(cfg)
        .load(&mut client, &LoadRequest::new("t1", "cli:load", &path2))
        .await
        .unwrap();
    // c1 is in the file twice (v1, then v2): both rewrite it again.
    assert_eq!((report.inserted, report.updated), (0, 3 + 2));
    let bumped: Vec<String> = client
        .query(
            "SELECT qualified_name FROM meta.assets WHERE version > 1 AND qualified_name <> 'c1' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(bumped, vec!["x18", "x28", "x8"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_throttle_interleaves_tenants_bulk_chunks() {
    let (pg, _client) = metastore().await;
    let dir = tempfile::tempdir().unwrap();
    let estate = Estate::new(20, 100);
    let p1 = dir.path().join("a.ndjson");
    let p2 = dir.path().join("b.ndjson");
    estate.write_ndjson(&p1);
    estate.write_ndjson(&p2);
    let throttle = Throttle::new(1);
    let order = Arc::new(Mutex::new(Vec::new()));
    let cfg = LoadConfig {
        bulk_chunk_rows: 100,
        bulk_chunk_min_rows: 100,
        ..LoadConfig::default()
    };
    let make = |tag: &'static str| {
        Loader::new(cfg.clone())
            .with_throttle(throttle.clone())
            .with_observer(Arc::new(Recorder {
                tag,
                order: Some(order.clone()),
                ..Recorder::default()
            }))
    };
    let (l1, l2) = (make("t1"), make("t2"));
    let (mut c1, mut c2) = (
        pg.connect("lily").await.unwrap(),
        pg.connect("lily").await.unwrap(),
    );
    let (q1, q2) = (
        LoadRequest::new("t1", "cli:load", &p1),
        LoadRequest::new("t2", "cli:load", &p2),
    );
    let (r1, r2) = tokio::join!(l1.load(&mut c1, &q1), l2.load(&mut c2, &q2));
    r1.unwrap();
    r2.unwrap();
    let order = order.lock().unwrap().clone();
    let chunks_each = estate.bulk.div_ceil(100);
    assert_eq!(order.len(), 2 * chunks_each);
    // Once both are in their bulk lanes they take turns (FIFO permits): no tenant runs more than
    // a few chunks in a row while the other still has chunks to write.
    let last_t1 = order.iter().rposition(|t| *t == "t1").unwrap();
    let last_t2 = order.iter().rposition(|t| *t == "t2").unwrap();
    let both_until = last_t1.min(last_t2);
    let first_seen = order
        .iter()
        .position(|t| *t == "t1")
        .unwrap()
        .max(order.iter().position(|t| *t == "t2").unwrap());
    // Both wait for permits from the first switch after both have written a chunk: before it
    // one of them may still be reading or in its structural lane (seen under load: t2, then
    // eight chunks of t1 while t2 had not asked for its second permit yet).
    let first_both = (first_seen + 1..=both_until)
        .find(|&i| order[i] != order[i - 1])
        .unwrap_or(first_seen);
    let mut longest = 0;
    let mut run = 0;
    let mut switches = 0;
    for i in first_both..=both_until {
        run = if i > first_both && order[i] == order[i - 1] {
            run + 1
        } else {
            1
        };
        if i > first_both && order[i] != order[i - 1] {
            switches += 1;
        }
        longest = longest.max(run);
    }
    // A loader whose next chunk is not read yet is not waiting, so the other may take a few
    // permits in a row; the test binary's other tests load the same two cores. Measured under
    // that load: runs of up to 4 (8 with four busy loops beside it, once 13). Without the
    // shared FIFO permits a loader runs all its chunks.
    assert!(longest <= 8, "{order:?}");
    assert!(
        switches >= chunks_each / 2,
        "{switches} switches: {order:?}"
    );
    assert_eq!(throttle.available(), 1);
}

fn parallel(writers: usize) -> LoadConfig {
    LoadConfig {
        bulk_writers: writers,
        ..small_chunks()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_writers_commit_in_file_order_and_resume_exactly() {
    let (pg, mut client) = metastore().await;
    let dir = tempfile::tempdir().unwrap();
    let estate = Estate::new(50, 80);
    let path = dir.path().join("e.ndjson");
    estate.write_ndjson(&path);

    // Three writers; the 6th bulk chunk (index 5) fails before its commit. Chunks after it
    // are being written at the same time and must roll back; the ones before it commit.
    let stopper = Arc::new(Recorder {
        stop_before: Some((Lane::Bulk, 5)),
        ..Recorder::default()
    });
    let err = Loader::new(parallel(3))
        .with_connect(pg.connection("lily"))
        .with_observer(stopper.clone())
        .load(&mut client, &LoadRequest::new("t1", "cli:load", &path))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("test stop before bulk chunk 5"),
        "{err}"
    );
    let bulk: Vec<ChunkInfo> = stopper
        .committed
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.lane == Lane::Bulk)
        .cloned()
        .collect();
    assert_eq!(
        bulk.iter().map(|c| c.index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4],
        "commits in file order, none after the failed chunk"
    );
    // Each chunk ends where the next begins: the committed rows are a prefix of the file.
    for pair in bulk.windows(2) {
        assert!(pair[0].end_position < pair[1].end_position);
    }
    let committed: u64 = bulk.iter().map(|c| c.asset_rows).sum();
    assert_eq!(count_bulk(&assets_of(&client, "t1").await), committed);
    let job_id = lily_load_job_id(&client).await;
    assert_eq!(
        job_row(&client, &job_id).await.get::<_, i64>(5) as u64,
        committed
    );

    // The re-run, parallel again, loads exactly the rest.
    let report = Loader::new(parallel(3))
        .with_connect(pg.connection("lily"))
        .load(&mut client, &LoadRequest::new("t1", "cli:load", &path))
        .await
        .unwrap();
    assert!(report.resumed);
    assert_eq!(report.bulk.rows, estate.bulk as u64 - committed);
    assert_eq!(report.job.bulk_rows, estate.bulk as u64);
    assert_eq!(report.job.inserted, estate.assets.len() as u64);
    assert_eq!(assets_of(&client, "t1").await, estate.assets);
    assert_eq!(
        versions(&client, "t1").await,
        BTreeMap::from([(1, estate.assets.len() as i64)])
    );
    assert_eq!(job_row(&client, &job_id).await.get::<_, &str>(0), "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_writers_serialize_chunks_that_share_assets() {
    let (pg, mut client) = metastore().await;
    let dir = tempfile::tempdir().unwrap();
    let line = |qn: &str, v: u32| {
        json!({"type_name": "Column", "qualified_name": qn, "name": "c", "attributes": {"v": v}})
            .to_string()
    };
    // `c` is in every chunk of 100 rows, with a growing value: written by concurrent
    // transactions it would deadlock or race; in file order the last value wins.
    let mut lines = Vec::new();
    for chunk in 0..12u32 {
        lines.push(line("c", chunk));
        lines.extend((0..99).map(|i| line(&format!("x{chunk}_{i}"), 0)));
    }
    let path = dir.path().join("shared.ndjson");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let cfg = LoadConfig {
        bulk_chunk_rows: 100,
        bulk_chunk_min_rows: 100,
        bulk_writers: 3,
        ..LoadConfig::default()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        Loader::new(cfg)
            .with_connect(pg.connection("lily"))
            .load(&mut client, &LoadRequest::new("t1", "cli:load", &path)),
    )
    .await
    .expect("no deadlock")
    .unwrap();
    assert_eq!(report.bulk.rows, lines.len() as u64);
    assert_eq!(report.inserted, 1 + 12 * 99);
    assert_eq!(report.updated, 11);
    let (v, version): (Value, i64) = client
        .query_one(
            "SELECT attributes, version FROM meta.assets WHERE qualified_name = 'c'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((v, version), (json!({"v": 11}), 12));
}
