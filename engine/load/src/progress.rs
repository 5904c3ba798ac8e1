//! Progress of a running load, for a progress bar or the ingest API's job status.

use std::path::PathBuf;

use crate::Lane;

/// The latest state of a load, published on a `tokio::sync::watch` channel
/// ([`crate::Loader::progress`]) after every committed chunk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub file: PathBuf,
    pub lane: Lane,
    /// Rows of this lane committed by this run.
    pub rows: u64,
    /// `rows` over the time this lane has run in this run.
    pub rows_per_sec: f64,
    /// How far this lane is through the file: bytes (NDJSON) or rows (Parquet)...
    pub position: u64,
    /// ...of this many.
    pub total: u64,
    /// The lane has reached the end of the file.
    pub lane_done: bool,
}

impl Progress {
    /// One line, e.g. `assets.ndjson bulk: 1200000 rows, 231000 rows/s, 42%`.
    pub fn describe(&self) -> String {
        let name = self
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pct = if self.total > 0 {
            (self.position as f64 * 100.0 / self.total as f64).min(100.0)
        } else {
            100.0
        };
        format!(
            "{name} {}: {} rows, {:.0} rows/s, {pct:.0}%{}",
            self.lane,
            self.rows,
            self.rows_per_sec,
            if self.lane_done { ", done" } else { "" }
        )
    }
}

/// Draws a progress bar per lane on stderr until the loader is dropped. Spawn it next to the
/// load:
///
/// ```no_run
/// # async fn demo(loader: lily_load::Loader) {
/// let bars = tokio::spawn(lily_load::render_progress(loader.progress()));
/// // ... loader.load(...).await ...
/// drop(loader);
/// let _ = bars.await;
/// # }
/// ```
#[cfg(feature = "cli")]
pub async fn render_progress(mut rx: tokio::sync::watch::Receiver<Progress>) {
    use indicatif::{ProgressBar, ProgressStyle};

    let style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {percent:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut current: Option<(PathBuf, Lane, ProgressBar)> = None;
    while rx.changed().await.is_ok() {
        let p = rx.borrow_and_update().clone();
        if p.total == 0 && p.rows == 0 {
            continue;
        }
        let same = matches!(&current, Some((f, l, _)) if *f == p.file && *l == p.lane);
        if !same {
            if let Some((_, _, bar)) = current.take() {
                bar.finish();
            }
            let bar = ProgressBar::new(p.total).with_style(style.clone());
            let name = p
                .file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            bar.set_prefix(format!("{name} {}", p.lane));
            current = Some((p.file.clone(), p.lane, bar));
        }
        if let Some((_, _, bar)) = &current {
            bar.set_length(p.total);
            bar.set_position(p.position.min(p.total));
            bar.set_message(format!("{} rows, {:.0} rows/s", p.rows, p.rows_per_sec));
            if p.lane_done {
                bar.finish();
            }
        }
    }
    if let Some((_, _, bar)) = current {
        bar.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe() {
        let p = Progress {
            file: "/tmp/x/assets.ndjson".into(),
            lane: Lane::Bulk,
            rows: 1200,
            rows_per_sec: 2500.4,
            position: 42,
            total: 100,
            lane_done: false,
        };
        assert_eq!(
            p.describe(),
            "assets.ndjson bulk: 1200 rows, 2500 rows/s, 42%"
        );
    }
}
