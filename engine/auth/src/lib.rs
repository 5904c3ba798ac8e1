//! Authentication and authorization: API keys bound to a tenant with scopes, OIDC JWT bearer tokens checked against an issuer's JWKS.
//!
//! The ingest server calls [`Authenticator::authenticate`] with the request's credential headers
//! and gets a [`Principal`]: who (`key:<key_id>` or `jwt:<sub>`), for which single tenant, with
//! which [`Scope`]s. Handlers then call [`Principal::authorize`] (tenant of the path, scope of the
//! action). Errors map to 401/403/503 with [`AuthError::http_status`] and a detail-free
//! [`AuthError::public_message`]; the reason is for logs only.
//!
//! - API keys (`lily_<key_id>_<secret>`): [`ApiKeys`], stored hashed in lily.api_keys.
//! - JWTs (RS256, Okta-compatible): [`JwtVerifier`] configured by [`OidcConfig`].
//! - With the `fake` feature, [`fake::FakeIdp`]: an identity provider for tests.

mod api_key;
mod authenticator;
mod error;
#[cfg(feature = "fake")]
pub mod fake;
mod jwt;
mod key_cache;
mod principal;
mod scope;

pub use api_key::{ApiKeys, KeyInfo, PresentedKey};
pub use authenticator::Authenticator;
pub use error::{AuthError, KeyAdminError};
pub use jwt::{JwtVerifier, OidcConfig, OidcConfigError};
pub use principal::{Method, Principal};
pub use scope::{Scope, UnknownScope};
