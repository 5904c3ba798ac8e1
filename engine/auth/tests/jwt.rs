//! JWT bearer tokens against the fake identity provider (feature `fake`).

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use lily_auth::fake::{self, FakeIdp};
use lily_auth::{AuthError, JwtVerifier, Method, OidcConfig, Principal, Scope};
use serde_json::{json, Value};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn refused(result: Result<Principal, AuthError>, what: &str) -> String {
    match result {
        Err(err @ AuthError::Unauthenticated { .. }) => {
            assert_eq!(err.http_status(), 401, "{what}");
            assert_eq!(err.public_message(), "invalid credentials", "{what}");
            err.reason().to_owned()
        }
        other => panic!("{what}: expected Unauthenticated, got {other:?}"),
    }
}

async fn idp_and_verifier() -> (FakeIdp, JwtVerifier) {
    let idp = FakeIdp::start().await;
    let verifier = JwtVerifier::new(idp.config()).unwrap();
    (idp, verifier)
}

#[tokio::test]
async fn valid_token_gives_subject_tenant_and_scopes() {
    let (idp, verifier) = idp_and_verifier().await;
    let claims = idp.claims("alice@example.com", "acme", &["assets:write", "openid"]);
    let principal = verifier.verify(&idp.token(&claims)).await.unwrap();
    assert_eq!(
        principal,
        Principal {
            subject: "jwt:alice@example.com".to_owned(),
            tenant_id: "acme".to_owned(),
            scopes: BTreeSet::from([Scope::AssetsWrite]),
            via: Method::Jwt,
        }
    );
    assert_eq!(principal.authorize("acme", Scope::AssetsWrite), Ok(()));
    assert_eq!(
        principal
            .require(Scope::LineageWrite)
            .unwrap_err()
            .http_status(),
        403
    );
    assert_eq!(
        principal
            .require_tenant("globex")
            .unwrap_err()
            .http_status(),
        403
    );

    // The keys were found by discovery, once, and are reused.
    verifier.verify(&idp.token(&claims)).await.unwrap();
    assert_eq!(idp.discovery_requests(), 1);
    assert_eq!(idp.jwks_requests(), 1);
}

#[tokio::test]
async fn scopes_from_the_scp_array_or_the_scope_string() {
    let (idp, verifier) = idp_and_verifier().await;
    let mut claims = idp.claims("svc", "acme", &["lineage:write", "admin"]);
    let principal = verifier.verify(&idp.token(&claims)).await.unwrap();
    assert_eq!(
        principal.scopes,
        BTreeSet::from([Scope::LineageWrite, Scope::Admin])
    );

    claims.as_object_mut().unwrap().remove("scp");
    claims["scope"] = json!("openid incidents:write load:write");
    let principal = verifier.verify(&idp.token(&claims)).await.unwrap();
    assert_eq!(
        principal.scopes,
        BTreeSet::from([Scope::IncidentsWrite, Scope::LoadWrite])
    );

    claims.as_object_mut().unwrap().remove("scope");
    let principal = verifier.verify(&idp.token(&claims)).await.unwrap();
    assert!(principal.scopes.is_empty());

    // A custom scope claim, as a string.
    let custom = JwtVerifier::new(OidcConfig {
        scope_claim: "permissions".to_owned(),
        ..idp.config()
    })
    .unwrap();
    claims["permissions"] = json!("assets:read");
    let principal = custom.verify(&idp.token(&claims)).await.unwrap();
    assert_eq!(principal.scopes, BTreeSet::from([Scope::AssetsRead]));
}

#[tokio::test]
async fn time_claims_are_honoured_with_leeway() {
    let (idp, verifier) = idp_and_verifier().await;
    let base = idp.claims("alice", "acme", &[]);
    let with = |claim: &str, value: Value| {
        let mut claims = base.clone();
        claims[claim] = value;
        idp.token(&claims)
    };
    let t = now();

    refused(
        verifier.verify(&with("exp", json!(t - 3600))).await,
        "expired",
    );
    refused(
        verifier.verify(&with("exp", json!(t - 61))).await,
        "expired past the leeway",
    );
    verifier.verify(&with("exp", json!(t - 30))).await.unwrap();
    refused(
        verifier.verify(&with("nbf", json!(t + 3600))).await,
        "not yet valid",
    );
    verifier.verify(&with("nbf", json!(t + 30))).await.unwrap();
    refused(
        verifier.verify(&with("iat", json!(t + 3600))).await,
        "issued in the future",
    );
    refused(
        verifier.verify(&with("exp", json!("tomorrow"))).await,
        "exp not a number",
    );

    let mut no_exp = base.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    refused(verifier.verify(&idp.token(&no_exp)).await, "no exp");

    let strict = JwtVerifier::new(OidcConfig {
        leeway_secs: 0,
        ..idp.config()
    })
    .unwrap();
    refused(
        strict.verify(&with("exp", json!(t - 30))).await,
        "expired, no leeway",
    );
}

#[tokio::test]
async fn audience_and_issuer_must_match() {
    let (idp, verifier) = idp_and_verifier().await;
    let base = idp.claims("alice", "acme", &["assets:read"]);
    let with = |claim: &str, value: Value| {
        let mut claims = base.clone();
        claims[claim] = value;
        idp.token(&claims)
    };

    refused(
        verifier.verify(&with("aud", json!("api://other"))).await,
        "wrong audience",
    );
    refused(
        verifier.verify(&with("aud", json!(["api://other"]))).await,
        "wrong audience list",
    );
    verifier
        .verify(&with("aud", json!(["api://other", fake::AUDIENCE])))
        .await
        .unwrap();
    let mut no_aud = base.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    refused(verifier.verify(&idp.token(&no_aud)).await, "no audience");

    refused(
        verifier
            .verify(&with(
                "iss",
                json!("https://evil.example.com/oauth2/default"),
            ))
            .await,
        "wrong issuer",
    );
    let trailing_slash = format!("{}/", idp.issuer());
    refused(
        verifier.verify(&with("iss", json!(trailing_slash))).await,
        "issuer not exact",
    );
    refused(
        verifier.verify(&with("iss", json!([idp.issuer()]))).await,
        "issuer as array",
    );
}

#[tokio::test]
async fn rotation_reloads_the_keys_and_drops_the_old_one() {
    let (idp, verifier) = idp_and_verifier().await;
    let claims = idp.claims("alice", "acme", &["assets:write"]);
    let old = idp.key();
    verifier.verify(&old.sign(&claims)).await.unwrap();
    assert_eq!(idp.jwks_requests(), 1);

    let new = idp.rotate().await;
    assert_ne!(new.kid(), old.kid());
    // The new kid is unknown to the verifier: it reloads and accepts at once.
    verifier.verify(&new.sign(&claims)).await.unwrap();
    assert_eq!(idp.jwks_requests(), 2);
    verifier.verify(&idp.token(&claims)).await.unwrap();
    assert_eq!(idp.jwks_requests(), 2, "the new key is cached");

    // The withdrawn key no longer verifies, under its own kid or the new one.
    let reason = refused(verifier.verify(&old.sign(&claims)).await, "old key");
    assert!(reason.contains(old.kid()), "{reason}");
    refused(
        verifier
            .verify(&old.sign_with_kid(&claims, Some(new.kid())))
            .await,
        "old key under the new kid",
    );
    // Discovery happened once, before the first load only.
    assert_eq!(idp.discovery_requests(), 1);
}

#[tokio::test]
async fn unknown_kid_reloads_are_rate_limited() {
    let idp = FakeIdp::start().await;
    let verifier = JwtVerifier::new(OidcConfig {
        jwks_reload_min_interval_secs: 30,
        ..idp.config()
    })
    .unwrap();
    let claims = idp.claims("alice", "acme", &[]);
    verifier.verify(&idp.token(&claims)).await.unwrap();
    assert_eq!(idp.jwks_requests(), 1);

    let key = idp.key();
    for i in 0..5 {
        let forged = key.sign_with_kid(&claims, Some(&format!("made-up-{i}")));
        refused(verifier.verify(&forged).await, "made-up kid");
    }
    assert_eq!(idp.jwks_requests(), 1, "no reload within the interval");

    // With no limit, every unknown kid reloads.
    let eager = JwtVerifier::new(idp.config()).unwrap();
    eager.verify(&idp.token(&claims)).await.unwrap();
    let before = idp.jwks_requests();
    for i in 0..3 {
        let forged = key.sign_with_kid(&claims, Some(&format!("made-up-{i}")));
        refused(eager.verify(&forged).await, "made-up kid");
    }
    assert_eq!(idp.jwks_requests(), before + 3);
}

#[tokio::test]
async fn other_algorithms_and_forgeries_are_refused() {
    let (idp, verifier) = idp_and_verifier().await;
    let claims = idp.claims("mallory", "acme", &["admin"]);
    let key = idp.key();
    // Load the keys first, so refusals below are not about an empty key set.
    verifier.verify(&key.sign(&claims)).await.unwrap();

    refused(
        verifier.verify(&fake::unsigned_token(&claims)).await,
        "alg none",
    );
    refused(
        verifier
            .verify(&fake::hs256_token(
                &claims,
                key.public_key_der(),
                Some(key.kid()),
            ))
            .await,
        "HS256 keyed with the RSA public key",
    );
    let reason = refused(
        verifier
            .verify(&fake::hs256_token(
                &claims,
                b"shared secret",
                Some(key.kid()),
            ))
            .await,
        "HS256",
    );
    assert!(reason.contains("HS256"), "{reason}");
    refused(
        verifier.verify(&key.sign_with_kid(&claims, None)).await,
        "no kid",
    );

    // A valid token whose payload was swapped for another tenant's.
    let token = key.sign(&claims);
    let parts: Vec<&str> = token.split('.').collect();
    let mut other = claims.clone();
    other["tenant_id"] = json!("globex");
    let swapped = URL_SAFE_NO_PAD.encode(other.to_string());
    let tampered = format!("{}.{swapped}.{}", parts[0], parts[2]);
    refused(verifier.verify(&tampered).await, "tampered payload");

    for garbage in ["", "abc", "a.b.c", "lily_abc", &"x".repeat(20_000)] {
        refused(verifier.verify(garbage).await, "garbage");
    }
}

#[tokio::test]
async fn tenant_and_client_claims() {
    let (idp, verifier) = idp_and_verifier().await;
    let mut claims = idp.claims("alice", "acme", &["assets:write"]);
    claims.as_object_mut().unwrap().remove("tenant_id");
    let reason = refused(
        verifier.verify(&idp.token(&claims)).await,
        "no tenant claim",
    );
    assert!(reason.contains("tenant_id"), "{reason}");
    claims["tenant_id"] = json!("ACME; DROP TABLE");
    refused(
        verifier.verify(&idp.token(&claims)).await,
        "not a tenant id",
    );

    // A custom tenant claim.
    let custom = JwtVerifier::new(OidcConfig {
        tenant_claim: "lily_tenant".to_owned(),
        ..idp.config()
    })
    .unwrap();
    claims["lily_tenant"] = json!("globex");
    assert_eq!(
        custom.verify(&idp.token(&claims)).await.unwrap().tenant_id,
        "globex"
    );

    // Restricted clients.
    let restricted = |ids: &[&str]| {
        JwtVerifier::new(OidcConfig {
            allowed_client_ids: Some(ids.iter().map(|s| s.to_string()).collect()),
            ..idp.config()
        })
        .unwrap()
    };
    let token = idp.token(&idp.claims("alice", "acme", &[]));
    restricted(&[fake::CLIENT_ID]).verify(&token).await.unwrap();
    refused(
        restricted(&["0oaother"]).verify(&token).await,
        "client not allowed",
    );
}

#[tokio::test]
async fn unreachable_issuer_is_unavailable_until_keys_are_held() {
    let (idp, verifier) = idp_and_verifier().await;
    let token = idp.token(&idp.claims("alice", "acme", &[]));

    idp.set_down(true);
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(matches!(err, AuthError::Unavailable { .. }), "{err:?}");
    assert_eq!(err.http_status(), 503);
    assert!(err.is_retryable());

    idp.set_down(false);
    verifier.verify(&token).await.unwrap();

    // Once loaded, known keys keep working while the issuer is down; a new kid cannot be
    // fetched, which is the issuer's outage (503), not a bad token.
    idp.set_down(true);
    verifier.verify(&token).await.unwrap();
    let forged = idp
        .key()
        .sign_with_kid(&idp.claims("alice", "acme", &[]), Some("rotated-away"));
    assert_eq!(
        verifier.verify(&forged).await.unwrap_err().http_status(),
        503
    );
}

#[tokio::test]
async fn explicit_jwks_url_skips_discovery_and_discovery_checks_the_issuer() {
    let idp = FakeIdp::start().await;
    let token = idp.token(&idp.claims("alice", "acme", &[]));
    let direct = JwtVerifier::new(OidcConfig {
        jwks_url: Some(idp.jwks_url()),
        ..idp.config()
    })
    .unwrap();
    direct.verify(&token).await.unwrap();
    assert_eq!(idp.discovery_requests(), 0);

    // Configured with a trailing slash, the issuer differs from the one the discovery document
    // names: refused as a misconfiguration, not trusted.
    let mismatched = JwtVerifier::new(OidcConfig {
        issuer: format!("{}/", idp.issuer()),
        ..idp.config()
    })
    .unwrap();
    let err = mismatched.verify(&token).await.unwrap_err();
    assert!(matches!(err, AuthError::Unavailable { .. }), "{err:?}");
    assert!(err.reason().contains("names issuer"), "{err:?}");
}

#[tokio::test]
async fn concurrent_requests_after_rotation_fetch_once() {
    let idp = FakeIdp::start().await;
    let verifier = std::sync::Arc::new(JwtVerifier::new(idp.config()).unwrap());
    let claims = idp.claims("alice", "acme", &[]);
    verifier.verify(&idp.token(&claims)).await.unwrap();
    idp.rotate().await;
    let token = idp.token(&claims);
    let before = idp.jwks_requests();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let verifier = verifier.clone();
            let token = token.clone();
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        idp.jwks_requests(),
        before + 1,
        "one reload serves every waiting request"
    );
}
