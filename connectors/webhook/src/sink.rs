//! The sink: one signed POST per record.

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use lily_delivery::{Record, Sink, SinkError};
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};

use crate::config::ConfigError;
use crate::endpoint::Endpoint;
use crate::envelope;
use crate::outcome;
use crate::signing::SigningKey;

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
const USER_AGENT: &str = concat!("lily-webhook/", env!("CARGO_PKG_VERSION"), " (atlanlily)");
/// An error answer is read this far and no further: the message quotes only
/// [`outcome::EXCERPT_CHARS`] characters of it, and a receiver's error page can be large.
const ERROR_BODY_READ_BYTES: usize = 4096;
/// A success answer's body is read (and discarded) up to this size, so its connection can be
/// reused; beyond it, closing the connection is cheaper than reading on.
const SUCCESS_BODY_DRAIN_BYTES: usize = 64 << 10;
/// Connecting should be quick even when answering is not; a black-holed address fails after
/// this rather than after the whole request timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a sink needs, checked and resolved by [`crate::WebhookConfig::build`].
pub(crate) struct Settings {
    pub(crate) endpoint: Endpoint,
    pub(crate) key: SigningKey,
    pub(crate) event_type: String,
    pub(crate) timeout: Duration,
    pub(crate) max_body_bytes: usize,
}

/// A webhook sink: sends each record as one Standard Webhooks v1 request and classifies the
/// answer. Made by [`crate::WebhookConfig::build`]. `Debug` shows neither the key nor the
/// URL's query.
pub struct WebhookSink {
    client: reqwest::Client,
    endpoint: Endpoint,
    key: SigningKey,
    event_type: String,
    timeout: Duration,
    max_body_bytes: usize,
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("endpoint", &self.endpoint)
            .field("key", &"<redacted>")
            .field("event_type", &self.event_type)
            .field("timeout", &self.timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

impl WebhookSink {
    pub(crate) fn new(settings: Settings) -> Result<WebhookSink, ConfigError> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            // The spec: never follow a redirect; it is reported as a failure instead.
            .redirect(reqwest::redirect::Policy::none())
            // Applies to each request, from connect to the end of the answer.
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(MAX_CONNECT_TIMEOUT))
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| ConfigError::Client(e.to_string()))?;
        Ok(WebhookSink {
            client,
            endpoint: settings.endpoint,
            key: settings.key,
            event_type: settings.event_type,
            timeout: settings.timeout,
            max_body_bytes: settings.max_body_bytes,
        })
    }

    /// One attempt for one record.
    async fn send(&self, record: &Record) -> Result<(), SinkError> {
        let id = webhook_id(&record.id)?;
        let body = envelope::encode(&self.event_type, record).map_err(SinkError::permanent)?;
        if body.len() > self.max_body_bytes {
            return Err(SinkError::permanent(format!(
                "body is {} bytes, over this sink's max_body_bytes ({}); send a reference \
                 instead of the whole row, or raise the limit",
                body.len(),
                self.max_body_bytes
            )));
        }
        // The time of this attempt, not of the first one: receivers reject timestamps more than
        // five minutes off, and a retry may come hours later.
        let timestamp = unix_now()?;
        let signature = self.key.sign(&record.id, timestamp, &body);
        let signature = HeaderValue::from_str(&signature)
            .map_err(|_| SinkError::permanent("signature is not a valid header value"))?;
        let response = self
            .client
            .post(self.endpoint.url().clone())
            .header(WEBHOOK_ID, id)
            .header(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp))
            .header(WEBHOOK_SIGNATURE, signature)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            // The very bytes that were signed.
            .body(body)
            .send()
            .await
            .map_err(|e| outcome::from_transport(&self.endpoint, self.timeout, &e))?;
        let status = response.status();
        tracing::debug!(id = %record.id, status = status.as_u16(), "webhook answered");
        if status.is_success() {
            // Read the (ignored) answer to its end so the connection goes back to the pool:
            // dropping an unread body closes it, and the next delivery pays a new handshake.
            drain(response).await;
            return Ok(());
        }
        let retry_after = outcome::retry_after(response.headers(), SystemTime::now());
        let excerpt = if status.is_redirection() {
            String::new()
        } else {
            outcome::excerpt(&read_start(response).await)
        };
        Err(outcome::from_status(
            &self.endpoint,
            status,
            retry_after,
            &excerpt,
        ))
    }
}

#[async_trait]
impl Sink for WebhookSink {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    /// Standard Webhooks carries one event per request.
    fn max_batch(&self) -> usize {
        1
    }

    async fn deliver(&self, records: &[Record]) -> Result<(), SinkError> {
        // The engine passes at most `max_batch` (one); should it pass more, each still gets a
        // request of its own, in order, stopping at the first failure.
        for record in records {
            self.send(record).await?;
        }
        Ok(())
    }
}

/// `record.id` as a `webhook-id` header. The signed content is `{id}.{timestamp}.{body}`, so an
/// id with a `.` would make its split ambiguous; the spec forbids it.
fn webhook_id(id: &str) -> Result<HeaderValue, SinkError> {
    if id.is_empty() {
        return Err(SinkError::permanent(
            "record id is empty; webhook-id needs one",
        ));
    }
    if id.contains('.') {
        return Err(SinkError::permanent(format!(
            "record id `{id}` contains `.`, which Standard Webhooks forbids in webhook-id"
        )));
    }
    HeaderValue::from_str(id).map_err(|_| {
        SinkError::permanent(format!(
            "record id {id:?} is not a valid HTTP header value (control characters?)"
        ))
    })
}

/// Unix seconds now. A clock before 1970 is a broken host, which may be fixed; so retryable.
fn unix_now() -> Result<i64, SinkError> {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .ok_or_else(|| SinkError::retryable("the system clock is before 1970"))
}

/// Reads a success answer's body to its end, up to [`SUCCESS_BODY_DRAIN_BYTES`]; a longer or
/// broken one is dropped (its connection then closes). The event is delivered either way.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0usize;
    while read <= SUCCESS_BODY_DRAIN_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => return,
        }
    }
}

/// The first [`ERROR_BODY_READ_BYTES`] of an answer's body; whatever arrived if it breaks off.
async fn read_start(mut response: reqwest::Response) -> Vec<u8> {
    let mut start = Vec::new();
    while start.len() < ERROR_BODY_READ_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => start.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    start.truncate(ERROR_BODY_READ_BYTES);
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_id_rules() {
        assert!(webhook_id("pipeline:0/16B3748:3").is_ok());
        let dotted = webhook_id("pipe.line:0/1:0").unwrap_err();
        assert!(!dotted.is_retryable());
        assert!(dotted.to_string().contains("contains `.`"), "{dotted}");
        assert!(!webhook_id("").unwrap_err().is_retryable());
        assert!(!webhook_id("a\nb").unwrap_err().is_retryable());
    }
}
