//! A scripted sink for the runner's and the replay's unit tests.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Semaphore;

use crate::sink::{Record, Sink, SinkError};

/// One `deliver` call as the sink saw it.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) at: Instant,
    pub(crate) ids: Vec<String>,
    /// The ordering key of each record, in call order.
    pub(crate) keys: Vec<Option<String>>,
}

/// A sink that answers from a script per record id (an empty script means `Ok`) and logs every
/// call. A multi-record call takes the next scripted answer of each of its records and fails
/// with the first error among them.
pub(crate) struct ScriptedSink {
    pub(crate) max_batch: usize,
    pub(crate) delay: Duration,
    script: Mutex<HashMap<String, VecDeque<Result<(), SinkError>>>>,
    calls: Mutex<Vec<Call>>,
    /// When set, every call waits for a permit first (to hold a lane busy).
    pub(crate) gate: Option<Semaphore>,
    in_flight: AtomicUsize,
    pub(crate) max_in_flight: AtomicUsize,
}

impl ScriptedSink {
    pub(crate) fn new() -> Self {
        ScriptedSink {
            max_batch: 1,
            delay: Duration::ZERO,
            script: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            gate: None,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        }
    }

    pub(crate) fn answer(self, id: &str, answers: Vec<Result<(), SinkError>>) -> Self {
        self.script
            .lock()
            .unwrap()
            .insert(id.to_string(), answers.into());
        self
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub(crate) fn call_ids(&self) -> Vec<Vec<String>> {
        self.calls().into_iter().map(|c| c.ids).collect()
    }
}

#[async_trait]
impl Sink for ScriptedSink {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    async fn deliver(&self, records: &[Record]) -> Result<(), SinkError> {
        self.calls.lock().unwrap().push(Call {
            at: Instant::now(),
            ids: records.iter().map(|r| r.id.clone()).collect(),
            keys: records.iter().map(|r| r.key.clone()).collect(),
        });
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut script = self.script.lock().unwrap();
        let mut result = Ok(());
        for r in records {
            let answer = script
                .get_mut(&r.id)
                .and_then(|s| s.pop_front())
                .unwrap_or(Ok(()));
            if result.is_ok() {
                result = answer;
            }
        }
        result
    }
}

/// Gaps between consecutive calls.
pub(crate) fn gaps(calls: &[Call]) -> Vec<Duration> {
    calls.windows(2).map(|w| w[1].at - w[0].at).collect()
}
