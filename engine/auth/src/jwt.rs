//! OIDC access tokens: RS256 JWTs from an Okta-compatible authorization server, checked against
//! the issuer's published signing keys (JWKS).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::principal::is_valid_tenant_id;
use crate::scope::parse_granted;
use crate::{AuthError, Method, Principal, Scope};

/// Tokens longer than this are refused unparsed; real access tokens are 1–2 KiB.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Discovery documents and key sets larger than this are refused.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// How to check tokens of one issuer. Field defaults suit an Okta custom authorization server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer, compared exactly (no normalisation) with the token's `iss`; for Okta,
    /// `https://<org>.okta.com/oauth2/<authorization server id>`. Must be https, or http on a
    /// loopback address.
    pub issuer: String,
    /// The audience this API expects in `aud` (the token's `aud` may be this string or an array
    /// containing it).
    pub audience: String,
    /// Where to fetch the signing keys. Default: the `jwks_uri` of the issuer's discovery
    /// document, `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The claim naming the one tenant a token acts for.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// The claim holding the granted scopes, an array of strings (Okta's `scp`). A
    /// space-separated `scope` string is accepted as well.
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// When set, only tokens whose `cid` (Okta) or `client_id` (RFC 9068) is listed are
    /// accepted.
    #[serde(default)]
    pub allowed_client_ids: Option<Vec<String>>,
    /// A token with an unknown `kid` reloads the key set (the issuer rotated its keys) at most
    /// once per this many seconds, so that made-up `kid`s cannot flood the issuer; a failed
    /// load is retried no sooner either. 0 reloads every time (tests).
    #[serde(default = "default_jwks_reload_min_interval_secs")]
    pub jwks_reload_min_interval_secs: u64,
    /// The key set is reloaded when older than this many seconds, so a key the issuer withdrew
    /// stops being accepted even if no token ever names a new key. If the reload fails the old
    /// set stays in use.
    #[serde(default = "default_jwks_max_age_secs")]
    pub jwks_max_age_secs: u64,
    /// Timeout of each request to the issuer, in seconds.
    #[serde(default = "default_http_timeout_secs")]
    pub http_timeout_secs: u64,
}

fn default_tenant_claim() -> String {
    "tenant_id".to_owned()
}
fn default_scope_claim() -> String {
    "scp".to_owned()
}
fn default_leeway_secs() -> u64 {
    60
}
fn default_jwks_reload_min_interval_secs() -> u64 {
    30
}
fn default_jwks_max_age_secs() -> u64 {
    3600
}
fn default_http_timeout_secs() -> u64 {
    10
}

impl OidcConfig {
    /// A configuration with every optional field at its default.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        OidcConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_url: None,
            tenant_claim: default_tenant_claim(),
            scope_claim: default_scope_claim(),
            leeway_secs: default_leeway_secs(),
            allowed_client_ids: None,
            jwks_reload_min_interval_secs: default_jwks_reload_min_interval_secs(),
            jwks_max_age_secs: default_jwks_max_age_secs(),
            http_timeout_secs: default_http_timeout_secs(),
        }
    }

    fn validate(&self) -> Result<(), OidcConfigError> {
        check_url("issuer", &self.issuer)?;
        if let Some(url) = &self.jwks_url {
            check_url("jwks_url", url)?;
        }
        for (field, value) in [
            ("audience", &self.audience),
            ("tenant_claim", &self.tenant_claim),
            ("scope_claim", &self.scope_claim),
        ] {
            if value.is_empty() {
                return Err(OidcConfigError::Invalid(format!("{field} is empty")));
            }
        }
        if self.allowed_client_ids.as_ref().is_some_and(Vec::is_empty) {
            // Almost certainly a mistake: it would refuse every token.
            return Err(OidcConfigError::Invalid(
                "allowed_client_ids is empty; leave it out to allow every client".to_owned(),
            ));
        }
        if self.jwks_max_age_secs == 0 || self.http_timeout_secs == 0 {
            return Err(OidcConfigError::Invalid(
                "jwks_max_age_secs and http_timeout_secs must be positive".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Keys are fetched over https; plain http only from this machine (tests, a local proxy),
/// since a key set fetched over a network in clear text could be replaced by anyone on the way.
fn check_url(field: &str, url: &str) -> Result<(), OidcConfigError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| OidcConfigError::Invalid(format!("{field} {url:?}: {e}")))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(OidcConfigError::Invalid(format!(
            "{field} {url:?} must be https (http only on a loopback address)"
        ))),
    }
}

/// A configuration [`JwtVerifier::new`] cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum OidcConfigError {
    #[error("invalid OIDC configuration: {0}")]
    Invalid(String),
    #[error("could not build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The signing keys of the issuer, by `kid`, and when they were fetched.
#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<DecodingKey>>,
    fetched_at: Option<Instant>,
}

/// Held while reloading, so that concurrent requests with a new `kid` cause one fetch.
#[derive(Default)]
struct Reloader {
    /// Learned from discovery on the first load, unless configured.
    jwks_url: Option<String>,
    last_attempt: Option<Instant>,
}

/// Verifies bearer JWTs of one issuer. Keys are fetched on first use, not by
/// [`JwtVerifier::new`], so the server starts while the issuer is unreachable.
pub struct JwtVerifier {
    config: OidcConfig,
    validation: Validation,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    reloader: tokio::sync::Mutex<Reloader>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.config.issuer)
            .field("audience", &self.config.audience)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    pub fn new(config: OidcConfig) -> Result<Self, OidcConfigError> {
        config.validate()?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = config.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.http_timeout_secs))
            // A redirect could lead from https to http, or elsewhere: follow none.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("lily-auth/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let reloader = Reloader {
            jwks_url: config.jwks_url.clone(),
            last_attempt: None,
        };
        Ok(JwtVerifier {
            config,
            validation,
            http,
            keys: RwLock::new(Arc::new(KeySet::default())),
            reloader: tokio::sync::Mutex::new(reloader),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// Checks a bearer token: RS256 signature by a key of the issuer's JWKS, `iss`, `aud`,
    /// `exp`, `nbf`, `iat`, the client id when restricted, and the tenant claim.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::unauthenticated("JWT too long"));
        }
        // `alg: none` does not even parse here: jsonwebtoken has no such algorithm.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::unauthenticated(format!("malformed JWT: {e}")))?;
        // Checked before any key is looked up: RS256 only, so a token cannot pick HMAC and have
        // the public key used as its secret.
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::unauthenticated(format!(
                "JWT algorithm {:?} is not allowed",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::unauthenticated("JWT has no kid"))?;
        let key = self.key(&kid).await?;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &self.validation)
            .map_err(|e| AuthError::unauthenticated(format!("JWT rejected: {e}")))?
            .claims;
        self.principal(&claims)
    }

    /// The claims checks jsonwebtoken does not do, or does more loosely than we want.
    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, AuthError> {
        let refuse = |reason: String| Err(AuthError::unauthenticated(reason));
        // jsonwebtoken also accepts an array `iss` containing the issuer; OIDC says one string.
        if claims.get("iss").and_then(Value::as_str) != Some(self.config.issuer.as_str()) {
            return refuse("JWT iss is not exactly the configured issuer".to_owned());
        }
        // jsonwebtoken skips an `nbf` it cannot read and never looks at `iat`.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let leeway = self.config.leeway_secs as f64;
        for claim in ["nbf", "iat"] {
            match claims.get(claim) {
                None => {}
                Some(value) => match value.as_f64() {
                    Some(at) if at > now + leeway => {
                        return refuse(format!("JWT {claim} is in the future"));
                    }
                    Some(_) => {}
                    None => return refuse(format!("JWT {claim} is not a number")),
                },
            }
        }
        if let Some(allowed) = &self.config.allowed_client_ids {
            let client = claims
                .get("cid")
                .or_else(|| claims.get("client_id"))
                .and_then(Value::as_str);
            match client {
                Some(client) if allowed.iter().any(|a| a == client) => {}
                Some(client) => return refuse(format!("JWT client {client:?} is not allowed")),
                None => return refuse("JWT has no cid or client_id".to_owned()),
            }
        }
        let subject = match claims.get("sub").and_then(Value::as_str) {
            Some(sub) if !sub.is_empty() => sub,
            _ => return refuse("JWT sub is missing or empty".to_owned()),
        };
        let claim = &self.config.tenant_claim;
        let tenant_id = match claims.get(claim) {
            Some(Value::String(tenant)) if is_valid_tenant_id(tenant) => tenant.clone(),
            Some(other) => return refuse(format!("JWT {claim} {other} is not a tenant id")),
            None => return refuse(format!("JWT has no {claim} claim")),
        };
        Ok(Principal {
            subject: format!("jwt:{subject}"),
            tenant_id,
            scopes: self.scopes(claims)?,
            via: Method::Jwt,
        })
    }

    /// The scopes from the configured claim (array or space-separated string) and from the
    /// standard `scope` string, merged; names this API does not know are ignored.
    fn scopes(&self, claims: &Map<String, Value>) -> Result<BTreeSet<Scope>, AuthError> {
        let mut names: Vec<&str> = Vec::new();
        let mut sources = vec![self.config.scope_claim.as_str()];
        if self.config.scope_claim != "scope" {
            sources.push("scope");
        }
        for claim in sources {
            match claims.get(claim) {
                None | Some(Value::Null) => {}
                Some(Value::String(list)) => names.extend(list.split_whitespace()),
                Some(Value::Array(items)) => {
                    for item in items {
                        match item.as_str() {
                            Some(name) => names.push(name),
                            None => {
                                return Err(AuthError::unauthenticated(format!(
                                    "JWT {claim} holds a non-string"
                                )))
                            }
                        }
                    }
                }
                Some(_) => {
                    return Err(AuthError::unauthenticated(format!(
                        "JWT {claim} is neither a string nor an array"
                    )))
                }
            }
        }
        Ok(parse_granted(names))
    }

    fn current_keys(&self) -> Arc<KeySet> {
        // A panic cannot leave the Arc half-written, so a poisoned lock is still good.
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn is_fresh(&self, set: &KeySet, now: Instant) -> bool {
        let max_age = Duration::from_secs(self.config.jwks_max_age_secs);
        set.fetched_at
            .is_some_and(|at| now.saturating_duration_since(at) < max_age)
    }

    /// The key named `kid`: from the current set when it is fresh and has it; otherwise after a
    /// reload, if one is allowed now.
    async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, AuthError> {
        let set = self.current_keys();
        if self.is_fresh(&set, Instant::now()) {
            if let Some(key) = set.keys.get(kid) {
                return Ok(key.clone());
            }
        }

        let mut reloader = self.reloader.lock().await;
        // Another request may have reloaded while this one waited for the lock.
        let set = self.current_keys();
        let now = Instant::now();
        if self.is_fresh(&set, now) {
            if let Some(key) = set.keys.get(kid) {
                return Ok(key.clone());
            }
        }
        let min_interval = Duration::from_secs(self.config.jwks_reload_min_interval_secs);
        let may_reload = reloader
            .last_attempt
            .is_none_or(|at| now.saturating_duration_since(at) >= min_interval);
        if may_reload {
            reloader.last_attempt = Some(now);
            match self.fetch_keys(&mut reloader).await {
                Ok(keys) => {
                    let fresh = Arc::new(KeySet {
                        keys,
                        fetched_at: Some(Instant::now()),
                    });
                    *self.keys.write().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
                    tracing::debug!(issuer = %self.config.issuer, kids = ?fresh.keys.keys().collect::<Vec<_>>(), "loaded JWKS");
                    return fresh.keys.get(kid).cloned().ok_or_else(|| {
                        AuthError::unauthenticated(format!("JWT kid {kid:?} is not in the JWKS"))
                    });
                }
                // A key we still hold keeps working while the issuer is unreachable.
                Err(e) if set.keys.contains_key(kid) => {
                    tracing::warn!(issuer = %self.config.issuer, error = %e, "could not refresh the JWKS; using the keys fetched before");
                }
                Err(e) => return Err(e),
            }
        }
        match set.keys.get(kid) {
            Some(key) => Ok(key.clone()),
            None if set.fetched_at.is_none() => Err(AuthError::unavailable(
                "the JWKS could not be loaded yet and the last attempt was too recent to retry",
            )),
            None => Err(AuthError::unauthenticated(format!(
                "JWT kid {kid:?} is not in the JWKS (reloaded too recently to look again)"
            ))),
        }
    }

    async fn fetch_keys(
        &self,
        reloader: &mut Reloader,
    ) -> Result<HashMap<String, Arc<DecodingKey>>, AuthError> {
        let url = match &reloader.jwks_url {
            Some(url) => url.clone(),
            None => {
                let url = self.discover_jwks_url().await?;
                reloader.jwks_url = Some(url.clone());
                url
            }
        };
        let jwks: Jwks = self.get_json(&url).await?;
        let keys: HashMap<String, Arc<DecodingKey>> = jwks
            .keys
            .into_iter()
            .filter_map(usable_key)
            .map(|(kid, key)| (kid, Arc::new(key)))
            .collect();
        if keys.is_empty() {
            return Err(AuthError::unavailable(format!(
                "the JWKS at {url} has no RS256 signing key"
            )));
        }
        Ok(keys)
    }

    async fn discover_jwks_url(&self) -> Result<String, AuthError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let discovery: Discovery = self.get_json(&url).await?;
        // OpenID Connect Discovery 1.0 §4.3: the document must name the issuer it was fetched for.
        if discovery.issuer != self.config.issuer {
            return Err(AuthError::unavailable(format!(
                "{url} names issuer {:?}, not {:?}",
                discovery.issuer, self.config.issuer
            )));
        }
        check_url("jwks_uri", &discovery.jwks_uri)
            .map_err(|e| AuthError::unavailable(format!("{url}: {e}")))?;
        Ok(discovery.jwks_uri)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, AuthError> {
        let failed = |what: String| AuthError::unavailable(format!("GET {url}: {what}"));
        let mut response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("status {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(failed(format!(
                    "body larger than {MAX_DOCUMENT_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| failed(format!("invalid JSON: {e}")))
    }
}

/// The part of a discovery document we use; other fields are ignored (they are the issuer's).
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Value>,
}

/// One JWK, with only the fields we use.
#[derive(Deserialize)]
struct RsaJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// An RS256 signing key with a kid, or None. Keys of other types or uses are skipped rather
/// than failing the whole set: an issuer may publish encryption or EC keys beside ours.
fn usable_key(jwk: Value) -> Option<(String, DecodingKey)> {
    let jwk: RsaJwk = serde_json::from_value(jwk).ok()?;
    let usable = jwk.kty == "RSA"
        && jwk.usage.as_deref().is_none_or(|u| u == "sig")
        && jwk.alg.as_deref().is_none_or(|a| a == "RS256");
    if !usable {
        return None;
    }
    let key = DecodingKey::from_rsa_components(jwk.n.as_deref()?, jwk.e.as_deref()?).ok()?;
    Some((jwk.kid?, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verifier(config: OidcConfig) -> JwtVerifier {
        JwtVerifier::new(config).unwrap()
    }

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let config: OidcConfig = serde_json::from_value(json!({
            "issuer": "https://example.okta.com/oauth2/default",
            "audience": "api://lily",
        }))
        .unwrap();
        assert_eq!(
            config,
            OidcConfig::new("https://example.okta.com/oauth2/default", "api://lily")
        );
        assert_eq!(config.tenant_claim, "tenant_id");
        assert_eq!(config.scope_claim, "scp");
        assert_eq!(config.leeway_secs, 60);
        assert_eq!(config.jwks_reload_min_interval_secs, 30);

        let typo = serde_json::from_value::<OidcConfig>(json!({
            "issuer": "https://example.okta.com/oauth2/default",
            "audience": "api://lily",
            "tenant_clam": "org",
        }));
        assert!(typo.unwrap_err().to_string().contains("tenant_clam"));
    }

    #[test]
    fn config_validation() {
        let ok = OidcConfig::new("https://example.okta.com/oauth2/default", "api://lily");
        assert!(JwtVerifier::new(ok.clone()).is_ok());
        assert!(JwtVerifier::new(OidcConfig::new("http://127.0.0.1:8080/oauth2/x", "a")).is_ok());
        assert!(JwtVerifier::new(OidcConfig::new("http://localhost:8080", "a")).is_ok());
        assert!(JwtVerifier::new(OidcConfig::new("http://[::1]:8080/x", "a")).is_ok());

        let bad = [
            OidcConfig::new("http://example.okta.com/oauth2/default", "a"),
            OidcConfig::new("not a url", "a"),
            OidcConfig::new("https://example.okta.com", ""),
            OidcConfig {
                jwks_url: Some("http://10.0.0.1/keys".to_owned()),
                ..ok.clone()
            },
            OidcConfig {
                allowed_client_ids: Some(vec![]),
                ..ok.clone()
            },
            OidcConfig {
                tenant_claim: String::new(),
                ..ok.clone()
            },
        ];
        for config in bad {
            assert!(JwtVerifier::new(config.clone()).is_err(), "{config:?}");
        }
    }

    fn base_claims() -> Value {
        json!({
            "iss": "https://example.okta.com/oauth2/default",
            "aud": "api://lily",
            "sub": "alice@example.com",
            "tenant_id": "acme",
            "cid": "0oa1",
        })
    }

    #[test]
    fn scopes_from_array_and_string() {
        let v = verifier(OidcConfig::new(
            "https://example.okta.com/oauth2/default",
            "api://lily",
        ));
        let mut c = base_claims();
        c["scp"] = json!(["assets:write", "openid", "offline_access"]);
        assert_eq!(
            v.principal(&claims(c.clone())).unwrap().scopes,
            BTreeSet::from([Scope::AssetsWrite])
        );
        c["scope"] = json!("lineage:write  admin email");
        assert_eq!(
            v.principal(&claims(c.clone())).unwrap().scopes,
            BTreeSet::from([Scope::AssetsWrite, Scope::LineageWrite, Scope::Admin])
        );
        c["scp"] = json!([1]);
        assert!(v.principal(&claims(c.clone())).is_err());
        c["scp"] = json!({"a": 1});
        assert!(v.principal(&claims(c)).is_err());

        let none = v.principal(&claims(base_claims())).unwrap();
        assert!(none.scopes.is_empty());
        assert_eq!(none.subject, "jwt:alice@example.com");
        assert_eq!(none.tenant_id, "acme");
        assert_eq!(none.via, Method::Jwt);
    }

    #[test]
    fn claim_checks() {
        let config = OidcConfig {
            allowed_client_ids: Some(vec!["0oa1".to_owned()]),
            ..OidcConfig::new("https://example.okta.com/oauth2/default", "api://lily")
        };
        let v = verifier(config);
        assert!(v.principal(&claims(base_claims())).is_ok());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();

        let cases: Vec<(&str, Value)> = vec![
            ("iss", json!(["https://example.okta.com/oauth2/default"])),
            ("iss", json!("https://example.okta.com/oauth2/default/")),
            ("iat", json!(now + 3600)),
            ("iat", json!("yesterday")),
            ("nbf", json!("yesterday")),
            ("cid", json!("0oa2")),
            ("sub", json!("")),
            ("sub", json!(7)),
            ("tenant_id", json!("Acme Corp")),
            ("tenant_id", json!(["acme"])),
            ("tenant_id", json!(null)),
        ];
        for (claim, value) in cases {
            let mut c = base_claims();
            c[claim] = value.clone();
            let err = v.principal(&claims(c)).unwrap_err();
            assert_eq!(err.http_status(), 401, "{claim}={value}: {err}");
        }
        for claim in ["cid", "tenant_id", "sub"] {
            let mut c = claims(base_claims());
            c.remove(claim);
            assert!(v.principal(&c).is_err(), "without {claim}");
        }
        // Within the leeway.
        let mut c = base_claims();
        c["iat"] = json!(now + 30);
        c["nbf"] = json!(now + 30);
        assert!(v.principal(&claims(c)).is_ok());
        // RFC 9068 spelling of the client id.
        let mut c = claims(base_claims());
        c.remove("cid");
        c.insert("client_id".to_owned(), json!("0oa1"));
        assert!(v.principal(&c).is_ok());
    }

    #[test]
    fn jwk_selection() {
        use base64::Engine as _;
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xab_u8; 256]);
        let rsa = |extra: Value| {
            let mut jwk = json!({"kty": "RSA", "kid": "k1", "n": n, "e": "AQAB"});
            for (k, v) in extra.as_object().unwrap() {
                jwk[k] = v.clone();
            }
            jwk
        };
        assert!(usable_key(rsa(json!({}))).is_some());
        assert!(usable_key(rsa(json!({"use": "sig", "alg": "RS256"}))).is_some());
        assert!(usable_key(rsa(json!({"use": "enc"}))).is_none());
        assert!(usable_key(rsa(json!({"alg": "RS512"}))).is_none());
        assert!(usable_key(rsa(json!({"kid": null}))).is_none());
        assert!(
            usable_key(json!({"kty": "EC", "kid": "e", "crv": "P-256", "x": "a", "y": "b"}))
                .is_none()
        );
        assert!(usable_key(json!("garbage")).is_none());
    }
}
