//! /metrics (Prometheus text), /healthz (the process is up) and /readyz (capture is streaming,
//! every pipeline runs and, with the ingest API, the metastore answers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
pub use lily_ingest::server::ServerLimits;
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
/// finish. HTTP/1.1 with keep-alive; each connection is bounded by `limits` (a header read
/// timeout, a place among `max_connections`); request bodies are bounded by the routes
/// themselves (sizes, deadlines, idle timeouts).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    ready: Arc<AtomicBool>,
    ingest: Option<(Router, Arc<lily_ingest::Ingest>)>,
    stop: Shutdown,
    limits: ServerLimits,
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
    lily_ingest::server::serve(listener, app, stop, limits).await?;
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use lily_runtime::ShutdownTrigger;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn start(
        limits: ServerLimits,
    ) -> (
        std::net::SocketAddr,
        ShutdownTrigger,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = PrometheusBuilder::new().build_recorder().handle();
        let (trigger, stop) = ShutdownTrigger::new();
        let ready = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(async move {
            serve(listener, metrics, ready, None, stop, limits)
                .await
                .unwrap();
        });
        (addr, trigger, task)
    }

    /// Reads until the peer closes; the time it took, or `None` past `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at((started + within).into(), s.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn get_healthz(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_or_silent_clients_lose_their_connection_and_their_place() {
        let limits = ServerLimits {
            max_connections: 3,
            header_read_timeout: Duration::from_millis(500),
        };
        let (addr, trigger, task) = start(limits).await;
        // Headers that never end, and connections that say nothing: closed at the timeout.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        let mut silent: Vec<TcpStream> = Vec::new();
        for _ in 0..2 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // Every place is held now: a real client waits in the backlog...
        let waiting = tokio::spawn(get_healthz(addr));
        let took = closed_within(&mut slow, Duration::from_secs(5))
            .await
            .expect("a client sending headers slowly keeps its connection");
        assert!(took >= Duration::from_millis(300), "closed after {took:?}");
        for s in &mut silent {
            assert!(
                closed_within(s, Duration::from_secs(5)).await.is_some(),
                "a silent connection stays open"
            );
        }
        // ...and is served once the places are free.
        let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting client is served")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok\n"), "{answer}");
        // Shutdown ends the server.
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the server stops")
            .unwrap();
    }

    #[tokio::test]
    async fn a_keep_alive_connection_serves_several_requests() {
        let (addr, trigger, task) = start(ServerLimits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        for _ in 0..3 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = vec![0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            let answer = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        trigger.trigger();
        drop(s);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the server stops")
            .unwrap();
    }
}
