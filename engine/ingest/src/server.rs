//! The HTTP server under the API: axum routes on a hyper HTTP/1.1 connection loop with a
//! header read timeout and a connection limit (`axum::serve` has neither), and graceful
//! shutdown. The engine's endpoint and the benchmarks serve through it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use lily_runtime::Shutdown;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// What one HTTP endpoint lets its clients hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once; further ones wait in the listen backlog until one ends.
    pub max_connections: usize,
    /// Time to send a request's headers, and an idle keep-alive connection's time to start
    /// its next request. A client that sends headers slowly, or nothing, costs a socket for
    /// this long at most.
    pub header_read_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 16_384,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `stop`, then lets requests in flight finish. HTTP/1.1 with
/// keep-alive; each connection is bounded by `limits` (a header read timeout, a place among
/// `max_connections`); request bodies are bounded by the routes themselves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: Shutdown,
    limits: ServerLimits,
) -> std::io::Result<()> {
    let max_connections = open_files_for(limits.max_connections);
    let places = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    loop {
        // A place first, so that at the limit new clients wait in the backlog rather than
        // being accepted and dropped.
        let place = tokio::select! {
            place = Arc::clone(&places).acquire_owned() => place.expect("the semaphore is never closed"),
            () = stop.requested() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors or a connection reset before it was accepted:
                    // the listener itself is fine.
                    tracing::warn!(%error, "Could not accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.requested() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let _place = place;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "HTTP connection ended.");
                    }
                }
                () = stop.requested() => {
                    // Finish the request in flight, take no new one.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Raises the soft open-files limit towards the hard one so that `wanted` connections fit
/// (with room for the process's other files), and returns how many do.
fn open_files_for(wanted: usize) -> usize {
    const OTHER_FILES: u64 = 512;
    let need = wanted as u64 + OTHER_FILES;
    let have = match rlimit::increase_nofile_limit(need) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "Could not raise the open-files limit.");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    if have >= need {
        return wanted;
    }
    let fits = have.saturating_sub(OTHER_FILES).max(16) as usize;
    tracing::warn!(
        wanted,
        serving = fits,
        open_files = have,
        "The open-files limit is lower than [http] max_connections needs; serving fewer connections at once."
    );
    fits
}
