//! The sink compliance suite (`lily-sinktest`) against a throwaway PostgreSQL cluster, reached
//! through a fault proxy for the transport faults.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lily_delivery::Record;
use lily_metastore_sink::{MetastoreSink, MetastoreSinkConfig, Mode};
use lily_pgharness::PgCluster;
use lily_sinktest::{Fault, FaultProxy, Received, Replay, Shape, SinkHarness, Support};
use tokio_postgres::Client;

lily_sinktest::compliance!(MetastoreHarness);

const DB: &str = "sinktest";
const ROLE: &str = "lily_sink";
/// Connecting, start-up included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A delivery's statement (`statement_timeout_ms`).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Quiet on the wire for this long before a one-shot fault is armed.
const SETTLE: Duration = Duration::from_millis(200);

/// The suite's records as rows: `k` the key, `seq` the sequence number, `note` free text that
/// a CHECK refuses when it says `reject`. A trigger sleeps while `sinktest.stall` has a row, to
/// hold a statement in flight. The sink's role gives up on a lock after 500 ms.
const SCHEMA: &str = "
    CREATE SCHEMA sinktest;
    CREATE TABLE sinktest.items (
        k text PRIMARY KEY,
        seq bigint NOT NULL,
        note text CONSTRAINT note_not_rejected CHECK (note IS DISTINCT FROM 'reject')
    );
    CREATE TABLE sinktest.stall (since timestamptz NOT NULL DEFAULT now());
    CREATE FUNCTION sinktest.maybe_stall() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM sinktest.stall) THEN
            PERFORM pg_sleep(600);
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER items_stall BEFORE INSERT OR UPDATE ON sinktest.items
        FOR EACH ROW EXECUTE FUNCTION sinktest.maybe_stall();
    GRANT USAGE ON SCHEMA sinktest TO lily_sink;
    GRANT SELECT, INSERT, UPDATE, DELETE ON sinktest.items TO lily_sink;
    GRANT SELECT ON sinktest.stall TO lily_sink;
    ALTER ROLE lily_sink SET lock_timeout = '500ms';
";

struct MetastoreHarness {
    pg: Arc<PgCluster>,
    admin: Client,
    proxy: FaultProxy,
    sink: MetastoreSink,
    password: String,
    /// A session holding a lock, kept open for [`Fault::LockTimeout`].
    lock_holder: Mutex<Option<Client>>,
}

/// A password no other test uses, so a leak is unambiguous.
fn password() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("sinkpw-{nanos:x}-{}", std::process::id())
}

/// `CREATE ROLE lily_sink LOGIN PASSWORD …` through `psql`, in a process of its own: sent from
/// this one, the statement (password included) would be in tokio-postgres's debug log, which
/// the suite rightly counts as a leak.
async fn create_sink_role(pg: &PgCluster, password: &str) {
    let mut psql = pg.run_as_owner("psql");
    psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", DB, "-c"])
        .arg(format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'"));
    let out = tokio::process::Command::from(psql).output().await.unwrap();
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the sink's backend sleeps in the stall trigger, then shuts the server down
/// (`pg_ctl stop -m fast`: every backend gets FATAL 57P01).
async fn shut_down_under_the_statement(pg: Arc<PgCluster>) {
    let watcher = pg.connect(DB).await.unwrap();
    for _ in 0..1000 {
        let sleeping: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename = $1 AND wait_event = 'PgSleep'",
                &[&ROLE],
            )
            .await
            .unwrap()
            .get(0);
        if sleeping > 0 {
            pg.stop().await.unwrap();
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the sink's statement never reached the stall trigger");
}

#[async_trait::async_trait]
impl SinkHarness for MetastoreHarness {
    type Sink = MetastoreSink;

    const SHAPE: Shape = Shape::Table;
    const REPLAY: Replay = Replay::Upsert;

    async fn start() -> Self {
        let pg = PgCluster::start().await.unwrap();
        pg.create_database(DB).await.unwrap();
        let password = password();
        create_sink_role(&pg, &password).await;
        let admin = pg.connect(DB).await.unwrap();
        admin.batch_execute(SCHEMA).await.unwrap();

        let upstream: SocketAddr = format!("{}:{}", pg.host(), pg.port()).parse().unwrap();
        let proxy = FaultProxy::start(upstream).await;
        let mut connection = pg.connection(DB);
        connection.port = proxy.port();
        connection.user = ROLE.into();
        connection.password = lily_pg::Secret::new(password.as_str());
        connection.connect_timeout = CONNECT_TIMEOUT;
        let config = MetastoreSinkConfig {
            table: "sinktest.items".into(),
            mode: Mode::Upsert,
            key_columns: None,
            update_columns: None,
            statement_timeout_ms: STATEMENT_TIMEOUT.as_millis() as u64,
        };
        let sink = MetastoreSink::connect(connection, config).await.unwrap();
        MetastoreHarness {
            pg: Arc::new(pg),
            admin,
            proxy,
            sink,
            password,
            lock_holder: Mutex::new(None),
        }
    }

    fn sink(&self) -> &MetastoreSink {
        &self.sink
    }

    fn supports(fault: &Fault) -> Support {
        match fault {
            Fault::Refused
            | Fault::Dropped
            | Fault::Hang
            | Fault::Malformed
            | Fault::ShuttingDown
            | Fault::LockTimeout
            | Fault::ConstraintViolation
            | Fault::DataError => Support::Yes,
            Fault::Http { .. } => {
                Support::No("PostgreSQL answers with SQLSTATEs, not HTTP statuses")
            }
        }
    }

    async fn inject(&self, fault: &Fault, records: &mut Vec<Record>) {
        match fault {
            Fault::Refused => self.proxy.refuse(),
            // The sink's connection may still be closing the catalog statements it prepared.
            Fault::Dropped => {
                self.proxy.settle(SETTLE).await;
                self.proxy.drop_next();
            }
            Fault::Hang => self.proxy.hang(),
            Fault::Malformed => {
                self.proxy.settle(SETTLE).await;
                self.proxy.garbage_next();
            }
            Fault::ShuttingDown => {
                self.admin
                    .batch_execute("INSERT INTO sinktest.stall DEFAULT VALUES")
                    .await
                    .unwrap();
                tokio::spawn(shut_down_under_the_statement(Arc::clone(&self.pg)));
            }
            Fault::LockTimeout => {
                let holder = self.pg.connect(DB).await.unwrap();
                holder
                    .batch_execute("BEGIN; LOCK TABLE sinktest.items IN ACCESS EXCLUSIVE MODE")
                    .await
                    .unwrap();
                *self.lock_holder.lock().unwrap() = Some(holder);
            }
            // 23514.
            Fault::ConstraintViolation => {
                for r in records.iter_mut() {
                    r.fields.insert("note".into(), "reject".into());
                }
            }
            // 22P02: not a bigint.
            Fault::DataError => {
                for r in records.iter_mut() {
                    r.fields.insert("seq".into(), "not-a-number".into());
                }
            }
            Fault::Http { .. } => unreachable!("not supported"),
        }
    }

    async fn received(&self) -> Vec<Received> {
        self.admin
            .query(
                "SELECT k, seq, xmin::text FROM sinktest.items ORDER BY k",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| Received {
                key: Some(row.get(0)),
                seq: u64::try_from(row.get::<_, i64>(1)).ok(),
                idempotency_key: None,
                version: Some(row.get(2)),
            })
            .collect()
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.password.clone(), self.pg.password().to_string()]
    }

    fn timeout(&self) -> Option<Duration> {
        Some(STATEMENT_TIMEOUT.max(CONNECT_TIMEOUT))
    }

    fn describe(&self) -> Option<String> {
        Some(format!("{:?}", self.sink))
    }
}
