//! The `log` sink: each pipeline output record as one JSON line on stdout.

use std::io::Write;
use std::sync::Mutex;

use async_trait::async_trait;
use lily_delivery::{Record, Sink, SinkError};
use serde::Deserialize;

/// Settings of a `log` sink.
#[derive(Debug, Default, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogSinkConfig {
    /// Text put in each line's `"sink"` field; default the sink's name.
    pub label: Option<String>,
}

/// Writes `{"sink", "id", "commit_lsn", "key", "data"}` lines to a writer (stdout by default).
pub struct LogSink {
    label: String,
    out: Mutex<Box<dyn Write + Send>>,
}

impl LogSink {
    pub fn stdout(label: &str) -> Self {
        LogSink::to_writer(label, Box::new(std::io::stdout()))
    }

    pub fn to_writer(label: &str, out: Box<dyn Write + Send>) -> Self {
        LogSink {
            label: label.to_string(),
            out: Mutex::new(out),
        }
    }
}

#[async_trait]
impl Sink for LogSink {
    fn kind(&self) -> &'static str {
        "log"
    }

    fn max_batch(&self) -> usize {
        256
    }

    async fn deliver(&self, records: &[Record]) -> Result<(), SinkError> {
        let mut buf = Vec::new();
        for r in records {
            let line = serde_json::json!({
                "sink": self.label,
                "id": r.id,
                "commit_lsn": r.commit_lsn.to_string(),
                "key": r.key,
                "data": r.fields,
            });
            serde_json::to_writer(&mut buf, &line)
                .map_err(|e| SinkError::permanent(e.to_string()))?;
            buf.push(b'\n');
        }
        // Writing to stdout is quick; the lock is never held across an await.
        let mut out = self.out.lock().expect("log sink lock");
        out.write_all(&buf)
            .and_then(|_| out.flush())
            .map_err(|e| SinkError::retryable(format!("writing log lines: {e}")))
    }
}
