//! The compliance suite every sink runs, in the spirit of Vector's
//! `run_and_assert_sink_compliance`: one set of checks, written once, that each sink passes
//! against a fake (or throwaway real) remote it controls.
//!
//! A sink opts in with a harness and one line in its `tests/compliance.rs`:
//!
//! ```text
//! struct MyHarness { /* the fake remote, the sink built against it */ }
//!
//! #[async_trait::async_trait]
//! impl lily_sinktest::SinkHarness for MyHarness { /* … */ }
//!
//! lily_sinktest::compliance!(MyHarness);
//! ```
//!
//! The macro expands to a `compliance` module with one `#[test]` per check (see [`CHECKS`]) and
//! a `compliance_matrix` test that prints which checks run and which are skipped, and why.
//!
//! **What is checked.** Per failure class ([`Fault`]): that the sink's error is retryable or
//! permanent as the delivery engine needs (timeouts, refused and dropped connections, malformed
//! answers, HTTP 408/425/429/5xx are retryable and other 4xx permanent; for PostgreSQL a server
//! shutting down and a lock timeout are retryable, constraint and data errors permanent); that a
//! `Retry-After` (seconds and HTTP-date) reaches the error; that a hung remote is given up on
//! within the sink's own timeout; that a replayed record reaches the remote with its idempotency
//! key, or changes nothing; that records of one key keep their order; and, in every check, that
//! no secret the sink was given shows up in a log line (every `tracing` event and `log` record,
//! at every level, as text and as JSON) or in an error's `Display` or `Debug`.
//!
//! **Skips are explicit.** A harness declares, per [`Fault`], whether its remote can misbehave
//! that way ([`SinkHarness::supports`]); a class it answers [`Support::No`] for is skipped with
//! the reason written to the test output (straight to stderr, so it shows even for passing
//! tests) and listed by `compliance_matrix`. Nothing is passed silently.
//!
//! **Known defects.** A check that finds a real defect in a sink is not papered over: the sink's
//! line names it, and the check is generated with `#[ignore = "defect: …"]` (it still runs
//! with `cargo test -- --ignored`):
//!
//! ```text
//! lily_sinktest::compliance!(MyHarness, ignore {
//!     hung_remote_is_bounded_by_the_timeout: "defect: no statement timeout",
//! });
//! ```
//!
//! A misspelt check name there is a compile error.
//!
//! **Transport faults come free** for a sink that talks TCP: point it at a [`FaultProxy`] in
//! front of its fake remote, and refused, dropped, hung and garbled connections are one call
//! each, whatever the protocol.
//!
//! `LILY_SINKTEST_SHOW=1 cargo test …` prints each check's errors; `LILY_SINKTEST_SHOW=lines`
//! also the log lines it searched.

mod capture;
#[doc(hidden)]
pub mod checks;
mod proxy;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use lily_delivery::{Record, Sink};
use lily_pgoutput::Lsn;

pub use capture::{captured_since, install_capture, mark};
pub use checks::CHECKS;
pub use proxy::{FaultProxy, GARBAGE};

/// A way the remote misbehaves. A harness makes its remote do this for the next delivery
/// ([`SinkHarness::inject`]); the suite checks how the sink classifies the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Nothing listens where the remote was: connecting is refused (open connections are cut
    /// too, so a pooled one cannot hide it). Expected: retryable.
    Refused,
    /// The remote takes the request and drops the connection without answering (a reset, a
    /// broken pipe). Expected: retryable.
    Dropped,
    /// The remote takes the request and never answers. Expected: retryable, and within the
    /// sink's own timeout ([`SinkHarness::timeout`]) plus [`SLACK`].
    Hang,
    /// The remote answers with bytes that are not its protocol. Expected: retryable (the sink
    /// cannot know whether the request was processed; its id makes a repeat harmless).
    Malformed,
    /// HTTP: the remote answers with this status, and with this `Retry-After` if given.
    /// Expected: 408, 425, 429 and 5xx retryable (with the `Retry-After` in the error), any other
    /// 4xx permanent.
    Http {
        status: u16,
        retry_after: Option<RetryAfter>,
    },
    /// The server is shutting down under a statement in flight (PostgreSQL: a fast shutdown,
    /// `FATAL 57P01`). Expected: retryable.
    ShuttingDown,
    /// A lock the write needs is held elsewhere past the server's lock timeout (PostgreSQL:
    /// `55P03`). Expected: retryable.
    LockTimeout,
    /// The records break a constraint of the remote (PostgreSQL class 23). The harness may
    /// change the records to do so. Expected: permanent.
    ConstraintViolation,
    /// A value of the records does not fit its column's type (PostgreSQL class 22). The harness
    /// may change the records to do so. Expected: permanent.
    DataError,
}

/// A `Retry-After` for [`Fault::Http`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// Delta-seconds: `Retry-After: 7`.
    Seconds(u64),
    /// An HTTP-date (IMF-fixdate) for this time.
    Date(SystemTime),
}

/// Whether a harness's remote can misbehave in some way, or the sink has some property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    Yes,
    /// Not applicable to this sink, and why: the checks that need it are skipped, visibly.
    No(&'static str),
}

/// How the remote keeps what it is sent: this is how [`SinkHarness::received`] is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Every accepted request (or line) is kept, in arrival order: HTTP endpoints, logs,
    /// queues.
    Stream,
    /// One row per key, the last write winning: a table written by upsert.
    Table,
}

/// What makes a replayed record (after a crash, a retry, `lily dlq replay`) harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The record's id reaches the remote as its deduplication key (`webhook-id`, a log line's
    /// `id`): the remote sees the replay and can drop it.
    IdempotencyKey,
    /// The remote keeps one row per key and the sink upserts: a replay changes nothing.
    Upsert,
    /// The remote has no way to recognise a replay; the check is skipped with this reason.
    Unsupported(&'static str),
}

/// One thing the remote accepted or holds, as read back by [`SinkHarness::received`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Received {
    /// The record's ordering key as the remote got it (the `k` field of [`standard_record`]).
    pub key: Option<String>,
    /// The record's sequence number as the remote got it (the `seq` field).
    pub seq: Option<u64>,
    /// The deduplication key the remote saw (`webhook-id`, a line's `id`), for
    /// [`Replay::IdempotencyKey`].
    pub idempotency_key: Option<String>,
    /// A row's version (PostgreSQL `xmin`), for [`Replay::Upsert`]: a no-op replay keeps it.
    pub version: Option<String>,
}

/// How much longer than its configured timeout a sink may take to give up on a hung remote.
pub const SLACK: Duration = Duration::from_secs(2);

/// A sink wired to a remote the test controls. One harness is started per check, so faults need
/// not be undone.
#[async_trait]
pub trait SinkHarness: Send + Sync + Sized + 'static {
    type Sink: Sink;

    /// Starts a fresh fake (or throwaway real) remote and builds the sink against it, as its
    /// config would in production, with a short timeout (a second or two) where it has one.
    /// Called within a multi-threaded Tokio runtime. Panics if it cannot.
    async fn start() -> Self;

    /// The sink under test.
    fn sink(&self) -> &Self::Sink;

    /// Whether the remote can be made to misbehave this way (see [`Fault`]). Static, so the
    /// skipped checks cost nothing and `compliance_matrix` can list them.
    fn supports(fault: &Fault) -> Support;

    /// How the remote keeps what it accepts.
    const SHAPE: Shape;

    /// What makes a replay harmless for this remote.
    const REPLAY: Replay;

    /// Makes the remote misbehave as `fault` says, for the next delivery (of `records`, which
    /// the harness may change for content faults such as [`Fault::DataError`]). Only called for
    /// faults [`supports`](Self::supports) answers [`Support::Yes`] for.
    async fn inject(&self, fault: &Fault, records: &mut Vec<Record>);

    /// What the remote accepted (for [`Shape::Stream`], in arrival order) or holds (for
    /// [`Shape::Table`]).
    async fn received(&self) -> Vec<Received>;

    /// Whether the sink is given any secret. [`Support::No`] skips `secrets_are_never_shown`
    /// (the other checks still look for [`secrets`](Self::secrets), of which there are none).
    const SECRETS: Support = Support::Yes;

    /// Every secret the sink was given (signing keys, passwords, tokens in URLs): none may show
    /// in a log line, an error or the sink's `Debug`. Each at least 6 characters, so a search
    /// for it cannot match by accident.
    fn secrets(&self) -> Vec<String>;

    /// The sink's configured per-attempt timeout. Required when [`Fault::Hang`] is supported.
    fn timeout(&self) -> Option<Duration>;

    /// The sink's `Debug` rendering, if it has one; checked for secrets too.
    fn describe(&self) -> Option<String> {
        None
    }

    /// A record the remote accepts, with ordering key `key` and sequence number `seq`. Its
    /// `fields` are `{"k": key, "seq": seq}` by default ([`standard_record`]); a harness whose
    /// remote needs other fields overrides this and reads them back in
    /// [`received`](Self::received).
    fn record(&self, key: &str, seq: u64) -> Record {
        standard_record(key, seq)
    }
}

/// The suite's records: id `sinktest:<lsn>:<seq>` (no `.`, as Standard Webhooks requires), the
/// key as the ordering key, and fields `{"k": key, "seq": seq}`.
pub fn standard_record(key: &str, seq: u64) -> Record {
    let mut fields = serde_json::Map::new();
    fields.insert("k".into(), key.into());
    fields.insert("seq".into(), seq.into());
    // Distinct per key and seq, so two records never share an id.
    let lsn = Lsn(0x1_0000_0000 + (fnv(key) & 0xFFFF_FF00) + seq);
    Record {
        id: format!("sinktest:{lsn}:{seq}"),
        commit_lsn: lsn,
        commit_ts_us: 1_700_000_000_000_000 + i64::try_from(seq).unwrap_or(0),
        key: Some(key.to_string()),
        fields,
    }
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Generates the compliance suite for a [`SinkHarness`]: a `compliance` module with one test
/// per check and a `compliance_matrix` test. See the crate docs.
#[macro_export]
macro_rules! compliance {
    ($harness:ty $(,)?) => {
        $crate::__compliance_checks!($harness, []);
    };
    ($harness:ty, ignore { $($check:ident : $reason:literal),* $(,)? } $(,)?) => {
        $crate::__compliance_checks!($harness, [$($check : $reason),*]);
    };
}

/// The list of checks, once; kept in step with [`CHECKS`] by every sink's `compliance_matrix`
/// test, which compares the two.
#[doc(hidden)]
#[macro_export]
macro_rules! __compliance_checks {
    ($harness:ty, [$($ignored:ident : $reason:literal),*]) => {
        $crate::__compliance_module! {
            $harness, [$($ignored : $reason),*],
            delivers_and_the_remote_receives,
            hung_remote_is_bounded_by_the_timeout,
            connection_refused_is_retryable,
            connection_dropped_is_retryable,
            malformed_answer_is_retryable,
            http_408_is_retryable,
            http_425_is_retryable,
            http_429_is_retryable,
            http_5xx_are_retryable,
            http_other_4xx_are_permanent,
            retry_after_seconds_reaches_the_error,
            retry_after_http_date_reaches_the_error,
            server_shutting_down_is_retryable,
            lock_timeout_is_retryable,
            constraint_violation_is_permanent,
            data_error_is_permanent,
            replay_is_recognisable_or_a_no_op,
            per_key_order_is_kept,
            secrets_are_never_shown,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __compliance_module {
    ($harness:ty, [$($ignored:ident : $reason:literal),*], $($check:ident),* $(,)?) => {
        mod compliance {
            #[allow(unused_imports)]
            use super::*;

            $crate::__compliance_picker!(($) $harness, [$($ignored : $reason),*]);

            $( __lily_sinktest_check!($check); )*

            /// Which checks run for this sink and which are skipped (and why), on stderr.
            #[test]
            fn compliance_matrix() {
                $crate::checks::matrix::<$harness>(
                    &[$(stringify!($check)),*],
                    &[$((stringify!($ignored), $reason)),*],
                );
            }

            // A check named in `ignore { … }` that does not exist is a compile error.
            $( const _: fn() = $ignored; )*
        }
    };
}

/// Defines `__lily_sinktest_check!(name)`: a `#[test]` calling `checks::name::<Harness>()`,
/// `#[ignore = reason]` when the sink's line lists it. (`$d` is a `$`, for the inner macro.)
#[doc(hidden)]
#[macro_export]
macro_rules! __compliance_picker {
    (($d:tt) $harness:ty, [$($ignored:ident : $reason:literal),*]) => {
        macro_rules! __lily_sinktest_check {
            $(
                ($ignored) => {
                    #[test]
                    #[ignore = $reason]
                    fn $ignored() {
                        $crate::checks::$ignored::<$harness>();
                    }
                };
            )*
            ($d name:ident) => {
                #[test]
                fn $d name() {
                    $crate::checks::$d name::<$harness>();
                }
            };
        }
    };
}
