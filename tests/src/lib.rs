//! Helpers for end-to-end scenarios: running capture against a harness cluster, waiting for a
//! replication slot to confirm a WAL position, and comparing tables row for row across databases.

use std::time::{Duration, Instant};

use lily_cdc::{Capture, CaptureConfig, CaptureError, Subscription};
use lily_replication::{ConnectionConfig, SourceSpec};
use lily_runtime::ShutdownTrigger;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// Creates each database in `dbs` on `cluster` and runs `ddl` in it.
pub async fn create_databases(cluster: &lily_pgharness::PgCluster, dbs: &[&str], ddl: &str) {
    for db in dbs {
        cluster.create_database(db).await.unwrap();
        cluster
            .connect(db)
            .await
            .unwrap()
            .batch_execute(ddl)
            .await
            .unwrap();
    }
}

/// A capture pipeline running in a task.
pub struct RunningCapture {
    pub stop: ShutdownTrigger,
    pub task: JoinHandle<Result<(), CaptureError>>,
}

impl RunningCapture {
    /// Asks capture to stop and waits for it (at most 60 s).
    pub async fn stop(self) -> Result<(), CaptureError> {
        self.stop.trigger();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("capture stops within 60 s")
            .expect("capture task did not panic")
    }
}

/// A capture configuration for tests: quick status updates, reconnects and checkpoints.
pub fn capture_config(url: &str, slot: &str, publication: &str, tables: &[&str]) -> CaptureConfig {
    let mut cfg = CaptureConfig::new(
        ConnectionConfig::from_url(url).expect("harness URL parses"),
        SourceSpec {
            slot: slot.into(),
            publication: publication.into(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
            row_filters: Vec::new(),
        },
    );
    cfg.status_interval = Some(Duration::from_millis(200));
    cfg.checkpoint_interval = Duration::from_millis(500);
    cfg.reconnect_initial = Duration::from_millis(100);
    cfg.reconnect_max = Duration::from_secs(1);
    cfg.drain_timeout = Duration::from_secs(2);
    cfg
}

/// Starts capture with one subscriber named `consumer`.
pub fn start_capture(cfg: CaptureConfig, consumer: &str) -> (RunningCapture, Subscription) {
    let mut capture = Capture::new(cfg).expect("valid capture config");
    let sub = capture.subscribe(consumer);
    let (stop, stop_rx) = ShutdownTrigger::new();
    let task = tokio::spawn(async move {
        let r = capture.run(stop_rx).await;
        if let Err(e) = &r {
            eprintln!("capture ended with an error: {e}");
        }
        r
    });
    (RunningCapture { stop, task }, sub)
}

/// Creates the engine's state tables (`lily.checkpoints`, ...) in the source database.
///
/// Create the test's own tables schema-qualified: the harness superuser is called `lily`, so
/// once schema `lily` exists, unqualified names resolve there first (`"$user", public`).
pub async fn prepare_source(client: &Client) {
    lily_metastore::migrate(client)
        .await
        .expect("lily migrations apply");
}

/// `pg_current_wal_lsn()` as text.
pub async fn current_lsn(client: &Client) -> String {
    client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("pg_current_wal_lsn")
        .get(0)
}

/// The slot's `confirmed_flush_lsn` as text (`None` if the slot or the value is missing).
pub async fn slot_confirmed(client: &Client, slot: &str) -> Option<String> {
    client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("reading pg_replication_slots")
        .and_then(|r| r.get(0))
}

/// Waits until `slot` has confirmed `lsn`. `check` is called on every poll and may end the wait
/// early with a failure (e.g. "the mirror task ended: ...").
pub async fn wait_for_slot(
    client: &Client,
    slot: &str,
    lsn: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<String>,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let done: Option<bool> = client
            .query_opt(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot, &lsn],
            )
            .await
            .map_err(|e| format!("reading slot {slot}: {e:?}"))?
            .and_then(|r| r.get(0));
        if done == Some(true) {
            return Ok(started.elapsed());
        }
        if let Some(problem) = check() {
            return Err(format!(
                "while waiting for slot {slot} to confirm {lsn}: {problem}"
            ));
        }
        if started.elapsed() > timeout {
            let confirmed = slot_confirmed(client, slot).await;
            return Err(format!(
                "slot {slot} did not confirm {lsn} within {timeout:?} (confirmed_flush_lsn is {})",
                confirmed.as_deref().unwrap_or("missing")
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every row of `table` as PostgreSQL's text of the whole row, sorted (byte order), so two
/// databases can be compared as multisets. `table` is spliced in as given: quote it.
pub async fn table_rows(client: &Client, table: &str) -> Vec<String> {
    client
        .query(
            &format!("SELECT lily_row_::text FROM {table} AS lily_row_ ORDER BY lily_row_::text COLLATE \"C\""),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("reading {table}: {e:?}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Compares two sorted row lists; on a difference describes the first few differing rows.
pub fn diff_rows(
    table: &str,
    left_name: &str,
    left: &[String],
    right_name: &str,
    right: &[String],
) -> Option<String> {
    if left == right {
        return None;
    }
    let mut out = format!(
        "table {table}: {left_name} has {} rows, {right_name} has {} rows\n",
        left.len(),
        right.len()
    );
    // Debug-quoted (rows hold newlines and tabs), cut to 300 characters.
    let cut = |s: &str| -> String {
        if s.chars().count() > 300 {
            format!(
                "{:?}... ({} chars)",
                s.chars().take(300).collect::<String>(),
                s.len()
            )
        } else {
            format!("{s:?}")
        }
    };
    let (mut i, mut j, mut shown) = (0, 0, 0);
    while (i < left.len() || j < right.len()) && shown < 10 {
        match (left.get(i), right.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                out.push_str(&format!("  only in {left_name}:  {}\n", cut(a)));
                i += 1;
                shown += 1;
            }
            (Some(_), Some(b)) => {
                out.push_str(&format!("  only in {right_name}: {}\n", cut(b)));
                j += 1;
                shown += 1;
            }
            (Some(a), None) => {
                out.push_str(&format!("  only in {left_name}:  {}\n", cut(a)));
                i += 1;
                shown += 1;
            }
            (None, Some(b)) => {
                out.push_str(&format!("  only in {right_name}: {}\n", cut(b)));
                j += 1;
                shown += 1;
            }
            (None, None) => break,
        }
    }
    Some(out)
}

/// Compares `table` in two databases; `Err` describes the first differing rows.
pub async fn compare_table(
    table: &str,
    left_name: &str,
    left: &Client,
    right_name: &str,
    right: &Client,
) -> Result<usize, String> {
    let a = table_rows(left, table).await;
    let b = table_rows(right, table).await;
    match diff_rows(table, left_name, &a, right_name, &b) {
        None => Ok(a.len()),
        Some(d) => Err(d),
    }
}

/// A task's state for [`wait_for_slot`]'s `check`: `Some` once it has ended.
pub fn ended<T>(what: &str, task: &JoinHandle<T>) -> Option<String> {
    task.is_finished()
        .then(|| format!("{what} ended early (see its error above)"))
}

/// Waits until `slot` streams: active and with a confirmed position (a slot shows active while
/// CREATE_REPLICATION_SLOT is still building its snapshot, before changes are captured).
pub async fn wait_streaming(client: &Client, slot: &str) {
    for _ in 0..400 {
        let ready: bool = client
            .query_one(
                "SELECT count(*) = 1 FROM pg_replication_slots
                 WHERE slot_name = $1 AND active AND confirmed_flush_lsn IS NOT NULL",
                &[&slot],
            )
            .await
            .expect("reading pg_replication_slots")
            .get(0);
        if ready {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("slot {slot} never started streaming");
}

/// A batch's rows as JSON objects (nulls kept), as sinks receive them.
pub fn batch_objects(
    batch: &arrow_array::RecordBatch,
) -> Vec<serde_json::Map<String, serde_json::Value>> {
    lily_batch::json::objects(batch).expect("batch encodes as JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_the_first_differences() {
        let a: Vec<String> = ["(1,a)", "(2,b)", "(3,c)"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let b: Vec<String> = ["(1,a)", "(2,B)", "(3,c)", "(4,d)"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(diff_rows("t", "l", &a, "r", &a).is_none());
        let d = diff_rows("t", "native", &a, "mirror", &b).unwrap();
        assert!(d.contains("native has 3 rows, mirror has 4 rows"), "{d}");
        assert!(d.contains("only in mirror: \"(2,B)\""), "{d}");
        assert!(d.contains("only in native:  \"(2,b)\""), "{d}");
        assert!(d.contains("only in mirror: \"(4,d)\""), "{d}");
    }
}
