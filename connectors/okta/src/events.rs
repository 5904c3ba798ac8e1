//! Okta event hook deliveries as an Arrow batch named `events`: one row per System Log event
//! and target, for `sql/okta_directory.sql`.
//!
//! The envelope is `{"eventType": "com.okta.event_hook", …, "data": {"events": [LogEvent…]}}`.
//! Each LogEvent has `uuid`, `published`, `eventType`, `actor`, `target[]` and `outcome`; only
//! those are read and everything else is ignored. Deliveries are at-least-once, batched and
//! unordered, so rows carry `uuid` (to dedupe) and `published` (to order).

use std::sync::{Arc, OnceLock};

use arrow_array::builder::{StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use lily_inbound::json::{self, Obj};

use crate::hook::OktaError;
use crate::time::parse_rfc3339;

/// The name SQL uses for the batch.
pub const TABLE: &str = "events";
/// The envelope's `eventType`.
pub const EVENT_HOOK_TYPE: &str = "com.okta.event_hook";

/// The columns of [`events_batch`], in order.
pub fn events_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
            Arc::new(Schema::new(vec![
                text("uuid", false),
                Field::new(
                    "published",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    false,
                ),
                text("event_type", false),
                text("actor_id", true),
                // The actor's `alternateId` (a login, or an app's id).
                text("actor_login", true),
                // This row's target; all null for an event without targets.
                text("target_id", true),
                // `User`, `UserGroup`, `AppInstance`, …
                text("target_type", true),
                text("target_login", true),
                text("target_display_name", true),
                // The UserGroup this row is about: the row's target if it is one, else the
                // event's first UserGroup target (the group of a membership event).
                text("group_id", true),
                text("group_name", true),
                // Likewise the User: the row's target if it is one, else the event's first.
                text("user_id", true),
                text("user_login", true),
                // `outcome.result`: SUCCESS, FAILURE, SKIPPED, ALLOW, DENY, …
                text("outcome", true),
            ]))
        })
        .clone()
}

/// Parses one delivery's body into the `events` batch (see [`events_schema`]). An envelope with
/// no events gives an empty batch.
pub fn events_batch(body: &[u8]) -> Result<RecordBatch, OktaError> {
    let root = json::parse(body)?;
    let root = Obj::root(&root)?;
    let kind = root.req_str("eventType")?;
    if kind != EVENT_HOOK_TYPE {
        return Err(OktaError::NotAnEventHook(kind));
    }
    let events = root.req_obj("data")?.req_array("events")?;
    let mut rows = Rows::default();
    for (i, event) in events.iter().enumerate() {
        let event = Obj::at(event, format!("data.events[{i}]"))?;
        let uuid = event.req_str("uuid")?;
        let published_text = event.req_str("published")?;
        let published = parse_rfc3339(&published_text).ok_or_else(|| OktaError::BadTime {
            field: event.child("published"),
            value: published_text.clone(),
        })?;
        let event_type = event.req_str("eventType")?;
        let (actor_id, actor_login) = match event.opt_obj("actor")? {
            Some(actor) => (actor.opt_str("id")?, actor.opt_str("alternateId")?),
            None => (None, None),
        };
        let outcome = match event.opt_obj("outcome")? {
            Some(o) => o.opt_str("result")?,
            None => None,
        };
        let mut targets = Vec::new();
        for (j, target) in event
            .opt_array("target")?
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let t = Obj::at(target, format!("{}[{j}]", event.child("target")))?;
            targets.push(Target {
                id: t.opt_str("id")?,
                kind: t.opt_str("type")?,
                login: t.opt_str("alternateId")?,
                display_name: t.opt_str("displayName")?,
            });
        }
        let first_of = |kind: &str| targets.iter().find(|t| t.kind.as_deref() == Some(kind));
        let (first_user, first_group) = (first_of("User"), first_of("UserGroup"));
        let no_target = [Target::default()];
        let row_targets = if targets.is_empty() {
            &no_target[..]
        } else {
            &targets[..]
        };
        for target in row_targets {
            let user = match target.kind.as_deref() {
                Some("User") => Some(target),
                _ => first_user,
            };
            let group = match target.kind.as_deref() {
                Some("UserGroup") => Some(target),
                _ => first_group,
            };
            rows.uuid.append_value(&uuid);
            rows.published.append_value(published);
            rows.event_type.append_value(&event_type);
            rows.actor_id.append_option(actor_id.as_deref());
            rows.actor_login.append_option(actor_login.as_deref());
            rows.target_id.append_option(target.id.as_deref());
            rows.target_type.append_option(target.kind.as_deref());
            rows.target_login.append_option(target.login.as_deref());
            rows.target_display_name
                .append_option(target.display_name.as_deref());
            rows.group_id
                .append_option(group.and_then(|g| g.id.as_deref()));
            // A group's alternateId and displayName are both its name; either will do.
            rows.group_name.append_option(
                group.and_then(|g| g.display_name.as_deref().or(g.login.as_deref())),
            );
            rows.user_id
                .append_option(user.and_then(|u| u.id.as_deref()));
            rows.user_login
                .append_option(user.and_then(|u| u.login.as_deref()));
            rows.outcome.append_option(outcome.as_deref());
        }
    }
    rows.finish()
}

#[derive(Default)]
struct Target {
    id: Option<String>,
    kind: Option<String>,
    login: Option<String>,
    display_name: Option<String>,
}

#[derive(Default)]
struct Rows {
    uuid: StringBuilder,
    published: TimestampMicrosecondBuilder,
    event_type: StringBuilder,
    actor_id: StringBuilder,
    actor_login: StringBuilder,
    target_id: StringBuilder,
    target_type: StringBuilder,
    target_login: StringBuilder,
    target_display_name: StringBuilder,
    group_id: StringBuilder,
    group_name: StringBuilder,
    user_id: StringBuilder,
    user_login: StringBuilder,
    outcome: StringBuilder,
}

impl Rows {
    fn finish(mut self) -> Result<RecordBatch, OktaError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.uuid.finish()),
            Arc::new(self.published.finish().with_timezone("UTC")),
            Arc::new(self.event_type.finish()),
            Arc::new(self.actor_id.finish()),
            Arc::new(self.actor_login.finish()),
            Arc::new(self.target_id.finish()),
            Arc::new(self.target_type.finish()),
            Arc::new(self.target_login.finish()),
            Arc::new(self.target_display_name.finish()),
            Arc::new(self.group_id.finish()),
            Arc::new(self.group_name.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.user_login.finish()),
            Arc::new(self.outcome.finish()),
        ];
        RecordBatch::try_new(events_schema(), columns).map_err(|e| OktaError::Arrow(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::TimestampMicrosecondType;
    use arrow_array::Array;
    use lily_inbound::json::JsonError;

    fn column(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
        let col = batch.column_by_name(name).unwrap().as_string::<i32>();
        (0..col.len())
            .map(|i| col.is_valid(i).then(|| col.value(i).to_string()))
            .collect()
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    const MEMBERSHIP: &str = r#"{"eventType": "com.okta.event_hook", "eventTypeVersion": "1.0",
      "cloudEventsVersion": "0.1", "source": "https://acme.okta.com/api/v1/eventHooks/who",
      "eventId": "e-1", "eventTime": "2024-01-15T18:10:01.000Z", "contentType": "application/json",
      "data": {"events": [
        {"uuid": "u-1", "published": "2024-01-15T18:10:00.123Z",
         "eventType": "group.user_membership.add", "severity": "INFO",
         "actor": {"id": "00uadmin", "type": "User", "alternateId": "admin@acme.com"},
         "outcome": {"result": "SUCCESS", "reason": null},
         "target": [
           {"id": "00u1", "type": "User", "alternateId": "dana@acme.com", "displayName": "Dana"},
           {"id": "00g1", "type": "UserGroup", "alternateId": "Data Eng", "displayName": "Data Eng"}
         ]},
        {"uuid": "u-2", "published": "2024-01-15T18:09:00Z", "eventType": "system.ping",
         "outcome": {"result": "SUCCESS"}}
      ]}}"#;

    #[test]
    fn one_row_per_target_with_the_pair_on_each() {
        let batch = events_batch(MEMBERSHIP.as_bytes()).unwrap();
        assert_eq!(batch.schema(), events_schema());
        assert_eq!(batch.num_rows(), 3);
        assert_eq!(column(&batch, "uuid"), [s("u-1"), s("u-1"), s("u-2")]);
        assert_eq!(
            column(&batch, "target_type"),
            [s("User"), s("UserGroup"), None]
        );
        assert_eq!(column(&batch, "group_id"), [s("00g1"), s("00g1"), None]);
        assert_eq!(
            column(&batch, "group_name"),
            [s("Data Eng"), s("Data Eng"), None]
        );
        assert_eq!(column(&batch, "user_id"), [s("00u1"), s("00u1"), None]);
        assert_eq!(
            column(&batch, "user_login"),
            [s("dana@acme.com"), s("dana@acme.com"), None]
        );
        assert_eq!(column(&batch, "actor_login")[0], s("admin@acme.com"));
        assert_eq!(column(&batch, "actor_id")[2], None);
        assert_eq!(
            column(&batch, "outcome"),
            [s("SUCCESS"), s("SUCCESS"), s("SUCCESS")]
        );
        let published = batch
            .column_by_name("published")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        assert_eq!(published.value(0), 1_705_342_200_123_000);
        assert_eq!(published.value(2), 1_705_342_140_000_000);
    }

    #[test]
    fn errors_name_the_field() {
        let envelope = |events: &str| {
            format!(r#"{{"eventType": "com.okta.event_hook", "data": {{"events": {events}}}}}"#)
        };
        let cases = [
            (
                r#"{"data": {"events": []}}"#.to_string(),
                "`eventType` is missing",
            ),
            (
                r#"{"eventType": "com.okta.oauth2.tokens.transform", "data": {}}"#.to_string(),
                "`eventType` is \"com.okta.oauth2.tokens.transform\", not \"com.okta.event_hook\"",
            ),
            (
                r#"{"eventType": "com.okta.event_hook"}"#.to_string(),
                "`data` is missing",
            ),
            (envelope("{}"), "`data.events` must be an array"),
            (envelope("[1]"), "`data.events[0]` must be an object"),
            (
                envelope(r#"[{"published": "2024-01-15T18:10:00Z", "eventType": "x"}]"#),
                "`data.events[0].uuid` is missing",
            ),
            (
                envelope(r#"[{"uuid": "u", "eventType": "x"}]"#),
                "`data.events[0].published` is missing",
            ),
            (
                envelope(r#"[{"uuid": "u", "published": "yesterday", "eventType": "x"}]"#),
                "`data.events[0].published` is not an RFC 3339 time: \"yesterday\"",
            ),
            (
                envelope(r#"[{"uuid": "u", "published": "2024-01-15T18:10:00Z"}]"#),
                "`data.events[0].eventType` is missing",
            ),
            (
                envelope(
                    r#"[{"uuid": "u", "published": "2024-01-15T18:10:00Z", "eventType": "x",
                        "target": [{"id": 5}]}]"#,
                ),
                "`data.events[0].target[0].id` must be a string",
            ),
        ];
        for (body, expected) in cases {
            let err = events_batch(body.as_bytes()).unwrap_err();
            assert_eq!(err.to_string(), expected, "{body}");
            assert_eq!(err.http_status(), 400);
        }
        assert!(matches!(
            events_batch(b"nope"),
            Err(OktaError::Json(JsonError::Syntax(_)))
        ));
        let empty = events_batch(envelope("[]").as_bytes()).unwrap();
        assert_eq!(empty.num_rows(), 0);
    }
}
