//! Runtime basics every crate shares, written once.
//!
//! - [`Backoff`]: exponential backoff with full jitter, for reconnects and retries.
//! - [`Shutdown`] / [`ShutdownTrigger`]: the one shutdown signal.

use std::time::Duration;

use tokio::sync::watch;

/// Exponential backoff with full jitter: the n-th wait is drawn uniformly from
/// `[floor, min(max, initial * 2^(n-1))]`, `floor` being 1 ms. Full jitter spreads the retries
/// of many clients that failed together (a restarted metastore, a receiver that came back) over
/// the whole window, instead of bunching them at its top as equal jitter does; the cost is that
/// a single wait may be short, which is acceptable because the window keeps doubling.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

/// The shortest wait a backoff draws: a zero wait would turn a tight failure into a busy loop.
const FLOOR: Duration = Duration::from_millis(1);

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.max(FLOOR);
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The window the next wait is drawn from: `min(max, initial * 2^attempts)`.
    pub fn ceiling(&self) -> Duration {
        Self::ceiling_at(self.initial, self.max, self.attempt + 1)
    }

    /// The next wait; each call doubles the window, up to `max`.
    pub fn next_wait(&mut self) -> Duration {
        let wait = Self::draw(self.ceiling());
        self.attempt = self.attempt.saturating_add(1);
        wait
    }

    /// Back to the first window (after a success, or a long healthy stretch).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait before attempt `attempt + 1` (attempts count from 1), without state: for callers
    /// that keep the attempt count themselves.
    pub fn wait_after(initial: Duration, max: Duration, attempt: u32) -> Duration {
        let initial = initial.max(FLOOR);
        Self::draw(Self::ceiling_at(initial, max.max(initial), attempt.max(1)))
    }

    fn ceiling_at(initial: Duration, max: Duration, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        initial.saturating_mul(1u32 << exp).min(max)
    }

    fn draw(ceiling: Duration) -> Duration {
        let top = ceiling.as_micros().min(u64::MAX as u128) as u64;
        let floor = FLOOR.as_micros() as u64;
        Duration::from_micros(rand::random_range(floor.min(top)..=top.max(floor)))
    }
}

/// The receiving side of the shutdown signal: cheap to clone, one per task.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// The sending side: asks every [`Shutdown`] made from it to stop.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl ShutdownTrigger {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Asks every holder of a [`Shutdown`] to stop; idempotent.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Another receiving side.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// A signal that never fires (for tools and tests that run to completion).
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        // Dropping the sender would read as "stop"; keep it alive for the receiver's lifetime.
        std::mem::forget(tx);
        Shutdown(rx)
    }

    /// Whether shutdown was asked for (or its trigger is gone).
    pub fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Waits until shutdown is asked for, or its trigger is dropped.
    pub async fn requested(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The underlying receiver, for APIs that take a `watch::Receiver<bool>`.
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.0.clone()
    }
}

impl From<watch::Receiver<bool>> for Shutdown {
    fn from(rx: watch::Receiver<bool>) -> Self {
        Shutdown(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_spans_the_doubling_window_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let ceilings = [100u64, 200, 400, 800, 1600, 3200, 5000, 5000];
        for ceiling in ceilings {
            assert_eq!(b.ceiling(), Duration::from_millis(ceiling));
            let w = b.next_wait();
            assert!(
                w >= FLOOR && w <= Duration::from_millis(ceiling),
                "{w:?} outside 1 ms..={ceiling} ms"
            );
        }
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        // Full jitter, not equal jitter: over many draws some land in the lower half.
        let lows = (0..200)
            .filter(|_| {
                Backoff::wait_after(Duration::from_millis(100), Duration::from_secs(1), 1)
                    < Duration::from_millis(50)
            })
            .count();
        assert!(lows > 20, "only {lows} of 200 draws in the lower half");
    }

    #[test]
    fn stateless_waits_match_the_attempt() {
        for attempt in 1..=40 {
            let w = Backoff::wait_after(
                Duration::from_millis(10),
                Duration::from_millis(300),
                attempt,
            );
            let ceiling = Duration::from_millis((10u64 << (attempt - 1).min(30)).min(300));
            assert!(w >= FLOOR && w <= ceiling, "attempt {attempt}: {w:?}");
        }
        // Degenerate settings still wait at least the floor.
        assert_eq!(
            Backoff::wait_after(Duration::ZERO, Duration::ZERO, 1),
            FLOOR
        );
    }

    #[tokio::test]
    async fn shutdown_reaches_every_holder() {
        let (trigger, a) = ShutdownTrigger::new();
        let b = trigger.subscribe();
        assert!(!a.is_requested());
        trigger.trigger();
        a.requested().await;
        b.requested().await;
        assert!(b.is_requested());
        let (trigger, c) = ShutdownTrigger::new();
        drop(trigger);
        c.requested().await;
        assert!(c.is_requested());
        assert!(!Shutdown::never().is_requested());
    }
}
