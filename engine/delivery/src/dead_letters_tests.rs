//! Replaying dead letters through the runner, against a scripted sink and the in-memory store.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lily_pgoutput::Lsn;

use super::{DeadLetter, DeadLetters, LetterFilter, ReplayTarget, Replayed};
use crate::ledger::{LedgerStore, MemoryLedgerStore, Outcome};
use crate::settings::DeliverySettings;
use crate::sink::{Record, SinkError};
use crate::test_sink::{gaps, ScriptedSink};
use lily_runtime::ShutdownTrigger;

const PIPELINE: &str = "orders";
const SINK: &str = "hook";

fn record(n: u64, key: Option<&str>) -> Record {
    let mut fields = serde_json::Map::new();
    fields.insert("n".into(), serde_json::json!(n));
    Record {
        id: id(n),
        commit_lsn: Lsn(0x100 + n),
        commit_ts_us: 1_700_000_000_000_000,
        key: key.map(str::to_string),
        fields,
    }
}

fn id(n: u64) -> String {
    format!("{PIPELINE}:{n}")
}

/// Backoffs of a few milliseconds, so retries do not slow the tests down.
fn fast(max_attempts: u32, concurrency: usize) -> DeliverySettings {
    DeliverySettings {
        max_attempts,
        initial_backoff_ms: 4,
        max_backoff_ms: 16,
        concurrency,
        ..Default::default()
    }
}

fn retryable_after(message: &str, after: Duration) -> SinkError {
    SinkError::Retryable {
        message: message.into(),
        retry_after: Some(after),
    }
}

/// A store holding one dead letter of `PIPELINE`/`SINK` per record, as live delivery leaves
/// them: each with `error` and `attempts` and a `dead_lettered` ledger entry.
async fn store_with(records: &[Record], error: &str, attempts: u32) -> Arc<MemoryLedgerStore> {
    let store = Arc::new(MemoryLedgerStore::new());
    for r in records {
        store
            .dead_letter(PIPELINE, SINK, r, error, attempts)
            .await
            .unwrap();
    }
    store
}

/// The pending letters of `store`, replayed to `sink` (for every pipeline and sink) with
/// `settings`.
async fn replay(
    store: &Arc<MemoryLedgerStore>,
    sink: &Arc<ScriptedSink>,
    settings: DeliverySettings,
) -> (Vec<DeadLetter>, Vec<Replayed>) {
    let (_stop, shutdown) = ShutdownTrigger::new();
    let letters = DeadLetters::with_store(store.clone());
    let pending = letters.list(&LetterFilter::default()).await.unwrap();
    let outcomes = letters
        .replay(&pending, |_, _| Some(target(sink, &settings)), shutdown)
        .await;
    (pending, outcomes)
}

fn target(sink: &Arc<ScriptedSink>, settings: &DeliverySettings) -> ReplayTarget {
    ReplayTarget {
        sink: sink.clone(),
        settings: settings.clone(),
    }
}

async fn within<T>(limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .expect("timed out waiting")
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn a_delivered_letter_is_marked_replayed_and_recorded_delivered() {
    let store = store_with(&[record(1, Some("a"))], "503", 8).await;
    let sink = Arc::new(ScriptedSink::new());
    let (letters, outcomes) = replay(&store, &sink, fast(3, 2)).await;

    assert_eq!(outcomes, vec![Replayed::Delivered]);
    // Sent once, as it was stored, with its order key.
    let calls = sink.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].ids, vec![id(1)]);
    assert_eq!(calls[0].keys, vec![Some("a".to_string())]);
    let dead = store.dead_letters(PIPELINE);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, letters[0].id);
    assert!(dead[0].replayed_at.is_some());
    assert_eq!((dead[0].error.as_str(), dead[0].attempts), ("503", 8));
    // The `dead_lettered` entry became `delivered`, written by the lane, not a group commit.
    assert_eq!(
        store.outcome(PIPELINE, SINK, &id(1)),
        Some(Outcome::Delivered)
    );
    assert!(store.group_commits().is_empty());

    // No longer pending, still listed with `replayed`; a second replay sends nothing.
    let table = DeadLetters::with_store(store.clone());
    assert!(table
        .list(&LetterFilter::default())
        .await
        .unwrap()
        .is_empty());
    let all = LetterFilter {
        replayed: true,
        ..Default::default()
    };
    assert_eq!(table.list(&all).await.unwrap().len(), 1);
    let (again, outcomes) = replay(&store, &sink, fast(3, 2)).await;
    assert!(again.is_empty() && outcomes.is_empty());
    assert_eq!(sink.calls().len(), 1);
}

#[tokio::test]
async fn a_retryable_failure_is_retried_with_backoff_then_delivered() {
    let after = Duration::from_millis(120);
    let sink = Arc::new(ScriptedSink::new().answer(
        &id(1),
        vec![
            Err(SinkError::retryable("503")),
            Err(retryable_after("429", after)),
            Ok(()),
        ],
    ));
    let store = store_with(&[record(1, None)], "503", 8).await;
    let (_, outcomes) = replay(&store, &sink, fast(5, 1)).await;

    assert_eq!(outcomes, vec![Replayed::Delivered]);
    let calls = sink.calls();
    assert_eq!(calls.len(), 3);
    // The computed backoff (full jitter, at least 1 ms), then the receiver's `Retry-After`.
    let g = gaps(&calls);
    assert!(g[0] >= Duration::from_millis(1), "{g:?}");
    assert!(g[1] >= after, "{g:?}");
    let dead = store.dead_letters(PIPELINE);
    assert_eq!(dead.len(), 1);
    assert!(dead[0].replayed_at.is_some());
    assert_eq!(
        store.outcome(PIPELINE, SINK, &id(1)),
        Some(Outcome::Delivered)
    );
}

#[tokio::test]
async fn a_permanent_failure_keeps_the_letter_pending_with_updated_attempts() {
    let sink =
        Arc::new(ScriptedSink::new().answer(&id(7), vec![Err(SinkError::permanent("410 gone"))]));
    let store = store_with(&[record(7, Some("k"))], "503", 3).await;
    let before = SystemTime::now();
    let (letters, outcomes) = replay(&store, &sink, fast(5, 1)).await;

    assert_eq!(
        outcomes,
        vec![Replayed::Failed {
            error: "410 gone".into(),
            attempts: 1
        }]
    );
    assert_eq!(sink.calls().len(), 1);
    // The same letter, not a second one: new error, one more attempt, failed just now.
    let dead = store.dead_letters(PIPELINE);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, letters[0].id);
    assert_eq!((dead[0].error.as_str(), dead[0].attempts), ("410 gone", 4));
    assert!(dead[0].failed_at >= before);
    assert_eq!(dead[0].replayed_at, None);
    assert_eq!(
        store.outcome(PIPELINE, SINK, &id(7)),
        Some(Outcome::DeadLettered)
    );
    let pending = DeadLetters::with_store(store.clone())
        .list(&LetterFilter::default())
        .await
        .unwrap();
    assert_eq!(pending, dead);
}

#[tokio::test]
async fn exhausted_retries_add_every_attempt_and_keep_the_letter_pending() {
    let sink = Arc::new(ScriptedSink::new().answer(
        &id(2),
        vec![
            Err(SinkError::retryable("503 first")),
            Err(SinkError::retryable("503 second")),
            Err(SinkError::retryable("503 third")),
        ],
    ));
    let store = store_with(&[record(2, None)], "503", 2).await;
    let (_, outcomes) = replay(&store, &sink, fast(3, 1)).await;

    assert_eq!(
        outcomes,
        vec![Replayed::Failed {
            error: "503 third".into(),
            attempts: 3
        }]
    );
    assert_eq!(sink.calls().len(), 3);
    let dead = store.dead_letters(PIPELINE);
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].error.as_str(), dead[0].attempts), ("503 third", 5));
    assert_eq!(dead[0].replayed_at, None);
}

#[tokio::test]
async fn the_sinks_rate_limit_paces_a_replay() {
    let settings = DeliverySettings {
        rate_per_sec: Some(50.0),
        burst: 1,
        ..fast(1, 4)
    };
    let records: Vec<Record> = (0..6).map(|n| record(n, None)).collect();
    let store = store_with(&records, "429", 1).await;
    let sink = Arc::new(ScriptedSink::new());
    let start = Instant::now();
    let (_, outcomes) = replay(&store, &sink, settings).await;

    // One at once, then five at 50/s: 100 ms at least, however many lanes.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(95), "{took:?}");
    assert_eq!(outcomes, vec![Replayed::Delivered; 6]);
    assert_eq!(sink.calls().len(), 6);
}

#[tokio::test]
async fn letters_with_one_order_key_keep_their_order_across_lanes() {
    const KEYS: u64 = 5;
    const PER_KEY: u64 = 6;
    let mut sink = ScriptedSink::new();
    sink.delay = Duration::from_millis(1);
    // One retryable failure per key, in the middle: the retry still comes before the key's
    // next letter.
    for k in 0..KEYS {
        sink = sink.answer(&id(k * 100 + 2), vec![Err(SinkError::retryable("503"))]);
    }
    let sink = Arc::new(sink);
    // Dead-lettered in commit order per key, interleaved over keys, as lanes leave them.
    let mut records = Vec::new();
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            records.push(record(k * 100 + seq, Some(&format!("key-{k}"))));
        }
    }
    let store = store_with(&records, "503", 8).await;
    let (_, outcomes) = replay(&store, &sink, fast(3, 4)).await;

    assert!(outcomes.iter().all(|o| *o == Replayed::Delivered));
    let calls = sink.calls();
    assert_eq!(calls.len() as u64, KEYS * PER_KEY + KEYS);
    for k in 0..KEYS {
        let seqs: Vec<u64> = calls
            .iter()
            .map(|c| c.ids[0].rsplit(':').next().unwrap().parse::<u64>().unwrap())
            .filter(|n| n / 100 == k)
            .map(|n| n % 100)
            .collect();
        let mut expected: Vec<u64> = (0..PER_KEY).collect();
        expected.insert(2, 2);
        assert_eq!(seqs, expected, "key-{k}");
    }
    assert!(sink.max_in_flight.load(std::sync::atomic::Ordering::SeqCst) > 1);
}

#[tokio::test]
async fn each_letter_goes_to_its_own_sink_and_one_without_a_sink_is_left_alone() {
    let store = Arc::new(MemoryLedgerStore::new());
    for (pipeline, sink, n) in [
        (PIPELINE, SINK, 1),
        (PIPELINE, "gone", 2),
        ("billing", SINK, 3),
    ] {
        store
            .dead_letter(pipeline, sink, &record(n, None), "503", 8)
            .await
            .unwrap();
    }
    let orders_hook = Arc::new(ScriptedSink::new());
    let billing_hook = Arc::new(ScriptedSink::new());
    let table = DeadLetters::with_store(store.clone());
    let letters = table.list(&LetterFilter::default()).await.unwrap();
    let (_stop, shutdown) = ShutdownTrigger::new();
    let outcomes = table
        .replay(
            &letters,
            |pipeline, sink| match (pipeline, sink) {
                (PIPELINE, SINK) => Some(target(&orders_hook, &fast(3, 1))),
                ("billing", SINK) => Some(target(&billing_hook, &fast(3, 1))),
                _ => None,
            },
            shutdown,
        )
        .await;

    assert_eq!(
        outcomes,
        vec![Replayed::Delivered, Replayed::NoSink, Replayed::Delivered]
    );
    assert_eq!(orders_hook.call_ids(), vec![vec![id(1)]]);
    assert_eq!(billing_hook.call_ids(), vec![vec![id(3)]]);
    let gone = &store.dead_letters(PIPELINE)[0];
    assert_eq!((gone.sink.as_str(), gone.replayed_at), ("gone", None));
    assert_eq!(gone.attempts, 8);
    assert_eq!(
        store.outcome("billing", SINK, &id(3)),
        Some(Outcome::Delivered)
    );
}

#[tokio::test]
async fn recording_an_outcome_is_retried_until_the_store_takes_it() {
    let store = store_with(&[record(1, None)], "503", 8).await;
    // Two failures: waits of 100 and 200 ms before the third try lands.
    store.fail_replay_records(2);
    let sink = Arc::new(ScriptedSink::new());
    let start = Instant::now();
    let (_, outcomes) = replay(&store, &sink, fast(3, 1)).await;

    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(outcomes, vec![Replayed::Delivered]);
    assert_eq!(sink.calls().len(), 1);
    assert!(store.dead_letters(PIPELINE)[0].replayed_at.is_some());
}

#[tokio::test]
async fn shutdown_during_a_retry_wait_leaves_the_letter_pending_as_it_was() {
    let sink = Arc::new(ScriptedSink::new().answer(
        &id(1),
        vec![Err(retryable_after("429", Duration::from_secs(30)))],
    ));
    let store = store_with(&[record(1, None), record(2, None)], "503", 8).await;
    let table = DeadLetters::with_store(store.clone());
    let letters = table.list(&LetterFilter::default()).await.unwrap();
    let (stop, shutdown) = ShutdownTrigger::new();
    // One lane: letter 2 queues behind letter 1's retry.
    let settings = fast(5, 1);
    let stopping = async {
        wait_until("the first attempt", || sink.calls().len() == 1).await;
        stop.trigger();
    };
    let (outcomes, ()) = within(Duration::from_secs(5), async {
        tokio::join!(
            table.replay(&letters, |_, _| Some(target(&sink, &settings)), shutdown),
            stopping
        )
    })
    .await;

    // Letter 1 stopped in its wait, and its lane with it: letter 2 was never sent.
    assert_eq!(outcomes, vec![Replayed::Interrupted, Replayed::Interrupted]);
    assert_eq!(sink.call_ids(), vec![vec![id(1)]]);
    for d in store.dead_letters(PIPELINE) {
        assert_eq!((d.error.as_str(), d.attempts), ("503", 8));
        assert_eq!(d.replayed_at, None);
    }
}

#[tokio::test]
async fn list_filters_by_pipeline_id_and_replayed() {
    let store = Arc::new(MemoryLedgerStore::new());
    for (pipeline, n) in [(PIPELINE, 1), (PIPELINE, 2), ("billing", 3)] {
        store
            .dead_letter(pipeline, SINK, &record(n, None), "503", 8)
            .await
            .unwrap();
    }
    store
        .mark_replayed(PIPELINE, SINK, 2, &record(2, None))
        .await
        .unwrap();
    let table = DeadLetters::with_store(store.clone());
    let ids = |filter: LetterFilter| {
        let table = &table;
        async move {
            table
                .list(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.id)
                .collect::<Vec<i64>>()
        }
    };

    assert_eq!(ids(LetterFilter::default()).await, vec![1, 3]);
    let all = LetterFilter {
        replayed: true,
        ..Default::default()
    };
    assert_eq!(ids(all.clone()).await, vec![1, 2, 3]);
    let orders = LetterFilter {
        pipeline: Some(PIPELINE.into()),
        ..all.clone()
    };
    assert_eq!(ids(orders).await, vec![1, 2]);
    let one = LetterFilter {
        id: Some(3),
        ..Default::default()
    };
    assert_eq!(ids(one).await, vec![3]);
    let replayed_only_when_asked = LetterFilter {
        id: Some(2),
        ..Default::default()
    };
    assert!(ids(replayed_only_when_asked).await.is_empty());

    // The record dead-lettered again (live traffic): the same letter, pending again.
    store
        .dead_letter(PIPELINE, SINK, &record(2, None), "500", 1)
        .await
        .unwrap();
    assert_eq!(ids(LetterFilter::default()).await, vec![1, 2, 3]);
}

#[test]
fn failed_at_prints_in_utc_to_the_second() {
    let letter = DeadLetter {
        id: 1,
        pipeline: PIPELINE.into(),
        sink: SINK.into(),
        record: record(1, None),
        error: "503".into(),
        attempts: 1,
        failed_at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_654_321),
        replayed_at: None,
    };
    assert_eq!(letter.failed_at_utc(), "2023-11-14T22:13:20Z");
}
