//! The capture loop: one session at a time, reconnecting with backoff on retryable errors.

use std::sync::Arc;
use std::time::Duration;

use lily_replication::setup::{self, SlotState};
use lily_replication::{
    Connection, Feedback, Lsn, Mode, ReplicationError, ReplicationStream, StartOptions, WalEvent,
};
use tokio::sync::{mpsc, watch};

use crate::ack::AckTracker;
use crate::assemble::{Assembler, Emit, Limits};
use crate::checkpoint;
use crate::event::{BatchKind, ChangeBatch};
use crate::subscription::{Ack, Delivery, Subscription};
use crate::{CaptureConfig, CaptureError};
use lily_runtime::Shutdown;

/// The capture pipeline. Subscribe consumers, then [`Capture::run`].
pub struct Capture {
    config: CaptureConfig,
    consumers: Vec<(String, mpsc::Sender<Delivery>)>,
    feedback: Arc<Feedback>,
    counters: std::sync::Mutex<std::collections::HashMap<u32, metrics::Counter>>,
    /// True while a replication session streams (for readiness).
    streaming: watch::Sender<bool>,
}

enum SessionEnd {
    Stopped,
}

/// Raised when a consumer drops its subscription (its task ended or failed). Capture must stop
/// then: that consumer will never acknowledge, so nothing past it can be confirmed, and a
/// PostgreSQL shutdown would wait forever on the stale position.
#[derive(Default)]
struct ConsumerWatch {
    gone: std::sync::atomic::AtomicBool,
    name: std::sync::Mutex<Option<String>>,
    notify: tokio::sync::Notify,
}

impl ConsumerWatch {
    fn gone(&self) -> Option<CaptureError> {
        if !self.gone.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let name = self.name.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some(CaptureError::ConsumerGone(name.unwrap_or_default()))
    }
}

impl Capture {
    pub fn new(config: CaptureConfig) -> Result<Self, CaptureError> {
        config.validate().map_err(CaptureError::Config)?;
        Ok(Capture {
            config,
            consumers: Vec::new(),
            feedback: Feedback::new(Lsn::ZERO),
            counters: Default::default(),
            streaming: watch::channel(false).0,
        })
    }

    /// Adds a consumer; every batch goes to every consumer.
    pub fn subscribe(&mut self, name: impl Into<String>) -> Subscription {
        let name = name.into();
        let (tx, rx) = mpsc::channel(self.config.consumer_queue);
        self.consumers.push((name.clone(), tx));
        Subscription { name, rx }
    }

    /// Whether capture is streaming now: true once `START_REPLICATION` succeeded, false while
    /// it connects, reconnects or after it stopped.
    pub fn streaming(&self) -> watch::Receiver<bool> {
        self.streaming.subscribe()
    }

    /// Positions shared with the status sender: what was received and what is confirmed.
    pub fn feedback(&self) -> Arc<Feedback> {
        self.feedback.clone()
    }

    /// Runs until `stop` turns true (or its sender is dropped), or a permanent error.
    pub async fn run(self, stop: Shutdown) -> Result<(), CaptureError> {
        let watch = Arc::new(ConsumerWatch::default());
        let mut watchers = tokio::task::JoinSet::new();
        for (name, tx) in &self.consumers {
            let (name, tx, watch) = (name.clone(), tx.clone(), watch.clone());
            watchers.spawn(async move {
                tx.closed().await;
                *watch.name.lock().unwrap_or_else(|p| p.into_inner()) = Some(name);
                watch.gone.store(true, std::sync::atomic::Ordering::Release);
                watch.notify.notify_one();
            });
        }
        let result = self.run_sessions(&stop, &watch).await;
        watchers.abort_all();
        result
    }

    async fn run_sessions(
        &self,
        stop: &Shutdown,
        watch: &Arc<ConsumerWatch>,
    ) -> Result<(), CaptureError> {
        let tracker = AckTracker::new(self.consumers.len(), self.feedback.clone());
        let mut asm = Assembler::new(Limits {
            max_rows: self.config.batch_max_rows,
            max_bytes: self.config.batch_max_bytes,
            max_latency: self.config.batch_max_latency,
            linger: self.config.batch_linger,
        });
        let mut backoff =
            lily_runtime::Backoff::new(self.config.reconnect_initial, self.config.reconnect_max);
        loop {
            let started = std::time::Instant::now();
            let span = tracing::info_span!("capture", slot = %self.config.source.slot);
            if let Some(e) = watch.gone() {
                return Err(e);
            }
            match tracing::Instrument::instrument(
                self.session(&tracker, &mut asm, stop, watch),
                span,
            )
            .await
            {
                Ok(SessionEnd::Stopped) => return Ok(()),
                Err(error) if error.is_retryable() => {
                    metrics::counter!("lily_replication_reconnects_total").increment(1);
                    // A session that streamed for a while starts the backoff over.
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff.reset();
                    }
                    let wait = backoff.next_wait();
                    tracing::warn!(%error, retry_in = ?wait, "Replication session ended; reconnecting.");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.requested() => return Ok(()),
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "Capture stopped.");
                    return Err(error);
                }
            }
        }
    }

    async fn session(
        &self,
        tracker: &Arc<AckTracker>,
        asm: &mut Assembler,
        stop: &Shutdown,
        watch: &ConsumerWatch,
    ) -> Result<SessionEnd, CaptureError> {
        let cfg = &self.config;
        let spec = &cfg.source;
        let mut admin = Connection::connect(&cfg.connection, Mode::Normal).await?;
        let info = setup::preflight(&mut admin, spec).await?;
        setup::ensure_publication(&mut admin, spec).await?;
        let stored = checkpoint::load(&mut admin, &spec.slot).await?;
        match setup::inspect_slot(&mut admin, &spec.slot).await? {
            SlotState::Missing => {
                if let Some(lsn) = stored {
                    return Err(ReplicationError::SlotLost {
                        slot: spec.slot.clone(),
                        confirmed: lsn.to_string(),
                        reason: "the slot no longer exists (it was dropped, or the server was restored or failed over)"
                            .into(),
                    }
                    .into());
                }
                let lsn = setup::create_slot(&mut admin, &spec.slot).await?;
                checkpoint::save(&mut admin, &spec.slot, lsn).await?;
                self.feedback.confirm(lsn);
                tracing::info!(slot = %spec.slot, %lsn, "Created replication slot.");
            }
            SlotState::Ready {
                confirmed_flush, ..
            } => {
                self.feedback.confirm(confirmed_flush);
                tracing::info!(slot = %spec.slot, %confirmed_flush, "Resuming from replication slot.");
            }
        }

        let status_interval = cfg.status_interval.unwrap_or_else(|| {
            if info.wal_sender_timeout.is_zero() {
                Duration::from_secs(10)
            } else {
                (info.wal_sender_timeout / 3)
                    .clamp(Duration::from_millis(100), Duration::from_secs(10))
            }
        });
        let conn = Connection::connect(&cfg.connection, Mode::Replication).await?;
        let start = self.feedback.confirmed();
        let mut stream = ReplicationStream::start(
            conn,
            &StartOptions {
                slot: spec.slot.clone(),
                publications: vec![spec.publication.clone()],
                start,
                status_interval,
            },
            self.feedback.clone(),
        )
        .await?;
        tracing::info!(slot = %spec.slot, %start, ?status_interval, "Streaming.");
        self.streaming.send_replace(true);
        asm.reset();

        let saver = tokio::spawn(save_checkpoints(
            admin,
            cfg.connection.clone(),
            spec.slot.clone(),
            tracker.clone(),
            cfg.checkpoint_interval,
        ));
        let result = self
            .stream_loop(&mut stream, tracker, asm, stop, watch)
            .await;
        self.streaming.send_replace(false);
        saver.abort();
        match result {
            Ok(()) => {
                self.drain(tracker).await;
                stream.shutdown().await;
                if let Ok(mut admin) = Connection::connect(&cfg.connection, Mode::Normal).await {
                    let lsn = tracker.data_confirmed();
                    if lsn > Lsn::ZERO {
                        if let Err(error) = checkpoint::save(&mut admin, &spec.slot, lsn).await {
                            tracing::warn!(%error, "Could not record the final checkpoint.");
                        }
                    }
                    admin.close().await;
                }
                tracing::info!(confirmed = %self.feedback.confirmed(), "Capture stopped cleanly.");
                Ok(SessionEnd::Stopped)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads frames until stopped or an error. `Ok` means a requested stop.
    async fn stream_loop(
        &self,
        stream: &mut ReplicationStream,
        tracker: &Arc<AckTracker>,
        asm: &mut Assembler,
        stop: &Shutdown,
        watch: &ConsumerWatch,
    ) -> Result<(), CaptureError> {
        let mut out: Vec<Emit> = Vec::new();
        let mut frames: u64 = 0;
        let mut server_end = Lsn::ZERO;
        // One timer for the batch deadline, re-armed only when the deadline changes.
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut armed: Option<tokio::time::Instant> = None;
        loop {
            let deadline = asm.deadline();
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                asm.on_deadline(&mut out);
                if !self.emit(&mut out, tracker, asm, stop).await? {
                    return Ok(());
                }
                continue;
            }
            let event = if stream.has_buffered_frame() {
                // Hot path: the next frame is already in memory, so reading it cannot wait.
                // Skip the select (and its timer and stop-signal registrations) per frame.
                if frames.is_multiple_of(1024) {
                    if stop.is_requested() {
                        return Ok(());
                    }
                    if let Some(e) = watch.gone() {
                        return Err(e);
                    }
                }
                stream.next().await?
            } else {
                let deadline = deadline.map(tokio::time::Instant::from_std);
                if deadline != armed {
                    if let Some(d) = deadline {
                        sleep.as_mut().reset(d);
                    }
                    armed = deadline;
                }
                tokio::select! {
                    biased;
                    _ = stop.requested() => return Ok(()),
                    _ = watch.notify.notified() => {
                        return Err(watch.gone().unwrap_or_else(|| CaptureError::ConsumerGone(String::new())));
                    }
                    _ = &mut sleep, if armed.is_some() => {
                        armed = None;
                        asm.on_deadline(&mut out);
                        if !self.emit(&mut out, tracker, asm, stop).await? {
                            return Ok(());
                        }
                        continue;
                    }
                    event = stream.next() => event?,
                }
            };
            match event {
                WalEvent::Data {
                    wal_start,
                    wal_end,
                    payload,
                } => {
                    frames += 1;
                    server_end = server_end.max(wal_end);
                    let msg = lily_pgoutput::decode(payload).map_err(ReplicationError::from)?;
                    asm.on_message(wal_start, msg, &mut out)?;
                    asm.maybe_close(stream.has_buffered_frame(), &mut out);
                    if (!out.is_empty() || asm.has_bare() || frames.is_multiple_of(4096))
                        && !self.emit(&mut out, tracker, asm, stop).await?
                    {
                        return Ok(());
                    }
                    if frames.is_multiple_of(4096) {
                        metrics::counter!("lily_replication_messages_total").increment(4096);
                    }
                }
                WalEvent::Keepalive { wal_end, .. } => {
                    server_end = server_end.max(wal_end);
                    // The server has nothing more to send right now: close any finished group.
                    asm.maybe_close(false, &mut out);
                    if (!out.is_empty() || asm.has_bare())
                        && !self.emit(&mut out, tracker, asm, stop).await?
                    {
                        return Ok(());
                    }
                    // Nothing in flight and nothing half-read: everything before the server's
                    // WAL end is handled, so an idle or filtered database still advances.
                    if !asm.in_transaction() && !asm.has_pending() {
                        tracker.checkpoint_idle(wal_end);
                    }
                    let confirmed = self.feedback.confirmed();
                    metrics::gauge!("lily_replication_lag_bytes")
                        .set(server_end.0.saturating_sub(confirmed.0) as f64);
                    if tracker.all_acked() && !asm.has_pending() {
                        metrics::gauge!("lily_replication_lag_seconds").set(0.0);
                    }
                }
            }
            if !stream.sender_alive() {
                return Err(ReplicationError::Io(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "standby status sender stopped",
                ))
                .into());
            }
        }
    }

    /// Numbers and fans out pending batches; waits on full queues (backpressure). Returns
    /// `false` if a stop was requested while waiting.
    async fn emit(
        &self,
        out: &mut Vec<Emit>,
        tracker: &Arc<AckTracker>,
        asm: &mut Assembler,
        stop: &Shutdown,
    ) -> Result<bool, CaptureError> {
        for e in out.drain(..) {
            let seq = tracker.next_seq();
            if let BatchKind::Rows { table, records } = &e.kind {
                self.changes_counter(table)
                    .increment(records.num_rows() as u64);
            }
            let batch = Arc::new(ChangeBatch {
                seq,
                kind: e.kind,
                commit_lsn: e.commit_lsn,
                commit_ts: e.commit_ts,
                checkpoint: e.checkpoint,
            });
            for (i, (name, tx)) in self.consumers.iter().enumerate() {
                let delivery = Delivery {
                    batch: batch.clone(),
                    ack: Ack {
                        consumer: i,
                        seq,
                        tracker: tracker.clone(),
                    },
                };
                tokio::select! {
                    biased;
                    sent = tx.send(delivery) => {
                        if sent.is_err() {
                            return Err(CaptureError::ConsumerGone(name.clone()));
                        }
                    }
                    _ = stop.requested() => return Ok(false),
                }
            }
            if let Some(lsn) = e.checkpoint {
                tracker.checkpoint(seq, lsn, e.commit_ts);
            }
        }
        if let Some(bare) = asm.take_bare() {
            tracker.checkpoint(tracker.last_seq(), bare.lsn, bare.commit_ts);
        }
        metrics::gauge!("lily_consumer_outstanding_batches").set(tracker.outstanding() as f64);
        Ok(true)
    }

    /// The per-table change counter, looked up once per table rather than once per batch.
    fn changes_counter(&self, table: &lily_batch::TableSchema) -> metrics::Counter {
        let mut cache = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(table.relation_id)
            .or_insert_with(
                || metrics::counter!("lily_changes_total", "table" => table.qualified_name()),
            )
            .clone()
    }

    /// Gives consumers a bounded time to acknowledge what they hold before the final status.
    async fn drain(&self, tracker: &Arc<AckTracker>) {
        let deadline = tokio::time::Instant::now() + self.config.drain_timeout;
        while !tracker.all_acked() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !tracker.all_acked() {
            tracing::warn!(
                outstanding = tracker.outstanding(),
                "Consumers did not acknowledge everything before shutdown; those batches will be delivered again."
            );
        }
    }
}

/// Writes the acknowledged position to `lily.checkpoints` now and then. Failures are logged and
/// retried: the slot itself holds the position, this record only guards against a lost slot.
async fn save_checkpoints(
    conn: Connection,
    config: lily_replication::ConnectionConfig,
    slot: String,
    tracker: Arc<AckTracker>,
    every: Duration,
) {
    let mut conn = Some(conn);
    let mut saved = Lsn::ZERO;
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        let lsn = tracker.data_confirmed();
        if lsn <= saved {
            continue;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Connection::connect(&config, Mode::Normal).await {
                Ok(c) => conn.insert(c),
                Err(error) => {
                    tracing::warn!(%error, "Could not reconnect to record checkpoints; will retry.");
                    continue;
                }
            },
        };
        match checkpoint::save(c, &slot, lsn).await {
            Ok(()) => saved = lsn,
            Err(error) => {
                tracing::warn!(%error, "Could not record checkpoint; will retry.");
                if error.is_retryable() {
                    conn = None;
                }
            }
        }
    }
}
