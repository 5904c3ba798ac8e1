//! Okta as an inbound hook of the ingest server: `GET` (the one-time verification) and `POST`
//! (event deliveries) on `/v1/tenants/{tenant}/webhooks/okta`, written to `meta.principals` and
//! `meta.group_members` through `sql/okta_directory.sql`.

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use lily_inbound::{Ack, Admission, HookError, InboundHook, Method, Request, Route, Writes};

use crate::config::OktaHook;
use crate::hook::{challenge, OktaError, CHALLENGE_HEADER};

impl InboundHook for OktaHook {
    const SOURCE: &'static str = "okta";
    const ROUTES: &'static [Route] = &[
        Route {
            method: Method::Get,
            path: "okta",
        },
        Route {
            method: Method::Post,
            path: "okta",
        },
    ];
    const SQL: &'static str = include_str!("../sql/okta_directory.sql");
    const IDEMPOTENCY_KEY: &'static str = "event_uuid";
    // Okta wants an empty 200 or 204 within 3 s.
    const ACK: Ack = Ack::NoContent;

    fn events_schema() -> SchemaRef {
        crate::events::events_schema()
    }

    fn tenant(&self) -> &str {
        &self.tenant_id
    }

    /// The GET is answered with its challenge and is not checked for the secret (the challenge
    /// only proves the endpoint is ours, to Okta). A POST must carry the secret header: 401
    /// without it.
    fn admit(&self, request: &Request<'_>) -> Result<Admission, HookError> {
        match request.method {
            Method::Get => challenge(request.header(CHALLENGE_HEADER).unwrap_or_default())
                .map(Admission::Answer)
                .map_err(|e| HookError::BadRequest(e.to_string())),
            Method::Post => {
                self.check(request.header(&self.header))
                    .map_err(|e| HookError::Unauthenticated(e.to_string()))?;
                Ok(Admission::Ingest)
            }
        }
    }

    /// A tenant without the hook answers as one with it answers a caller without its secret:
    /// the verification challenge is echoed (it proves nothing and holds nothing), a delivery
    /// is refused as unauthenticated.
    fn admit_unknown_tenant(request: &Request<'_>) -> Result<Admission, HookError> {
        match request.method {
            Method::Get => challenge(request.header(CHALLENGE_HEADER).unwrap_or_default())
                .map(Admission::Answer)
                .map_err(|e| HookError::BadRequest(e.to_string())),
            Method::Post => Err(HookError::Unauthenticated(
                "no Okta hook for this tenant".into(),
            )),
        }
    }

    fn events(&self, body: &[u8]) -> Result<RecordBatch, HookError> {
        crate::events::events_batch(body).map_err(|e| match e {
            OktaError::Arrow(_) => HookError::Batch(e.to_string()),
            _ => HookError::BadPayload(e.to_string()),
        })
    }

    fn writes(&self) -> Writes<'_> {
        Writes::Directory
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lily_pg::Secret;

    fn admit(
        hook: &OktaHook,
        method: Method,
        headers: &[(&str, &str)],
    ) -> Result<Admission, HookError> {
        hook.admit(&Request {
            method,
            headers: &headers,
            body: b"",
        })
    }

    #[test]
    fn challenge_then_secret() {
        let hook = OktaHook::new("acme", "X-Lily-Okta", Secret::new("s3cret"));
        assert_eq!(
            admit(
                &hook,
                Method::Get,
                &[("X-Okta-Verification-Challenge", "abc")]
            ),
            Ok(Admission::Answer(
                serde_json::json!({"verification": "abc"})
            ))
        );
        let empty = admit(&hook, Method::Get, &[]).unwrap_err();
        assert_eq!(empty.http_status(), 400, "{empty}");
        assert_eq!(
            admit(&hook, Method::Post, &[("x-lily-okta", "s3cret")]),
            Ok(Admission::Ingest)
        );
        for headers in [&[][..], &[("x-lily-okta", "nope")][..]] {
            let err = admit(&hook, Method::Post, headers).unwrap_err();
            assert!(matches!(err, HookError::Unauthenticated(_)), "{err}");
        }
    }

    #[test]
    fn bad_bodies_are_named() {
        let hook = OktaHook::new("acme", "authorization", Secret::new("s"));
        assert_eq!(
            hook.events(br#"{"eventType": "com.okta.event_hook"}"#),
            Err(HookError::BadPayload("`data` is missing".into()))
        );
        assert!(OktaHook::SQL.starts_with("-- sources: events\n"));
        assert!(OktaHook::SQL.contains(OktaHook::IDEMPOTENCY_KEY));
    }
}
