//! The `log` consumer: every change as one JSON line on a writer (stdout by default).
//!
//! Each line carries the table and the row's columns, including the metadata columns
//! (`_op`, `_lsn`, `_commit_lsn`, `_commit_ts`, `_xid`, `_old`, `_unchanged_toast`). Truncates and
//! logical messages get a line of their own. A batch is acknowledged once written and flushed.

use std::io::Write;

mod connector;
mod sink;
pub use connector::{LogConsumer, LogConsumerConfig, LogSinkConnector};
pub use sink::{LogSink, LogSinkConfig};

use lily_cdc::{BatchKind, Subscription};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("writing change lines: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding a batch as JSON: {0}")]
    Encode(String),
}

/// Writes one JSON line per change of `batch` into `out`.
pub fn encode(kind: &BatchKind, out: &mut Vec<u8>) -> Result<(), LogError> {
    match kind {
        BatchKind::Rows { table, records } => {
            let mut buf = Vec::new();
            {
                let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
                w.write(records)
                    .map_err(|e| LogError::Encode(e.to_string()))?;
                w.finish().map_err(|e| LogError::Encode(e.to_string()))?;
            }
            let name = serde_json::to_string(&table.qualified_name())
                .map_err(|e| LogError::Encode(e.to_string()))?;
            for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                // Prefix the table without re-parsing the row: `{"_table":"s.t",` + rest of the object.
                out.extend_from_slice(b"{\"_table\":");
                out.extend_from_slice(name.as_bytes());
                if line.len() > 2 {
                    out.push(b',');
                }
                out.extend_from_slice(&line[1..]);
                out.push(b'\n');
            }
        }
        BatchKind::Truncate {
            tables,
            cascade,
            restart_identity,
        } => {
            let names: Vec<String> = tables.iter().map(|t| t.qualified_name()).collect();
            let v = serde_json::json!({"_op": "truncate", "tables": names, "cascade": cascade, "restart_identity": restart_identity});
            out.extend_from_slice(v.to_string().as_bytes());
            out.push(b'\n');
        }
        // Group boundaries carry no change of their own.
        BatchKind::Commit => {}
        BatchKind::Message {
            transactional,
            prefix,
            content,
            lsn,
        } => {
            let v = serde_json::json!({
                "_op": "message",
                "prefix": prefix,
                "transactional": transactional,
                "lsn": lsn.0,
                "content": String::from_utf8_lossy(content),
            });
            out.extend_from_slice(v.to_string().as_bytes());
            out.push(b'\n');
        }
    }
    Ok(())
}

/// Consumes `sub` until capture stops, writing to `writer`.
pub async fn run<W: Write + Send>(mut sub: Subscription, mut writer: W) -> Result<(), LogError> {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(delivery) = sub.recv().await {
        buf.clear();
        encode(&delivery.batch.kind, &mut buf)?;
        writer.write_all(&buf)?;
        writer.flush()?;
        delivery.ack();
    }
    Ok(())
}
