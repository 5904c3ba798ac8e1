//! Turning a lane's records into chunks: binary COPY data for the staging tables, plus where in
//! the file the chunk ends. Runs on a blocking thread, one chunk ahead of the database.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::error::{LoadError, RowLocation};
use crate::partition::HashPartitions;
use crate::record::{asset_guid, AssetRow, LaneRules, LineageRow, Record};
use crate::source::{Checkpoint, RecordSource};
use crate::Lane;

/// Binary COPY header: signature, flags, header extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
const COPY_TRAILER: &[u8] = &[0xff, 0xff];
/// The jsonb binary format version byte.
const JSONB_VERSION: u8 = 1;

/// One transaction's worth of a lane.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// COPY data for `lily_load_assets_v1`: distinct guids, sorted.
    pub assets: Option<Bytes>,
    /// Input asset rows in the chunk (a qualified name repeated within it counts each time).
    pub asset_rows: u64,
    /// Distinct assets staged (the last row of a repeated qualified name wins).
    pub staged_assets: u64,
    /// COPY data for `lily_load_edges_v1`.
    pub edges: Option<Bytes>,
    pub edge_rows: u64,
    pub start: Checkpoint,
    pub end: Checkpoint,
    pub first: Option<RowLocation>,
    pub last: Option<RowLocation>,
    /// The lane reached the end of the file with this chunk.
    pub final_chunk: bool,
    /// An asset of this chunk is also in one of the [`ReadLane::overlap_window`] chunks before
    /// it: it must not be written while they are in flight (two open transactions inserting one
    /// key wait on each other).
    pub overlaps_recent: bool,
    /// The file's size in what `end.position` counts (bytes or rows), for progress.
    pub total: u64,
}

/// How big a chunk may get. `rows` is shared with the writer, which shrinks it when transactions
/// run longer than their target.
#[derive(Debug)]
pub(crate) struct ChunkLimits {
    pub rows: AtomicUsize,
    pub bytes: usize,
    pub max_age: Duration,
}

struct StagedAsset {
    guid: u128,
    /// Partition of `meta.assets` (0 until [`ChunkBuilder::finish`] knows the partitioning).
    part: u32,
    seq: u32,
    start: u32,
    end: u32,
}

struct ChunkBuilder<'t> {
    tenant: &'t str,
    tuples: Vec<u8>,
    staged: Vec<StagedAsset>,
    edges: Vec<u8>,
    edge_rows: u64,
    start: Checkpoint,
    first: Option<RowLocation>,
    last: Option<RowLocation>,
    opened: Option<Instant>,
    /// Consecutive columns share their parent: remember the last parent's guid.
    parent_cache: Option<(String, Uuid)>,
}

impl<'t> ChunkBuilder<'t> {
    fn new(tenant: &'t str, start: Checkpoint) -> Self {
        ChunkBuilder {
            tenant,
            tuples: Vec::new(),
            staged: Vec::new(),
            edges: Vec::new(),
            edge_rows: 0,
            start,
            first: None,
            last: None,
            opened: None,
            parent_cache: None,
        }
    }

    fn rows(&self) -> usize {
        self.staged.len() + self.edge_rows as usize
    }

    fn is_empty(&self) -> bool {
        self.rows() == 0
    }

    fn bytes(&self) -> usize {
        self.tuples.len() + self.edges.len()
    }

    fn note(&mut self, at: RowLocation) {
        if self.first.is_none() {
            self.first = Some(at);
            self.opened = Some(Instant::now());
        }
        self.last = Some(at);
    }

    fn push_asset(&mut self, a: &AssetRow<'_>, at: RowLocation) {
        self.note(at);
        let guid = asset_guid(self.tenant, &a.qualified_name);
        let parent = a
            .parent_qualified_name
            .as_deref()
            .map(|p| match &self.parent_cache {
                Some((qn, g)) if qn == p => *g,
                _ => {
                    let g = asset_guid(self.tenant, p);
                    self.parent_cache = Some((p.to_string(), g));
                    g
                }
            });
        let start = self.tuples.len();
        let t = &mut self.tuples;
        t.extend_from_slice(&7i16.to_be_bytes());
        put_bytes(t, guid.as_bytes());
        match parent {
            Some(p) => put_bytes(t, p.as_bytes()),
            None => t.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        put_bytes(t, a.type_name.as_bytes());
        put_bytes(t, a.status.as_str().as_bytes());
        put_bytes(t, a.name.as_bytes());
        put_bytes(t, a.qualified_name.as_bytes());
        let attributes = a.attributes.unwrap_or("{}");
        t.extend_from_slice(&(attributes.len() as i32 + 1).to_be_bytes());
        t.push(JSONB_VERSION);
        t.extend_from_slice(attributes.as_bytes());
        self.staged.push(StagedAsset {
            guid: guid.as_u128(),
            part: 0,
            seq: self.staged.len() as u32,
            start: start as u32,
            end: self.tuples.len() as u32,
        });
    }

    fn push_edge(&mut self, e: &LineageRow<'_>, at: RowLocation) {
        self.note(at);
        let up = asset_guid(self.tenant, &e.upstream);
        let down = asset_guid(self.tenant, &e.downstream);
        // Edges without a process use the nil uuid (see meta.lineage_edges).
        let process = e
            .process
            .as_deref()
            .map_or(Uuid::nil(), |p| asset_guid(self.tenant, p));
        let t = &mut self.edges;
        t.extend_from_slice(&3i16.to_be_bytes());
        put_bytes(t, up.as_bytes());
        put_bytes(t, down.as_bytes());
        put_bytes(t, process.as_bytes());
        self.edge_rows += 1;
    }

    fn is_full(&self, limits: &ChunkLimits) -> bool {
        self.rows() >= limits.rows.load(Ordering::Relaxed).max(1)
            || self.bytes() >= limits.bytes
            || self.opened.is_some_and(|t| t.elapsed() >= limits.max_age)
    }

    /// Closes the chunk at `end`. Assets are sorted and deduplicated (the last row of a
    /// qualified name wins): `INSERT ... ON CONFLICT DO UPDATE` cannot touch a row twice in one
    /// statement. The order is by partition of `meta.assets` when `partitions` is known, then
    /// by guid: the server fills one partition's heap and indexes at a time, B-tree inserts
    /// walk each index in order, and concurrent loads lock shared rows in the same order (no
    /// deadlocks between them). Also returns the chunk's distinct guids, sorted.
    fn finish(
        self,
        end: Checkpoint,
        final_chunk: bool,
        partitions: Option<HashPartitions>,
    ) -> (Chunk, Vec<u128>) {
        let asset_rows = self.staged.len() as u64;
        let mut staged = self.staged;
        if let Some(p) = partitions {
            // Once per row, not per comparison.
            for s in &mut staged {
                s.part = p.remainder(s.guid);
            }
        }
        staged.sort_unstable_by_key(|s| (s.part, s.guid, s.seq));
        let mut assets = None;
        let mut distinct = 0u64;
        let mut guids = Vec::new();
        if !staged.is_empty() {
            guids.reserve(staged.len());
            let mut out =
                Vec::with_capacity(COPY_HEADER.len() + self.tuples.len() + COPY_TRAILER.len());
            out.extend_from_slice(COPY_HEADER);
            for (i, s) in staged.iter().enumerate() {
                if staged.get(i + 1).is_some_and(|next| next.guid == s.guid) {
                    continue;
                }
                out.extend_from_slice(&self.tuples[s.start as usize..s.end as usize]);
                guids.push(s.guid);
                distinct += 1;
            }
            out.extend_from_slice(COPY_TRAILER);
            assets = Some(Bytes::from(out));
            if partitions.is_some() {
                guids.sort_unstable();
            }
        }
        let edges = (self.edge_rows > 0).then(|| {
            let mut out =
                Vec::with_capacity(COPY_HEADER.len() + self.edges.len() + COPY_TRAILER.len());
            out.extend_from_slice(COPY_HEADER);
            out.extend_from_slice(&self.edges);
            out.extend_from_slice(COPY_TRAILER);
            Bytes::from(out)
        });
        let chunk = Chunk {
            assets,
            asset_rows,
            staged_assets: distinct,
            edges,
            edge_rows: self.edge_rows,
            start: self.start,
            end,
            first: self.first,
            last: self.last,
            final_chunk,
            overlaps_recent: false,
            total: 0,
        };
        (chunk, guids)
    }
}

fn put_bytes(t: &mut Vec<u8>, b: &[u8]) {
    t.extend_from_slice(&(b.len() as i32).to_be_bytes());
    t.extend_from_slice(b);
}

/// What the reader thread needs.
pub(crate) struct ReadLane {
    pub lane: Lane,
    pub tenant: String,
    pub rules: LaneRules,
    pub limits: Arc<ChunkLimits>,
    /// How many chunks before each one may still be in flight when it is written (writers - 1):
    /// the chunks [`Chunk::overlaps_recent`] is computed against.
    pub overlap_window: usize,
    /// The partitioning of `meta.assets`, to send rows grouped by partition; `None`: guid order.
    pub partitions: Option<HashPartitions>,
}

/// Whether two sorted lists share an element.
fn intersects(a: &[u128], b: &[u128]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

/// Reads `source` to its end, sending this lane's rows as chunks. Rows of the other lane are
/// read (and checked) and skipped. A bad row ends the lane: the rows before it go out as a last
/// chunk, then the error. Returns early, quietly, when the receiver is gone (the load failed or
/// was dropped).
pub(crate) fn read_lane(
    mut source: Box<dyn RecordSource>,
    job: ReadLane,
    tx: mpsc::Sender<Result<Chunk, LoadError>>,
) {
    let total = source.total();
    // The guids of the last `overlap_window` chunks.
    let mut recent: VecDeque<Vec<u128>> = VecDeque::with_capacity(job.overlap_window);
    let mut close = |b: ChunkBuilder<'_>, end: Checkpoint, final_chunk: bool| {
        let (mut chunk, guids) = b.finish(end, final_chunk, job.partitions);
        chunk.total = total;
        if job.overlap_window > 0 {
            chunk.overlaps_recent = recent.iter().any(|r| intersects(r, &guids));
            if recent.len() == job.overlap_window {
                recent.pop_front();
            }
            recent.push_back(guids);
        }
        chunk
    };
    // Just past the last row read successfully: where a chunk cut short by a bad row ends.
    let mut consumed = source.checkpoint();
    let mut builder = ChunkBuilder::new(&job.tenant, consumed);
    loop {
        match source.next_record() {
            Ok(Some((record, at))) => {
                if record.lane(&job.rules) == job.lane {
                    match &record {
                        Record::Asset(a) => builder.push_asset(a, at),
                        Record::Lineage(e) => builder.push_edge(e, at),
                    }
                }
            }
            Ok(None) => {
                let _ = tx.blocking_send(Ok(close(builder, source.checkpoint(), true)));
                return;
            }
            Err(e) => {
                if !builder.is_empty()
                    && tx
                        .blocking_send(Ok(close(builder, consumed, false)))
                        .is_err()
                {
                    return;
                }
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
        consumed = source.checkpoint();
        if builder.is_full(&job.limits) {
            let full = std::mem::replace(&mut builder, ChunkBuilder::new(&job.tenant, consumed));
            if tx.blocking_send(Ok(close(full, consumed, false))).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::intersects;

    #[test]
    fn sorted_lists_intersect() {
        assert!(intersects(&[1, 4, 9], &[2, 3, 9]));
        assert!(intersects(&[5], &[1, 5, 7]));
        assert!(!intersects(&[1, 4, 9], &[2, 3, 10]));
        assert!(!intersects(&[], &[1]));
        assert!(!intersects(&[u128::MAX], &[0]));
    }
}
