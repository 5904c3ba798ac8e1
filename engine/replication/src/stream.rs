//! `START_REPLICATION` and the streaming loop.
//!
//! Reading and feedback are split on purpose. The caller pulls frames with
//! [`ReplicationStream::next`] at its own pace (not pulling is the backpressure: TCP fills and the
//! walsender waits). A separate task owns the socket's write half and sends a standby status
//! update on a timer and whenever the server asks for one, reporting the LSN the caller has
//! [confirmed](Feedback::confirm). So a stalled consumer keeps the connection alive, and the
//! position reported as flushed is only ever one the consumers acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::setup::{quote_ident_checked, validate_name};
use crate::wire::{self, BoxIo, Connection, FrameReader};
use crate::{Lsn, ReplicationError};

/// One frame of the replication stream.
#[derive(Debug, Clone)]
pub enum WalEvent {
    /// `XLogData`: one pgoutput message.
    Data {
        wal_start: Lsn,
        wal_end: Lsn,
        payload: Bytes,
    },
    /// Primary keepalive: the server's WAL end; nothing before it is still to come for us.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

/// Positions shared between the reader, the consumers' acknowledgements and the status sender.
#[derive(Debug, Default)]
pub struct Feedback {
    received: AtomicU64,
    confirmed: AtomicU64,
    wake: Notify,
}

impl Feedback {
    pub fn new(confirmed: Lsn) -> Arc<Self> {
        Arc::new(Feedback {
            received: AtomicU64::new(confirmed.0),
            confirmed: AtomicU64::new(confirmed.0),
            wake: Notify::new(),
        })
    }

    /// Moves the confirmed (flushed) position forward; never backward.
    pub fn confirm(&self, lsn: Lsn) {
        self.confirmed.fetch_max(lsn.0, Ordering::AcqRel);
    }

    pub fn confirmed(&self) -> Lsn {
        Lsn(self.confirmed.load(Ordering::Acquire))
    }

    pub fn received(&self) -> Lsn {
        Lsn(self.received.load(Ordering::Acquire))
    }

    /// Asks the status sender to report now rather than at its next tick.
    pub fn send_status_now(&self) {
        self.wake.notify_one();
    }

    fn note_received(&self, lsn: Lsn) {
        self.received.fetch_max(lsn.0, Ordering::AcqRel);
    }
}

/// What `START_REPLICATION` needs.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub slot: String,
    pub publications: Vec<String>,
    /// Where to start; [`Lsn::ZERO`] means the slot's confirmed position.
    pub start: Lsn,
    /// Standby status cadence; must be well under the server's `wal_sender_timeout`.
    pub status_interval: Duration,
}

/// A running replication stream.
pub struct ReplicationStream {
    reader: FrameReader,
    feedback: Arc<Feedback>,
    sender: JoinHandle<Result<(), ReplicationError>>,
    stop: Arc<Notify>,
}

impl ReplicationStream {
    /// Issues `START_REPLICATION` on a replication-mode connection.
    pub async fn start(
        mut conn: Connection,
        opts: &StartOptions,
        feedback: Arc<Feedback>,
    ) -> Result<Self, ReplicationError> {
        validate_name("slot", &opts.slot)?;
        let mut pubs = Vec::new();
        for p in &opts.publications {
            pubs.push(quote_ident_checked("publication", p)?);
        }
        // publication_names is a string literal holding a list of identifiers; the names were
        // checked to hold no quote of either kind.
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names '{}', messages 'true')",
            opts.slot,
            opts.start,
            pubs.join(",")
        );
        postgres_protocol::message::frontend::query(&sql, &mut conn.out)?;
        conn.flush().await?;
        loop {
            let frame = conn.reader.next_frame().await?;
            match frame.tag {
                b'W' => break,
                b'E' => return Err(wire::server_error_from_frame(&frame)),
                b'N' => continue,
                other => {
                    return Err(ReplicationError::Protocol(format!(
                        "expected CopyBothResponse after START_REPLICATION, got {:?}",
                        other as char
                    )))
                }
            }
        }
        let Connection { reader, writer, .. } = conn;
        let stop = Arc::new(Notify::new());
        let sender = tokio::spawn(status_sender(
            writer,
            feedback.clone(),
            opts.status_interval,
            stop.clone(),
        ));
        Ok(ReplicationStream {
            reader,
            feedback,
            sender,
            stop,
        })
    }

    /// The next frame. Cancel-safe only between frames: drop the stream after an error.
    pub async fn next(&mut self) -> Result<WalEvent, ReplicationError> {
        loop {
            let frame = self.reader.next_frame().await?;
            match frame.tag {
                b'd' => {
                    let mut body = frame.body();
                    if !body.has_remaining() {
                        return Err(ReplicationError::Protocol("empty CopyData".into()));
                    }
                    match body.get_u8() {
                        b'w' => {
                            let wal_start = Lsn(wire::get_u64(&mut body)?);
                            let wal_end = Lsn(wire::get_u64(&mut body)?);
                            let _send_time = wire::get_u64(&mut body)?;
                            self.feedback.note_received(wal_start);
                            return Ok(WalEvent::Data {
                                wal_start,
                                wal_end,
                                payload: body,
                            });
                        }
                        b'k' => {
                            let wal_end = Lsn(wire::get_u64(&mut body)?);
                            let _send_time = wire::get_u64(&mut body)?;
                            if !body.has_remaining() {
                                return Err(ReplicationError::Protocol(
                                    "truncated keepalive".into(),
                                ));
                            }
                            let reply_requested = body.get_u8() == 1;
                            if reply_requested {
                                self.feedback.send_status_now();
                            }
                            return Ok(WalEvent::Keepalive {
                                wal_end,
                                reply_requested,
                            });
                        }
                        other => {
                            return Err(ReplicationError::Protocol(format!(
                                "unknown replication message {:?}",
                                other as char
                            )))
                        }
                    }
                }
                b'E' => return Err(wire::server_error_from_frame(&frame)),
                b'N' => continue,
                // CopyDone, or CommandComplete/ReadyForQuery after it: the server ended the stream
                // (shutdown, or the walsender was terminated). Reconnecting is the answer.
                b'c' | b'C' | b'Z' => {
                    return Err(ReplicationError::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "server ended the replication stream (CopyDone)",
                    )))
                }
                other => {
                    return Err(ReplicationError::Protocol(format!(
                        "unexpected message {:?} in replication stream",
                        other as char
                    )))
                }
            }
        }
    }

    /// Whether the next frame is already buffered (so a batch may keep growing without waiting).
    pub fn has_buffered_frame(&self) -> bool {
        self.reader.has_buffered_frame()
    }

    /// Whether the status sender is still running (it stops when the socket fails).
    pub fn sender_alive(&self) -> bool {
        !self.sender.is_finished()
    }

    /// Sends a last status update with the confirmed position and closes the stream.
    pub async fn shutdown(mut self) {
        self.stop.notify_one();
        match tokio::time::timeout(Duration::from_secs(5), &mut self.sender).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::debug!(%error, "Status sender ended with an error."),
            Ok(Err(error)) => tracing::debug!(%error, "Status sender task failed."),
            Err(_) => tracing::debug!("Status sender did not stop in time."),
        }
    }
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        self.sender.abort();
    }
}

/// Microseconds since 2000-01-01, the clock the standby status message uses.
fn pg_now() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.as_micros() as i64 - lily_pgoutput::PG_EPOCH_OFFSET_SECS * 1_000_000
}

/// A standby status update ('r'): written, flushed and applied positions, clock, reply flag.
pub(crate) fn status_update(out: &mut BytesMut, received: Lsn, confirmed: Lsn) {
    let mut payload = [0u8; 34];
    let mut p = &mut payload[..];
    p.put_u8(b'r');
    p.put_u64(received.0.max(confirmed.0));
    p.put_u64(confirmed.0);
    p.put_u64(confirmed.0);
    p.put_i64(pg_now());
    p.put_u8(0);
    wire::put_copy_data(out, &payload);
}

async fn status_sender(
    mut writer: WriteHalf<BoxIo>,
    feedback: Arc<Feedback>,
    interval: Duration,
    stop: Arc<Notify>,
) -> Result<(), ReplicationError> {
    let mut out = BytesMut::with_capacity(64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Early reports (on request or on a new confirmed position) are spaced at least this far
    // apart, so a busy stream does not turn every acknowledgement into a message.
    const MIN_GAP: Duration = Duration::from_millis(50);
    let mut last_sent = tokio::time::Instant::now();
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            _ = feedback.wake.notified() => {
                tokio::time::sleep_until(last_sent + MIN_GAP).await;
                false
            }
            _ = stop.notified() => true,
        };
        last_sent = tokio::time::Instant::now();
        let confirmed = feedback.confirmed();
        status_update(&mut out, feedback.received(), confirmed);
        let sent = async {
            writer.write_all(&out).await?;
            writer.flush().await
        };
        // A socket that cannot take 34 bytes for this long is dead; the reader will see it too.
        match tokio::time::timeout(Duration::from_secs(30), sent).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(ReplicationError::Timeout("sending standby status".into())),
        }
        out.clear();
        metrics::gauge!("lily_replication_confirmed_lsn").set(confirmed.0 as f64);
        if stopping {
            let mut done = BytesMut::new();
            postgres_protocol::message::frontend::copy_done(&mut done);
            let _ = writer.write_all(&done).await;
            let _ = writer.flush().await;
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_update_layout() {
        let mut out = BytesMut::new();
        status_update(&mut out, Lsn(200), Lsn(100));
        assert_eq!(out[0], b'd');
        assert_eq!(i32::from_be_bytes([out[1], out[2], out[3], out[4]]), 38);
        assert_eq!(out[5], b'r');
        assert_eq!(u64::from_be_bytes(out[6..14].try_into().unwrap()), 200);
        assert_eq!(u64::from_be_bytes(out[14..22].try_into().unwrap()), 100);
        assert_eq!(u64::from_be_bytes(out[22..30].try_into().unwrap()), 100);
        assert_eq!(out[38], 0);
    }

    #[test]
    fn feedback_only_moves_forward() {
        let f = Feedback::new(Lsn(10));
        f.confirm(Lsn(5));
        assert_eq!(f.confirmed(), Lsn(10));
        f.confirm(Lsn(20));
        assert_eq!(f.confirmed(), Lsn(20));
    }
}
