//! One entry point for the HTTP server: credentials from the request headers in, a
//! [`Principal`] or an [`AuthError`] out.

use tokio_postgres::Client;

use crate::api_key::PREFIX;
use crate::{ApiKeys, AuthError, JwtVerifier, Principal};

/// API keys always; JWTs when an issuer is configured.
#[derive(Debug, Default)]
pub struct Authenticator {
    api_keys: ApiKeys,
    jwt: Option<JwtVerifier>,
}

impl Authenticator {
    pub fn new(api_keys: ApiKeys, jwt: Option<JwtVerifier>) -> Self {
        Authenticator { api_keys, jwt }
    }

    /// The API key store, for the key administration endpoints (revocations through it apply
    /// to this authenticator at once).
    pub fn api_keys(&self) -> &ApiKeys {
        &self.api_keys
    }

    pub fn jwt(&self) -> Option<&JwtVerifier> {
        self.jwt.as_ref()
    }

    /// Authenticates a request from its `Authorization` and `x-api-key` header values.
    ///
    /// `Authorization: Bearer <token>` carries either an API key (`lily_...`) or a JWT;
    /// `x-api-key` carries only API keys. A request with both headers is refused rather than
    /// having one silently win. No credential, another scheme, or a JWT when no issuer is
    /// configured: [`AuthError::Unauthenticated`].
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        x_api_key: Option<&str>,
        pg: &Client,
    ) -> Result<Principal, AuthError> {
        self.authenticate_with(authorization, x_api_key, || async { Ok(pg) })
            .await
    }

    /// [`Authenticator::authenticate`], taking a database connection only when an API key
    /// must be looked up (well formed, not in the cache): a caller with no credential, a
    /// malformed one or a JWT never waits for, or holds, a connection.
    pub async fn authenticate_with<C, F, Fut>(
        &self,
        authorization: Option<&str>,
        x_api_key: Option<&str>,
        connect: F,
    ) -> Result<Principal, AuthError>
    where
        C: std::ops::Deref<Target = Client>,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<C, AuthError>>,
    {
        let key = match (authorization, x_api_key) {
            (Some(_), Some(_)) => {
                return Err(AuthError::unauthenticated(
                    "both Authorization and x-api-key present",
                ))
            }
            (None, None) => return Err(AuthError::unauthenticated("no credentials")),
            (None, Some(key)) => {
                let key = key.trim();
                if !key.starts_with(PREFIX) {
                    return Err(AuthError::unauthenticated(
                        "x-api-key does not hold a lily_ key",
                    ));
                }
                key
            }
            (Some(header), None) => {
                let token = bearer_token(header)?;
                if token.starts_with(PREFIX) {
                    token
                } else if let Some(jwt) = &self.jwt {
                    return jwt.verify(token).await;
                } else {
                    return Err(AuthError::unauthenticated(
                        "bearer token is not an API key and no JWT issuer is configured",
                    ));
                }
            }
        };
        if let Some(principal) = self.api_keys.cached(key)? {
            return Ok(principal);
        }
        let client = connect().await?;
        self.api_keys.verify(&client, key).await
    }
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 9110 §11.1).
fn bearer_token(header: &str) -> Result<&str, AuthError> {
    let header = header.trim();
    let (scheme, token) = header
        .split_once(' ')
        .ok_or_else(|| AuthError::unauthenticated("Authorization is not `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::unauthenticated(format!(
            "Authorization scheme {scheme:?} is not Bearer"
        )));
    }
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(AuthError::unauthenticated("malformed bearer token"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("Bearer abc").unwrap(), "abc");
        assert_eq!(bearer_token("bearer abc").unwrap(), "abc");
        assert_eq!(bearer_token("BEARER   abc  ").unwrap(), "abc");
        for bad in [
            "",
            "Bearer",
            "Bearer ",
            "Basic dXNlcjpwYXNz",
            "Bearerabc",
            "Bearer a b",
            "Token abc",
        ] {
            let err = bearer_token(bad).unwrap_err();
            assert_eq!(err.http_status(), 401, "{bad:?}");
        }
    }
}
