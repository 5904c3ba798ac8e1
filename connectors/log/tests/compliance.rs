//! The sink compliance suite (`lily-sinktest`) against a writer the test controls, standing in
//! for stdout.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lily_delivery::Record;
use lily_log::LogSink;
use lily_sinktest::{Fault, Received, Replay, Shape, SinkHarness, Support};

lily_sinktest::compliance!(LogHarness);

/// What the "terminal" got, and whether its next write fails.
#[derive(Default)]
struct Screen {
    bytes: Vec<u8>,
    fail_next: Option<io::ErrorKind>,
}

#[derive(Clone, Default)]
struct Terminal(Arc<Mutex<Screen>>);

impl Terminal {
    fn screen(&self) -> MutexGuard<'_, Screen> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl io::Write for Terminal {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut screen = self.screen();
        if let Some(kind) = screen.fail_next.take() {
            return Err(io::Error::new(kind, "the reader of stdout went away"));
        }
        screen.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct LogHarness {
    sink: LogSink,
    terminal: Terminal,
}

#[async_trait::async_trait]
impl SinkHarness for LogHarness {
    type Sink = LogSink;

    const SHAPE: Shape = Shape::Stream;
    const REPLAY: Replay = Replay::IdempotencyKey;

    async fn start() -> Self {
        let terminal = Terminal::default();
        let sink = LogSink::to_writer("sinktest", Box::new(terminal.clone()));
        LogHarness { sink, terminal }
    }

    fn sink(&self) -> &LogSink {
        &self.sink
    }

    fn supports(fault: &Fault) -> Support {
        match fault {
            Fault::Dropped => Support::Yes,
            Fault::Refused => Support::No(
                "a writer is not connected to; one whose reader went away is connection_dropped",
            ),
            Fault::Hang => Support::No(
                "the log sink has no timeout setting: a writer that blocks (a full stdout pipe) \
                 blocks the call until it drains",
            ),
            Fault::Malformed => Support::No("a writer gives no answer to be malformed"),
            Fault::Http { .. } => Support::No("a writer answers no HTTP statuses"),
            Fault::ShuttingDown
            | Fault::LockTimeout
            | Fault::ConstraintViolation
            | Fault::DataError => Support::No("a writer is no database"),
        }
    }

    async fn inject(&self, fault: &Fault, _records: &mut Vec<Record>) {
        match fault {
            Fault::Dropped => self.terminal.screen().fail_next = Some(io::ErrorKind::BrokenPipe),
            other => unreachable!("not supported: {other:?}"),
        }
    }

    async fn received(&self) -> Vec<Received> {
        let bytes = self.terminal.screen().bytes.clone();
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|line| {
                let v: serde_json::Value = serde_json::from_slice(line)
                    .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line:?}"));
                Received {
                    key: v["data"]["k"].as_str().map(str::to_string),
                    seq: v["data"]["seq"].as_u64(),
                    idempotency_key: v["id"].as_str().map(str::to_string),
                    version: None,
                }
            })
            .collect()
    }

    const SECRETS: Support = Support::No("the log sink is given no secret (it has no credential)");

    fn secrets(&self) -> Vec<String> {
        Vec::new()
    }

    fn timeout(&self) -> Option<Duration> {
        None
    }
}
