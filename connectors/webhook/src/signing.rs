//! Standard Webhooks v1 signatures: HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`,
//! sent as `v1,<base64>`.
//!
//! The sink only signs; verification lives here too (rather than in the fake) so that both
//! sides of the tests share one reading of the spec, and the known-answer vector below pins it.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How a v1 secret is written: `whsec_` + base64 of the key.
const SECRET_PREFIX: &str = "whsec_";
/// The spec's bounds on a v1 key: under 24 bytes is guessable, over 64 is past SHA-256's block
/// and buys nothing.
const MIN_KEY_BYTES: usize = 24;
const MAX_KEY_BYTES: usize = 64;
/// The spec's replay window: a receiver rejects a timestamp further than this from its clock.
#[cfg_attr(not(any(test, feature = "fake")), allow(dead_code))]
pub(crate) const TOLERANCE_SECS: i64 = 5 * 60;

/// Secrets are copied out of dashboards, with or without the trailing `=`; both decode.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A v1 signing key: the decoded part of a `whsec_…` secret. `Debug` never prints it.
#[derive(Clone)]
pub(crate) struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Why a `whsec_…` secret was refused. No variant carries any part of the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("does not start with `whsec_` (Standard Webhooks v1 secrets are `whsec_` + base64)")]
    Prefix,
    #[error("the part after `whsec_` is not valid base64")]
    Base64,
    #[error(
        "decodes to {0} bytes, but a Standard Webhooks v1 key must be {MIN_KEY_BYTES} to \
         {MAX_KEY_BYTES} bytes"
    )]
    Length(usize),
}

impl SigningKey {
    /// Decodes `whsec_<base64>` and checks the key length the spec requires.
    pub(crate) fn from_whsec(secret: &str) -> Result<Self, KeyError> {
        let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or(KeyError::Prefix)?;
        let key = LENIENT_BASE64
            .decode(encoded)
            .map_err(|_| KeyError::Base64)?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(KeyError::Length(key.len()));
        }
        Ok(SigningKey(key))
    }

    /// The `webhook-signature` entry for one message: `v1,<base64 of HMAC-SHA256>`.
    pub(crate) fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = keyed(&self.0, id, &timestamp.to_string(), body)
            .finalize()
            .into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

/// `whsec_` + base64 of `key`: how a raw key is written in a secret file or variable.
#[cfg_attr(not(any(test, feature = "fake")), allow(dead_code))]
pub(crate) fn to_whsec(key: &[u8]) -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// An HMAC already fed the signed content. The parts are fed one by one, so the body is hashed
/// as the exact bytes given, never re-encoded.
fn keyed(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC hashes long keys and pads short ones, so no key length is an error.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// What a receiver concluded about one request.
#[cfg_attr(not(any(test, feature = "fake")), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Some `v1` entry of the signature header matched some key.
    pub(crate) signature_valid: bool,
    /// The timestamp is a whole number within [`TOLERANCE_SECS`] of the receiver's clock.
    pub(crate) timestamp_fresh: bool,
}

/// Checks a request the way a Standard Webhooks consumer does. `signature_header` is the
/// space-separated list of `<version>,<base64>` entries; entries of other versions (`v1a`)
/// and undecodable ones are skipped, as the spec has receivers do. Each comparison is constant
/// time (`Mac::verify_slice`), so a forger learns nothing from how long a rejection takes.
/// `now` is Unix seconds, passed in so tests can move the clock.
#[cfg_attr(not(any(test, feature = "fake")), allow(dead_code))]
pub(crate) fn verify(
    keys: &[Vec<u8>],
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
) -> Verdict {
    let Ok(ts) = timestamp.trim().parse::<i64>() else {
        return Verdict {
            signature_valid: false,
            timestamp_fresh: false,
        };
    };
    let timestamp_fresh = now.abs_diff(ts) <= TOLERANCE_SECS.unsigned_abs();
    let candidates: Vec<Vec<u8>> = signature_header
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
        .collect();
    // The signed content is rebuilt from the headers exactly as received and the raw body
    // bytes, so any change in transit (or a sender signing other bytes than it sent) fails.
    let signature_valid = keys.iter().any(|key| {
        let mac = keyed(key, id, timestamp, body);
        candidates
            .iter()
            .any(|sig| mac.clone().verify_slice(sig).is_ok())
    });
    Verdict {
        signature_valid,
        timestamp_fresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key bytes 1..=32; its `whsec_` form and the expected signature below were computed
    /// independently with Python's standard library:
    ///
    /// ```text
    /// python3 -c 'import hmac,hashlib,base64
    /// key=bytes(range(1,33)); print("whsec_"+base64.b64encode(key).decode())
    /// msg=b"pipeline:0/16B3748:3.1700000000.{\"type\":\"row.changed\",\"timestamp\":\"2023-11-14T22:13:20.000001Z\",\"data\":{\"a\":1}}"
    /// print("v1,"+base64.b64encode(hmac.new(key,msg,hashlib.sha256).digest()).decode())'
    /// ```
    const SECRET: &str = "whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
    const ID: &str = "pipeline:0/16B3748:3";
    const TS: i64 = 1_700_000_000;
    const BODY: &[u8] =
        br#"{"type":"row.changed","timestamp":"2023-11-14T22:13:20.000001Z","data":{"a":1}}"#;
    const EXPECTED: &str = "v1,X1RGXgo797tmRsojierHOUl3/SdASIsDZyxgIizCgWM=";

    fn raw_key() -> Vec<u8> {
        (1..=32).collect()
    }

    #[test]
    fn known_answer_vector() {
        let key = SigningKey::from_whsec(SECRET).unwrap();
        assert_eq!(key.0, raw_key());
        assert_eq!(key.sign(ID, TS, BODY), EXPECTED);
        assert_eq!(to_whsec(&raw_key()), SECRET);
    }

    #[test]
    fn secret_without_padding_decodes_the_same() {
        let unpadded = SECRET.trim_end_matches('=');
        assert_eq!(SigningKey::from_whsec(unpadded).unwrap().0, raw_key());
    }

    #[test]
    fn secret_shape_is_checked() {
        assert_eq!(
            SigningKey::from_whsec("AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRob").unwrap_err(),
            KeyError::Prefix
        );
        assert_eq!(
            SigningKey::from_whsec("whsec_not base64!").unwrap_err(),
            KeyError::Base64
        );
        assert_eq!(
            SigningKey::from_whsec(&to_whsec(&[7; 23])).unwrap_err(),
            KeyError::Length(23)
        );
        assert_eq!(
            SigningKey::from_whsec(&to_whsec(&[7; 65])).unwrap_err(),
            KeyError::Length(65)
        );
        assert!(SigningKey::from_whsec(&to_whsec(&[7; 24])).is_ok());
        assert!(SigningKey::from_whsec(&to_whsec(&[7; 64])).is_ok());
    }

    #[test]
    fn debug_hides_the_key() {
        let key = SigningKey::from_whsec(SECRET).unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey(<redacted>)");
    }

    #[test]
    fn verifies_a_signature_list_with_rotation() {
        let old = vec![9u8; 32];
        let new = raw_key();
        let old_sig = SigningKey(old.clone()).sign(ID, TS, BODY);
        // During a rotation the sender lists several entries; unknown versions are skipped.
        let header = format!("v1a,c29tZXRoaW5n {old_sig} {EXPECTED}");
        let (both, new_only, old_only) = ([old.clone(), new.clone()], [new], [old]);
        let verdict = verify(&both, ID, "1700000000", &header, BODY, TS);
        assert!(verdict.signature_valid && verdict.timestamp_fresh);
        assert!(verify(&new_only, ID, "1700000000", &header, BODY, TS).signature_valid);
        assert!(!verify(&old_only, ID, "1700000000", EXPECTED, BODY, TS).signature_valid);
        // Unparseable entries are no match, not an error.
        assert!(
            !verify(&new_only, ID, "1700000000", "v1,@@@ v1 garbage", BODY, TS).signature_valid
        );
    }

    #[test]
    fn any_change_to_signed_content_fails() {
        let keys = [raw_key()];
        let ts = "1700000000";
        assert!(verify(&keys, ID, ts, EXPECTED, BODY, TS).signature_valid);
        let mut tampered = BODY.to_vec();
        tampered[BODY.len() - 3] = b'2';
        assert!(!verify(&keys, ID, ts, EXPECTED, &tampered, TS).signature_valid);
        assert!(!verify(&keys, "pipeline:0/16B3748:4", ts, EXPECTED, BODY, TS).signature_valid);
        assert!(!verify(&keys, ID, "1700000001", EXPECTED, BODY, TS).signature_valid);
    }

    #[test]
    fn timestamp_tolerance_is_five_minutes_each_way() {
        let keys = [raw_key()];
        let fresh = |now| verify(&keys, ID, "1700000000", EXPECTED, BODY, now).timestamp_fresh;
        assert!(fresh(TS + 300));
        assert!(fresh(TS - 300));
        assert!(!fresh(TS + 301));
        assert!(!fresh(TS - 301));
        let garbled = verify(&keys, ID, "soon", EXPECTED, BODY, TS);
        assert!(!garbled.timestamp_fresh && !garbled.signature_valid);
    }
}
