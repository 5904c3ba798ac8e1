//! Sharing the database between bulk loads and everything else.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A limit on bulk-lane transactions, shared by every [`crate::Loader`] given a clone of it (the
/// ingest server makes one for all tenants).
///
/// What it guarantees:
/// - at most `max_concurrent` bulk-lane chunks are being written at any moment across all loads
///   sharing it, so bulk loads use at most that many connections' worth of server work;
/// - a load holds a permit for one chunk only (a chunk is bounded in rows, bytes and, through
///   the adaptive row limit, transaction time), then releases it, yields and (optionally) pauses
///   before queueing again. The semaphore is FIFO, so loads of different tenants waiting for a
///   permit take turns chunk by chunk: one tenant's 10M-row file cannot hold the lane while
///   another tenant's load waits;
/// - structural-lane chunks and any other write (the ingest API's near-real-time upserts) never
///   wait on it. A near-real-time write to an asset that a bulk chunk is rewriting waits for that
///   one chunk's row lock, at most one chunk's transaction time.
///
/// It does not limit the structural lane, the file reading, or how fast a single load runs when
/// nothing else wants the permits.
#[derive(Debug, Clone)]
pub struct Throttle {
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    pause: Duration,
}

impl Default for Throttle {
    /// One bulk chunk at a time, no pause.
    fn default() -> Self {
        Throttle::new(1)
    }
}

impl Throttle {
    /// At most `max_concurrent` (at least 1) bulk chunks in flight.
    pub fn new(max_concurrent: usize) -> Self {
        let max_concurrent = max_concurrent.max(1);
        Throttle {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            pause: Duration::ZERO,
        }
    }

    /// Sleep this long after each bulk chunk, leaving the server to other work (off by default).
    pub fn with_pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// Permits free right now (for metrics).
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    pub(crate) async fn acquire(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed.
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the throttle's semaphore is never closed")
    }

    /// Between two bulk chunks of one load.
    pub(crate) async fn between_chunks(&self) {
        tokio::task::yield_now().await;
        if !self.pause.is_zero() {
            tokio::time::sleep(self.pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permits_are_shared_and_bounded() {
        let t = Throttle::new(2);
        let clone = t.clone();
        let a = t.acquire().await;
        let _b = clone.acquire().await;
        assert_eq!(t.available(), 0);
        let waiting = tokio::spawn({
            let t = t.clone();
            async move {
                let _c = t.acquire().await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a third chunk must wait");
        drop(a);
        waiting.await.unwrap();
        assert_eq!(Throttle::new(0).max_concurrent(), 1);
    }
}
