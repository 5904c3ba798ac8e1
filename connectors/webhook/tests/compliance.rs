//! The sink compliance suite (`lily-sinktest`) against the fake Standard Webhooks receiver, with
//! a fault proxy in between for the transport faults.

use std::time::Duration;

use lily_delivery::Record;
use lily_sinktest::{Fault, FaultProxy, Received, Replay, RetryAfter, Shape, SinkHarness, Support};
use lily_webhook::fake::{self, FakeReceiver, Response};
use lily_webhook::{WebhookConfig, WebhookSink};

lily_sinktest::compliance!(WebhookHarness);

const KEY: [u8; 32] = *b"sinktest webhook signing key 32b";
/// In the URL's query and userinfo, where webhook URLs carry tokens.
const URL_TOKEN: &str = "tok_sinktest_query_9f3a";
const URL_PASSWORD: &str = "pw_sinktest_userinfo_41c7";
const TIMEOUT_MS: u64 = 500;

struct WebhookHarness {
    fake: FakeReceiver,
    proxy: FaultProxy,
    sink: WebhookSink,
    secret: String,
    _secret_file: tempfile::NamedTempFile,
}

#[async_trait::async_trait]
impl SinkHarness for WebhookHarness {
    type Sink = WebhookSink;

    const SHAPE: Shape = Shape::Stream;
    const REPLAY: Replay = Replay::IdempotencyKey;

    async fn start() -> Self {
        let fake = FakeReceiver::start(vec![KEY.to_vec()]).await;
        let proxy = FaultProxy::start(fake.addr()).await;
        let secret = fake::whsec(&KEY);
        let secret_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret_file.path(), format!("{secret}\n")).unwrap();
        let url = format!(
            "http://sinktest:{URL_PASSWORD}@{}/webhook?token={URL_TOKEN}",
            proxy.addr()
        );
        let mut table = toml::Table::new();
        table.insert("url".into(), url.into());
        table.insert(
            "secret_file".into(),
            secret_file.path().to_str().unwrap().into(),
        );
        table.insert("event_type".into(), "sinktest.record.changed".into());
        table.insert(
            "timeout_ms".into(),
            i64::try_from(TIMEOUT_MS).unwrap().into(),
        );
        let config: WebhookConfig = toml::Value::Table(table).try_into().unwrap();
        let sink = config.build().unwrap();
        WebhookHarness {
            fake,
            proxy,
            sink,
            secret,
            _secret_file: secret_file,
        }
    }

    fn sink(&self) -> &WebhookSink {
        &self.sink
    }

    fn supports(fault: &Fault) -> Support {
        match fault {
            Fault::Refused | Fault::Dropped | Fault::Hang | Fault::Malformed => Support::Yes,
            Fault::Http { .. } => Support::Yes,
            Fault::ShuttingDown | Fault::LockTimeout => {
                Support::No("a webhook receiver is no database; HTTP 503 and 429 are its analogues")
            }
            Fault::ConstraintViolation | Fault::DataError => Support::No(
                "a webhook receiver refuses content with a 4xx (http_other_4xx_are_permanent)",
            ),
        }
    }

    async fn inject(&self, fault: &Fault, _records: &mut Vec<Record>) {
        match fault {
            Fault::Refused => self.proxy.refuse(),
            Fault::Dropped => self.proxy.drop_next(),
            Fault::Hang => self.proxy.hang(),
            Fault::Malformed => self.proxy.garbage_next(),
            Fault::Http {
                status,
                retry_after: None,
            } => self.fake.push_response(Response::Status(*status)),
            Fault::Http {
                status,
                retry_after: Some(after),
            } => self.fake.push_response(Response::StatusRetryAfter {
                status: *status,
                retry_after: match after {
                    RetryAfter::Seconds(s) => fake::RetryAfter::Seconds(*s),
                    RetryAfter::Date(at) => fake::RetryAfter::Date(*at),
                },
            }),
            other => unreachable!("not supported: {other:?}"),
        }
    }

    async fn received(&self) -> Vec<Received> {
        self.fake
            .deliveries()
            .into_iter()
            .filter(|d| d.accepted())
            .map(|d| {
                let data = d.json.as_ref().and_then(|j| j.get("data"));
                Received {
                    key: data
                        .and_then(|v| v.get("k"))
                        .and_then(|v| v.as_str())
                        .map(str::to_string),
                    seq: data.and_then(|v| v.get("seq")).and_then(|v| v.as_u64()),
                    idempotency_key: d.id.clone(),
                    version: None,
                }
            })
            .collect()
    }

    fn secrets(&self) -> Vec<String> {
        vec![
            self.secret.clone(),
            self.secret.trim_start_matches("whsec_").to_string(),
            URL_TOKEN.to_string(),
            URL_PASSWORD.to_string(),
        ]
    }

    fn timeout(&self) -> Option<Duration> {
        Some(Duration::from_millis(TIMEOUT_MS))
    }

    fn describe(&self) -> Option<String> {
        Some(format!("{:?}", self.sink))
    }
}
