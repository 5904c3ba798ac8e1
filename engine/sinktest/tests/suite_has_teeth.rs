//! The suite against a reference sink with an in-memory remote: it passes the whole suite when
//! correct, and each deliberate defect is caught by the check meant for it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use lily_delivery::{Record, Sink, SinkError};
use lily_sinktest::{checks, Fault, Received, Replay, RetryAfter, Shape, SinkHarness, Support};

/// Defects the reference sink can be built with (the harness's const parameter).
const CORRECT: u8 = 0;
const SECRET_IN_ERROR: u8 = 1;
const SECRET_IN_LOG: u8 = 2;
const PERMANENT_ON_429: u8 = 3;
const RETRYABLE_ON_404: u8 = 4;
const LOSES_RETRY_AFTER: u8 = 5;
const REORDERS: u8 = 6;
const DROPS_THE_ID: u8 = 7;
const NO_TIMEOUT: u8 = 8;
const PERMANENT_ON_DROP: u8 = 9;

lily_sinktest::compliance!(MemHarness<CORRECT>);

/// Per defect, so a defective harness logging its secret in a parallel test cannot trip a
/// correct one's check (the capture is process-wide).
fn secret<const D: u8>() -> String {
    format!("mem-secret-{D}-5f2d9c")
}
const TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Default)]
struct Remote {
    /// (idempotency key, fields) of each accepted record, in order.
    accepted: Vec<(Option<String>, serde_json::Map<String, serde_json::Value>)>,
    next: Option<Fault>,
}

struct MemSink<const D: u8> {
    remote: Arc<Mutex<Remote>>,
}

impl<const D: u8> MemSink<D> {
    fn remote(&self) -> MutexGuard<'_, Remote> {
        self.remote.lock().unwrap()
    }

    fn error(&self, retryable: bool, text: String, retry_after: Option<Duration>) -> SinkError {
        let message = if D == SECRET_IN_ERROR {
            format!("{text} (with key {})", secret::<D>())
        } else {
            text
        };
        if retryable {
            SinkError::Retryable {
                message,
                retry_after,
            }
        } else {
            SinkError::Permanent { message }
        }
    }

    async fn send(&self, record: &Record) -> Result<(), SinkError> {
        if D == SECRET_IN_LOG {
            tracing::debug!(key = %secret::<D>(), id = %record.id, "sending");
        }
        let fault = {
            let mut remote = self.remote();
            match remote.next {
                // Refused lasts: nothing listens until healed.
                Some(Fault::Refused) => remote.next.clone(),
                _ => remote.next.take(),
            }
        };
        match fault {
            None => {
                let id = (D != DROPS_THE_ID).then(|| record.id.clone());
                self.remote().accepted.push((id, record.fields.clone()));
                Ok(())
            }
            Some(Fault::Hang) => {
                if D == NO_TIMEOUT {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(TIMEOUT).await;
                Err(self.error(true, "no answer in time".into(), None))
            }
            Some(Fault::Dropped) => {
                Err(self.error(D != PERMANENT_ON_DROP, "connection reset".into(), None))
            }
            Some(fault @ (Fault::Refused | Fault::Malformed)) => {
                Err(self.error(true, format!("{fault:?}"), None))
            }
            Some(Fault::Http {
                status,
                retry_after,
            }) => {
                let after = retry_after.and_then(|a| match a {
                    _ if D == LOSES_RETRY_AFTER => None,
                    RetryAfter::Seconds(s) => Some(Duration::from_secs(s)),
                    RetryAfter::Date(at) => at.duration_since(std::time::SystemTime::now()).ok(),
                });
                let retryable = match status {
                    429 => D != PERMANENT_ON_429,
                    404 => D == RETRYABLE_ON_404,
                    408 | 425 | 500..=599 => true,
                    _ => false,
                };
                Err(self.error(retryable, format!("status {status}"), after))
            }
            Some(other) => unreachable!("{other:?}"),
        }
    }
}

#[async_trait]
impl<const D: u8> Sink for MemSink<D> {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn max_batch(&self) -> usize {
        16
    }

    async fn deliver(&self, records: &[Record]) -> Result<(), SinkError> {
        let mut order: Vec<&Record> = records.iter().collect();
        if D == REORDERS {
            order.reverse();
        }
        for r in order {
            self.send(r).await?;
        }
        Ok(())
    }
}

struct MemHarness<const D: u8> {
    sink: MemSink<D>,
}

#[async_trait]
impl<const D: u8> SinkHarness for MemHarness<D> {
    type Sink = MemSink<D>;

    const SHAPE: Shape = Shape::Stream;
    const REPLAY: Replay = Replay::IdempotencyKey;

    async fn start() -> Self {
        MemHarness {
            sink: MemSink {
                remote: Arc::default(),
            },
        }
    }

    fn sink(&self) -> &MemSink<D> {
        &self.sink
    }

    fn supports(fault: &Fault) -> Support {
        match fault {
            Fault::Refused
            | Fault::Dropped
            | Fault::Hang
            | Fault::Malformed
            | Fault::Http { .. } => Support::Yes,
            _ => Support::No("an in-memory remote is no database"),
        }
    }

    async fn inject(&self, fault: &Fault, _records: &mut Vec<Record>) {
        self.sink.remote().next = Some(fault.clone());
    }

    async fn received(&self) -> Vec<Received> {
        self.sink
            .remote()
            .accepted
            .iter()
            .map(|(id, fields)| Received {
                key: fields["k"].as_str().map(str::to_string),
                seq: fields["seq"].as_u64(),
                idempotency_key: id.clone(),
                version: None,
            })
            .collect()
    }

    fn secrets(&self) -> Vec<String> {
        vec![secret::<D>()]
    }

    fn timeout(&self) -> Option<Duration> {
        Some(TIMEOUT)
    }
}

/// `check` fails (panics), as it must for the defect it is given.
fn catches(what: &str, check: fn()) {
    let result = catch_unwind(AssertUnwindSafe(check));
    assert!(result.is_err(), "the suite missed a defect: {what}");
}

#[test]
fn a_secret_in_an_error_is_caught() {
    catches(
        "secret in an error",
        checks::secrets_are_never_shown::<MemHarness<SECRET_IN_ERROR>>,
    );
    // Every check looks, not only the dedicated one.
    catches(
        "secret in an error",
        checks::http_5xx_are_retryable::<MemHarness<SECRET_IN_ERROR>>,
    );
}

#[test]
fn a_secret_in_a_log_line_is_caught() {
    catches(
        "secret in a log line",
        checks::delivers_and_the_remote_receives::<MemHarness<SECRET_IN_LOG>>,
    );
}

#[test]
fn misclassified_statuses_are_caught() {
    catches(
        "429 as permanent",
        checks::http_429_is_retryable::<MemHarness<PERMANENT_ON_429>>,
    );
    catches(
        "404 as retryable",
        checks::http_other_4xx_are_permanent::<MemHarness<RETRYABLE_ON_404>>,
    );
    catches(
        "a dropped connection as permanent",
        checks::connection_dropped_is_retryable::<MemHarness<PERMANENT_ON_DROP>>,
    );
}

#[test]
fn a_lost_retry_after_is_caught() {
    catches(
        "Retry-After seconds lost",
        checks::retry_after_seconds_reaches_the_error::<MemHarness<LOSES_RETRY_AFTER>>,
    );
    catches(
        "Retry-After date lost",
        checks::retry_after_http_date_reaches_the_error::<MemHarness<LOSES_RETRY_AFTER>>,
    );
}

#[test]
fn reordering_is_caught() {
    catches(
        "records of a key reordered",
        checks::per_key_order_is_kept::<MemHarness<REORDERS>>,
    );
}

#[test]
fn a_missing_idempotency_key_is_caught() {
    catches(
        "no idempotency key",
        checks::replay_is_recognisable_or_a_no_op::<MemHarness<DROPS_THE_ID>>,
    );
}

#[test]
fn an_unbounded_hang_is_caught() {
    catches(
        "a hang past the timeout",
        checks::hung_remote_is_bounded_by_the_timeout::<MemHarness<NO_TIMEOUT>>,
    );
}
