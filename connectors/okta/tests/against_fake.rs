//! The fake Okta org against a small receiver built from this crate's pieces, the way the
//! ingest server will use them: the verification GET, batched POSTs with the secret header,
//! duplicates and reordering, and Okta's timeout and retry rules.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::Array;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use lily_okta::events::events_batch;
use lily_okta::fake::{FakeOkta, Group, LogEvent, User};
use lily_okta::{challenge, OktaHook, CHALLENGE_HEADER};
use lily_pg::Secret;

const SECRET: &str = "okta-hook-static-secret";

/// What the receiver applied: user id → (status event type, published); seen uuids.
#[derive(Default)]
struct Applied {
    seen: HashSet<String>,
    latest: BTreeMap<String, (String, i64)>,
    posts: u32,
}

#[derive(Clone)]
struct Receiver {
    hook: Arc<OktaHook>,
    applied: Arc<Mutex<Applied>>,
    /// Replies for the next POSTs, before normal handling: a status, or a delay.
    script: Arc<Mutex<Vec<Scripted>>>,
}

#[derive(Clone, Copy)]
enum Scripted {
    Status(u16),
    Delay(Duration),
}

async fn on_get(headers: HeaderMap) -> Response {
    let value = headers
        .get(CHALLENGE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match challenge(value) {
        Ok(answer) => (StatusCode::OK, answer.to_string()).into_response(),
        Err(e) => (
            StatusCode::from_u16(e.http_status()).unwrap(),
            e.to_string(),
        )
            .into_response(),
    }
}

async fn on_post(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    r.applied.lock().unwrap().posts += 1;
    let next = {
        let mut script = r.script.lock().unwrap();
        (!script.is_empty()).then(|| script.remove(0))
    };
    match next {
        Some(Scripted::Status(code)) => return StatusCode::from_u16(code).unwrap().into_response(),
        Some(Scripted::Delay(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    let presented = headers
        .get(r.hook.header.as_str())
        .and_then(|v| v.to_str().ok());
    if let Err(e) = r.hook.check(presented) {
        return (
            StatusCode::from_u16(e.http_status()).unwrap(),
            e.to_string(),
        )
            .into_response();
    }
    let batch = match events_batch(&body) {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::from_u16(e.http_status()).unwrap(),
                e.to_string(),
            )
                .into_response()
        }
    };
    let uuid = batch.column_by_name("uuid").unwrap().as_string::<i32>();
    let kind = batch
        .column_by_name("event_type")
        .unwrap()
        .as_string::<i32>();
    let user = batch.column_by_name("user_id").unwrap().as_string::<i32>();
    let published = batch
        .column_by_name("published")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    let mut applied = r.applied.lock().unwrap();
    for i in 0..batch.num_rows() {
        // Dedupe on uuid; keep the newest state by published.
        if !applied.seen.insert(uuid.value(i).to_string()) || user.is_null(i) {
            continue;
        }
        let entry = applied
            .latest
            .entry(user.value(i).to_string())
            .or_insert((String::new(), i64::MIN));
        if published.value(i) > entry.1 {
            *entry = (kind.value(i).to_string(), published.value(i));
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn start() -> (String, Receiver, tokio::task::JoinHandle<()>) {
    let receiver = Receiver {
        hook: Arc::new(OktaHook::new("acme", "Authorization", Secret::new(SECRET))),
        applied: Arc::default(),
        script: Arc::default(),
    };
    let app = Router::new()
        .route("/hooks/okta", get(on_get).post(on_post))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/okta", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, receiver, server)
}

#[tokio::test]
async fn verification_then_chaotic_deliveries_converge() {
    let (url, receiver, server) = start().await;
    let okta = FakeOkta::new("Authorization", SECRET);
    okta.verify(&url, "c7f1-challenge").await.unwrap();

    let dana = User::new("00u1", "dana@acme.com", "Dana");
    let lee = User::new("00u2", "lee@acme.com", "Lee");
    let eng = Group::new("00g1", "Data Eng");
    let s = 1_705_342_200_000_000i64;
    let events = vec![
        LogEvent::user("user.lifecycle.create", &dana, s),
        LogEvent::user("user.lifecycle.create", &lee, s + 1_000),
        LogEvent::membership(true, &dana, &eng, s + 2_000),
        LogEvent::user("user.lifecycle.suspend", &dana, s + 3_000),
        LogEvent::user("user.lifecycle.deactivate", &lee, s + 4_000),
        LogEvent::user("user.lifecycle.reactivate", &dana, s + 5_000),
    ];
    let requests = okta.deliveries(&events, 2, 42);
    assert!(requests.len() > 3);
    for request in &requests {
        let report = okta.send(&url, request).await;
        assert!(report.delivered && report.attempts == 1, "{report:?}");
    }
    let applied = receiver.applied.lock().unwrap();
    assert_eq!(applied.seen.len(), events.len());
    assert_eq!(applied.latest["00u1"].0, "user.lifecycle.reactivate");
    assert_eq!(applied.latest["00u2"].0, "user.lifecycle.deactivate");
    server.abort();
}

#[tokio::test]
async fn wrong_or_missing_secret_is_refused_and_not_retried() {
    let (url, receiver, server) = start().await;
    let okta = FakeOkta::new("Authorization", SECRET);
    let dana = User::new("00u1", "dana@acme.com", "Dana");
    let request = okta.delivery(&[LogEvent::user("user.lifecycle.create", &dana, 0)]);
    for presented in [Some("guess"), None] {
        let report = okta
            .send(
                &url,
                &request.clone().with_secret("authorization", presented),
            )
            .await;
        assert_eq!(report.status, Some(401));
        assert_eq!(report.attempts, 1, "Okta does not retry a 4xx");
        assert!(!report.delivered);
    }
    let wrong_header = FakeOkta::new("X-Other", SECRET);
    let report = wrong_header.send(&url, &wrong_header.delivery(&[])).await;
    assert_eq!(report.status, Some(401));
    assert!(receiver.applied.lock().unwrap().seen.is_empty());
    assert!(
        okta.verify(&url, "").await.is_err(),
        "an empty challenge is refused"
    );
    server.abort();
}

#[tokio::test]
async fn server_errors_and_slow_replies_are_retried_once() {
    let (url, receiver, server) = start().await;
    let okta = FakeOkta::new("Authorization", SECRET).with_timeout(Duration::from_millis(300));
    let dana = User::new("00u1", "dana@acme.com", "Dana");
    let request = okta.delivery(&[LogEvent::user("user.lifecycle.create", &dana, 0)]);

    receiver.script.lock().unwrap().push(Scripted::Status(503));
    let report = okta.send(&url, &request).await;
    assert_eq!((report.attempts, report.delivered), (2, true));

    receiver
        .script
        .lock()
        .unwrap()
        .push(Scripted::Delay(Duration::from_millis(600)));
    let report = okta.send(&url, &request).await;
    assert_eq!((report.attempts, report.delivered), (2, true));

    receiver
        .script
        .lock()
        .unwrap()
        .extend([Scripted::Status(500), Scripted::Status(502)]);
    let report = okta.send(&url, &request).await;
    assert_eq!(
        report,
        lily_okta::fake::SendReport {
            attempts: 2,
            status: Some(502),
            delivered: false
        }
    );

    // The redelivered event was applied once.
    let applied = receiver.applied.lock().unwrap();
    assert_eq!(applied.seen.len(), 1);
    // 503 + retry, timeout + retry, 500 + 502.
    assert_eq!(applied.posts, 6);
    server.abort();
}
