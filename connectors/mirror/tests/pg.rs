//! The mirror against a real PostgreSQL: source and target databases in one harness cluster,
//! capture in between.

use std::time::Duration;

use lily_mirror::MirrorError;
use lily_pgharness::{ClusterOptions, PgCluster};
use lily_tests::{
    capture_config, compare_table, current_lsn, ended, prepare_source, start_capture, wait_for_slot,
};
use tokio_postgres::Client;

const WEIRD: &str = r#"public."we""ird; name""#;

const DDL: &str = r#"
CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE public.kinds (
    id int8 PRIMARY KEY, i2 int2, i4 int4, f4 float4, f8 float8, b bool,
    n numeric(12,3), nf numeric, t text, vc varchar(20), ch char(3),
    j jsonb, js json, u uuid, ts timestamptz, tsn timestamp, d date, by bytea,
    ai int4[], at text[], an numeric(12,3)[], ats timestamptz[], m public.mood, iv interval, o oid
);
CREATE TABLE public.keyless (a text, b int4, c json);
ALTER TABLE public.keyless REPLICA IDENTITY FULL;
CREATE TABLE public."we""ird; name" ("i""d" int4 PRIMARY KEY, "sel ect" text);
CREATE TABLE public.docs (id int4 PRIMARY KEY, body text, n int4);
ALTER TABLE public.docs ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE public.pairs (a int4, b text, v text, PRIMARY KEY (a, b));
CREATE TABLE public.fullpk (id int4 PRIMARY KEY, v text, big text);
ALTER TABLE public.fullpk REPLICA IDENTITY FULL;
ALTER TABLE public.fullpk ALTER COLUMN big SET STORAGE EXTERNAL;
"#;

/// The target's `ident` gets its id from an identity column; the mirror must still write the
/// source's ids.
const SOURCE_IDENT: &str = "CREATE TABLE public.ident (id int4 PRIMARY KEY, v text);";
const TARGET_IDENT: &str =
    "CREATE TABLE public.ident (id int4 GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);";

const TABLES: [&str; 7] = [
    "public.kinds",
    "public.keyless",
    "public.we\"ird; name",
    "public.docs",
    "public.pairs",
    "public.fullpk",
    "public.ident",
];

/// Quoted names for SELECTs.
const QUOTED: [&str; 7] = [
    "public.kinds",
    "public.keyless",
    WEIRD,
    "public.docs",
    "public.pairs",
    "public.fullpk",
    "public.ident",
];

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LILY_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn cluster() -> PgCluster {
    PgCluster::start_with(ClusterOptions::default().setting("wal_receiver_status_interval", "1s"))
        .await
        .expect("harness cluster starts")
}

/// A text of `kb` KB that does not compress (it is stored out of line anyway: STORAGE EXTERNAL).
fn big(seed: &str, kb: usize) -> String {
    format!(
        "(SELECT string_agg(md5('{seed}' || g::text), '') FROM generate_series(1, {}) g)",
        kb * 32
    )
}

const PHASE_1: &str = r#"
INSERT INTO public.kinds VALUES
 (1, 1, 2, 1.5, 0.1, true, 123456789.123, 1e-20, 'plain', 'vc', 'ab', '{"a": [1, 2, {"b": null}]}', '{"x" :  1}',
  'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '2024-02-29 12:34:56.789012+05:30', '2000-01-01 00:00:00', '2024-01-01',
  '\x00ff10', '{1,NULL,3}', '{"a b","q\"u","NULL",NULL,"é✓","back\\slash"}', '{1.5,NULL}',
  '{"2024-01-01 00:00:00+00",NULL}', 'happy', '1 day 02:03:04', 42),
 (2, -32768, -2147483648, 'NaN', '-Infinity', false, -0.001, 'NaN', E'tab\there\nnewline ''quote'' \\ back',
  '', '   ', 'null', '[]', '00000000-0000-0000-0000-000000000000', 'infinity', '-infinity', 'infinity', '\x',
  '{}', '{}', '{}', '{}', 'sad', '-1 mons', 0),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 32767, 2147483647, 3.4e38, 1.7976931348623157e308, true, 999999999.999, 123456789012345678901234567890.5,
  'ünïcödé ✓ 😀', 'x', 'abc', '{"k": "v\"q"}', '"s"', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
  '1970-01-01 00:00:00+00', '1999-12-31 23:59:59.999999', '1900-02-28', '\xdeadbeef', '{-1,0,1}',
  '{"{braces}","com,ma"}', '{-0.001}', '{}', 'ok', '00:00:00.000001', 4294967295);
"#;

/// One transaction per entry (a multi-statement string is one implicit transaction, and a
/// ROLLBACK inside it would undo the statements before it).
const PHASE_2: &[&str] = &[
    "UPDATE public.kinds SET t = 'changed', ai = '{7}' WHERE id = 1",
    "UPDATE public.kinds SET id = 10 WHERE id = 2",
    "DELETE FROM public.kinds WHERE id = 3",
    "INSERT INTO public.kinds (id, t) VALUES (3, 'back')",
    "BEGIN; INSERT INTO public.kinds (id, t) VALUES (99, 'rolled back'); ROLLBACK;",
    r#"INSERT INTO public."we""ird; name" VALUES (1, 'one'), (2, 'two')"#,
    r#"UPDATE public."we""ird; name" SET "i""d" = 3 WHERE "i""d" = 1"#,
    r#"DELETE FROM public."we""ird; name" WHERE "i""d" = 2"#,
    r#"INSERT INTO public.keyless VALUES ('dup', 1, '{"k": 1}'), ('dup', 1, '{"k": 1}'), ('x', NULL, NULL), ('y', 2, '[1, 2]')"#,
    "UPDATE public.keyless SET b = 5 WHERE ctid = (SELECT ctid FROM public.keyless WHERE a = 'dup' LIMIT 1)",
    "DELETE FROM public.keyless WHERE a = 'x'",
    r#"UPDATE public.keyless SET c = '{"k": 2}' WHERE a = 'y'"#,
    "BEGIN;
     INSERT INTO public.keyless VALUES ('z', 0, NULL);
     UPDATE public.keyless SET b = 1 WHERE a = 'z';
     UPDATE public.keyless SET b = 2 WHERE a = 'z';
     DELETE FROM public.keyless WHERE a = 'z';
     COMMIT;",
    "INSERT INTO public.pairs VALUES (1, 'a', 'x'), (1, 'b', 'y'), (2, 'a', 'z')",
    "UPDATE public.pairs SET b = 'c' WHERE a = 1 AND b = 'a'",
    "TRUNCATE public.pairs",
    "INSERT INTO public.pairs VALUES (5, 'after', 'truncate')",
    r#"BEGIN;
     INSERT INTO public.pairs VALUES (6, 'x', 'y');
     TRUNCATE public.pairs, public."we""ird; name";
     INSERT INTO public.pairs VALUES (7, 'z', 'w');
     SELECT pg_logical_emit_message(true, 'lily', 'hello');
     COMMIT;"#,
    r#"INSERT INTO public."we""ird; name" VALUES (8, 'eight')"#,
    "INSERT INTO public.ident VALUES (1, 'a'), (2, 'b')",
    "UPDATE public.ident SET v = 'c' WHERE id = 1",
];

async fn toast_phase(c: &Client) {
    // Five rows with a 10 KB out-of-line body each.
    for id in 1..=5 {
        c.batch_execute(&format!(
            "INSERT INTO public.docs VALUES ({id}, {}, 0)",
            big(&format!("doc{id}"), 10)
        ))
        .await
        .unwrap();
    }
    let big_new = big("new", 12);
    let txns = [
        "INSERT INTO public.fullpk SELECT g, 'v' || g, repeat(md5(g::text), 320) FROM generate_series(1, 3) g".to_string(),
        // Updates of another column: the body is an unchanged TOAST value, not in the stream.
        "UPDATE public.docs SET n = n + 1 WHERE id IN (1, 2)".into(),
        "UPDATE public.docs SET n = 7 WHERE id = 1".into(),
        // A key change that leaves the body out: the mirror copies it from the old row.
        "UPDATE public.docs SET id = 20 WHERE id = 3".into(),
        "BEGIN;
         UPDATE public.docs SET n = 100 WHERE id = 4;
         UPDATE public.docs SET id = 40 WHERE id = 4;
         UPDATE public.docs SET n = 101 WHERE id = 40;
         COMMIT;"
            .into(),
        "UPDATE public.docs SET body = 'short now' WHERE id = 5".into(),
        format!("UPDATE public.docs SET body = {big_new} WHERE id = 1"),
        "UPDATE public.docs SET n = 8 WHERE id = 1".into(),
        "DELETE FROM public.docs WHERE id = 2".into(),
        "UPDATE public.fullpk SET v = 'w' WHERE id = 1".into(),
        "UPDATE public.fullpk SET id = 10 WHERE id = 2".into(),
        "DELETE FROM public.fullpk WHERE id = 3".into(),
    ];
    for txn in &txns {
        c.batch_execute(txn).await.unwrap();
    }
}

/// Compares every table; returns the row counts.
async fn assert_same(src: &Client, dst: &Client, tables: &[&str]) -> Vec<usize> {
    let mut failures = Vec::new();
    let mut counts = Vec::new();
    for t in tables {
        match compare_table(t, "source", src, "target", dst).await {
            Ok(n) => counts.push(n),
            Err(d) => failures.push(d),
        }
    }
    assert!(
        failures.is_empty(),
        "source and target differ:\n{}",
        failures.join("\n")
    );
    counts
}

const EXPECTED_COUNTS: [usize; 7] = [4, 3, 1, 4, 1, 2, 2];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_every_kind_of_change_and_replays_idempotently() {
    init_tracing();
    let cluster = cluster().await;
    cluster.create_database("src").await.unwrap();
    cluster.create_database("dst").await.unwrap();
    let src = cluster.connect("src").await.unwrap();
    let dst = cluster.connect("dst").await.unwrap();
    src.batch_execute(DDL).await.unwrap();
    src.batch_execute(SOURCE_IDENT).await.unwrap();
    dst.batch_execute(DDL).await.unwrap();
    dst.batch_execute(TARGET_IDENT).await.unwrap();
    prepare_source(&src).await;
    let list = TABLES.map(|t| {
        let (s, n) = t.split_once('.').unwrap();
        lily_mirror::quote_qualified(s, n)
    });
    src.batch_execute(&format!(
        "CREATE PUBLICATION mirror_pub FOR TABLE {all};
         CREATE PUBLICATION replay_pub FOR TABLE {replayable};",
        all = list.join(", "),
        // Tables without a key cannot be replayed idempotently (a replayed insert is a new row).
        replayable = list
            .iter()
            .filter(|t| !t.contains("keyless"))
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .await
    .unwrap();
    src.batch_execute("SELECT pg_create_logical_replication_slot('mirror_slot', 'pgoutput')")
        .await
        .unwrap();

    let (capture, sub) = start_capture(
        capture_config(&cluster.url("src"), "mirror_slot", "mirror_pub", &TABLES),
        "mirror",
    );
    let url = cluster.url("dst");
    let mirror = tokio::spawn(async move { lily_mirror::run(&url, sub).await });

    src.batch_execute(PHASE_1).await.unwrap();
    // A second slot from here on: its changes are replayed onto the synced target below.
    src.batch_execute("SELECT pg_create_logical_replication_slot('replay_slot', 'pgoutput')")
        .await
        .unwrap();
    for txn in PHASE_2 {
        src.batch_execute(txn).await.unwrap();
    }
    toast_phase(&src).await;

    let lsn = current_lsn(&src).await;
    let waited = wait_for_slot(&src, "mirror_slot", &lsn, Duration::from_secs(60), || {
        ended("the mirror", &mirror).or_else(|| ended("capture", &capture.task))
    })
    .await;
    if let Err(e) = waited {
        if mirror.is_finished() {
            panic!("{e}: {:?}", mirror.await.unwrap());
        }
        panic!("{e}");
    }
    assert_eq!(assert_same(&src, &dst, &QUOTED).await, EXPECTED_COUNTS);
    let docs: Vec<(i32, i32, i32)> = dst
        .query(
            "SELECT id, n, length(body) FROM public.docs ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        docs,
        vec![
            (1, 8, 12 * 1024),
            (5, 0, 9),
            (20, 0, 10 * 1024),
            (40, 101, 10 * 1024)
        ]
    );

    capture.stop().await.unwrap();
    mirror.await.unwrap().unwrap();

    // Replay: everything since `replay_slot` was created, applied again onto the synced target.
    let (capture, sub) = start_capture(
        capture_config(&cluster.url("src"), "replay_slot", "replay_pub", &TABLES),
        "mirror",
    );
    let url = cluster.url("dst");
    let mirror = tokio::spawn(async move { lily_mirror::run(&url, sub).await });
    let lsn = current_lsn(&src).await;
    let waited = wait_for_slot(&src, "replay_slot", &lsn, Duration::from_secs(60), || {
        ended("the mirror", &mirror).or_else(|| ended("capture", &capture.task))
    })
    .await;
    if let Err(e) = waited {
        if mirror.is_finished() {
            panic!("{e}: {:?}", mirror.await.unwrap());
        }
        panic!("{e}");
    }
    assert_eq!(assert_same(&src, &dst, &QUOTED).await, EXPECTED_COUNTS);
    capture.stop().await.unwrap();
    mirror.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_whether_a_retry_can_help() {
    init_tracing();
    let cluster = cluster().await;
    cluster.create_database("src").await.unwrap();
    cluster.create_database("dst").await.unwrap();
    let src = cluster.connect("src").await.unwrap();
    let dst = cluster.connect("dst").await.unwrap();
    src.batch_execute(
        "CREATE TABLE public.only_src (id int4 PRIMARY KEY);
         CREATE TABLE public.checked (id int4 PRIMARY KEY, v int4);
         CREATE TABLE public.plain (id int4 PRIMARY KEY, v int4);",
    )
    .await
    .unwrap();
    dst.batch_execute(
        "CREATE TABLE public.checked (id int4 PRIMARY KEY, v int4 CHECK (v < 100));
         CREATE TABLE public.plain (id int4 PRIMARY KEY, v int4);",
    )
    .await
    .unwrap();
    prepare_source(&src).await;

    async fn run_until_error(
        cluster: &PgCluster,
        src: &Client,
        slot: &str,
        table: &str,
        sql: &str,
    ) -> MirrorError {
        src.batch_execute(&format!("CREATE PUBLICATION {slot}_pub FOR TABLE {table}"))
            .await
            .unwrap();
        src.batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
        ))
        .await
        .unwrap();
        let (capture, sub) = start_capture(
            capture_config(&cluster.url("src"), slot, &format!("{slot}_pub"), &[table]),
            "mirror",
        );
        let url = cluster.url("dst");
        let mirror = tokio::spawn(async move { lily_mirror::run(&url, sub).await });
        src.batch_execute(sql).await.unwrap();
        let err = tokio::time::timeout(Duration::from_secs(30), mirror)
            .await
            .expect("the mirror fails within 30 s")
            .unwrap()
            .expect_err("the mirror fails");
        let _ = capture.stop().await;
        err
    }

    let e = run_until_error(
        &cluster,
        &src,
        "s_missing",
        "public.only_src",
        "INSERT INTO public.only_src VALUES (1)",
    )
    .await;
    assert!(matches!(e, MirrorError::MissingTable { .. }), "{e}");
    assert_eq!(e.table(), Some("public.only_src"));
    assert!(!e.is_retryable());

    let e = run_until_error(
        &cluster,
        &src,
        "s_check",
        "public.checked",
        "INSERT INTO public.checked VALUES (1, 1); INSERT INTO public.checked VALUES (2, 500);",
    )
    .await;
    assert_eq!(e.sqlstate(), Some("23514"), "{e}");
    assert_eq!(e.table(), Some("public.checked"));
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("checked_v_check"), "{e}");

    // The connection dies under the mirror: retryable.
    src.batch_execute("CREATE PUBLICATION s_conn_pub FOR TABLE public.plain")
        .await
        .unwrap();
    src.batch_execute("SELECT pg_create_logical_replication_slot('s_conn', 'pgoutput')")
        .await
        .unwrap();
    let (capture, sub) = start_capture(
        capture_config(
            &cluster.url("src"),
            "s_conn",
            "s_conn_pub",
            &["public.plain"],
        ),
        "mirror",
    );
    let url = cluster.url("dst");
    let mirror = tokio::spawn(async move { lily_mirror::run(&url, sub).await });
    src.batch_execute("INSERT INTO public.plain VALUES (1, 1)")
        .await
        .unwrap();
    let lsn = current_lsn(&src).await;
    wait_for_slot(&src, "s_conn", &lsn, Duration::from_secs(30), || {
        ended("the mirror", &mirror)
    })
    .await
    .unwrap();
    dst.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'lily-mirror'",
    )
    .await
    .unwrap();
    src.batch_execute("INSERT INTO public.plain VALUES (2, 2)")
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(30), mirror)
        .await
        .expect("the mirror fails within 30 s")
        .unwrap()
        .expect_err("the mirror fails");
    assert!(e.is_retryable(), "{e}");
    let _ = capture.stop().await;
    let rows: i64 = dst
        .query_one("SELECT count(*) FROM public.plain", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

/// Capture confirms some transactions through a checkpoint no batch carries: one that ends in a
/// TRUNCATE, and one whose rows all went out before its commit was read (exactly `batch_max_rows`
/// rows). The mirror must still commit them (after `idle_commit`) so the slot advances.
/// `LILY_TEST_NO_IDLE_COMMIT=1` runs it without `idle_commit`, which shows the stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_without_a_checkpoint_batch_still_commit() {
    init_tracing();
    let idle_commit = std::env::var("LILY_TEST_NO_IDLE_COMMIT")
        .is_err()
        .then(|| Duration::from_millis(300));
    let cluster = cluster().await;
    cluster.create_database("src").await.unwrap();
    cluster.create_database("dst").await.unwrap();
    let src = cluster.connect("src").await.unwrap();
    let dst = cluster.connect("dst").await.unwrap();
    for c in [&src, &dst] {
        c.batch_execute("CREATE TABLE public.t (id int4 PRIMARY KEY, v text)")
            .await
            .unwrap();
    }
    prepare_source(&src).await;
    src.batch_execute("CREATE PUBLICATION p_pub FOR TABLE public.t")
        .await
        .unwrap();
    src.batch_execute("SELECT pg_create_logical_replication_slot('p_slot', 'pgoutput')")
        .await
        .unwrap();
    let mut cfg = capture_config(&cluster.url("src"), "p_slot", "p_pub", &["public.t"]);
    cfg.batch_max_rows = 100;
    let (capture, sub) = start_capture(cfg, "mirror");
    let url = cluster.url("dst");
    let options = lily_mirror::MirrorOptions {
        idle_commit,
        ..Default::default()
    };
    let mirror = tokio::spawn(async move { lily_mirror::run_with(&url, sub, options).await });

    for (what, sql) in [
        (
            "rows",
            "INSERT INTO public.t SELECT g, 'x' FROM generate_series(1, 50) g",
        ),
        ("a transaction ending in TRUNCATE", "TRUNCATE public.t"),
        (
            "exactly batch_max_rows rows",
            "INSERT INTO public.t SELECT g, 'y' FROM generate_series(1001, 1100) g",
        ),
    ] {
        src.batch_execute(sql).await.unwrap();
        let lsn = current_lsn(&src).await;
        wait_for_slot(&src, "p_slot", &lsn, Duration::from_secs(20), || {
            ended("the mirror", &mirror)
        })
        .await
        .unwrap_or_else(|e| panic!("after {what}: {e}"));
        assert_same(&src, &dst, &["public.t"]).await;
    }
    capture.stop().await.unwrap();
    mirror.await.unwrap().unwrap();
}
