//! `lily dev`: everything on one machine with nothing set up. Starts a throwaway PostgreSQL,
//! applies the metastore schema, captures the metastore tables with the `log` consumer (JSON
//! lines on stdout), runs the example pipelines of `sql/pipelines` (the PII webhook goes to a
//! local Standard Webhooks receiver that prints what it verifies) and loads a small example
//! estate so changes show at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lily_webhook::fake::{whsec, FakeReceiver};

use lily_pgharness::PgCluster;
use lily_replication::{ConnectionConfig, SourceSpec};

const TABLES: [&str; 5] = [
    "meta.tenants",
    "meta.assets",
    "meta.lineage_edges",
    "meta.classifications",
    "meta.incidents",
];

/// A connection, a database, a schema, a table with three columns, a view downstream of it,
/// a PII tag on one column (→ the PII webhook pipeline) and a propagating tag on the table
/// (→ the propagation pipeline copies it to the view), all for tenant `demo`.
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
INSERT INTO meta.classifications (tenant_id, asset_guid, origin_guid, tag, source, propagate)
VALUES ('demo', meta.asset_guid('demo', 'pg-prod/sales/public/customers'),
        meta.asset_guid('demo', 'pg-prod/sales/public/customers'), 'Confidential', 'direct', true)
ON CONFLICT DO NOTHING;
";

/// The example pipelines: `LILY_PIPELINES`, else `sql/pipelines` under the working directory,
/// else the source tree's.
fn pipelines_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("LILY_PIPELINES") {
        return PathBuf::from(dir);
    }
    let here = PathBuf::from("sql/pipelines");
    if here.is_dir() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql/pipelines")
}

/// A local receiver for the example webhook pipeline, unless the environment names a real one.
/// It verifies each request's signature and prints the event.
async fn dev_webhook_receiver() -> Option<FakeReceiver> {
    if std::env::var("LILY_PII_WEBHOOK_URL").is_ok() {
        return None;
    }
    let key: [u8; 32] = rand::random();
    let receiver = FakeReceiver::start(vec![key.to_vec()]).await;
    // Edition 2021: setting the environment before any other thread reads it.
    std::env::set_var("LILY_PII_WEBHOOK_URL", receiver.url());
    std::env::set_var("LILY_PII_WEBHOOK_SECRET", whsec(&key));
    Some(receiver)
}

/// The ingest API with its defaults (API keys only), and bulk loads over the API spooled in
/// `spool` (inside the throwaway cluster's directory, removed with it).
fn dev_ingest(spool: PathBuf) -> lily_ingest::IngestConfig {
    let mut cfg: lily_ingest::IngestConfig = toml::from_str("").expect("the ingest defaults parse");
    cfg.load_spool_dir = Some(spool);
    cfg
}

pub async fn run(listen: &str) -> anyhow::Result<()> {
    let receiver = dev_webhook_receiver().await.map(std::sync::Arc::new);
    if let Some(r) = &receiver {
        let r = r.clone();
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let all = r.deliveries();
                for d in all.iter().skip(seen) {
                    eprintln!(
                        "webhook received (signature {}): {}",
                        if d.signature_valid {
                            "valid"
                        } else {
                            "INVALID"
                        },
                        String::from_utf8_lossy(&d.body)
                    );
                }
                seen = all.len();
            }
        });
    }
    eprintln!("Starting a throwaway PostgreSQL...");
    let cluster = PgCluster::start().await?;
    cluster.create_database("metastore").await?;
    let url = cluster.url("metastore");
    crate::commands::migrate::migrate(&url).await?;

    let mut capture = lily_cdc::CaptureConfig::new(
        ConnectionConfig::from_url(&url).map_err(|e| anyhow::anyhow!(e))?,
        SourceSpec {
            slot: "lily_dev".into(),
            publication: "lily_dev".into(),
            tables: TABLES.iter().map(|t| t.to_string()).collect(),
            row_filters: Vec::new(),
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
    let listen_for_seed = listen.to_string();
    tokio::spawn(async move {
        // Load the example once the slot streams, so its changes are captured.
        for _ in 0..400 {
            let active = seed_client
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'lily_dev' AND active AND confirmed_flush_lsn IS NOT NULL",
                    &[],
                )
                .await
                .map(|r| r.get::<_, i64>(0) == 1)
                .unwrap_or(false);
            if active {
                if let Err(error) = seed_client.batch_execute(EXAMPLE).await {
                    tracing::error!(%error, "Loading the example estate failed.");
                    return;
                }
                match lily_auth::ApiKeys::new()
                    .create(&seed_client, "demo", "dev", ["admin"])
                    .await
                {
                    Ok((key, _)) => eprintln!(
                        "\nIngest API key for tenant demo (admin), printed once:\n  {key}\n\
                         Try: curl -H 'authorization: Bearer {key}' -H 'content-type: application/json' \
                         -d '{{\"upsert\": [{{\"type_name\": \"Connection\", \"qualified_name\": \"pg\", \"name\": \"pg\"}}]}}' \
                         http://{listen_for_seed}/v1/tenants/demo/assets\n\
                         Bulk load a file: curl -H 'authorization: Bearer {key}' -H 'content-type: application/x-ndjson' \
                         --data-binary @assets.ndjson http://{listen_for_seed}/v1/tenants/demo/loads\n",
                        key = key.expose_secret()
                    ),
                    Err(error) => tracing::error!(%error, "Creating the dev API key failed."),
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // Next to the cluster's data directory, in the directory the cluster removes on drop.
    let spool = cluster
        .data_dir()
        .parent()
        .unwrap_or(cluster.data_dir())
        .join("load-spool");
    let consumers = vec![crate::engine::ConsumerSpec {
        kind: "log".into(),
        name: "stdout".into(),
        settings: toml::Value::Table(Default::default()),
    }];
    let ingest = dev_ingest(spool);
    let result = crate::engine::run(crate::engine::Spec {
        capture,
        consumers,
        pipelines_dir: Some(pipelines_dir()),
        listen,
        http_limits: crate::http::ServerLimits::default(),
        ingest: Some(&ingest),
    })
    .await;
    drop(receiver);
    drop(cluster);
    result
}
