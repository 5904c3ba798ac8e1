//! API keys against a real PostgreSQL with the metastore schema.

use std::collections::BTreeSet;
use std::time::Duration;

use lily_auth::{ApiKeys, AuthError, Authenticator, KeyAdminError, Method, Scope};
use lily_pgharness::PgCluster;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// A migrated metastore with tenants `acme` and `globex`.
async fn metastore() -> (PgCluster, Client) {
    let pg = PgCluster::start().await.unwrap();
    pg.create_database("lily").await.unwrap();
    let client = pg.connect("lily").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ('acme', 'Acme'), ('globex', 'Globex')",
        )
        .await
        .unwrap();
    (pg, client)
}

fn assert_unauthenticated(result: Result<lily_auth::Principal, AuthError>, what: &str) -> String {
    match result {
        Err(err @ AuthError::Unauthenticated { .. }) => {
            assert_eq!(err.http_status(), 401, "{what}");
            assert_eq!(err.public_message(), "invalid credentials", "{what}");
            err.reason().to_owned()
        }
        other => panic!("{what}: expected Unauthenticated, got {other:?}"),
    }
}

/// The same key id with another (well-formed) secret.
fn with_other_secret(presented: &str) -> String {
    let (head, secret) = presented.split_at(presented.len() - 43);
    let first = if secret.starts_with('A') { "B" } else { "A" };
    // Change the first character only: the last one also carries padding bits.
    format!("{head}{first}{}", &secret[1..])
}

#[tokio::test]
async fn created_key_verifies_with_its_tenant_and_scopes() {
    let (_pg, client) = metastore().await;
    let keys = ApiKeys::new();
    let (presented, info) = keys
        .create(
            &client,
            "acme",
            "ci loader",
            ["assets:write", "lineage:write"],
        )
        .await
        .unwrap();

    let text = presented.expose_secret();
    assert!(
        text.starts_with(&format!("lily_{}_", info.key_id)),
        "{presented:?}"
    );
    assert_eq!(text.len(), "lily_".len() + 12 + 1 + 43);
    assert_eq!(presented.key_id(), info.key_id);
    assert!(
        !format!("{presented:?}").contains(&text[18..]),
        "Debug shows the secret"
    );
    assert_eq!(info.tenant_id, "acme");
    assert_eq!(info.name, "ci loader");
    assert_eq!(
        info.scopes,
        BTreeSet::from([Scope::AssetsWrite, Scope::LineageWrite])
    );
    assert_eq!(info.revoked_at, None);

    let principal = keys.verify(&client, text).await.unwrap();
    assert_eq!(principal.subject, format!("key:{}", info.key_id));
    assert_eq!(principal.tenant_id, "acme");
    assert_eq!(principal.scopes, info.scopes);
    assert_eq!(principal.via, Method::ApiKey);
    // Again, now from the cache, and without a cache.
    assert_eq!(keys.verify(&client, text).await.unwrap(), principal);
    assert_eq!(
        ApiKeys::uncached().verify(&client, text).await.unwrap(),
        principal
    );

    // Only the SHA-256 of the secret is stored; the secret appears nowhere in the row.
    let secret = &text[18..];
    let row = client
        .query_one(
            "SELECT secret_sha256, k::text AS whole FROM lily.api_keys k WHERE key_id = $1",
            &[&info.key_id],
        )
        .await
        .unwrap();
    let stored: Vec<u8> = row.get("secret_sha256");
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(secret)
        .unwrap();
    assert_eq!(stored, Sha256::digest(&raw).to_vec());
    let whole: String = row.get("whole");
    assert!(!whole.contains(secret));

    let listed = keys.list(&client, "acme").await.unwrap();
    assert_eq!(listed, vec![info]);
    assert!(keys.list(&client, "globex").await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_keys_are_refused_alike() {
    let (_pg, client) = metastore().await;
    let keys = ApiKeys::new();
    let (presented, info) = keys
        .create(&client, "acme", "k", [Scope::AssetsRead])
        .await
        .unwrap();
    let good = presented.expose_secret();
    let (revoked, revoked_info) = keys
        .create(&client, "acme", "old", [Scope::AssetsRead])
        .await
        .unwrap();
    assert!(keys
        .revoke(&client, "acme", &revoked_info.key_id)
        .await
        .unwrap());

    let wrong_secret = with_other_secret(good);
    let unknown_id = good.replace(&info.key_id, "zzzzzzzzzzzz");
    let cases = [
        (wrong_secret.as_str(), "wrong secret"),
        (unknown_id.as_str(), "unknown key id"),
        (revoked.expose_secret(), "revoked"),
        ("lily_short", "malformed"),
        (&good[..good.len() - 1], "truncated"),
    ];
    let mut reasons = Vec::new();
    for (key, what) in cases {
        // Twice: a refusal must not be remembered as anything else.
        for _ in 0..2 {
            reasons.push(assert_unauthenticated(
                keys.verify(&client, key).await,
                what,
            ));
        }
    }
    assert!(reasons[0].contains("wrong secret"), "{reasons:?}");
    assert!(reasons[2].contains("unknown"), "{reasons:?}");
    assert!(reasons[4].contains("revoked"), "{reasons:?}");
    assert!(reasons[6].contains("malformed"), "{reasons:?}");
    // The right key still works after all that.
    assert!(keys.verify(&client, good).await.is_ok());
}

#[tokio::test]
async fn revocation_applies_at_once_here_and_within_the_ttl_elsewhere() {
    let (_pg, client) = metastore().await;
    let here = ApiKeys::new();
    // Another process, with a short cache TTL.
    let elsewhere = ApiKeys::with_cache(Duration::from_secs(2), 100);
    let (presented, info) = here
        .create(&client, "acme", "k", ["assets:write"])
        .await
        .unwrap();
    let key = presented.expose_secret();
    here.verify(&client, key).await.unwrap();
    elsewhere.verify(&client, key).await.unwrap();

    // Another tenant cannot revoke it.
    assert!(!here.revoke(&client, "globex", &info.key_id).await.unwrap());
    here.verify(&client, key).await.unwrap();

    assert!(here.revoke(&client, "acme", &info.key_id).await.unwrap());
    assert!(
        !here.revoke(&client, "acme", &info.key_id).await.unwrap(),
        "already revoked"
    );
    assert_unauthenticated(here.verify(&client, key).await, "revoked, same instance");
    assert_unauthenticated(
        ApiKeys::uncached().verify(&client, key).await,
        "revoked, uncached",
    );
    // The other process still has it cached, for at most its TTL.
    elsewhere.verify(&client, key).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_unauthenticated(
        elsewhere.verify(&client, key).await,
        "revoked, after the TTL",
    );

    let listed = here.list(&client, "acme").await.unwrap();
    assert!(listed[0].revoked_at.is_some());
}

#[tokio::test]
async fn scopes_and_tenants_are_enforced() {
    let (_pg, client) = metastore().await;
    let keys = ApiKeys::new();
    let (writer, _) = keys
        .create(&client, "acme", "writer", ["assets:write"])
        .await
        .unwrap();
    let (admin, _) = keys
        .create(&client, "acme", "admin", ["admin"])
        .await
        .unwrap();
    let writer = keys.verify(&client, writer.expose_secret()).await.unwrap();
    let admin = keys.verify(&client, admin.expose_secret()).await.unwrap();

    assert_eq!(writer.authorize("acme", Scope::AssetsWrite), Ok(()));
    let missing = writer.require(Scope::IncidentsWrite).unwrap_err();
    assert!(matches!(missing, AuthError::Forbidden { .. }));
    assert_eq!(missing.http_status(), 403);
    assert_eq!(missing.public_message(), "forbidden");

    let cross = writer.require_tenant("globex").unwrap_err();
    assert_eq!(cross.http_status(), 403);
    assert!(writer.authorize("globex", Scope::AssetsWrite).is_err());

    for scope in Scope::ALL {
        assert_eq!(admin.authorize("acme", scope), Ok(()), "{scope}");
        assert_eq!(
            admin.authorize("globex", scope).unwrap_err().http_status(),
            403,
            "{scope}"
        );
    }
}

#[tokio::test]
async fn create_refuses_bad_requests() {
    let (_pg, client) = metastore().await;
    let keys = ApiKeys::new();
    assert!(matches!(
        keys.create(&client, "acme", "k", ["assets:write", "assets:wirte"]).await,
        Err(KeyAdminError::UnknownScope(s)) if s == "assets:wirte"
    ));
    assert!(matches!(
        keys.create(&client, "acme", "k", Vec::<String>::new())
            .await,
        Err(KeyAdminError::NoScopes)
    ));
    assert!(matches!(
        keys.create(&client, "acme", " ", ["admin"]).await,
        Err(KeyAdminError::InvalidName(_))
    ));
    assert!(matches!(
        keys.create(&client, "initech", "k", ["admin"]).await,
        Err(KeyAdminError::UnknownTenant(t)) if t == "initech"
    ));
    let count: i64 = client
        .query_one("SELECT count(*) FROM lily.api_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn database_down_is_unavailable() {
    let (pg, client) = metastore().await;
    let keys = ApiKeys::uncached();
    let (presented, _) = keys.create(&client, "acme", "k", ["admin"]).await.unwrap();
    pg.stop().await.unwrap();
    let err = keys
        .verify(&client, presented.expose_secret())
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Unavailable { .. }), "{err:?}");
    assert_eq!(err.http_status(), 503);
    assert!(err.is_retryable());
    // A malformed key is refused without asking the database.
    let err = keys.verify(&client, "lily_nope").await.unwrap_err();
    assert_eq!(err.http_status(), 401);
}

#[tokio::test]
async fn authenticator_reads_api_keys_from_either_header() {
    let (_pg, client) = metastore().await;
    let auth = Authenticator::new(ApiKeys::new(), None);
    let (presented, info) = auth
        .api_keys()
        .create(&client, "acme", "k", ["assets:read"])
        .await
        .unwrap();
    let key = presented.expose_secret();
    let bearer = format!("Bearer {key}");

    let via_bearer = auth
        .authenticate(Some(&bearer), None, &client)
        .await
        .unwrap();
    assert_eq!(via_bearer.subject, format!("key:{}", info.key_id));
    let via_header = auth.authenticate(None, Some(key), &client).await.unwrap();
    assert_eq!(via_header, via_bearer);

    let wrong = format!("Bearer {}", with_other_secret(key));
    let basic = "Basic YWxhZGRpbjpvcGVuc2VzYW1l".to_owned();
    let jwt_like = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln".to_owned();
    let cases: [(Option<&str>, Option<&str>, &str); 6] = [
        (None, None, "no credentials"),
        (Some(&bearer), Some(key), "both headers"),
        (Some(&wrong), None, "wrong secret"),
        (Some(&basic), None, "basic auth"),
        (Some(&jwt_like), None, "JWT without an issuer configured"),
        (
            None,
            Some("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
            "JWT in x-api-key",
        ),
    ];
    for (authorization, x_api_key, what) in cases {
        assert_unauthenticated(
            auth.authenticate(authorization, x_api_key, &client).await,
            what,
        );
    }
    // Revoking through the authenticator's own store applies to it at once.
    assert!(auth
        .api_keys()
        .revoke(&client, "acme", &info.key_id)
        .await
        .unwrap());
    assert_unauthenticated(
        auth.authenticate(Some(&bearer), None, &client).await,
        "revoked",
    );
}
