use std::sync::Arc;

use tokio::sync::mpsc;

use crate::ack::AckTracker;
use crate::event::ChangeBatch;

/// A consumer's end of the pipeline: a bounded queue of deliveries.
pub struct Subscription {
    pub(crate) name: String,
    pub(crate) rx: mpsc::Receiver<Delivery>,
}

impl Subscription {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next delivery; `None` once capture has stopped and the queue is empty.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// A delivery that is already queued, without waiting: lets a consumer that fell behind
    /// take what is waiting as one larger unit of work.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.rx.try_recv().ok()
    }
}

/// One batch for one consumer. Call [`Delivery::ack`] (or keep the [`Ack`] and call it later) once
/// the batch is durably handled; an unacknowledged batch is delivered again after a restart.
pub struct Delivery {
    pub batch: Arc<ChangeBatch>,
    pub ack: Ack,
}

impl Delivery {
    pub fn ack(self) {
        self.ack.ack();
    }
}

/// The acknowledgement of one batch by one consumer.
pub struct Ack {
    pub(crate) consumer: usize,
    pub(crate) seq: u64,
    pub(crate) tracker: Arc<AckTracker>,
}

impl Ack {
    pub fn ack(self) {
        self.tracker.ack(self.consumer, self.seq);
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }
}
