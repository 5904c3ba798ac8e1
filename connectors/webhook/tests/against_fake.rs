//! The sink against the fake receiver, through the public API only, as another crate would
//! use them. Run with `cargo test -p lily-webhook --features fake`.

use std::time::{Duration, Instant, SystemTime};

use lily_delivery::{Record, Sink, SinkError};
use lily_pgoutput::Lsn;
use lily_webhook::fake::{whsec, FakeReceiver, Response, RetryAfter};
use lily_webhook::{WebhookConfig, WebhookSink};
use serde_json::json;

const KEY: [u8; 32] = [0x5a; 32];
const OLD_KEY: [u8; 24] = [0x0f; 24];

/// A sink for `url`, signing with `key`; the secret goes through a file as in production.
fn sink(url: &str, key: &[u8], timeout_ms: u64) -> WebhookSink {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{}\n", whsec(key))).unwrap();
    let table = toml::toml! {
        event_type = "metadata.column.tagged"
    };
    let mut table = toml::Value::Table(table);
    let t = table.as_table_mut().unwrap();
    t.insert("url".into(), url.into());
    t.insert(
        "secret_file".into(),
        file.path().to_str().unwrap().to_string().into(),
    );
    t.insert(
        "timeout_ms".into(),
        i64::try_from(timeout_ms).unwrap().into(),
    );
    let config: WebhookConfig = table.try_into().unwrap();
    config.build().unwrap()
}

fn record(id: &str) -> Record {
    let mut fields = serde_json::Map::new();
    fields.insert("guid".into(), json!("col-1"));
    fields.insert("tag".into(), json!("PII"));
    fields.insert("score".into(), json!(0.5));
    Record {
        id: id.into(),
        commit_lsn: Lsn(0x16B3748),
        commit_ts_us: 1_700_000_000_123_456,
        key: Some("col-1".into()),
        fields,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn permanent_message(err: SinkError) -> String {
    match err {
        SinkError::Permanent { message } => message,
        other => panic!("expected Permanent, got {other:?}"),
    }
}

fn retryable(err: SinkError) -> (String, Option<Duration>) {
    match err {
        SinkError::Retryable {
            message,
            retry_after,
        } => (message, retry_after),
        other => panic!("expected Retryable, got {other:?}"),
    }
}

#[tokio::test]
async fn accepted_with_verified_signature_and_body_shape() {
    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    let sink = sink(&fake.url(), &KEY, 5_000);
    assert_eq!(sink.kind(), "webhook");
    assert_eq!(sink.max_batch(), 1);
    let before = unix_now();
    sink.deliver(&[record("pipeline:0/16B3748:3")])
        .await
        .unwrap();
    assert!(fake.wait_for_accepted(1, Duration::from_secs(5)).await);

    let d = &fake.deliveries()[0];
    assert!(d.signature_valid && d.timestamp_fresh);
    assert_eq!(d.status, 200);
    assert_eq!(d.method, "POST");
    assert_eq!(d.path, "/webhook");
    assert_eq!(d.id.as_deref(), Some("pipeline:0/16B3748:3"));
    let ts: i64 = d.timestamp.as_deref().unwrap().parse().unwrap();
    assert!((before..=unix_now()).contains(&ts), "{ts}");
    let sig = d.signature.as_deref().unwrap();
    assert!(sig.starts_with("v1,") && !sig.contains(' '), "{sig}");
    assert_eq!(d.header("content-type"), Some("application/json"));
    assert!(d.header("user-agent").unwrap().starts_with("lily-webhook/"));
    assert_eq!(
        d.json,
        Some(json!({
            "type": "metadata.column.tagged",
            "timestamp": "2023-11-14T22:13:20.123456Z",
            "data": {"guid": "col-1", "tag": "PII", "score": 0.5},
        }))
    );
    assert_eq!(
        fake.accepted_ids(),
        vec!["pipeline:0/16B3748:3".to_string()]
    );
    assert_eq!(fake.duplicate_count(), 0);
}

#[tokio::test]
async fn bad_request_is_permanent_with_status_and_excerpt() {
    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    let long_body = format!("{{\"error\":\"field tag is unknown\"}}{}", "!".repeat(1000));
    fake.push_response(Response::StatusWithBody(400, long_body));
    let sink = sink(&format!("{}?token=tok_s3cr3t_q", fake.url()), &KEY, 5_000);
    let msg = permanent_message(sink.deliver(&[record("p:0/1:0")]).await.unwrap_err());
    assert!(msg.contains("400 Bad Request"), "{msg}");
    assert!(msg.contains("field tag is unknown"), "{msg}");
    assert!(msg.chars().count() < 400, "excerpt not cut: {msg}");
    // The URL is shown without its query, which may hold a token.
    assert!(msg.contains(&fake.url()), "{msg}");
    assert!(!msg.contains("tok_s3cr3t_q"), "{msg}");
}

#[tokio::test]
async fn gone_is_permanent() {
    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    fake.push_response(Response::Status(410));
    let sink = sink(&fake.url(), &KEY, 5_000);
    let msg = permanent_message(sink.deliver(&[record("p:0/1:0")]).await.unwrap_err());
    assert!(
        msg.contains("410") && msg.contains("endpoint gone"),
        "{msg}"
    );
}

#[tokio::test]
async fn throttled_is_retryable_after_the_receivers_delay() {
    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    fake.push_response(Response::Status429 {
        retry_after_secs: 2,
    });
    let sink = sink(&fake.url(), &KEY, 5_000);
    let (msg, after) = retryable(sink.deliver(&[record("p:0/1:0")]).await.unwrap_err());
    assert!(msg.contains("429"), "{msg}");
    assert_eq!(after, Some(Duration::from_secs(2)));
    // The engine's retry: same id, accepted once.
    sink.deliver(&[record("p:0/1:0")]).await.unwrap();
    assert_eq!(fake.accepted_ids(), vec!["p:0/1:0".to_string()]);
    assert_eq!(fake.duplicate_count(), 0);
    let d = fake.deliveries();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].body, d[1].body, "a retry must carry the same body");
}

#[tokio::test]
async fn unavailable_honours_an_http_date() {
    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    let at = SystemTime::now() + Duration::from_secs(120);
    fake.push_response(Response::Status503 {
        retry_after: RetryAfter::Date(at),
    });
    fake.push_response(Response::Status503 {
        retry_after: RetryAfter::Seconds(7 * 24 * 3600),
    });
    let sink = sink(&fake.url(), &KEY, 5_000);
    let (msg, after) = retryable(sink.deliver(&[record("p:0/1:0")]).await.unwrap_err());
    assert!(msg.contains("503"), "{msg}");
    // HTTP-dates have whole seconds, and a moment passed in between.
    let after = after.expect("Retry-After was sent");
    assert!(
        (Duration::from_secs(117)..=Duration::from_secs(120)).contains(&after),
        "{after:?}"
    );
    // An absurd request is capped at an hour.
    let (_, after) = retryable(sink.deliver(&[record("p:0/1:0")]).await.unwrap_err());
    assert_eq!(after, Some(Duration::from_secs(3600)));
}

#[tokio::test]
async fn redirect_is_permanent_and_not_followed() {
    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    fake.push_response(Response::Status(302));
    let sink = sink(&fake.url(), &KEY, 5_000);
    let msg = permanent_message(sink.deliver(&[record("p:0/1:0")]).await.unwrap_err());
    assert!(
        msg.contains("302") && msg.contains("redirects are not followed"),
        "{msg}"
    );
    let d = fake.deliveries();
    assert_eq!(d.len(), 1, "the redirect was followed: {d:?}");
    assert_eq!(d[0].path, "/webhook");
}

#[tokio::test]
async fn slower_than_the_timeout_is_retryable() {
    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    fake.push_response(Response::Delay(Duration::from_secs(3)));
    let sink = sink(&fake.url(), &KEY, 300);
    let started = Instant::now();
    let (msg, after) = retryable(sink.deliver(&[record("p:0/1:0")]).await.unwrap_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(msg.contains("no answer within 300 ms"), "{msg}");
    assert_eq!(after, None);
    // The slow consumer processed it anyway; the retry is the duplicate it must drop by id.
    sink.deliver(&[record("p:0/1:0")]).await.unwrap();
    assert_eq!(fake.duplicate_count(), 1);
}

#[tokio::test]
async fn rotation_old_and_new_keys_both_verify() {
    let fake = FakeReceiver::start(vec![OLD_KEY.to_vec(), KEY.to_vec()]).await;
    sink(&fake.url(), &OLD_KEY, 5_000)
        .deliver(&[record("p:0/1:0")])
        .await
        .unwrap();
    sink(&fake.url(), &KEY, 5_000)
        .deliver(&[record("p:0/1:1")])
        .await
        .unwrap();
    assert!(fake.deliveries().iter().all(|d| d.signature_valid));
    assert_eq!(fake.accepted_ids().len(), 2);

    // A receiver that only knows the old key refuses the new one, like a real consumer.
    let old_only = FakeReceiver::start(vec![OLD_KEY.to_vec()]).await;
    let err = sink(&old_only.url(), &KEY, 5_000)
        .deliver(&[record("p:0/1:2")])
        .await
        .unwrap_err();
    assert!(permanent_message(err).contains("401"));
    let d = old_only.deliveries();
    assert!(!d[0].signature_valid && d[0].status == 401);
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    // A port that was free a moment ago and has nobody listening now.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let sink = sink(
        &format!("http://{addr}/webhook?token=tok_s3cr3t_q"),
        &KEY,
        2_000,
    );
    let (msg, after) = retryable(sink.deliver(&[record("p:0/1:0")]).await.unwrap_err());
    assert!(msg.contains("cannot connect"), "{msg}");
    assert!(!msg.contains("tok_s3cr3t_q"), "{msg}");
    assert_eq!(after, None);
}

#[tokio::test]
async fn each_attempt_is_stamped_with_its_own_time() {
    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    fake.push_response(Response::Status(500));
    let sink = sink(&fake.url(), &KEY, 5_000);
    assert!(sink
        .deliver(&[record("p:0/1:0")])
        .await
        .unwrap_err()
        .is_retryable());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sink.deliver(&[record("p:0/1:0")]).await.unwrap();
    let d = fake.deliveries();
    let ts = |i: usize| d[i].timestamp.as_deref().unwrap().parse::<i64>().unwrap();
    assert!(ts(1) > ts(0), "{} then {}", ts(0), ts(1));
    assert_eq!(d[0].body, d[1].body);
    assert!(d.iter().all(|d| d.signature_valid));
}

#[tokio::test]
async fn oversized_body_and_dotted_id_are_permanent_and_not_sent() {
    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    let sink = sink(&fake.url(), &KEY, 5_000);
    let mut big = record("p:0/1:0");
    big.fields.insert("blob".into(), json!("x".repeat(30_000)));
    let msg = permanent_message(sink.deliver(&[big]).await.unwrap_err());
    assert!(msg.contains("max_body_bytes (20480)"), "{msg}");
    let msg = permanent_message(sink.deliver(&[record("p.v2:0/1:0")]).await.unwrap_err());
    assert!(msg.contains("contains `.`"), "{msg}");
    assert!(fake.deliveries().is_empty());
}

#[tokio::test]
async fn several_records_are_several_requests() {
    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    let sink = sink(&fake.url(), &KEY, 5_000);
    sink.deliver(&[record("p:0/1:0"), record("p:0/1:1"), record("p:0/1:2")])
        .await
        .unwrap();
    assert!(fake.wait_for_accepted(3, Duration::from_secs(5)).await);
    assert!(!fake.wait_for_accepted(4, Duration::from_millis(50)).await);
    assert_eq!(fake.accepted_ids(), ["p:0/1:0", "p:0/1:1", "p:0/1:2"]);
}

/// A receiver's success body (small or spanning several TCP segments) does not cost the sender
/// its connection: one connection carries every request.
#[tokio::test]
async fn one_connection_carries_many_deliveries_whatever_the_success_body() {
    let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
    for i in 0..10 {
        let size = if i % 2 == 0 { 2 } else { 40_000 };
        fake.push_response(Response::StatusWithBody(200, "x".repeat(size)));
    }
    let sink = sink(&fake.url(), &KEY, 5_000);
    for i in 0..10 {
        sink.deliver(&[record(&format!("p:0/1:{i}"))])
            .await
            .unwrap();
    }
    assert!(fake.wait_for_accepted(10, Duration::from_secs(5)).await);
    assert_eq!(
        fake.connections(),
        1,
        "each delivery should reuse the connection"
    );
}
