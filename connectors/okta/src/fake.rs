//! Okta as an event hook sender, for tests here and in the ingest server.
//!
//! It builds the requests Okta makes (the verification GET with
//! `X-Okta-Verification-Challenge`; POSTs of batched System Log events carrying the static
//! secret header) and delivers them the way Okta does: at least once, batched, late, twice or
//! out of order. [`FakeOkta::verify`] and [`FakeOkta::send`] also speak HTTP with Okta's rules:
//! a reply slower than the timeout (3 s) or not 2xx fails, and a failure is retried once
//! unless it was a 4xx.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::events::EVENT_HOOK_TYPE;
use crate::hook::CHALLENGE_HEADER;
use crate::time::format_rfc3339_millis;

/// Okta's limit on how long the hook's endpoint may take to answer.
pub const OKTA_TIMEOUT: Duration = Duration::from_secs(3);

/// An Okta user, as a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub login: String,
    pub display_name: String,
}

impl User {
    pub fn new(id: &str, login: &str, display_name: &str) -> Self {
        User {
            id: id.into(),
            login: login.into(),
            display_name: display_name.into(),
        }
    }
}

/// An Okta group, as a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub name: String,
}

impl Group {
    pub fn new(id: &str, name: &str) -> Self {
        Group {
            id: id.into(),
            name: name.into(),
        }
    }
}

/// One `target[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    /// `User`, `UserGroup`, …
    pub kind: String,
    pub alternate_id: String,
    pub display_name: String,
}

impl From<&User> for Target {
    fn from(u: &User) -> Self {
        Target {
            id: u.id.clone(),
            kind: "User".into(),
            alternate_id: u.login.clone(),
            display_name: u.display_name.clone(),
        }
    }
}

impl From<&Group> for Target {
    fn from(g: &Group) -> Self {
        Target {
            id: g.id.clone(),
            kind: "UserGroup".into(),
            alternate_id: g.name.clone(),
            display_name: g.name.clone(),
        }
    }
}

/// One System Log event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    pub uuid: String,
    /// Microseconds since the epoch; sent with millisecond precision, as Okta does.
    pub published: i64,
    pub event_type: String,
    pub actor: Target,
    pub targets: Vec<Target>,
    /// `SUCCESS`, `FAILURE`, …
    pub outcome: String,
}

/// Process-wide, so every event built in a test run has its own uuid.
static NEXT_UUID: AtomicU64 = AtomicU64::new(1);

impl LogEvent {
    /// An event by the default admin actor, with a fresh uuid and outcome SUCCESS.
    pub fn new(event_type: &str, targets: Vec<Target>, published: i64) -> Self {
        let n = NEXT_UUID.fetch_add(1, Ordering::Relaxed);
        LogEvent {
            uuid: format!("{:08x}-b1c2-11ee-9f00-{n:012x}", n >> 16),
            published,
            event_type: event_type.into(),
            actor: Target {
                id: "00uadmin0000000000x7".into(),
                kind: "User".into(),
                alternate_id: "admin@example.okta.com".into(),
                display_name: "Okta Admin".into(),
            },
            targets,
            outcome: "SUCCESS".into(),
        }
    }

    /// `user.lifecycle.*` or `user.account.update_profile` on `user`.
    pub fn user(event_type: &str, user: &User, published: i64) -> Self {
        LogEvent::new(event_type, vec![user.into()], published)
    }

    /// `group.lifecycle.*` on `group`.
    pub fn group(event_type: &str, group: &Group, published: i64) -> Self {
        LogEvent::new(event_type, vec![group.into()], published)
    }

    /// `group.user_membership.add` (or `.remove`): targets the user, then the group.
    pub fn membership(added: bool, user: &User, group: &Group, published: i64) -> Self {
        let kind = if added {
            "group.user_membership.add"
        } else {
            "group.user_membership.remove"
        };
        LogEvent::new(kind, vec![user.into(), group.into()], published)
    }

    /// The same event with another outcome.
    pub fn with_outcome(mut self, outcome: &str) -> Self {
        self.outcome = outcome.into();
        self
    }

    /// The LogEvent as Okta writes it (fields the receiver ignores included, for realism).
    pub fn to_json(&self) -> Value {
        let target = |t: &Target| {
            json!({
                "id": t.id, "type": t.kind, "alternateId": t.alternate_id,
                "displayName": t.display_name, "detailEntry": null
            })
        };
        json!({
            "uuid": self.uuid,
            "published": format_rfc3339_millis(self.published),
            "eventType": self.event_type,
            "version": "0",
            "displayMessage": self.event_type,
            "severity": "INFO",
            "client": {"ipAddress": "192.0.2.10", "userAgent": {"rawUserAgent": "fake-okta"}},
            "actor": target(&self.actor),
            "outcome": {"result": self.outcome, "reason": null},
            "target": self.targets.iter().map(target).collect::<Vec<_>>(),
            "transaction": {"type": "WEB", "id": format!("tx-{}", self.uuid)},
            "debugContext": {"debugData": {}},
        })
    }
}

/// An HTTP method Okta uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The one-time verification.
    Get,
    /// Every delivery.
    Post,
}

/// One request as Okta would make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRequest {
    pub method: Method,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    /// Empty for the GET.
    pub body: Vec<u8>,
}

impl HookRequest {
    /// A header's value; `name` in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The same request with the secret header replaced (`None`: removed), to test refusals.
    pub fn with_secret(mut self, header: &str, value: Option<&str>) -> Self {
        let header = header.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != header);
        if let Some(v) = value {
            self.headers.push((header, v.into()));
        }
        self
    }
}

/// What [`FakeOkta::send`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReport {
    /// 1, or 2 when the first attempt failed with other than a 4xx.
    pub attempts: u32,
    /// The last reply's status; `None` when it timed out or did not connect.
    pub status: Option<u16>,
    /// A 2xx within the timeout.
    pub delivered: bool,
}

/// An Okta org with one event hook.
#[derive(Debug, Clone)]
pub struct FakeOkta {
    domain: String,
    hook_id: String,
    header: String,
    secret: String,
    timeout: Duration,
}

impl FakeOkta {
    /// A hook sending `secret` in `header` (Okta's default is `Authorization`).
    pub fn new(header: &str, secret: &str) -> Self {
        FakeOkta {
            domain: "example.okta.com".into(),
            hook_id: "who8fake0hook0id0x7".into(),
            header: header.to_ascii_lowercase(),
            secret: secret.into(),
            timeout: OKTA_TIMEOUT,
        }
    }

    /// A shorter reply deadline than Okta's 3 s, so timeout tests run quickly.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The verification GET. It carries the secret header too, as configured headers go on
    /// every request.
    pub fn verification_request(&self, challenge: &str) -> HookRequest {
        HookRequest {
            method: Method::Get,
            headers: vec![
                (CHALLENGE_HEADER.into(), challenge.into()),
                (self.header.clone(), self.secret.clone()),
            ],
            body: Vec::new(),
        }
    }

    /// One POST carrying `events`.
    pub fn delivery(&self, events: &[LogEvent]) -> HookRequest {
        let n = NEXT_UUID.fetch_add(1, Ordering::Relaxed);
        let newest = events.iter().map(|e| e.published).max().unwrap_or(0);
        let envelope = json!({
            "eventType": EVENT_HOOK_TYPE,
            "eventTypeVersion": "1.0",
            "cloudEventsVersion": "0.1",
            "source": format!("https://{}/api/v1/eventHooks/{}", self.domain, self.hook_id),
            "eventId": format!("evt-{n:016x}"),
            "data": {"events": events.iter().map(LogEvent::to_json).collect::<Vec<_>>()},
            "eventTime": format_rfc3339_millis(newest + 1_000_000),
            "contentType": "application/json",
        });
        HookRequest {
            method: Method::Post,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                (self.header.clone(), self.secret.clone()),
            ],
            body: serde_json::to_vec(&envelope).expect("JSON values serialise"),
        }
    }

    /// `events` as Okta might deliver them: neighbours swapped, split into batches of at most
    /// `batch_size`, some events repeated in the following batch, and the first batch
    /// delivered again at the end (late and twice). Deterministic for a `seed`; with two or
    /// more events there is always at least one swap.
    pub fn deliveries(
        &self,
        events: &[LogEvent],
        batch_size: usize,
        seed: u64,
    ) -> Vec<HookRequest> {
        let mut rng = SplitMix(seed);
        let mut order: Vec<&LogEvent> = events.iter().collect();
        let mut swapped = false;
        let mut k = 0;
        while k + 1 < order.len() {
            if rng.next().is_multiple_of(2) {
                order.swap(k, k + 1);
                swapped = true;
                k += 2;
            } else {
                k += 1;
            }
        }
        if !swapped && order.len() >= 2 {
            order.swap(0, 1);
        }
        let mut batches: Vec<Vec<LogEvent>> = order
            .chunks(batch_size.max(1))
            .map(|c| c.iter().map(|e| (*e).clone()).collect())
            .collect();
        for i in 1..batches.len() {
            if rng.next().is_multiple_of(2) {
                let repeat = batches[i - 1].last().cloned();
                batches[i].extend(repeat);
            }
        }
        if let Some(first) = batches.first().cloned() {
            batches.push(first);
        }
        batches.iter().map(|b| self.delivery(b)).collect()
    }

    /// Verifies the hook at `url` as Okta does: the GET must answer 200 with
    /// `{"verification": challenge}` within the timeout; one retry.
    pub async fn verify(&self, url: &str, challenge: &str) -> Result<(), String> {
        let request = self.verification_request(challenge);
        let mut last = String::new();
        for _ in 0..2 {
            match self.attempt(url, &request).await {
                Ok((200, body)) => {
                    let answer: Value = serde_json::from_slice(&body)
                        .map_err(|e| format!("the answer is not JSON: {e}"))?;
                    return if answer == json!({ "verification": challenge }) {
                        Ok(())
                    } else {
                        Err(format!("wrong answer: {answer}"))
                    };
                }
                Ok((status, _)) => last = format!("status {status}"),
                Err(e) => last = e,
            }
        }
        Err(format!("verification failed: {last}"))
    }

    /// Sends one request with Okta's rules: success is a 2xx within the timeout; anything else
    /// is retried once, except a 4xx, which Okta never retries.
    pub async fn send(&self, url: &str, request: &HookRequest) -> SendReport {
        let mut report = SendReport {
            attempts: 0,
            status: None,
            delivered: false,
        };
        for _ in 0..2 {
            report.attempts += 1;
            match self.attempt(url, request).await {
                Ok((status, _)) => {
                    report.status = Some(status);
                    if (200..300).contains(&status) {
                        report.delivered = true;
                        return report;
                    }
                    if (400..500).contains(&status) {
                        return report;
                    }
                }
                Err(_) => report.status = None,
            }
        }
        report
    }

    async fn attempt(&self, url: &str, request: &HookRequest) -> Result<(u16, Vec<u8>), String> {
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let mut builder = match request.method {
            Method::Get => client.get(url),
            Method::Post => client.post(url).body(request.body.clone()),
        };
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let response = builder.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        // The body counts toward the deadline too; a reply that stalls mid-body fails.
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        Ok((status, body.to_vec()))
    }
}

/// A small deterministic generator, so tests need no `rand`.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::events_batch;

    #[test]
    fn deliveries_parse_and_lose_nothing() {
        let fake = FakeOkta::new("Authorization", "s");
        let user = User::new("00u1", "dana@example.com", "Dana");
        let events: Vec<LogEvent> = (0..7)
            .map(|i| LogEvent::user("user.lifecycle.activate", &user, i * 1_000_000))
            .collect();
        for seed in 0..10 {
            let requests = fake.deliveries(&events, 3, seed);
            let mut uuids = Vec::new();
            for r in &requests {
                assert_eq!(r.method, Method::Post);
                assert_eq!(r.header("AUTHORIZATION"), Some("s"));
                let batch = events_batch(&r.body).unwrap();
                let col = arrow_array::cast::AsArray::as_string::<i32>(
                    batch.column_by_name("uuid").unwrap(),
                );
                uuids.extend(col.iter().map(|u| u.unwrap().to_string()));
            }
            let originals: Vec<&str> = events.iter().map(|e| e.uuid.as_str()).collect();
            assert!(
                originals.iter().all(|u| uuids.iter().any(|v| v == u)),
                "seed {seed}"
            );
            assert!(uuids.len() > events.len(), "seed {seed}: no duplicate");
            let first_positions: Vec<usize> = originals
                .iter()
                .map(|u| uuids.iter().position(|v| v == u).unwrap())
                .collect();
            assert!(
                first_positions.windows(2).any(|w| w[0] > w[1]),
                "seed {seed}: not reordered"
            );
        }
    }

    #[test]
    fn requests_carry_what_okta_sends() {
        let fake = FakeOkta::new("X-Hook-Auth", "tok");
        let get = fake.verification_request("ch-1");
        assert_eq!(get.method, Method::Get);
        assert_eq!(get.header("X-Okta-Verification-Challenge"), Some("ch-1"));
        assert_eq!(get.header("x-hook-auth"), Some("tok"));
        let post = fake.delivery(&[]).with_secret("X-Hook-Auth", None);
        assert_eq!(post.header("x-hook-auth"), None);
        let envelope: Value = serde_json::from_slice(&post.body).unwrap();
        assert_eq!(envelope["eventType"], EVENT_HOOK_TYPE);
        assert_eq!(envelope["data"]["events"], json!([]));
    }
}
