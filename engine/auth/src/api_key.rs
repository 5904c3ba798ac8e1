//! API keys: `lily_<key_id>_<secret>`, stored in lily.api_keys.
//!
//! `key_id` is 12 characters of `[a-z0-9]`; it names the key (in lists, logs and the audit log)
//! and is not secret. The secret is 32 random bytes, written base64url without padding (43
//! characters). Only SHA-256 of the secret is stored. A fast, unsalted hash is enough here,
//! unlike for passwords: the secret is 256 uniformly random bits, so there is no dictionary to
//! try and no brute force that a slow hash would meaningfully slow down; a leaked table gives
//! nothing usable, and verification stays cheap on every request.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::{Rng as _, TryRngCore as _};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

use crate::error::KeyAdminError;
use crate::key_cache::VerifiedKeys;
use crate::scope::{parse_granted, parse_requested};
use crate::{AuthError, Method, Principal, Scope};

/// Every presented key starts with this; it tells an API key from a JWT and makes leaked keys
/// easy to find with secret scanners.
pub(crate) const PREFIX: &str = "lily_";
const KEY_ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;
/// base64url without padding of 32 bytes.
const SECRET_TEXT_LEN: usize = 43;
const PRESENTED_LEN: usize = PREFIX.len() + KEY_ID_LEN + 1 + SECRET_TEXT_LEN;
const KEY_ID_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const MAX_NAME_CHARS: usize = 200;
/// A new key id that collides with an existing one (1 in 36^12 per existing key) is redrawn.
const CREATE_ATTEMPTS: usize = 3;

/// A newly created key in full. It is shown to its owner once, at creation; it is not stored
/// and cannot be recovered. `Debug` shows only the key id.
#[derive(Clone)]
pub struct PresentedKey {
    key_id: String,
    text: String,
}

impl PresentedKey {
    /// The key's public id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The whole key, `lily_<key_id>_<secret>`, to hand to its owner.
    pub fn expose_secret(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedKey")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The public part of the key, `[a-z0-9]{12}`.
    pub key_id: String,
    /// The one tenant the key acts for.
    pub tenant_id: String,
    /// What its owner called it (shown in lists).
    pub name: String,
    /// What it may do.
    pub scopes: BTreeSet<Scope>,
    pub created_at: SystemTime,
    /// Set once the key is revoked; a revoked key never verifies again.
    pub revoked_at: Option<SystemTime>,
}

impl KeyInfo {
    fn from_row(row: &Row) -> Self {
        KeyInfo {
            key_id: row.get("key_id"),
            tenant_id: row.get("tenant_id"),
            name: row.get("name"),
            scopes: parse_granted(row.get::<_, Vec<String>>("scopes")),
            created_at: row.get("created_at"),
            revoked_at: row.get("revoked_at"),
        }
    }
}

/// A presented key split into its parts. `Debug` hides the secret.
pub(crate) struct ParsedKey<'a> {
    pub(crate) key_id: &'a str,
    secret: [u8; SECRET_LEN],
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Splits `lily_<key_id>_<secret>`. The error says what is wrong, for logs.
pub(crate) fn parse(presented: &str) -> Result<ParsedKey<'_>, &'static str> {
    let rest = presented
        .strip_prefix(PREFIX)
        .ok_or("missing the lily_ prefix")?;
    if presented.len() != PRESENTED_LEN {
        return Err("wrong length");
    }
    let bytes = rest.as_bytes();
    let id_ok = bytes[..KEY_ID_LEN]
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !id_ok {
        return Err("key id is not 12 characters of [a-z0-9]");
    }
    if bytes[KEY_ID_LEN] != b'_' {
        return Err("no separator after the key id");
    }
    // Both slice points follow ASCII bytes checked above, so they are character boundaries.
    let key_id = &rest[..KEY_ID_LEN];
    // The strict decoder refuses padding and non-zero trailing bits, so one secret has exactly
    // one spelling (and one cache fingerprint).
    let decoded = URL_SAFE_NO_PAD
        .decode(&rest[KEY_ID_LEN + 1..])
        .map_err(|_| "secret is not base64url without padding")?;
    let secret: [u8; SECRET_LEN] = decoded.try_into().map_err(|_| "secret is not 32 bytes")?;
    Ok(ParsedKey { key_id, secret })
}

fn hash_secret(secret: &[u8; SECRET_LEN]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Whether a stored hash equals the presented secret's, in time independent of where they
/// differ, so response timing cannot be used to find a matching hash byte by byte.
fn secret_matches(stored_sha256: &[u8], presented: &[u8; SECRET_LEN]) -> bool {
    stored_sha256.ct_eq(&hash_secret(presented)).into()
}

fn format_key(key_id: &str, secret: &[u8; SECRET_LEN]) -> String {
    format!("{PREFIX}{key_id}_{}", URL_SAFE_NO_PAD.encode(secret))
}

fn new_key_id() -> String {
    // Not secret, so the thread RNG is fine; `random_range` is unbiased.
    let mut rng = rand::rng();
    (0..KEY_ID_LEN)
        .map(|_| char::from(KEY_ID_ALPHABET[rng.random_range(0..KEY_ID_ALPHABET.len())]))
        .collect()
}

fn new_secret() -> Result<[u8; SECRET_LEN], KeyAdminError> {
    let mut secret = [0u8; SECRET_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut secret)
        .map_err(|e| KeyAdminError::Random(e.to_string()))?;
    Ok(secret)
}

fn validate_name(name: &str) -> Result<(), KeyAdminError> {
    if name.trim().is_empty() {
        return Err(KeyAdminError::InvalidName("empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(KeyAdminError::InvalidName("longer than 200 characters"));
    }
    Ok(())
}

/// Creates, verifies, lists and revokes API keys, remembering verified keys for a short time.
pub struct ApiKeys {
    cache: Option<VerifiedKeys>,
}

impl Default for ApiKeys {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("cache_ttl", &self.cache.as_ref().map(VerifiedKeys::ttl))
            .finish()
    }
}

impl ApiKeys {
    /// How long a verified key is remembered by default; also the longest a revocation made by
    /// another process takes to apply here.
    pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(30);
    /// How many verified keys are remembered at most by default.
    pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

    /// With the default cache ([`Self::DEFAULT_CACHE_TTL`], [`Self::DEFAULT_CACHE_CAPACITY`]).
    pub fn new() -> Self {
        Self::with_cache(Self::DEFAULT_CACHE_TTL, Self::DEFAULT_CACHE_CAPACITY)
    }

    /// With a cache of verified keys: revocation by another process takes effect within `ttl`.
    /// A zero `ttl` or `capacity` turns the cache off.
    pub fn with_cache(ttl: Duration, capacity: usize) -> Self {
        let cache = (!ttl.is_zero() && capacity > 0).then(|| VerifiedKeys::new(ttl, capacity));
        ApiKeys { cache }
    }

    /// Without a cache: every verification reads the database, so revocation applies at once.
    pub fn uncached() -> Self {
        ApiKeys { cache: None }
    }

    /// Creates a key for `tenant_id` granting `scopes` (names as in [`Scope`]; an unknown name is
    /// refused). The returned [`PresentedKey`] is the only copy of the secret.
    pub async fn create<I, S>(
        &self,
        client: &Client,
        tenant_id: &str,
        name: &str,
        scopes: I,
    ) -> Result<(PresentedKey, KeyInfo), KeyAdminError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let scopes = parse_requested(scopes).map_err(|e| KeyAdminError::UnknownScope(e.0))?;
        if scopes.is_empty() {
            return Err(KeyAdminError::NoScopes);
        }
        validate_name(name)?;
        let scope_names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();

        let mut attempt = 0;
        loop {
            attempt += 1;
            let key_id = new_key_id();
            let secret = new_secret()?;
            let hash = hash_secret(&secret);
            let inserted = client
                .query_one(
                    "INSERT INTO lily.api_keys (key_id, tenant_id, name, scopes, secret_sha256) \
                     VALUES ($1, $2, $3, $4, $5) \
                     RETURNING key_id, tenant_id, name, scopes, created_at, revoked_at",
                    &[&key_id, &tenant_id, &name, &scope_names, &&hash[..]],
                )
                .await;
            match inserted {
                Ok(row) => {
                    let info = KeyInfo::from_row(&row);
                    let presented = PresentedKey {
                        text: format_key(&key_id, &secret),
                        key_id,
                    };
                    tracing::info!(key_id = %info.key_id, tenant_id, name, "created API key");
                    return Ok((presented, info));
                }
                Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                    return Err(KeyAdminError::UnknownTenant(tenant_id.to_owned()));
                }
                Err(e)
                    if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                        && attempt < CREATE_ATTEMPTS =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The principal of a presented key when it is well formed and in the cache (`None`: it
    /// must be looked up with [`ApiKeys::verify`]). A malformed key is refused here, before
    /// any database work.
    pub fn cached(&self, presented: &str) -> Result<Option<Principal>, AuthError> {
        parse(presented)
            .map_err(|why| AuthError::unauthenticated(format!("malformed API key: {why}")))?;
        Ok(self
            .cache
            .as_ref()
            .and_then(|cache| cache.get(&VerifiedKeys::fingerprint(presented), Instant::now())))
    }

    /// Checks a presented `lily_...` key. Malformed, unknown, wrong-secret and revoked keys all
    /// give [`AuthError::Unauthenticated`] (the reason differs, for logs only); a database
    /// failure gives [`AuthError::Unavailable`].
    pub async fn verify(&self, client: &Client, presented: &str) -> Result<Principal, AuthError> {
        let parsed = parse(presented)
            .map_err(|why| AuthError::unauthenticated(format!("malformed API key: {why}")))?;
        let fingerprint = VerifiedKeys::fingerprint(presented);
        let generation = match &self.cache {
            Some(cache) => {
                if let Some(principal) = cache.get(&fingerprint, Instant::now()) {
                    return Ok(principal);
                }
                Some(cache.generation())
            }
            None => None,
        };

        // One round trip: an unnamed statement with declared parameter types needs no prepare.
        let rows = client
            .query_typed(
                "SELECT tenant_id, scopes, secret_sha256, revoked_at IS NOT NULL AS revoked \
                 FROM lily.api_keys WHERE key_id = $1",
                &[(&parsed.key_id, Type::TEXT)],
            )
            .await
            .map_err(|e| AuthError::unavailable(format!("reading lily.api_keys: {e}")))?;
        // Key ids are not secret, so answering an unknown one sooner (without hashing) gives
        // nothing away; the public error is the same either way.
        let row = rows.first().ok_or_else(|| {
            AuthError::unauthenticated(format!("unknown API key id {}", parsed.key_id))
        })?;
        let stored: &[u8] = row.get("secret_sha256");
        if !secret_matches(stored, &parsed.secret) {
            return Err(AuthError::unauthenticated(format!(
                "wrong secret for API key {}",
                parsed.key_id
            )));
        }
        if row.get::<_, bool>("revoked") {
            return Err(AuthError::unauthenticated(format!(
                "API key {} is revoked",
                parsed.key_id
            )));
        }
        let principal = Principal {
            subject: format!("key:{}", parsed.key_id),
            tenant_id: row.get("tenant_id"),
            scopes: parse_granted(row.get::<_, Vec<String>>("scopes")),
            via: Method::ApiKey,
        };
        if let (Some(cache), Some(generation)) = (&self.cache, generation) {
            cache.insert(
                fingerprint,
                parsed.key_id,
                principal.clone(),
                generation,
                Instant::now(),
            );
        }
        Ok(principal)
    }

    /// Revokes a live key of `tenant_id`. Returns false when that tenant has no such live key
    /// (unknown, another tenant's, or already revoked), so one tenant's admin cannot revoke
    /// another tenant's keys. Applies at once in this process; other processes stop accepting
    /// the key within their cache TTL.
    pub async fn revoke(
        &self,
        client: &Client,
        tenant_id: &str,
        key_id: &str,
    ) -> Result<bool, KeyAdminError> {
        let revoked = client
            .execute(
                "UPDATE lily.api_keys SET revoked_at = now() \
                 WHERE key_id = $1 AND tenant_id = $2 AND revoked_at IS NULL",
                &[&key_id, &tenant_id],
            )
            .await?;
        if let Some(cache) = &self.cache {
            cache.forget(key_id);
        }
        if revoked > 0 {
            tracing::info!(key_id, tenant_id, "revoked API key");
        }
        Ok(revoked > 0)
    }

    /// The keys of a tenant, revoked ones included, oldest first.
    pub async fn list(
        &self,
        client: &Client,
        tenant_id: &str,
    ) -> Result<Vec<KeyInfo>, KeyAdminError> {
        let rows = client
            .query(
                "SELECT key_id, tenant_id, name, scopes, created_at, revoked_at \
                 FROM lily.api_keys WHERE tenant_id = $1 ORDER BY created_at, key_id",
                &[&tenant_id],
            )
            .await?;
        Ok(rows.iter().map(KeyInfo::from_row).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "abc123def456";

    fn sample_secret() -> [u8; SECRET_LEN] {
        let mut secret = [0u8; SECRET_LEN];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(250);
        }
        secret
    }

    #[test]
    fn formatted_keys_parse_back() {
        let secret = sample_secret();
        let text = format_key(ID, &secret);
        assert_eq!(text.len(), PRESENTED_LEN);
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed.key_id, ID);
        assert_eq!(parsed.secret, secret);
    }

    #[test]
    fn generated_parts_have_the_documented_shape() {
        for _ in 0..100 {
            let id = new_key_id();
            assert_eq!(id.len(), KEY_ID_LEN);
            assert!(id.bytes().all(|b| KEY_ID_ALPHABET.contains(&b)), "{id}");
            let secret = new_secret().unwrap();
            let text = format_key(&id, &secret);
            assert_eq!(parse(&text).unwrap().secret, secret);
        }
        assert_ne!(new_secret().unwrap(), new_secret().unwrap());
    }

    #[test]
    fn malformed_keys_are_refused() {
        let good = format_key(ID, &sample_secret());
        let secret_text = &good[PREFIX.len() + KEY_ID_LEN + 1..];
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty"),
            ("lily_".to_owned(), "prefix only"),
            (good.replacen("lily_", "lilz_", 1), "wrong prefix"),
            (good.replacen("lily_", "LILY_", 1), "upper-case prefix"),
            (good[1..].to_owned(), "prefix cut"),
            (format!("{good}A"), "too long"),
            (good[..good.len() - 1].to_owned(), "too short"),
            (
                format!("lily_ABC123DEF456_{secret_text}"),
                "upper-case key id",
            ),
            (
                format!("lily_abc123def45_x{secret_text}"),
                "key id too short",
            ),
            (
                format!("lily_abc-23def456_{secret_text}"),
                "punctuation in key id",
            ),
            (
                format!("lily_abc123def456-{secret_text}"),
                "wrong separator",
            ),
            (
                format!(
                    "lily_{ID}_{}",
                    &secret_text.replacen(&secret_text[..1], "*", 1)
                ),
                "not base64url",
            ),
            (format!("lily_{ID}_{}=", &secret_text[..42]), "padding"),
            (format!("lily_{ID}_{}", "+".repeat(43)), "standard alphabet"),
            // 43 characters whose last one carries non-zero trailing bits: not canonical.
            (format!("lily_{ID}_{}B", "A".repeat(42)), "trailing bits"),
            (
                format!("lily_{ID}_{secret_text}").replace(ID, "abc123déf45"),
                "non-ASCII",
            ),
        ];
        for (text, what) in cases {
            assert!(parse(&text).is_err(), "{what}: {text:?} parsed");
        }
    }

    #[test]
    fn secret_comparison() {
        let secret = sample_secret();
        let stored = hash_secret(&secret);
        assert!(secret_matches(&stored, &secret));

        let mut other = secret;
        other[31] ^= 1;
        assert!(!secret_matches(&stored, &other));
        // A stored value of another length (impossible under the table's CHECK) never matches.
        assert!(!secret_matches(&stored[..31], &secret));
        assert!(!secret_matches(&[], &secret));
        // Comparing against the secret itself rather than its hash fails: only hashes are stored.
        assert!(!secret_matches(&secret, &secret));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let secret = sample_secret();
        let text = format_key(ID, &secret);
        let presented = PresentedKey {
            key_id: ID.to_owned(),
            text: text.clone(),
        };
        let secret_text = &text[PREFIX.len() + KEY_ID_LEN + 1..];
        for debug in [
            format!("{presented:?}"),
            format!("{:?}", parse(&text).unwrap()),
        ] {
            assert!(debug.contains(ID), "{debug}");
            assert!(!debug.contains(secret_text), "{debug}");
            assert!(!debug.contains(&format!("{:?}", &secret[..4])), "{debug}");
        }
        assert_eq!(presented.expose_secret(), text);
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("ci loader").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("   ").is_err());
        assert!(validate_name(&"x".repeat(200)).is_ok());
        assert!(validate_name(&"x".repeat(201)).is_err());
    }
}
