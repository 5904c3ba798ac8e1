//! A fake OIDC identity provider for tests, shaped like an Okta custom authorization server.
//!
//! It listens on 127.0.0.1 (a free port) and serves, under the issuer
//! `http://127.0.0.1:<port>/oauth2/default`:
//! - `/.well-known/openid-configuration`: the discovery document (`issuer`, `jwks_uri`, ...);
//! - `/v1/keys`: the JWKS, one RSA signing key (`kty`, `kid`, `use: sig`, `alg: RS256`, `n`, `e`).
//!
//! It mints RS256 tokens with any claims, and (for negative tests) tokens with a forged `kid`,
//! `alg: none` or HS256. [`FakeIdp::rotate`] replaces the signing key; the old one disappears from
//! the JWKS, as when an issuer withdraws a key. Dropping the [`FakeIdp`] stops the server.
//!
//! ```no_run
//! # async fn demo() {
//! use lily_auth::fake::FakeIdp;
//! let idp = FakeIdp::start().await;
//! let verifier = lily_auth::JwtVerifier::new(idp.config()).unwrap();
//! let token = idp.token(&idp.claims("alice", "acme", &["assets:write"]));
//! let principal = verifier.verify(&token).await.unwrap();
//! assert_eq!(principal.tenant_id, "acme");
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{EncodeRsaPrivateKey as _, EncodeRsaPublicKey as _};
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Value};

use crate::OidcConfig;

/// The audience the fake's tokens are for ([`FakeIdp::claims`], [`FakeIdp::config`]).
pub const AUDIENCE: &str = "api://lily";
/// The client id (`cid`) of the fake's tokens.
pub const CLIENT_ID: &str = "0oafakeclient";
/// The path of the authorization server, as Okta's default custom authorization server.
const SERVER_PATH: &str = "/oauth2/default";
/// The smallest modulus ring (behind jsonwebtoken) accepts for RS256.
const RSA_BITS: usize = 2048;

/// An RSA signing key of the fake. Cheap to clone; `Debug` shows only the kid.
#[derive(Clone)]
pub struct FakeKey(Arc<KeyMaterial>);

struct KeyMaterial {
    kid: String,
    encoding: EncodingKey,
    /// base64url of the modulus and exponent, as in a JWK.
    n: String,
    e: String,
    public_pkcs1_der: Vec<u8>,
}

impl fmt::Debug for FakeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeKey")
            .field("kid", &self.0.kid)
            .finish_non_exhaustive()
    }
}

impl FakeKey {
    /// Generates a 2048-bit key (on a blocking thread: it takes a moment).
    async fn generate(kid: String) -> FakeKey {
        tokio::task::spawn_blocking(move || {
            let private =
                rsa::PrivateKey::new(&mut OsEntropy, RSA_BITS).expect("generating an RSA key");
            let private_der = private
                .to_pkcs1_der()
                .expect("encoding the RSA private key");
            let public = private.to_public_key();
            let public_pkcs1_der = public
                .to_pkcs1_der()
                .expect("encoding the RSA public key")
                .into_vec();
            FakeKey(Arc::new(KeyMaterial {
                kid,
                encoding: EncodingKey::from_rsa_der(private_der.as_bytes()),
                n: URL_SAFE_NO_PAD.encode(public.n_bytes()),
                e: URL_SAFE_NO_PAD.encode(public.e_bytes()),
                public_pkcs1_der,
            }))
        })
        .await
        .expect("the key generation task panicked")
    }

    pub fn kid(&self) -> &str {
        &self.0.kid
    }

    /// The public key as PKCS#1 DER: what a confused verifier would use as an HMAC secret.
    pub fn public_key_der(&self) -> &[u8] {
        &self.0.public_pkcs1_der
    }

    /// An RS256 token with this key's kid.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_kid(claims, Some(&self.0.kid))
    }

    /// An RS256 token signed by this key, with any kid in its header (or none).
    pub fn sign_with_kid(&self, claims: &Value, kid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.0.encoding).expect("signing a token")
    }

    fn jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "alg": "RS256",
            "kid": self.0.kid,
            "use": "sig",
            "e": self.0.e,
            "n": self.0.n,
        })
    }
}

/// A token with `alg: none` and an empty signature.
pub fn unsigned_token(claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT"});
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A token MACed with HS256 under `secret`, with `kid` in its header.
pub fn hs256_token(claims: &Value, secret: &[u8], kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret))
        .expect("signing an HS256 token")
}

/// The OS random number generator in the `rand_core` version `rsa` uses (the workspace's `rand`
/// is one version behind).
struct OsEntropy;

impl rsa::rand_core::TryRng for OsEntropy {
    type Error = rand::rand_core::OsError;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        rand::TryRngCore::try_next_u32(&mut rand::rngs::OsRng)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        rand::TryRngCore::try_next_u64(&mut rand::rngs::OsRng)
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, dst)
    }
}

impl rsa::rand_core::TryCryptoRng for OsEntropy {}

struct Shared {
    issuer: String,
    key: Mutex<FakeKey>,
    down: AtomicBool,
    discovery_requests: AtomicUsize,
    jwks_requests: AtomicUsize,
}

impl Shared {
    fn key(&self) -> FakeKey {
        self.key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The running fake identity provider. See the module docs.
pub struct FakeIdp {
    shared: Arc<Shared>,
    rotations: AtomicUsize,
    server: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for FakeIdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeIdp")
            .field("issuer", &self.shared.issuer)
            .field("key", &self.shared.key())
            .finish_non_exhaustive()
    }
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeIdp {
    /// Starts the server with a fresh key. Panics if it cannot bind 127.0.0.1 (a test fixture).
    pub async fn start() -> FakeIdp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0 for the fake IdP");
        let addr = listener.local_addr().expect("the fake IdP's address");
        let issuer = format!("http://{addr}{SERVER_PATH}");
        let shared = Arc::new(Shared {
            key: Mutex::new(FakeKey::generate("fake-key-1".to_owned()).await),
            issuer,
            down: AtomicBool::new(false),
            discovery_requests: AtomicUsize::new(0),
            jwks_requests: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route(
                &format!("{SERVER_PATH}/.well-known/openid-configuration"),
                get(discovery),
            )
            .route(&format!("{SERVER_PATH}/v1/keys"), get(jwks))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "fake IdP server failed");
            }
        });
        FakeIdp {
            shared,
            rotations: AtomicUsize::new(1),
            server,
        }
    }

    /// `http://127.0.0.1:<port>/oauth2/default`.
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// The JWKS address (as the discovery document says).
    pub fn jwks_url(&self) -> String {
        format!("{}/v1/keys", self.shared.issuer)
    }

    /// A verifier configuration for this issuer and [`AUDIENCE`], finding the JWKS by
    /// discovery, and reloading on every unknown kid (no rate limit), as tests want.
    pub fn config(&self) -> OidcConfig {
        OidcConfig {
            jwks_reload_min_interval_secs: 0,
            ..OidcConfig::new(self.issuer(), AUDIENCE)
        }
    }

    /// The current signing key.
    pub fn key(&self) -> FakeKey {
        self.shared.key()
    }

    /// Replaces the signing key with a new one (new kid) and returns it. The old key is no
    /// longer in the JWKS.
    pub async fn rotate(&self) -> FakeKey {
        let n = self.rotations.fetch_add(1, Ordering::SeqCst) + 1;
        let key = FakeKey::generate(format!("fake-key-{n}")).await;
        *self
            .shared
            .key
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = key.clone();
        key
    }

    /// While down, both endpoints answer 503.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// How many times the JWKS was requested.
    pub fn jwks_requests(&self) -> usize {
        self.shared.jwks_requests.load(Ordering::SeqCst)
    }

    /// How many times the discovery document was requested.
    pub fn discovery_requests(&self) -> usize {
        self.shared.discovery_requests.load(Ordering::SeqCst)
    }

    /// Valid access-token claims as Okta issues them: `iss`, `aud`, `sub`, `cid`, `iat`, `nbf`,
    /// `exp` (in 10 minutes), `tenant_id` and `scp`. Edit the result to make a bad token.
    pub fn claims(&self, sub: &str, tenant_id: &str, scopes: &[&str]) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_secs();
        json!({
            "ver": 1,
            "jti": format!("AT.fake.{now}"),
            "iss": self.shared.issuer,
            "aud": AUDIENCE,
            "sub": sub,
            "cid": CLIENT_ID,
            "uid": "00ufakeuser",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "tenant_id": tenant_id,
            "scp": scopes,
        })
    }

    /// An RS256 token over `claims` signed by the current key.
    pub fn token(&self, claims: &Value) -> String {
        self.key().sign(claims)
    }
}

fn json_response(body: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Response {
    shared.discovery_requests.fetch_add(1, Ordering::SeqCst);
    if shared.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let issuer = &shared.issuer;
    json_response(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/v1/authorize"),
        "token_endpoint": format!("{issuer}/v1/token"),
        "jwks_uri": format!("{issuer}/v1/keys"),
        "response_types_supported": ["code", "token", "id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "assets:write", "assets:read", "admin"],
    }))
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.jwks_requests.fetch_add(1, Ordering::SeqCst);
    if shared.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    json_response(json!({ "keys": [shared.key().jwk()] }))
}
