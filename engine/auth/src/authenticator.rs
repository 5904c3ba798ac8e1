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
        match (authorization, x_api_key) {
            (Some(_), Some(_)) => Err(AuthError::unauthenticated(
                "both Authorization and x-api-key present",
            )),
            (None, None) => Err(AuthError::unauthenticated("no credentials")),
            (None, Some(key)) => {
                let key = key.trim();
                if !key.starts_with(PREFIX) {
                    return Err(AuthError::unauthenticated(
                        "x-api-key does not hold a lily_ key",
                    ));
                }
                self.api_keys.verify(pg, key).await
            }
            (Some(header), None) => {
                let token = bearer_token(header)?;
                if token.starts_with(PREFIX) {
                    self.api_keys.verify(pg, token).await
                } else if let Some(jwt) = &self.jwt {
                    jwt.verify(token).await
                } else {
                    Err(AuthError::unauthenticated(
                        "bearer token is not an API key and no JWT issuer is configured",
                    ))
                }
            }
        }
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
