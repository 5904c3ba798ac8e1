//! The mirror against a real PostgreSQL: source and target databases in one harness cluster (or
//! the target in a second one), capture in between.

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

    // The connection dies under an idle mirror: a retryable error, so the mirror reconnects and
    // goes on; `run` does not end.
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
    let killed = terminate_mirror_backend(&dst).await;
    src.batch_execute("INSERT INTO public.plain VALUES (2, 2)")
        .await
        .unwrap();
    let lsn = current_lsn(&src).await;
    wait_for_slot(&src, "s_conn", &lsn, Duration::from_secs(30), || {
        ended("the mirror", &mirror)
    })
    .await
    .unwrap_or_else(|e| panic!("the mirror did not ride out a terminated backend: {e}"));
    assert_ne!(mirror_backend(&dst).await.map(|b| b.pid), Some(killed));
    let rows: i64 = dst
        .query_one("SELECT count(*) FROM public.plain", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2);
    capture.stop().await.unwrap();
    mirror.await.unwrap().unwrap();
}

/// The mirror's backend in the target (application name `lily-mirror`).
#[derive(Debug)]
struct Backend {
    pid: i32,
    wait_event_type: Option<String>,
    query: String,
}

async fn mirror_backend(dst: &Client) -> Option<Backend> {
    dst.query_opt(
        "SELECT pid, wait_event_type::text, query FROM pg_stat_activity \
         WHERE application_name = 'lily-mirror' AND datname = current_database()",
        &[],
    )
    .await
    .unwrap()
    .map(|r| Backend {
        pid: r.get(0),
        wait_event_type: r.get(1),
        query: r.get(2),
    })
}

/// Waits (at most 60 s) until the mirror's backend satisfies `cond`.
async fn wait_for_backend(
    dst: &Client,
    what: &str,
    mirror: &tokio::task::JoinHandle<Result<(), MirrorError>>,
    cond: impl Fn(&Backend) -> bool,
) -> Backend {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let backend = mirror_backend(dst).await;
        if let Some(b) = backend {
            if cond(&b) {
                return b;
            }
        }
        assert!(
            !mirror.is_finished(),
            "the mirror ended while waiting for: {what}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the mirror's backend: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `pg_terminate_backend` on the mirror's backend; returns its pid.
async fn terminate_mirror_backend(dst: &Client) -> i32 {
    let pid = mirror_backend(dst)
        .await
        .expect("the mirror is connected")
        .pid;
    let done: bool = dst
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(done, "pg_terminate_backend({pid})");
    pid
}

/// Waits for the slot to confirm the source's current position while the mirror keeps running.
async fn wait_caught_up(
    src: &Client,
    slot: &str,
    what: &str,
    mirror: &tokio::task::JoinHandle<Result<(), MirrorError>>,
) {
    let lsn = current_lsn(src).await;
    wait_for_slot(src, slot, &lsn, Duration::from_secs(60), || {
        ended("the mirror", mirror)
    })
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// The target (its own cluster) restarts while the mirror is in the middle of a group: ten
/// batches of one source transaction applied in the open target transaction, the eleventh
/// waiting on a row lock. The mirror reconnects, applies the held batches again in a new
/// transaction and commits; later it also rides out a restart between transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rides_out_target_restarts_and_reapplies_the_held_batches() {
    init_tracing();
    let cluster = cluster().await;
    let target = PgCluster::start().await.expect("target cluster starts");
    cluster.create_database("src").await.unwrap();
    target.create_database("dst").await.unwrap();
    let src = cluster.connect("src").await.unwrap();
    let dst = target.connect("dst").await.unwrap();
    for c in [&src, &dst] {
        c.batch_execute(
            "CREATE TABLE public.t (id int4 PRIMARY KEY, v text);
             INSERT INTO public.t VALUES (0, 'seed');",
        )
        .await
        .unwrap();
    }
    prepare_source(&src).await;
    src.batch_execute("CREATE PUBLICATION r_pub FOR TABLE public.t")
        .await
        .unwrap();
    src.batch_execute("SELECT pg_create_logical_replication_slot('r_slot', 'pgoutput')")
        .await
        .unwrap();
    let mut cfg = capture_config(&cluster.url("src"), "r_slot", "r_pub", &["public.t"]);
    cfg.batch_max_rows = 100;
    let (capture, sub) = start_capture(cfg, "mirror");
    let url = target.url("dst");
    let mirror = tokio::spawn(async move { lily_mirror::run(&url, sub).await });

    // A warm-up transaction, so the mirror has planned the table and prepared statements.
    src.batch_execute("INSERT INTO public.t VALUES (-1, 'warm')")
        .await
        .unwrap();
    wait_caught_up(&src, "r_slot", "warm-up", &mirror).await;

    // Block the mirror on row 0, which the source transaction updates after 1000 inserts.
    let locker = target.connect("dst").await.unwrap();
    locker
        .batch_execute("BEGIN; SELECT 1 FROM public.t WHERE id = 0 FOR UPDATE")
        .await
        .unwrap();
    src.batch_execute(
        "BEGIN;
         INSERT INTO public.t SELECT g, 'a' || g FROM generate_series(1, 1000) g;
         UPDATE public.t SET v = 'touched' WHERE id = 0;
         COMMIT;",
    )
    .await
    .unwrap();
    let blocked = wait_for_backend(&dst, "blocked on the row lock", &mirror, |b| {
        b.wait_event_type.as_deref() == Some("Lock")
    })
    .await;
    let uncommitted: i64 = dst
        .query_one("SELECT count(*) FROM public.t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(uncommitted, 2, "the group is not committed yet");
    // The restart ends the locker too (were it closed first, the mirror could commit before the
    // restart and hold nothing).
    let started = std::time::Instant::now();
    target.restart().await.expect("the target restarts");
    drop((locker, dst));
    println!(
        "target restarted in {:.1?} (mirror backend {} was: {:?})",
        started.elapsed(),
        blocked.pid,
        blocked.query
    );
    let dst = target.connect("dst").await.unwrap();
    wait_caught_up(&src, "r_slot", "after a restart mid-group", &mirror).await;
    assert_eq!(assert_same(&src, &dst, &["public.t"]).await, vec![1002]);

    // A restart between transactions: the next BEGIN finds the connection gone.
    drop(dst);
    target.restart().await.expect("the target restarts again");
    src.batch_execute(
        "UPDATE public.t SET v = 'second' WHERE id <= 500;
         DELETE FROM public.t WHERE id > 900;
         INSERT INTO public.t SELECT g, 'b' FROM generate_series(2001, 2300) g;",
    )
    .await
    .unwrap();
    let dst = target.connect("dst").await.unwrap();
    wait_caught_up(
        &src,
        "r_slot",
        "after a restart between transactions",
        &mirror,
    )
    .await;
    assert_eq!(assert_same(&src, &dst, &["public.t"]).await, vec![1202]);

    capture.stop().await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), mirror)
        .await
        .expect("the mirror stops with capture")
        .unwrap()
        .unwrap();
}

/// The mirror's backend is terminated while it runs the COMMIT of a group (a deferred constraint
/// trigger makes the COMMIT wait on an advisory lock): the outcome of the COMMIT is unknown to
/// the mirror, which applies the held batches again on a new connection and commits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cut_off_by_a_lost_connection_is_applied_again() {
    init_tracing();
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
    dst.batch_execute(
        "CREATE FUNCTION public.gate() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER gate AFTER INSERT OR UPDATE ON public.t
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.gate();",
    )
    .await
    .unwrap();
    prepare_source(&src).await;
    src.batch_execute("CREATE PUBLICATION c_pub FOR TABLE public.t")
        .await
        .unwrap();
    src.batch_execute("SELECT pg_create_logical_replication_slot('c_slot', 'pgoutput')")
        .await
        .unwrap();
    let mut cfg = capture_config(&cluster.url("src"), "c_slot", "c_pub", &["public.t"]);
    cfg.batch_max_rows = 100;
    let (capture, sub) = start_capture(cfg, "mirror");
    let url = cluster.url("dst");
    // Ordinary triggers fire only outside the replica role.
    let options = lily_mirror::MirrorOptions {
        replica_role: false,
        ..Default::default()
    };
    let mirror = tokio::spawn(async move { lily_mirror::run_with(&url, sub, options).await });

    let gate = cluster.connect("dst").await.unwrap();
    gate.batch_execute("SELECT pg_advisory_lock(4242)")
        .await
        .unwrap();
    src.batch_execute("INSERT INTO public.t SELECT g, 'a' || g FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    let committing = wait_for_backend(&dst, "waiting in COMMIT", &mirror, |b| {
        b.wait_event_type.as_deref() == Some("Lock") && b.query == "COMMIT"
    })
    .await;
    let killed = terminate_mirror_backend(&dst).await;
    assert_eq!(killed, committing.pid);
    gate.batch_execute("SELECT pg_advisory_unlock(4242)")
        .await
        .unwrap();
    wait_caught_up(&src, "c_slot", "after the COMMIT was cut off", &mirror).await;
    assert_eq!(assert_same(&src, &dst, &["public.t"]).await, vec![1000]);
    assert_ne!(mirror_backend(&dst).await.map(|b| b.pid), Some(killed));

    // And the mirror goes on with the next transactions.
    src.batch_execute(
        "UPDATE public.t SET v = 'x' WHERE id % 3 = 0; DELETE FROM public.t WHERE id > 990;",
    )
    .await
    .unwrap();
    wait_caught_up(&src, "c_slot", "afterwards", &mirror).await;
    assert_eq!(assert_same(&src, &dst, &["public.t"]).await, vec![990]);
    capture.stop().await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), mirror)
        .await
        .expect("the mirror stops with capture")
        .unwrap()
        .unwrap();
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

/// A client of the target's own walsender that never confirms: a `pg_recvlogical` stopped with
/// SIGSTOP (killed on drop). A walsender in shutdown waits for its client to confirm everything
/// it sent, so while this client is stopped the target's shutdown does not finish, the way a
/// source's does when capture cannot confirm what the mirror holds.
struct StuckClient(std::process::Child);

impl Drop for StuckClient {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The target stays in shutdown while the mirror holds batches: after `shutdown_wait` the mirror
/// gives up and `run` ends with the (retryable) error, which is what lets a shutdown of a source
/// server that is also the target finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_on_a_target_that_stays_in_shutdown() {
    init_tracing();
    let cluster = cluster().await;
    let target =
        PgCluster::start_with(ClusterOptions::default().setting("wal_sender_timeout", "0"))
            .await
            .expect("target cluster starts");
    cluster.create_database("src").await.unwrap();
    target.create_database("dst").await.unwrap();
    let src = cluster.connect("src").await.unwrap();
    let dst = target.connect("dst").await.unwrap();
    for c in [&src, &dst] {
        c.batch_execute(
            "CREATE TABLE public.t (id int4 PRIMARY KEY, v text);
             INSERT INTO public.t VALUES (0, 'seed');",
        )
        .await
        .unwrap();
    }
    prepare_source(&src).await;
    src.batch_execute("CREATE PUBLICATION g_pub FOR TABLE public.t")
        .await
        .unwrap();
    src.batch_execute("SELECT pg_create_logical_replication_slot('g_slot', 'pgoutput')")
        .await
        .unwrap();

    dst.batch_execute("CREATE PUBLICATION stuck_pub")
        .await
        .unwrap();
    dst.batch_execute("SELECT pg_create_logical_replication_slot('stuck', 'pgoutput')")
        .await
        .unwrap();
    let child = target
        .run_as_owner("pg_recvlogical")
        .args([
            "-d",
            "dst",
            "-S",
            "stuck",
            "--start",
            "--no-loop",
            "-s",
            "1",
            "-f",
            "/dev/null",
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=stuck_pub",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pg_recvlogical starts");
    let stuck = StuckClient(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let active: Option<bool> = dst
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'stuck'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        if active == Some(true) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pg_recvlogical did not start streaming"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = std::process::Command::new("kill")
        .arg("-STOP")
        .arg(stuck.0.id().to_string())
        .status()
        .expect("run kill -STOP");
    assert!(status.success(), "kill -STOP pg_recvlogical");

    let mut cfg = capture_config(&cluster.url("src"), "g_slot", "g_pub", &["public.t"]);
    cfg.batch_max_rows = 100;
    let (capture, sub) = start_capture(cfg, "mirror");
    let url = target.url("dst");
    let options = lily_mirror::MirrorOptions {
        shutdown_wait: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let mirror = tokio::spawn(async move { lily_mirror::run_with(&url, sub, options).await });

    // Hold a group in the mirror: it waits on row 0 after applying the inserts.
    let locker = target.connect("dst").await.unwrap();
    locker
        .batch_execute("BEGIN; SELECT 1 FROM public.t WHERE id = 0 FOR UPDATE")
        .await
        .unwrap();
    src.batch_execute(
        "BEGIN;
         INSERT INTO public.t SELECT g, 'a' FROM generate_series(1, 300) g;
         UPDATE public.t SET v = 'touched' WHERE id = 0;
         COMMIT;",
    )
    .await
    .unwrap();
    wait_for_backend(&dst, "blocked on the row lock", &mirror, |b| {
        b.wait_event_type.as_deref() == Some("Lock")
    })
    .await;

    // The restart ends the locker too, so the mirror still holds the group when it fails.
    let started = std::time::Instant::now();
    let (restarted, (ended, gave_up_after)) = tokio::join!(target.restart(), async {
        let ended = tokio::time::timeout(Duration::from_secs(45), mirror).await;
        let gave_up_after = started.elapsed();
        // Let the target finish shutting down.
        drop(stuck);
        (ended, gave_up_after)
    });
    println!(
        "the mirror gave up after {gave_up_after:.1?}; the restart took {:.1?}",
        started.elapsed()
    );
    let e = ended
        .expect("the mirror gives up within 45 s")
        .unwrap()
        .expect_err("the mirror ends with an error");
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("shutting down"), "{e}");
    assert!(gave_up_after >= Duration::from_secs(2), "{gave_up_after:?}");
    restarted.expect("the target restarts once the stuck client is gone");
    drop((locker, dst));
    let _ = capture.stop().await;
}
