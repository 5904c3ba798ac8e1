//! Capture against a real PostgreSQL started by the harness.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use lily_cdc::{BatchKind, Capture, CaptureConfig, CaptureError, ChangeBatch};
use lily_pgharness::{ClusterOptions, PgCluster};
use lily_replication::{ConnectionConfig, ReplicationError, SourceSpec};
use lily_runtime::ShutdownTrigger;
use tokio::task::JoinHandle;

type Seen = Arc<Mutex<Vec<Arc<ChangeBatch>>>>;

struct Running {
    seen: Seen,
    stop: ShutdownTrigger,
    capture: JoinHandle<Result<(), CaptureError>>,
    consumer: JoinHandle<()>,
}

impl Running {
    async fn finish(self) -> Result<Vec<Arc<ChangeBatch>>, CaptureError> {
        self.stop.trigger();
        let r = tokio::time::timeout(Duration::from_secs(30), self.capture)
            .await
            .expect("capture stops")
            .expect("capture task");
        let _ = self.consumer.await;
        let seen = self.seen.lock().unwrap().clone();
        r.map(|_| seen)
    }
}

fn config(cluster: &PgCluster, db: &str, tables: &[&str], slot: &str) -> CaptureConfig {
    let mut cfg = CaptureConfig::new(
        ConnectionConfig::from_url(&cluster.url(db)).unwrap(),
        SourceSpec {
            slot: slot.into(),
            publication: format!("{slot}_pub"),
            tables: tables.iter().map(|t| t.to_string()).collect(),
            row_filters: Vec::new(),
        },
    );
    cfg.reconnect_initial = Duration::from_millis(100);
    cfg.reconnect_max = Duration::from_millis(500);
    cfg.checkpoint_interval = Duration::from_millis(200);
    cfg.status_interval = Some(Duration::from_millis(200));
    cfg
}

/// Starts capture with one consumer that records and acknowledges every batch.
fn start(cfg: CaptureConfig) -> Running {
    let mut capture = Capture::new(cfg).unwrap();
    let mut sub = capture.subscribe("collect");
    let seen: Seen = Arc::default();
    let (stop, stop_rx) = ShutdownTrigger::new();
    let capture = tokio::spawn(async move {
        let r = capture.run(stop_rx).await;
        if let Err(e) = &r {
            eprintln!("capture ended: {e}");
        }
        r
    });
    let sink = seen.clone();
    let consumer = tokio::spawn(async move {
        while let Some(d) = sub.recv().await {
            sink.lock().unwrap().push(d.batch.clone());
            d.ack();
        }
    });
    Running {
        seen,
        stop,
        capture,
        consumer,
    }
}

/// Runs capture until it stops by itself and returns its (permanent) error.
async fn capture_error(cfg: CaptureConfig) -> CaptureError {
    let run = start(cfg);
    tokio::time::timeout(Duration::from_secs(30), run.capture)
        .await
        .expect("a permanent error stops capture")
        .unwrap()
        .unwrap_err()
}

async fn setup(cluster: &PgCluster, db: &str, ddl: &str) -> tokio_postgres::Client {
    cluster.create_database(db).await.unwrap();
    let c = cluster.connect(db).await.unwrap();
    // Tables first: once schema lily exists it shadows public for the role named lily.
    c.batch_execute(ddl).await.unwrap();
    c.batch_execute(
        "CREATE SCHEMA lily; CREATE TABLE lily.checkpoints(slot_name text primary key, \
         confirmed_lsn pg_lsn not null, updated_at timestamptz not null default now());",
    )
    .await
    .unwrap();
    c
}

async fn current_lsn(c: &tokio_postgres::Client) -> String {
    c.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits until the slot confirmed everything up to `lsn`.
async fn wait_confirmed(c: &tokio_postgres::Client, slot: &str, lsn: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done: Option<bool> = c
            .query_opt(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot, &lsn],
            )
            .await
            .unwrap()
            .and_then(|r| r.get(0));
        if done == Some(true) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot {slot} did not confirm {lsn} in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_slot(c: &tokio_postgres::Client, slot: &str) {
    for _ in 0..400 {
        let n = c
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active AND confirmed_flush_lsn IS NOT NULL",
                &[&slot],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if n == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("slot {slot} never became active");
}

fn rows(batches: &[Arc<ChangeBatch>], table: &str) -> Vec<RecordBatch> {
    batches
        .iter()
        .filter_map(|b| match &b.kind {
            BatchKind::Rows { table: t, records } if t.qualified_name() == table => {
                Some(records.clone())
            }
            _ => None,
        })
        .collect()
}

fn ops(batches: &[RecordBatch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name("_op").unwrap().as_string::<i32>().clone();
            (0..a.len())
                .map(move |i| a.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_type_arrives_typed() {
    let cluster = PgCluster::start().await.unwrap();
    let c = setup(
        &cluster,
        "src",
        "CREATE TYPE mood AS ENUM ('ok','sad');
         CREATE TABLE public.items (id int4 primary key, name text, tags text[], score numeric(10,2),
             doc jsonb, seen timestamptz, m mood, flag bool);
         CREATE TABLE public.other (k int8 primary key, v text);",
    )
    .await;
    let run = start(config(
        &cluster,
        "src",
        &["public.items", "public.other"],
        "s_types",
    ));
    wait_slot(&c, "s_types").await;
    c.batch_execute(
        "INSERT INTO items VALUES (1, 'a''b', '{x,\"y z\",NULL}', 12.3, '{\"k\":1}', '2026-11-24 10:00:00.5+02', 'ok', true);
         INSERT INTO other VALUES (10, 'ten');
         UPDATE items SET name = 'renamed' WHERE id = 1;
         UPDATE items SET id = 2 WHERE id = 1;
         DELETE FROM items WHERE id = 2;
         BEGIN; INSERT INTO items (id) VALUES (3); SELECT pg_logical_emit_message(true, 'lily', 'hello'); COMMIT;
         TRUNCATE other;",
    )
    .await
    .unwrap();
    let lsn = current_lsn(&c).await;
    wait_confirmed(&c, "s_types", &lsn).await;
    let seen = run.finish().await.unwrap();

    let items = rows(&seen, "public.items");
    assert_eq!(
        ops(&items),
        ["insert", "update", "update", "delete", "insert"]
    );
    let first = &items[0];
    let schema = first.schema();
    assert_eq!(
        schema.field_with_name("m").unwrap().metadata()["pg.type"],
        "public.mood"
    );
    assert_eq!(
        schema.field_with_name("id").unwrap().metadata()["pg.key"],
        "true"
    );
    let all = arrow_select_concat(&items);
    let ids = all
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int32Type>();
    // A delete's data columns hold the old image (the key, under DEFAULT).
    assert_eq!((ids.value(0), ids.value(2), ids.value(3)), (1, 2, 2));
    // The primary-key change carries the old key; the delete carries the key only.
    let old = all.column_by_name("_old").unwrap().as_struct();
    let old_ids = old
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int32Type>();
    assert!(
        old.is_null(1),
        "a non-key update under DEFAULT has no old tuple"
    );
    assert_eq!(old_ids.value(2), 1);
    assert_eq!(old_ids.value(3), 2);
    let names = all.column_by_name("name").unwrap().as_string::<i32>();
    assert_eq!(names.value(0), "a'b");
    assert_eq!(names.value(1), "renamed");
    let tags = all.column_by_name("tags").unwrap().as_list::<i32>();
    let t0 = tags.value(0);
    let t0 = t0.as_string::<i32>();
    assert_eq!(
        (t0.value(0), t0.value(1), t0.is_null(2)),
        ("x", "y z", true)
    );
    let seen_ts = all
        .column_by_name("seen")
        .unwrap()
        .as_primitive::<arrow_array::types::TimestampMicrosecondType>();
    assert_eq!(
        seen_ts.value(0),
        1_795_507_200_500_000,
        "10:00:00.5+02 is 08:00:00.5 UTC"
    );
    // Commit metadata is filled and ordered.
    let lsns = all
        .column_by_name("_lsn")
        .unwrap()
        .as_primitive::<UInt64Type>();
    assert!((1..lsns.len()).all(|i| lsns.value(i) > lsns.value(i - 1)));

    let other = rows(&seen, "public.other");
    assert_eq!(ops(&other), ["insert"]);
    assert_eq!(
        other[0]
            .column_by_name("k")
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0),
        10
    );
    assert!(seen.iter().any(
        |b| matches!(&b.kind, BatchKind::Message { prefix, content, transactional: true, .. }
        if prefix == "lily" && &content[..] == b"hello")
    ));
    assert!(seen
        .iter()
        .any(|b| matches!(&b.kind, BatchKind::Truncate { tables, .. }
        if tables.len() == 1 && tables[0].qualified_name() == "public.other")));
    // Checkpoints only grow, and none is set before the batch that completes its transaction.
    let cps: Vec<_> = seen.iter().filter_map(|b| b.checkpoint).collect();
    assert!(cps.windows(2).all(|w| w[0] < w[1]));
    for b in &seen {
        if let Some(cp) = b.checkpoint {
            assert!(
                cp > b.commit_lsn,
                "checkpoint is the end of the commit record"
            );
        }
    }
}

fn arrow_select_concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_is_flagged_under_default_and_filled_under_full() {
    let cluster = PgCluster::start().await.unwrap();
    let c = setup(
        &cluster,
        "src",
        "CREATE TABLE d (id int primary key, big text, n int);
         ALTER TABLE d ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE f (id int primary key, big text, n int);
         ALTER TABLE f ALTER COLUMN big SET STORAGE EXTERNAL;
         ALTER TABLE f REPLICA IDENTITY FULL;",
    )
    .await;
    let run = start(config(
        &cluster,
        "src",
        &["public.d", "public.f"],
        "s_toast",
    ));
    wait_slot(&c, "s_toast").await;
    // 10 KB that does not compress: md5 chains.
    let big = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 320) i)";
    c.batch_execute(&format!(
        "INSERT INTO d VALUES (1, {big}, 0); INSERT INTO f VALUES (1, {big}, 0);
         UPDATE d SET n = 1 WHERE id = 1; UPDATE f SET n = 1 WHERE id = 1;"
    ))
    .await
    .unwrap();
    let expect: String = c
        .query_one(&format!("SELECT {big}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(expect.len(), 10240);
    let lsn = current_lsn(&c).await;
    wait_confirmed(&c, "s_toast", &lsn).await;
    let seen = run.finish().await.unwrap();

    let d = arrow_select_concat(&rows(&seen, "public.d"));
    assert_eq!(ops(std::slice::from_ref(&d)), ["insert", "update"]);
    assert!(
        d.column_by_name("big").unwrap().is_null(1),
        "DEFAULT: value is not in the stream"
    );
    let flagged = d
        .column_by_name("_unchanged_toast")
        .unwrap()
        .as_list::<i32>();
    assert!(flagged.is_null(0));
    let f1 = flagged.value(1);
    assert_eq!(f1.as_string::<i32>().value(0), "big");

    let f = arrow_select_concat(&rows(&seen, "public.f"));
    let big_col = f.column_by_name("big").unwrap().as_string::<i32>();
    assert_eq!(
        big_col.value(1),
        expect,
        "FULL: value recovered from the old row"
    );
    assert!(f.column_by_name("_unchanged_toast").unwrap().is_null(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_flows_in_bounded_batches() {
    let cluster = PgCluster::start().await.unwrap();
    let c = setup(
        &cluster,
        "src",
        "CREATE TABLE big (id int8 primary key, v text)",
    )
    .await;
    let mut cfg = config(&cluster, "src", &["public.big"], "s_big");
    cfg.batch_max_rows = 5000;
    cfg.consumer_queue = 2;
    let run = start(cfg);
    wait_slot(&c, "s_big").await;
    c.batch_execute("INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 200000) g")
        .await
        .unwrap();
    let lsn = current_lsn(&c).await;
    wait_confirmed(&c, "s_big", &lsn).await;
    let seen = run.finish().await.unwrap();
    let batches = rows(&seen, "public.big");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 200_000);
    assert!(
        batches.iter().all(|b| b.num_rows() <= 5000),
        "size bound holds inside a transaction"
    );
    // 40 at the row bound, more if the latency bound fired while the consumer was slow.
    assert!(batches.len() >= 40);
    // Only the end of the transaction is confirmed: by its last row batch, or by a Commit
    // marker when every row was already sent before the commit was read.
    let (last, rest) = seen.split_last().unwrap();
    assert!(rest.iter().all(|b| b.checkpoint.is_none()));
    assert!(last.checkpoint.is_some());
    assert!(last.num_rows() > 0 || matches!(last.kind, BatchKind::Commit));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_outlives_wal_sender_timeout() {
    let cluster =
        PgCluster::start_with(ClusterOptions::default().setting("wal_sender_timeout", "2s"))
            .await
            .unwrap();
    let c = setup(&cluster, "src", "CREATE TABLE t (id int primary key)").await;
    let mut cfg = config(&cluster, "src", &["public.t"], "s_stall");
    // The cadence the engine picks by itself: a third of wal_sender_timeout.
    cfg.status_interval = None;
    let mut capture = Capture::new(cfg).unwrap();
    let mut sub = capture.subscribe("slow");
    let (stop, stop_rx) = ShutdownTrigger::new();
    let task = tokio::spawn(capture.run(stop_rx));
    wait_slot(&c, "s_stall").await;
    let pid: i32 = c
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 's_stall'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    c.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    let held = sub.recv().await.unwrap();
    // Keep writing while holding the batch unacknowledged for 3× the timeout.
    for i in 2..50 {
        c.execute("INSERT INTO t VALUES ($1)", &[&i]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let pid_after: Option<i32> = c
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 's_stall'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid_after, Some(pid), "the walsender was not restarted");
    assert!(
        !cluster.log_tail(200).contains("replication timeout"),
        "{}",
        cluster.log_tail(50)
    );
    // Nothing is confirmed past the held batch.
    let slot_lsn: String = c
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name='s_stall'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let held_cp = held.batch.checkpoint.unwrap();
    assert!(slot_lsn.parse::<lily_cdc::Lsn>().unwrap() < held_cp);
    held.ack();
    let mut n = 1;
    while n < 49 {
        let d = sub.recv().await.unwrap();
        n += d.batch.num_rows();
        d.ack();
    }
    let lsn = current_lsn(&c).await;
    wait_confirmed(&c, "s_stall", &lsn).await;
    stop.trigger();
    drop(sub);
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_of_postgres_loses_nothing_and_idle_slots_advance() {
    let cluster = PgCluster::start().await.unwrap();
    let c = setup(
        &cluster,
        "src",
        "CREATE TABLE t (id int8 primary key); CREATE TABLE unpublished (id serial primary key)",
    )
    .await;
    let run = start(config(&cluster, "src", &["public.t"], "s_restart"));
    wait_slot(&c, "s_restart").await;
    for i in 0..500i64 {
        c.execute("INSERT INTO t VALUES ($1)", &[&i]).await.unwrap();
    }
    cluster.restart().await.unwrap();
    let c = cluster.connect("src").await.unwrap();
    for i in 500..1000i64 {
        c.execute("INSERT INTO t VALUES ($1)", &[&i]).await.unwrap();
    }
    let lsn = current_lsn(&c).await;
    wait_confirmed(&c, "s_restart", &lsn).await;

    // Idle for the publication: only unpublished writes. The slot must still advance.
    for _ in 0..50 {
        c.execute("INSERT INTO unpublished DEFAULT VALUES", &[])
            .await
            .unwrap();
    }
    let after_idle = current_lsn(&c).await;
    wait_confirmed(&c, "s_restart", &after_idle).await;

    let seen = run.finish().await.unwrap();
    let mut ids = BTreeMap::new();
    for b in rows(&seen, "public.t") {
        let col = b
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone();
        for i in 0..col.len() {
            *ids.entry(col.value(i)).or_insert(0) += 1;
        }
    }
    assert_eq!(ids.len(), 1000, "every row arrived");
    assert_eq!(*ids.keys().next().unwrap(), 0);
    // The checkpoint record follows the acknowledged position.
    let recorded: Option<String> = c
        .query_opt(
            "SELECT confirmed_lsn::text FROM lily.checkpoints WHERE slot_name = 's_restart'",
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    assert!(recorded.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_is_an_error_not_a_fresh_start() {
    let cluster = PgCluster::start().await.unwrap();
    let c = setup(&cluster, "src", "CREATE TABLE t (id int primary key)").await;
    let cfg = config(&cluster, "src", &["public.t"], "s_drop");
    let run = start(cfg.clone());
    wait_slot(&c, "s_drop").await;
    run.finish().await.unwrap();
    c.batch_execute("SELECT pg_drop_replication_slot('s_drop')")
        .await
        .unwrap();
    let err = capture_error(cfg).await;
    assert!(
        matches!(
            err,
            CaptureError::Replication(ReplicationError::SlotLost { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("s_drop"), "{err}");
    let slots: i64 = c
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "no slot was silently re-created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_setups_are_refused_with_what_to_do() {
    let cluster = PgCluster::start().await.unwrap();
    let c = setup(
        &cluster,
        "src",
        "CREATE TABLE nokey (v text); CREATE TABLE ok (id int primary key);
         CREATE ROLE plain LOGIN PASSWORD 'pw';",
    )
    .await;
    drop(c);
    let run_err = |cfg: CaptureConfig| async move { capture_error(cfg).await.to_string() };
    let e = run_err(config(&cluster, "src", &["public.nokey"], "s_bad")).await;
    assert!(
        e.contains("public.nokey") && e.contains("REPLICA IDENTITY FULL"),
        "{e}"
    );
    let e = run_err(config(&cluster, "src", &["public.missing"], "s_bad")).await;
    assert!(
        e.contains("public.missing") && e.contains("does not exist"),
        "{e}"
    );

    let mut cfg = config(&cluster, "src", &["public.ok"], "s_bad");
    cfg.connection.user = "plain".into();
    cfg.connection.password = lily_replication::Secret::new("pw");
    let e = run_err(cfg.clone()).await;
    assert!(e.contains("REPLICATION") && e.contains("plain"), "{e}");

    cfg.connection.password = lily_replication::Secret::new("wrong");
    let e = run_err(cfg).await;
    assert!(
        e.contains("authentication failed") && !e.contains("wrong"),
        "{e}"
    );

    let replica = PgCluster::start_with(ClusterOptions::default().setting("wal_level", "replica"))
        .await
        .unwrap();
    setup(&replica, "src", "CREATE TABLE ok (id int primary key)").await;
    let e = run_err(config(&replica, "src", &["public.ok"], "s_bad")).await;
    assert!(e.contains("wal_level"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_full_with_scram() {
    let cluster = PgCluster::start_with(ClusterOptions::default().with_tls())
        .await
        .unwrap();
    let c = setup(&cluster, "src", "CREATE TABLE t (id int primary key)").await;
    let mut cfg = config(&cluster, "src", &["public.t"], "s_tls");
    cfg.connection.sslmode = lily_replication::SslMode::VerifyFull;
    cfg.connection.ssl_root_cert = Some(cluster.tls_ca_cert().unwrap().to_path_buf());
    let run = start(cfg);
    wait_slot(&c, "s_tls").await;
    let ssl: bool = c
        .query_one(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_replication_slots r ON r.active_pid = s.pid WHERE r.slot_name = 's_tls'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the replication connection is encrypted");
    c.batch_execute("INSERT INTO t VALUES (7)").await.unwrap();
    let lsn = current_lsn(&c).await;
    wait_confirmed(&c, "s_tls", &lsn).await;
    let seen = run.finish().await.unwrap();
    assert_eq!(ops(&rows(&seen, "public.t")), ["insert"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_is_an_error() {
    // The slot may hold back at most 1 MB of WAL; past that a checkpoint invalidates it.
    let cluster = PgCluster::start_with(
        ClusterOptions::default()
            .setting("max_slot_wal_keep_size", "1MB")
            .setting("wal_keep_size", "0")
            .setting("min_wal_size", "32MB")
            .setting("max_wal_size", "64MB"),
    )
    .await
    .unwrap();
    let c = setup(
        &cluster,
        "src",
        "CREATE TABLE t (id int8 primary key, v text)",
    )
    .await;
    let cfg = config(&cluster, "src", &["public.t"], "s_lost");
    let run = start(cfg.clone());
    wait_slot(&c, "s_lost").await;
    run.finish().await.unwrap();
    // While the engine is down, write well past the limit and force WAL recycling.
    for _ in 0..3 {
        c.batch_execute(
            "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series((SELECT coalesce(max(id), 0) + 1 FROM t), \
             (SELECT coalesce(max(id), 0) + 100000 FROM t)) g; SELECT pg_switch_wal(); CHECKPOINT;",
        )
        .await
        .unwrap();
    }
    let status: String = c
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 's_lost'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "lost", "the setup must invalidate the slot");
    let err = capture_error(cfg).await;
    let text = err.to_string();
    assert!(
        matches!(
            err,
            CaptureError::Replication(ReplicationError::SlotLost { .. })
        ),
        "{text}"
    );
    assert!(text.contains("s_lost") && text.contains("lost"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_goes_away_stops_capture_even_when_idle() {
    let cluster = PgCluster::start().await.unwrap();
    let c = setup(&cluster, "src", "CREATE TABLE t (id int primary key)").await;
    let mut capture = Capture::new(config(&cluster, "src", &["public.t"], "s_gone")).unwrap();
    let sub = capture.subscribe("quitter");
    let (_stop, stop_rx) = ShutdownTrigger::new();
    let task = tokio::spawn(capture.run(stop_rx));
    wait_slot(&c, "s_gone").await;
    drop(sub);
    let err = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("capture notices without any change flowing")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, CaptureError::ConsumerGone(n) if n == "quitter"),
        "{err}"
    );
}
