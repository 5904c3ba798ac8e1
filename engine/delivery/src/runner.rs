//! Delivery of one pipeline's records to one sink: lanes, retries, rate limit, dead letters.
//!
//! Records are spread over `concurrency` lanes by their ordering key, so every record with the
//! same key goes through the same lane, one after another, in the order the pipeline submitted
//! them (commit order). Lanes are bounded queues: a slow sink makes `submit` wait, and that
//! backpressure reaches capture through the unacknowledged batches.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::completion::Completion;
use crate::ledger::{Ledger, Outcome};
use crate::rate::TokenBucket;
use crate::settings::DeliverySettings;
use crate::sink::{Record, Sink, SinkError};
use lily_runtime::Shutdown;

struct Job {
    record: Record,
    done: Arc<Completion>,
}

/// Counters of one sink, for status reports and tests.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub delivered: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub skipped: AtomicU64,
    pub attempts: AtomicU64,
    pub retries: AtomicU64,
}

/// The delivery of one pipeline's output to one sink.
pub struct SinkRunner {
    name: String,
    lanes: Vec<mpsc::Sender<Job>>,
    ledger: Arc<Ledger>,
    stats: Arc<SinkStats>,
    next: AtomicU64,
}

impl SinkRunner {
    /// Starts the lanes. They run until the runner is dropped and their queues are drained.
    /// After `shutdown` turns true no record waits for a retry: one in backoff stays
    /// unfinished, so its batch is not acknowledged and is delivered again after the restart.
    pub fn start(
        name: &str,
        sink: Arc<dyn Sink>,
        settings: DeliverySettings,
        ledger: Arc<Ledger>,
        shutdown: Shutdown,
        tasks: &mut JoinSet<()>,
    ) -> SinkRunner {
        let bucket = settings
            .rate_per_sec
            .map(|r| Arc::new(TokenBucket::new(r, settings.burst)));
        let stats = Arc::new(SinkStats::default());
        let mut lanes = Vec::with_capacity(settings.concurrency);
        for lane in 0..settings.concurrency {
            let (tx, rx) = mpsc::channel(settings.lane_queue);
            lanes.push(tx);
            let ctx = LaneCtx {
                sink_name: name.to_string(),
                lane,
                sink: sink.clone(),
                settings: settings.clone(),
                bucket: bucket.clone(),
                ledger: ledger.clone(),
                stats: stats.clone(),
                shutdown: shutdown.clone(),
            };
            tasks.spawn(ctx.run(rx));
        }
        SinkRunner {
            name: name.to_string(),
            lanes,
            ledger,
            stats,
            next: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> &Arc<SinkStats> {
        &self.stats
    }

    /// Queues `record`; `done` is completed once the sink has finished with it. A record the
    /// ledger already holds is completed at once without being sent.
    pub async fn submit(&self, record: Record, done: Arc<Completion>) {
        if self.ledger.is_finished(&self.name, &record.id) {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("lily_delivery_records_total", "pipeline" => self.ledger.pipeline().to_string(), "sink" => self.name.clone(), "outcome" => "skipped").increment(1);
            done.complete_one();
            return;
        }
        let lane = match &record.key {
            Some(k) => {
                let mut h = DefaultHasher::new();
                k.hash(&mut h);
                (h.finish() % self.lanes.len() as u64) as usize
            }
            None => (self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len() as u64) as usize,
        };
        // A closed lane means shutdown: the record stays unfinished and is replayed later.
        let _ = self.lanes[lane].send(Job { record, done }).await;
    }
}

struct LaneCtx {
    sink_name: String,
    lane: usize,
    sink: Arc<dyn Sink>,
    settings: DeliverySettings,
    bucket: Option<Arc<TokenBucket>>,
    ledger: Arc<Ledger>,
    stats: Arc<SinkStats>,
    shutdown: Shutdown,
}

enum Attempted {
    Finished,
    /// Shutdown came while waiting; leave the records unfinished.
    Stopped,
}

impl LaneCtx {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let max_batch = self.sink.max_batch().max(1);
        let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
        loop {
            // Lanes drain their queue even after shutdown is requested (one attempt each, no
            // retry waits), so a graceful stop acknowledges as much as it can.
            match rx.recv().await {
                Some(j) => jobs.push(j),
                None => return,
            }
            while jobs.len() < max_batch {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let batch = std::mem::take(&mut jobs);
            if let Attempted::Stopped = self.deliver(batch).await {
                return;
            }
        }
    }

    /// Delivers `jobs` together; on a permanent failure of a multi-record call, one by one so
    /// only the records that cause it are dead-lettered.
    async fn deliver(&self, jobs: Vec<Job>) -> Attempted {
        match self.attempt(&jobs).await {
            Ok(attempts) => {
                let _ = attempts;
                for j in jobs {
                    self.finished(j, Outcome::Delivered).await;
                }
                Attempted::Finished
            }
            Err(AttemptError::Stopped) => Attempted::Stopped,
            Err(AttemptError::Failed { error, attempts }) => {
                if jobs.len() > 1 && !error.is_retryable() {
                    for j in jobs {
                        if let Attempted::Stopped = Box::pin(self.deliver(vec![j])).await {
                            return Attempted::Stopped;
                        }
                    }
                    return Attempted::Finished;
                }
                for j in jobs {
                    tracing::warn!(
                        pipeline = %self.ledger.pipeline(), sink = %self.sink_name,
                        record = %j.record.id, attempts, error = %error,
                        "dead-lettering a record"
                    );
                    if !self
                        .ledger
                        .dead_letter(
                            &self.sink_name,
                            &j.record,
                            &error.to_string(),
                            attempts,
                            &self.shutdown,
                        )
                        .await
                    {
                        return Attempted::Stopped;
                    }
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("lily_delivery_records_total", "pipeline" => self.ledger.pipeline().to_string(), "sink" => self.sink_name.clone(), "outcome" => "dead_lettered").increment(1);
                    j.done.complete_one();
                }
                Attempted::Finished
            }
        }
    }

    async fn finished(&self, job: Job, outcome: Outcome) {
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("lily_delivery_records_total", "pipeline" => self.ledger.pipeline().to_string(), "sink" => self.sink_name.clone(), "outcome" => "delivered").increment(1);
        let lag_us = now_us().saturating_sub(job.record.commit_ts_us).max(0);
        metrics::histogram!("lily_delivery_commit_to_delivered_seconds", "pipeline" => self.ledger.pipeline().to_string(), "sink" => self.sink_name.clone()).record(lag_us as f64 / 1e6);
        self.ledger
            .finish(&self.sink_name, &job.record, outcome)
            .await;
        job.done.complete_one();
    }

    async fn attempt(&self, jobs: &[Job]) -> Result<u32, AttemptError> {
        let records: Vec<Record> = jobs.iter().map(|j| j.record.clone()).collect();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if let Some(b) = &self.bucket {
                b.acquire(records.len()).await;
            }
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            let result = self.sink.deliver(&records).await;
            match result {
                Ok(()) => return Ok(attempt),
                Err(error) => {
                    let retry_after = match &error {
                        SinkError::Retryable { retry_after, .. } => *retry_after,
                        SinkError::Permanent { .. } => {
                            return Err(AttemptError::Failed {
                                error,
                                attempts: attempt,
                            })
                        }
                    };
                    if attempt >= self.settings.max_attempts {
                        return Err(AttemptError::Failed {
                            error,
                            attempts: attempt,
                        });
                    }
                    let wait = match retry_after {
                        Some(asked) => self.settings.retry_after(asked),
                        None => self.settings.backoff(attempt),
                    };
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        sink = %self.sink_name, lane = self.lane, attempt, ?wait, error = %error,
                        "delivery failed; retrying"
                    );
                    if self.sleep_or_stop(wait).await {
                        return Err(AttemptError::Stopped);
                    }
                }
            }
        }
    }

    /// Sleeps; true when shutdown came first.
    async fn sleep_or_stop(&self, wait: Duration) -> bool {
        let shutdown = self.shutdown.clone();
        if shutdown.is_requested() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = shutdown.requested() => true,
        }
    }
}

enum AttemptError {
    Failed { error: SinkError, attempts: u32 },
    Stopped,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
