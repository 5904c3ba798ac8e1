//! Every log line the process writes, kept for the secrets check.
//!
//! A global subscriber at TRACE records each `tracing` event twice, as the engine's text format
//! and as its JSON format (`LILY_LOG_FORMAT=json`), and `log` records are bridged into it as
//! the engine's own `init` does, so dependencies' log lines (HTTP client, PostgreSQL driver)
//! are seen too. Global rather than per-thread: a sink's spawned tasks (connection drivers,
//! pools) log from other threads. Tests of one binary run in parallel, so a check reads the
//! lines written since its start, which may include other checks' lines; for a check that
//! something is absent that only makes it stricter.

use std::io;
use std::sync::{Mutex, MutexGuard, OnceLock};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

fn lines() -> MutexGuard<'static, Vec<String>> {
    LINES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs the capturing subscriber (once per process). Panics if another global subscriber
/// was installed first: its lines would not be seen, and the secrets check would pass blind.
pub fn install_capture() {
    let installed = INSTALLED.get_or_init(|| {
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(Capture),
            )
            .with(tracing_subscriber::fmt::layer().json().with_writer(Capture))
            .with(tracing_subscriber::filter::LevelFilter::TRACE)
            .try_init()
            .map_err(|e| e.to_string())
    });
    if let Err(e) = installed {
        panic!(
            "lily-sinktest cannot capture log lines ({e}); a test binary running the compliance \
             suite must not install its own global subscriber"
        );
    }
}

/// Where the capture stands now; pass it to [`captured_since`].
pub fn mark() -> usize {
    lines().len()
}

/// The lines captured since `mark`.
pub fn captured_since(mark: usize) -> Vec<String> {
    lines()
        .get(mark..)
        .map(<[String]>::to_vec)
        .unwrap_or_default()
}

/// Hands the fmt layers one buffer per event; the buffer's lines are kept when it is dropped.
struct Capture;

struct EventBuffer(Vec<u8>);

impl io::Write for EventBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventBuffer {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.0);
        let mut all = lines();
        all.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = EventBuffer;

    fn make_writer(&'a self) -> EventBuffer {
        EventBuffer(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_and_log_lines_are_captured_in_both_formats() {
        install_capture();
        let from = mark();
        tracing::debug!(token = %"t0ken-abc", "a tracing event");
        tracing::trace!(target: "dep", secret = ?"q\"uoted", "deep");
        let seen = captured_since(from);
        assert!(
            seen.iter().any(|l| l.contains("a tracing event")
                && l.contains("t0ken-abc")
                && !l.starts_with('{')),
            "{seen:?}"
        );
        assert!(
            seen.iter()
                .any(|l| l.starts_with('{') && l.contains("t0ken-abc")),
            "{seen:?}"
        );
        assert!(seen.iter().any(|l| l.contains("deep")), "{seen:?}");
    }
}
