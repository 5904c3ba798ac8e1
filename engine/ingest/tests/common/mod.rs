//! Set-up shared by the ingest API's end-to-end tests.

use lily_pgharness::PgCluster;

/// A throwaway cluster with a migrated `ingest` database holding tenants acme and globex, and
/// an owner connection to it.
pub async fn metastore() -> (PgCluster, tokio_postgres::Client) {
    let cluster = PgCluster::start().await.unwrap();
    cluster.create_database("ingest").await.unwrap();
    let client = cluster.connect("ingest").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ('acme', 'Acme'), ('globex', 'Globex')",
        )
        .await
        .unwrap();
    (cluster, client)
}

/// Serves `app` on a free loopback port; returns its base URL.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}
