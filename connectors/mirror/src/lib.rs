//! `lily-mirror`: applies captured change batches to another PostgreSQL database.
//!
//! The target has tables with the same `schema.table` names and the same columns as the source.
//! The mirror is a transactional sink with at-least-once delivery:
//!
//! - A database transaction opens with the first batch of a group and commits at the batch that
//!   carries a checkpoint; only then are the group's batches acknowledged, in order. Until then
//!   the mirror holds the group's deliveries (capture does not send a batch twice in one
//!   process).
//! - On a retryable error (the target restarted, the connection dropped, a deadlock or
//!   serialization failure; see [`MirrorError::is_retryable`]) [`run`] rolls back, drops the
//!   connection, reconnects with exponential backoff and applies every held batch again, in
//!   order, in a new transaction, then goes on. A COMMIT that fails on a lost connection has an
//!   unknown outcome; the held batches are applied again and committed again all the same (see
//!   the next point), and acknowledged only then. It keeps retrying for as long as the
//!   subscription is open, except against a target that stays in shutdown while batches are
//!   held (see [`MirrorOptions::shutdown_wait`]). On a permanent error the transaction rolls
//!   back, nothing of it is acknowledged (capture delivers it again after a restart) and [`run`]
//!   returns the error.
//! - Applying is idempotent, so a replayed suffix of history converges to the same state: inserts
//!   are upserts on the key, updates that change the key delete the old key, deletes by key miss
//!   harmlessly, and values left out of the stream (unchanged TOAST) are kept from the target.
//!   (Tables without a key in the target are the exception: a replayed insert adds the row
//!   again.)
//! - Applying is set-based: a batch of thousands of rows is a handful of statements over
//!   `unnest($n::text[])` parameters, prepared once per shape (the `apply` module says how rows
//!   fold into statements).
//!
//! ```no_run
//! # async fn demo(sub: lily_cdc::Subscription) -> Result<(), lily_mirror::MirrorError> {
//! lily_mirror::run("postgres://lily:secret@replica:5432/app", sub).await
//! # }
//! ```

mod apply;
mod connector;
mod error;
mod params;
pub mod render;
mod sql;
mod table;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use lily_cdc::{BatchKind, ChangeBatch, Delivery, Subscription};
use lily_pg::ConnectionConfig;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

pub use connector::{MirrorConfig, MirrorConsumer};
pub use error::MirrorError;
pub use sql::{quote_ident, quote_qualified};

use table::TablePlan;

/// Tunables of a [`Mirror`].
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// Run the target session with `session_replication_role = replica`, as PostgreSQL's own
    /// logical replication does: ordinary triggers and foreign-key checks do not fire (batches of
    /// different tables of one transaction arrive table by table). Needs a superuser; without
    /// the privilege the mirror logs a warning and goes on without it.
    pub replica_role: bool,
    /// Commit an open transaction and acknowledge what it holds when no batch has arrived for
    /// this long. Capture ends every group that sent batches with a batch carrying its
    /// checkpoint (a `Commit` marker when no row batch is left to carry it), so this is off by
    /// default; it bounds how long a lock is held if a source transaction stays open for long.
    /// Committing early is safe: batches are durably applied before they are acknowledged, and
    /// applying is idempotent. `None` waits for a checkpoint, always.
    pub idle_commit: Option<Duration>,
    /// The first wait before reconnecting after a retryable error; it doubles on every failed
    /// attempt up to `reconnect_max`, plus up to a quarter of it of random jitter.
    pub reconnect_initial: Duration,
    /// The longest wait between two reconnection attempts.
    pub reconnect_max: Duration,
    /// Give up (end [`run`] with the error) once the target has answered "the database system
    /// is shutting down" for this long while the mirror holds batches it could not commit.
    /// When the target is the source's server, PostgreSQL's shutdown waits for capture to
    /// confirm everything it sent, which it cannot while a consumer holds unapplied batches:
    /// retrying forever would keep the server from ever finishing its shutdown. Giving up ends
    /// the consumer (and the engine), which releases the server. `None` retries for as long as
    /// the subscription is open.
    pub shutdown_wait: Option<Duration>,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        MirrorOptions {
            replica_role: true,
            idle_commit: None,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            shutdown_wait: Some(Duration::from_secs(20)),
        }
    }
}

/// Counters of what a [`Mirror`] has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorStats {
    pub batches: u64,
    pub rows: u64,
    pub statements: u64,
    pub commits: u64,
    pub truncates: u64,
    /// New connections to the target after a retryable error.
    pub reconnects: u64,
    /// Batches applied again after a reconnection (also counted in `batches` and `rows`).
    pub reapplied: u64,
    /// Time spent turning batches into statement parameters (folding rows, rendering text).
    pub prepare_time: Duration,
    /// Time spent waiting for the target to run the statements (COMMIT included).
    pub execute_time: Duration,
}

/// How long a best-effort ROLLBACK on a connection about to be dropped may take.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(2);

/// How many deliveries [`run`] takes from the subscription, without applying them, while it
/// waits to reconnect. Taking them lets it notice that the subscription ended (capture stopped)
/// and stop retrying; the bound keeps a long outage from buffering the stream in memory (capture
/// waits for the consumer instead, and PostgreSQL keeps the WAL).
const MAX_LOOKAHEAD: usize = 64;

/// One connection to the target: the client and the task driving its socket.
struct Session {
    client: Client,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// A connection to the target database that applies deliveries in order.
pub struct Mirror {
    /// The target's connection settings and TLS connector (from `lily_pg`).
    pg: (
        tokio_postgres::Config,
        tokio_postgres_rustls::MakeRustlsConnect,
    ),
    /// `host:port/db`, for messages.
    target: String,
    session: Session,
    options: MirrorOptions,
    /// Keyed to the target's catalog as read on the current connection.
    plans: HashMap<(String, String), Arc<TablePlan>>,
    /// Prepared on the current connection; useless on another.
    statements: HashMap<String, Statement>,
    in_transaction: bool,
    /// The deliveries applied in the open transaction (or, after a retryable error, to be
    /// applied again), in delivery order. Acknowledged once their transaction commits.
    held: Vec<Delivery>,
    stats: MirrorStats,
}

impl Mirror {
    /// Connects with the default options.
    pub async fn connect(url: &str) -> Result<Mirror, MirrorError> {
        Self::connect_with(url, MirrorOptions::default()).await
    }

    /// Connects to a target given as libpq does (a `postgres://` URL or `key=value` pairs), with
    /// TLS as its `sslmode` says.
    pub async fn connect_with(url: &str, options: MirrorOptions) -> Result<Mirror, MirrorError> {
        let cfg = ConnectionConfig::parse(url).map_err(MirrorError::Config)?;
        let target = cfg.target();
        let (pg, tls) = lily_pg::tokio_parts(&cfg, lily_pg::Role::Mirror)
            .map_err(|e| MirrorError::Config(e.to_string()))?;
        let pg = (pg, tls);
        let session = open_session(&pg, &target, &options).await?;
        tracing::info!(%target, "Mirror connected.");
        Ok(Mirror {
            pg,
            target,
            session,
            options,
            plans: HashMap::new(),
            statements: HashMap::new(),
            in_transaction: false,
            held: Vec::new(),
            stats: MirrorStats::default(),
        })
    }

    /// Where this mirror writes: `host:port/db`, never the password.
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn options(&self) -> &MirrorOptions {
        &self.options
    }

    pub fn stats(&self) -> MirrorStats {
        self.stats
    }

    /// Whether a transaction is open (batches applied but not yet committed and acknowledged).
    pub fn in_transaction(&self) -> bool {
        self.in_transaction || !self.held.is_empty()
    }

    /// How many deliveries the mirror holds unacknowledged (applied in the open transaction, or
    /// waiting to be applied again after a retryable error).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Applies one delivery; commits and acknowledges the group when the batch carries a
    /// checkpoint.
    ///
    /// On a permanent error the open transaction is rolled back and none of its batches is
    /// acknowledged. On a retryable one ([`MirrorError::is_retryable`]) the mirror keeps holding
    /// the deliveries of the failed transaction, this one included: [`Mirror::reconnect`] applies
    /// them again on a new connection (dropping the mirror leaves them unacknowledged).
    pub async fn apply(&mut self, delivery: Delivery) -> Result<(), MirrorError> {
        let batch = delivery.batch.clone();
        self.held.push(delivery);
        if let Err(e) = self.apply_batch(&batch).await {
            return Err(self.failed(e).await);
        }
        self.stats.batches += 1;
        if batch.checkpoint.is_some() {
            self.commit().await?;
        }
        Ok(())
    }

    /// Commits the open transaction (if any) and acknowledges every batch it holds, in order.
    ///
    /// A COMMIT that fails on a retryable error (a lost connection: it may or may not have
    /// committed) keeps the batches held, for [`Mirror::reconnect`] to apply and commit again.
    pub async fn commit(&mut self) -> Result<(), MirrorError> {
        if self.in_transaction {
            self.in_transaction = false;
            let started = std::time::Instant::now();
            if let Err(e) = self.session.client.batch_execute("COMMIT").await {
                return Err(self.failed(MirrorError::transaction("COMMIT", e)).await);
            }
            self.stats.execute_time += started.elapsed();
            self.stats.commits += 1;
            metrics::counter!("lily_mirror_commits_total").increment(1);
        }
        for delivery in self.held.drain(..) {
            delivery.ack();
        }
        Ok(())
    }

    /// Rolls back the open transaction; its batches stay unacknowledged (and are dropped).
    pub async fn rollback(&mut self) {
        self.held.clear();
        self.rollback_transaction().await;
    }

    /// After a retryable error: drops the connection, connects again and applies every held
    /// delivery again, in order, in a new transaction; commits and acknowledges them if the last
    /// one carries a checkpoint (its COMMIT is what failed, or had not been reached). One
    /// attempt: on an error the deliveries stay held (for another attempt if it is retryable).
    pub async fn reconnect(&mut self) -> Result<(), MirrorError> {
        self.drop_session().await;
        let session = open_session(&self.pg, &self.target, &self.options).await?;
        self.session = session;
        self.stats.reconnects += 1;
        metrics::counter!("lily_mirror_reconnects_total").increment(1);
        tracing::info!(target = %self.target, held = self.held.len(), "Mirror reconnected; applying the held batches again.");
        let batches: Vec<Arc<ChangeBatch>> = self.held.iter().map(|d| d.batch.clone()).collect();
        for batch in &batches {
            if let Err(e) = self.apply_batch(batch).await {
                return Err(self.failed(e).await);
            }
            self.stats.batches += 1;
            self.stats.reapplied += 1;
        }
        if batches.last().is_some_and(|b| b.checkpoint.is_some()) {
            self.commit().await?;
        }
        Ok(())
    }

    /// What to do with the transaction after `error`: a permanent error rolls it back and drops
    /// its deliveries; a retryable one keeps them for [`Mirror::reconnect`].
    async fn failed(&mut self, error: MirrorError) -> MirrorError {
        // After a retryable error the connection is dropped (and the transaction with it) before
        // reconnecting.
        if !error.is_retryable() {
            self.rollback().await;
        }
        error
    }

    /// Rolls back the open transaction, if any, on a best-effort basis.
    async fn rollback_transaction(&mut self) {
        if self.in_transaction {
            self.in_transaction = false;
            if self.session.client.is_closed() {
                return;
            }
            match tokio::time::timeout(
                ROLLBACK_TIMEOUT,
                self.session.client.batch_execute("ROLLBACK"),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %error::describe(&e), "ROLLBACK failed (the connection is probably gone).")
                }
                Err(_) => tracing::debug!("ROLLBACK timed out; dropping the connection."),
            }
        }
    }

    /// Rolls back what can be, closes the connection and forgets everything tied to it. The
    /// held deliveries stay.
    async fn drop_session(&mut self) {
        self.rollback_transaction().await;
        self.session.connection.abort();
        self.statements.clear();
        self.plans.clear();
    }

    async fn begin(&mut self) -> Result<(), MirrorError> {
        if !self.in_transaction {
            self.session
                .client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| MirrorError::transaction("BEGIN", e))?;
            self.in_transaction = true;
        }
        Ok(())
    }

    async fn apply_batch(&mut self, batch: &ChangeBatch) -> Result<(), MirrorError> {
        match &batch.kind {
            BatchKind::Rows { table, records } => {
                if records.num_rows() == 0 {
                    return Ok(());
                }
                self.begin().await?;
                let plan = self.plan(table).await?;
                let started = std::time::Instant::now();
                let steps = apply::plan_batch(&plan, records)?;
                self.stats.prepare_time += started.elapsed();
                let started = std::time::Instant::now();
                for step in steps {
                    let stmt = self.statement(&plan.display, step.sql).await?;
                    let params: Vec<&(dyn ToSql + Sync)> = step
                        .params
                        .iter()
                        .map(|p| p as &(dyn ToSql + Sync))
                        .collect();
                    self.session
                        .client
                        .execute(&stmt, &params)
                        .await
                        .map_err(|e| MirrorError::apply(&plan.display, step.action, e))?;
                    self.stats.statements += 1;
                    tracing::trace!(table = %plan.display, action = step.action, rows = step.rows, "Applied.");
                }
                self.stats.execute_time += started.elapsed();
                self.stats.rows += records.num_rows() as u64;
                metrics::counter!("lily_mirror_rows_total").increment(records.num_rows() as u64);
            }
            BatchKind::Truncate {
                tables,
                restart_identity,
                ..
            } => {
                if tables.is_empty() {
                    return Ok(());
                }
                self.begin().await?;
                let names: Vec<String> = tables
                    .iter()
                    .map(|t| quote_qualified(&t.namespace, &t.name))
                    .collect();
                // RESTRICT, as PostgreSQL's own apply does: a CASCADE on the source lists every
                // published table it reached; others in the target are not ours to empty.
                let sql = format!(
                    "TRUNCATE {}{}",
                    names.join(", "),
                    if *restart_identity {
                        " RESTART IDENTITY"
                    } else {
                        ""
                    }
                );
                let display: Vec<String> = tables.iter().map(|t| t.qualified_name()).collect();
                self.session
                    .client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| MirrorError::apply(&display.join(", "), "TRUNCATE", e))?;
                self.stats.truncates += 1;
            }
            // Logical decoding messages have no table to land in; they are acknowledged with
            // their group.
            BatchKind::Message { .. } | BatchKind::Commit => {}
        }
        Ok(())
    }

    async fn plan(
        &mut self,
        schema: &Arc<lily_batch::TableSchema>,
    ) -> Result<Arc<TablePlan>, MirrorError> {
        let key = (schema.namespace.clone(), schema.name.clone());
        if let Some(plan) = self.plans.get(&key) {
            if plan.matches(schema) {
                return Ok(plan.clone());
            }
        }
        let plan = Arc::new(TablePlan::load(&self.session.client, schema.clone()).await?);
        tracing::debug!(table = %plan.display, identity = ?plan.identity, "Target table planned.");
        self.plans.insert(key, plan.clone());
        Ok(plan)
    }

    async fn statement(&mut self, table: &str, sql: String) -> Result<Statement, MirrorError> {
        if let Some(s) = self.statements.get(&sql) {
            return Ok(s.clone());
        }
        let stmt = self
            .session
            .client
            .prepare(&sql)
            .await
            .map_err(|e| MirrorError::apply(table, "preparing a statement", e))?;
        self.statements.insert(sql, stmt.clone());
        Ok(stmt)
    }
}

/// Opens a connection and sets the session up.
async fn open_session(
    (pg, tls): &(
        tokio_postgres::Config,
        tokio_postgres_rustls::MakeRustlsConnect,
    ),
    target: &str,
    options: &MirrorOptions,
) -> Result<Session, MirrorError> {
    let (client, connection) =
        pg.connect(tls.clone())
            .await
            .map_err(|source| MirrorError::Connect {
                target: target.to_string(),
                detail: error::describe(&source),
                source,
            })?;
    let connection = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(error = %error::describe(&error), "Mirror connection to the target ended.");
        }
    });
    let session = Session { client, connection };
    session
        .client
        .batch_execute(
            "SET datestyle = 'ISO, YMD'; SET timezone = 'UTC'; SET intervalstyle = 'postgres'",
        )
        .await
        .map_err(|e| MirrorError::transaction("setting up the session", e))?;
    if options.replica_role {
        if let Err(e) = session
            .client
            .batch_execute("SET session_replication_role = replica")
            .await
        {
            if e.code().map(|c| c.code()) == Some("42501") {
                tracing::warn!(
                    "The mirror's role may not set session_replication_role; triggers and foreign keys of the \
                     target tables stay active."
                );
            } else {
                return Err(MirrorError::transaction(
                    "setting session_replication_role",
                    e,
                ));
            }
        }
    }
    Ok(session)
}

/// Applies every delivery of `sub` to the database at `target_url` until the subscription ends
/// (capture stopped).
///
/// A retryable error does not end it: the mirror reconnects with backoff (for as long as the
/// subscription is open, or until [`MirrorOptions::shutdown_wait`] runs out) and applies the
/// batches it holds again. A permanent error ends it,
/// with the open transaction rolled back and its batches unacknowledged. The first connection
/// is not retried: a target that cannot be reached at startup is reported at once.
pub async fn run(target_url: &str, sub: Subscription) -> Result<(), MirrorError> {
    run_with(target_url, sub, MirrorOptions::default()).await
}

/// [`run`] with options.
pub async fn run_with(
    target_url: &str,
    mut sub: Subscription,
    options: MirrorOptions,
) -> Result<(), MirrorError> {
    let mut mirror = Mirror::connect_with(target_url, options).await?;
    let idle = mirror.options.idle_commit;
    // Deliveries taken from the subscription while reconnecting; applied before the next ones.
    let mut lookahead: VecDeque<Delivery> = VecDeque::new();
    loop {
        let next = if let Some(delivery) = lookahead.pop_front() {
            Some(delivery)
        } else {
            match idle {
                Some(wait) if mirror.in_transaction() => {
                    match tokio::time::timeout(wait, sub.recv()).await {
                        Ok(next) => next,
                        Err(_) => {
                            if let Err(e) = mirror.commit().await {
                                if recover(&mut mirror, &mut sub, &mut lookahead, e).await?
                                    == Recovered::SubscriptionEnded
                                {
                                    return Ok(());
                                }
                            }
                            continue;
                        }
                    }
                }
                _ => sub.recv().await,
            }
        };
        match next {
            Some(delivery) => {
                if let Err(e) = mirror.apply(delivery).await {
                    if recover(&mut mirror, &mut sub, &mut lookahead, e).await?
                        == Recovered::SubscriptionEnded
                    {
                        return Ok(());
                    }
                }
            }
            None => {
                // Capture stopped: what is not committed will be delivered again.
                mirror.rollback().await;
                tracing::info!(stats = ?mirror.stats(), "Mirror stopped: the subscription ended.");
                return Ok(());
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Recovered {
    /// Reconnected; every held batch applied again (and committed if its group ended).
    Reconnected,
    /// Capture stopped while the target was away: the held batches stay unacknowledged.
    SubscriptionEnded,
}

/// Handles `error` from `mirror`: a permanent one is returned (the transaction is rolled back
/// already); on a retryable one, reconnects with backoff until the held batches are applied
/// again, or the subscription ends, or a permanent error comes up.
async fn recover(
    mirror: &mut Mirror,
    sub: &mut Subscription,
    lookahead: &mut VecDeque<Delivery>,
    mut error: MirrorError,
) -> Result<Recovered, MirrorError> {
    let mut backoff = lily_runtime::Backoff::new(
        mirror.options.reconnect_initial,
        mirror.options.reconnect_max,
    );
    let mut attempt = 0u32;
    let mut shutting_down_since: Option<std::time::Instant> = None;
    loop {
        if !error.is_retryable() {
            mirror.rollback().await;
            return Err(error);
        }
        if error.is_target_shutting_down() && mirror.held() > 0 {
            let since = *shutting_down_since.get_or_insert_with(std::time::Instant::now);
            if let Some(limit) = mirror.options.shutdown_wait {
                if since.elapsed() >= limit {
                    tracing::error!(
                        %error,
                        held = mirror.held(),
                        waited = ?since.elapsed(),
                        "The target has been shutting down for too long while the mirror holds batches it \
                         could not commit; giving up (if the target is the source's server, its shutdown \
                         waits for them)."
                    );
                    mirror.rollback().await;
                    return Err(error);
                }
            }
        } else {
            shutting_down_since = None;
        }
        attempt += 1;
        let wait = backoff.next_wait();
        tracing::warn!(
            %error,
            attempt,
            retry_in = ?wait,
            held = mirror.held(),
            "The mirror hit a retryable error on the target; reconnecting and applying its held batches again."
        );
        // Close the broken connection now rather than after the wait (it may hold locks).
        mirror.drop_session().await;
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                next = sub.recv(), if lookahead.len() < MAX_LOOKAHEAD => match next {
                    Some(delivery) => lookahead.push_back(delivery),
                    None => {
                        mirror.rollback().await;
                        tracing::info!(
                            stats = ?mirror.stats(),
                            "Mirror stopped: the subscription ended while it was reconnecting; its held \
                             batches are not acknowledged."
                        );
                        return Ok(Recovered::SubscriptionEnded);
                    }
                },
            }
        }
        match mirror.reconnect().await {
            Ok(()) => {
                tracing::info!(attempt, "Mirror recovered: held batches applied again.");
                return Ok(Recovered::Reconnected);
            }
            Err(e) => error = e,
        }
    }
}
