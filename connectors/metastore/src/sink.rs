//! The sink: a connection to the metastore database, opened again after it is lost, and one
//! set-based statement per delivery.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use lily_delivery::{Record, Sink, SinkError};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::config::MetastoreSinkConfig;
use crate::error::{classify, BuildError};
use crate::table::Target;
use crate::{rows, sql};

/// Rows per delivery call. Large enough that a backlog moves in few round trips, small enough
/// that one statement's JSON stays a few megabytes and its row locks are held briefly.
const MAX_BATCH: usize = 500;

/// Shown in `pg_stat_activity` unless the connection settings name the application.
/// The connection's role: `application_name` is `lily-metastore-sink`.
const ROLE: lily_pg::Role = lily_pg::Role::Sink("metastore");

/// Writes pipeline output rows into one table of the metastore: upserts, inserts-or-skips or
/// deletes them by key (see [`MetastoreSinkConfig`]).
pub struct MetastoreSink {
    target: Target,
    pg: lily_pg::ConnectionConfig,
    /// The open connection, if any. A std mutex: it is only held to clone or swap the `Arc`,
    /// never across an `.await`; calls share the client (tokio-postgres pipelines their
    /// statements on the one connection).
    client: Mutex<Option<Arc<Client>>>,
    /// How long a delivery's statement may take.
    statement_timeout: Duration,
}

impl std::fmt::Debug for MetastoreSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the connection config: it holds the password.
        f.debug_struct("MetastoreSink")
            .field("table", &self.target.display)
            .field("mode", &self.target.mode)
            .finish_non_exhaustive()
    }
}

impl MetastoreSink {
    /// Connects, reads the target table's columns, types and unique keys from the catalog and
    /// checks the configuration against them: the table exists and is a table, the key columns
    /// are its primary key or one of its unique keys, the named columns exist, the role may
    /// write. Nothing is written.
    pub async fn connect(
        pg: lily_pg::ConnectionConfig,
        cfg: MetastoreSinkConfig,
    ) -> Result<MetastoreSink, BuildError> {
        cfg.validate()?;
        let statement_timeout = Duration::from_millis(cfg.statement_timeout_ms);
        let client = open(&pg, statement_timeout)
            .await
            .map_err(BuildError::Connect)?;
        let target = Target::load(&client, &cfg).await?;
        tracing::info!(
            table = %target.display,
            mode = cfg.mode.as_str(),
            key = %target.key_name,
            "Metastore sink ready."
        );
        Ok(MetastoreSink {
            target,
            pg,
            client: Mutex::new(Some(Arc::new(client))),
            statement_timeout,
        })
    }

    /// Checks that rows with exactly these columns can be written: every column exists in the
    /// table and is writable, every key column is there, and (for upsert and insert) no column
    /// that is NOT NULL without a default is missing. `Err` lists every problem found, `; `
    /// separated. For a `validate` command, before any row flows.
    pub fn check_columns(&self, output_columns: &[String]) -> Result<(), String> {
        let problems = self.target.column_problems(output_columns);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The connection, opened again if the last one was lost.
    async fn client(&self) -> Result<Arc<Client>, SinkError> {
        if let Some(c) = self.lock().as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(c));
        }
        // Connect without the lock held; calls racing here may each open one, and all but the
        // one that lands first are dropped (closing them).
        // Retryable whatever the cause: a lost metastore (or a password being rotated) must
        // not turn every pending row into a dead letter.
        let fresh = open(&self.pg, self.statement_timeout).await.map_err(|e| {
            SinkError::retryable(format!(
                "cannot reconnect to the metastore database to write to {}: {e}",
                self.target.display,
            ))
        })?;
        let mut slot = self.lock();
        match slot.as_ref().filter(|c| !c.is_closed()) {
            Some(c) => Ok(Arc::clone(c)),
            None => {
                tracing::info!(table = %self.target.display, "Metastore sink reconnected.");
                let fresh = Arc::new(fresh);
                *slot = Some(Arc::clone(&fresh));
                Ok(fresh)
            }
        }
    }

    /// Drops `client` if it is still the current connection, so the next call opens a new one.
    fn forget(&self, client: &Arc<Client>) {
        let mut slot = self.lock();
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
            *slot = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Client>>> {
        // The slot holds no invariant a panicking holder could break.
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Sink for MetastoreSink {
    fn kind(&self) -> &'static str {
        "metastore"
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    async fn deliver(&self, records: &[Record]) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        let groups = rows::group(&self.target, records)?;
        let shapes: Vec<&[usize]> = groups.iter().map(|g| g.columns.as_slice()).collect();
        let statement = sql::statement(&self.target, &shapes);
        let params: Vec<(&(dyn ToSql + Sync), Type)> = groups
            .iter()
            .map(|g| (&g.json as &(dyn ToSql + Sync), Type::TEXT))
            .collect();

        let client = self.client().await?;
        // query_typed: parameter types are given, so no separate prepare round trip.
        // Bounded here as well as on the server: a metastore (or a network path) that stops
        // answering never answers the cancellation either.
        let answer = tokio::time::timeout(
            self.statement_timeout,
            client.query_typed_one(&statement, &params),
        )
        .await;
        let Ok(answer) = answer else {
            // The connection has a statement in flight nobody will read: replace it.
            self.forget(&client);
            let error = SinkError::retryable(format!(
                "the metastore did not answer a write to {} within {} ms",
                self.target.display,
                self.statement_timeout.as_millis()
            ));
            tracing::debug!(table = %self.target.display, records = records.len(), error = %error, "Metastore delivery timed out.");
            return Err(error);
        };
        match answer {
            Ok(row) => {
                let written: i64 = row.try_get(0).unwrap_or(-1);
                tracing::debug!(
                    table = %self.target.display,
                    records = records.len(),
                    written,
                    "Delivered to the metastore."
                );
                Ok(())
            }
            Err(e) => {
                if connection_lost(&e) || client.is_closed() {
                    self.forget(&client);
                }
                let error = classify(&self.target.display, &e);
                tracing::debug!(
                    table = %self.target.display,
                    records = records.len(),
                    retryable = error.is_retryable(),
                    error = %error,
                    "Metastore delivery failed."
                );
                Err(error)
            }
        }
    }
}

/// Whether the connection is gone after this error. A server error leaves it usable unless it
/// was FATAL (shutdown, pg_terminate_backend): the server closes the connection after sending
/// it, but the client may not have noticed yet when the call returns, so `is_closed` alone would
/// hand the dead connection to the next call. A client-side error (closed socket, I/O) means the
/// connection is gone or in an unknown state.
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::Severity;
    match e.as_db_error() {
        Some(db) => {
            matches!(
                db.parsed_severity(),
                Some(Severity::Fatal | Severity::Panic)
            ) || db.code().code().starts_with("08")
        }
        None => true,
    }
}

/// Opens a connection (TLS as configured, JIT off: set-based writes of hundreds of rows can pass
/// the JIT cost threshold, and compiling costs more than the write).
async fn open(
    pg: &lily_pg::ConnectionConfig,
    statement_timeout: Duration,
) -> Result<Client, lily_pg::PgError> {
    let client = lily_pg::connect(pg, ROLE).await?;
    // The server gives up on a statement at the same bound, so an abandoned one does not run
    // on holding its locks.
    client
        .batch_execute(&format!(
            "SET statement_timeout = {}",
            statement_timeout.as_millis()
        ))
        .await
        .map_err(|source| lily_pg::PgError::Connect {
            role: ROLE,
            target: pg.target(),
            detail: lily_pg::describe(&source),
            source,
        })?;
    Ok(client)
}
