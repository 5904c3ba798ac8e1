//! A bulk load paces itself on change-data-capture: while a consumer of the metastore's slot
//! falls behind, bulk chunks wait, so near-real-time changes committed during the load are never
//! queued behind more than a bounded amount of bulk WAL. Real PostgreSQL, real capture.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lily_cdc::BatchKind;
use lily_load::{LoadConfig, LoadRequest, Loader};
use lily_pgharness::PgCluster;
use lily_tests::{capture_config, start_capture, wait_streaming};

async fn slot_lag(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
             FROM pg_replication_slots WHERE slot_name = 'pacing'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_chunks_wait_for_a_lagging_consumer() {
    let pg = PgCluster::start().await.unwrap();
    pg.create_database("lily").await.unwrap();
    let url = pg.url("lily");
    let client = pg.connect("lily").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    client
        .batch_execute("INSERT INTO meta.tenants (tenant_id, name) VALUES ('t1', 'one')")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cols.ndjson");
    let columns = 20_000u64;
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        writeln!(
            f,
            r#"{{"type_name":"Table","qualified_name":"t","name":"t"}}"#
        )
        .unwrap();
        for i in 0..columns {
            writeln!(f, r#"{{"type_name":"Column","qualified_name":"t/c{i}","name":"c{i}","parent_qualified_name":"t","attributes":{{"order":{i}}}}}"#).unwrap();
        }
    }

    let (capture, mut sub) = start_capture(
        capture_config(&url, "pacing", "pacing", &["meta.assets"]),
        "probe",
    );
    wait_streaming(&client, "pacing").await;

    // The consumer holds back until told to go.
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let streamed = Arc::new(AtomicU64::new(0));
    let counted = streamed.clone();
    let consumer = tokio::spawn(async move {
        let mut go = go;
        go.wait_for(|g| *g).await.unwrap();
        while let Some(d) = sub.recv().await {
            if let BatchKind::Rows { records, .. } = &d.batch.kind {
                counted.fetch_add(records.num_rows() as u64, Ordering::Relaxed);
            }
            d.ack();
        }
    });

    let max_lag = 256 << 10;
    let cfg = LoadConfig {
        max_replication_lag_bytes: Some(max_lag),
        replicated_chunk_rows: 500,
        bulk_writers: 2,
        ..LoadConfig::default()
    };
    let loader = Loader::new(cfg).with_connect(pg.connection("lily"));
    let mut load_client = pg.connect("lily").await.unwrap();
    let load = tokio::spawn(async move {
        loader
            .load(&mut load_client, &LoadRequest::new("t1", "test", &path))
            .await
    });

    // Stalled consumer: the load stops short, and the slot's lag stays within the limit plus
    // the chunks that had passed the check (two writers of 500 rows).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!load.is_finished(), "the load must wait for the consumer");
    let loaded: i64 = client
        .query_one(
            "SELECT count(*) FROM meta.assets WHERE type_name = 'Column'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        (loaded as u64) < columns / 2,
        "{loaded} of {columns} columns loaded while the consumer was stalled"
    );
    let lag = slot_lag(&client).await;
    assert!(
        lag < max_lag as i64 + (2 << 20),
        "slot lag {lag} bytes with a limit of {max_lag}"
    );

    // The consumer catches up: the load finishes, every row is streamed.
    go_tx.send(true).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(120), load)
        .await
        .expect("the load finishes once the consumer reads")
        .unwrap()
        .unwrap();
    assert_eq!(report.bulk.rows, columns);
    assert!(
        report.bulk.paced > Duration::from_secs(1),
        "{:?}",
        report.bulk.paced
    );
    for _ in 0..600 {
        if streamed.load(Ordering::Relaxed) > columns {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(streamed.load(Ordering::Relaxed), columns + 1);
    capture.stop().await.unwrap();
    let _ = consumer.await;
}
