//! Delivery settings of one sink, as written in a pipeline file.

use std::time::Duration;

use serde::Deserialize;

/// How a sink's records are retried, paced and parallelised.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// Attempts per record before it is dead-lettered (the first try counts).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt, in milliseconds; doubles per attempt, with full jitter.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest computed wait between attempts, in milliseconds. A receiver's `Retry-After`
    /// is honoured even when it is longer, up to `max_retry_after_ms`.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Longest `Retry-After` honoured, in milliseconds; a longer one is cut to this, so a
    /// receiver asking for hours (or a misparsed date) cannot stall its lane and the keys
    /// behind it. Default 600000 (10 minutes).
    #[serde(default = "default_max_retry_after_ms")]
    pub max_retry_after_ms: u64,
    /// Sustained requests per second to this sink (token bucket); absent means unlimited.
    pub rate_per_sec: Option<f64>,
    /// Requests the bucket allows at once after an idle period.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Requests in flight at once. Rows with the same ordering key always share one lane, so
    /// they are delivered one after another in commit order.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Records waiting per lane before the pipeline waits (backpressure).
    #[serde(default = "default_lane_queue")]
    pub lane_queue: usize,
}

fn default_max_attempts() -> u32 {
    8
}
fn default_initial_backoff_ms() -> u64 {
    200
}
fn default_max_backoff_ms() -> u64 {
    60_000
}
fn default_max_retry_after_ms() -> u64 {
    600_000
}
fn default_burst() -> u32 {
    10
}
fn default_concurrency() -> usize {
    4
}
fn default_lane_queue() -> usize {
    1024
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            max_retry_after_ms: default_max_retry_after_ms(),
            rate_per_sec: None,
            burst: default_burst(),
            concurrency: default_concurrency(),
            lane_queue: default_lane_queue(),
        }
    }
}

impl DeliverySettings {
    /// Pure checks.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.initial_backoff_ms == 0 || self.max_backoff_ms < self.initial_backoff_ms {
            return Err(
                "backoff must be positive with max_backoff_ms >= initial_backoff_ms".into(),
            );
        }
        if let Some(r) = self.rate_per_sec {
            if !(r.is_finite() && r > 0.0) {
                return Err("rate_per_sec must be a positive number".into());
            }
        }
        if self.burst == 0 {
            return Err("burst must be at least 1".into());
        }
        if !(1..=256).contains(&self.concurrency) {
            return Err("concurrency must be between 1 and 256".into());
        }
        if self.lane_queue == 0 {
            return Err("lane_queue must be at least 1".into());
        }
        Ok(())
    }

    /// The computed wait before attempt `attempt + 1` (attempt counts from 1): exponential,
    /// capped, with full jitter so a burst of failures does not retry in lockstep.
    /// The wait a receiver's `Retry-After` asks for, cut to `max_retry_after_ms`.
    pub fn retry_after(&self, asked: Duration) -> Duration {
        asked.min(Duration::from_millis(self.max_retry_after_ms))
    }

    pub fn backoff(&self, attempt: u32) -> Duration {
        lily_runtime::Backoff::wait_after(
            Duration::from_millis(self.initial_backoff_ms),
            Duration::from_millis(self.max_backoff_ms),
            attempt,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let s = DeliverySettings {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            ..Default::default()
        };
        // Full jitter: anywhere from 1 ms up to the doubling, capped window.
        let (mut high3, mut high20) = (0, 0);
        for _ in 0..200 {
            let b1 = s.backoff(1).as_micros();
            assert!((1_000..=100_000).contains(&b1), "{b1}");
            let b3 = s.backoff(3).as_micros();
            assert!((1_000..=400_000).contains(&b3), "{b3}");
            high3 += usize::from(b3 > 200_000);
            let b20 = s.backoff(20).as_micros();
            assert!((1_000..=1_000_000).contains(&b20), "{b20}");
            high20 += usize::from(b20 > 500_000);
        }
        // The window really grows: the third attempt's draws reach above the second's ceiling.
        assert!(high3 > 20 && high20 > 20, "{high3} {high20}");
    }

    #[test]
    fn validation() {
        assert!(DeliverySettings::default().validate().is_ok());
        let bad = DeliverySettings {
            max_attempts: 0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("max_attempts"));
        let bad = DeliverySettings {
            rate_per_sec: Some(f64::NAN),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let err = toml::from_str::<DeliverySettings>("max_atempts = 3").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `max_atempts`"),
            "{err}"
        );
    }
}
