//! A Standard Webhooks consumer on loopback, for tests here and in other crates
//! (`lily-webhook = { workspace = true, features = ["fake"] }`).
//!
//! It behaves like a careful real receiver: it verifies every signature against each key it
//! knows (so a rotation can be played out), rejects timestamps more than five minutes off,
//! verifies over the raw bytes it received, answers failures with 401, and otherwise answers
//! from a script. It records every request, so tests can check what was sent, when, and how
//! often the same `webhook-id` was accepted.
//!
//! ```no_run
//! # async fn demo() {
//! use lily_webhook::fake::{FakeReceiver, Response};
//! let fake = FakeReceiver::start(vec![vec![7u8; 32]]).await;
//! fake.push_response(Response::Status429 { retry_after_secs: 2 });
//! // … point a sink at fake.url() with secret lily_webhook::fake::whsec(&[7; 32]) …
//! assert!(fake.wait_for_accepted(1, std::time::Duration::from_secs(5)).await);
//! # }
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::serve::ListenerExt;
use axum::Router;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::signing;

/// A scripted answer. Answers are used in order, one per correctly signed request; when the
/// script is empty the fake answers 200. Requests that fail verification get 401 and do not
/// use up the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Answer with this status and a short text body. A 3xx carries a `Location` pointing
    /// back at the fake (path `/redirected`), so a sender that followed it would show up as a
    /// second request.
    Status(u16),
    /// Answer with this status and body.
    StatusWithBody(u16, String),
    /// 429 with `Retry-After: <retry_after_secs>`.
    Status429 { retry_after_secs: u64 },
    /// 503 with this `Retry-After`.
    Status503 { retry_after: RetryAfter },
    /// This status with this `Retry-After` (a 408, a 429 with an HTTP-date, …).
    StatusRetryAfter {
        status: u16,
        retry_after: RetryAfter,
    },
    /// Wait this long, then answer 200: a receiver slower than the sender's timeout. Like a
    /// real slow consumer, it has processed the event even if the sender gave up, so it is
    /// recorded as accepted when it arrives; a retry then shows up in
    /// [`FakeReceiver::duplicate_count`].
    Delay(Duration),
}

/// A `Retry-After` value to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryAfter {
    /// Delta-seconds.
    Seconds(u64),
    /// An HTTP-date (IMF-fixdate), written from this time.
    Date(SystemTime),
    /// This exact header text, for testing odd values.
    Raw(String),
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The `webhook-id` header, if present.
    pub id: Option<String>,
    /// The `webhook-timestamp` header as sent, if present.
    pub timestamp: Option<String>,
    /// The `webhook-signature` header as sent, if present.
    pub signature: Option<String>,
    /// The request method (a Standard Webhooks sender only POSTs).
    pub method: String,
    /// The request path, to catch a sender that followed a redirect (to `/redirected`).
    pub path: String,
    /// All headers, names lower-case, values lossily decoded.
    pub headers: Vec<(String, String)>,
    /// The body exactly as received.
    pub body: Bytes,
    /// The body parsed as JSON, if it is JSON.
    pub json: Option<serde_json::Value>,
    /// Some `v1` signature matched some known key, over the id, timestamp and raw body.
    pub signature_valid: bool,
    /// The timestamp was within five minutes of the fake's clock.
    pub timestamp_fresh: bool,
    /// When the request arrived (headers and body read).
    pub received_at: Instant,
    /// The status the fake answered (for [`Response::Delay`], the status after the wait).
    pub status: u16,
}

impl Delivery {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The fake answered 2xx: the consumer took the event.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `whsec_` + base64 of `key`: the secret to give a sink so it signs with a key the fake knows.
pub fn whsec(key: &[u8]) -> String {
    signing::to_whsec(key)
}

struct Shared {
    keys: Vec<Vec<u8>>,
    base_url: String,
    script: Mutex<VecDeque<Response>>,
    deliveries: Mutex<Vec<Delivery>>,
    /// Distinct ids answered 2xx, kept as they arrive so waiting on a count costs O(1) per
    /// delivery rather than a scan of everything received (which at tens of thousands of
    /// deliveries would make the fake, not the sender, the bottleneck).
    accepted: Mutex<HashSet<String>>,
    /// Woken after each recorded delivery, for [`FakeReceiver::wait_for_accepted`].
    recorded: Notify,
    /// TCP connections accepted: a sender that reuses its connections opens few.
    connections: AtomicUsize,
}

/// A poisoned lock means a test already panicked while holding it; the data is still the best
/// record of what happened, so keep going rather than hide the first panic behind a second.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running fake receiver. Dropping it stops the server.
pub struct FakeReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl FakeReceiver {
    /// Starts a receiver on `127.0.0.1` (a free port) that accepts signatures made with any of
    /// `keys` (raw key bytes, as decoded from `whsec_…`). Must be called within a Tokio runtime.
    ///
    /// # Panics
    /// If no loopback port can be bound: a test environment without loopback cannot run it.
    pub async fn start(keys: Vec<Vec<u8>>) -> FakeReceiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("fake webhook receiver: cannot bind 127.0.0.1");
        let addr = listener
            .local_addr()
            .expect("fake webhook receiver: bound socket has no address");
        let shared = Arc::new(Shared {
            keys,
            base_url: format!("http://{addr}"),
            script: Mutex::new(VecDeque::new()),
            deliveries: Mutex::new(Vec::new()),
            accepted: Mutex::new(HashSet::new()),
            recorded: Notify::new(),
            connections: AtomicUsize::new(0),
        });
        let app = Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&shared));
        let counted = Arc::clone(&shared);
        let listener = listener.tap_io(move |_| {
            counted.connections.fetch_add(1, Ordering::Relaxed);
        });
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "fake webhook receiver stopped");
            }
        });
        FakeReceiver {
            addr,
            shared,
            server,
        }
    }

    /// The URL to deliver to: `http://127.0.0.1:<port>/webhook`.
    pub fn url(&self) -> String {
        format!("{}/webhook", self.shared.base_url)
    }

    /// The address listened on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds an answer at the end of the script.
    pub fn push_response(&self, response: Response) {
        lock(&self.shared.script).push_back(response);
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Number of distinct ids answered 2xx (cheap; see `accepted_ids` for the ids).
    pub fn accepted_count(&self) -> usize {
        lock(&self.shared.accepted).len()
    }

    /// Every request so far, in order of arrival.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.shared.deliveries).clone()
    }

    /// Distinct `webhook-id`s answered 2xx, in order of first acceptance.
    pub fn accepted_ids(&self) -> Vec<String> {
        accepted_ids(&lock(&self.shared.deliveries))
    }

    /// How many distinct `webhook-id`s were answered 2xx more than once: events the consumer
    /// would have processed twice without deduplication. Attempts answered otherwise are not
    /// duplicates (a retry after a 503 is what should happen).
    pub fn duplicate_count(&self) -> usize {
        let deliveries = lock(&self.shared.deliveries);
        let mut seen = HashMap::<&str, usize>::new();
        for d in deliveries.iter().filter(|d| d.accepted()) {
            if let Some(id) = d.id.as_deref() {
                *seen.entry(id).or_default() += 1;
            }
        }
        seen.values().filter(|n| **n > 1).count()
    }

    /// Waits until at least `n` distinct ids have been accepted; `false` if `timeout` passes
    /// first.
    pub async fn wait_for_accepted(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before looking, so a delivery recorded in between still wakes us.
            let mut notified = pin!(self.shared.recorded.notified());
            notified.as_mut().enable();
            if self.accepted_count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.accepted_count() >= n;
            }
        }
    }
}

impl Drop for FakeReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn accepted_ids(deliveries: &[Delivery]) -> Vec<String> {
    let mut seen = HashSet::new();
    deliveries
        .iter()
        .filter(|d| d.accepted())
        .filter_map(|d| d.id.clone())
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

/// Every request, whatever its method and path, comes here.
async fn receive(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    let received_at = Instant::now();
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let id = text("webhook-id");
    let timestamp = text("webhook-timestamp");
    let signature = text("webhook-signature");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    // Verified over the bytes as they arrived, not over a re-serialization of the JSON.
    let verdict = match (&id, &timestamp, &signature) {
        (Some(id), Some(ts), Some(sig)) => signing::verify(&shared.keys, id, ts, sig, &body, now),
        _ => signing::Verdict {
            signature_valid: false,
            timestamp_fresh: false,
        },
    };

    let (status, answer, delay) = if method != Method::POST {
        (405, plain(405, "webhooks are POSTed"), None)
    } else if id.is_none() || timestamp.is_none() || signature.is_none() {
        (
            401,
            plain(
                401,
                "missing webhook-id, webhook-timestamp or webhook-signature",
            ),
            None,
        )
    } else if !verdict.signature_valid {
        (401, plain(401, "no valid signature"), None)
    } else if !verdict.timestamp_fresh {
        (
            401,
            plain(401, "timestamp outside the five-minute tolerance"),
            None,
        )
    } else {
        let next = lock(&shared.script).pop_front();
        scripted(next, &shared.base_url)
    };

    let delivery = Delivery {
        id,
        timestamp,
        signature,
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        json: serde_json::from_slice(&body).ok(),
        body,
        signature_valid: verdict.signature_valid,
        timestamp_fresh: verdict.timestamp_fresh,
        received_at,
        status,
    };
    if delivery.accepted() {
        if let Some(id) = &delivery.id {
            lock(&shared.accepted).insert(id.clone());
        }
    }
    lock(&shared.deliveries).push(delivery);
    shared.recorded.notify_waiters();

    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    answer
}

/// A status with a one-line text body.
fn plain(status: u16, text: &str) -> HttpResponse {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, text.to_string()).into_response()
}

/// The answer for a verified request: (status recorded, response, wait before answering).
fn scripted(next: Option<Response>, base_url: &str) -> (u16, HttpResponse, Option<Duration>) {
    match next {
        None => (200, plain(200, "ok"), None),
        Some(Response::Delay(wait)) => (200, plain(200, "ok"), Some(wait)),
        Some(Response::Status(code)) => {
            let mut answer = plain(code, &format!("fake receiver: scripted {code}"));
            if (300..400).contains(&code) {
                if let Ok(location) = HeaderValue::from_str(&format!("{base_url}/redirected")) {
                    answer.headers_mut().insert(header::LOCATION, location);
                }
            }
            (code, answer, None)
        }
        Some(Response::StatusWithBody(code, body)) => (code, plain(code, &body), None),
        Some(Response::Status429 { retry_after_secs }) => {
            let mut answer = plain(429, "slow down");
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            (429, answer, None)
        }
        Some(Response::Status503 { retry_after }) => {
            let answer = with_retry_after(plain(503, "down for maintenance"), retry_after);
            (503, answer, None)
        }
        Some(Response::StatusRetryAfter {
            status,
            retry_after,
        }) => {
            let answer = plain(status, &format!("fake receiver: scripted {status}"));
            (status, with_retry_after(answer, retry_after), None)
        }
    }
}

fn with_retry_after(mut answer: HttpResponse, retry_after: RetryAfter) -> HttpResponse {
    let value = match retry_after {
        RetryAfter::Seconds(s) => s.to_string(),
        RetryAfter::Date(at) => httpdate::fmt_http_date(at),
        RetryAfter::Raw(text) => text,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        answer.headers_mut().insert(header::RETRY_AFTER, value);
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SigningKey;

    const KEY: [u8; 32] = [42; 32];

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// Posts `body` with headers signed over `signed_body`, as a hand-rolled sender would.
    async fn post(fake: &FakeReceiver, id: &str, ts: i64, signed_body: &[u8], body: &[u8]) -> u16 {
        let key = SigningKey::from_whsec(&whsec(&KEY)).unwrap();
        reqwest::Client::new()
            .post(fake.url())
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", key.sign(id, ts, signed_body))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn tampered_body_is_rejected() {
        let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
        let signed = br#"{"type":"a.b","timestamp":"t","data":{"n":1}}"#;
        let sent = br#"{"type":"a.b","timestamp":"t","data":{"n":2}}"#;
        assert_eq!(post(&fake, "x:1", now(), signed, sent).await, 401);
        assert_eq!(post(&fake, "x:2", now(), signed, signed).await, 200);
        let d = fake.deliveries();
        assert_eq!(d.len(), 2);
        assert!(!d[0].signature_valid && d[0].timestamp_fresh && d[0].status == 401);
        assert_eq!(&d[0].body[..], &sent[..]);
        assert!(d[1].signature_valid && d[1].accepted());
        assert_eq!(fake.accepted_ids(), vec!["x:2".to_string()]);
    }

    #[tokio::test]
    async fn stale_or_future_timestamp_is_rejected() {
        let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
        let body = b"{}";
        assert_eq!(post(&fake, "x:1", now() - 400, body, body).await, 401);
        assert_eq!(post(&fake, "x:2", now() + 400, body, body).await, 401);
        let d = fake.deliveries();
        assert!(d.iter().all(|d| d.signature_valid && !d.timestamp_fresh));
        assert!(fake.accepted_ids().is_empty());
    }

    #[tokio::test]
    async fn unsigned_request_is_rejected_and_script_kept() {
        let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
        fake.push_response(Response::Status(500));
        let status = reqwest::Client::new()
            .post(fake.url())
            .body("{}")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
        // The scripted 500 is still there for the next verified request.
        assert_eq!(post(&fake, "x:1", now(), b"{}", b"{}").await, 500);
        assert_eq!(post(&fake, "x:1", now(), b"{}", b"{}").await, 200);
        assert_eq!(post(&fake, "x:1", now(), b"{}", b"{}").await, 200);
        assert_eq!(fake.duplicate_count(), 1);
        assert_eq!(fake.deliveries()[0].id, None);
    }
}
