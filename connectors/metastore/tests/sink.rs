//! The metastore sink against a real throwaway cluster with the metastore schema migrated.

use std::time::Duration;

use lily_delivery::{Record, Sink, SinkError};
use lily_metastore_sink::{BuildError, MetastoreSink, MetastoreSinkConfig, Mode};
use lily_pgharness::PgCluster;
use serde_json::{json, Value};
use tokio_postgres::Client;

const DB: &str = "meta";
const ASSET_1: &str = "11111111-1111-4111-8111-111111111111";
const ASSET_2: &str = "22222222-2222-4222-8222-222222222222";
const ASSET_3: &str = "33333333-3333-4333-8333-333333333333";
const ORIGIN: &str = "99999999-9999-4999-8999-999999999999";

async fn metastore() -> (PgCluster, Client) {
    let pg = PgCluster::start().await.unwrap();
    pg.create_database(DB).await.unwrap();
    let client = pg.connect(DB).await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    client
        .batch_execute("INSERT INTO meta.tenants (tenant_id, name) VALUES ('acme', 'Acme')")
        .await
        .unwrap();
    (pg, client)
}

fn config(table: &str, mode: Mode) -> MetastoreSinkConfig {
    MetastoreSinkConfig {
        table: table.into(),
        mode,
        key_columns: None,
        update_columns: None,
        statement_timeout_ms: 30_000,
    }
}

async fn sink(pg: &PgCluster, cfg: MetastoreSinkConfig) -> MetastoreSink {
    MetastoreSink::connect(pg.connection(DB), cfg)
        .await
        .unwrap()
}

async fn build_error(pg: &PgCluster, cfg: MetastoreSinkConfig) -> BuildError {
    MetastoreSink::connect(pg.connection(DB), cfg)
        .await
        .unwrap_err()
}

fn record(n: u64, fields: Value) -> Record {
    Record {
        id: format!("test:{n}"),
        commit_lsn: lily_pgoutput::Lsn(n),
        commit_ts_us: 0,
        key: None,
        fields: fields.as_object().cloned().unwrap(),
    }
}

/// A propagated PII tag on `asset`, from ORIGIN.
fn propagated(n: u64, asset: &str, propagate: bool, updated_at: &str) -> Record {
    record(
        n,
        json!({
            "asset_guid": asset,
            "origin_guid": ORIGIN,
            "tag": "PII",
            "source": "propagated",
            "tenant_id": "acme",
            "propagate": propagate,
            "updated_at": updated_at,
        }),
    )
}

/// (asset_guid, propagate, updated_at as text, xmin) of every classification, by asset.
async fn classifications(client: &Client) -> Vec<(String, bool, String, String)> {
    client
        .query(
            "SELECT asset_guid::text, propagate, \
                    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS'), xmin::text \
             FROM meta.classifications ORDER BY asset_guid, tag, origin_guid",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

async fn count(client: &Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// The rows of the hostile table: key, enum as text, json as text, "--", xmin.
async fn hostile_rows(client: &Client) -> Vec<(i32, String, String, String, String)> {
    client
        .query(
            r#"SELECT "a;b", "x y"::text, "Q""uote"::text, "--", xmin::text
               FROM "we""ird.s"."we""ird; table" ORDER BY 1"#,
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// The pid of the sink's backend (found by the application name the sink sets).
async fn sink_backend(client: &Client) -> i32 {
    client
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'lily-metastore-sink'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn permanent_message(result: Result<(), SinkError>) -> String {
    match result {
        Err(SinkError::Permanent { message }) => message,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test]
async fn upsert_writes_then_leaves_equal_rows_alone_then_updates() {
    let (pg, client) = metastore().await;
    let sink = sink(&pg, config("meta.classifications", Mode::Upsert)).await;
    assert_eq!(sink.kind(), "metastore");
    assert!(sink.max_batch() > 1);

    let t0 = "2024-01-01T00:00:00Z";
    let batch = [
        propagated(1, ASSET_1, true, t0),
        propagated(2, ASSET_2, true, t0),
        propagated(3, ASSET_3, true, t0),
    ];
    sink.deliver(&batch).await.unwrap();
    let first = classifications(&client).await;
    assert_eq!(first.len(), 3);
    assert!(first
        .iter()
        .all(|(_, p, u, _)| *p && u == "2024-01-01T00:00:00"));

    // The same rows again (a replay): nothing is rewritten, not even a new row version.
    sink.deliver(&batch).await.unwrap();
    assert_eq!(classifications(&client).await, first);

    // A change: only that row gets a new version.
    let t1 = "2024-02-01T12:00:00Z";
    sink.deliver(&[propagated(4, ASSET_2, false, t1)])
        .await
        .unwrap();
    let after = classifications(&client).await;
    assert_eq!(after[0], first[0]);
    assert_eq!(after[2], first[2]);
    assert_eq!(after[1].0, ASSET_2);
    assert!(!after[1].1);
    assert_eq!(after[1].2, "2024-02-01T12:00:00");
    assert_ne!(after[1].3, first[1].3);

    // An empty call is fine and touches nothing.
    sink.deliver(&[]).await.unwrap();
}

#[tokio::test]
async fn update_columns_limit_what_an_upsert_overwrites() {
    let (pg, client) = metastore().await;
    let mut cfg = config("meta.classifications", Mode::Upsert);
    cfg.update_columns = Some(vec!["propagate".into()]);
    let sink = sink(&pg, cfg).await;
    sink.deliver(&[propagated(1, ASSET_1, true, "2024-01-01T00:00:00Z")])
        .await
        .unwrap();
    sink.deliver(&[propagated(2, ASSET_1, false, "2030-01-01T00:00:00Z")])
        .await
        .unwrap();
    let rows = classifications(&client).await;
    assert!(!rows[0].1, "propagate is overwritten");
    assert_eq!(rows[0].2, "2024-01-01T00:00:00", "updated_at is not");
}

#[tokio::test]
async fn insert_mode_skips_rows_whose_key_exists() {
    let (pg, client) = metastore().await;
    let sink = sink(&pg, config("meta.classifications", Mode::Insert)).await;
    sink.deliver(&[propagated(1, ASSET_1, true, "2024-01-01T00:00:00Z")])
        .await
        .unwrap();
    let before = classifications(&client).await;

    // ASSET_1 conflicts and is skipped (not updated); ASSET_2 is new. The duplicate of ASSET_3
    // inside the call keeps the first, as inserting one after the other would.
    sink.deliver(&[
        propagated(2, ASSET_1, false, "2030-01-01T00:00:00Z"),
        propagated(3, ASSET_2, false, "2024-01-01T00:00:00Z"),
        propagated(4, ASSET_3, true, "2024-01-01T00:00:00Z"),
        propagated(5, ASSET_3, false, "2030-01-01T00:00:00Z"),
    ])
    .await
    .unwrap();
    let after = classifications(&client).await;
    assert_eq!(after.len(), 3);
    assert_eq!(after[0], before[0]);
    assert!(!after[1].1);
    assert!(after[2].1);
    assert_eq!(after[2].2, "2024-01-01T00:00:00");
}

#[tokio::test]
async fn delete_mode_removes_rows_by_key() {
    let (pg, client) = metastore().await;
    let upsert = sink(&pg, config("meta.classifications", Mode::Upsert)).await;
    let t0 = "2024-01-01T00:00:00Z";
    upsert
        .deliver(&[
            propagated(1, ASSET_1, true, t0),
            propagated(2, ASSET_2, true, t0),
            propagated(3, ASSET_3, true, t0),
        ])
        .await
        .unwrap();

    let delete = sink(&pg, config("meta.classifications", Mode::Delete)).await;
    // Whole rows (extra fields are fine), a bare key, a key that matches nothing, a duplicate.
    delete
        .deliver(&[
            propagated(4, ASSET_1, true, t0),
            record(
                5,
                json!({"asset_guid": ASSET_3, "tag": "PII", "origin_guid": ORIGIN}),
            ),
            record(
                6,
                json!({"asset_guid": ASSET_2, "tag": "OTHER", "origin_guid": ORIGIN}),
            ),
            record(
                7,
                json!({"asset_guid": ASSET_3, "tag": "PII", "origin_guid": ORIGIN}),
            ),
        ])
        .await
        .unwrap();
    let left = classifications(&client).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, ASSET_2);

    // A record without the whole key cannot be deleted by key.
    let message = permanent_message(
        delete
            .deliver(&[record(8, json!({"asset_guid": ASSET_2, "tag": "PII"}))])
            .await,
    );
    assert!(message.contains("origin_guid"), "{message}");
    assert_eq!(count(&client, "meta.classifications").await, 1);
}

#[tokio::test]
async fn rows_with_the_same_key_in_one_call_are_merged_in_order() {
    let (pg, client) = metastore().await;
    let sink = sink(&pg, config("meta.classifications", Mode::Upsert)).await;
    // The same key three times, once spelt in upper case (equal as a uuid, not as JSON), and a
    // record carrying fewer fields: one statement, no "cannot affect row a second time".
    sink.deliver(&[
        propagated(1, ASSET_1, true, "2024-01-01T00:00:00Z"),
        propagated(2, &ASSET_1.to_uppercase(), false, "2024-01-02T00:00:00Z"),
        propagated(3, ASSET_2, true, "2024-01-01T00:00:00Z"),
        propagated(4, ASSET_1, false, "2024-01-03T00:00:00Z"),
        record(
            5,
            json!({"asset_guid": ASSET_2, "tag": "PII", "origin_guid": ORIGIN, "propagate": false}),
        ),
    ])
    .await
    .unwrap();
    let rows = classifications(&client).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1, rows[0].2.as_str()),
        (ASSET_1, false, "2024-01-03T00:00:00")
    );
    // Merged: propagate from the later record, the rest from the earlier one.
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1, rows[1].2.as_str()),
        (ASSET_2, false, "2024-01-01T00:00:00")
    );

    // Differently spelt duplicates inside one call are merged by the server's uuid equality.
    sink.deliver(&[
        propagated(6, ASSET_3, true, "2024-01-01T00:00:00Z"),
        propagated(7, &ASSET_3.to_uppercase(), false, "2024-01-05T00:00:00Z"),
    ])
    .await
    .unwrap();
    let rows = classifications(&client).await;
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (rows[2].1, rows[2].2.as_str()),
        (false, "2024-01-05T00:00:00")
    );
}

#[tokio::test]
async fn unique_constraint_with_nulls_not_distinct_as_key() {
    let (pg, client) = metastore().await;
    let mut cfg = config("meta.incidents", Mode::Upsert);
    // Any order of the constraint's columns.
    cfg.key_columns = Some(vec![
        "asset_guid".into(),
        "external_id".into(),
        "source".into(),
        "tenant_id".into(),
    ]);
    let sink = sink(&pg, cfg).await;
    let incident = |n: u64, asset: Value, status: &str| {
        record(
            n,
            json!({
                "tenant_id": "acme", "source": "soda", "external_id": "inc-1",
                "asset_guid": asset, "incident_type": "freshness", "severity": "high",
                "status": status, "payload": {"checks": [1, 2]},
            }),
        )
    };
    // Without an asset, twice in one call, then again: NULL collides with NULL here.
    sink.deliver(&[
        incident(1, Value::Null, "open"),
        incident(2, Value::Null, "acknowledged"),
        incident(3, json!(ASSET_1), "open"),
    ])
    .await
    .unwrap();
    sink.deliver(&[incident(4, Value::Null, "resolved")])
        .await
        .unwrap();
    let rows: Vec<(Option<String>, String)> = client
        .query(
            "SELECT asset_guid::text, status FROM meta.incidents ORDER BY asset_guid NULLS FIRST",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (None, "resolved".to_string()),
            (Some(ASSET_1.to_string()), "open".to_string())
        ]
    );

    let mut del = config("meta.incidents", Mode::Delete);
    del.key_columns = Some(vec![
        "tenant_id".into(),
        "source".into(),
        "external_id".into(),
        "asset_guid".into(),
    ]);
    let delete = MetastoreSink::connect(pg.connection(DB), del)
        .await
        .unwrap();
    delete
        .deliver(&[incident(5, Value::Null, "x")])
        .await
        .unwrap();
    assert_eq!(count(&client, "meta.incidents").await, 1);
}

#[tokio::test]
async fn partitioned_assets_upsert_and_derived_guid_check() {
    let (pg, client) = metastore().await;
    let sink = sink(&pg, config("meta.assets", Mode::Upsert)).await;
    let guid: String = client
        .query_one("SELECT meta.asset_guid('acme', 'db.sch.orders')::text", &[])
        .await
        .unwrap()
        .get(0);
    let asset = |n: u64, guid: &str, attributes: Value| {
        record(
            n,
            json!({
                "guid": guid, "tenant_id": "acme", "type_name": "Table", "name": "orders",
                "qualified_name": "db.sch.orders", "attributes": attributes,
            }),
        )
    };
    sink.deliver(&[asset(1, &guid, json!({"owner": "ana"}))])
        .await
        .unwrap();
    sink.deliver(&[asset(2, &guid, json!({"owner": "bo"}))])
        .await
        .unwrap();
    let owner: String = client
        .query_one("SELECT attributes->>'owner' FROM meta.assets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "bo");

    let message = permanent_message(sink.deliver(&[asset(3, ASSET_1, json!({}))]).await);
    assert!(message.contains("assets_guid_derived"), "{message}");
}

#[tokio::test]
async fn check_violation_and_bad_data_are_permanent() {
    let (pg, client) = metastore().await;
    let sink = sink(&pg, config("meta.classifications", Mode::Upsert)).await;
    let mut bogus = propagated(1, ASSET_1, true, "2024-01-01T00:00:00Z");
    bogus.fields.insert("source".into(), json!("bogus"));
    let message = permanent_message(
        sink.deliver(&[propagated(2, ASSET_2, true, "2024-01-01T00:00:00Z"), bogus])
            .await,
    );
    assert!(message.contains("23514"), "{message}");
    assert!(
        message.contains("classifications_source_valid"),
        "{message}"
    );
    assert!(message.contains("meta.classifications"), "{message}");
    // The call is one statement: the good row did not land either (the engine retries the
    // records one by one and dead-letters only the bad one).
    assert_eq!(count(&client, "meta.classifications").await, 0);

    let message = permanent_message(
        sink.deliver(&[propagated(3, "not-a-uuid", true, "2024-01-01T00:00:00Z")])
            .await,
    );
    assert!(message.contains("22P02"), "{message}");

    // NOT NULL column left out, no default.
    let message = permanent_message(
        sink.deliver(&[record(
            4,
            json!({"asset_guid": ASSET_1, "tag": "PII", "origin_guid": ORIGIN, "source": "propagated"}),
        )])
        .await,
    );
    assert!(message.contains("23502"), "{message}");
    assert!(message.contains("tenant_id"), "{message}");
}

#[tokio::test]
async fn unknown_field_is_permanent() {
    let (pg, client) = metastore().await;
    let sink = sink(&pg, config("meta.classifications", Mode::Upsert)).await;
    let mut r = propagated(1, ASSET_1, true, "2024-01-01T00:00:00Z");
    r.fields
        .insert("colour\"; DROP TABLE meta.assets; --".into(), json!("red"));
    let message = permanent_message(sink.deliver(&[r]).await);
    assert!(message.contains("colour"), "{message}");
    assert!(
        message.contains("is not a column of table meta.classifications"),
        "{message}"
    );
    assert_eq!(count(&client, "meta.classifications").await, 0);
    assert_eq!(count(&client, "meta.assets").await, 0);
}

#[tokio::test]
async fn build_errors_name_the_problem() {
    let (pg, client) = metastore().await;
    client
        .batch_execute(
            "CREATE TABLE public.nokey (a int, b int UNIQUE);
             CREATE VIEW public.v AS SELECT 1 AS a;",
        )
        .await
        .unwrap();

    let e = build_error(&pg, config("meta.nope", Mode::Upsert)).await;
    assert!(matches!(e, BuildError::UnknownTable { .. }), "{e:?}");
    assert!(e.to_string().contains("meta.nope"), "{e}");
    assert!(!e.is_retryable());

    let mut bad_key = config("meta.classifications", Mode::Upsert);
    bad_key.key_columns = Some(vec!["tag".into(), "asset_guid".into()]);
    let e = build_error(&pg, bad_key).await;
    assert!(matches!(e, BuildError::NotAKey { .. }), "{e:?}");
    assert!(e.to_string().contains("classifications_pkey"), "{e}");

    let mut key_as_update = config("meta.classifications", Mode::Upsert);
    key_as_update.update_columns = Some(vec!["tag".into()]);
    let e = build_error(&pg, key_as_update).await;
    assert!(matches!(e, BuildError::UnusableColumn { .. }), "{e:?}");

    let mut unknown_update = config("meta.classifications", Mode::Upsert);
    unknown_update.update_columns = Some(vec!["colour".into()]);
    let e = build_error(&pg, unknown_update).await;
    assert!(matches!(e, BuildError::UnknownColumn { .. }), "{e:?}");

    let e = build_error(&pg, config("public.nokey", Mode::Upsert)).await;
    assert!(matches!(e, BuildError::NoPrimaryKey { .. }), "{e:?}");
    assert!(e.to_string().contains("nokey_b_key"), "{e}");
    let mut by_unique = config("public.nokey", Mode::Upsert);
    by_unique.key_columns = Some(vec!["b".into()]);
    sink(&pg, by_unique).await;

    let e = build_error(&pg, config("public.v", Mode::Upsert)).await;
    assert!(matches!(e, BuildError::NotATable { .. }), "{e:?}");

    let e = build_error(&pg, config("classifications", Mode::Upsert)).await;
    assert!(matches!(e, BuildError::Config(_)), "{e:?}");

    // A role that may only read.
    client
        .batch_execute(
            "CREATE ROLE reader LOGIN PASSWORD 'reader-pw';
             GRANT USAGE ON SCHEMA meta TO reader;
             GRANT SELECT ON meta.classifications TO reader;",
        )
        .await
        .unwrap();
    let mut reader = pg.connection(DB);
    reader.user = "reader".into();
    reader.password = lily_pg::Secret::new("reader-pw");
    let e = MetastoreSink::connect(reader, config("meta.classifications", Mode::Upsert))
        .await
        .unwrap_err();
    assert!(matches!(e, BuildError::MissingPrivilege { .. }), "{e:?}");
    assert!(e.to_string().contains("INSERT"), "{e}");

    let mut wrong_password = pg.connection(DB);
    wrong_password.password = lily_pg::Secret::new("nope");
    let e = MetastoreSink::connect(wrong_password, config("meta.classifications", Mode::Upsert))
        .await
        .unwrap_err();
    assert!(matches!(e, BuildError::Connect { .. }), "{e:?}");
    assert!(!e.is_retryable(), "{e}");
}

#[tokio::test]
async fn check_columns_reports_what_the_output_cannot_do() {
    let (pg, _client) = metastore().await;
    let sink = sink(&pg, config("meta.classifications", Mode::Upsert)).await;
    let cols = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    sink.check_columns(&cols(&[
        "asset_guid",
        "origin_guid",
        "tag",
        "source",
        "tenant_id",
    ]))
    .unwrap();
    let problems = sink
        .check_columns(&cols(&["asset_guid", "tag", "tenant_id", "colour"]))
        .unwrap_err();
    assert!(
        problems.contains("\"colour\" is not a column"),
        "{problems}"
    );
    assert!(
        problems.contains("key column \"origin_guid\""),
        "{problems}"
    );
    assert!(problems.contains("\"source\""), "{problems}");
    assert!(!problems.contains("propagate"), "has a default: {problems}");

    let delete = self::sink(&pg, config("meta.classifications", Mode::Delete)).await;
    delete
        .check_columns(&cols(&["asset_guid", "origin_guid", "tag"]))
        .unwrap();
}

#[tokio::test]
async fn hostile_identifiers_round_trip() {
    let (pg, client) = metastore().await;
    client
        .batch_execute(
            r#"CREATE SCHEMA "we""ird.s";
               CREATE TYPE "we""ird.s"."my;type" AS ENUM ('a', 'b c');
               CREATE TABLE "we""ird.s"."we""ird; table" (
                   "a;b" int PRIMARY KEY,
                   "x y" "we""ird.s"."my;type",
                   "Q""uote" json,
                   "--" text NOT NULL DEFAULT 'd',
                   c varchar(3)
               );"#,
        )
        .await
        .unwrap();
    let table = r#""we""ird.s"."we""ird; table""#;
    let sink = sink(&pg, config(table, Mode::Upsert)).await;
    let row = |n: u64, k: i64, e: &str, q: Value| {
        record(
            n,
            json!({"a;b": k, "x y": e, "Q\"uote": q, "--": "'; DROP TABLE x; --"}),
        )
    };
    sink.deliver(&[
        row(1, 1, "a", json!({"k": 1})),
        row(2, 2, "b c", json!([1])),
    ])
    .await
    .unwrap();
    let first = hostile_rows(&client).await;
    assert_eq!(first.len(), 2);
    assert_eq!(first[1].1, "b c");
    assert_eq!(first[0].2, r#"{"k": 1}"#);
    assert_eq!(first[0].3, "'; DROP TABLE x; --");

    // json has no equality operator: "unchanged" is decided on its text, and holds.
    sink.deliver(&[row(3, 1, "a", json!({"k": 1}))])
        .await
        .unwrap();
    assert_eq!(hostile_rows(&client).await, first);
    sink.deliver(&[row(4, 1, "a", json!({"k": 2}))])
        .await
        .unwrap();
    let after = hostile_rows(&client).await;
    assert_eq!(after[0].2, r#"{"k": 2}"#);
    assert_ne!(after[0].4, first[0].4);

    // Refused cleanly: a value that does not fit the column's modifier, an unknown enum label.
    let mut long = row(5, 3, "a", json!(null));
    long.fields.insert("c".into(), json!("toolong"));
    let message = permanent_message(sink.deliver(&[long]).await);
    assert!(message.contains("22001"), "{message}");
    let message = permanent_message(sink.deliver(&[row(6, 3, "zzz", json!(null))]).await);
    assert!(message.contains("22P02"), "{message}");

    let mut cfg = config(table, Mode::Delete);
    cfg.key_columns = Some(vec!["a;b".into()]);
    let delete = self::sink(&pg, cfg).await;
    delete
        .deliver(&[record(7, json!({"a;b": 2}))])
        .await
        .unwrap();
    assert_eq!(hostile_rows(&client).await.len(), 1);
}

#[tokio::test]
async fn lock_timeout_is_retryable() {
    let (pg, client) = metastore().await;
    // Sessions opened from now on (the sink's) give up on a lock after 200 ms.
    client
        .batch_execute("ALTER DATABASE meta SET lock_timeout = '200ms'")
        .await
        .unwrap();
    let sink = MetastoreSink::connect(
        pg.connection(DB),
        config("meta.classifications", Mode::Upsert),
    )
    .await
    .unwrap();
    client
        .batch_execute("BEGIN; LOCK TABLE meta.classifications IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let err = sink
        .deliver(&[propagated(1, ASSET_1, true, "2024-01-01T00:00:00Z")])
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("55P03"), "{err}");
    client.batch_execute("ROLLBACK").await.unwrap();
    // The connection survived a server error.
    sink.deliver(&[propagated(2, ASSET_1, true, "2024-01-01T00:00:00Z")])
        .await
        .unwrap();
}

#[tokio::test]
async fn server_down_is_retryable_and_the_sink_reconnects() {
    let (pg, client) = metastore().await;
    drop(client);
    let sink = sink(&pg, config("meta.classifications", Mode::Upsert)).await;
    sink.deliver(&[propagated(1, ASSET_1, true, "2024-01-01T00:00:00Z")])
        .await
        .unwrap();

    pg.stop().await.unwrap();
    for n in 2..4 {
        let err = sink
            .deliver(&[propagated(n, ASSET_2, true, "2024-01-01T00:00:00Z")])
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
    }
    pg.start_again().await.unwrap();
    sink.deliver(&[propagated(4, ASSET_2, true, "2024-01-01T00:00:00Z")])
        .await
        .unwrap();
    let client = pg.connect(DB).await.unwrap();
    assert_eq!(count(&client, "meta.classifications").await, 2);
}

#[tokio::test]
async fn backend_terminated_mid_call_is_retryable_and_the_next_call_reconnects() {
    let (pg, client) = metastore().await;
    let watcher = pg.connect(DB).await.unwrap();
    let sink = sink(&pg, config("meta.classifications", Mode::Upsert)).await;
    sink.deliver(&[propagated(1, ASSET_1, true, "2024-01-01T00:00:00Z")])
        .await
        .unwrap();
    let pid = sink_backend(&watcher).await;

    // Hold the call on a lock, then kill its backend: the loss happens during the call.
    client
        .batch_execute("BEGIN; LOCK TABLE meta.classifications IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let blocked = [propagated(2, ASSET_2, true, "2024-01-01T00:00:00Z")];
    let kill = async {
        loop {
            let waiting: bool = watcher
                .query_one(
                    "SELECT wait_event_type IS NOT DISTINCT FROM 'Lock' FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .unwrap()
                .get(0);
            if waiting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let terminated: bool = watcher
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert!(terminated);
    };
    let (result, ()) = tokio::join!(sink.deliver(&blocked), kill);
    let err = result.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    client.batch_execute("ROLLBACK").await.unwrap();

    sink.deliver(&blocked).await.unwrap();
    assert_eq!(count(&client, "meta.classifications").await, 2);
    assert_ne!(sink_backend(&watcher).await, pid);
}

#[tokio::test]
async fn idle_connection_lost_is_retryable_or_reopened_at_once() {
    let (pg, client) = metastore().await;
    let sink = sink(&pg, config("meta.classifications", Mode::Upsert)).await;
    sink.deliver(&[propagated(1, ASSET_1, true, "2024-01-01T00:00:00Z")])
        .await
        .unwrap();
    let pid = sink_backend(&client).await;
    let terminated: bool = client
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    drop(client);
    // Between calls, the client may already have seen the FATAL (the call then reconnects
    // straight away) or not (the call fails as retryable and the next one reconnects).
    let calls = [
        [propagated(2, ASSET_2, true, "2024-01-01T00:00:00Z")],
        [propagated(3, ASSET_3, true, "2024-01-01T00:00:00Z")],
    ];
    for (step, batch) in calls.iter().enumerate() {
        if step == 1 {
            // The same with the server restarting under the sink.
            pg.restart().await.unwrap();
        }
        if let Err(err) = sink.deliver(batch).await {
            assert!(err.is_retryable(), "{err:?}");
            sink.deliver(batch).await.unwrap();
        }
    }
    let client = pg.connect(DB).await.unwrap();
    assert_eq!(count(&client, "meta.classifications").await, 3);
}
