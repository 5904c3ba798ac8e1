//! `sql/okta_directory.sql` run by the SQL stage on batches from real-shaped Okta
//! deliveries.

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use lily_okta::events::{events_batch, events_schema};
use lily_transform::{SourceTable, Transform};

async fn transform() -> Transform {
    let sql = std::fs::read_to_string(manifest_dir().join("sql/okta_directory.sql")).unwrap();
    assert!(sql.starts_with("-- sources: events\n"), "header");
    let sources = [SourceTable {
        name: "events".into(),
        schema: events_schema(),
        filter: None,
    }];
    Transform::plan(&sql, &sources, &[]).await.unwrap()
}

/// One output row, every column as text ("" for NULL), in the SQL's column order.
fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let row = b
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(i) {
                        String::new()
                    } else if let Some(s) = c.as_string_opt::<i32>() {
                        s.value(i).to_string()
                    } else if let Some(bools) = c.as_boolean_opt() {
                        bools.value(i).to_string()
                    } else {
                        c.as_primitive::<TimestampMicrosecondType>()
                            .value(i)
                            .to_string()
                    }
                })
                .collect();
            out.push(row);
        }
    }
    out
}

fn event(uuid: &str, published: &str, event_type: &str, outcome: &str, targets: &str) -> String {
    format!(
        r#"{{"uuid": "{uuid}", "published": "{published}", "eventType": "{event_type}",
            "version": "0", "severity": "INFO",
            "actor": {{"id": "00uadmin", "type": "User", "alternateId": "admin@acme.com",
                       "displayName": "Admin"}},
            "outcome": {{"result": "{outcome}"}}, "target": [{targets}]}}"#
    )
}

const DANA: &str =
    r#"{"id": "00u1", "type": "User", "alternateId": "dana@acme.com", "displayName": "Dana Li"}"#;
const LEE: &str =
    r#"{"id": "00u2", "type": "User", "alternateId": "lee@acme.com", "displayName": "Lee"}"#;
const DATA_ENG: &str =
    r#"{"id": "00g1", "type": "UserGroup", "alternateId": "Data Eng", "displayName": "Data Eng"}"#;
const APP: &str =
    r#"{"id": "0oa1", "type": "AppInstance", "alternateId": "Atlan", "displayName": "Atlan"}"#;

fn envelope(events: &[String]) -> Vec<u8> {
    format!(
        r#"{{"eventType": "com.okta.event_hook", "eventTypeVersion": "1.0",
            "cloudEventsVersion": "0.1", "eventId": "e", "eventTime": "2024-01-15T18:20:00.000Z",
            "source": "https://acme.okta.com/api/v1/eventHooks/who1",
            "contentType": "application/json", "data": {{"events": [{}]}}}}"#,
        events.join(",")
    )
    .into_bytes()
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

#[tokio::test]
async fn lifecycle_membership_and_profile_changes() {
    let mut t = transform().await;
    let body = envelope(&[
        // Out of order on purpose: the output is sorted by published.
        event(
            "u-3",
            "2024-01-15T18:03:00.000Z",
            "group.user_membership.add",
            "SUCCESS",
            &format!("{DANA}, {DATA_ENG}"),
        ),
        event(
            "u-1",
            "2024-01-15T18:01:00.000Z",
            "user.lifecycle.create",
            "SUCCESS",
            DANA,
        ),
        event(
            "u-2",
            "2024-01-15T18:02:00.000Z",
            "group.lifecycle.create",
            "SUCCESS",
            DATA_ENG,
        ),
        event(
            "u-4",
            "2024-01-15T18:04:00.000Z",
            "user.lifecycle.suspend",
            "SUCCESS",
            DANA,
        ),
        event(
            "u-5",
            "2024-01-15T18:05:00.000Z",
            "user.account.update_profile",
            "SUCCESS",
            DANA,
        ),
        event(
            "u-6",
            "2024-01-15T18:06:00.000Z",
            "group.user_membership.remove",
            "SUCCESS",
            &format!("{DANA}, {DATA_ENG}"),
        ),
        event(
            "u-7",
            "2024-01-15T18:07:00.000Z",
            "user.lifecycle.deactivate",
            "SUCCESS",
            DANA,
        ),
        event(
            "u-8",
            "2024-01-15T18:08:00.000Z",
            "user.lifecycle.delete.initiated",
            "SUCCESS",
            DANA,
        ),
        event(
            "u-9",
            "2024-01-15T18:09:00.000Z",
            "group.lifecycle.delete",
            "SUCCESS",
            DATA_ENG,
        ),
        event(
            "u-10",
            "2024-01-15T18:10:00.000Z",
            "user.lifecycle.reactivate",
            "SUCCESS",
            DANA,
        ),
        event(
            "u-11",
            "2024-01-15T18:11:00.000Z",
            "user.lifecycle.activate",
            "SUCCESS",
            LEE,
        ),
    ]);
    let out = t.run("events", events_batch(&body).unwrap()).await.unwrap();
    let names: Vec<String> = t
        .output_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    // Plain Utf8 text throughout, a boolean and the timestamp as it came in.
    for field in t.output_schema().fields() {
        let expected = match field.name().as_str() {
            "member" => DataType::Boolean,
            "published" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            _ => DataType::Utf8,
        };
        assert_eq!(field.data_type(), &expected, "{}", field.name());
    }
    assert_eq!(
        names,
        [
            "change",
            "kind",
            "external_id",
            "login",
            "display_name",
            "status",
            "group_id",
            "group_name",
            "user_id",
            "user_login",
            "member",
            "event_uuid",
            "published"
        ]
    );
    let ts = |m: i64| (1_705_341_600_000_000i64 + m * 60_000_000).to_string();
    let user = |status: &str, uuid: &str, m: i64| {
        let mut r = row(&[
            "principal",
            "user",
            "00u1",
            "dana@acme.com",
            "Dana Li",
            status,
        ]);
        r.extend(row(&["", "", "", "", "", uuid]));
        r.push(ts(m));
        r
    };
    let group = |status: &str, uuid: &str, m: i64| {
        let mut r = row(&["principal", "group", "00g1", "Data Eng", "Data Eng", status]);
        r.extend(row(&["", "", "", "", "", uuid]));
        r.push(ts(m));
        r
    };
    let membership = |member: &str, uuid: &str, m: i64| {
        let mut r = row(&["membership", "", "", "", "", ""]);
        r.extend(row(&[
            "00g1",
            "Data Eng",
            "00u1",
            "dana@acme.com",
            member,
            uuid,
        ]));
        r.push(ts(m));
        r
    };
    let mut lee = row(&["principal", "user", "00u2", "lee@acme.com", "Lee", "ACTIVE"]);
    lee.extend(row(&["", "", "", "", "", "u-11"]));
    lee.push(ts(11));
    assert_eq!(
        rows(&out),
        [
            user("ACTIVE", "u-1", 1),
            group("ACTIVE", "u-2", 2),
            membership("true", "u-3", 3),
            user("SUSPENDED", "u-4", 4),
            user("", "u-5", 5),
            membership("false", "u-6", 6),
            user("DEACTIVATED", "u-7", 7),
            user("DELETED", "u-8", 8),
            group("DELETED", "u-9", 9),
            user("ACTIVE", "u-10", 10),
            lee,
        ]
    );
}

#[tokio::test]
async fn failures_other_events_and_other_targets_give_nothing() {
    let mut t = transform().await;
    let body = envelope(&[
        event(
            "f-1",
            "2024-01-15T18:01:00Z",
            "user.lifecycle.deactivate",
            "FAILURE",
            DANA,
        ),
        event(
            "f-2",
            "2024-01-15T18:02:00Z",
            "group.user_membership.add",
            "DENY",
            &format!("{DANA}, {DATA_ENG}"),
        ),
        event(
            "f-3",
            "2024-01-15T18:03:00Z",
            "user.session.start",
            "SUCCESS",
            DANA,
        ),
        event(
            "f-4",
            "2024-01-15T18:04:00Z",
            "application.user_membership.add",
            "SUCCESS",
            &format!("{DANA}, {APP}"),
        ),
        // A membership event without a group target cannot be applied.
        event(
            "f-5",
            "2024-01-15T18:05:00Z",
            "group.user_membership.add",
            "SUCCESS",
            DANA,
        ),
        event(
            "f-6",
            "2024-01-15T18:06:00Z",
            "user.lifecycle.create",
            "SUCCESS",
            "",
        ),
    ]);
    let out = t.run("events", events_batch(&body).unwrap()).await.unwrap();
    assert_eq!(rows(&out), Vec::<Vec<String>>::new());
}

#[tokio::test]
async fn membership_with_two_users_gives_two_rows() {
    let mut t = transform().await;
    let body = envelope(&[event(
        "m-1",
        "2024-01-15T18:01:00Z",
        "group.user_membership.add",
        "SUCCESS",
        &format!("{DANA}, {DATA_ENG}, {LEE}"),
    )]);
    let out = t.run("events", events_batch(&body).unwrap()).await.unwrap();
    let got: Vec<(String, String, String)> = rows(&out)
        .into_iter()
        .map(|r| (r[0].clone(), r[6].clone(), r[8].clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("membership".into(), "00g1".into(), "00u1".into()),
            ("membership".into(), "00g1".into(), "00u2".into())
        ]
    );
}

/// This package's directory, read when the test runs: a build directory shared between
/// checkouts may hold a binary compiled in another one, so the compile-time value could point
/// there.
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
}
