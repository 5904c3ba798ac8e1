use std::time::Duration;

use lily_replication::{ConnectionConfig, SourceSpec};

/// Everything the capture pipeline needs; the binary builds it from the config file.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub connection: ConnectionConfig,
    pub source: SourceSpec,
    /// A batch closes at this many rows even inside a transaction.
    pub batch_max_rows: usize,
    /// A batch closes at about this many bytes even inside a transaction.
    pub batch_max_bytes: usize,
    /// A batch with rows waits at most this long for more before it is sent.
    pub batch_max_latency: Duration,
    /// How long a finished group of transactions waits for the next one when nothing is
    /// buffered, so a fast stream of small transactions shares batches. Zero sends at once.
    pub batch_linger: Duration,
    /// Batches each consumer may hold unacknowledged before capture waits (backpressure).
    pub consumer_queue: usize,
    /// Standby status cadence; `None` picks a third of `wal_sender_timeout`, at most 10 s.
    pub status_interval: Option<Duration>,
    /// First and longest wait between reconnect attempts.
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// How often the acknowledged position is written to `lily.checkpoints`.
    pub checkpoint_interval: Duration,
    /// On shutdown, how long to wait for consumers to acknowledge what they hold.
    pub drain_timeout: Duration,
}

impl CaptureConfig {
    pub fn new(connection: ConnectionConfig, source: SourceSpec) -> Self {
        CaptureConfig {
            connection,
            source,
            batch_max_rows: 8192,
            batch_max_bytes: 8 << 20,
            batch_max_latency: Duration::from_millis(50),
            batch_linger: Duration::from_millis(1),
            consumer_queue: 16,
            status_interval: None,
            reconnect_initial: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            checkpoint_interval: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
        }
    }

    /// Pure checks, before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_max_rows == 0 || self.batch_max_bytes == 0 {
            return Err("batch bounds must be positive".into());
        }
        if self.batch_linger > self.batch_max_latency {
            return Err("batch linger must not exceed the batch latency bound".into());
        }
        if self.consumer_queue == 0 {
            return Err("consumer_queue must be at least 1".into());
        }
        if self.reconnect_initial.is_zero() || self.reconnect_max < self.reconnect_initial {
            return Err("reconnect backoff must be positive with max >= initial".into());
        }
        lily_replication::setup::validate_name("slot", &self.source.slot)
            .map_err(|e| e.to_string())?;
        lily_replication::setup::validate_name("publication", &self.source.publication)
            .map_err(|e| e.to_string())?;
        if self.source.tables.is_empty() {
            return Err("the source lists no tables".into());
        }
        for t in &self.source.tables {
            lily_replication::setup::split_table(t).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
