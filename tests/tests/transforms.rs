//! Every SQL transform under `sql/` against its fixture, on a real PostgreSQL.
//!
//! For `sql/NAME.sql` (and the checks in `sql/tests/`), the header names its sources
//! (`-- sources: schema.table, ...`). A file whose header has `-- expect-error: TEXT` must fail
//! to plan with a message containing TEXT. Any other file needs `sql/fixtures/NAME.sql`: what
//! comes before its `-- changes` line runs before capture starts (reference data), what comes
//! after runs while capture streams. The changes go through capture and the transform, and the
//! output rows (without the volatile `_` columns) must equal `sql/fixtures/NAME.golden.jsonl`.
//! Set `LILY_UPDATE_GOLDEN=1` to write the golden files instead (then review the diff).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lily_cdc::BatchKind;
use lily_pgharness::PgCluster;
use lily_tests::{capture_config, start_capture};
use lily_transform::{MetastoreReader, SourceTable, Transform};

struct Case {
    name: String,
    sql_path: PathBuf,
    sql: String,
    sources: Vec<String>,
    expect_error: Option<String>,
}

fn sql_dir() -> PathBuf {
    manifest_dir().join("../sql")
}

fn header(sql: &str, key: &str) -> Option<String> {
    sql.lines()
        .take_while(|l| l.starts_with("--") || l.trim().is_empty())
        .find_map(|l| {
            l.strip_prefix("--")
                .map(str::trim)
                .and_then(|l| l.strip_prefix(key))
        })
        .map(|v| v.trim().to_string())
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for dir in [sql_dir(), sql_dir().join("tests")] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        paths.sort();
        for p in paths {
            let sql = std::fs::read_to_string(&p).unwrap();
            let sources = header(&sql, "sources:")
                .unwrap_or_else(|| panic!("{}: no `-- sources:` header", p.display()))
                .split(',')
                .map(|s| s.trim().to_string())
                .collect();
            out.push(Case {
                name: p.file_stem().unwrap().to_string_lossy().into_owned(),
                expect_error: header(&sql, "expect-error:"),
                sql_path: p,
                sql,
                sources,
            });
        }
    }
    out
}

async fn plan(
    case: &Case,
    client: &tokio_postgres::Client,
    url: &str,
) -> Result<(Transform, Arc<MetastoreReader>), String> {
    let mut sources = Vec::new();
    for t in &case.sources {
        let schema = lily_pipeline::catalog::table_schema(client, t)
            .await?
            .ok_or_else(|| format!("no table {t}"))?;
        sources.push(SourceTable {
            name: schema.name.clone(),
            schema: schema.arrow.clone(),
            filter: None,
        });
    }
    let reader = MetastoreReader::new(url.parse().unwrap());
    Transform::plan(&case.sql, &sources, &lily_transform::functions(&reader))
        .await
        .map(|t| (t, reader))
        .map_err(|e| match e.location() {
            Some(l) => format!("{}:{}: {e}", case.sql_path.display(), l),
            None => format!("{}: {e}", case.sql_path.display()),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_transforms_match_their_golden_output() {
    let cluster = PgCluster::start().await.unwrap();
    let update = std::env::var("LILY_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    let all = cases();
    assert!(all.len() >= 4, "found only {} SQL files", all.len());
    for case in &all {
        let db = format!("t_{}", case.name);
        cluster.create_database(&db).await.unwrap();
        let url = cluster.url(&db);
        let client = cluster.connect(&db).await.unwrap();
        lily_metastore::migrate(&client).await.unwrap();
        let planned = plan(case, &client, &url).await;
        if let Some(expected) = &case.expect_error {
            match planned {
                Ok(_) => failures.push(format!(
                    "{}: planned, but expected an error containing {expected:?}",
                    case.name
                )),
                Err(e) if e.contains(expected.as_str()) => eprintln!("ok (fails as expected): {e}"),
                Err(e) => failures.push(format!(
                    "{}: error {e:?} does not contain {expected:?}",
                    case.name
                )),
            }
            continue;
        }
        let (mut transform, reader) = match planned {
            Ok(t) => t,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let fixture_path = sql_dir()
            .join("fixtures")
            .join(format!("{}.sql", case.name));
        let fixture = std::fs::read_to_string(&fixture_path)
            .unwrap_or_else(|_| panic!("{} has no fixture {}", case.name, fixture_path.display()));
        let (setup, changes) = fixture
            .split_once("\n-- changes\n")
            .unwrap_or_else(|| panic!("{}: no `-- changes` line", fixture_path.display()));
        client.batch_execute(setup).await.unwrap();

        let tables: Vec<&str> = case.sources.iter().map(String::as_str).collect();
        let slot = format!("golden_{}", case.name);
        let (capture, mut sub) =
            start_capture(capture_config(&url, &slot, &slot, &tables), "golden");
        lily_tests::wait_streaming(&client, &slot).await;
        client.batch_execute(changes).await.unwrap();
        client
            .batch_execute("SELECT pg_logical_emit_message(true, 'lily-fixture-end', '')")
            .await
            .unwrap();
        let mut rows: Vec<serde_json::Value> = Vec::new();
        loop {
            let d = tokio::time::timeout(Duration::from_secs(30), sub.recv())
                .await
                .expect("fixture changes arrive")
                .expect("capture runs");
            match &d.batch.kind {
                BatchKind::Rows { table, records } => {
                    let before = reader.queries_run();
                    let out = transform.run(&table.name, records.clone()).await;
                    // One metastore query per reference function per batch, however many
                    // rows and however many fields of the result the SQL reads.
                    let queries = reader.queries_run() - before;
                    let functions = ["asset(", "downstream(", "upstream("]
                        .iter()
                        .filter(|f| case.sql.contains(*f))
                        .count() as u64;
                    if queries > functions {
                        failures.push(format!(
                            "{}: {queries} metastore queries for one batch of {} rows",
                            case.name,
                            records.num_rows()
                        ));
                    }
                    match out {
                        Ok(batches) => {
                            for b in &batches {
                                for mut obj in lily_tests::batch_objects(b) {
                                    obj.retain(|k, _| !k.starts_with('_'));
                                    rows.push(serde_json::Value::Object(obj));
                                }
                            }
                        }
                        Err(e) => failures.push(format!("{}: run failed: {e}", case.name)),
                    }
                }
                BatchKind::Message { prefix, .. } if prefix == "lily-fixture-end" => {
                    d.ack();
                    break;
                }
                _ => {}
            }
            d.ack();
        }
        capture.stop().await.unwrap();
        let golden_path = sql_dir()
            .join("fixtures")
            .join(format!("{}.golden.jsonl", case.name));
        let got: String = rows.iter().map(|r| format!("{r}\n")).collect();
        if update {
            std::fs::write(&golden_path, &got).unwrap();
            eprintln!("wrote {}", golden_path.display());
            continue;
        }
        let want = std::fs::read_to_string(&golden_path)
            .unwrap_or_else(|_| panic!("{}: no golden file {}", case.name, golden_path.display()));
        let want: Vec<serde_json::Value> = want
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if want != rows {
            failures.push(format!(
                "{}: output differs from {}\n--- want\n{}\n--- got\n{}",
                case.name,
                golden_path.display(),
                want.iter().map(|r| format!("{r}\n")).collect::<String>(),
                got
            ));
        } else {
            eprintln!("ok: {} ({} rows)", case.name, rows.len());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// This package's directory, read when the test runs: a build directory shared between
/// checkouts may hold a binary compiled in another one, so the compile-time value could point
/// there.
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
}
