//! Bulk loads over the API. `POST /v1/tenants/{tenant}/loads` streams the body to a spool file
//! (never into memory), fsyncs it, writes a small JSON sidecar naming the tenant, principal and
//! request id, and answers 202 with the loader's own job id; the load then runs in the
//! background with lily-load, on a connection of its own, resumable from its checkpoints.
//!
//! The spool directory is the queue's durable state: `<job_id>.load` is the uploaded file and
//! `<job_id>.json` its sidecar (the sidecar is written last, so it marks a complete upload);
//! `upload-*.part` are uploads in progress. A file leaves the spool when its job is done or
//! failed for a reason running it again cannot fix; everything else (a crash, a shutdown, a
//! metastore outage that outlasted the retries) is resumed by [`Loads::start`] of the next
//! process. One spool directory belongs to one process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::{Body, HttpBody};
use lily_load::{Format, LoadConfig, LoadError, LoadRequest, Loader, Throttle};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::schedule::{Scheduler, Slot};

const DATA_EXT: &str = "load";
const SIDECAR_EXT: &str = "json";
const PART_EXT: &str = "part";
/// Failed jobs are remembered in memory (for GET, in case the loader failed before writing their
/// row), at most this many.
const MAX_REMEMBERED_FAILURES: usize = 256;

/// Why an upload or a status request was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadsError {
    #[error("bulk loads are not enabled on this server (ingest.load_spool_dir is not set)")]
    NotEnabled,
    #[error("content type {0:?} is not a load format: use application/x-ndjson (or application/jsonl), application/vnd.apache.parquet, or application/octet-stream to detect the format")]
    UnsupportedMediaType(String),
    #[error("the file is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the body is empty: send the file to load")]
    Empty,
    #[error("{0} loads are already waiting; retry later")]
    Busy(usize),
    /// The tenant's share of the queue is taken: other tenants' uploads still get in.
    #[error("{0} loads of this tenant are already waiting; retry when one has run")]
    TenantBusy(usize),
    #[error("the server is shutting down; retry")]
    ShuttingDown,
    #[error("reading the request body: {0}")]
    Body(String),
    /// The client stopped sending: its place in the queue goes to someone else.
    #[error("no upload data arrived for {} s; the partial upload was dropped: send the file again", .0.as_secs())]
    Idle(Duration),
    /// The client sends too slowly to finish: its place in the queue goes to someone else.
    #[error("the upload arrives slower than {0} bytes/s; the partial upload was dropped: send the file again faster")]
    TooSlow(u64),
    /// The spool directory failed (disk full, permissions): the server's problem.
    #[error("spooling the upload: {0}")]
    Spool(#[from] std::io::Error),
    #[error("inspecting the upload: {0}")]
    Inspect(LoadError),
    #[error("no such load job")]
    NotFound,
}

/// How the background loads run (from [`crate::IngestConfig`]).
#[derive(Debug, Clone)]
pub struct LoadsSettings {
    pub spool_dir: PathBuf,
    /// Largest upload (413 beyond).
    pub max_load_bytes: u64,
    /// An upload that sends nothing for this long is dropped (408), so a stalled client cannot
    /// hold a queue place.
    pub upload_idle: Duration,
    /// Loads running at once, each on its own connection.
    pub max_concurrent: usize,
    /// Accepted loads (uploading or waiting for a run slot) beyond which uploads get 429.
    pub max_queued: usize,
    /// Accepted loads of one tenant (uploading or waiting) beyond which its uploads get 429,
    /// so one tenant cannot take the whole queue.
    pub max_queued_per_tenant: usize,
    /// Loads of one tenant running at once.
    pub max_running_per_tenant: usize,
    /// A running load that has held its slot this long gives it up at its next chunk when a
    /// load of another tenant waits, and waits for its turn again (resuming from its
    /// checkpoint; the chunk in flight is done again).
    pub time_slice: Duration,
    /// Slowest average upload rate, in bytes/s, checked once the upload has run for
    /// `upload_idle`: a client trickling bytes cannot hold a queue place for long.
    pub upload_min_rate: u64,
    /// Attempts after a transient failure (connection lost, server restart, ...), each resuming
    /// from the job's checkpoint.
    pub retries: u32,
    /// Wait before the first retry; doubled each time, at most a minute.
    pub retry_backoff: Duration,
    pub load: LoadConfig,
}

impl LoadsSettings {
    pub fn new(spool_dir: impl Into<PathBuf>) -> Self {
        LoadsSettings {
            spool_dir: spool_dir.into(),
            max_load_bytes: 16 << 30,
            upload_idle: Duration::from_secs(60),
            max_concurrent: 1,
            max_queued: 16,
            max_queued_per_tenant: 4,
            max_running_per_tenant: 1,
            time_slice: Duration::from_secs(30),
            upload_min_rate: 16 << 10,
            retries: 5,
            retry_backoff: Duration::from_secs(1),
            load: LoadConfig::default(),
        }
    }
}

/// A job as known in memory (between its upload and its end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MemState {
    /// Waiting for a run slot.
    Queued,
    /// Loading, or waiting to retry after a transient failure.
    Running,
    /// Failed for good. Shown only when lily.load_jobs has no row (the loader failed before
    /// creating it, e.g. the tenant was deleted); a row says more.
    Failed(String),
}

impl MemState {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            MemState::Queued => "queued",
            MemState::Running => "running",
            MemState::Failed(_) => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct MemJob {
    pub tenant: String,
    pub state: MemState,
    pub accepted_at: SystemTime,
    pub bytes: u64,
}

/// What the POST answers.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub job_id: String,
    pub status: &'static str,
    pub bytes: u64,
}

/// Who asked for a spooled file and how to read it: `<job_id>.json` next to `<job_id>.load`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sidecar {
    version: u32,
    job_id: String,
    tenant: String,
    principal: String,
    request_id: String,
    /// `ndjson`, `parquet`, or absent to detect.
    format: Option<String>,
    bytes: u64,
}

/// The background loads of one server: a bounded queue, a bounded number running, one
/// [`Throttle`] for all of them. Cheap to clone.
#[derive(Clone)]
pub struct Loads {
    inner: Arc<Inner>,
}

struct Inner {
    settings: LoadsSettings,
    pg: lily_pg::ConnectionConfig,
    /// One bulk chunk at a time across all API loads: bulk lanes of different tenants take
    /// turns, so loads use about one connection's worth of heavy server work and the
    /// near-real-time writes of the pool stay quick. Structural lanes run freely.
    throttle: Throttle,
    scheduler: Arc<Scheduler>,
    queue_slots: Arc<Semaphore>,
    /// Accepted loads per tenant that still hold a queue place.
    queued: Arc<Mutex<HashMap<String, usize>>>,
    jobs: Mutex<HashMap<String, MemJob>>,
    /// `None` once shut down: no new job starts.
    tasks: Mutex<Option<JoinSet<()>>>,
    /// True once the shutdown has cancelled every task.
    stopped: tokio::sync::watch::Sender<bool>,
}

impl Loads {
    /// Creates the spool directory if needed. Call [`Loads::start`] to resume what a previous
    /// process left.
    pub fn new(
        settings: LoadsSettings,
        pg: lily_pg::ConnectionConfig,
    ) -> Result<Loads, LoadsError> {
        let mut dir = std::fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
        dir.create(&settings.spool_dir)?;
        Ok(Loads {
            inner: Arc::new(Inner {
                throttle: Throttle::new(1),
                scheduler: Scheduler::new(
                    settings.max_concurrent.max(1),
                    settings.max_running_per_tenant.max(1),
                ),
                queue_slots: Arc::new(Semaphore::new(settings.max_queued.max(1))),
                queued: Arc::new(Mutex::new(HashMap::new())),
                jobs: Mutex::new(HashMap::new()),
                tasks: Mutex::new(Some(JoinSet::new())),
                stopped: tokio::sync::watch::Sender::new(false),
                settings,
                pg,
            }),
        })
    }

    pub fn settings(&self) -> &LoadsSettings {
        &self.inner.settings
    }

    /// Resumes the spooled files of a previous process (their jobs are loaded unless already
    /// done) and removes the leftovers of interrupted uploads. Returns how many were resumed.
    pub async fn start(&self) -> Result<usize, LoadsError> {
        let dir = self.inner.settings.spool_dir.clone();
        let found = tokio::task::spawn_blocking(move || scan_spool(&dir))
            .await
            .map_err(|e| LoadsError::Spool(std::io::Error::other(e)))??;
        let n = found.len();
        for sidecar in found {
            tracing::info!(job = %sidecar.job_id, tenant = %sidecar.tenant, "Resuming a spooled load.");
            let bytes = sidecar.bytes;
            if !self.inner.register(&sidecar.job_id, &sidecar.tenant, bytes) {
                continue;
            }
            // Resumed jobs take no queue slot: they were accepted already and must not be
            // refused now; the queue bounds new uploads only.
            if !self.spawn(sidecar, None) {
                return Err(LoadsError::ShuttingDown);
            }
        }
        Ok(n)
    }

    /// Cancels the running loads (each open chunk rolls back; the jobs resume on the next
    /// start) and starts no new ones. Idempotent; every call returns once the loads ended.
    pub async fn shutdown(&self) {
        let tasks = self.inner.tasks.lock().expect("loads tasks").take();
        match tasks {
            Some(mut tasks) => {
                tasks.shutdown().await;
                self.inner.stopped.send_replace(true);
            }
            None => {
                let mut stopped = self.inner.stopped.subscribe();
                // The sender lives in `inner`, which `self` keeps alive.
                let _ = stopped.wait_for(|s| *s).await;
            }
        }
    }

    /// The in-memory state of a job, if it is queued, running or ended without a row.
    pub(crate) fn status_of(&self, job_id: &str) -> Option<MemJob> {
        self.inner
            .jobs
            .lock()
            .expect("loads jobs")
            .get(job_id)
            .cloned()
    }

    /// Spools an upload and queues its load. `format` comes from the content type (`None`:
    /// detect). The caller has authenticated and authorized the principal.
    pub(crate) async fn accept(
        &self,
        tenant: &str,
        principal: &str,
        request_id: &str,
        content_type: Option<&str>,
        content_length: Option<u64>,
        body: Body,
    ) -> Result<Accepted, LoadsError> {
        let inner = &self.inner;
        let limit = inner.settings.max_load_bytes;
        let format = format_of(content_type)?;
        if content_length.is_some_and(|n| n > limit) {
            return Err(LoadsError::TooLarge { limit });
        }
        if content_length == Some(0) {
            return Err(LoadsError::Empty);
        }
        if inner.tasks.lock().expect("loads tasks").is_none() {
            return Err(LoadsError::ShuttingDown);
        }
        // The slot is taken before the body is read, so a full queue costs the client one
        // round trip, not an upload.
        let queue_permit = QueuePlace::take(inner, tenant)?;

        let dir = &inner.settings.spool_dir;
        let upload = Removal::new(dir.join(format!("upload-{request_id}.{PART_EXT}")));
        let idle = inner.settings.upload_idle;
        let bytes = spool_body(
            upload.path(),
            body,
            limit,
            idle,
            inner.settings.upload_min_rate,
        )
        .await?;
        if bytes == 0 {
            return Err(LoadsError::Empty);
        }
        let (t, p) = (tenant.to_string(), upload.path().to_path_buf());
        let job_id = tokio::task::spawn_blocking(move || lily_load::job_id_of(&t, &p, format))
            .await
            .map_err(|e| LoadsError::Spool(std::io::Error::other(e)))?
            .map_err(LoadsError::Inspect)?;

        // The same file (content, size and modification time) is the same job: answer with it.
        if !inner.register(&job_id, tenant, bytes) {
            let status = self.accepted_status(&job_id);
            return Ok(Accepted {
                job_id,
                status,
                bytes,
            });
        }
        let data = dir.join(format!("{job_id}.{DATA_EXT}"));
        let sidecar_path = dir.join(format!("{job_id}.{SIDECAR_EXT}"));
        let sidecar = Sidecar {
            version: 1,
            job_id: job_id.clone(),
            tenant: tenant.to_string(),
            principal: principal.to_string(),
            request_id: request_id.to_string(),
            format: format.map(|f| f.as_str().to_string()),
            bytes,
        };
        let committed = commit_upload(upload, &data, &sidecar_path, &sidecar).await;
        if let Err(e) = committed {
            inner.forget(&job_id);
            return Err(e);
        }
        if !self.spawn(sidecar, Some(queue_permit)) {
            // Shut down while uploading. The client is told to retry, so the next start must
            // not load this copy as well.
            inner.forget(&job_id);
            let _ = tokio::fs::remove_file(&sidecar_path).await;
            let _ = tokio::fs::remove_file(&data).await;
            return Err(LoadsError::ShuttingDown);
        }
        let status = self.accepted_status(&job_id);
        metrics::counter!("lily_ingest_loads_accepted_total").increment(1);
        Ok(Accepted {
            job_id,
            status,
            bytes,
        })
    }

    /// What the 202 says: `running` once the job has a run slot, else `queued` (also when it
    /// ended already; GET tells how).
    fn accepted_status(&self, job_id: &str) -> &'static str {
        match self.status_of(job_id).map(|j| j.state) {
            Some(MemState::Running) => "running",
            _ => "queued",
        }
    }

    /// Starts the job's task; false when shut down.
    fn spawn(&self, job: Sidecar, queue_permit: Option<QueuePlace>) -> bool {
        let inner = Arc::clone(&self.inner);
        let mut tasks = self.inner.tasks.lock().expect("loads tasks");
        let Some(tasks) = tasks.as_mut() else {
            return false;
        };
        // Reap finished tasks so the set stays as small as the work in flight.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move { inner.run_job(job, queue_permit).await });
        true
    }
}

/// A place in the queue: one of `max_queued` and one of the tenant's
/// `max_queued_per_tenant`, both given back when dropped (when the load starts running, or its
/// upload ends without a job).
pub(crate) struct QueuePlace {
    _permit: OwnedSemaphorePermit,
    tenant: String,
    queued: Arc<Mutex<HashMap<String, usize>>>,
}

impl QueuePlace {
    fn take(inner: &Inner, tenant: &str) -> Result<QueuePlace, LoadsError> {
        let mut queued = inner.queued.lock().expect("loads queue");
        let mine = queued.get(tenant).copied().unwrap_or(0);
        if mine >= inner.settings.max_queued_per_tenant.max(1) {
            return Err(LoadsError::TenantBusy(mine));
        }
        let permit = Arc::clone(&inner.queue_slots)
            .try_acquire_owned()
            .map_err(|_| LoadsError::Busy(inner.settings.max_queued))?;
        *queued.entry(tenant.to_string()).or_default() += 1;
        Ok(QueuePlace {
            _permit: permit,
            tenant: tenant.to_string(),
            queued: Arc::clone(&inner.queued),
        })
    }
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = queued.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                queued.remove(&self.tenant);
            }
        }
    }
}

/// Stops a load at its next chunk once it has had its time slice and another tenant's load
/// waits (the chunk rolls back; the load resumes from its checkpoint at its next turn).
struct Preempt {
    scheduler: Arc<Scheduler>,
    tenant: String,
    until: std::time::Instant,
    fired: std::sync::atomic::AtomicBool,
}

impl lily_load::LoadObserver for Preempt {
    fn before_commit(&self, _chunk: &lily_load::ChunkInfo) -> Result<(), String> {
        if std::time::Instant::now() >= self.until && self.scheduler.others_waiting(&self.tenant) {
            self.fired.store(true, std::sync::atomic::Ordering::Release);
            return Err("giving the run slot to another tenant's load".into());
        }
        Ok(())
    }
}

/// How a turn of a load ended.
enum Turn {
    /// Done or given up: what happens to the spool file, and the error of a job that failed
    /// for its data.
    Ended(Outcome, Option<String>),
    /// It gave its slot to another tenant's load and waits for its next turn.
    Yielded,
}

/// How one run of a load failed.
enum Attempt {
    /// Before the loader started: connecting, looking up the job.
    Setup(LoadError),
    Load(LoadError),
}

/// Errors of the file's content (or of its tenant): running the load again cannot help.
fn is_data_error(e: &LoadError) -> bool {
    match e {
        LoadError::BadRow { .. }
        | LoadError::BadFile { .. }
        | LoadError::NoSuchTenant(_)
        | LoadError::InvalidTenant(_) => true,
        LoadError::ChunkRejected { .. } => !e.is_retryable(),
        _ => false,
    }
}

/// How a job ended, for the spool.
enum Outcome {
    /// Done, or failed for its data: the spool file goes.
    Final,
    /// Failed otherwise (transient failures outlasted the retries, a server fault): the file
    /// stays for the next start.
    Kept,
}

impl Inner {
    /// Records a new job as queued; false if it is known already (still active).
    fn register(&self, job_id: &str, tenant: &str, bytes: u64) -> bool {
        let mut jobs = self.jobs.lock().expect("loads jobs");
        if jobs
            .get(job_id)
            .is_some_and(|j| !matches!(j.state, MemState::Failed(_)))
        {
            return false;
        }
        jobs.insert(
            job_id.to_string(),
            MemJob {
                tenant: tenant.to_string(),
                state: MemState::Queued,
                accepted_at: SystemTime::now(),
                bytes,
            },
        );
        true
    }

    fn set_state(&self, job_id: &str, state: MemState) {
        let mut jobs = self.jobs.lock().expect("loads jobs");
        if let Some(j) = jobs.get_mut(job_id) {
            j.state = state;
        }
        if jobs.len() > MAX_REMEMBERED_FAILURES {
            // Forget the oldest failures that GET could only show from memory.
            let mut failed: Vec<(SystemTime, String)> = jobs
                .iter()
                .filter(|(_, j)| matches!(j.state, MemState::Failed(_)))
                .map(|(id, j)| (j.accepted_at, id.clone()))
                .collect();
            failed.sort();
            let excess = jobs.len() - MAX_REMEMBERED_FAILURES;
            for (_, id) in failed.into_iter().take(excess) {
                jobs.remove(&id);
            }
        }
    }

    fn forget(&self, job_id: &str) {
        self.jobs.lock().expect("loads jobs").remove(job_id);
    }

    async fn run_job(self: Arc<Self>, job: Sidecar, queue_place: Option<QueuePlace>) {
        let mut queue_place = queue_place;
        let (outcome, failure) = loop {
            let slot = self.scheduler.acquire(&job.tenant).await;
            drop(queue_place.take());
            self.set_state(&job.job_id, MemState::Running);
            metrics::gauge!("lily_ingest_loads_running").increment(1.0);
            let turn = self.load_with_retries(&job, &slot).await;
            metrics::gauge!("lily_ingest_loads_running").decrement(1.0);
            match turn {
                Turn::Ended(outcome, failure) => break (outcome, failure),
                Turn::Yielded => {
                    drop(slot);
                    self.set_state(&job.job_id, MemState::Queued);
                    metrics::counter!("lily_ingest_loads_yielded_total").increment(1);
                    tracing::info!(job = %job.job_id, tenant = %job.tenant, "Load gave its slot to another tenant's; it resumes at its next turn.");
                }
            }
        };
        let dir = &self.settings.spool_dir;
        if matches!(outcome, Outcome::Final) {
            // The sidecar first: a data file without one is removed as a leftover at start.
            for ext in [SIDECAR_EXT, DATA_EXT] {
                let p = dir.join(format!("{}.{ext}", job.job_id));
                if let Err(e) = tokio::fs::remove_file(&p).await {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(file = %p.display(), error = %e, "Could not remove a spooled load.");
                    }
                }
            }
        }
        match failure {
            Some(reason) => self.set_state(&job.job_id, MemState::Failed(reason)),
            None => self.forget(&job.job_id),
        }
    }

    /// Runs the load for one turn of `slot`, retrying transient failures with backoff.
    async fn load_with_retries(&self, job: &Sidecar, slot: &Slot) -> Turn {
        let mut attempt = 0u32;
        let preempt = Arc::new(Preempt {
            scheduler: Arc::clone(&self.scheduler),
            tenant: job.tenant.clone(),
            until: slot.since() + self.settings.time_slice,
            fired: std::sync::atomic::AtomicBool::new(false),
        });
        loop {
            let error = match self.load_once(job, Arc::clone(&preempt)).await {
                Ok(()) => {
                    metrics::counter!("lily_ingest_loads_total", "outcome" => "done").increment(1);
                    return Turn::Ended(Outcome::Final, None);
                }
                Err(_) if preempt.fired.load(std::sync::atomic::Ordering::Acquire) => {
                    return Turn::Yielded;
                }
                Err(e) => e,
            };
            let (transient, error) = match error {
                // Reaching the metastore at all: whatever the reason (down, a password being
                // rotated, migrations not applied yet), the upload is not at fault.
                Attempt::Setup(e) => (true, e),
                Attempt::Load(e) => (e.is_retryable(), e),
            };
            if transient && attempt < self.settings.retries {
                let wait = self
                    .settings
                    .retry_backoff
                    .saturating_mul(1 << attempt.min(16))
                    .min(Duration::from_secs(60));
                attempt += 1;
                tracing::warn!(job = %job.job_id, tenant = %job.tenant, %error, attempt, ?wait, "Load failed; retrying from its checkpoint.");
                tokio::time::sleep(wait).await;
                continue;
            }
            if is_data_error(&error) {
                metrics::counter!("lily_ingest_loads_total", "outcome" => "failed").increment(1);
                tracing::info!(job = %job.job_id, tenant = %job.tenant, %error, "Load failed.");
                // Remembered for GET: the row, when the loader got as far as writing one, says
                // the same; an error before that (the tenant was deleted) has none.
                return Turn::Ended(Outcome::Final, Some(error.without_path()));
            }
            // Transient errors past the retries, and faults of the server's own (a role without
            // a grant, an unreadable spool): the file stays for the next start.
            metrics::counter!("lily_ingest_loads_total", "outcome" => "kept").increment(1);
            tracing::error!(job = %job.job_id, tenant = %job.tenant, %error, "Load failed; the file stays spooled and resumes on the next start.");
            return Turn::Ended(Outcome::Kept, None);
        }
    }

    async fn load_once(&self, job: &Sidecar, preempt: Arc<Preempt>) -> Result<(), Attempt> {
        let pg = |context: &str| {
            let context = context.to_string();
            move |source| Attempt::Setup(LoadError::Postgres { context, source })
        };
        // The connection ends when `client` is dropped (also when this future is cancelled:
        // the server then rolls the open chunk back).
        let mut client = lily_pg::connect(&self.pg, lily_pg::Role::Load)
            .await
            .map_err(|e| Attempt::Setup(LoadError::Connect(e)))?;
        let status: Option<String> = client
            .query_opt(
                "SELECT status FROM lily.load_jobs WHERE job_id = $1",
                &[&job.job_id],
            )
            .await
            .map_err(pg("looking up the load job"))?
            .map(|r| r.get(0));
        if status.as_deref() == Some("done") {
            tracing::info!(job = %job.job_id, "Spooled load was already done.");
            return Ok(());
        }
        let path = self
            .settings
            .spool_dir
            .join(format!("{}.{DATA_EXT}", job.job_id));
        let mut request =
            LoadRequest::new(&job.tenant, &job.principal, path).request_id(job.request_id.clone());
        match job.format.as_deref() {
            Some("ndjson") => request = request.format(Format::Ndjson),
            Some("parquet") => request = request.format(Format::Parquet),
            _ => {}
        }
        // No extra bulk writers (no `with_connect`): the server keeps one bulk chunk in flight
        // across all API loads, see `Inner::throttle`.
        let loader = Loader::new(self.settings.load.clone())
            .with_throttle(self.throttle.clone())
            .with_observer(preempt);
        let report = loader
            .load(&mut client, &request)
            .await
            .map_err(Attempt::Load)?;
        if report.job_id != job.job_id {
            // The file changed under the spool (its fingerprint did): still loaded, but say so.
            tracing::warn!(spooled = %job.job_id, loaded = %report.job_id, "The spooled file's job id changed.");
        }
        tracing::info!(job = %report.job_id, tenant = %job.tenant, bulk_rows = report.bulk.rows,
            structural_rows = report.structural.rows, seconds = report.elapsed.as_secs_f64(), "Load done.");
        Ok(())
    }
}

/// The load format a content type names; `None` for octet-stream (detected from the file).
fn format_of(content_type: Option<&str>) -> Result<Option<Format>, LoadsError> {
    let raw = content_type.unwrap_or("");
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-ndjson" | "application/jsonl" => Ok(Some(Format::Ndjson)),
        "application/vnd.apache.parquet" => Ok(Some(Format::Parquet)),
        "application/octet-stream" => Ok(None),
        _ => Err(LoadsError::UnsupportedMediaType(raw.to_string())),
    }
}

/// A spool file removed when dropped (an upload that failed or whose request was cancelled),
/// unless kept.
struct Removal {
    path: PathBuf,
    armed: bool,
}

impl Removal {
    fn new(path: PathBuf) -> Self {
        Removal { path, armed: true }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Removal {
    fn drop(&mut self) {
        if self.armed {
            // A metadata operation; cheap enough for the async thread, and it must happen even
            // when the request's future is dropped mid-upload.
            if let Err(e) = std::fs::remove_file(&self.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %self.path.display(), error = %e, "Could not remove a partial upload.");
                }
            }
        }
    }
}

/// Streams the body into a new file, at most `limit` bytes, and fsyncs it. Fails if no frame
/// arrives for `idle`.
async fn spool_body(
    path: &Path,
    mut body: Body,
    limit: u64,
    idle: Duration,
    min_rate: u64,
) -> Result<u64, LoadsError> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let file = options.open(path).await?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut n = 0u64;
    let started = tokio::time::Instant::now();
    let mut last_data = started;
    // Woken at least this often to check the idle time and the average rate.
    let tick = idle
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(10));
    loop {
        let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        let frame = match tokio::time::timeout(tick, next).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                if last_data.elapsed() >= idle {
                    return Err(LoadsError::Idle(idle));
                }
                check_rate(started, n, idle, min_rate)?;
                continue;
            }
        };
        let frame = frame.map_err(|e| LoadsError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        n += data.len() as u64;
        if n > limit {
            return Err(LoadsError::TooLarge { limit });
        }
        if !data.is_empty() {
            last_data = tokio::time::Instant::now();
        }
        out.write_all(&data).await?;
        check_rate(started, n, idle, min_rate)?;
    }
    out.flush().await?;
    out.into_inner().sync_all().await?;
    Ok(n)
}

/// Once an upload has run for `grace`, its average rate must be at least `min_rate` bytes/s.
fn check_rate(
    started: tokio::time::Instant,
    received: u64,
    grace: Duration,
    min_rate: u64,
) -> Result<(), LoadsError> {
    let elapsed = started.elapsed();
    if min_rate > 0
        && elapsed >= grace
        && (received as f64) < min_rate as f64 * elapsed.as_secs_f64()
    {
        return Err(LoadsError::TooSlow(min_rate));
    }
    Ok(())
}

/// Moves the upload to `<job_id>.load`, then writes the sidecar (write, fsync, rename) and
/// fsyncs the directory: once this returns, a crash cannot lose the accepted upload.
async fn commit_upload(
    upload: Removal,
    data: &Path,
    sidecar_path: &Path,
    sidecar: &Sidecar,
) -> Result<(), LoadsError> {
    let text = serde_json::to_vec(sidecar).map_err(std::io::Error::other)?;
    let (from, data, sidecar_path) = (
        upload.path().to_path_buf(),
        data.to_path_buf(),
        sidecar_path.to_path_buf(),
    );
    let done = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        // Renaming keeps the modification time, so the job id computed above stays valid.
        std::fs::rename(&from, &data)?;
        let data_removal = Removal::new(data.clone());
        let tmp = sidecar_path.with_extension(format!("{SIDECAR_EXT}.{PART_EXT}"));
        let tmp_removal = Removal::new(tmp.clone());
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &sidecar_path)?;
        tmp_removal.keep();
        if let Some(dir) = sidecar_path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        data_removal.keep();
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?;
    match done {
        Ok(()) => {
            upload.keep();
            Ok(())
        }
        Err(e) => {
            // The upload was maybe renamed already; `upload` removes it if not.
            Err(e.into())
        }
    }
}

/// The complete uploads of the spool; removes incomplete ones (no sidecar, or an upload or
/// sidecar still being written when the previous process stopped). Blocking.
fn scan_spool(dir: &Path) -> Result<Vec<Sidecar>, LoadsError> {
    let mut sidecars = Vec::new();
    let mut data = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            PART_EXT => remove_leftover(&path),
            SIDECAR_EXT => sidecars.push(path),
            DATA_EXT => data.push(path),
            _ => {
                tracing::warn!(file = %path.display(), "Unknown file in the load spool; left alone.")
            }
        }
    }
    let mut found = Vec::new();
    for path in sidecars {
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Sidecar>(&b).map_err(|e| e.to_string()));
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        match parsed {
            Ok(s) if s.version == 1 && s.job_id == stem && is_job_id(stem) => {
                if dir.join(format!("{stem}.{DATA_EXT}")).is_file() {
                    found.push(s);
                } else {
                    remove_leftover(&path);
                }
            }
            Ok(_) | Err(_) => {
                tracing::error!(file = %path.display(), error = ?parsed.err(), "Unreadable load sidecar; its upload is left in the spool.");
            }
        }
    }
    for path in data {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if !dir.join(format!("{stem}.{SIDECAR_EXT}")).exists() {
            remove_leftover(&path);
        }
    }
    found.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    Ok(found)
}

fn remove_leftover(path: &Path) {
    tracing::info!(file = %path.display(), "Removing an incomplete upload from the load spool.");
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(file = %path.display(), error = %e, "Could not remove it.");
    }
}

/// A loader job id: 32 lowercase hex digits.
pub(crate) fn is_job_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// RFC 3339 in UTC with microseconds, as the GET answers timestamps read from the database.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            format_of(Some("application/x-ndjson")).unwrap(),
            Some(Format::Ndjson)
        );
        assert_eq!(
            format_of(Some("Application/JSONL; charset=utf-8")).unwrap(),
            Some(Format::Ndjson)
        );
        assert_eq!(
            format_of(Some("application/vnd.apache.parquet")).unwrap(),
            Some(Format::Parquet)
        );
        assert_eq!(format_of(Some("application/octet-stream")).unwrap(), None);
        for bad in [None, Some("application/json"), Some("text/plain"), Some("")] {
            assert!(matches!(
                format_of(bad),
                Err(LoadsError::UnsupportedMediaType(_))
            ));
        }
    }

    #[test]
    fn job_ids() {
        assert!(is_job_id("0123456789abcdef0123456789abcdef"));
        for bad in [
            "",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "../../etc/passwd0123456789abcdef",
        ] {
            assert!(!is_job_id(bad), "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(951_782_400_000_123);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000123Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20.000000Z"
        );
    }

    #[test]
    fn the_spool_scan_keeps_complete_uploads_only() {
        let dir = std::env::temp_dir().join(format!("lily-spool-test-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let sidecar = Sidecar {
            version: 1,
            job_id: id.into(),
            tenant: "acme".into(),
            principal: "key:x".into(),
            request_id: "r".into(),
            format: None,
            bytes: 3,
        };
        std::fs::write(dir.join(format!("{id}.load")), b"{}\n").unwrap();
        std::fs::write(
            dir.join(format!("{id}.json")),
            serde_json::to_vec(&sidecar).unwrap(),
        )
        .unwrap();
        let orphan = "fedcba9876543210fedcba9876543210";
        std::fs::write(dir.join(format!("{orphan}.load")), b"x").unwrap();
        std::fs::write(dir.join("upload-1.part"), b"x").unwrap();
        let found = scan_spool(&dir).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].tenant, "acme");
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [format!("{id}.json"), format!("{id}.load")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
