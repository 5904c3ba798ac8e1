//! The two checks of an Okta event hook request: the one-time verification challenge (a GET)
//! and the static secret every delivery carries in its auth header. Okta signs nothing; the
//! secret header is all there is, so it is compared in constant time.

use hmac::{Hmac, KeyInit, Mac};
use lily_inbound::json::JsonError;
use lily_pg::Secret;
use sha2::Sha256;

/// The header of Okta's verification GET.
pub const CHALLENGE_HEADER: &str = "x-okta-verification-challenge";
/// The longest challenge echoed. Okta's are short random strings; a longer value is not Okta's
/// and is not worth reflecting.
pub const MAX_CHALLENGE_BYTES: usize = 1024;

/// Why an Okta request was refused. All are permanent: Okta never retries after a 4xx, and
/// the same request would fail the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OktaError {
    #[error("the X-Okta-Verification-Challenge header is empty")]
    EmptyChallenge,
    #[error(
        "the X-Okta-Verification-Challenge header is {0} bytes; at most {MAX_CHALLENGE_BYTES} \
         are accepted"
    )]
    ChallengeTooLong(usize),
    /// The configured auth header is absent.
    #[error("the event hook's secret header is missing")]
    MissingSecret,
    /// The auth header does not hold the configured secret.
    #[error("the event hook's secret header does not match")]
    WrongSecret,
    /// Not JSON, or a field the rows need is missing or of the wrong type (named in full).
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error("`eventType` is {0:?}, not \"com.okta.event_hook\"")]
    NotAnEventHook(String),
    #[error("`{field}` is not an RFC 3339 time: {value:?}")]
    BadTime { field: String, value: String },
    /// Building the batch failed: a bug here, not a bad body.
    #[error("cannot build the events batch: {0}")]
    Arrow(String),
}

impl OktaError {
    /// Always false: nothing here succeeds on a second try.
    pub fn retryable(&self) -> bool {
        false
    }

    /// 401 for a missing or wrong secret, 400 for a bad challenge or body, 500 for our bug.
    pub fn http_status(&self) -> u16 {
        match self {
            OktaError::MissingSecret | OktaError::WrongSecret => 401,
            OktaError::Arrow(_) => 500,
            _ => 400,
        }
    }
}

/// The answer to Okta's verification GET: `{"verification": "<header value>"}`, sent with 200.
pub fn challenge(header_value: &str) -> Result<serde_json::Value, OktaError> {
    if header_value.is_empty() {
        return Err(OktaError::EmptyChallenge);
    }
    if header_value.len() > MAX_CHALLENGE_BYTES {
        return Err(OktaError::ChallengeTooLong(header_value.len()));
    }
    Ok(serde_json::json!({ "verification": header_value }))
}

/// Checks the presented auth header value against the configured secret, exactly (no
/// trimming, no scheme stripping: Okta sends the configured value verbatim).
///
/// Both sides are first reduced to fixed-length HMAC tags, so the comparison (`verify_slice`,
/// constant time) reveals neither a matching prefix nor the secret's length.
pub fn check_secret(expected: &Secret, presented: Option<&str>) -> Result<(), OktaError> {
    let presented = presented.ok_or(OktaError::MissingSecret)?;
    let want = tag(expected.expose().as_bytes()).finalize().into_bytes();
    tag(presented.as_bytes())
        .verify_slice(&want)
        .map_err(|_| OktaError::WrongSecret)
}

fn tag(value: &[u8]) -> Hmac<Sha256> {
    // The key only makes the tags fixed-length; it is not a secret.
    let mut mac = <Hmac<Sha256>>::new_from_slice(b"lily-okta-secret-comparison")
        .expect("HMAC accepts keys of any length");
    mac.update(value);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_echoes_or_refuses() {
        assert_eq!(
            challenge("abc-123").unwrap(),
            serde_json::json!({"verification": "abc-123"})
        );
        assert_eq!(
            challenge(r#"q"uote"#).unwrap().to_string(),
            r#"{"verification":"q\"uote"}"#
        );
        assert_eq!(challenge(""), Err(OktaError::EmptyChallenge));
        assert!(challenge(&"x".repeat(1024)).is_ok());
        let err = challenge(&"x".repeat(1025)).unwrap_err();
        assert_eq!(err, OktaError::ChallengeTooLong(1025));
        assert_eq!(err.http_status(), 400);
    }

    #[test]
    fn secret_must_match_exactly() {
        let secret = Secret::new("s3cr3t-value");
        check_secret(&secret, Some("s3cr3t-value")).unwrap();
        for wrong in [
            "",
            "s3cr3t-valu",
            "s3cr3t-value ",
            "S3CR3T-VALUE",
            "Bearer s3cr3t-value",
        ] {
            assert_eq!(
                check_secret(&secret, Some(wrong)),
                Err(OktaError::WrongSecret),
                "{wrong:?}"
            );
        }
        let err = check_secret(&secret, None).unwrap_err();
        assert_eq!(err, OktaError::MissingSecret);
        assert_eq!(err.http_status(), 401);
        assert!(!err.retryable());
        assert!(!err.to_string().contains("s3cr3t"));
    }
}
