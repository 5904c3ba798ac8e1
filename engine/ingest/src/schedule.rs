//! Which waiting bulk load runs next. Tenants take turns: a free run slot goes to the waiting
//! load whose tenant started a load least recently (then to the oldest), a tenant runs at most
//! `per_tenant` loads at once, and a load that has held its slot for a time slice while another
//! tenant waits gives it up at its next chunk (see [`Scheduler::others_waiting`]), so one
//! tenant's large file cannot keep every other tenant's loads from progressing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

pub(crate) struct Scheduler {
    state: Mutex<State>,
    /// Signalled whenever a slot frees or a waiter leaves: waiters check whether it is their
    /// turn.
    changed: Notify,
    per_tenant: usize,
}

#[derive(Default)]
struct State {
    free: usize,
    running: HashMap<String, usize>,
    waiting: Vec<Waiter>,
    /// The clock value at which each tenant last got a slot.
    served: HashMap<String, u64>,
    clock: u64,
    next_ticket: u64,
}

struct Waiter {
    ticket: u64,
    tenant: String,
}

impl State {
    /// The ticket whose turn it is: among tenants below their cap, the least recently served
    /// tenant's oldest waiter.
    fn next(&self, per_tenant: usize) -> Option<u64> {
        self.waiting
            .iter()
            .filter(|w| self.running.get(&w.tenant).copied().unwrap_or(0) < per_tenant)
            .min_by_key(|w| (self.served.get(&w.tenant).copied().unwrap_or(0), w.ticket))
            .map(|w| w.ticket)
    }
}

/// A run slot, given back when dropped.
pub(crate) struct Slot {
    scheduler: Arc<Scheduler>,
    tenant: String,
    since: Instant,
}

impl Slot {
    /// When the slot was granted.
    pub(crate) fn since(&self) -> Instant {
        self.since
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.scheduler.lock();
        s.free += 1;
        if let Some(n) = s.running.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                s.running.remove(&self.tenant);
            }
        }
        drop(s);
        self.scheduler.changed.notify_waiters();
    }
}

/// Removes a waiter whose future was dropped before its turn (the upload's task ended).
struct Ticket<'a> {
    scheduler: &'a Scheduler,
    ticket: u64,
    granted: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.granted {
            self.scheduler
                .lock()
                .waiting
                .retain(|w| w.ticket != self.ticket);
            self.scheduler.changed.notify_waiters();
        }
    }
}

impl Scheduler {
    pub(crate) fn new(slots: usize, per_tenant: usize) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            state: Mutex::new(State {
                free: slots.max(1),
                ..State::default()
            }),
            changed: Notify::new(),
            per_tenant: per_tenant.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state holds counts only; a panicking holder cannot leave it half-changed in a
        // way worse than a lost slot.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for `tenant`'s turn and a free slot.
    pub(crate) async fn acquire(self: &Arc<Self>, tenant: &str) -> Slot {
        let ticket = {
            let mut s = self.lock();
            let ticket = s.next_ticket;
            s.next_ticket += 1;
            s.waiting.push(Waiter {
                ticket,
                tenant: tenant.to_string(),
            });
            ticket
        };
        let mut waiting = Ticket {
            scheduler: self,
            ticket,
            granted: false,
        };
        loop {
            // Registered before the check, so a change between the check and the wait is not
            // missed.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.try_grant(ticket, tenant) {
                waiting.granted = true;
                return Slot {
                    scheduler: Arc::clone(self),
                    tenant: tenant.to_string(),
                    since: Instant::now(),
                };
            }
            notified.await;
        }
    }

    fn try_grant(&self, ticket: u64, tenant: &str) -> bool {
        let mut s = self.lock();
        if s.free == 0 || s.next(self.per_tenant) != Some(ticket) {
            return false;
        }
        s.waiting.retain(|w| w.ticket != ticket);
        s.free -= 1;
        *s.running.entry(tenant.to_string()).or_default() += 1;
        s.clock += 1;
        let clock = s.clock;
        s.served.insert(tenant.to_string(), clock);
        true
    }

    /// Whether a load of another tenant waits and could run if a slot freed: then a load of
    /// `tenant` that has had its time slice should give its slot up.
    pub(crate) fn others_waiting(&self, tenant: &str) -> bool {
        let s = self.lock();
        s.waiting.iter().any(|w| {
            w.tenant != tenant && s.running.get(&w.tenant).copied().unwrap_or(0) < self.per_tenant
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn granted_within(f: impl std::future::Future<Output = Slot>, ms: u64) -> Option<Slot> {
        tokio::time::timeout(Duration::from_millis(ms), f)
            .await
            .ok()
    }

    #[tokio::test]
    async fn tenants_take_turns_for_one_slot() {
        let s = Scheduler::new(1, 1);
        let a1 = s.acquire("a").await;
        // a's second load and b's load wait; b was never served, so b goes first.
        let (s2, s3) = (Arc::clone(&s), Arc::clone(&s));
        let a2 = tokio::spawn(async move { s2.acquire("a").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let b1 = tokio::spawn(async move { s3.acquire("b").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(s.others_waiting("a"));
        // For b: only a waits, and a is at its cap.
        assert!(!s.others_waiting("b"));
        drop(a1);
        let b1 = tokio::time::timeout(Duration::from_secs(1), b1)
            .await
            .expect("b is served before a's second load")
            .unwrap();
        assert!(!a2.is_finished());
        drop(b1);
        let a2 = tokio::time::timeout(Duration::from_secs(1), a2)
            .await
            .expect("then a")
            .unwrap();
        drop(a2);
        assert_eq!(s.lock().free, 1);
        assert!(s.lock().running.is_empty());
    }

    #[tokio::test]
    async fn a_tenant_is_held_to_its_cap_while_slots_are_free() {
        let s = Scheduler::new(3, 1);
        let _a = s.acquire("a").await;
        assert!(granted_within(s.acquire("a"), 50).await.is_none());
        let _b = granted_within(s.acquire("b"), 50)
            .await
            .expect("another tenant runs beside");
        // The waiter that timed out left the queue: nothing is left waiting.
        assert!(s.lock().waiting.is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_block_the_next() {
        let s = Scheduler::new(1, 2);
        let a = s.acquire("a").await;
        assert!(granted_within(s.acquire("b"), 30).await.is_none());
        let s2 = Arc::clone(&s);
        let c = tokio::spawn(async move { s2.acquire("c").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(1), c)
            .await
            .expect("c gets the slot")
            .unwrap();
        assert!(c.since() <= Instant::now());
    }
}
