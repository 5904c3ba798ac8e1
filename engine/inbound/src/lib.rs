//! Inbound webhooks as the ingest server sees them: the [`InboundHook`] trait a sender's
//! connector implements, and [`json`], the path-aware walker payload parsers share.
//!
//! Whatever the sender, a delivery to `/v1/tenants/{tenant}/webhooks/<route>` goes the same way:
//!
//! 1. the server finds the hook configured for the path's tenant (404 when there is none);
//! 2. [`InboundHook::admit`] checks the request (a signature, a shared secret) or answers it at
//!    once (a verification challenge);
//! 3. [`InboundHook::events`] turns the body into the Arrow batch named `events`;
//! 4. the server runs [`InboundHook::SQL`] on that batch (the pipelines' SQL stage);
//! 5. in one transaction it records each output row's [`InboundHook::IDEMPOTENCY_KEY`] in
//!    `lily.inbound_events`, writes the rows whose key is new to the tables
//!    [`InboundHook::writes`] names, audits the delivery as `webhook:<SOURCE>`, and answers as
//!    [`InboundHook::ACK`] says.
//!
//! The sender's part (steps 2, 3 and the SQL) lives in its connector; the metastore writes are
//! the server's, shared by every sender that feeds the same tables. This crate sits between
//! the two so that neither depends on the other.

pub mod json;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

/// One sender's webhook, configured for one tenant.
///
/// The constants and [`InboundHook::events_schema`] describe the sender and hold whether or not
/// any tenant configured it (its routes are served either way, so the API's shape does not
/// depend on configuration); the methods belong to one tenant's hook, with its secrets.
pub trait InboundHook: Send + Sync + 'static {
    /// The sender's name where it is stored: `lily.inbound_events.source`, the audit trail's
    /// `webhook:<SOURCE>`, `meta.incidents.source`, logs. Never change it: keys already
    /// recorded under it would no longer de-duplicate.
    const SOURCE: &'static str;
    /// The routes, each `/v1/tenants/{tenant}/webhooks/<path>`.
    const ROUTES: &'static [Route];
    /// The pre-ingest SQL, run on [`InboundHook::events`]' batch; its output columns are the
    /// ones [`InboundHook::writes`] names plus [`InboundHook::IDEMPOTENCY_KEY`].
    const SQL: &'static str;
    /// The SQL output column that identifies what a row is about (text): a row whose key the
    /// tenant's hook already applied is not written again, so a redelivery changes nothing.
    const IDEMPOTENCY_KEY: &'static str;
    /// What an accepted delivery is answered.
    const ACK: Ack;

    /// The columns of [`InboundHook::events`]' batch.
    fn events_schema() -> SchemaRef;

    /// The tenant this hook writes for.
    fn tenant(&self) -> &str;

    /// Authenticates a request (headers and raw body) before anything else reads the body, or
    /// answers it outright.
    fn admit(&self, request: &Request<'_>) -> Result<Admission, HookError>;

    /// An admitted body as the `events` batch (schema [`InboundHook::events_schema`]).
    fn events(&self, body: &[u8]) -> Result<RecordBatch, HookError>;

    /// Where this hook's SQL output goes.
    fn writes(&self) -> Writes<'_>;

    /// How a request for a tenant that has no hook of this sender is answered: exactly as a
    /// configured tenant's hook answers a caller without the credential, so that nobody can
    /// tell which tenants configured it. The default refuses as unauthenticated.
    fn admit_unknown_tenant(_request: &Request<'_>) -> Result<Admission, HookError> {
        Err(HookError::Unauthenticated("no hook for this tenant".into()))
    }
}

/// One tenant's hook with the sender's type erased: what the server calls per delivery.
/// Every [`InboundHook`] is one.
pub trait TenantHook: Send + Sync {
    /// See [`InboundHook::tenant`].
    fn tenant(&self) -> &str;
    /// See [`InboundHook::admit`].
    fn admit(&self, request: &Request<'_>) -> Result<Admission, HookError>;
    /// See [`InboundHook::events`].
    fn events(&self, body: &[u8]) -> Result<RecordBatch, HookError>;
    /// See [`InboundHook::writes`].
    fn writes(&self) -> Writes<'_>;
}

impl<H: InboundHook> TenantHook for H {
    fn tenant(&self) -> &str {
        InboundHook::tenant(self)
    }
    fn admit(&self, request: &Request<'_>) -> Result<Admission, HookError> {
        InboundHook::admit(self, request)
    }
    fn events(&self, body: &[u8]) -> Result<RecordBatch, HookError> {
        InboundHook::events(self, body)
    }
    fn writes(&self) -> Writes<'_> {
        InboundHook::writes(self)
    }
}

/// One kind of hook (a sender) with the hooks its tenants configured, as the registry builds
/// it and the ingest server registers it: the sender's constants and its tenants' hooks, with
/// the sender's type erased so every kind fits in one list.
pub struct HookKind {
    /// [`InboundHook::SOURCE`].
    pub source: &'static str,
    /// [`InboundHook::ROUTES`].
    pub routes: &'static [Route],
    /// [`InboundHook::SQL`].
    pub sql: &'static str,
    /// [`InboundHook::IDEMPOTENCY_KEY`].
    pub idempotency_key: &'static str,
    /// [`InboundHook::ACK`].
    pub ack: Ack,
    /// [`InboundHook::events_schema`].
    pub events_schema: SchemaRef,
    /// [`InboundHook::admit_unknown_tenant`].
    pub admit_unknown_tenant: fn(&Request<'_>) -> Result<Admission, HookError>,
    /// One per configured tenant (none is fine: the routes are served all the same).
    pub hooks: Vec<Box<dyn TenantHook>>,
}

impl HookKind {
    /// Sender `H` with these tenants' hooks.
    pub fn of<H: InboundHook>(hooks: Vec<H>) -> HookKind {
        HookKind {
            source: H::SOURCE,
            routes: H::ROUTES,
            sql: H::SQL,
            idempotency_key: H::IDEMPOTENCY_KEY,
            ack: H::ACK,
            events_schema: H::events_schema(),
            admit_unknown_tenant: H::admit_unknown_tenant,
            hooks: hooks
                .into_iter()
                .map(|h| Box::new(h) as Box<dyn TenantHook>)
                .collect(),
        }
    }
}

impl std::fmt::Debug for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the hooks: they hold secrets.
        f.debug_struct("HookKind")
            .field("source", &self.source)
            .field("routes", &self.routes)
            .field("tenants", &self.hooks.len())
            .finish_non_exhaustive()
    }
}

/// Checks a configured hook's tenant id: the metastore's rule (lower-case letters, digits,
/// `_` and `-`, starting with a letter or digit, at most 63), so a typo is found by
/// `validate`, not when deliveries start failing.
pub fn check_tenant_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if id.is_empty() {
        Err("is empty".into())
    } else if first_ok && rest_ok && id.len() <= 63 {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not a tenant id (1 to 63 of a-z, 0-9, `_`, `-`, starting with a letter \
             or digit)"
        ))
    }
}

/// An HTTP method a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    /// Lower case, as OpenAPI documents name operations.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
        }
    }
}

/// One route of a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// The last path segment (lower-case letters, digits and `-`): the route is
    /// `/v1/tenants/{tenant}/webhooks/<path>`, so every hook is scoped to a tenant.
    pub path: &'static str,
}

/// The request headers, as a hook reads them.
pub trait Headers: Sync {
    /// The value of header `name` (matched case-insensitively), when present and visible ASCII.
    fn get(&self, name: &str) -> Option<&str>;
}

impl<T: Headers + ?Sized> Headers for &T {
    fn get(&self, name: &str) -> Option<&str> {
        (**self).get(name)
    }
}

/// Pairs of name and value (tests, and servers without a header map of their own). As a
/// `&dyn Headers`, a slice goes by reference: `headers: &pairs` with `pairs: &[(&str, &str)]`.
impl Headers for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// What [`InboundHook::admit`] sees of a request.
pub struct Request<'a> {
    pub method: Method,
    pub headers: &'a dyn Headers,
    /// The raw body, as signed.
    pub body: &'a [u8],
}

impl Request<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// What to do with an authenticated request.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Parse the body and write it.
    Ingest,
    /// Answer 200 with this JSON and read nothing more (a verification challenge).
    Answer(serde_json::Value),
}

/// What the server answers an accepted delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// 200 with a JSON summary of what the delivery changed.
    Summary,
    /// 204 with no body, for senders that want nothing back (Okta).
    NoContent,
}

/// The metastore tables a hook's SQL output feeds, and so the columns it must have (text
/// unless said otherwise; any other column is ignored). The server owns these writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes<'a> {
    /// `meta.incidents`, keyed by (tenant, source, `external_id`, asset): `external_id`,
    /// `incident_type`, `severity`, `status` (`open`, `investigating` or `resolved`; a stored
    /// status never moves backwards, so a late delivery cannot reopen a resolved incident),
    /// `payload` (JSON text), and `table_path` (`database/schema/table`, lower case, null when
    /// the incident names no table).
    Incidents {
        /// Qualified name of the connection `table_path`s are under: the asset is
        /// `<connection>/<table_path>`. Without it, the one table, view or materialized view
        /// whose qualified name ends in `/<table_path>`, when exactly one does.
        connection: Option<&'a str>,
    },
    /// `meta.principals` and `meta.group_members`, each change applied only when newer than
    /// the stored one: `change` (`principal` or `membership`), `published` (when the sender
    /// logged it); a principal's `kind`, `external_id`, `login`, `display_name`, `status`; a
    /// membership's `group_id`, `user_id` and `member` (boolean).
    Directory,
}

/// Why a hook did not take a request. None is retryable: the same request gets the same
/// answer, so the sender should not retry (and Okta never does after a 4xx).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The request lacks the sender's credential or carries a wrong one: 401. The reason is
    /// logged, never answered.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The request does not prove it is the configured sender's (a bad signature, another
    /// account): 403. The reason is logged, never answered.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A request the hook cannot answer (an empty verification challenge): 400.
    #[error("{0}")]
    BadRequest(String),
    /// The body is not this sender's payload: 400, with the field at fault.
    #[error("{0}")]
    BadPayload(String),
    /// The batch could not be built from a body that parsed: the hook's bug, not the sender's.
    #[error("{0}")]
    Batch(String),
}

impl HookError {
    /// Always false: see the type's documentation.
    pub fn retryable(&self) -> bool {
        false
    }

    pub fn http_status(&self) -> u16 {
        match self {
            HookError::Unauthenticated(_) => 401,
            HookError::Forbidden(_) => 403,
            HookError::BadRequest(_) | HookError::BadPayload(_) => 400,
            HookError::Batch(_) => 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_pairs_match_names_case_insensitively() {
        let pairs: &[(&str, &str)] = &[("X-Okta-Verification-Challenge", "abc"), ("a", "1")];
        let request = Request {
            method: Method::Get,
            headers: &pairs,
            body: b"",
        };
        assert_eq!(request.header("x-okta-verification-challenge"), Some("abc"));
        assert_eq!(request.header("A"), Some("1"));
        assert_eq!(request.header("b"), None);
    }

    #[test]
    fn every_error_is_permanent_with_its_status() {
        for (e, status) in [
            (HookError::Unauthenticated("x".into()), 401),
            (HookError::Forbidden("x".into()), 403),
            (HookError::BadRequest("x".into()), 400),
            (HookError::BadPayload("x".into()), 400),
            (HookError::Batch("x".into()), 500),
        ] {
            assert_eq!(e.http_status(), status, "{e:?}");
            assert!(!e.retryable());
        }
    }
}
