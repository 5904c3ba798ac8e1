//! Monte Carlo as an inbound hook of the ingest server: `POST
//! /v1/tenants/{tenant}/webhooks/monte-carlo`, signed with `x-mcd-signature`, written to
//! `meta.incidents` through `sql/monte_carlo_incidents.sql`.

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef;
use lily_inbound::{Ack, Admission, HookError, InboundHook, Method, Request, Route, Writes};

use crate::config::MonteCarloHook;
use crate::payload::{self, PayloadError};
use crate::signature;

impl InboundHook for MonteCarloHook {
    const SOURCE: &'static str = "monte_carlo";
    const ROUTES: &'static [Route] = &[Route {
        method: Method::Post,
        path: "monte-carlo",
    }];
    const SQL: &'static str = include_str!("../sql/monte_carlo_incidents.sql");
    const IDEMPOTENCY_KEY: &'static str = "event_key";
    // Monte Carlo reads nothing back; the summary is for whoever tests the hook by hand.
    const ACK: Ack = Ack::Summary;

    fn events_schema() -> SchemaRef {
        payload::events_schema()
    }

    fn tenant(&self) -> &str {
        &self.tenant_id
    }

    /// Every signature failure is 403, as in Monte Carlo's own sample receiver, even a body
    /// that cannot be signed or an empty secret.
    fn admit(&self, request: &Request<'_>) -> Result<Admission, HookError> {
        signature::authenticate(
            self.secret.as_ref().map(|s| s.expose().as_bytes()),
            request.body,
            request.header(signature::HEADER),
        )
        .map_err(|e| HookError::Forbidden(e.to_string()))?;
        Ok(Admission::Ingest)
    }

    /// A tenant without the hook is refused like an unsigned delivery to one with it.
    fn admit_unknown_tenant(_request: &Request<'_>) -> Result<Admission, HookError> {
        Err(HookError::Forbidden(
            "no Monte Carlo hook for this tenant".into(),
        ))
    }

    /// The batch, once its account is the configured one. Every row carries the delivery's
    /// `account.id`, and `sql/monte_carlo_incidents.sql` passes it through row for row, so this
    /// is the check on the SQL's output, made before the SQL runs. A delivery with no events
    /// writes nothing and is not refused.
    fn events(&self, body: &[u8]) -> Result<RecordBatch, HookError> {
        let batch = payload::events_batch(body).map_err(|e| match e {
            PayloadError::Arrow(_) => HookError::Batch(e.to_string()),
            PayloadError::Json(_) => HookError::BadPayload(e.to_string()),
        })?;
        if let Some(want) = &self.account_id {
            let accounts = batch
                .column_by_name("account_id")
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| HookError::Batch("the events batch has no account_id".into()))?;
            if let Some(other) = (0..accounts.len())
                .map(|i| accounts.value(i))
                .find(|a| a != want)
            {
                return Err(HookError::Forbidden(format!(
                    "the delivery is for Monte Carlo account {other:?}, not the configured one"
                )));
            }
        }
        Ok(batch)
    }

    fn writes(&self) -> Writes<'_> {
        Writes::Incidents {
            connection: self.connection.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lily_pg::Secret;

    const BODY: &[u8] = br#"{"account": {"id": "acct-1"}, "action": "incident",
        "type": "open_x_incident", "payload": {"incident_id": "i", "event_list": [
        {"rule": {"comparisons": [{"full_table_id": "db:s.t"}]}}]}}"#;

    fn hook(secret: Option<&str>, account_id: Option<&str>) -> MonteCarloHook {
        MonteCarloHook {
            tenant_id: "acme".into(),
            secret: secret.map(Secret::new),
            connection: Some("snow".into()),
            account_id: account_id.map(str::to_string),
        }
    }

    fn post(
        hook: &MonteCarloHook,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Admission, HookError> {
        hook.admit(&Request {
            method: Method::Post,
            headers: &headers,
            body,
        })
    }

    #[test]
    fn signed_or_explicitly_unsigned() {
        let signed = signature::sign(b"s3cret", BODY).unwrap();
        let h = hook(Some("s3cret"), None);
        assert_eq!(
            post(&h, &[("X-MCD-Signature", &signed)], BODY),
            Ok(Admission::Ingest)
        );
        for headers in [&[][..], &[("x-mcd-signature", "00")][..]] {
            let err = post(&h, headers, BODY).unwrap_err();
            assert_eq!(err.http_status(), 403, "{err}");
        }
        // Unsigned only when no secret is configured (allow_unsigned).
        assert_eq!(post(&hook(None, None), &[], BODY), Ok(Admission::Ingest));
    }

    #[test]
    fn another_account_is_forbidden_and_a_bad_body_named() {
        assert_eq!(
            hook(None, Some("acct-1")).events(BODY).unwrap().num_rows(),
            1
        );
        let err = hook(None, Some("acct-2")).events(BODY).unwrap_err();
        assert!(matches!(err, HookError::Forbidden(_)), "{err}");
        // No events: nothing to write, nothing refused.
        let empty = br#"{"account": {"id": "acct-9"}, "action": "a",
            "payload": {"id": 1, "event_list": []}}"#;
        assert_eq!(
            hook(None, Some("acct-1")).events(empty).unwrap().num_rows(),
            0
        );
        assert_eq!(
            hook(None, None).events(br#"{"action": "a"}"#),
            Err(HookError::BadPayload("`account` is missing".into()))
        );
    }

    #[test]
    fn the_sql_reads_the_events_batch_and_yields_the_key() {
        assert!(MonteCarloHook::SQL.starts_with("-- sources: events\n"));
        assert!(MonteCarloHook::SQL.contains(MonteCarloHook::IDEMPOTENCY_KEY));
    }
}
