//! Acknowledgement tracking. Every batch gets a sequence number and goes to every consumer; a
//! checkpoint LSN registered at sequence `s` is confirmed to PostgreSQL once every consumer has
//! acknowledged every batch up to `s`. Consumers may acknowledge out of order.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use lily_pgoutput::{Lsn, PgTimestamp, PG_EPOCH_OFFSET_SECS};
use lily_replication::Feedback;

#[derive(Default)]
struct ConsumerAcks {
    /// Every sequence number up to here is acknowledged.
    contiguous: u64,
    /// Acknowledged sequence numbers above `contiguous`.
    ahead: BTreeSet<u64>,
}

#[derive(Default)]
struct State {
    consumers: Vec<ConsumerAcks>,
    last_seq: u64,
    /// (seq, lsn, commit time; `None` for an idle advance that confirms no data).
    checkpoints: VecDeque<(u64, Lsn, Option<PgTimestamp>)>,
    data_confirmed: Lsn,
}

impl State {
    fn watermark(&self) -> u64 {
        self.consumers
            .iter()
            .map(|c| c.contiguous)
            .min()
            .unwrap_or(self.last_seq)
    }
}

/// Shared by the capture loop (which issues sequence numbers and checkpoints) and every [`crate::Ack`].
pub struct AckTracker {
    state: Mutex<State>,
    feedback: Arc<Feedback>,
}

impl AckTracker {
    pub fn new(consumers: usize, feedback: Arc<Feedback>) -> Arc<Self> {
        let mut state = State::default();
        state
            .consumers
            .resize_with(consumers, ConsumerAcks::default);
        Arc::new(AckTracker {
            state: Mutex::new(state),
            feedback,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain counters behind; they stay usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues the next sequence number.
    pub fn next_seq(&self) -> u64 {
        let mut s = self.lock();
        s.last_seq += 1;
        s.last_seq
    }

    /// The last sequence number issued.
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    /// Registers `lsn` to be confirmed once everything up to `seq` is acknowledged.
    pub fn checkpoint(&self, seq: u64, lsn: Lsn, commit_ts: PgTimestamp) {
        let mut s = self.lock();
        s.checkpoints.push_back((seq, lsn, Some(commit_ts)));
        self.advance(&mut s);
    }

    /// The server reported its WAL end while nothing was half-read: once everything issued so
    /// far is acknowledged, that position can be confirmed too (no published change precedes it
    /// that consumers have not seen). This keeps idle or filtered databases from piling up WAL.
    pub fn checkpoint_idle(&self, lsn: Lsn) {
        let mut s = self.lock();
        let seq = s.last_seq;
        if s.checkpoints
            .back()
            .is_some_and(|&(q, l, ts)| q == seq && ts.is_none() && l >= lsn)
        {
            return;
        }
        s.checkpoints.push_back((seq, lsn, None));
        self.advance(&mut s);
    }

    pub fn ack(&self, consumer: usize, seq: u64) {
        let mut s = self.lock();
        let Some(c) = s.consumers.get_mut(consumer) else {
            return;
        };
        if seq <= c.contiguous {
            return;
        }
        c.ahead.insert(seq);
        while c.ahead.first() == Some(&(c.contiguous + 1)) {
            c.ahead.pop_first();
            c.contiguous += 1;
        }
        self.advance(&mut s);
    }

    fn advance(&self, s: &mut State) {
        let watermark = s.watermark();
        let mut confirmed = None;
        let now_us = now_pg_micros();
        while let Some(&(seq, lsn, commit_ts)) = s.checkpoints.front() {
            if seq > watermark {
                break;
            }
            s.checkpoints.pop_front();
            confirmed = Some(confirmed.unwrap_or(Lsn::ZERO).max(lsn));
            if let Some(ts) = commit_ts {
                s.data_confirmed = s.data_confirmed.max(lsn);
                let latency = (now_us - ts).max(0) as f64 / 1e6;
                metrics::histogram!("lily_commit_to_ack_seconds").record(latency);
            }
        }
        if let Some(lsn) = confirmed {
            self.feedback.confirm(lsn);
            // Report it soon rather than at the next tick; the sender rate-limits these.
            self.feedback.send_status_now();
        }
    }

    /// Everything issued so far is acknowledged by every consumer.
    pub fn all_acked(&self) -> bool {
        let s = self.lock();
        s.watermark() >= s.last_seq
    }

    /// The last LSN confirmed because consumers acknowledged data (not an idle advance).
    pub fn data_confirmed(&self) -> Lsn {
        self.lock().data_confirmed
    }

    /// Batches issued but not yet acknowledged by every consumer.
    pub fn outstanding(&self) -> u64 {
        let s = self.lock();
        s.last_seq - s.watermark()
    }
}

pub(crate) fn now_pg_micros() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.as_micros() as i64 - PG_EPOCH_OFFSET_SECS * 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_only_past_what_every_consumer_acked() {
        let fb = Feedback::new(Lsn(0));
        let t = AckTracker::new(2, fb.clone());
        let s1 = t.next_seq();
        let s2 = t.next_seq();
        t.checkpoint(s1, Lsn(100), 0);
        t.checkpoint(s2, Lsn(200), 0);
        t.ack(0, s2);
        assert_eq!(
            fb.confirmed(),
            Lsn(0),
            "consumer 0 acked out of order, s1 missing"
        );
        t.ack(0, s1);
        assert_eq!(fb.confirmed(), Lsn(0), "consumer 1 has acked nothing");
        t.ack(1, s1);
        assert_eq!(fb.confirmed(), Lsn(100));
        assert!(!t.all_acked());
        t.ack(1, s2);
        assert_eq!(fb.confirmed(), Lsn(200));
        assert!(t.all_acked());
        assert_eq!(t.data_confirmed(), Lsn(200));
    }

    #[test]
    fn checkpoint_with_nothing_outstanding_confirms_at_once() {
        let fb = Feedback::new(Lsn(0));
        let t = AckTracker::new(1, fb.clone());
        t.checkpoint(0, Lsn(50), 0);
        assert_eq!(fb.confirmed(), Lsn(50));
        let none = AckTracker::new(0, fb.clone());
        let s = none.next_seq();
        none.checkpoint(s, Lsn(60), 0);
        assert_eq!(fb.confirmed(), Lsn(60));
    }
}
