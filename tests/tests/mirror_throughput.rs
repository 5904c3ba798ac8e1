//! How fast capture + lily-mirror move a large volume (ignored by default; run with
//! `cargo test -p lily-tests --test mirror_throughput -- --ignored --nocapture`).
//! `LILY_THROUGHPUT_ROWS` sets the row count (default 1,000,000).

use std::time::{Duration, Instant};

use lily_pgharness::PgCluster;
use lily_tests::{
    capture_config, compare_table, create_databases, current_lsn, ended, prepare_source,
    start_capture, wait_for_slot,
};

const DDL: &str = "
CREATE TABLE public.assets (
    guid uuid PRIMARY KEY,
    tenant text,
    qualified_name text,
    name text,
    attributes jsonb,
    version bigint,
    updated_at timestamptz
);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: a million rows through capture and the mirror"]
async fn mirror_throughput() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LILY_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let rows: u64 = std::env::var("LILY_THROUGHPUT_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let cluster = PgCluster::start().await.unwrap();
    create_databases(&cluster, &["src", "dst"], DDL).await;
    let src = cluster.connect("src").await.unwrap();
    let dst = cluster.connect("dst").await.unwrap();
    prepare_source(&src).await;
    src.batch_execute("CREATE PUBLICATION bench_pub FOR TABLE public.assets")
        .await
        .unwrap();
    src.batch_execute("SELECT pg_create_logical_replication_slot('bench_slot', 'pgoutput')")
        .await
        .unwrap();
    let (capture, sub) = start_capture(
        capture_config(
            &cluster.url("src"),
            "bench_slot",
            "bench_pub",
            &["public.assets"],
        ),
        "mirror",
    );
    let url = cluster.url("dst");
    // LILY_THROUGHPUT_NULL=1: a consumer that only acknowledges, to measure capture alone.
    let null = std::env::var("LILY_THROUGHPUT_NULL").is_ok();
    let mirror = tokio::spawn(async move {
        if null {
            let mut sub = sub;
            while let Some(d) = sub.recv().await {
                d.ack();
            }
            Ok(())
        } else {
            lily_mirror::run(&url, sub).await
        }
    });

    for (phase, sql) in [
        (
            "insert",
            format!(
                "INSERT INTO public.assets SELECT ('00000001-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, \
                 'tenant' || (g % 7), 'default/x/' || g, 'asset ' || g, \
                 jsonb_build_object('i', g, 's', md5(g::text), 'tags', jsonb_build_array('a', 'b')), 1, \
                 '2024-01-01'::timestamptz + g * interval '1 second' FROM generate_series(1, {rows}) g"
            ),
        ),
        (
            "update",
            "UPDATE public.assets SET version = version + 1, name = name || '!'".to_string(),
        ),
        ("delete", "DELETE FROM public.assets WHERE tenant IN ('tenant1', 'tenant3')".to_string()),
    ] {
        let started = Instant::now();
        let changed = src.execute(sql.as_str(), &[]).await.unwrap();
        let written = started.elapsed();
        let lsn = current_lsn(&src).await;
        wait_for_slot(&src, "bench_slot", &lsn, Duration::from_secs(600), || {
            ended("the mirror", &mirror).or_else(|| ended("capture", &capture.task))
        })
        .await
        .unwrap();
        let total = started.elapsed();
        println!(
            "{phase}: {changed} rows written in {written:.1?}, mirrored after {total:.1?} ({:.0} rows/s end to end)",
            changed as f64 / total.as_secs_f64()
        );
    }
    if !null {
        let n = compare_table("public.assets", "src", &src, "dst", &dst)
            .await
            .unwrap();
        println!("identical: {n} rows");
    }
    capture.stop().await.unwrap();
    mirror.await.unwrap().unwrap();
}
