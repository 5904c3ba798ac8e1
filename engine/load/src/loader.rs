//! The load: a structural pass, then a bulk pass, each a reader thread feeding chunk
//! transactions.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement, Transaction};

use crate::chunk::{read_lane, Chunk, ChunkLimits, ReadLane};
use crate::error::{LoadError, RowLocation};
use crate::job::{self, Audit, FileInfo, JobState, JobTotals};
use crate::partition;
use crate::progress::Progress;
use crate::record::LaneRules;
use crate::source::{self, Checkpoint, Format};
use crate::throttle::Throttle;
use crate::Lane;

/// Per-session staging tables. TEMP: never WAL-logged, never in a publication, private to the
/// session; ON COMMIT DELETE ROWS empties them at the end of every chunk transaction (and a
/// rolled-back chunk leaves nothing either). Rows reach meta.assets only through the INSERT below,
/// so logical replication sees ordinary inserts and updates.
const CREATE_STAGING: &str = "
CREATE TEMP TABLE lily_load_assets_v1 (
    guid           uuid  NOT NULL,
    parent_guid    uuid,
    type_name      text  NOT NULL,
    status         text  NOT NULL,
    name           text  NOT NULL,
    qualified_name text  NOT NULL,
    attributes     jsonb NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE lily_load_edges_v1 (
    upstream_guid   uuid NOT NULL,
    downstream_guid uuid NOT NULL,
    process_guid    uuid NOT NULL
) ON COMMIT DELETE ROWS;
";

const COPY_ASSETS: &str = "COPY pg_temp.lily_load_assets_v1 (guid, parent_guid, type_name, status, name, qualified_name, attributes) FROM STDIN (FORMAT binary)";
const COPY_EDGES: &str = "COPY pg_temp.lily_load_edges_v1 (upstream_guid, downstream_guid, process_guid) FROM STDIN (FORMAT binary)";

/// The upsert. An unchanged row is not written at all (no new tuple, no WAL, no change event, no
/// version bump); a changed one gets version + 1. The tenant test cannot fail for guids derived
/// from the tenant; it keeps a load from ever rewriting another tenant's row. Returns (inserted,
/// inserted + updated): a row inserted here has version 1, an updated one at least 2 (`xmax`
/// cannot be read back from a partitioned table).
const MERGE_ASSETS: &str = "
WITH merged AS (
    INSERT INTO meta.assets AS a (guid, parent_guid, tenant_id, type_name, status, name, qualified_name, attributes)
    SELECT s.guid, s.parent_guid, $1::text, s.type_name, s.status, s.name, s.qualified_name, s.attributes
    FROM pg_temp.lily_load_assets_v1 s
    ON CONFLICT (guid) DO UPDATE
        SET parent_guid = EXCLUDED.parent_guid, type_name = EXCLUDED.type_name,
            status = EXCLUDED.status, name = EXCLUDED.name, attributes = EXCLUDED.attributes,
            version = a.version + 1, updated_at = now()
        WHERE a.tenant_id = EXCLUDED.tenant_id
          AND (a.parent_guid, a.type_name, a.status, a.name, a.attributes)
              IS DISTINCT FROM
              (EXCLUDED.parent_guid, EXCLUDED.type_name, EXCLUDED.status, EXCLUDED.name, EXCLUDED.attributes)
    RETURNING (a.version = 1) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FROM merged";

/// The fast path for chunks of new assets (the usual case of a bulk load): a plain insert skips
/// ON CONFLICT's speculative insertion and RETURNING (measured ~15% of the server's time per
/// row). A unique violation (some asset already exists) rolls back to a savepoint and the chunk
/// goes through MERGE_ASSETS instead.
const INSERT_ASSETS: &str = "
INSERT INTO meta.assets (guid, parent_guid, tenant_id, type_name, status, name, qualified_name, attributes)
SELECT s.guid, s.parent_guid, $1::text, s.type_name, s.status, s.name, s.qualified_name, s.attributes
FROM pg_temp.lily_load_assets_v1 s";

const MERGE_EDGES: &str = "
INSERT INTO meta.lineage_edges (upstream_guid, downstream_guid, process_guid, tenant_id)
SELECT upstream_guid, downstream_guid, process_guid, $1::text FROM pg_temp.lily_load_edges_v1
ON CONFLICT DO NOTHING";

/// COPY data goes out in pieces of this size so the server starts on a chunk while the rest is
/// in flight.
const COPY_PIECE: usize = 256 << 10;

/// How loads cut their input into transactions, and what counts as a bulk row.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Which asset types go to the bulk lane.
    pub lanes: LaneRules,
    /// Rows (assets and edges) per structural-lane transaction: small, so containers become
    /// visible soon after they are read.
    pub structural_chunk_rows: usize,
    /// Upper bound, and starting point, of rows per bulk-lane transaction.
    pub bulk_chunk_rows: usize,
    /// The adaptive bulk chunk size never goes below this.
    pub bulk_chunk_min_rows: usize,
    /// Bytes of COPY data per chunk, either lane.
    pub chunk_bytes: usize,
    /// A chunk is committed at the latest this long after its first row was read (slow inputs).
    pub chunk_max_age: Duration,
    /// A bulk transaction should take about this long at most: a slower chunk halves the next
    /// chunks' row limit, one under a quarter of it doubles it (up to `bulk_chunk_rows`). This
    /// bounds how long a bulk chunk holds its [`Throttle`] permit and its row locks.
    pub bulk_chunk_target: Duration,
    /// Longest NDJSON line accepted.
    pub max_line_bytes: usize,
    /// Rows per Arrow batch read from Parquet.
    pub parquet_batch_rows: usize,
    /// Connections writing bulk chunks at once (each its own transaction; they commit in file
    /// order, so the job's position stays exact). More than one needs
    /// [`Loader::with_connect`], and a [`Throttle`] with as many permits.
    pub bulk_writers: usize,
    /// While a logical replication slot of the database is active and further behind the
    /// server's WAL than this many bytes, bulk chunks wait: near-real-time changes committed
    /// during a load then reach change-data-capture consumers behind at most this much bulk
    /// WAL. `None`: never wait.
    pub max_replication_lag_bytes: Option<u64>,
    /// Upper bound of rows per bulk chunk while a logical replication slot is active: a consumer
    /// receives a transaction only at its commit, so a change committed just after a bulk chunk
    /// waits for the whole chunk to be decoded and sent.
    pub replicated_chunk_rows: usize,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            lanes: LaneRules::default(),
            structural_chunk_rows: 1_000,
            bulk_chunk_rows: 50_000,
            bulk_chunk_min_rows: 2_000,
            chunk_bytes: 24 << 20,
            chunk_max_age: Duration::from_secs(1),
            bulk_chunk_target: Duration::from_secs(2),
            max_line_bytes: 16 << 20,
            parquet_batch_rows: 8_192,
            bulk_writers: 2,
            max_replication_lag_bytes: Some(8 << 20),
            replicated_chunk_rows: 10_000,
        }
    }
}

/// One file to load.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    pub tenant: String,
    /// Who asked, for the audit log: `cli:load`, `key:<key_id>`, ...
    pub principal: String,
    pub path: PathBuf,
    /// The ingest API's request id, for the audit log.
    pub request_id: Option<String>,
    /// `None`: Parquet if the file starts with `PAR1`, NDJSON otherwise.
    pub format: Option<Format>,
    /// Forget the job's progress and read the file again from the start.
    pub restart: bool,
}

impl LoadRequest {
    pub fn new(
        tenant: impl Into<String>,
        principal: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> Self {
        LoadRequest {
            tenant: tenant.into(),
            principal: principal.into(),
            path: path.into(),
            request_id: None,
            format: None,
            restart: false,
        }
    }

    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    pub fn format(mut self, format: Format) -> Self {
        self.format = Some(format);
        self
    }

    pub fn restart(mut self, restart: bool) -> Self {
        self.restart = restart;
        self
    }
}

/// What one lane did in this run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaneReport {
    /// Input rows committed (assets, and for the structural lane lineage edges too).
    pub rows: u64,
    pub chunks: u64,
    /// Wall time of the lane in this run, waits for the throttle included.
    pub elapsed: Duration,
    /// An earlier run had finished the lane; this run did not read it.
    pub already_done: bool,
    /// Time chunks spent waiting for change-data-capture consumers to catch up (summed over
    /// the writers).
    pub paced: Duration,
}

impl LaneReport {
    pub fn rows_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.rows as f64 / s
        } else {
            0.0
        }
    }
}

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub job_id: String,
    pub file: PathBuf,
    pub format: Format,
    /// An earlier run had finished this job; nothing was read or written but the audit row.
    pub already_complete: bool,
    /// Earlier runs had committed part of this job; this run skipped what they committed.
    pub resumed: bool,
    pub structural: LaneReport,
    pub bulk: LaneReport,
    /// Lineage rows committed by this run (part of `structural.rows`).
    pub lineage_rows: u64,
    /// What this run's chunks did to meta.assets.
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// The job over all its runs.
    pub job: JobTotals,
    pub elapsed: Duration,
}

/// Information about a chunk, for a [`LoadObserver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkInfo {
    pub lane: Lane,
    /// 0-based, per lane and run.
    pub index: u64,
    pub asset_rows: u64,
    pub edge_rows: u64,
    /// Bytes (NDJSON) or rows (Parquet) of the file before the chunk's end.
    pub end_position: u64,
    pub first: Option<RowLocation>,
    pub last: Option<RowLocation>,
}

/// Hooks around chunk commits: metrics, or a test stopping a load at a precise point.
pub trait LoadObserver: Send + Sync {
    /// Inside the chunk's transaction, after its rows and checkpoint were written, before
    /// COMMIT. An error rolls the chunk back and stops the load with [`LoadError::Stopped`].
    fn before_commit(&self, _chunk: &ChunkInfo) -> Result<(), String> {
        Ok(())
    }

    /// After the chunk committed.
    fn after_commit(&self, _chunk: &ChunkInfo) {}
}

/// Loads files into one metastore. Cheap to keep; share a [`Throttle`] between the loaders of
/// different tenants.
pub struct Loader {
    config: LoadConfig,
    throttle: Throttle,
    observer: Option<Arc<dyn LoadObserver>>,
    progress: watch::Sender<Progress>,
    /// How to open the extra bulk writers' connections.
    connect: Option<lily_pg::ConnectionConfig>,
}

impl Default for Loader {
    fn default() -> Self {
        Loader::new(LoadConfig::default())
    }
}

#[derive(Default)]
struct ChunkCounts {
    inserted: u64,
    updated: u64,
    unchanged: u64,
}

struct Statements {
    insert_assets: Statement,
    merge_assets: Statement,
    merge_edges: Statement,
    checkpoint: [Statement; 2],
}

/// Everything about the running job that the lanes share.
struct JobCtx<'a> {
    request: &'a LoadRequest,
    file: FileInfo,
    job_id: String,
}

impl Loader {
    pub fn new(config: LoadConfig) -> Self {
        Loader {
            throttle: Throttle::new(config.bulk_writers),
            config,
            observer: None,
            progress: watch::channel(Progress::default()).0,
            connect: None,
        }
    }

    /// Lets the bulk lane open [`LoadConfig::bulk_writers`] - 1 more connections like this one
    /// (the owner of `meta.assets`, as the client given to [`Loader::load`]).
    pub fn with_connect(mut self, pg: lily_pg::ConnectionConfig) -> Self {
        self.connect = Some(pg);
        self
    }

    /// Share a throttle with other loaders (see [`Throttle`]).
    pub fn with_throttle(mut self, throttle: Throttle) -> Self {
        self.throttle = throttle;
        self
    }

    pub fn with_observer(mut self, observer: Arc<dyn LoadObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn config(&self) -> &LoadConfig {
        &self.config
    }

    /// Progress after every committed chunk. The channel closes when the loader is dropped.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Loads one file: its structural rows (in small transactions), then its bulk rows (in
    /// large ones), resuming a job that an earlier run of the same file left unfinished.
    ///
    /// `client` is used exclusively for the duration (transactions, session-local staging
    /// tables) and must not be inside a transaction; connect it as the owner of `meta.assets`.
    /// Every run that gets as far as finding its job writes one `lily.audit_log` row (action
    /// `load`), also when it fails; a run that is killed or dropped writes none, and its job keeps
    /// the progress its committed chunks recorded.
    ///
    /// Dropping the future cancels the load: the open chunk's transaction rolls back, the file
    /// reader stops at its next chunk.
    pub async fn load(
        &self,
        client: &mut Client,
        request: &LoadRequest,
    ) -> Result<LoadReport, LoadError> {
        let started = Instant::now();
        check_tenant_id(&request.tenant)?;
        let (path, format) = (request.path.clone(), request.format);
        let file = tokio::task::spawn_blocking(move || job::inspect(&path, format))
            .await
            .map_err(|e| LoadError::Reader(e.to_string()))??;
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM meta.tenants WHERE tenant_id = $1)",
                &[&request.tenant],
            )
            .await
            .map_err(|e| LoadError::pg("looking up the tenant", e))?
            .get(0);
        if !exists {
            return Err(LoadError::NoSuchTenant(request.tenant.clone()));
        }
        prepare_session(client).await?;
        let job_id = job::job_id(&request.tenant, &file.fingerprint);
        let state = job::start(
            client,
            &job_id,
            &request.tenant,
            &request.principal,
            &file,
            request.restart,
        )
        .await?;
        let ctx = JobCtx {
            request,
            file,
            job_id,
        };
        let mut report = LoadReport {
            job_id: ctx.job_id.clone(),
            file: request.path.clone(),
            format: ctx.file.format,
            already_complete: state.done,
            resumed: !state.done && (state.structural.checkpoint.line > 0 || state.structural.done),
            structural: LaneReport {
                already_done: state.structural.done,
                ..LaneReport::default()
            },
            bulk: LaneReport {
                already_done: state.bulk.done,
                ..LaneReport::default()
            },
            lineage_rows: 0,
            inserted: 0,
            updated: 0,
            unchanged: 0,
            job: JobTotals::default(),
            elapsed: Duration::ZERO,
        };
        let outcome = if state.done {
            Ok(())
        } else {
            self.run(client, &ctx, &state, &mut report).await
        };
        report.elapsed = started.elapsed();
        let audit = Audit {
            tenant: &request.tenant,
            principal: &request.principal,
            request_id: request.request_id.as_deref(),
        };
        match outcome {
            Ok(()) => {
                let detail = audit_detail(&ctx, &report, None);
                report.job = job::finish(client, &ctx.job_id, &audit, detail, None).await?;
                Ok(report)
            }
            Err(e) => {
                let detail = audit_detail(&ctx, &report, Some(&e));
                if let Err(audit_error) =
                    job::finish(client, &ctx.job_id, &audit, detail, Some(&e)).await
                {
                    tracing::warn!(job = %ctx.job_id, error = %audit_error, "could not record the failed load");
                }
                Err(e)
            }
        }
    }

    async fn run(
        &self,
        client: &mut Client,
        ctx: &JobCtx<'_>,
        state: &JobState,
        report: &mut LoadReport,
    ) -> Result<(), LoadError> {
        // The structural lane finishes before the bulk lane starts: a column is never committed
        // before the table it belongs to (when both are in the file), at the price of reading
        // the file twice. The structural pass also checks every bulk row, so a bad row anywhere
        // in the file stops the load before any bulk row is written.
        if !state.structural.done {
            self.run_lane(
                client,
                ctx,
                Lane::Structural,
                state.structural.checkpoint,
                report,
            )
            .await?;
        }
        if !state.bulk.done {
            self.run_lane(client, ctx, Lane::Bulk, state.bulk.checkpoint, report)
                .await?;
        }
        Ok(())
    }

    async fn run_lane(
        &self,
        client: &mut Client,
        ctx: &JobCtx<'_>,
        lane: Lane,
        start: Checkpoint,
        report: &mut LoadReport,
    ) -> Result<(), LoadError> {
        let cfg = &self.config;
        let started = Instant::now();
        // Extra bulk writers, each with its own session (staging tables, prepared statements).
        let mut extra = Vec::new();
        if lane == Lane::Bulk {
            if let Some(pg) = &self.connect {
                for _ in 1..cfg.bulk_writers.max(1) {
                    let c = lily_pg::connect(pg, lily_pg::Role::Load).await?;
                    prepare_session(&c).await?;
                    extra.push(c);
                }
            }
        }
        let mut idle = Vec::with_capacity(1 + extra.len());
        for c in std::iter::once(client).chain(extra.iter_mut()) {
            let statements = Statements::prepare(c).await?;
            idle.push(Writer {
                client: c,
                statements,
                plain_first: true,
            });
        }
        let writers = idle.len();
        // A consumer receives a transaction at its commit: keep bulk transactions short while
        // one is reading this database.
        let mut max_rows = match lane {
            Lane::Structural => cfg.structural_chunk_rows,
            Lane::Bulk => cfg.bulk_chunk_rows,
        };
        let pace = match (lane, cfg.max_replication_lag_bytes) {
            (Lane::Bulk, Some(max)) => {
                if replication_lag(idle[0].client).await?.is_some() {
                    max_rows = max_rows.min(cfg.replicated_chunk_rows.max(1));
                }
                Some(max)
            }
            _ => None,
        };
        let limits = Arc::new(ChunkLimits {
            rows: AtomicUsize::new(max_rows),
            bytes: cfg.chunk_bytes,
            max_age: cfg.chunk_max_age,
        });
        // Chunks queued: the reader parses ahead while the server writes.
        let (tx, mut rx) = mpsc::channel(writers + 1);
        let read = ReadLane {
            lane,
            tenant: ctx.request.tenant.clone(),
            rules: cfg.lanes.clone(),
            limits: Arc::clone(&limits),
            overlap_window: writers - 1,
            partitions: partition::discover(idle[0].client).await,
        };
        let (path, format) = (ctx.file.path.clone(), ctx.file.format);
        let (max_line, batch_rows) = (cfg.max_line_bytes, cfg.parquet_batch_rows);
        let reader = tokio::task::spawn_blocking(move || {
            match source::open(format, &path, start, max_line, batch_rows) {
                Ok(src) => read_lane(src, read, tx),
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });

        // Chunks are written concurrently but take throttle permits and commit strictly in
        // file order, so what is committed is always a prefix of the file and the job's single
        // position stays exact (a crash loses only uncommitted chunks, which resume reads again).
        let (seq, _) = watch::channel(Seq::default());
        let seq = &seq;
        let mut inflight = FuturesUnordered::new();
        let mut pending: Option<Chunk> = None;
        let mut next_index = 0u64;
        let mut rows = 0u64;
        let mut reached_end = false;
        let mut reader_done = false;
        // The first failure in file order: (chunk index, error).
        let mut failure: Option<(u64, LoadError)> = None;
        loop {
            if let Some(chunk) = pending.take() {
                let ready = !idle.is_empty() && (!chunk.overlaps_recent || inflight.is_empty());
                if ready && failure.is_none() {
                    let writer = idle.pop().expect("a writer is idle");
                    let index = next_index;
                    next_index += 1;
                    inflight.push(self.write_chunk(writer, ctx, lane, chunk, index, seq, pace));
                    continue;
                }
                if failure.is_none() {
                    pending = Some(chunk);
                }
            }
            let receiving = pending.is_none() && !reader_done && failure.is_none();
            if !receiving && inflight.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                Some((writer, index, outcome)) = inflight.next(), if !inflight.is_empty() => {
                    idle.push(writer);
                    match outcome {
                        Ok(Some(done)) => {
                            if lane == Lane::Bulk {
                                adapt(&limits, done.took, cfg, max_rows);
                            }
                            rows += done.rows;
                            let lane_report = match lane {
                                Lane::Structural => &mut report.structural,
                                Lane::Bulk => &mut report.bulk,
                            };
                            lane_report.rows = rows;
                            lane_report.chunks = index + 1;
                            lane_report.elapsed = started.elapsed();
                            lane_report.paced += done.paced;
                            report.lineage_rows += done.info.edge_rows;
                            report.inserted += done.counts.inserted;
                            report.updated += done.counts.updated;
                            report.unchanged += done.counts.unchanged;
                            self.progress.send_replace(Progress {
                                file: ctx.request.path.clone(),
                                lane,
                                rows,
                                rows_per_sec: lane_report.rows_per_sec(),
                                position: done.info.end_position,
                                total: done.total,
                                lane_done: done.final_chunk,
                            });
                            if let Some(o) = &self.observer {
                                o.after_commit(&done.info);
                            }
                            if done.final_chunk {
                                reached_end = true;
                                reader_done = true;
                            }
                            if lane == Lane::Bulk {
                                self.throttle.between_chunks().await;
                            }
                        }
                        // Stopped because an earlier chunk failed.
                        Ok(None) => {}
                        Err(e) => {
                            seq.send_modify(|s| s.failed = true);
                            if failure.as_ref().is_none_or(|(i, _)| index < *i) {
                                failure = Some((index, e));
                            }
                        }
                    }
                }
                msg = rx.recv(), if receiving => match msg {
                    Some(Ok(chunk)) => pending = Some(chunk),
                    // After every chunk before the bad row, so it sorts after them.
                    Some(Err(e)) => failure = Some((next_index, e)),
                    None => reader_done = true,
                },
            }
        }
        drop(rx);
        if let Err(e) = reader.await {
            return Err(LoadError::Reader(e.to_string()));
        }
        if let Some((_, e)) = failure {
            return Err(e);
        }
        if !reached_end {
            return Err(LoadError::Reader(format!(
                "the {lane} pass stopped before the end of the file"
            )));
        }
        Ok(())
    }

    /// One chunk on one writer, in its turn. Returns the writer with the outcome: `Ok(None)` if
    /// it stopped (rolled back) because an earlier chunk failed.
    #[allow(clippy::too_many_arguments)]
    async fn write_chunk<'w>(
        &self,
        mut writer: Writer<'w>,
        ctx: &JobCtx<'_>,
        lane: Lane,
        chunk: Chunk,
        index: u64,
        seq: &watch::Sender<Seq>,
        pace: Option<u64>,
    ) -> (Writer<'w>, u64, Result<Option<ChunkDone>, LoadError>) {
        let outcome = async {
            let mut turn = seq.subscribe();
            let mut paced = Duration::ZERO;
            if let Some(max) = pace {
                paced = wait_for_replication(writer.client, max).await?;
            }
            // Permits in file order: a later chunk holding the last permit while waiting for
            // an earlier one to commit would wait forever.
            if !wait_turn(&mut turn, |s| s.permitted >= index).await {
                return Ok(None);
            }
            let permit = match lane {
                Lane::Bulk => Some(self.throttle.acquire().await),
                Lane::Structural => None,
            };
            seq.send_modify(|s| s.permitted = s.permitted.max(index + 1));
            let info = ChunkInfo {
                lane,
                index,
                asset_rows: chunk.asset_rows,
                edge_rows: chunk.edge_rows,
                end_position: chunk.end.position,
                first: chunk.first,
                last: chunk.last,
            };
            let committed = self
                .commit_chunk(&mut writer, ctx, lane, &chunk, &info, &mut turn, index)
                .await?;
            drop(permit);
            let Some((counts, took)) = committed else {
                return Ok(None);
            };
            seq.send_modify(|s| s.committed = s.committed.max(index + 1));
            writer.plain_first = counts.inserted == chunk.staged_assets;
            Ok(Some(ChunkDone {
                rows: chunk.asset_rows + chunk.edge_rows,
                counts,
                took,
                paced,
                final_chunk: chunk.final_chunk,
                total: chunk.total,
                info,
            }))
        }
        .await;
        (writer, index, outcome)
    }

    /// One transaction: stage, upsert, wait for the chunks before it to commit, move the lane's
    /// checkpoint (compare-and-set), commit. Returns what it did and how long the writing took
    /// (the wait excluded), or `None` if an earlier chunk failed (the transaction rolls back).
    #[allow(clippy::too_many_arguments)]
    async fn commit_chunk(
        &self,
        writer: &mut Writer<'_>,
        ctx: &JobCtx<'_>,
        lane: Lane,
        chunk: &Chunk,
        info: &ChunkInfo,
        turn: &mut watch::Receiver<Seq>,
        index: u64,
    ) -> Result<Option<(ChunkCounts, Duration)>, LoadError> {
        let t0 = Instant::now();
        let tenant = ctx.request.tenant.as_str();
        let rejected = |e: tokio_postgres::Error| chunk_error(e, ctx, lane, chunk);
        let statements = &writer.statements;
        let tx = writer
            .client
            .transaction()
            .await
            .map_err(|e| LoadError::pg("starting a chunk transaction", e))?;
        let mut counts = ChunkCounts::default();
        if let Some(data) = &chunk.assets {
            copy_in(&tx, COPY_ASSETS, data.clone())
                .await
                .map_err(rejected)?;
            let mut all_new = false;
            if writer.plain_first {
                let pg = |e| LoadError::pg("setting a savepoint", e);
                tx.batch_execute("SAVEPOINT lily_load_plain")
                    .await
                    .map_err(pg)?;
                match tx.execute(&statements.insert_assets, &[&tenant]).await {
                    Ok(n) => {
                        counts.inserted = n;
                        all_new = true;
                    }
                    Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                        tx.batch_execute("ROLLBACK TO SAVEPOINT lily_load_plain")
                            .await
                            .map_err(pg)?;
                    }
                    Err(e) => return Err(rejected(e)),
                }
            }
            if !all_new {
                let row = tx
                    .query_one(&statements.merge_assets, &[&tenant])
                    .await
                    .map_err(rejected)?;
                let (inserted, written): (i64, i64) = (row.get(0), row.get(1));
                counts.inserted = inserted.max(0) as u64;
                counts.updated = (written - inserted).max(0) as u64;
                counts.unchanged = chunk.staged_assets.saturating_sub(written.max(0) as u64);
            }
        }
        if let Some(data) = &chunk.edges {
            copy_in(&tx, COPY_EDGES, data.clone())
                .await
                .map_err(rejected)?;
            tx.execute(&statements.merge_edges, &[&tenant])
                .await
                .map_err(rejected)?;
        }
        let took = t0.elapsed();
        if !wait_turn(turn, |s| s.committed >= index).await {
            return Ok(None);
        }
        let lane_index = match lane {
            Lane::Structural => 0,
            Lane::Bulk => 1,
        };
        let moved = tx
            .execute(
                &statements.checkpoint[lane_index],
                &[
                    &ctx.job_id,
                    &(chunk.end.position as i64),
                    &(chunk.end.line as i64),
                    &(chunk.asset_rows as i64),
                    &chunk.final_chunk,
                    &(chunk.edge_rows as i64),
                    &(counts.inserted as i64),
                    &(counts.updated as i64),
                    &(counts.unchanged as i64),
                    &(chunk.start.position as i64),
                    &(chunk.start.line as i64),
                ],
            )
            .await
            .map_err(|e| LoadError::pg("recording the load's progress", e))?;
        if moved != 1 {
            return Err(LoadError::JobConflict {
                job_id: ctx.job_id.clone(),
            });
        }
        if let Some(o) = &self.observer {
            o.before_commit(info)
                .map_err(|reason| LoadError::Stopped { lane, reason })?;
        }
        tx.commit()
            .await
            .map_err(|e| LoadError::pg("committing a chunk", e))?;
        Ok(Some((counts, took)))
    }
}

/// A connection writing chunks.
struct Writer<'c> {
    client: &'c mut Client,
    statements: Statements,
    /// Try the plain insert until a chunk meets existing assets; go back to it after a chunk
    /// that turned out to be all new.
    plain_first: bool,
}

/// Where the chunks of a lane are: counts of chunks that took their permit and that committed
/// (chunk `i` waits for `i` of each), and whether one failed.
#[derive(Debug, Clone, Copy, Default)]
struct Seq {
    permitted: u64,
    committed: u64,
    failed: bool,
}

/// Waits until `ready` holds; false if a chunk failed first.
async fn wait_turn(rx: &mut watch::Receiver<Seq>, mut ready: impl FnMut(&Seq) -> bool) -> bool {
    match rx.wait_for(|s| s.failed || ready(s)).await {
        Ok(s) => !s.failed,
        // The sender lives as long as the lane.
        Err(_) => false,
    }
}

/// What a committed chunk did.
struct ChunkDone {
    rows: u64,
    counts: ChunkCounts,
    took: Duration,
    paced: Duration,
    final_chunk: bool,
    total: u64,
    info: ChunkInfo,
}

/// Bytes of WAL between the server's current position and the slowest active logical slot of
/// this database, `None` when no logical slot is active.
const REPLICATION_LAG: &str = "
SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn))::bigint
FROM pg_replication_slots
WHERE slot_type = 'logical' AND active AND database = current_database()";

async fn replication_lag(client: &Client) -> Result<Option<u64>, LoadError> {
    let lag: Option<i64> = client
        .query_one(REPLICATION_LAG, &[])
        .await
        .map_err(|e| LoadError::pg("reading the replication lag", e))?
        .get(0);
    Ok(lag.map(|l| l.max(0) as u64))
}

/// Waits while an active logical slot is more than `max` bytes behind; returns how long.
async fn wait_for_replication(client: &Client, max: u64) -> Result<Duration, LoadError> {
    let started = Instant::now();
    while replication_lag(client).await?.is_some_and(|lag| lag > max) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(started.elapsed())
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Statements, LoadError> {
        let prep = |sql: String| async move {
            client
                .prepare(&sql)
                .await
                .map_err(|e| LoadError::pg("preparing the load statements", e))
        };
        Ok(Statements {
            insert_assets: prep(INSERT_ASSETS.into()).await?,
            merge_assets: prep(MERGE_ASSETS.into()).await?,
            merge_edges: prep(MERGE_EDGES.into()).await?,
            checkpoint: [
                prep(job::checkpoint_sql(Lane::Structural)).await?,
                prep(job::checkpoint_sql(Lane::Bulk)).await?,
            ],
        })
    }
}

/// `^[a-z0-9][a-z0-9_-]{0,62}$`, as `meta.tenants`. Checked first so that a tenant id never
/// needs quoting anywhere (it is a bound parameter everywhere anyway).
fn check_tenant_id(t: &str) -> Result<(), LoadError> {
    let b = t.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(LoadError::InvalidTenant(t.to_string()))
    }
}

/// Creates the staging tables once per session.
async fn prepare_session(client: &Client) -> Result<(), LoadError> {
    let pg = |e| LoadError::pg("creating the staging tables", e);
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('pg_temp.lily_load_assets_v1') IS NOT NULL",
            &[],
        )
        .await
        .map_err(pg)?
        .get(0);
    if !exists {
        // A bulk chunk's staged rows should stay in local buffers (8 MB by default). Only
        // possible before the session's first temporary table, so it may fail; that only costs
        // speed.
        if let Err(e) = client.batch_execute("SET temp_buffers = '64MB'").await {
            tracing::debug!(error = %e, "could not raise temp_buffers");
        }
        client.batch_execute(CREATE_STAGING).await.map_err(pg)?;
    }
    Ok(())
}

async fn copy_in(
    tx: &Transaction<'_>,
    sql: &str,
    data: Bytes,
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx.copy_in(sql).await?;
    let mut sink = std::pin::pin!(sink);
    let mut rest = data;
    while !rest.is_empty() {
        let piece = rest.split_to(COPY_PIECE.min(rest.len()));
        sink.feed(piece).await?;
    }
    sink.as_mut().finish().await
}

/// A data error (class 22 or 23) is the chunk's content; anything else is the connection or the
/// server.
fn chunk_error(e: tokio_postgres::Error, ctx: &JobCtx<'_>, lane: Lane, chunk: &Chunk) -> LoadError {
    let data_error = e
        .code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"));
    let first = chunk.first.unwrap_or(RowLocation::Line(0));
    let last = chunk.last.unwrap_or(first);
    if data_error {
        LoadError::ChunkRejected {
            file: ctx.file.path.clone(),
            lane,
            first,
            last,
            source: e,
        }
    } else {
        LoadError::pg(format!("writing the {lane} chunk of {first} to {last}"), e)
    }
}

/// Halves the bulk chunk after a slow transaction, doubles it after a quick one.
fn adapt(limits: &ChunkLimits, took: Duration, cfg: &LoadConfig, max_rows: usize) {
    let current = limits.rows.load(Ordering::Relaxed);
    let next = if took > cfg.bulk_chunk_target {
        (current / 2).max(cfg.bulk_chunk_min_rows)
    } else if took < cfg.bulk_chunk_target / 4 {
        current.saturating_mul(2).min(max_rows)
    } else {
        current
    };
    if next != current {
        tracing::debug!(from = current, to = next, ?took, "bulk chunk size");
        limits.rows.store(next, Ordering::Relaxed);
    }
}

fn audit_detail(
    ctx: &JobCtx<'_>,
    report: &LoadReport,
    error: Option<&LoadError>,
) -> serde_json::Value {
    let outcome = match (error, report.already_complete) {
        (Some(_), _) => "failed",
        (None, true) => "already_complete",
        (None, false) => "done",
    };
    serde_json::json!({
        "job_id": ctx.job_id,
        "file": ctx.file.path.display().to_string(),
        "format": ctx.file.format.as_str(),
        "outcome": outcome,
        "error": error.map(|e| e.to_string()),
        "resumed": report.resumed,
        "run": {
            "structural_rows": report.structural.rows,
            "lineage_rows": report.lineage_rows,
            "bulk_rows": report.bulk.rows,
            "inserted": report.inserted,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "seconds": report.elapsed.as_secs_f64(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for ok in ["t1", "acme", "a-b_c", "0"] {
            check_tenant_id(ok).unwrap();
        }
        for bad in ["", "T1", "-a", "a;b", "a'b", &"a".repeat(64)] {
            assert!(check_tenant_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunk_size_adapts() {
        let cfg = LoadConfig::default();
        let limits = ChunkLimits {
            rows: AtomicUsize::new(cfg.bulk_chunk_rows),
            bytes: cfg.chunk_bytes,
            max_age: cfg.chunk_max_age,
        };
        adapt(
            &limits,
            cfg.bulk_chunk_target * 2,
            &cfg,
            cfg.bulk_chunk_rows,
        );
        assert_eq!(limits.rows.load(Ordering::Relaxed), cfg.bulk_chunk_rows / 2);
        for _ in 0..20 {
            adapt(
                &limits,
                cfg.bulk_chunk_target * 2,
                &cfg,
                cfg.bulk_chunk_rows,
            );
        }
        assert_eq!(limits.rows.load(Ordering::Relaxed), cfg.bulk_chunk_min_rows);
        for _ in 0..20 {
            adapt(&limits, Duration::from_millis(1), &cfg, cfg.bulk_chunk_rows);
        }
        assert_eq!(limits.rows.load(Ordering::Relaxed), cfg.bulk_chunk_rows);
    }
}
