//! `x-mcd-signature`: hex HMAC-SHA512, keyed with the webhook's secret, over
//! `urlencode(json.loads(body))` rather than over the body (see [`crate::pyform`] for why that
//! takes a parser of its own). Two bodies that differ only in insignificant whitespace have the
//! same signature; two that differ in key order do not.
//!
//! Signing is optional in Monte Carlo. [`authenticate`] with no secret accepts every call as
//! [`Authenticity::Unsigned`]; a deployment that does that must still keep strangers out, with
//! an unguessable secret path for the hook and Monte Carlo's sender IPs as an allow-list.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha512;

use crate::pyform::{canonical_form, FormError};

type HmacSha512 = Hmac<Sha512>;

/// The request header carrying the signature (HTTP header names are case-insensitive).
pub const HEADER: &str = "x-mcd-signature";

/// Bytes of an HMAC-SHA512 tag.
const TAG_BYTES: usize = 64;

/// Why a delivery was not accepted as signed. None is worth retrying: the same request fails
/// the same way. No variant carries the secret or the expected signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The configured secret is empty: a configuration mistake, not the sender's.
    #[error("the Monte Carlo signing secret is empty")]
    NoSecret,
    /// A secret is configured but the request has no `x-mcd-signature`.
    #[error("the x-mcd-signature header is missing")]
    MissingHeader,
    /// The header is not 128 hex digits.
    #[error("the x-mcd-signature header is not a hex HMAC-SHA512 (128 hex digits)")]
    MalformedHeader,
    /// The body is not something Monte Carlo's verifier could have signed (not JSON, not an
    /// object, a lone surrogate where UTF-8 is needed).
    #[error("the body cannot be signed the way Monte Carlo signs: {0}")]
    Body(String),
    /// Well-formed, but not the signature of this body under this secret.
    #[error("the x-mcd-signature header does not match the body")]
    Mismatch,
}

impl SignatureError {
    /// Always false: a signature check gives the same answer every time.
    pub fn retryable(&self) -> bool {
        false
    }

    /// The status to answer with: 403 for a missing or wrong signature (what Monte Carlo's
    /// sample answers), 400 for an unreadable body, 500 for our own misconfiguration.
    pub fn http_status(&self) -> u16 {
        match self {
            SignatureError::NoSecret => 500,
            SignatureError::Body(_) => 400,
            SignatureError::MissingHeader
            | SignatureError::MalformedHeader
            | SignatureError::Mismatch => 403,
        }
    }
}

impl From<FormError> for SignatureError {
    fn from(e: FormError) -> Self {
        SignatureError::Body(e.to_string())
    }
}

/// How a delivery that passed [`authenticate`] was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticity {
    /// Its signature matched the configured secret.
    Signed,
    /// No secret is configured, so nothing was checked.
    Unsigned,
}

/// Checks `header` (the `x-mcd-signature` value) against `body` under `secret`, in constant
/// time. A missing header is an error: with a secret configured, unsigned calls are refused.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    if secret.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let header = header.ok_or(SignatureError::MissingHeader)?;
    let presented = decode_hex(header.trim()).ok_or(SignatureError::MalformedHeader)?;
    // The header is checked before the body is parsed, so junk without a signature costs
    // nothing to turn away.
    let mac = keyed(secret, &canonical_form(body)?);
    mac.verify_slice(&presented)
        .map_err(|_| SignatureError::Mismatch)
}

/// [`verify`] when a secret is configured; with `None`, every delivery is accepted as
/// [`Authenticity::Unsigned`] (pair that with a secret path and an IP allow-list).
pub fn authenticate(
    secret: Option<&[u8]>,
    body: &[u8],
    header: Option<&str>,
) -> Result<Authenticity, SignatureError> {
    match secret {
        None => Ok(Authenticity::Unsigned),
        Some(secret) => verify(secret, body, header).map(|()| Authenticity::Signed),
    }
}

/// The `x-mcd-signature` Monte Carlo would send for `body` under `secret` (lower-case hex).
pub fn sign(secret: &[u8], body: &[u8]) -> Result<String, SignatureError> {
    if secret.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let tag = keyed(secret, &canonical_form(body)?)
        .finalize()
        .into_bytes();
    Ok(tag.iter().map(|b| format!("{b:02x}")).collect())
}

/// The text that is MACed for `body`, for diagnosing a mismatch against captured traffic.
pub fn signed_content(body: &[u8]) -> Result<String, SignatureError> {
    Ok(canonical_form(body)?)
}

fn keyed(secret: &[u8], content: &str) -> HmacSha512 {
    // HMAC hashes long keys and pads short ones, so no key length is an error.
    let mut mac = HmacSha512::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(content.as_bytes());
    mac
}

/// Hex of either case (Python's `hexdigest` is lower-case; a proxy might not keep it so).
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != TAG_BYTES * 2 || !text.is_ascii() {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"mc-secret";
    const BODY: &[u8] = br#"{"account": {"id": "a1"}, "action": "incident"}"#;

    #[test]
    fn sign_then_verify_and_tamper() {
        let sig = sign(SECRET, BODY).unwrap();
        assert_eq!(sig.len(), 128);
        verify(SECRET, BODY, Some(&sig)).unwrap();
        verify(SECRET, BODY, Some(&sig.to_uppercase())).unwrap();
        verify(SECRET, BODY, Some(&format!(" {sig}\t"))).unwrap();
        // Whitespace outside strings is not signed; key order and values are.
        let compact = br#"{"account":{"id":"a1"},"action":"incident"}"#;
        verify(SECRET, compact, Some(&sig)).unwrap();
        let reordered = br#"{"action": "incident", "account": {"id": "a1"}}"#;
        assert_eq!(
            verify(SECRET, reordered, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", BODY, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn header_problems() {
        assert_eq!(
            verify(SECRET, BODY, None),
            Err(SignatureError::MissingHeader)
        );
        for bad in [
            "",
            "abc",
            &"zz".repeat(64),
            &"0".repeat(130),
            &"é".repeat(64),
        ] {
            assert_eq!(
                verify(SECRET, BODY, Some(bad)),
                Err(SignatureError::MalformedHeader),
                "{bad:?}"
            );
        }
        assert_eq!(verify(b"", BODY, None), Err(SignatureError::NoSecret));
        let err = verify(SECRET, b"not json", Some(&"0".repeat(128))).unwrap_err();
        assert!(matches!(err, SignatureError::Body(_)), "{err}");
        assert_eq!(err.http_status(), 400);
        assert!(!err.retryable());
    }

    #[test]
    fn raw_body_mac_is_not_accepted() {
        // The common mistake: a MAC over the bytes as sent.
        let mut mac = HmacSha512::new_from_slice(SECRET).unwrap();
        mac.update(BODY);
        let raw: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            verify(SECRET, BODY, Some(&raw)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn unsigned_only_without_a_secret() {
        assert_eq!(authenticate(None, BODY, None), Ok(Authenticity::Unsigned));
        assert_eq!(
            authenticate(Some(SECRET), BODY, None),
            Err(SignatureError::MissingHeader)
        );
        let sig = sign(SECRET, BODY).unwrap();
        assert_eq!(
            authenticate(Some(SECRET), BODY, Some(&sig)),
            Ok(Authenticity::Signed)
        );
    }

    #[test]
    fn signed_content_shows_the_form() {
        assert_eq!(
            signed_content(BODY).unwrap(),
            "account=%7B%27id%27%3A+%27a1%27%7D&action=incident"
        );
    }
}
