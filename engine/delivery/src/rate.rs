//! A token bucket shared by a sink's lanes.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub(crate) fn new(rate_per_sec: f64, burst: u32) -> Self {
        TokenBucket {
            rate: rate_per_sec,
            burst: burst as f64,
            state: Mutex::new((burst as f64, Instant::now())),
        }
    }

    /// Takes `n` tokens, waiting as long as the bucket needs to refill. Tokens are taken before
    /// the wait (the balance may go negative), so waiters queue fairly and none starves.
    pub(crate) async fn acquire(&self, n: usize) {
        let wait = {
            let mut state = self.state.lock().expect("bucket lock");
            let now = Instant::now();
            let (tokens, last) = *state;
            let refilled =
                (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
            let left = refilled - n as f64;
            *state = (left, now);
            if left >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-left / self.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paces_after_burst() {
        let bucket = TokenBucket::new(100.0, 5);
        let start = std::time::Instant::now();
        for _ in 0..25 {
            bucket.acquire(1).await;
        }
        // 5 at once, then 20 at 100/s: about 200 ms (timers only ever wake late).
        let took = start.elapsed().as_secs_f64();
        assert!((0.19..=1.0).contains(&took), "{took}");
    }
}
