//! Streaming readers of input files. Each yields checked [`Record`]s one at a time, borrowing from
//! its own buffers, and can start at a [`Checkpoint`] recorded by an earlier run: a byte offset
//! for NDJSON, a row ordinal for Parquet. Memory is bounded by the read buffer (NDJSON) or one
//! record batch (Parquet), never the file.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use arrow_array::{Array, LargeStringArray, RecordBatch, StringArray, StringViewArray};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;

use crate::error::{LoadError, RowLocation};
use crate::record::{check_fields, Fields, RawAttributes, RawRecord, Record};

/// Where a lane stands in its file: `position` is the byte offset (NDJSON) or row ordinal
/// (Parquet) just past the last consumed row, `line` the number of lines (rows) consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub position: u64,
    pub line: u64,
}

/// The file formats a load reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Ndjson,
    /// Apache Parquet with string columns named like the NDJSON fields.
    Parquet,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Parquet => "parquet",
        }
    }
}

pub(crate) trait RecordSource: Send {
    /// The next record and where it is, or `None` at the end of the file. A malformed row is an
    /// error naming the file and line.
    fn next_record(&mut self) -> Result<Option<(Record<'_>, RowLocation)>, LoadError>;
    /// Just past the record last returned.
    fn checkpoint(&self) -> Checkpoint;
    /// The file's size in bytes (NDJSON) or rows (Parquet): what `Checkpoint::position` counts.
    fn total(&self) -> u64;
}

pub(crate) fn open(
    format: Format,
    path: &Path,
    start: Checkpoint,
    max_line_bytes: usize,
    parquet_batch_rows: usize,
) -> Result<Box<dyn RecordSource>, LoadError> {
    Ok(match format {
        Format::Ndjson => Box::new(NdjsonSource::open(path, start, max_line_bytes)?),
        Format::Parquet => Box::new(ParquetSource::open(path, start, parquet_batch_rows)?),
    })
}

fn io_error(file: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        file: file.to_path_buf(),
        source,
    }
}

/// Which bytes hold the current line: a prefix of the reader's buffer (the common case: no copy)
/// or the scratch buffer (a line that straddled two buffer fills).
#[derive(Clone, Copy)]
enum LineRef {
    Buffered(usize),
    Scratch,
}

struct NdjsonSource {
    file: PathBuf,
    reader: BufReader<File>,
    /// Bytes of the reader's buffer holding the line last returned; consumed on the next call.
    pending: usize,
    scratch: Vec<u8>,
    offset: u64,
    line: u64,
    size: u64,
    max_line_bytes: usize,
}

const READ_BUFFER: usize = 1 << 20;

impl NdjsonSource {
    fn open(path: &Path, start: Checkpoint, max_line_bytes: usize) -> Result<Self, LoadError> {
        let mut f = File::open(path).map_err(io_error(path))?;
        let size = f.metadata().map_err(io_error(path))?.len();
        if start.position > size {
            return Err(LoadError::BadFile {
                file: path.to_path_buf(),
                reason: format!(
                    "the job's checkpoint is at byte {} but the file has {size} bytes",
                    start.position
                ),
            });
        }
        f.seek(SeekFrom::Start(start.position))
            .map_err(io_error(path))?;
        Ok(NdjsonSource {
            file: path.to_path_buf(),
            reader: BufReader::with_capacity(READ_BUFFER, f),
            pending: 0,
            scratch: Vec::new(),
            offset: start.position,
            line: start.line,
            size,
            max_line_bytes,
        })
    }

    /// Advances to the next line (without its `\n`); `None` at the end of the file.
    fn advance(&mut self) -> Result<Option<LineRef>, LoadError> {
        if self.pending > 0 {
            self.reader.consume(self.pending);
            self.pending = 0;
        }
        self.scratch.clear();
        loop {
            let buf = self.reader.fill_buf().map_err(io_error(&self.file))?;
            if buf.is_empty() {
                if self.scratch.is_empty() {
                    return Ok(None);
                }
                // The last line has no newline.
                self.line += 1;
                return Ok(Some(LineRef::Scratch));
            }
            let newline = memchr::memchr(b'\n', buf);
            let available = buf.len();
            match newline {
                Some(i) if self.scratch.is_empty() => {
                    self.pending = i + 1;
                    self.offset += i as u64 + 1;
                    self.line += 1;
                    self.check_length(i)?;
                    return Ok(Some(LineRef::Buffered(i)));
                }
                Some(i) => {
                    self.scratch.extend_from_slice(&self.reader.buffer()[..i]);
                    self.reader.consume(i + 1);
                    self.offset += i as u64 + 1;
                    self.line += 1;
                    self.check_length(self.scratch.len())?;
                    return Ok(Some(LineRef::Scratch));
                }
                None => {
                    self.scratch
                        .extend_from_slice(&self.reader.buffer()[..available]);
                    self.reader.consume(available);
                    self.offset += available as u64;
                    // Refuse before buffering an unbounded line (a file with no newlines).
                    if self.scratch.len() > self.max_line_bytes {
                        return Err(self.bad(
                            self.line + 1,
                            format!(
                                "line longer than {} bytes (is this NDJSON?)",
                                self.max_line_bytes
                            ),
                        ));
                    }
                }
            }
        }
    }

    fn check_length(&self, len: usize) -> Result<(), LoadError> {
        if len > self.max_line_bytes {
            Err(self.bad(
                self.line,
                format!("line longer than {} bytes", self.max_line_bytes),
            ))
        } else {
            Ok(())
        }
    }

    fn bytes(&self, l: LineRef) -> &[u8] {
        let b = match l {
            LineRef::Buffered(n) => &self.reader.buffer()[..n],
            LineRef::Scratch => &self.scratch[..],
        };
        b.strip_suffix(b"\r").unwrap_or(b)
    }

    fn bad(&self, line: u64, reason: String) -> LoadError {
        LoadError::BadRow {
            file: self.file.clone(),
            location: RowLocation::Line(line),
            reason,
        }
    }
}

impl RecordSource for NdjsonSource {
    fn next_record(&mut self) -> Result<Option<(Record<'_>, RowLocation)>, LoadError> {
        // Blank lines are skipped (they still count as lines). The loop only decides which line;
        // the borrow of its bytes is taken after it.
        let l = loop {
            let Some(l) = self.advance()? else {
                return Ok(None);
            };
            if !self.bytes(l).iter().all(u8::is_ascii_whitespace) {
                break l;
            }
        };
        let bytes = self.bytes(l);
        let text = std::str::from_utf8(bytes).map_err(|e| {
            self.bad(
                self.line,
                format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1),
            )
        })?;
        let raw: RawRecord<'_> = serde_json::from_str(text).map_err(|e| {
            let reason = if !e.is_data() {
                format!("invalid JSON at column {}: {}", e.column(), json_reason(&e))
            } else if !text.trim_start().starts_with('{') {
                "expected a JSON object (an asset or a lineage edge)".to_string()
            } else {
                format!("bad field at column {}: {}", e.column(), json_reason(&e))
            };
            self.bad(self.line, reason)
        })?;
        let record = raw.check().map_err(|reason| self.bad(self.line, reason))?;
        Ok(Some((record, RowLocation::Line(self.line))))
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            position: self.offset,
            line: self.line,
        }
    }

    fn total(&self) -> u64 {
        self.size
    }
}

/// serde_json's message without its " at line 1 column N" suffix (always line 1 here).
fn json_reason(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The columns a Parquet input may have; all are strings, all but the ones a row kind needs may
/// be missing or null.
const PARQUET_COLUMNS: [&str; 10] = [
    "kind",
    "type_name",
    "qualified_name",
    "name",
    "parent_qualified_name",
    "status",
    "attributes",
    "upstream",
    "downstream",
    "process",
];
const KIND: usize = 0;
const TYPE_NAME: usize = 1;
const QUALIFIED_NAME: usize = 2;
const NAME: usize = 3;
const PARENT_QUALIFIED_NAME: usize = 4;
const STATUS: usize = 5;
const ATTRIBUTES: usize = 6;
const UPSTREAM: usize = 7;
const DOWNSTREAM: usize = 8;
const PROCESS: usize = 9;

enum StrColumn {
    Utf8(StringArray),
    Large(LargeStringArray),
    View(StringViewArray),
}

impl StrColumn {
    fn get(&self, i: usize) -> Option<&str> {
        match self {
            StrColumn::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            StrColumn::Large(a) => a.is_valid(i).then(|| a.value(i)),
            StrColumn::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

struct Batch {
    rows: usize,
    /// Indexed like PARQUET_COLUMNS.
    columns: [Option<StrColumn>; 10],
}

struct ParquetSource {
    file: PathBuf,
    reader: ParquetRecordBatchReader,
    /// Index in PARQUET_COLUMNS of each column of the projected batches.
    batch_columns: Vec<usize>,
    batch: Option<Batch>,
    /// Row of `batch` to return next.
    next_row: usize,
    ordinal: u64,
    total: u64,
}

impl ParquetSource {
    fn open(path: &Path, start: Checkpoint, batch_rows: usize) -> Result<Self, LoadError> {
        let bad = |reason: String| LoadError::BadFile {
            file: path.to_path_buf(),
            reason,
        };
        let f = File::open(path).map_err(io_error(path))?;
        // Types come from the Parquet schema, not an embedded Arrow schema: a column written as
        // an Arrow dictionary still reads as plain strings.
        let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
        let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(f, options)
            .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
        let schema = builder.schema().clone();
        let mut roots = Vec::new();
        let mut batch_columns = Vec::new();
        for (i, field) in schema.fields().iter().enumerate() {
            let Some(known) = PARQUET_COLUMNS.iter().position(|c| c == field.name()) else {
                continue;
            };
            if !matches!(
                field.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) {
                return Err(bad(format!(
                    "column {:?} has type {}, expected a string column{}",
                    field.name(),
                    field.data_type(),
                    if field.name() == "attributes" {
                        " holding a JSON object"
                    } else {
                        ""
                    }
                )));
            }
            roots.push(i);
            batch_columns.push(known);
        }
        if !batch_columns.contains(&QUALIFIED_NAME) && !batch_columns.contains(&UPSTREAM) {
            return Err(bad(
                "no qualified_name column (nor upstream/downstream for lineage)".into(),
            ));
        }
        let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
        // Resume: skip whole row groups by their row counts, then rows within the first kept one.
        let mut skip = start.position;
        let mut groups = Vec::new();
        for (i, rg) in builder.metadata().row_groups().iter().enumerate() {
            let n = rg.num_rows().max(0) as u64;
            if skip >= n && groups.is_empty() {
                skip -= n;
            } else {
                groups.push(i);
            }
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .with_row_groups(groups)
            .with_offset(skip as usize)
            .with_batch_size(batch_rows.max(1))
            .build()
            .map_err(|e| bad(format!("cannot read: {e}")))?;
        Ok(ParquetSource {
            file: path.to_path_buf(),
            reader,
            batch_columns,
            batch: None,
            next_row: 0,
            ordinal: start.position,
            total,
        })
    }

    fn load(&self, batch: RecordBatch) -> Batch {
        let mut columns: [Option<StrColumn>; 10] = Default::default();
        for (array, &known) in batch.columns().iter().zip(&self.batch_columns) {
            let any = array.as_any();
            columns[known] = if let Some(a) = any.downcast_ref::<StringArray>() {
                Some(StrColumn::Utf8(a.clone()))
            } else if let Some(a) = any.downcast_ref::<LargeStringArray>() {
                Some(StrColumn::Large(a.clone()))
            } else {
                any.downcast_ref::<StringViewArray>()
                    .map(|a| StrColumn::View(a.clone()))
            };
        }
        Batch {
            rows: batch.num_rows(),
            columns,
        }
    }
}

impl RecordSource for ParquetSource {
    fn next_record(&mut self) -> Result<Option<(Record<'_>, RowLocation)>, LoadError> {
        while self.batch.as_ref().is_none_or(|b| self.next_row >= b.rows) {
            match self.reader.next() {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(LoadError::BadFile {
                        file: self.file.clone(),
                        reason: format!("reading after row {}: {e}", self.ordinal),
                    })
                }
                Some(Ok(b)) => {
                    self.batch = Some(self.load(b));
                    self.next_row = 0;
                }
            }
        }
        let row = self.next_row;
        self.next_row += 1;
        self.ordinal += 1;
        let Some(batch) = &self.batch else {
            return Ok(None);
        };
        let col = |i: usize| -> Option<Cow<'_, str>> {
            batch.columns[i].as_ref()?.get(row).map(Cow::Borrowed)
        };
        let attributes = batch.columns[ATTRIBUTES]
            .as_ref()
            .and_then(|c| c.get(row))
            .map(RawAttributes::Text);
        let fields = Fields {
            type_name: col(TYPE_NAME),
            qualified_name: col(QUALIFIED_NAME),
            name: col(NAME),
            parent_qualified_name: col(PARENT_QUALIFIED_NAME),
            status: col(STATUS),
            attributes,
            upstream: col(UPSTREAM),
            downstream: col(DOWNSTREAM),
            process: col(PROCESS),
        };
        let at = RowLocation::Row(self.ordinal);
        let record = check_fields(col(KIND), fields).map_err(|reason| LoadError::BadRow {
            file: self.file.clone(),
            location: at,
            reason,
        })?;
        Ok(Some((record, at)))
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            position: self.ordinal,
            line: self.ordinal,
        }
    }

    fn total(&self) -> u64 {
        self.total
    }
}
