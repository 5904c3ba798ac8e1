//! The checks. Each is a plain function generic over the harness, called by the `#[test]`s the
//! [`compliance!`](crate::compliance) macro generates; each starts a fresh harness on a runtime
//! of its own.

use std::future::Future;
use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lily_delivery::{Record, Sink, SinkError};

use crate::capture;
use crate::{Fault, Received, Replay, RetryAfter, Shape, SinkHarness, Support, SLACK};

/// Longest an ordinary delivery may take before the check gives up on it (faults such as a
/// lock timeout take a moment by design).
const DELIVERY_BOUND: Duration = Duration::from_secs(60);
/// How long past `timeout + SLACK` the hang check keeps waiting before calling the sink stuck.
const GRACE: Duration = Duration::from_secs(3);
/// Statuses the suite expects to be retried; every other 4xx is permanent.
const RETRYABLE_4XX: [u16; 3] = [408, 425, 429];
const STATUSES_5XX: [u16; 7] = [500, 501, 502, 503, 504, 507, 511];
const OTHER_4XX: [u16; 11] = [400, 401, 403, 404, 405, 409, 410, 413, 415, 422, 451];

/// What a check needs from the harness, for the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    Nothing,
    Fault(Fault),
    Replay,
    Secrets,
}

const fn http(status: u16) -> Need {
    Need::Fault(Fault::Http {
        status,
        retry_after: None,
    })
}

/// Every check, in the order the macro lists them, with what it needs.
pub const CHECKS: &[(&str, Need)] = &[
    ("delivers_and_the_remote_receives", Need::Nothing),
    (
        "hung_remote_is_bounded_by_the_timeout",
        Need::Fault(Fault::Hang),
    ),
    (
        "connection_refused_is_retryable",
        Need::Fault(Fault::Refused),
    ),
    (
        "connection_dropped_is_retryable",
        Need::Fault(Fault::Dropped),
    ),
    (
        "malformed_answer_is_retryable",
        Need::Fault(Fault::Malformed),
    ),
    ("http_408_is_retryable", http(408)),
    ("http_425_is_retryable", http(425)),
    ("http_429_is_retryable", http(429)),
    ("http_5xx_are_retryable", http(503)),
    ("http_other_4xx_are_permanent", http(400)),
    (
        "retry_after_seconds_reaches_the_error",
        Need::Fault(Fault::Http {
            status: 503,
            retry_after: Some(RetryAfter::Seconds(7)),
        }),
    ),
    (
        "retry_after_http_date_reaches_the_error",
        Need::Fault(Fault::Http {
            status: 503,
            retry_after: Some(RetryAfter::Date(SystemTime::UNIX_EPOCH)),
        }),
    ),
    (
        "server_shutting_down_is_retryable",
        Need::Fault(Fault::ShuttingDown),
    ),
    ("lock_timeout_is_retryable", Need::Fault(Fault::LockTimeout)),
    (
        "constraint_violation_is_permanent",
        Need::Fault(Fault::ConstraintViolation),
    ),
    ("data_error_is_permanent", Need::Fault(Fault::DataError)),
    ("replay_is_recognisable_or_a_no_op", Need::Replay),
    ("per_key_order_is_kept", Need::Nothing),
    ("secrets_are_never_shown", Need::Secrets),
];

// ---------------------------------------------------------------------------------------------
// Running a check.

/// Runs `check` on a multi-threaded runtime of its own (so a sink that blocks its thread cannot
/// stop the check's own clock), with log capture on. A runtime left with stuck tasks is shut
/// down without waiting for them.
fn block<F: Future<Output = ()>>(check: F) {
    capture::install_capture();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("lily-sinktest: cannot build a Tokio runtime");
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(check)));
    rt.shutdown_timeout(Duration::from_secs(2));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Written straight to the process's stderr, past the test harness's capture, so a skip shows
/// in the output of a passing run.
fn say(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

fn harness_name<H>() -> &'static str {
    std::any::type_name::<H>()
}

fn skip<H: SinkHarness>(check: &str, reason: &str) {
    say(&format!(
        "lily-sinktest: SKIPPED {check} for {}: {reason}",
        harness_name::<H>()
    ));
}

/// `true` (after saying so) when the harness cannot produce `fault`.
fn skipped<H: SinkHarness>(check: &str, fault: &Fault) -> bool {
    match H::supports(fault) {
        Support::Yes => false,
        Support::No(reason) => {
            skip::<H>(check, reason);
            true
        }
    }
}

enum Outcome {
    Delivered,
    Failed(SinkError, Duration),
    Stuck(Duration),
}

/// One check's harness, with every error the sink returned and the log lines since its start.
struct Session<H: SinkHarness> {
    check: &'static str,
    harness: Arc<H>,
    mark: usize,
    errors: Vec<SinkError>,
}

impl<H: SinkHarness> Session<H> {
    async fn start(check: &'static str) -> Self {
        let mark = capture::mark();
        let harness = Arc::new(H::start().await);
        Session {
            check,
            harness,
            mark,
            errors: Vec::new(),
        }
    }

    fn record(&self, key: &str, seq: u64) -> Record {
        self.harness.record(key, seq)
    }

    /// One `deliver` call, in a task of its own, given up on after `bound`.
    async fn deliver(&mut self, records: Vec<Record>, bound: Duration) -> Outcome {
        let harness = Arc::clone(&self.harness);
        let started = Instant::now();
        let mut task = tokio::spawn(async move { harness.sink().deliver(&records).await });
        match tokio::time::timeout(bound, &mut task).await {
            Ok(Ok(Ok(()))) => Outcome::Delivered,
            Ok(Ok(Err(error))) => {
                self.errors.push(error.clone());
                Outcome::Failed(error, started.elapsed())
            }
            Ok(Err(join)) => match join.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(join) => panic!("{}: the deliver task ended: {join}", self.check),
            },
            Err(_) => {
                task.abort();
                Outcome::Stuck(started.elapsed())
            }
        }
    }

    /// Delivers `records` in calls of at most `max_batch`, each of which must succeed.
    async fn deliver_ok(&mut self, records: Vec<Record>) {
        let max = self.harness.sink().max_batch().max(1);
        for chunk in records.chunks(max) {
            match self.deliver(chunk.to_vec(), DELIVERY_BOUND).await {
                Outcome::Delivered => {}
                Outcome::Failed(e, _) => {
                    panic!(
                        "{}: a delivery to a healthy remote failed: {e:?}",
                        self.check
                    )
                }
                Outcome::Stuck(t) => panic!(
                    "{}: a delivery to a healthy remote did not return in {t:?}",
                    self.check
                ),
            }
        }
    }

    /// Injects `fault`, delivers one record, and returns the error (which it must be).
    async fn fail_with(&mut self, fault: &Fault, key: &str) -> SinkError {
        let mut records = vec![self.record(key, 1)];
        self.harness.inject(fault, &mut records).await;
        match self.deliver(records, DELIVERY_BOUND).await {
            Outcome::Failed(e, _) => e,
            Outcome::Delivered => panic!(
                "{}: {fault:?}: the delivery succeeded; the harness did not make the remote \
                 misbehave, or the sink hid the failure",
                self.check
            ),
            Outcome::Stuck(t) => panic!(
                "{}: {fault:?}: the delivery did not return in {t:?}",
                self.check
            ),
        }
    }

    async fn received(&self) -> Vec<Received> {
        self.harness.received().await
    }

    /// The check that runs at the end of every check: no secret in any error the sink returned
    /// (`Display` and `Debug`), in the sink's `Debug`, or in any log line written meanwhile.
    fn finish(self) {
        let secrets: Vec<String> = self.harness.secrets();
        for s in &secrets {
            assert!(
                s.chars().count() >= 6,
                "{}: harness secret {s:?} is too short to search for without false alarms",
                self.check
            );
        }
        let mut places: Vec<(&str, String)> = Vec::new();
        for e in &self.errors {
            places.push(("an error's Display", e.to_string()));
            places.push(("an error's Debug", format!("{e:?}")));
        }
        if let Some(shown) = self.harness.describe() {
            places.push(("the sink's Debug", shown));
        }
        let lines = capture::captured_since(self.mark);
        // LILY_SINKTEST_SHOW=1 shows each check's errors; =lines the log lines scanned too.
        let show = std::env::var("LILY_SINKTEST_SHOW").unwrap_or_default();
        if !show.is_empty() {
            let mut out = format!(
                "lily-sinktest: {} for {}: {} log lines scanned, errors:",
                self.check,
                harness_name::<H>(),
                lines.len()
            );
            for e in &self.errors {
                out.push_str(&format!("\n  {e:?}"));
            }
            if show == "lines" {
                for line in &lines {
                    out.push_str(&format!("\n  | {line}"));
                }
            }
            say(&out);
        }
        for line in lines {
            places.push(("a log line", line));
        }
        let leaks: Vec<String> = secrets
            .iter()
            .enumerate()
            .flat_map(|(i, secret)| {
                places
                    .iter()
                    .filter(|(_, text)| text.contains(secret.as_str()))
                    .map(move |(what, text)| format!("secret #{i} in {what}: {text}"))
            })
            .collect();
        assert!(
            leaks.is_empty(),
            "{}: secrets shown:\n{}",
            self.check,
            leaks.join("\n")
        );
    }
}

fn expect_retryable(check: &str, what: &str, error: &SinkError) {
    assert!(
        error.is_retryable(),
        "{check}: {what} should be retryable, got {error:?}"
    );
}

fn expect_permanent(check: &str, what: &str, error: &SinkError) {
    assert!(
        !error.is_retryable(),
        "{check}: {what} should be permanent, got {error:?}"
    );
}

fn retry_after(error: &SinkError) -> Option<Duration> {
    match error {
        SinkError::Retryable { retry_after, .. } => *retry_after,
        SinkError::Permanent { .. } => None,
    }
}

/// The single-fault classification checks. A fault that lasts (a refused or stopped remote)
/// is met twice: the second attempt cannot reuse a connection and must open one.
fn classify<H: SinkHarness>(check: &'static str, fault: Fault, retryable: bool) {
    if skipped::<H>(check, &fault) {
        return;
    }
    block(async move {
        let mut s = Session::<H>::start(check).await;
        let error = s.fail_with(&fault, "k-fault").await;
        let what = format!("{fault:?}");
        if retryable {
            expect_retryable(check, &what, &error);
        } else {
            expect_permanent(check, &what, &error);
        }
        if matches!(fault, Fault::Refused | Fault::ShuttingDown) {
            let again = vec![s.record("k-fault", 2)];
            match s.deliver(again, DELIVERY_BOUND).await {
                Outcome::Failed(error, _) => {
                    expect_retryable(check, &format!("{what}, a second attempt"), &error);
                }
                Outcome::Delivered => {
                    panic!("{check}: {what}: a second attempt reached a remote that is gone")
                }
                Outcome::Stuck(t) => {
                    panic!("{check}: {what}: a second attempt did not return in {t:?}")
                }
            }
        }
        s.finish();
    });
}

/// HTTP statuses, one harness, one scripted answer per delivery.
fn statuses<H: SinkHarness>(check: &'static str, codes: &'static [u16], retryable: bool) {
    let probe = Fault::Http {
        status: codes[0],
        retry_after: None,
    };
    if skipped::<H>(check, &probe) {
        return;
    }
    block(async move {
        let mut s = Session::<H>::start(check).await;
        for (n, &status) in codes.iter().enumerate() {
            let fault = Fault::Http {
                status,
                retry_after: None,
            };
            let error = s.fail_with(&fault, &format!("k-http-{n}")).await;
            let what = format!("HTTP {status}");
            if retryable {
                expect_retryable(check, &what, &error);
            } else {
                expect_permanent(check, &what, &error);
            }
        }
        s.finish();
    });
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// Baseline: a record reaches the remote, which the other checks rely on to mean anything.
pub fn delivers_and_the_remote_receives<H: SinkHarness>() {
    const CHECK: &str = "delivers_and_the_remote_receives";
    block(async {
        let mut s = Session::<H>::start(CHECK).await;
        let sink = s.harness.sink();
        assert!(!sink.kind().is_empty(), "{CHECK}: kind() is empty");
        assert!(sink.max_batch() >= 1, "{CHECK}: max_batch() is 0");
        let record = s.record("k-basic", 1);
        s.deliver_ok(vec![record.clone()]).await;
        let got: Vec<Received> = s
            .received()
            .await
            .into_iter()
            .filter(|r| r.key.as_deref() == Some("k-basic"))
            .collect();
        assert_eq!(got.len(), 1, "{CHECK}: the remote got {got:?}");
        assert_eq!(got[0].seq, Some(1), "{CHECK}: {got:?}");
        if H::REPLAY == Replay::IdempotencyKey {
            assert_eq!(
                got[0].idempotency_key.as_deref(),
                Some(record.id.as_str()),
                "{CHECK}: the record's id did not reach the remote as its idempotency key"
            );
        }
        s.finish();
    });
}

/// A remote that takes the request and never answers is given up on, as retryable, within the
/// sink's configured timeout plus [`SLACK`].
pub fn hung_remote_is_bounded_by_the_timeout<H: SinkHarness>() {
    const CHECK: &str = "hung_remote_is_bounded_by_the_timeout";
    if skipped::<H>(CHECK, &Fault::Hang) {
        return;
    }
    block(async {
        let mut s = Session::<H>::start(CHECK).await;
        let timeout = s.harness.timeout().unwrap_or_else(|| {
            panic!("{CHECK}: the harness supports Fault::Hang but reports no timeout")
        });
        let mut records = vec![s.record("k-hang", 1)];
        s.harness.inject(&Fault::Hang, &mut records).await;
        let limit = timeout + SLACK;
        match s.deliver(records, limit + GRACE).await {
            Outcome::Failed(error, took) => {
                expect_retryable(CHECK, "a hung remote", &error);
                assert!(
                    took <= limit,
                    "{CHECK}: gave up after {took:?}, past the timeout ({timeout:?}) + {SLACK:?}"
                );
            }
            Outcome::Stuck(took) => panic!(
                "{CHECK}: deliver had not returned after {took:?}: the sink's timeout \
                 ({timeout:?}) does not bound a remote that stops answering"
            ),
            Outcome::Delivered => panic!("{CHECK}: delivered to a hung remote"),
        }
        s.finish();
    });
}

pub fn connection_refused_is_retryable<H: SinkHarness>() {
    classify::<H>("connection_refused_is_retryable", Fault::Refused, true);
}

pub fn connection_dropped_is_retryable<H: SinkHarness>() {
    classify::<H>("connection_dropped_is_retryable", Fault::Dropped, true);
}

pub fn malformed_answer_is_retryable<H: SinkHarness>() {
    classify::<H>("malformed_answer_is_retryable", Fault::Malformed, true);
}

pub fn http_408_is_retryable<H: SinkHarness>() {
    statuses::<H>("http_408_is_retryable", &RETRYABLE_4XX[0..1], true);
}

pub fn http_425_is_retryable<H: SinkHarness>() {
    statuses::<H>("http_425_is_retryable", &RETRYABLE_4XX[1..2], true);
}

pub fn http_429_is_retryable<H: SinkHarness>() {
    statuses::<H>("http_429_is_retryable", &RETRYABLE_4XX[2..3], true);
}

pub fn http_5xx_are_retryable<H: SinkHarness>() {
    statuses::<H>("http_5xx_are_retryable", &STATUSES_5XX, true);
}

pub fn http_other_4xx_are_permanent<H: SinkHarness>() {
    statuses::<H>("http_other_4xx_are_permanent", &OTHER_4XX, false);
}

/// `Retry-After: 7` on a 429 and a 503 reaches the error as 7 s.
pub fn retry_after_seconds_reaches_the_error<H: SinkHarness>() {
    const CHECK: &str = "retry_after_seconds_reaches_the_error";
    let probe = Fault::Http {
        status: 429,
        retry_after: Some(RetryAfter::Seconds(7)),
    };
    if skipped::<H>(CHECK, &probe) {
        return;
    }
    block(async {
        let mut s = Session::<H>::start(CHECK).await;
        for status in [429, 503] {
            let fault = Fault::Http {
                status,
                retry_after: Some(RetryAfter::Seconds(7)),
            };
            let error = s.fail_with(&fault, &format!("k-ra-{status}")).await;
            expect_retryable(CHECK, &format!("HTTP {status}"), &error);
            assert_eq!(
                retry_after(&error),
                Some(Duration::from_secs(7)),
                "{CHECK}: HTTP {status} with Retry-After: 7 gave {error:?}"
            );
        }
        s.finish();
    });
}

/// `Retry-After: <HTTP-date two minutes ahead>` on a 429 and a 503 reaches the error as about
/// two minutes (HTTP-dates have whole seconds, and a moment passes).
pub fn retry_after_http_date_reaches_the_error<H: SinkHarness>() {
    const CHECK: &str = "retry_after_http_date_reaches_the_error";
    let probe = Fault::Http {
        status: 503,
        retry_after: Some(RetryAfter::Date(SystemTime::now())),
    };
    if skipped::<H>(CHECK, &probe) {
        return;
    }
    block(async {
        let mut s = Session::<H>::start(CHECK).await;
        for status in [429, 503] {
            let at = SystemTime::now() + Duration::from_secs(120);
            let fault = Fault::Http {
                status,
                retry_after: Some(RetryAfter::Date(at)),
            };
            let error = s.fail_with(&fault, &format!("k-date-{status}")).await;
            expect_retryable(CHECK, &format!("HTTP {status}"), &error);
            let wait = retry_after(&error);
            assert!(
                wait.is_some_and(
                    |w| (Duration::from_secs(110)..=Duration::from_secs(120)).contains(&w)
                ),
                "{CHECK}: HTTP {status} with an HTTP-date 120 s ahead gave {error:?}"
            );
        }
        s.finish();
    });
}

pub fn server_shutting_down_is_retryable<H: SinkHarness>() {
    classify::<H>(
        "server_shutting_down_is_retryable",
        Fault::ShuttingDown,
        true,
    );
}

pub fn lock_timeout_is_retryable<H: SinkHarness>() {
    classify::<H>("lock_timeout_is_retryable", Fault::LockTimeout, true);
}

pub fn constraint_violation_is_permanent<H: SinkHarness>() {
    classify::<H>(
        "constraint_violation_is_permanent",
        Fault::ConstraintViolation,
        false,
    );
}

pub fn data_error_is_permanent<H: SinkHarness>() {
    classify::<H>("data_error_is_permanent", Fault::DataError, false);
}

/// The same record delivered twice (a replay): the remote gets the record's id as its
/// idempotency key both times, or (an upsert) its rows are exactly as after the first time.
pub fn replay_is_recognisable_or_a_no_op<H: SinkHarness>() {
    const CHECK: &str = "replay_is_recognisable_or_a_no_op";
    if let Replay::Unsupported(reason) = H::REPLAY {
        skip::<H>(CHECK, reason);
        return;
    }
    block(async {
        let mut s = Session::<H>::start(CHECK).await;
        let record = s.record("k-replay", 1);
        s.deliver_ok(vec![record.clone()]).await;
        let first = s.received().await;
        s.deliver_ok(vec![record.clone()]).await;
        let second = s.received().await;
        let of_key = |all: &[Received]| -> Vec<Received> {
            all.iter()
                .filter(|r| r.key.as_deref() == Some("k-replay"))
                .cloned()
                .collect()
        };
        match H::REPLAY {
            Replay::IdempotencyKey => {
                let got = of_key(&second);
                assert_eq!(got.len(), 2, "{CHECK}: the remote got {got:?}");
                for r in &got {
                    assert_eq!(
                        r.idempotency_key.as_deref(),
                        Some(record.id.as_str()),
                        "{CHECK}: a copy reached the remote without the record's id as its \
                         idempotency key: {r:?}"
                    );
                }
            }
            Replay::Upsert => {
                assert_eq!(
                    of_key(&first).len(),
                    1,
                    "{CHECK}: after one delivery the remote holds {first:?}"
                );
                assert_eq!(
                    second.len(),
                    first.len(),
                    "{CHECK}: the replay changed the row count: {first:?} then {second:?}"
                );
                assert_eq!(
                    second, first,
                    "{CHECK}: the replay changed the remote's rows"
                );
            }
            Replay::Unsupported(_) => unreachable!(),
        }
        s.finish();
    });
}

/// Records of two interleaved keys, delivered in as few calls as `max_batch` allows: per key,
/// the remote gets them in order (a stream) or ends up with the last one (a table).
pub fn per_key_order_is_kept<H: SinkHarness>() {
    const CHECK: &str = "per_key_order_is_kept";
    const PLAN: [(&str, u64); 8] = [
        ("k-a", 1),
        ("k-b", 1),
        ("k-a", 2),
        ("k-a", 3),
        ("k-b", 2),
        ("k-a", 4),
        ("k-b", 3),
        ("k-a", 5),
    ];
    block(async {
        let mut s = Session::<H>::start(CHECK).await;
        let records: Vec<Record> = PLAN.iter().map(|(k, n)| s.record(k, *n)).collect();
        let max = s.harness.sink().max_batch();
        if max < PLAN.len() {
            say(&format!(
                "lily-sinktest: NOTE {CHECK} for {}: max_batch() is {max}, so the {} records go \
                 in calls of {max}, in order",
                harness_name::<H>(),
                PLAN.len()
            ));
        }
        s.deliver_ok(records).await;
        let got = s.received().await;
        for key in ["k-a", "k-b"] {
            let sent: Vec<u64> = PLAN
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, n)| *n)
                .collect();
            let seen: Vec<Option<u64>> = got
                .iter()
                .filter(|r| r.key.as_deref() == Some(key))
                .map(|r| r.seq)
                .collect();
            match H::SHAPE {
                Shape::Stream => assert_eq!(
                    seen,
                    sent.iter().copied().map(Some).collect::<Vec<_>>(),
                    "{CHECK}: key {key}: sent {sent:?}, the remote got them as {seen:?}"
                ),
                Shape::Table => assert_eq!(
                    seen,
                    vec![sent.last().copied()],
                    "{CHECK}: key {key}: sent {sent:?}, the remote holds {seen:?} (the last \
                     must win)"
                ),
            }
        }
        s.finish();
    });
}

/// Secrets in no error, log line or `Debug`, through a success, a permanent failure and a
/// retryable one (every other check does the same for what it provokes).
pub fn secrets_are_never_shown<H: SinkHarness>() {
    const CHECK: &str = "secrets_are_never_shown";
    if let Support::No(reason) = H::SECRETS {
        skip::<H>(CHECK, reason);
        return;
    }
    block(async {
        let mut s = Session::<H>::start(CHECK).await;
        assert!(
            !s.harness.secrets().is_empty(),
            "{CHECK}: the harness declares SECRETS but lists none"
        );
        // The capture must be live, or this check would pass blind.
        let from = capture::mark();
        tracing::info!(check = CHECK, "lily-sinktest capture probe");
        assert!(
            capture::captured_since(from)
                .iter()
                .any(|l| l.contains("lily-sinktest capture probe")),
            "{CHECK}: log lines are not being captured"
        );

        s.deliver_ok(vec![s.record("k-secret", 1)]).await;
        let permanent = [
            http(400),
            Need::Fault(Fault::ConstraintViolation),
            Need::Fault(Fault::DataError),
        ];
        let retryable = [
            http(503),
            Need::Fault(Fault::Malformed),
            Need::Fault(Fault::Dropped),
            Need::Fault(Fault::LockTimeout),
        ];
        for group in [&permanent[..], &retryable[..]] {
            let fault = group.iter().find_map(|need| match need {
                Need::Fault(f) if H::supports(f) == Support::Yes => Some(f.clone()),
                _ => None,
            });
            if let Some(fault) = fault {
                s.fail_with(&fault, "k-secret-fault").await;
            }
        }
        assert!(
            !s.errors.is_empty(),
            "{CHECK}: the harness supports none of the faults this check provokes"
        );
        s.finish();
    });
}

// ---------------------------------------------------------------------------------------------
// The matrix.

/// Prints which checks run for `H` and which are skipped or ignored, and why; and checks the
/// macro's list against [`CHECKS`].
pub fn matrix<H: SinkHarness>(generated: &[&str], ignored: &[(&str, &str)]) {
    let known: Vec<&str> = CHECKS.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        generated,
        &known[..],
        "lily-sinktest: the compliance! macro and CHECKS list different checks"
    );
    let mut out = format!(
        "lily-sinktest: compliance matrix for {}\n",
        harness_name::<H>()
    );
    let (mut runs, mut skips) = (0, 0);
    for (name, need) in CHECKS {
        let status = if let Some((_, reason)) = ignored.iter().find(|(n, _)| n == name) {
            format!("IGNORED  {reason}")
        } else {
            let support = match need {
                Need::Nothing => Support::Yes,
                Need::Secrets => H::SECRETS,
                Need::Fault(f) => H::supports(f),
                Need::Replay => match H::REPLAY {
                    Replay::Unsupported(reason) => Support::No(reason),
                    _ => Support::Yes,
                },
            };
            match support {
                Support::Yes => {
                    runs += 1;
                    "run".to_string()
                }
                Support::No(reason) => {
                    skips += 1;
                    format!("skip     {reason}")
                }
            }
        };
        out.push_str(&format!("  {name:<42} {status}\n"));
    }
    out.push_str(&format!(
        "  {runs} run, {skips} skipped, {} ignored as known defects; every check also looks for \
         secrets in errors and log lines",
        ignored.len()
    ));
    say(&out);
}
