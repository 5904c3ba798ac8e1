//! End-to-end crash tests of the `lily` binary: a `kill -9` mid-stream and a PostgreSQL restart
//! under a running engine. Each runs the real binary as a child process against a throwaway
//! cluster, with a `log` consumer (JSON lines on stdout, captured to a file) and a `mirror`
//! consumer (applying into a second database).
//!
//! What they prove:
//! - after `kill -9`, a restart resumes from the slot's confirmed LSN and nothing is lost: the
//!   mirror equals the source row for row and every committed change is in the union of the two
//!   runs' change logs;
//! - duplicates come only from the unacknowledged window: a change delivered by both runs belongs
//!   to a transaction whose commit lies above the LSN the server held when the engine died, and
//!   the second run re-delivers no transaction committed below it;
//! - the engine rides out a restart of PostgreSQL (reconnecting with backoff) and converges.
//!
//! Run with `cargo test -p lily --test crash -- --nocapture` to see the figures.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lily_pgharness::PgCluster;
use tokio_postgres::Client;

const TABLE: &str = "public.events";
const DDL: &str = "CREATE TABLE public.events (id int8 PRIMARY KEY, payload text, n int)";
/// Ids of rows inserted by transactions that roll back; none may ever be seen.
const ROLLBACK_IDS: i64 = 1_000_000_000;

// ---------------------------------------------------------------------------------------------
// The engine as a child process.

/// One run of `lily run --config FILE`, stdout and stderr going to files. Killed on drop.
struct Engine {
    child: Option<Child>,
    label: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Engine {
    fn start(config: &Path, dir: &Path, label: &str, src_url: &str, dst_url: &str) -> Engine {
        let stdout = dir.join(format!("{label}.jsonl"));
        let stderr = dir.join(format!("{label}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_lily"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("LILY_SRC_URL", src_url)
            .env("LILY_DST_URL", dst_url)
            .env("LILY_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("LILY_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create stdout file"))
            .stderr(File::create(&stderr).expect("create stderr file"))
            .spawn()
            .expect("spawn the lily binary");
        Engine {
            child: Some(child),
            label: label.to_string(),
            stdout,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `None` while running.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .expect("running")
            .try_wait()
            .expect("try_wait")
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap.
    fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL the engine");
        child.wait().expect("reap the engine");
    }

    /// SIGTERM, then wait (polling) for the exit; returns the status.
    async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {timeout:?} after SIGTERM\n{}",
                    self.label,
                    self.stderr_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stderr_tail(&self, lines: usize) -> String {
        tail(&self.stderr, lines, &self.label)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tail(path: &Path, lines: usize, label: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    format!(
        "--- last {lines} lines of {label} stderr ({}) ---\n{}",
        path.display(),
        all[all.len().saturating_sub(lines)..].join("\n")
    )
}

/// The directory for config and output files; kept after the test when `LILY_CRASH_KEEP` is set.
fn work_dir() -> tempfile::TempDir {
    let mut builder = tempfile::Builder::new();
    builder.prefix("lily-crash-");
    if std::env::var_os("LILY_CRASH_KEEP").is_some() {
        builder.disable_cleanup(true);
    }
    builder.tempdir().expect("temp dir")
}

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("lily.toml");
    std::fs::write(
        &path,
        r#"
[source]
url_env = "LILY_SRC_URL"
slot = "crash_slot"
publication = "crash_pub"
tables = ["public.events"]
status_interval_ms = 200

[batch]
max_rows = 500
max_latency_ms = 20
consumer_queue = 4

[http]
listen = "127.0.0.1:0"

[[consumer]]
type = "log"
name = "log"

[[consumer]]
type = "mirror"
name = "mirror"
target_url_env = "LILY_DST_URL"
"#,
    )
    .expect("write config");
    path
}

// ---------------------------------------------------------------------------------------------
// Database helpers.

async fn setup(cluster: &PgCluster, dst_cluster: &PgCluster) -> (Client, Client) {
    cluster.create_database("src").await.expect("create src");
    dst_cluster
        .create_database("dst")
        .await
        .expect("create dst");
    let src = cluster.connect("src").await.expect("connect src");
    // The table first: once schema `lily` exists it comes first in the superuser `lily`'s
    // search_path. Everything below names public.events explicitly anyway.
    src.batch_execute(DDL).await.expect("create table in src");
    lily_metastore::migrate(&src).await.expect("migrate src");
    let dst = dst_cluster.connect("dst").await.expect("connect dst");
    dst.batch_execute(DDL).await.expect("create table in dst");
    (src, dst)
}

fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("LSN is X/Y");
    (u64::from_str_radix(hi, 16).expect("LSN hi") << 32)
        | u64::from_str_radix(lo, 16).expect("LSN lo")
}

fn fmt_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

async fn current_lsn(c: &Client) -> u64 {
    let text: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("pg_current_wal_lsn")
        .get(0);
    parse_lsn(&text)
}

/// (active, confirmed_flush_lsn) of the slot, `None` if it does not exist.
async fn slot_state(c: &Client, slot: &str) -> Option<(bool, Option<u64>)> {
    c.query_opt(
        "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .expect("query pg_replication_slots")
    .map(|r| {
        let active: bool = r.get(0);
        let lsn: Option<String> = r.get(1);
        (active, lsn.as_deref().map(parse_lsn))
    })
}

/// Polls until `cond` holds on the slot's state, or panics after `timeout` with the engine's log.
async fn wait_slot(
    c: &Client,
    slot: &str,
    timeout: Duration,
    what: &str,
    engine: &mut Engine,
    cond: impl Fn(Option<(bool, Option<u64>)>) -> bool,
) -> Option<(bool, Option<u64>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let state = slot_state(c, slot).await;
        if cond(state) {
            return state;
        }
        if let Some(status) = engine
            .child
            .as_mut()
            .and_then(|ch| ch.try_wait().ok().flatten())
        {
            panic!(
                "{} exited ({status}) while waiting for: {what} (slot {state:?})\n{}",
                engine.label,
                engine.stderr_tail(40)
            );
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for: {what} (slot {state:?})\n{}",
                engine.stderr_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_confirmed(c: &Client, target: u64, timeout: Duration, engine: &mut Engine) -> u64 {
    let what = format!("crash_slot confirmed_flush_lsn >= {}", fmt_lsn(target));
    let state = wait_slot(
        c,
        "crash_slot",
        timeout,
        &what,
        engine,
        |s| matches!(s, Some((_, Some(lsn))) if lsn >= target),
    )
    .await;
    state.and_then(|s| s.1).expect("confirmed")
}

type Row = (i64, Option<String>, Option<i32>);

async fn table_rows(c: &Client) -> Vec<Row> {
    c.query("SELECT id, payload, n FROM public.events ORDER BY id", &[])
        .await
        .expect("read public.events")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Asserts dst equals src row for row; names the first difference rather than dumping tables.
async fn assert_mirror_equal(src: &Client, dst: &Client, context: &str) -> usize {
    let a = table_rows(src).await;
    let b = table_rows(dst).await;
    if a != b {
        let first = a
            .iter()
            .zip(b.iter())
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        panic!(
            "{context}: mirror differs from source: src has {} rows, dst {}; first difference at \
             index {first}: src {:?} dst {:?}",
            a.len(),
            b.len(),
            a.get(first),
            b.get(first)
        );
    }
    a.len()
}

// ---------------------------------------------------------------------------------------------
// The writer.

/// A small deterministic PRNG (xorshift64*), seeded per test and printed for reproduction.
struct Rng(u64);

impl Rng {
    fn seeded() -> (Rng, u64) {
        let seed = std::env::var("LILY_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        (Rng(seed), seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Written {
    /// Row changes of committed transactions (rows the statements reported as affected).
    changes: u64,
    transactions: u64,
    rolled_back: u64,
    inserts: u64,
    updates: u64,
    deletes: u64,
}

/// Commits transactions of 1–200 rows (inserts of increasing ids, updates and deletes of ranges
/// of existing ids; one in 25 rolls back instead) until `stop`, at about `rate` changes a second.
struct Writer {
    client: Client,
    rng: Rng,
    next_id: i64,
    next_rollback_id: i64,
    written: Written,
}

impl Writer {
    fn new(client: Client, rng: Rng) -> Writer {
        Writer {
            client,
            rng,
            next_id: 1,
            next_rollback_id: ROLLBACK_IDS,
            written: Written::default(),
        }
    }

    async fn transaction(&mut self) -> Result<(), tokio_postgres::Error> {
        let c = &self.client;
        let rollback = self.rng.range(0, 24) == 0;
        let mut left = self.rng.range(1, 200) as i64;
        let mut w = Written::default();
        c.batch_execute("BEGIN").await?;
        while left > 0 {
            let pick = self.rng.range(0, 9);
            if rollback || pick <= 5 || self.next_id < 50 {
                let k = self.rng.range(1, left as u64) as i64;
                let first = if rollback {
                    self.next_rollback_id
                } else {
                    self.next_id
                };
                let n = c
                    .execute(
                        "INSERT INTO public.events (id, payload, n) \
                         SELECT g, 'p' || g, 0 FROM generate_series($1::int8, $2::int8) g",
                        &[&first, &(first + k - 1)],
                    )
                    .await?;
                if rollback {
                    self.next_rollback_id += k;
                } else {
                    self.next_id += k;
                }
                w.inserts += n;
                left -= k;
            } else if pick <= 8 {
                let k = self.rng.range(1, left.min(50) as u64) as i64;
                let lo = self.rng.range(1, (self.next_id - 1) as u64) as i64;
                let n = c
                    .execute(
                        "UPDATE public.events SET n = n + 1, payload = 'u' || (n + 1)::text \
                         WHERE id >= $1 AND id < $2",
                        &[&lo, &(lo + k)],
                    )
                    .await?;
                w.updates += n;
                left -= k;
            } else {
                let k = self.rng.range(1, left.min(10) as u64) as i64;
                let lo = self.rng.range(1, (self.next_id - 1) as u64) as i64;
                let n = c
                    .execute(
                        "DELETE FROM public.events WHERE id >= $1 AND id < $2",
                        &[&lo, &(lo + k)],
                    )
                    .await?;
                w.deletes += n;
                left -= k;
            }
        }
        if rollback {
            c.batch_execute("ROLLBACK").await?;
            self.written.rolled_back += 1;
        } else {
            c.batch_execute("COMMIT").await?;
            self.written.transactions += 1;
            self.written.inserts += w.inserts;
            self.written.updates += w.updates;
            self.written.deletes += w.deletes;
            self.written.changes += w.inserts + w.updates + w.deletes;
        }
        Ok(())
    }

    async fn run_until(mut self, stop: Arc<AtomicBool>, rate: f64) -> (Writer, Written) {
        let started = Instant::now();
        while !stop.load(Ordering::Acquire) {
            self.transaction().await.expect("writer transaction");
            // Rate limit, so the volume does not depend on how fast this machine is.
            let due = Duration::from_secs_f64(self.written.changes as f64 / rate);
            let elapsed = started.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
        let written = self.written;
        (self, written)
    }
}

// ---------------------------------------------------------------------------------------------
// The change log.

/// One change line of the log consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Change {
    lsn: u64,
    commit_lsn: u64,
    id: Option<i64>,
}

struct Log {
    /// Change lines of public.events, in file order.
    changes: Vec<Change>,
    lines: usize,
    /// The last line was cut short (only expected of a killed run).
    truncated_tail: bool,
}

fn read_log(path: &Path, allow_truncated_tail: bool) -> Log {
    let file = File::open(path).expect("open change log");
    let raw: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .expect("read change log");
    let mut changes = Vec::new();
    let mut truncated_tail = false;
    let n = raw.len();
    for (i, line) in raw.iter().enumerate() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) if allow_truncated_tail && i + 1 == n => {
                truncated_tail = true;
                eprintln!("{}: ignoring a cut-off last line ({e})", path.display());
                continue;
            }
            Err(e) => panic!("{}:{}: not JSON ({e}): {line}", path.display(), i + 1),
        };
        if v.get("_table").and_then(|t| t.as_str()) != Some(TABLE) {
            continue;
        }
        let lsn = v["_lsn"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}:{}: no _lsn: {line}", path.display(), i + 1));
        let commit_lsn = v["_commit_lsn"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}:{}: no _commit_lsn: {line}", path.display(), i + 1));
        let id = v["id"].as_i64().or_else(|| v["_old"]["id"].as_i64());
        changes.push(Change {
            lsn,
            commit_lsn,
            id,
        });
    }
    Log {
        changes,
        lines: n,
        truncated_tail,
    }
}

/// Distinct changes by `_lsn`; panics if one `_lsn` carries two different changes.
fn by_lsn(logs: &[&Log]) -> HashMap<u64, Change> {
    let mut map: HashMap<u64, Change> = HashMap::new();
    for log in logs {
        for c in &log.changes {
            if let Some(prev) = map.insert(c.lsn, *c) {
                assert_eq!(
                    prev,
                    *c,
                    "two different changes share _lsn {}",
                    fmt_lsn(c.lsn)
                );
            }
        }
    }
    map
}

fn assert_no_rollback_ids(logs: &[&Log]) {
    for log in logs {
        if let Some(c) = log
            .changes
            .iter()
            .find(|c| c.id.is_some_and(|id| id >= ROLLBACK_IDS))
        {
            panic!("a change of a rolled-back transaction was delivered: {c:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// `kill -9` mid-stream, restart, and prove: nothing lost, duplicates only above the LSN the
/// server held for the slot when the engine died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_duplicates_only_the_unacknowledged_window() {
    let test_started = Instant::now();
    let cluster = PgCluster::start().await.expect("start cluster");
    let (src, dst) = setup(&cluster, &cluster).await;
    let dir = work_dir();
    let config = write_config(dir.path());
    let src_url = cluster.url("src");
    let dst_url = cluster.url("dst");
    let (rng, seed) = Rng::seeded();
    println!(
        "seed {seed} (rerun with LILY_CRASH_SEED={seed}); files in {}",
        dir.path().display()
    );

    // Run 1: until the slot is active.
    let mut run1 = Engine::start(&config, dir.path(), "run1", &src_url, &dst_url);
    let initial = wait_slot(
        &src,
        "crash_slot",
        Duration::from_secs(60),
        "crash_slot active",
        &mut run1,
        // Active alone is not enough: the slot shows active while CREATE_REPLICATION_SLOT is
        // still building its snapshot, before it has a confirmed position.
        |s| matches!(s, Some((true, Some(_)))),
    )
    .await
    .and_then(|s| s.1)
    .expect("slot has a confirmed LSN");

    // The writer streams transactions in the background.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = Writer::new(cluster.connect("src").await.expect("writer connects"), rng);
    let writer_started = Instant::now();
    let writer_task = tokio::spawn(writer.run_until(stop.clone(), 12_000.0));

    // Kill once 1.5 s passed and consumers have acknowledged something (so the crash lands
    // mid-stream, between confirmed and unconfirmed data, even on a slow machine).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wait_slot(
        &src,
        "crash_slot",
        Duration::from_secs(30),
        "run 1 confirms some data",
        &mut run1,
        |s| matches!(s, Some((_, Some(lsn))) if lsn > initial),
    )
    .await;
    assert!(
        run1.exited().is_none(),
        "run 1 died early\n{}",
        run1.stderr_tail(40)
    );
    run1.kill9();
    let killed_at = writer_started.elapsed();
    // What the server holds right after the kill...
    let confirmed_right_after_kill = slot_state(&src, "crash_slot")
        .await
        .and_then(|s| s.1)
        .expect("slot exists");
    // ...and once its walsender has gone (a status update still in flight may land meanwhile):
    // that is exactly where run 2 resumes.
    let confirmed_at_kill = wait_slot(
        &src,
        "crash_slot",
        Duration::from_secs(90),
        "crash_slot inactive after the kill",
        &mut run1,
        |s| matches!(s, Some((false, _))),
    )
    .await
    .and_then(|s| s.1)
    .expect("slot has a confirmed LSN");
    let server_lsn_at_kill = current_lsn(&src).await;

    // The writer goes on for a while after the crash, then stops.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Release);
    let (writer, written) = writer_task.await.expect("writer task");
    let write_time = writer_started.elapsed();
    drop(writer);
    let target = current_lsn(&src).await;

    // Run 2: resume and catch up with everything written.
    let mut run2 = Engine::start(&config, dir.path(), "run2", &src_url, &dst_url);
    let catch_up = Instant::now();
    let confirmed_end = wait_confirmed(&src, target, Duration::from_secs(120), &mut run2).await;
    let catch_up = catch_up.elapsed();
    let status = run2.terminate(Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "run 2 exited with {status}\n{}",
        run2.stderr_tail(40)
    );

    // No loss in the mirror.
    let rows = assert_mirror_equal(&src, &dst, "after run 2").await;

    // No loss in the change log.
    let log1 = read_log(&run1.stdout, true);
    let log2 = read_log(&run2.stdout, false);
    assert_no_rollback_ids(&[&log1, &log2]);
    let all = by_lsn(&[&log1, &log2]);
    let lsns1: HashSet<u64> = log1.changes.iter().map(|c| c.lsn).collect();
    let lsns2: HashSet<u64> = log2.changes.iter().map(|c| c.lsn).collect();
    let dups: Vec<Change> = log2
        .changes
        .iter()
        .filter(|c| lsns1.contains(&c.lsn))
        .copied()
        .collect();
    let dup_txns: HashSet<u64> = dups.iter().map(|c| c.commit_lsn).collect();
    let within1 = log1.changes.len() - lsns1.len();
    let within2 = log2.changes.len() - lsns2.len();

    println!("--- kill -9 test figures ---");
    println!(
        "written: {} changes ({} inserts, {} updates, {} deletes) in {} committed transactions \
         (+{} rolled back) over {:.1?}; kill at {:.1?}",
        written.changes,
        written.inserts,
        written.updates,
        written.deletes,
        written.transactions,
        written.rolled_back,
        write_time,
        killed_at
    );
    println!(
        "slot: created at {}; confirmed right after kill {}, once the walsender left {}; server \
         WAL at kill {} (unconfirmed window {} bytes); end target {}, confirmed at end {}",
        fmt_lsn(initial),
        fmt_lsn(confirmed_right_after_kill),
        fmt_lsn(confirmed_at_kill),
        fmt_lsn(server_lsn_at_kill),
        server_lsn_at_kill.saturating_sub(confirmed_at_kill),
        fmt_lsn(target),
        fmt_lsn(confirmed_end)
    );
    println!(
        "run1.jsonl: {} lines, {} changes{}; run2.jsonl: {} lines, {} changes; run 2 caught up \
         in {:.1?}",
        log1.lines,
        log1.changes.len(),
        if log1.truncated_tail {
            " (last line cut off)"
        } else {
            ""
        },
        log2.lines,
        log2.changes.len(),
        catch_up
    );
    println!(
        "distinct changes in run1 ∪ run2: {}; duplicates across runs: {} changes of {} \
         transactions; repeated within run1: {within1}, within run2: {within2}; rows in src = dst: {rows}",
        all.len(),
        dups.len(),
        dup_txns.len()
    );
    println!("total test time {:.1?}", test_started.elapsed());

    assert_eq!(
        all.len() as u64,
        written.changes,
        "the change logs hold {} distinct changes, the writer committed {}",
        all.len(),
        written.changes
    );
    assert_eq!(within1, 0, "run 1 repeated changes within itself");
    assert_eq!(within2, 0, "run 2 repeated changes within itself");

    // Duplicates only from the unacknowledged window.
    if let Some(bad) = dups.iter().find(|c| c.commit_lsn <= confirmed_at_kill) {
        panic!(
            "change {:?} (commit {}) was delivered by both runs, but its transaction committed \
             below the LSN confirmed at the kill ({})",
            bad,
            fmt_lsn(bad.commit_lsn),
            fmt_lsn(confirmed_at_kill)
        );
    }
    // Run 2 re-delivers no transaction confirmed before the kill.
    if let Some(bad) = log2
        .changes
        .iter()
        .find(|c| c.commit_lsn < confirmed_at_kill)
    {
        panic!(
            "run 2 delivered {:?} (commit {}), a transaction confirmed before the kill ({})",
            bad,
            fmt_lsn(bad.commit_lsn),
            fmt_lsn(confirmed_at_kill)
        );
    }
    // Run 1 delivered every change of every transaction it confirmed (nothing confirmed was
    // skipped): the changes below the confirmed LSN are all in run 1.
    let below: usize = all
        .values()
        .filter(|c| c.commit_lsn < confirmed_at_kill && !lsns1.contains(&c.lsn))
        .count();
    assert_eq!(below, 0, "changes confirmed at the kill missing from run 1");
    assert!(
        !log1.changes.is_empty() && !log2.changes.is_empty(),
        "both runs must deliver changes for the test to mean anything"
    );
}

/// The source's PostgreSQL restarts under a running engine (the mirror target lives on another
/// server): capture reconnects with backoff, loses nothing, keeps running and stops cleanly on
/// SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_a_running_engine() {
    restart_scenario(false).await;
}

/// As above, but the mirror target is a database of the same server, so the restart also cuts
/// the mirror's connection. The mirror reconnects and applies the batches it holds again, but
/// the restart itself is stuck: a walsender in shutdown waits until capture confirms everything
/// it sent, capture cannot confirm the batches the mirror holds, and the mirror cannot commit
/// them while the server refuses connections ("the database system is shutting down"). After
/// `MirrorOptions::shutdown_wait` (20 s) the mirror gives up, `lily run` exits 1 and the restart
/// completes. Passing needs capture to let the walsender finish while a consumer holds
/// unconfirmed batches (the same fix as the blocked-mirror test below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known bug: PostgreSQL's shutdown waits for capture to confirm batches the mirror cannot commit while the server shuts down; lily run exits 1"]
async fn postgres_restart_under_a_running_engine_with_the_mirror_target_on_the_same_server() {
    restart_scenario(true).await;
}

async fn restart_scenario(target_on_same_server: bool) {
    let test_started = Instant::now();
    let cluster = PgCluster::start().await.expect("start cluster");
    let other;
    let target = if target_on_same_server {
        &cluster
    } else {
        other = PgCluster::start().await.expect("start target cluster");
        &other
    };
    let (src, dst) = setup(&cluster, target).await;
    let dir = work_dir();
    let config = write_config(dir.path());
    let (rng, seed) = Rng::seeded();
    println!("seed {seed}; files in {}", dir.path().display());

    let mut engine = Engine::start(
        &config,
        dir.path(),
        "engine",
        &cluster.url("src"),
        &target.url("dst"),
    );
    wait_slot(
        &src,
        "crash_slot",
        Duration::from_secs(60),
        "crash_slot active",
        &mut engine,
        // Active alone is not enough: the slot shows active while CREATE_REPLICATION_SLOT is
        // still building its snapshot, before it has a confirmed position.
        |s| matches!(s, Some((true, Some(_)))),
    )
    .await;

    // Before: write for a second, then restart at once (some of it still in flight).
    let mut writer = Writer::new(cluster.connect("src").await.expect("writer connects"), rng);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        writer.transaction().await.expect("writer transaction");
    }
    let before = writer.written;
    drop(src);
    if let Err(e) = cluster.restart().await {
        panic!(
            "restarting PostgreSQL failed: {e}\nengine running: {}\n{}",
            engine.exited().is_none(),
            engine.stderr_tail(40)
        );
    }
    let restarted_at = test_started.elapsed();

    // After: new connections, more writes.
    let src = cluster.connect("src").await.expect("reconnect src");
    let dst = if target_on_same_server {
        drop(dst);
        target.connect("dst").await.expect("reconnect dst")
    } else {
        dst
    };
    let Writer { rng, next_id, .. } = writer;
    let mut writer = Writer::new(
        cluster.connect("src").await.expect("writer reconnects"),
        rng,
    );
    writer.next_id = next_id;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        writer.transaction().await.expect("writer transaction");
    }
    let after = writer.written;
    let target = current_lsn(&src).await;
    let confirmed = wait_confirmed(&src, target, Duration::from_secs(90), &mut engine).await;
    assert!(
        engine.exited().is_none(),
        "the engine exited after the restart\n{}",
        engine.stderr_tail(40)
    );
    let rows = assert_mirror_equal(&src, &dst, "after the restart").await;
    let status = engine.terminate(Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "engine exited with {status}\n{}",
        engine.stderr_tail(40)
    );

    let log = read_log(&engine.stdout, false);
    assert_no_rollback_ids(&[&log]);
    let all = by_lsn(&[&log]);
    let reconnects = std::fs::read_to_string(&engine.stderr)
        .unwrap_or_default()
        .matches("reconnecting")
        .count();
    println!("--- restart test figures ---");
    println!(
        "written: {} changes before the restart (at {restarted_at:.1?}), {} after; confirmed {} \
         >= target {}; log: {} lines, {} changes, {} distinct; rows in src = dst: {rows}; \
         reconnect messages: {reconnects}; total {:.1?}",
        before.changes,
        after.changes,
        fmt_lsn(confirmed),
        fmt_lsn(target),
        log.lines,
        log.changes.len(),
        all.len(),
        test_started.elapsed()
    );
    assert_eq!(
        all.len() as u64,
        before.changes + after.changes,
        "the change log misses changes"
    );
}

/// A deterministic reproduction of a shutdown hang. The mirror target is on the source's server;
/// the mirror is blocked on a lock while it applies the last batch capture has to send. A fast
/// restart terminates the mirror's backend, so the mirror consumer fails and will never
/// acknowledge; capture has nothing more to send, so it does not notice the dead consumer, and
/// it keeps answering the walsender's keepalives with a stale flush position. A walsender in
/// shutdown waits until the client confirms everything it sent, so PostgreSQL never finishes
/// shutting down (`pg_ctl restart` gives up after 60 s) for as long as the engine lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known bug: a dead consumer goes unnoticed by capture, which blocks PostgreSQL's shutdown"]
async fn postgres_restart_while_the_mirror_is_blocked_does_not_hang() {
    let cluster = PgCluster::start().await.expect("start cluster");
    let (src, dst) = setup(&cluster, &cluster).await;
    let dir = work_dir();
    let config = write_config(dir.path());
    println!("files in {}", dir.path().display());
    let mut engine = Engine::start(
        &config,
        dir.path(),
        "engine",
        &cluster.url("src"),
        &cluster.url("dst"),
    );
    wait_slot(
        &src,
        "crash_slot",
        Duration::from_secs(60),
        "crash_slot active",
        &mut engine,
        // Active alone is not enough: the slot shows active while CREATE_REPLICATION_SLOT is
        // still building its snapshot, before it has a confirmed position.
        |s| matches!(s, Some((true, Some(_)))),
    )
    .await;
    // Hold a lock on the target table, then commit one small transaction in the source.
    dst.batch_execute("BEGIN; LOCK TABLE public.events IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock the target table");
    src.batch_execute(
        "INSERT INTO public.events (id, payload, n) SELECT g, 'p', 0 FROM generate_series(1, 10) g",
    )
    .await
    .expect("write");
    // Wait until the mirror waits on the lock (so its batch left capture already).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = dst
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = 'lily-mirror' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mirror never blocked\n{}",
            engine.stderr_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(src);
    drop(dst);
    let started = Instant::now();
    let restarted = cluster.restart().await;
    println!(
        "restart took {:.1?}; engine running: {}",
        started.elapsed(),
        engine.exited().is_none()
    );
    if let Err(e) = restarted {
        let e = e.to_string();
        panic!(
            "PostgreSQL did not restart: {}\nengine running: {}\n{}",
            e.lines().next().unwrap_or_default(),
            engine.exited().is_none(),
            engine.stderr_tail(20)
        );
    }
}
