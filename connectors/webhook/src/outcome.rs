//! What an attempt's result means for the delivery engine: done, try again (maybe after a
//! delay the receiver asked for), or give up on this record.
//!
//! Kept apart from the HTTP calls so each rule is tested without a network.

use std::time::{Duration, SystemTime};

use lily_delivery::SinkError;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use crate::endpoint::Endpoint;

/// A `Retry-After` beyond this is taken as this: a receiver asking for days is misconfigured,
/// and the engine's own schedule (and dead letters) handle a receiver that stays down.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How much of an error body is quoted in a message: enough for `{"error":"invalid field x"}`,
/// short enough for a log line and the dead-letter table.
pub(crate) const EXCERPT_CHARS: usize = 200;

/// The error for a non-2xx answer. `excerpt` is the start of the answer's body.
pub(crate) fn from_status(
    endpoint: &Endpoint,
    status: StatusCode,
    retry_after: Option<Duration>,
    excerpt: &str,
) -> SinkError {
    let code = status.as_u16();
    let what = match status.canonical_reason() {
        Some(reason) => format!("POST {endpoint}: {code} {reason}"),
        None => format!("POST {endpoint}: {code}"),
    };
    let with_body = if excerpt.is_empty() {
        what.clone()
    } else {
        format!("{what}: {excerpt}")
    };
    match code {
        // The spec: 3xx is a failure and is never followed (a redirect could point the signed
        // payload anywhere). Retrying will meet the same redirect.
        300..=399 => SinkError::permanent(format!(
            "{what}: redirects are not followed; set the sink's url to the final address"
        )),
        // The spec: 410 means the consumer removed the endpoint.
        410 => SinkError::permanent(format!("{what}: endpoint gone")),
        // Timeout, too early, throttled, and the gateway/availability family: transient by
        // definition, and the ones a receiver pairs with `Retry-After`.
        408 | 425 | 429 | 500 | 502 | 503 | 504 => SinkError::Retryable {
            message: with_body,
            retry_after,
        },
        // Any other 4xx says this request is wrong (bad payload, bad signature, no such path);
        // sending it again will not change the answer.
        400..=499 => SinkError::permanent(with_body),
        // Other 5xx are server trouble, which passes.
        500..=599 => SinkError::Retryable {
            message: with_body,
            retry_after,
        },
        // 1xx as a final answer, or a code outside HTTP's classes: the receiver does not speak
        // HTTP as expected, and repeating will not teach it.
        _ => SinkError::permanent(format!("{with_body}: not a valid final HTTP status")),
    }
}

/// The receiver's `Retry-After`, as delta-seconds or an HTTP-date (relative to `now`), capped
/// at [`MAX_RETRY_AFTER`]. `None` when absent or unreadable: the engine's backoff applies.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64 is still "a very long time".
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        // A date already past means "now".
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The start of an error body, on one line, at most [`EXCERPT_CHARS`] characters.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = one_line
        .chars()
        .filter(|c| !c.is_control())
        .take(EXCERPT_CHARS)
        .collect();
    if one_line.chars().count() > EXCERPT_CHARS {
        out.push('…');
    }
    out
}

/// The error for a request that got no answer. Always retryable: the receiver may never have
/// seen it, and the `webhook-id` makes a second copy harmless.
pub(crate) fn from_transport(
    endpoint: &Endpoint,
    timeout: Duration,
    err: &reqwest::Error,
) -> SinkError {
    let what = if err.is_timeout() {
        format!("no answer within {} ms", timeout.as_millis())
    } else if err.is_connect() {
        "cannot connect".to_string()
    } else if err.is_body() || err.is_decode() {
        "the answer broke off".to_string()
    } else {
        "request failed".to_string()
    };
    // reqwest's own `Display` names the full URL (query included), so only its causes are
    // quoted, and those are scrubbed in case a layer below repeats the URL.
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        source = cause.source();
    }
    let message = if causes.is_empty() {
        format!("POST {endpoint}: {what}")
    } else {
        format!("POST {endpoint}: {what}: {}", causes.join(": "))
    };
    SinkError::retryable(endpoint.scrub(&message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn endpoint() -> Endpoint {
        Endpoint::parse("https://hooks.example.com/in?token=tok_abcdef").unwrap()
    }

    fn classify(code: u16) -> SinkError {
        from_status(
            &endpoint(),
            StatusCode::from_u16(code).unwrap(),
            Some(Duration::from_secs(7)),
            "{\"error\":\"nope\"}",
        )
    }

    #[test]
    fn status_classes() {
        for code in [408, 425, 429, 500, 502, 503, 504, 501, 507, 599] {
            match classify(code) {
                SinkError::Retryable {
                    message,
                    retry_after,
                } => {
                    assert!(message.contains(&code.to_string()), "{message}");
                    assert_eq!(retry_after, Some(Duration::from_secs(7)));
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        for code in [
            400, 401, 403, 404, 409, 413, 422, 300, 301, 302, 307, 308, 410, 101, 600,
        ] {
            assert!(!classify(code).is_retryable(), "{code}");
        }
        let msg = classify(422).to_string();
        assert_eq!(
            msg,
            "POST https://hooks.example.com/in: 422 Unprocessable Entity: {\"error\":\"nope\"}"
        );
        assert!(classify(410)
            .to_string()
            .ends_with("410 Gone: endpoint gone"));
        assert!(classify(302)
            .to_string()
            .contains("302 Found: redirects are not followed"));
    }

    fn headers(retry_after: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(retry_after).unwrap());
        h
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |s: &str| retry_after(&headers(s), now);
        assert_eq!(at("2"), Some(Duration::from_secs(2)));
        assert_eq!(at(" 0 "), Some(Duration::ZERO));
        assert_eq!(at("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(at("99999999999999999999999"), Some(MAX_RETRY_AFTER));
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        assert_eq!(
            at("Tue, 14 Nov 2023 22:13:50 GMT"),
            Some(Duration::from_secs(30))
        );
        // The obsolete forms RFC 9110 still asks recipients to accept.
        assert_eq!(
            at("Tuesday, 14-Nov-23 22:14:20 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(at("Tue Nov 14 22:13:21 2023"), Some(Duration::from_secs(1)));
        assert_eq!(at("Tue, 14 Nov 2023 22:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(at("Wed, 14 Nov 2029 22:00:00 GMT"), Some(MAX_RETRY_AFTER));
        assert_eq!(at("-5"), None);
        assert_eq!(at("soon"), None);
        assert_eq!(at("1.5"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn excerpt_is_one_short_line() {
        assert_eq!(excerpt(b"  bad\r\n  request\t!  "), "bad request !");
        let long = "x".repeat(500);
        let cut = excerpt(long.as_bytes());
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(excerpt(&[0xff, b'o', b'k']), "\u{fffd}ok");
    }
}
