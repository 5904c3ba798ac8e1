//! Load jobs: which file a load is, and how far it got (`lily.load_jobs`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::error::LoadError;
use crate::source::{Checkpoint, Format};
use crate::Lane;

/// How much of each end of a file goes into its fingerprint.
const FINGERPRINT_SPAN: u64 = 1 << 20;

/// What a load needs to know about its file before reading it.
#[derive(Debug, Clone)]
pub(crate) struct FileInfo {
    pub path: PathBuf,
    pub format: Format,
    pub size: u64,
    /// Hex SHA-256 over the size, the modification time and the first and last MiB. Cheap for a
    /// 10 GB file, and any rewrite of the file changes it (at least through the mtime).
    pub fingerprint: String,
}

/// Reads the file's fingerprint and detects its format (`PAR1` magic or else NDJSON), unless
/// the caller named the format. Blocking.
pub(crate) fn inspect(path: &Path, format: Option<Format>) -> Result<FileInfo, LoadError> {
    let io = |source| LoadError::Io {
        file: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(LoadError::BadFile {
            file: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    let size = meta.len();
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut head = Vec::with_capacity(FINGERPRINT_SPAN.min(size) as usize);
    (&mut f)
        .take(FINGERPRINT_SPAN)
        .read_to_end(&mut head)
        .map_err(io)?;
    let mut tail = Vec::new();
    if size > FINGERPRINT_SPAN {
        // The last MiB, or what follows the head when the file is shorter than 2 MiB.
        let from = size.saturating_sub(FINGERPRINT_SPAN).max(FINGERPRINT_SPAN);
        f.seek(SeekFrom::Start(from)).map_err(io)?;
        f.take(FINGERPRINT_SPAN)
            .read_to_end(&mut tail)
            .map_err(io)?;
    }
    let mut h = Sha256::new();
    h.update(b"lily-load fingerprint v1\0");
    h.update(size.to_be_bytes());
    h.update(mtime_ns.to_be_bytes());
    h.update(&head);
    h.update(&tail);
    let format = format.unwrap_or(if head.starts_with(b"PAR1") {
        Format::Parquet
    } else {
        Format::Ndjson
    });
    Ok(FileInfo {
        path: path.to_path_buf(),
        format,
        size,
        fingerprint: hex(&h.finalize()),
    })
}

/// The job of loading this file into this tenant: 32 hex digits.
pub(crate) fn job_id(tenant: &str, fingerprint: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"lily-load job v1\0");
    h.update(tenant.as_bytes());
    h.update(b"\0");
    h.update(fingerprint.as_bytes());
    hex(&h.finalize()[..16])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A lane's committed state.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LaneState {
    pub checkpoint: Checkpoint,
    pub done: bool,
}

/// A job as recorded: the totals over all its runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobTotals {
    pub structural_rows: u64,
    pub lineage_rows: u64,
    pub bulk_rows: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Runs of the job, this one included.
    pub runs: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct JobState {
    pub done: bool,
    pub structural: LaneState,
    pub bulk: LaneState,
}

const RETURNING: &str = "RETURNING status, structural_position, structural_line, structural_done,
              bulk_position, bulk_line, bulk_done";

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

/// Creates the job, or finds it and counts one more run. `restart` throws away its progress
/// (the file is read again from the start; upserts make that harmless).
pub(crate) async fn start(
    client: &mut Client,
    job_id: &str,
    tenant: &str,
    principal: &str,
    file: &FileInfo,
    restart: bool,
) -> Result<JobState, LoadError> {
    let pg = |e| LoadError::pg(format!("starting load job {job_id}"), e);
    let tx = client.transaction().await.map_err(pg)?;
    if restart {
        tx.execute(
            "UPDATE lily.load_jobs SET status = 'running', structural_position = 0, structural_line = 0,
                 structural_rows = 0, structural_done = false, lineage_rows = 0, bulk_position = 0,
                 bulk_line = 0, bulk_rows = 0, bulk_done = false, inserted = 0, updated = 0,
                 unchanged = 0, finished_at = NULL, last_error = NULL, updated_at = now()
             WHERE job_id = $1",
            &[&job_id],
        )
        .await
        .map_err(pg)?;
    }
    let sql = format!(
        "INSERT INTO lily.load_jobs (job_id, tenant_id, file_name, format, fingerprint, file_size, principal)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (job_id) DO UPDATE
             SET runs = lily.load_jobs.runs + 1, principal = EXCLUDED.principal,
                 file_name = EXCLUDED.file_name, updated_at = now(),
                 status = CASE WHEN lily.load_jobs.status = 'done' THEN 'done' ELSE 'running' END
         {RETURNING}"
    );
    let file_name = file.path.display().to_string();
    let row = tx
        .query_one(
            &sql,
            &[
                &job_id,
                &tenant,
                &file_name,
                &file.format.as_str(),
                &file.fingerprint,
                &(file.size as i64),
                &principal,
            ],
        )
        .await
        .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    let lane = |first: usize| LaneState {
        checkpoint: Checkpoint {
            position: u(row.get(first)),
            line: u(row.get(first + 1)),
        },
        done: row.get(first + 2),
    };
    Ok(JobState {
        done: row.get::<_, &str>(0) == "done",
        structural: lane(1),
        bulk: lane(4),
    })
}

/// The per-lane checkpoint, a compare-and-set on the lane's previous position: parameters are
/// $1 job, $2/$3 new position/line, $4 asset rows, $5 lane done, $6 edge rows, $7-$9 inserted/
/// updated/unchanged, $10/$11 the position/line the chunk started from.
pub(crate) fn checkpoint_sql(lane: Lane) -> String {
    let l = match lane {
        Lane::Structural => "structural",
        Lane::Bulk => "bulk",
    };
    format!(
        "UPDATE lily.load_jobs
            SET {l}_position = $2, {l}_line = $3, {l}_rows = {l}_rows + $4, {l}_done = $5,
                lineage_rows = lineage_rows + $6, inserted = inserted + $7, updated = updated + $8,
                unchanged = unchanged + $9, updated_at = now()
          WHERE job_id = $1 AND {l}_position = $10 AND {l}_line = $11 AND NOT {l}_done"
    )
}

/// Marks the job done (or failed, with the error) and writes the run's audit row, in one
/// transaction. Returns the job's totals.
pub(crate) async fn finish(
    client: &mut Client,
    job_id: &str,
    audit: &Audit<'_>,
    detail: serde_json::Value,
    error: Option<&LoadError>,
) -> Result<JobTotals, LoadError> {
    let pg = |e| LoadError::pg(format!("finishing load job {job_id}"), e);
    let tx = client.transaction().await.map_err(pg)?;
    let totals =
        "RETURNING structural_rows, lineage_rows, bulk_rows, inserted, updated, unchanged, runs";
    let row = match error {
        None => {
            tx.query_one(
                &format!(
                    "UPDATE lily.load_jobs SET status = 'done', last_error = NULL,
                         finished_at = coalesce(finished_at, now()), updated_at = now()
                     WHERE job_id = $1 {totals}"
                ),
                &[&job_id],
            )
            .await
        }
        Some(e) => {
            tx.query_one(
                &format!(
                    "UPDATE lily.load_jobs
                        SET status = CASE WHEN status = 'done' THEN 'done' ELSE 'failed' END,
                            last_error = $2, updated_at = now()
                      WHERE job_id = $1 {totals}"
                ),
                &[&job_id, &e.without_path()],
            )
            .await
        }
    }
    .map_err(pg)?;
    let totals = JobTotals {
        structural_rows: u(row.get(0)),
        lineage_rows: u(row.get(1)),
        bulk_rows: u(row.get(2)),
        inserted: u(row.get(3)),
        updated: u(row.get(4)),
        unchanged: u(row.get(5)),
        runs: row.get::<_, i32>(6).max(0) as u32,
    };
    let mut detail = detail;
    if let Some(obj) = detail.as_object_mut() {
        obj.insert(
            "job".into(),
            serde_json::json!({
                "structural_rows": totals.structural_rows,
                "lineage_rows": totals.lineage_rows,
                "bulk_rows": totals.bulk_rows,
                "inserted": totals.inserted,
                "updated": totals.updated,
                "unchanged": totals.unchanged,
                "runs": totals.runs,
            }),
        );
    }
    tx.execute(
        "INSERT INTO lily.audit_log (tenant_id, principal, action, request_id, detail)
         VALUES ($1, $2, 'load', $3, $4)",
        &[&audit.tenant, &audit.principal, &audit.request_id, &detail],
    )
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(totals)
}

pub(crate) struct Audit<'a> {
    pub tenant: &'a str,
    pub principal: &'a str,
    pub request_id: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_and_job_id() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.ndjson");
        std::fs::write(&p, b"{}\n").unwrap();
        let a = inspect(&p, None).unwrap();
        assert_eq!(a.format, Format::Ndjson);
        assert_eq!(a.size, 3);
        assert_eq!(inspect(&p, None).unwrap().fingerprint, a.fingerprint);
        let id = job_id("t1", &a.fingerprint);
        assert_eq!(id.len(), 32);
        assert_ne!(
            id,
            job_id("t2", &a.fingerprint),
            "the tenant is part of the job"
        );
        // A big file: a change in the last MiB counts even with the same size and mtime.
        let big = dir.path().join("b.ndjson");
        let stamp = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let write = |data: &[u8]| {
            std::fs::write(&big, data).unwrap();
            File::options()
                .write(true)
                .open(&big)
                .unwrap()
                .set_modified(stamp)
                .unwrap();
            inspect(&big, None).unwrap().fingerprint
        };
        let mut data = vec![b'x'; 3 << 20];
        let before = write(&data);
        assert_eq!(write(&data), before);
        *data.last_mut().unwrap() = b'y';
        assert_ne!(write(&data), before);
        let pq = dir.path().join("c");
        std::fs::write(&pq, b"PAR1....").unwrap();
        assert_eq!(inspect(&pq, None).unwrap().format, Format::Parquet);
        assert_eq!(
            inspect(&pq, Some(Format::Ndjson)).unwrap().format,
            Format::Ndjson
        );
    }
}
