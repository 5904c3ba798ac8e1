//! Counting a change batch's records down to its acknowledgement.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

type OnDone = Box<dyn FnOnce() + Send>;

/// Runs `on_done` once `count` records (over all sinks) are finished: delivered, dead-lettered
/// or skipped because the ledger held them.
pub struct Completion {
    remaining: AtomicUsize,
    on_done: Mutex<Option<OnDone>>,
}

impl Completion {
    pub fn new(count: usize, on_done: impl FnOnce() + Send + 'static) -> std::sync::Arc<Self> {
        let c = std::sync::Arc::new(Completion {
            remaining: AtomicUsize::new(count),
            on_done: Mutex::new(Some(Box::new(on_done))),
        });
        if count == 0 {
            c.fire();
        }
        c
    }

    pub fn complete_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.fire();
        }
    }

    pub fn remaining(&self) -> usize {
        self.remaining.load(Ordering::Acquire)
    }

    fn fire(&self) {
        let f = self.on_done.lock().expect("completion lock").take();
        if let Some(f) = f {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn fires_once_at_zero() {
        let fired = Arc::new(AtomicBool::new(false));
        let f = fired.clone();
        let c = Completion::new(2, move || assert!(!f.swap(true, Ordering::SeqCst)));
        c.complete_one();
        assert!(!fired.load(Ordering::SeqCst));
        c.complete_one();
        assert!(fired.load(Ordering::SeqCst));
        let f2 = Arc::new(AtomicBool::new(false));
        let f3 = f2.clone();
        let _ = Completion::new(0, move || f3.store(true, Ordering::SeqCst));
        assert!(f2.load(Ordering::SeqCst));
    }
}
