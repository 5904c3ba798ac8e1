//! /metrics (Prometheus text), /healthz (the process is up) and /readyz (capture is streaming,
//! every pipeline runs and, with the ingest API, the metastore answers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use lily_runtime::Shutdown;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the global metrics recorder. Call once, before anything records.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &buckets,
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("lily_batch_rows".into()),
            &[1.0, 10.0, 100.0, 1000.0, 4096.0, 8192.0, 65536.0],
        )?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    ready: Arc<AtomicBool>,
    /// The ingest API, whose metastore must answer for the process to be ready.
    ingest: Option<Arc<lily_ingest::Ingest>>,
}

/// How long `/readyz` waits for the metastore's answer.
const METASTORE_PROBE: std::time::Duration = std::time::Duration::from_secs(1);

/// Binds the HTTP address. A port that cannot be bound is fatal for the engine: without it
/// there are no metrics, probes or ingest API.
pub async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} ([http] listen): {e}"))?;
    tracing::info!(address = %listener.local_addr()?, "HTTP endpoint listening.");
    Ok(listener)
}

/// Serves until `stop` turns true (or its sender is dropped), then lets requests in flight
/// finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    ready: Arc<AtomicBool>,
    ingest: Option<(Router, Arc<lily_ingest::Ingest>)>,
    stop: Shutdown,
) -> anyhow::Result<()> {
    let (routes, api) = ingest.unzip();
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            metrics,
            ready,
            ingest: api,
        });
    let app = match routes {
        Some(routes) => app.merge(routes),
        None => app,
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.requested().await;
        })
        .await?;
    Ok(())
}

async fn render(State(s): State<AppState>) -> String {
    s.metrics.render()
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if !s.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n");
    }
    match &s.ingest {
        Some(api) if !api.metastore_answers(METASTORE_PROBE).await => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the metastore does not answer\n",
        ),
        _ => (StatusCode::OK, "ready\n"),
    }
}
