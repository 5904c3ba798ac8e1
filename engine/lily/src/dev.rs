//! `lily dev`: everything on one machine with nothing set up. Starts a throwaway PostgreSQL,
//! applies the metastore schema, captures the metastore tables with the `log` consumer (JSON
//! lines on stdout) and loads a small example estate so changes show at once.

use std::time::Duration;

use lily_pgharness::PgCluster;
use lily_replication::{ConnectionConfig, SourceSpec};

use crate::config::ConsumerConfig;

const TABLES: [&str; 5] = [
    "meta.tenants",
    "meta.assets",
    "meta.lineage_edges",
    "meta.classifications",
    "meta.incidents",
];

/// A connection, a database, a schema, a table with three columns, a view downstream of it,
/// and a PII tag on one column, all for tenant `demo`.
const EXAMPLE: &str = "
INSERT INTO meta.tenants (tenant_id, name) VALUES ('demo', 'Demo tenant') ON CONFLICT DO NOTHING;
INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name, parent_guid, attributes)
SELECT meta.asset_guid('demo', qn), 'demo', t, qn, n,
       CASE WHEN p IS NULL THEN NULL ELSE meta.asset_guid('demo', p) END, a::jsonb
FROM (VALUES
  ('Connection', 'pg-prod', 'pg-prod', NULL, '{\"connector\": \"postgres\"}'),
  ('Database', 'pg-prod/sales', 'sales', 'pg-prod', '{}'),
  ('Schema', 'pg-prod/sales/public', 'public', 'pg-prod/sales', '{}'),
  ('Table', 'pg-prod/sales/public/customers', 'customers', 'pg-prod/sales/public', '{\"rowCount\": 120000}'),
  ('Column', 'pg-prod/sales/public/customers/id', 'id', 'pg-prod/sales/public/customers', '{\"dataType\": \"bigint\"}'),
  ('Column', 'pg-prod/sales/public/customers/email', 'email', 'pg-prod/sales/public/customers', '{\"dataType\": \"text\"}'),
  ('Column', 'pg-prod/sales/public/customers/country', 'country', 'pg-prod/sales/public/customers', '{\"dataType\": \"text\"}'),
  ('View', 'pg-prod/sales/public/customer_emails', 'customer_emails', 'pg-prod/sales/public', '{}')
) AS v(t, qn, n, p, a)
ON CONFLICT (guid) DO NOTHING;
INSERT INTO meta.lineage_edges (tenant_id, upstream_guid, downstream_guid, process_guid)
VALUES ('demo', meta.asset_guid('demo', 'pg-prod/sales/public/customers'),
        meta.asset_guid('demo', 'pg-prod/sales/public/customer_emails'), '00000000-0000-0000-0000-000000000000')
ON CONFLICT DO NOTHING;
INSERT INTO meta.classifications (tenant_id, asset_guid, origin_guid, tag, source)
VALUES ('demo', meta.asset_guid('demo', 'pg-prod/sales/public/customers/email'),
        meta.asset_guid('demo', 'pg-prod/sales/public/customers/email'), 'PII', 'direct')
ON CONFLICT DO NOTHING;
";

pub async fn run(listen: &str) -> anyhow::Result<()> {
    eprintln!("Starting a throwaway PostgreSQL...");
    let cluster = PgCluster::start().await?;
    cluster.create_database("metastore").await?;
    let url = cluster.url("metastore");
    crate::migrate(&url).await?;

    let mut capture = lily_cdc::CaptureConfig::new(
        ConnectionConfig::from_url(&url).map_err(|e| anyhow::anyhow!(e))?,
        SourceSpec {
            slot: "lily_dev".into(),
            publication: "lily_dev".into(),
            tables: TABLES.iter().map(|t| t.to_string()).collect(),
        },
    );
    capture.batch_max_latency = Duration::from_millis(20);

    eprintln!(
        "\nMetastore ready. Connect with:\n  psql -h {} -p {} -U {} metastore\n\
         Every change to {} is printed below as a JSON line; metrics on http://{listen}/metrics.\n\
         Stop with Ctrl-C (the cluster is removed).\n",
        cluster.socket_dir().display(),
        cluster.port(),
        cluster.superuser(),
        TABLES.join(", "),
    );

    let seed_client = cluster.connect("metastore").await?;
    tokio::spawn(async move {
        // Load the example once the slot streams, so its changes are captured.
        for _ in 0..400 {
            let active = seed_client
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'lily_dev' AND active",
                    &[],
                )
                .await
                .map(|r| r.get::<_, i64>(0) == 1)
                .unwrap_or(false);
            if active {
                if let Err(error) = seed_client.batch_execute(EXAMPLE).await {
                    tracing::error!(%error, "Loading the example estate failed.");
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let consumers = [ConsumerConfig::Log {
        name: "stdout".into(),
    }];
    let result = crate::run_pipeline(capture, &consumers, listen).await;
    drop(cluster);
    result
}
