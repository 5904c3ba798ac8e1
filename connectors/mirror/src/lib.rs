//! `lily-mirror`: applies captured change batches to another PostgreSQL database.
//!
//! The target has tables with the same `schema.table` names and the same columns as the source.
//! The mirror is a transactional sink with at-least-once delivery:
//!
//! - A database transaction opens with the first batch of a group and commits at the batch that
//!   carries a checkpoint; only then are the group's batches acknowledged, in order. On an error
//!   the transaction rolls back and nothing of it is acknowledged, so capture delivers it again
//!   after a restart.
//! - Applying is idempotent, so a replayed suffix of history converges to the same state: inserts
//!   are upserts on the key, updates that change the key delete the old key, deletes by key miss
//!   harmlessly, and values left out of the stream (unchanged TOAST) are kept from the target.
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
mod error;
mod params;
pub mod render;
mod sql;
mod table;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lily_cdc::{Ack, BatchKind, ChangeBatch, Delivery, Subscription};
use lily_replication::{ConnectionConfig, SslMode};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

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
}

impl Default for MirrorOptions {
    fn default() -> Self {
        MirrorOptions {
            replica_role: true,
            idle_commit: None,
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
    /// Time spent turning batches into statement parameters (folding rows, rendering text).
    pub prepare_time: Duration,
    /// Time spent waiting for the target to run the statements (COMMIT included).
    pub execute_time: Duration,
}

/// A connection to the target database that applies deliveries in order.
pub struct Mirror {
    client: Client,
    connection: tokio::task::JoinHandle<()>,
    options: MirrorOptions,
    plans: HashMap<(String, String), Arc<TablePlan>>,
    statements: HashMap<String, Statement>,
    in_transaction: bool,
    /// Acknowledgements of the batches applied in the open transaction, in delivery order.
    held: Vec<Ack>,
    stats: MirrorStats,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Mirror {
    /// Connects with the default options.
    pub async fn connect(url: &str) -> Result<Mirror, MirrorError> {
        Self::connect_with(url, MirrorOptions::default()).await
    }

    /// Connects to `postgres://user:password@host:port/db` (no TLS yet: `sslmode=disable`).
    pub async fn connect_with(url: &str, options: MirrorOptions) -> Result<Mirror, MirrorError> {
        let cfg = ConnectionConfig::from_url(url).map_err(MirrorError::Config)?;
        if cfg.sslmode != SslMode::Disable {
            return Err(MirrorError::Config(format!(
                "sslmode {:?} is not supported by lily-mirror yet; use sslmode=disable",
                cfg.sslmode
            )));
        }
        let target = format!("{}:{}/{}", cfg.host, cfg.port, cfg.dbname);
        let mut pg = tokio_postgres::Config::new();
        pg.host(&cfg.host)
            .port(cfg.port)
            .user(&cfg.user)
            .password(cfg.password.expose())
            .dbname(&cfg.dbname)
            .application_name(if cfg.application_name == "lily" {
                "lily-mirror"
            } else {
                &cfg.application_name
            })
            .connect_timeout(cfg.connect_timeout)
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        let (client, connection) =
            pg.connect(tokio_postgres::NoTls)
                .await
                .map_err(|source| MirrorError::Connect {
                    target: target.clone(),
                    detail: error::describe(&source),
                    source,
                })?;
        let connection = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(error = %error::describe(&error), "Mirror connection to the target ended.");
            }
        });
        client
            .batch_execute(
                "SET datestyle = 'ISO, YMD'; SET timezone = 'UTC'; SET intervalstyle = 'postgres'",
            )
            .await
            .map_err(|e| MirrorError::transaction("setting up the session", e))?;
        if options.replica_role {
            if let Err(e) = client
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
        tracing::info!(%target, "Mirror connected.");
        Ok(Mirror {
            client,
            connection,
            options,
            plans: HashMap::new(),
            statements: HashMap::new(),
            in_transaction: false,
            held: Vec::new(),
            stats: MirrorStats::default(),
        })
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

    /// Applies one delivery; commits and acknowledges the group when the batch carries a
    /// checkpoint. On an error the open transaction is rolled back and none of its batches is
    /// acknowledged.
    pub async fn apply(&mut self, delivery: Delivery) -> Result<(), MirrorError> {
        let Delivery { batch, ack } = delivery;
        if let Err(e) = self.apply_batch(&batch).await {
            self.rollback().await;
            return Err(e);
        }
        self.held.push(ack);
        self.stats.batches += 1;
        if batch.checkpoint.is_some() {
            self.commit().await?;
        }
        Ok(())
    }

    /// Commits the open transaction (if any) and acknowledges every batch it holds, in order.
    pub async fn commit(&mut self) -> Result<(), MirrorError> {
        if self.in_transaction {
            self.in_transaction = false;
            let started = std::time::Instant::now();
            if let Err(e) = self.client.batch_execute("COMMIT").await {
                self.held.clear();
                return Err(MirrorError::transaction("COMMIT", e));
            }
            self.stats.execute_time += started.elapsed();
            self.stats.commits += 1;
            metrics::counter!("lily_mirror_commits_total").increment(1);
        }
        for ack in self.held.drain(..) {
            ack.ack();
        }
        Ok(())
    }

    /// Rolls back the open transaction; its batches stay unacknowledged.
    pub async fn rollback(&mut self) {
        self.held.clear();
        if self.in_transaction {
            self.in_transaction = false;
            if let Err(e) = self.client.batch_execute("ROLLBACK").await {
                tracing::debug!(error = %error::describe(&e), "ROLLBACK failed (the connection is probably gone).");
            }
        }
    }

    async fn begin(&mut self) -> Result<(), MirrorError> {
        if !self.in_transaction {
            self.client
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
                    self.client
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
                self.client
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
        let plan = Arc::new(TablePlan::load(&self.client, schema.clone()).await?);
        tracing::debug!(table = %plan.display, identity = ?plan.identity, "Target table planned.");
        self.plans.insert(key, plan.clone());
        Ok(plan)
    }

    async fn statement(&mut self, table: &str, sql: String) -> Result<Statement, MirrorError> {
        if let Some(s) = self.statements.get(&sql) {
            return Ok(s.clone());
        }
        let stmt = self
            .client
            .prepare(&sql)
            .await
            .map_err(|e| MirrorError::apply(table, "preparing a statement", e))?;
        self.statements.insert(sql, stmt.clone());
        Ok(stmt)
    }
}

/// Applies every delivery of `sub` to the database at `target_url` until the subscription ends
/// (capture stopped); returns the first error, with the open transaction rolled back.
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
    loop {
        let next = match idle {
            Some(wait) if mirror.in_transaction() => {
                match tokio::time::timeout(wait, sub.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        mirror.commit().await?;
                        continue;
                    }
                }
            }
            _ => sub.recv().await,
        };
        match next {
            Some(delivery) => mirror.apply(delivery).await?,
            None => {
                // Capture stopped: what is not committed will be delivered again.
                mirror.rollback().await;
                tracing::info!(stats = ?mirror.stats(), "Mirror stopped: the subscription ended.");
                return Ok(());
            }
        }
    }
}
