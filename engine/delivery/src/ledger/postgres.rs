//! The ledger store in the metastore: `lily.delivery_ledger` and `lily.dead_letters`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use lily_pgoutput::Lsn;
use tokio_postgres::Client;

use super::{LedgerEntry, LedgerError, LedgerStore};
use crate::dead_letters::{DeadLetter, LetterFilter};
use crate::sink::Record;

/// A lazily (re)connected client.
struct Reconnecting {
    config: lily_pg::ConnectionConfig,
    client: Mutex<Option<Arc<Client>>>,
}

impl Reconnecting {
    fn new(config: lily_pg::ConnectionConfig) -> Self {
        Reconnecting {
            config,
            client: Mutex::new(None),
        }
    }

    async fn get(&self) -> Result<Arc<Client>, LedgerError> {
        if let Some(c) = self.client.lock().expect("client lock").as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let client = lily_pg::connect(&self.config, lily_pg::Role::Ledger).await?;
        let client = Arc::new(client);
        *self.client.lock().expect("client lock") = Some(client.clone());
        Ok(client)
    }
}

/// The ledger store [`super::Ledger::open`] and [`crate::DeadLetters::open`] use.
pub(crate) struct PgLedgerStore {
    db: Reconnecting,
}

impl PgLedgerStore {
    pub(crate) fn new(config: lily_pg::ConnectionConfig) -> Self {
        PgLedgerStore {
            db: Reconnecting::new(config),
        }
    }
}

#[async_trait]
impl LedgerStore for PgLedgerStore {
    async fn load(&self, pipeline: &str) -> Result<HashMap<(String, String), Lsn>, LedgerError> {
        let client = self.db.get().await?;
        let rows = client
            .query(
                "SELECT sink, record_id, commit_lsn::text FROM lily.delivery_ledger WHERE pipeline = $1",
                &[&pipeline],
            )
            .await?;
        let mut finished = HashMap::with_capacity(rows.len());
        for r in rows {
            let lsn: String = r.get(2);
            finished.insert(
                (r.get::<_, String>(0), r.get::<_, String>(1)),
                lsn.parse().unwrap_or(Lsn(0)),
            );
        }
        Ok(finished)
    }

    async fn write(&self, pipeline: &str, entries: &[LedgerEntry]) -> Result<(), LedgerError> {
        let client = self.db.get().await?;
        let sinks: Vec<&str> = entries.iter().map(|e| e.sink.as_str()).collect();
        let ids: Vec<&str> = entries.iter().map(|e| e.record_id.as_str()).collect();
        let lsns: Vec<String> = entries.iter().map(|e| e.commit_lsn.to_string()).collect();
        let outcomes: Vec<&str> = entries.iter().map(|e| e.outcome.as_str()).collect();
        client
            .execute(
                "INSERT INTO lily.delivery_ledger (pipeline, sink, record_id, commit_lsn, outcome)
                 SELECT $1, s, r, l::pg_lsn, o FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS u(s, r, l, o)
                 ON CONFLICT DO NOTHING",
                &[&pipeline, &sinks, &ids, &lsns, &outcomes],
            )
            .await?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        pipeline: &str,
        sink: &str,
        record: &Record,
        error: &str,
        attempts: u32,
    ) -> Result<(), LedgerError> {
        let body = serde_json::Value::Object(record.fields.clone());
        let client = self.db.get().await?;
        client
            .execute(
                "WITH d AS (
                    INSERT INTO lily.dead_letters
                        (pipeline, sink, record_id, commit_lsn, commit_ts, order_key,
                         record, error, attempts)
                    VALUES ($1, $2, $3, $4::text::pg_lsn,
                            to_timestamp($5::float8 / 1e6), $6, $7, $8, $9)
                    ON CONFLICT (pipeline, sink, record_id) DO UPDATE
                        SET error = EXCLUDED.error, attempts = EXCLUDED.attempts,
                            failed_at = now(), replayed_at = NULL)
                 INSERT INTO lily.delivery_ledger (pipeline, sink, record_id, commit_lsn, outcome)
                 VALUES ($1, $2, $3, $4::text::pg_lsn, 'dead_lettered')
                 ON CONFLICT DO NOTHING",
                &[
                    &pipeline,
                    &sink,
                    &record.id,
                    &record.commit_lsn.to_string(),
                    &(record.commit_ts_us as f64),
                    &record.key,
                    &body,
                    &error,
                    &(attempts as i32),
                ],
            )
            .await?;
        Ok(())
    }

    async fn prune(&self, pipeline: &str, confirmed: Lsn) -> Result<u64, LedgerError> {
        let client = self.db.get().await?;
        Ok(client
            .execute(
                "DELETE FROM lily.delivery_ledger WHERE pipeline = $1 AND commit_lsn <= $2::text::pg_lsn",
                &[&pipeline, &confirmed.to_string()],
            )
            .await?)
    }

    async fn list_dead_letters(
        &self,
        filter: &LetterFilter,
    ) -> Result<Vec<DeadLetter>, LedgerError> {
        let client = self.db.get().await?;
        // Times as microseconds since the epoch: the client has no timestamp type.
        let rows = client
            .query(
                "SELECT id, pipeline, sink, record_id, commit_lsn::text,
                        (extract(epoch FROM commit_ts) * 1e6)::int8, order_key, record,
                        error, attempts, (extract(epoch FROM failed_at) * 1e6)::int8,
                        (extract(epoch FROM replayed_at) * 1e6)::int8
                 FROM lily.dead_letters
                 WHERE ($1::text IS NULL OR pipeline = $1) AND ($2::int8 IS NULL OR id = $2)
                   AND ($3 OR replayed_at IS NULL)
                 ORDER BY id",
                &[&filter.pipeline, &filter.id, &filter.replayed],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let fields = match r.get::<_, serde_json::Value>(7) {
                    serde_json::Value::Object(m) => m,
                    // `dead_letter` only ever writes an object.
                    _ => Default::default(),
                };
                DeadLetter {
                    id: r.get(0),
                    pipeline: r.get(1),
                    sink: r.get(2),
                    record: Record {
                        id: r.get(3),
                        commit_lsn: r.get::<_, String>(4).parse().unwrap_or(Lsn(0)),
                        commit_ts_us: r.get(5),
                        key: r.get(6),
                        fields,
                    },
                    error: r.get(8),
                    attempts: r.get::<_, i32>(9).max(0) as u32,
                    failed_at: from_epoch_us(r.get(10)),
                    replayed_at: r.get::<_, Option<i64>>(11).map(from_epoch_us),
                }
            })
            .collect())
    }

    async fn mark_replayed(
        &self,
        pipeline: &str,
        sink: &str,
        letter: i64,
        record: &Record,
    ) -> Result<(), LedgerError> {
        let client = self.db.get().await?;
        client
            .execute(
                "WITH u AS (UPDATE lily.dead_letters SET replayed_at = now() WHERE id = $1)
                 INSERT INTO lily.delivery_ledger (pipeline, sink, record_id, commit_lsn, outcome)
                 VALUES ($2, $3, $4, $5::text::pg_lsn, 'delivered')
                 ON CONFLICT (pipeline, sink, record_id)
                     DO UPDATE SET outcome = 'delivered', finished_at = now()",
                &[
                    &letter,
                    &pipeline,
                    &sink,
                    &record.id,
                    &record.commit_lsn.to_string(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn replay_failed(
        &self,
        letter: i64,
        error: &str,
        attempts: u32,
    ) -> Result<(), LedgerError> {
        let client = self.db.get().await?;
        client
            .execute(
                "UPDATE lily.dead_letters
                 SET error = $2, attempts = attempts + $3, failed_at = now()
                 WHERE id = $1",
                &[
                    &letter,
                    &error,
                    &i32::try_from(attempts).unwrap_or(i32::MAX),
                ],
            )
            .await?;
        Ok(())
    }
}

fn from_epoch_us(us: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}
