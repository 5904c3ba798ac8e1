//! Bulk-lane throughput: a generated NDJSON estate (columns plus ~1% structural rows) loaded into
//! a throwaway cluster, several times, medians printed.
//!
//! ```text
//! CARGO_TARGET_DIR=$HOME/.cache/atlanlily/target cargo bench -p lily-load --bench load
//! LILY_LOAD_ROWS=1000000 LILY_LOAD_RUNS=3 cargo bench -p lily-load --bench load
//! ```
//!
//! LILY_LOAD_ROWS (default 10,000,000) is the number of column rows; LILY_LOAD_RUNS (default 3)
//! the number of fresh loads (tables truncated before each); LILY_LOAD_WRITERS (default
//! [`LoadConfig::bulk_writers`]) the bulk lane's connections; LILY_LOAD_SHARED_BUFFERS (default
//! 1GB) the server's buffer pool; LILY_LOAD_SETUP_SQL, a file of SQL run once after migrating
//! (a schema variant measured with the same build; absolute path, as `cargo bench` runs in
//! `engine/load`; examples in `benches/variants/`). A last run loads the same file again
//! over the loaded tables (every row unchanged: the no-op upsert path).
//! The 10M file is about 3.2 GB and the loaded table about 4.5 GB plus WAL: check `df` first.

use std::io::Write;
use std::time::{Duration, Instant};

use lily_load::{LoadConfig, LoadReport, LoadRequest, Loader};
use lily_pgharness::{ClusterOptions, PgCluster};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Qualified names like `default/snowflake/<epoch>/DB_n/SCHEMA_nn/TABLE_nnnnn/COLUMN_nnn` and
/// column attributes like those of ARCHITECTURE.md's capacity measurement; 100 columns a table.
fn generate(path: &std::path::Path, columns: usize) -> std::io::Result<(usize, usize)> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let conn = "default/snowflake/1700000000";
    writeln!(
        f,
        r#"{{"type_name":"Connection","qualified_name":"{conn}","name":"snowflake","attributes":{{"host":"acme.snowflakecomputing.com"}}}}"#
    )?;
    let mut structural = 1;
    let per_table = 100;
    let tables = columns.div_ceil(per_table);
    let mut written = 0;
    for t in 0..tables {
        let db = format!("{conn}/DB_{}", t % 8);
        let schema = format!("{db}/SCHEMA_{:02}", t % 64);
        if t < 8 {
            writeln!(
                f,
                r#"{{"type_name":"Database","qualified_name":"{db}","name":"DB_{}","parent_qualified_name":"{conn}"}}"#,
                t % 8
            )?;
            structural += 1;
        }
        if t < 64 {
            writeln!(
                f,
                r#"{{"type_name":"Schema","qualified_name":"{schema}","name":"SCHEMA_{:02}","parent_qualified_name":"{db}"}}"#,
                t % 64
            )?;
            structural += 1;
        }
        let table = format!("{schema}/TABLE_{t:06}");
        writeln!(
            f,
            r#"{{"type_name":"Table","qualified_name":"{table}","name":"TABLE_{t:06}","parent_qualified_name":"{schema}","attributes":{{"rowCount":{},"columnCount":{per_table},"sizeBytes":{},"ownerUsers":["ann"],"certificateStatus":"VERIFIED"}}}}"#,
            t * 1000,
            t * 65536
        )?;
        structural += 1;
        for c in 0..per_table.min(columns - written) {
            let description = if c % 4 == 0 {
                r#","description":"Identifier of the customer account""#
            } else {
                ""
            };
            writeln!(
                f,
                r#"{{"type_name":"Column","qualified_name":"{table}/COLUMN_{c:03}","name":"COLUMN_{c:03}","parent_qualified_name":"{table}","attributes":{{"dataType":"NUMBER(38,0)","order":{c},"isNullable":{},"isPrimary":{}{description}}}}}"#,
                c % 3 != 0,
                c == 0
            )?;
        }
        written += per_table.min(columns - written);
    }
    f.flush()?;
    Ok((structural, written))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn line(label: &str, r: &LoadReport) {
    println!(
        "{label}: structural {} rows in {:.2}s ({:.0} rows/s); bulk {} rows in {:.2}s = {:.0} rows/s; inserted {} updated {} unchanged {}; total {:.2}s",
        r.structural.rows,
        r.structural.elapsed.as_secs_f64(),
        r.structural.rows_per_sec(),
        r.bulk.rows,
        r.bulk.elapsed.as_secs_f64(),
        r.bulk.rows_per_sec(),
        r.inserted,
        r.updated,
        r.unchanged,
        r.elapsed.as_secs_f64()
    );
}

async fn bench() {
    let columns = env_usize("LILY_LOAD_ROWS", 10_000_000);
    let runs = env_usize("LILY_LOAD_RUNS", 3).max(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("estate.ndjson");
    let t = Instant::now();
    let (structural, bulk) = generate(&path, columns).expect("generating the file");
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "generated {bulk} columns + {structural} structural rows, {:.0} MB, in {:.1}s",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // As the capacity measurement: a bigger buffer pool and fewer checkpoints than the harness
    // defaults (which keep fsync and full_page_writes off).
    let shared_buffers =
        std::env::var("LILY_LOAD_SHARED_BUFFERS").unwrap_or_else(|_| "1GB".to_string());
    println!("shared_buffers: {shared_buffers}");
    let opts = ClusterOptions::default()
        .setting("shared_buffers", shared_buffers.as_str())
        .setting("max_wal_size", "2GB")
        .setting("checkpoint_timeout", "30min");
    let pg = PgCluster::start_with(opts).await.expect("cluster");
    pg.create_database("lily").await.expect("database");
    let mut client = pg.connect("lily").await.expect("connect");
    lily_metastore::migrate(&client).await.expect("migrate");
    if let Ok(file) = std::env::var("LILY_LOAD_SETUP_SQL") {
        let sql = std::fs::read_to_string(&file).expect("reading LILY_LOAD_SETUP_SQL");
        client
            .batch_execute(&sql)
            .await
            .expect("LILY_LOAD_SETUP_SQL");
        println!("setup SQL: {file}");
    }
    client
        .batch_execute("INSERT INTO meta.tenants (tenant_id, name) VALUES ('bench', 'bench')")
        .await
        .expect("tenant");

    let writers = env_usize("LILY_LOAD_WRITERS", LoadConfig::default().bulk_writers);
    let loader = Loader::new(LoadConfig {
        bulk_writers: writers,
        ..LoadConfig::default()
    })
    .with_connect(pg.connection("lily"));
    println!("bulk writers: {writers}");
    let mut bulk_rates = Vec::new();
    let mut totals = Vec::new();
    for run in 1..=runs {
        client
            .batch_execute("TRUNCATE meta.assets, meta.lineage_edges, lily.load_jobs; CHECKPOINT")
            .await
            .expect("truncate");
        let report = loader
            .load(
                &mut client,
                &LoadRequest::new("bench", "bench:load", &path).restart(true),
            )
            .await
            .expect("load");
        line(&format!("run {run}/{runs} (fresh)"), &report);
        bulk_rates.push(report.bulk.rows_per_sec());
        totals.push(report.elapsed.as_secs_f64());
    }
    let again = loader
        .load(
            &mut client,
            &LoadRequest::new("bench", "bench:load", &path).restart(true),
        )
        .await
        .expect("reload");
    line("reload (all unchanged)", &again);
    println!(
        "median over {runs} fresh loads of {bulk} columns: bulk lane {:.0} rows/s, whole load {:.2}s ({:.0} rows/s overall)",
        median(bulk_rates),
        median(totals.clone()),
        (bulk + structural) as f64 / median(totals)
    );
    drop(client);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would run this with other flags.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench());
}
