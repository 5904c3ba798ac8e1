//! Migrations and schema behaviour against a real throwaway cluster.

use lily_metastore::{migrate, migrations, MetastoreError, ASSET_PARTITIONS};
use lily_pgharness::PgCluster;
use tokio_postgres::Client;

async fn fresh(db: &str) -> (PgCluster, Client) {
    let pg = PgCluster::start().await.unwrap();
    pg.create_database(db).await.unwrap();
    let client = pg.connect(db).await.unwrap();
    (pg, client)
}

async fn migrated(db: &str) -> (PgCluster, Client) {
    let (pg, client) = fresh(db).await;
    migrate(&client).await.unwrap();
    (pg, client)
}

fn all_versions() -> Vec<i32> {
    migrations().iter().map(|m| m.version).collect()
}

async fn plan(client: &Client, sql: &str) -> String {
    let mut out = String::new();
    for msg in client.simple_query(sql).await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = msg {
            out.push_str(row.get(0).unwrap_or(""));
            out.push('\n');
        }
    }
    out
}

/// Distinct `meta.assets_pNN` partitions a plan mentions.
fn partitions_in(plan: &str) -> Vec<String> {
    let mut found: Vec<String> = plan
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            w.len() == "assets_p00".len()
                && w.starts_with("assets_p")
                && w[8..].chars().all(|c| c.is_ascii_digit())
        })
        .map(str::to_string)
        .collect();
    found.sort();
    found.dedup();
    found
}

#[tokio::test]
async fn migrate_twice_applies_nothing_the_second_time() {
    let (_pg, client) = fresh("meta").await;
    let first = migrate(&client).await.unwrap();
    assert_eq!(first.applied, all_versions());
    assert!(first.already_present.is_empty());
    let second = migrate(&client).await.unwrap();
    assert!(second.applied.is_empty(), "{second:?}");
    assert_eq!(second.already_present, all_versions());
    assert!(second.unknown.is_empty());

    // Recorded with the embedded checksums.
    let rows = client
        .query(
            "SELECT version, name, checksum FROM lily.schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), migrations().len());
    for (row, m) in rows.iter().zip(migrations()) {
        assert_eq!(row.get::<_, i32>(0), m.version);
        assert_eq!(row.get::<_, String>(1), m.name);
        assert_eq!(row.get::<_, String>(2), m.checksum());
    }

    // Every table exists with a primary key (logical replication needs a replica identity).
    for table in [
        "lily.schema_migrations",
        "lily.checkpoints",
        "meta.tenants",
        "meta.assets",
        "meta.lineage_edges",
        "meta.classifications",
        "meta.incidents",
    ] {
        let pk: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'p'",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(pk, 1, "{table} has no primary key");
    }

    // 32 hash partitions, each with its own primary key index and fillfactor 90.
    let rows = client
        .query(
            "SELECT c.relname::text, c.reloptions::text[],
                    (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
             FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
             WHERE h.inhparent = 'meta.assets'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), ASSET_PARTITIONS as usize);
    for row in &rows {
        let name: String = row.get(0);
        let opts: Vec<String> = row.get(1);
        assert!(
            opts.contains(&"fillfactor=90".to_string()),
            "{name}: {opts:?}"
        );
        assert_eq!(row.get::<_, i64>(2), 1, "{name} lacks its primary key");
    }
    let strategy: String = client
        .query_one(
            "SELECT partstrat::text FROM pg_partitioned_table WHERE partrelid = 'meta.assets'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(strategy, "h");

    // Checkpoints take an LSN.
    client
        .batch_execute(
            "INSERT INTO lily.checkpoints (slot_name, confirmed_lsn) VALUES ('lily_main', '0/16B3748')",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn asset_guid_is_a_deterministic_uuid_v5() {
    let (_pg, client) = migrated("meta").await;
    let row = client
        .query_one(
            "SELECT meta.asset_guid('t1', 'conn/db/schema/table')::text,
                    meta.asset_guid('t1', 'conn/db/schema/table') = meta.asset_guid('t1', 'conn/db/schema/table'),
                    meta.asset_guid('t2', 'conn/db/schema/table') <> meta.asset_guid('t1', 'conn/db/schema/table'),
                    (SELECT provolatile::text FROM pg_proc WHERE oid = 'meta.asset_guid(text,text)'::regprocedure)",
            &[],
        )
        .await
        .unwrap();
    // Golden value: Python's uuid.uuid5(UUID("52f8f556-8327-42c9-834a-d942b515e43f"),
    // "t1:conn/db/schema/table"). Changing it changes every guid in every metastore.
    assert_eq!(
        row.get::<_, String>(0),
        "866d170e-675c-5d7e-9cfe-fe4130681353"
    );
    assert!(row.get::<_, bool>(1));
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, String>(3), "i", "asset_guid must be IMMUTABLE");
}

#[tokio::test]
async fn qualified_name_is_unique_per_tenant() {
    let (_pg, client) = migrated("meta").await;
    client
        .batch_execute(
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ('t1', 'Tenant one'), ('t2', 'Tenant two')",
        )
        .await
        .unwrap();
    let insert = "INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name)
                  VALUES (meta.asset_guid($1, $2), $1, 'Table', $2, 'orders')";
    let qn = "default/snowflake/1700000000/ANALYTICS/PUBLIC/ORDERS";
    client.execute(insert, &[&"t1", &qn]).await.unwrap();

    let dup = client.execute(insert, &[&"t1", &qn]).await.unwrap_err();
    assert_eq!(dup.code().unwrap().code(), "23505", "{dup}");

    client.execute(insert, &[&"t2", &qn]).await.unwrap();

    // A guid that is not the derived one is refused.
    let forged = client
        .execute(
            "INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name)
             VALUES (gen_random_uuid(), 't1', 'Table', 'some/other/name', 'x')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(forged.code().unwrap().code(), "23514", "{forged}");

    // Unknown tenant, bad tenant id, bad type name, bad status.
    for (sql, code) in [
        (
            "INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name)
             VALUES (meta.asset_guid('nobody', 'a'), 'nobody', 'Table', 'a', 'a')",
            "23503",
        ),
        (
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ('Bad Tenant', 'x')",
            "23514",
        ),
        (
            "INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name)
             VALUES (meta.asset_guid('t1', 'b'), 't1', 'not a type', 'b', 'b')",
            "23514",
        ),
        (
            "INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name, status)
             VALUES (meta.asset_guid('t1', 'c'), 't1', 'Table', 'c', 'c', 'GONE')",
            "23514",
        ),
    ] {
        let err = client.execute(sql, &[]).await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), code, "{sql}: {err}");
    }

    // The idempotent write path: upsert on the derived guid.
    let version: i64 = client
        .query_one(
            "INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name, attributes)
             VALUES (meta.asset_guid($1, $2), $1, 'Table', $2, 'orders', '{\"rowCount\": 10}')
             ON CONFLICT (guid) DO UPDATE
                SET attributes = EXCLUDED.attributes, version = meta.assets.version + 1, updated_at = now()
             RETURNING version",
            &[&"t1", &qn],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 2);
    let n: i64 = client
        .query_one("SELECT count(*) FROM meta.assets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

/// The type-name rule (`^[A-Z][A-Za-z0-9]{0,63}$`), checked on bytes since 0009: each candidate
/// is accepted exactly when the pattern matches it, whatever the session's client encoding.
#[tokio::test]
async fn type_names_follow_the_pattern() {
    let (_pg, client) = migrated("meta").await;
    client
        .batch_execute("INSERT INTO meta.tenants (tenant_id, name) VALUES ('t1', 'Tenant one')")
        .await
        .unwrap();
    let mut names: Vec<String> = [
        "Table",
        "A",
        "Z9",
        "MaterializedView",
        "PowerBIColumn",
        "",
        "table",
        "9Lives",
        "Tab le",
        "Tab;le",
        "Tab'le",
        "Tab\"le",
        "Tab-le",
        "Tab_le",
        "Täble",
        "Ä",
        "TableÄ",
        "Table\u{130}",
        "Tab\tle",
        "Table ",
        " Table",
        "@Table",
        "[Table",
        "`",
        "{",
        "Tab/le",
        "T\u{1F600}",
        "Ｔable",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.push("A".repeat(64));
    names.push("A".repeat(65));
    names.push(format!("{}é", "A".repeat(62)));
    for encoding in ["UTF8", "LATIN1"] {
        client
            .batch_execute(&format!("SET client_encoding = '{encoding}'"))
            .await
            .unwrap();
        for (i, name) in names.iter().enumerate() {
            let qn = format!("{encoding}/{i}");
            let expected = client
                .query_one("SELECT $1::text ~ '^[A-Z][A-Za-z0-9]{0,63}$'", &[name])
                .await;
            // A name LATIN1 cannot carry fails in the client encoding, before any check.
            let Ok(expected) = expected else { continue };
            let expected: bool = expected.get(0);
            let inserted = client
                .execute(
                    "INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name)
                     VALUES (meta.asset_guid('t1', $2), 't1', $1, $2, 'n')",
                    &[name, &qn],
                )
                .await;
            match inserted {
                Ok(_) => assert!(expected, "{name:?} was accepted ({encoding})"),
                Err(e) => {
                    assert!(!expected, "{name:?} was refused ({encoding}): {e}");
                    assert_eq!(e.code().unwrap().code(), "23514", "{name:?}: {e}");
                }
            }
        }
    }
}

#[tokio::test]
async fn tampered_checksum_is_refused() {
    let (_pg, client) = migrated("meta").await;
    client
        .batch_execute("UPDATE lily.schema_migrations SET checksum = 'deadbeef' WHERE version = 2")
        .await
        .unwrap();
    let err = migrate(&client).await.unwrap_err();
    let msg = err.to_string();
    match &err {
        MetastoreError::ChecksumMismatch {
            version,
            label,
            recorded,
            ..
        } => {
            assert_eq!(*version, 2);
            assert_eq!(label, "0002_metastore_assets");
            assert_eq!(recorded, "deadbeef");
        }
        other => panic!("expected a checksum mismatch, got {other}"),
    }
    assert!(msg.contains("0002_metastore_assets"), "{msg}");
    // The connection is usable afterwards (no transaction left open).
    client.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn concurrent_migrations_apply_each_version_once() {
    let (pg, _client) = fresh("meta").await;
    let clients = [
        pg.connect("meta").await.unwrap(),
        pg.connect("meta").await.unwrap(),
        pg.connect("meta").await.unwrap(),
    ];
    let (a, b, c) = tokio::join!(
        migrate(&clients[0]),
        migrate(&clients[1]),
        migrate(&clients[2])
    );
    let reports = [a.unwrap(), b.unwrap(), c.unwrap()];
    let mut applied: Vec<i32> = reports.iter().flat_map(|r| r.applied.clone()).collect();
    applied.sort();
    assert_eq!(applied, all_versions(), "{reports:?}");
    for r in &reports {
        let mut seen: Vec<i32> = r
            .applied
            .iter()
            .chain(r.already_present.iter())
            .copied()
            .collect();
        seen.sort();
        assert_eq!(seen, all_versions(), "{r:?}");
    }
    let n: i64 = clients[0]
        .query_one("SELECT count(*) FROM lily.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, migrations().len() as i64);
}

#[tokio::test]
async fn look_up_by_qualified_name_touches_one_partition() {
    let (_pg, client) = migrated("meta").await;
    client
        .batch_execute(
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ('t1', 'Tenant one');
             -- 2,000 tables of 10 columns each, plus the table looked up.
             INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name, parent_guid)
             SELECT meta.asset_guid('t1', 'conn/db/schema/t' || (i / 10) || '/col' || i), 't1', 'Column',
                    'conn/db/schema/t' || (i / 10) || '/col' || i, 'col' || i,
                    meta.asset_guid('t1', 'conn/db/schema/t' || (i / 10))
             FROM generate_series(0, 19999) i;
             INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name)
             VALUES (meta.asset_guid('t1', 'conn/db/schema/table'), 't1', 'Table', 'conn/db/schema/table', 'table');
             ANALYZE meta.assets;",
        )
        .await
        .unwrap();
    let home: String = client
        .query_one(
            "SELECT tableoid::regclass::text FROM meta.assets WHERE guid = meta.asset_guid('t1', 'conn/db/schema/table')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let home = home.trim_start_matches("meta.").to_string();

    // Constant arguments: the immutable function folds at plan time, so the planner prunes to the
    // one partition.
    let p = plan(
        &client,
        "EXPLAIN (COSTS OFF) SELECT * FROM meta.assets WHERE guid = meta.asset_guid('t1', 'conn/db/schema/table')",
    )
    .await;
    assert_eq!(partitions_in(&p), vec![home.clone()], "{p}");
    assert!(p.contains("Index Scan"), "{p}");

    // A generic plan of a prepared statement ($1, $2 unknown at plan time) prunes at executor
    // start-up instead: still one partition probed.
    let p = plan(
        &client,
        "SET plan_cache_mode = force_generic_plan;
         PREPARE by_qn(text, text) AS SELECT * FROM meta.assets WHERE guid = meta.asset_guid($1, $2);
         EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE by_qn('t1', 'conn/db/schema/table');",
    )
    .await;
    assert_eq!(partitions_in(&p), vec![home], "{p}");
    assert!(
        p.contains(&format!("Subplans Removed: {}", ASSET_PARTITIONS - 1)),
        "{p}"
    );
    assert!(p.contains("rows=1 loops=1"), "{p}");

    // Children of a parent: one index probe per partition.
    let p = plan(
        &client,
        "RESET plan_cache_mode;
         EXPLAIN (COSTS OFF) SELECT guid FROM meta.assets
         WHERE tenant_id = 't1' AND parent_guid = meta.asset_guid('t1', 'conn/db/schema/t7')",
    )
    .await;
    assert!(!p.contains("Seq Scan"), "{p}");
    assert_eq!(
        partitions_in(&p).len(),
        ASSET_PARTITIONS as usize,
        "children are spread over every partition: {p}"
    );
}

#[tokio::test]
async fn lineage_classifications_and_incidents() {
    let (_pg, client) = migrated("meta").await;
    client
        .batch_execute(
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ('t1', 'Tenant one');
             -- a -> b -> c -> d, b -> e, and a cycle d -> b, via process p; z is unrelated.
             CREATE TEMP TABLE g (up text, down text);
             INSERT INTO g VALUES ('a','b'), ('b','c'), ('c','d'), ('b','e'), ('d','b'), ('y','z');
             INSERT INTO meta.lineage_edges (tenant_id, upstream_guid, downstream_guid, process_guid)
             SELECT 't1', meta.asset_guid('t1', up), meta.asset_guid('t1', down), meta.asset_guid('t1', 'p')
             FROM g;",
        )
        .await
        .unwrap();
    let names = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, i32)> {
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let walk = "SELECT n.name, w.depth
                FROM meta.{dir}(meta.asset_guid('t1', $1), $2) w
                JOIN (SELECT x AS name, meta.asset_guid('t1', x) AS guid
                      FROM unnest(array['a','b','c','d','e','y','z']) x) n ON n.guid = w.asset_guid
                ORDER BY 2, 1";
    let down = client
        .query(
            &walk.replace("{dir}", "lineage_downstream"),
            &[&"a", &10i32],
        )
        .await
        .unwrap();
    assert_eq!(
        names(down),
        vec![
            ("b".into(), 1),
            ("c".into(), 2),
            ("e".into(), 2),
            ("d".into(), 3)
        ]
    );
    let up = client
        .query(&walk.replace("{dir}", "lineage_upstream"), &[&"d", &10i32])
        .await
        .unwrap();
    assert_eq!(
        names(up),
        // d is on a cycle (d -> b -> c -> d) but the start node is never reported.
        vec![("c".into(), 1), ("b".into(), 2), ("a".into(), 3)]
    );
    let shallow = client
        .query(&walk.replace("{dir}", "lineage_downstream"), &[&"a", &1i32])
        .await
        .unwrap();
    assert_eq!(names(shallow), vec![("b".into(), 1)]);

    // The same edge twice is a primary key violation (upsert with ON CONFLICT DO NOTHING).
    let dup = client
        .execute(
            "INSERT INTO meta.lineage_edges (tenant_id, upstream_guid, downstream_guid, process_guid)
             VALUES ('t1', meta.asset_guid('t1','a'), meta.asset_guid('t1','b'), meta.asset_guid('t1','p'))",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(dup.code().unwrap().code(), "23505");

    // Classifications: direct means origin = asset; propagated names another origin.
    client
        .batch_execute(
            "INSERT INTO meta.classifications (tenant_id, asset_guid, tag, source, origin_guid)
             VALUES ('t1', meta.asset_guid('t1','a'), 'PII', 'direct', meta.asset_guid('t1','a')),
                    ('t1', meta.asset_guid('t1','b'), 'PII', 'propagated', meta.asset_guid('t1','a')),
                    ('t1', meta.asset_guid('t1','b'), 'PII', 'propagated', meta.asset_guid('t1','y'));",
        )
        .await
        .unwrap();
    for bad in [
        "INSERT INTO meta.classifications (tenant_id, asset_guid, tag, source, origin_guid)
         VALUES ('t1', meta.asset_guid('t1','c'), 'PII', 'direct', meta.asset_guid('t1','a'))",
        "INSERT INTO meta.classifications (tenant_id, asset_guid, tag, source, origin_guid)
         VALUES ('t1', meta.asset_guid('t1','c'), 'PII', 'propagated', meta.asset_guid('t1','c'))",
        "INSERT INTO meta.classifications (tenant_id, asset_guid, tag, source, origin_guid)
         VALUES ('t1', meta.asset_guid('t1','c'), 'PII', 'inherited', meta.asset_guid('t1','a'))",
    ] {
        let err = client.execute(bad, &[]).await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "23514", "{bad}: {err}");
    }

    // Incidents: a redelivery upserts, with or without an asset.
    let upsert = "INSERT INTO meta.incidents
                      (tenant_id, source, external_id, asset_guid, incident_type, severity, status, payload)
                  VALUES ('t1', 'monte_carlo', $1, $2, 'freshness', 'SEV-2', $3, '{}')
                  ON CONFLICT (tenant_id, source, external_id, asset_guid)
                  DO UPDATE SET status = EXCLUDED.status, updated_at = now()";
    let asset: Option<String> = None;
    for status in ["open", "acknowledged", "resolved"] {
        client
            .execute(
                &upsert.replace("$2", "$2::text::uuid"),
                &[&"mc-1", &asset, &status],
            )
            .await
            .unwrap();
        client
            .execute(
                &upsert.replace("$2", "meta.asset_guid('t1', $2)"),
                &[&"mc-1", &"a", &status],
            )
            .await
            .unwrap();
    }
    let rows = client
        .query(
            "SELECT asset_guid IS NULL, status FROM meta.incidents ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(bool, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![(false, "resolved".into()), (true, "resolved".into())]
    );
}

/// The capacity measurement quoted in ARCHITECTURE.md. Loads LILY_CAPACITY_ROWS (default
/// 1,000,000) assets shaped like a warehouse catalogue (90% columns), lineage and classifications,
/// and prints bytes per row of each relation, WAL per write and look-up timings.
///
/// cargo test -p lily-metastore --release --test migrate -- --ignored --nocapture capacity
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about a minute); run it by name"]
async fn capacity_measurement() {
    let rows: i64 = std::env::var("LILY_CAPACITY_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let pg = PgCluster::start_with(
        lily_pgharness::ClusterOptions::default()
            .setting("shared_buffers", "1GB")
            .setting("max_wal_size", "8GB")
            .setting("maintenance_work_mem", "512MB"),
    )
    .await
    .unwrap();
    pg.create_database("meta").await.unwrap();
    let client = pg.connect("meta").await.unwrap();
    migrate(&client).await.unwrap();
    client
        .batch_execute(
            "CREATE EXTENSION pgstattuple;
             INSERT INTO meta.tenants (tenant_id, name) VALUES ('acme-prod', 'Acme production');",
        )
        .await
        .unwrap();

    // Shape: 1 connection, 4 databases, 40 schemas, tables with 18 columns on average; 90% of
    // rows are columns, the rest tables/views (a few are dashboards). Qualified names follow the
    // `default/<connector>/<epoch>/DB/SCHEMA/TABLE/COLUMN` form.
    let tables = rows / 10;
    let started = std::time::Instant::now();
    let wal0: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!(
            "CREATE TEMP TABLE t AS
             SELECT i,
                    'default/snowflake/1700000000/DB_' || (i % 4) || '/SCHEMA_' || lpad((i % 40)::text, 2, '0')
                        || '/FACT_ORDERS_' || lpad(i::text, 7, '0') AS qn,
                    'default/snowflake/1700000000/DB_' || (i % 4) || '/SCHEMA_' || lpad((i % 40)::text, 2, '0') AS parent_qn,
                    'FACT_ORDERS_' || lpad(i::text, 7, '0') AS name
             FROM generate_series(1, {tables}) i;
             INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name, parent_guid, attributes)
             SELECT meta.asset_guid('acme-prod', qn), 'acme-prod',
                    CASE WHEN i % 50 = 0 THEN 'Dashboard' WHEN i % 7 = 0 THEN 'View' ELSE 'Table' END,
                    qn, name, meta.asset_guid('acme-prod', parent_qn),
                    jsonb_build_object('rowCount', i * 1013 % 10000000, 'columnCount', 9,
                        'sizeBytes', i * 7919 % 1000000000, 'description',
                        CASE WHEN i % 3 = 0 THEN 'Orders fact table, one row per order line, loaded hourly by dbt' END,
                        'ownerUsers', jsonb_build_array('data-eng'), 'certificateStatus', 'VERIFIED')
             FROM t;
             INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name, parent_guid, attributes)
             SELECT meta.asset_guid('acme-prod', t.qn || '/' || c.col), 'acme-prod', 'Column',
                    t.qn || '/' || c.col, c.col, meta.asset_guid('acme-prod', t.qn),
                    jsonb_build_object('dataType', CASE WHEN c.n % 3 = 0 THEN 'NUMBER(38,0)' WHEN c.n % 3 = 1 THEN 'VARCHAR(256)' ELSE 'TIMESTAMP_NTZ' END,
                        'order', c.n, 'isNullable', c.n % 2 = 0, 'isPrimary', c.n = 1,
                        'description', CASE WHEN (t.i + c.n) % 4 = 0 THEN 'Business key of the order line' END)
             FROM t CROSS JOIN LATERAL (
                 SELECT n, (array['ORDER_ID','CUSTOMER_ID','ORDER_TS','AMOUNT_USD','STATUS','REGION_CODE','SKU','QUANTITY','DISCOUNT_PCT'])[n] AS col
                 FROM generate_series(1, 9) n) c;"
        ))
        .await
        .unwrap();
    let load_secs = started.elapsed().as_secs_f64();
    let row = client
        .query_one(
            "SELECT count(*), pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint FROM meta.assets",
            &[&wal0],
        )
        .await
        .unwrap();
    let n: i64 = row.get(0);
    let wal_load: i64 = row.get(1);
    // VACUUM cannot share a multi-statement query (an implicit transaction).
    for sql in ["VACUUM (ANALYZE) meta.assets", "CHECKPOINT"] {
        client.batch_execute(sql).await.unwrap();
    }

    println!("\n== meta.assets: {n} rows loaded in {load_secs:.1}s ({:.0} rows/s), WAL {:.0} B/row (fsync/full_page_writes off)",
        n as f64 / load_secs, wal_load as f64 / n as f64);
    let sizes = client
        .query(
            "SELECT sum(pg_relation_size(c.oid))::bigint,
                    sum(pg_relation_size(c.reltoastrelid))::bigint,
                    sum(pg_indexes_size(c.oid))::bigint,
                    sum(pg_total_relation_size(c.oid))::bigint
             FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
             WHERE h.inhparent = 'meta.assets'::regclass",
            &[],
        )
        .await
        .unwrap();
    let (heap, toast, idx, total): (i64, i64, i64, i64) = (
        sizes[0].get(0),
        sizes[0].get(1),
        sizes[0].get(2),
        sizes[0].get(3),
    );
    let per = |b: i64| b as f64 / n as f64;
    println!(
        "heap {:.1} B/row, toast {:.1} B/row, indexes {:.1} B/row, total {:.1} B/row",
        per(heap),
        per(toast),
        per(idx),
        per(total)
    );
    for (label, pattern) in [
        ("pkey (guid)", "%pkey"),
        ("(parent_guid)", "%parent_guid_idx"),
        ("(tenant_id, type_name)", "%tenant_id_type_name_idx"),
    ] {
        let b: i64 = client
            .query_one(
                "SELECT coalesce(sum(pg_relation_size(i.indexrelid)), 0)::bigint
                 FROM pg_inherits h JOIN pg_index i ON i.indrelid = h.inhrelid
                 JOIN pg_class ic ON ic.oid = i.indexrelid
                 WHERE h.inhparent = 'meta.assets'::regclass AND ic.relname LIKE $1",
                &[&pattern],
            )
            .await
            .unwrap()
            .get(0);
        println!("  index {label}: {:.1} B/row", per(b));
    }
    let r = client
        .query_one(
            "SELECT avg(pg_column_size(a.*))::float8, avg(pg_column_size(attributes))::float8,
                    avg(octet_length(qualified_name))::float8
             FROM meta.assets a",
            &[],
        )
        .await
        .unwrap();
    println!(
        "avg tuple data {:.1} B (attributes {:.1} B, qualified_name {:.1} B)",
        r.get::<_, f64>(0),
        r.get::<_, f64>(1),
        r.get::<_, f64>(2)
    );
    let r = client
        .query_one(
            "SELECT (s).tree_level, (s).avg_leaf_density, (s).leaf_pages
             FROM (SELECT pgstatindex('meta.assets_p00_pkey') s) x",
            &[],
        )
        .await
        .unwrap();
    println!(
        "assets_p00_pkey: tree_level {} (levels below root), leaf density {:.1}%, {} leaf pages",
        r.get::<_, i32>(0),
        r.get::<_, f64>(1),
        r.get::<_, i64>(2)
    );

    // Look-ups: by qualified name (one partition) and children of a table (all partitions).
    let by_qn = client
        .prepare("SELECT guid, version, attributes FROM meta.assets WHERE guid = meta.asset_guid($1, $2)")
        .await
        .unwrap();
    let children = client
        .prepare("SELECT guid, name FROM meta.assets WHERE tenant_id = $1 AND parent_guid = meta.asset_guid($1, $2)")
        .await
        .unwrap();
    let lookups = 20_000i64;
    let t0 = std::time::Instant::now();
    for k in 0..lookups {
        let i = 1 + (k * 7_919) % tables;
        let qn = format!(
            "default/snowflake/1700000000/DB_{}/SCHEMA_{:02}/FACT_ORDERS_{:07}/AMOUNT_USD",
            i % 4,
            i % 40,
            i
        );
        let got = client.query(&by_qn, &[&"acme-prod", &qn]).await.unwrap();
        assert_eq!(got.len(), 1, "{qn}");
    }
    let per_qn = t0.elapsed().as_secs_f64() * 1e6 / lookups as f64;
    let t0 = std::time::Instant::now();
    let child_lookups = 2_000i64;
    for k in 0..child_lookups {
        let i = 1 + (k * 7_919) % tables;
        let qn = format!(
            "default/snowflake/1700000000/DB_{}/SCHEMA_{:02}/FACT_ORDERS_{:07}",
            i % 4,
            i % 40,
            i
        );
        let got = client.query(&children, &[&"acme-prod", &qn]).await.unwrap();
        assert_eq!(got.len(), 9, "{qn}");
    }
    let per_children = t0.elapsed().as_secs_f64() * 1e6 / child_lookups as f64;
    println!("look-up by qualified name: {per_qn:.0} µs round trip; children of a table (9 rows, 32 partitions): {per_children:.0} µs round trip");
    let p = plan(&client, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) SELECT * FROM meta.assets WHERE guid = meta.asset_guid('acme-prod', 'default/snowflake/1700000000/DB_1/SCHEMA_01/FACT_ORDERS_0000001/SKU')").await;
    println!("{p}");
    let p = plan(&client, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY ON) SELECT guid, name FROM meta.assets WHERE tenant_id = 'acme-prod' AND parent_guid = meta.asset_guid('acme-prod', 'default/snowflake/1700000000/DB_1/SCHEMA_01/FACT_ORDERS_0000001')").await;
    // The Append's own lines (with its Buffers total) and the summary.
    let summary: Vec<&str> = p
        .lines()
        .take_while(|l| !l.trim_start().starts_with("->"))
        .chain(
            p.lines()
                .filter(|l| l.starts_with("Planning") || l.starts_with("Execution")),
        )
        .collect();
    println!(
        "children of a table, top of the plan:\n{}",
        summary.join("\n")
    );
    let version: String = client
        .query_one("SELECT version()", &[])
        .await
        .unwrap()
        .get(0);
    println!("server: {version}");

    // Updates: attribute-only updates should be HOT (no index writes).
    let wal0: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let updated = client
        .execute(
            "UPDATE meta.assets SET attributes = attributes || '{\"popularityScore\": 0.5}',
                    version = version + 1, updated_at = now()
             WHERE type_name = 'Column' AND (hashtext(qualified_name) % 10) = 0",
            &[],
        )
        .await
        .unwrap();
    client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    let r = client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint,
                    (SELECT sum(n_tup_upd)::bigint FROM pg_stat_user_tables WHERE relname LIKE 'assets_p%'),
                    (SELECT sum(n_tup_hot_upd)::bigint FROM pg_stat_user_tables WHERE relname LIKE 'assets_p%')",
            &[&wal0],
        )
        .await
        .unwrap();
    let (wal_upd, upd, hot): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    println!(
        "attribute update of {updated} columns: WAL {:.0} B/row, HOT {hot}/{upd} ({:.1}%)",
        wal_upd as f64 / updated as f64,
        100.0 * hot as f64 / upd.max(1) as f64
    );

    // Lineage: one edge per column, column -> column of the "next" table, via a process per
    // table pair. Classifications: 5% of columns tagged PII directly, each propagated once.
    client
        .batch_execute(&format!(
            "INSERT INTO meta.lineage_edges (tenant_id, upstream_guid, downstream_guid, process_guid)
             SELECT 'acme-prod', meta.asset_guid('acme-prod', t.qn || '/' || c),
                    meta.asset_guid('acme-prod', n.qn || '/' || c),
                    meta.asset_guid('acme-prod', 'process/' || t.i || '->' || n.i)
             FROM t JOIN t n ON n.i = t.i % {tables} + 1
             CROSS JOIN unnest(array['ORDER_ID','CUSTOMER_ID','ORDER_TS','AMOUNT_USD','STATUS','REGION_CODE','SKU','QUANTITY','DISCOUNT_PCT']) c;
             INSERT INTO meta.classifications (tenant_id, asset_guid, tag, source, origin_guid)
             SELECT 'acme-prod', meta.asset_guid('acme-prod', t.qn || '/CUSTOMER_ID'), 'PII', 'direct',
                    meta.asset_guid('acme-prod', t.qn || '/CUSTOMER_ID')
             FROM t WHERE t.i % 2 = 0;
             INSERT INTO meta.classifications (tenant_id, asset_guid, tag, source, origin_guid)
             SELECT 'acme-prod', meta.asset_guid('acme-prod', n.qn || '/CUSTOMER_ID'), 'PII', 'propagated',
                    meta.asset_guid('acme-prod', t.qn || '/CUSTOMER_ID')
             FROM t JOIN t n ON n.i = t.i % {tables} + 1 WHERE t.i % 2 = 0;"
        ))
        .await
        .unwrap();
    client
        .batch_execute("VACUUM (ANALYZE) meta.lineage_edges, meta.classifications")
        .await
        .unwrap();
    for table in ["meta.lineage_edges", "meta.classifications"] {
        let r = client
            .query_one(
                &format!(
                    "SELECT count(*), pg_relation_size('{table}'), pg_indexes_size('{table}'),
                            pg_total_relation_size('{table}') FROM {table}"
                ),
                &[],
            )
            .await
            .unwrap();
        let (cnt, heap, idx, total): (i64, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        println!(
            "{table}: {cnt} rows, heap {:.1} B/row, indexes {:.1} B/row, total {:.1} B/row",
            heap as f64 / cnt as f64,
            idx as f64 / cnt as f64,
            total as f64 / cnt as f64
        );
        for r in client
            .query(
                "SELECT c.relname::text, pg_relation_size(i.indexrelid)
                 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                 WHERE i.indrelid = $1::text::regclass ORDER BY 1",
                &[&table],
            )
            .await
            .unwrap()
        {
            println!(
                "  index {}: {:.1} B/row",
                r.get::<_, String>(0),
                r.get::<_, i64>(1) as f64 / cnt as f64
            );
        }
    }
    let p = plan(
        &client,
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF)
         SELECT * FROM meta.lineage_upstream(meta.asset_guid('acme-prod',
             'default/snowflake/1700000000/DB_1/SCHEMA_01/FACT_ORDERS_0000001/SKU'), 5)",
    )
    .await;
    println!("{p}");
    let p = plan(
        &client,
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF)
         WITH RECURSIVE walk (node, hops) AS (
             SELECT meta.asset_guid('acme-prod', 'default/snowflake/1700000000/DB_1/SCHEMA_01/FACT_ORDERS_0000001/SKU'), 0
             UNION
             SELECT e.upstream_guid, w.hops + 1 FROM walk w
             JOIN meta.lineage_edges e ON e.downstream_guid = w.node WHERE w.hops < 5)
         SELECT node, min(hops) FROM walk GROUP BY node",
    )
    .await;
    println!("{p}");
    assert!(!p.contains("Seq Scan on lineage_edges"), "{p}");
}

/// The tenant rule of meta.assets is checked per statement (0007): the same refusals as a
/// foreign key, including a tenant deleted while another transaction inserts its assets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_need_their_tenant_and_keep_it() {
    let (pg, client) = migrated("meta").await;
    client
        .batch_execute(
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ('t1', 'one'), ('t2', 'two'), ('t3', 'three');
             INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name)
             VALUES (meta.asset_guid('t1', 'a'), 't1', 'Table', 'a', 'a')",
        )
        .await
        .unwrap();
    let code = |e: tokio_postgres::Error| e.code().unwrap().code().to_string();
    // Several rows, one of them of an unknown tenant: the whole statement is refused.
    let err = client
        .execute(
            "INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name)
             SELECT meta.asset_guid(t, 'b'), t, 'Table', 'b', 'b' FROM unnest(ARRAY['t1', 'nobody', 't2']) t",
            &[],
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("nobody") || format!("{err:?}").contains("nobody"),
        "{err:?}"
    );
    assert_eq!(code(err), "23503");
    // The same through a partition named directly, by INSERT and by COPY; a known tenant passes.
    let partition: String = client
        .query_one(
            "SELECT tableoid::regclass::text FROM meta.assets WHERE qualified_name = 'a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let remainder: i32 = partition
        .trim_start_matches("meta.assets_p")
        .parse()
        .unwrap();
    // Rows of `tenant` whose guid belongs to that partition, so only the tenant rule can refuse
    // them.
    let insert_into_partition = |tenant: &'static str| {
        let sql = format!(
            "INSERT INTO {partition} (guid, tenant_id, type_name, qualified_name, name)
             SELECT g, $2, 'Table', 'n' || i, 'n' || i
             FROM generate_series(1, 500) i, LATERAL meta.asset_guid($2, 'n' || i) g
             WHERE satisfies_hash_partition('meta.assets'::regclass, 32, $1, g)"
        );
        let client = &client;
        async move { client.execute(&sql, &[&remainder, &tenant]).await }
    };
    let err = insert_into_partition("nobody").await.unwrap_err();
    assert_eq!(code(err), "23503", "insert into {partition}");
    let inserted = insert_into_partition("t2").await.unwrap();
    assert!(inserted > 0, "rows of a known tenant go into {partition}");
    {
        use futures_util::SinkExt;
        let row: String = client
            .query_one(
                "SELECT g::text || E'\tnobody\tTable\tn' || i || E'\tn' || i || E'\n'
                 FROM generate_series(1, 500) i, LATERAL meta.asset_guid('nobody', 'n' || i) g
                 WHERE satisfies_hash_partition('meta.assets'::regclass, 32, $1, g) LIMIT 1",
                &[&remainder],
            )
            .await
            .unwrap()
            .get(0);
        let sink = client
            .copy_in(&format!(
                "COPY {partition} (guid, tenant_id, type_name, qualified_name, name) FROM STDIN"
            ))
            .await
            .unwrap();
        let mut sink = std::pin::pin!(sink);
        sink.send(bytes::Bytes::from(row)).await.unwrap();
        let err = sink.finish().await.unwrap_err();
        assert_eq!(code(err), "23503", "copy into {partition}");
    }
    // A tenant with assets cannot be deleted, renamed or truncated; one without can.
    for sql in [
        "DELETE FROM meta.tenants WHERE tenant_id = 't1'",
        "UPDATE meta.tenants SET tenant_id = 't9' WHERE tenant_id = 't1'",
        "TRUNCATE meta.tenants CASCADE",
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(code(err), "23503", "{sql}");
    }
    client
        .batch_execute("DELETE FROM meta.tenants WHERE tenant_id = 't3'")
        .await
        .unwrap();
    // Above READ COMMITTED the delete could miss concurrent inserts: refused.
    let err = client
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; DELETE FROM meta.tenants WHERE tenant_id = 't2'",
        )
        .await
        .unwrap_err();
    assert_eq!(code(err), "0A000");
    client.batch_execute("ROLLBACK").await.unwrap();
    // An asset cannot move to another tenant.
    let err = client
        .batch_execute("UPDATE meta.assets SET tenant_id = 't2' WHERE qualified_name = 'a'")
        .await
        .unwrap_err();
    assert_eq!(code(err), "23503");

    // A delete racing an insert: the insert holds the tenant row (KEY SHARE) until it commits,
    // the delete waits for it and then sees the new asset.
    let mut inserter = pg.connect("meta").await.unwrap();
    let tx = inserter.transaction().await.unwrap();
    tx.batch_execute(
        "INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name)
         VALUES (meta.asset_guid('t2', 'c'), 't2', 'Table', 'c', 'c')",
    )
    .await
    .unwrap();
    let deleter = pg.connect("meta").await.unwrap();
    let delete = tokio::spawn(async move {
        deleter
            .batch_execute("DELETE FROM meta.tenants WHERE tenant_id = 't2'")
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !delete.is_finished(),
        "the delete waits for the inserting transaction"
    );
    tx.commit().await.unwrap();
    let err = delete.await.unwrap().unwrap_err();
    assert_eq!(code(err), "23503");

    // The other order: the tenant is deleted first; the insert waits, then finds no tenant.
    let deleter = pg.connect("meta").await.unwrap();
    deleter
        .batch_execute("INSERT INTO meta.tenants (tenant_id, name) VALUES ('t4', 'four')")
        .await
        .unwrap();
    deleter
        .batch_execute("BEGIN; DELETE FROM meta.tenants WHERE tenant_id = 't4'")
        .await
        .unwrap();
    let insert = tokio::spawn(async move {
        inserter
            .batch_execute(
                "INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name)
                 VALUES (meta.asset_guid('t4', 'd'), 't4', 'Table', 'd', 'd')",
            )
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    if insert.is_finished() {
        panic!(
            "the insert did not wait for the deleting transaction: {:?}",
            insert.await
        );
    }
    deleter.batch_execute("COMMIT").await.unwrap();
    let err = insert.await.unwrap().unwrap_err();
    assert_eq!(code(err), "23503");
    let orphans: i64 = client
        .query_one(
            "SELECT count(*) FROM meta.assets a WHERE NOT EXISTS (SELECT 1 FROM meta.tenants t WHERE t.tenant_id = a.tenant_id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0);
}
