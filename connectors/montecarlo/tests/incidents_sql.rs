//! `sql/monte_carlo_incidents.sql` run by the SQL stage on batches from real-shaped
//! Monte Carlo bodies.

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use lily_montecarlo::payload::{events_batch, events_schema};
use lily_transform::{SourceTable, Transform};

/// Read when the test runs: a build directory shared between checkouts may hold a binary
/// compiled in another one, so the compile-time `CARGO_MANIFEST_DIR` could point there.
fn sql_path() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join("sql/monte_carlo_incidents.sql")
}

async fn transform() -> Transform {
    let sql = std::fs::read_to_string(sql_path()).unwrap();
    assert!(sql.starts_with("-- sources: events\n"), "header");
    let sources = [SourceTable {
        name: "events".into(),
        schema: events_schema(),
        filter: None,
    }];
    let t = Transform::plan(&sql, &sources, &[]).await.unwrap();
    let names: Vec<&str> = t
        .output_schema()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(
        names,
        [
            "source",
            "account_id",
            "external_id",
            "incident_type",
            "severity",
            "status",
            "table_path",
            "full_table_id",
            "url",
            "payload",
            "event_key"
        ]
    );
    for field in t.output_schema().fields() {
        assert_eq!(field.data_type(), &DataType::Utf8, "{}", field.name());
    }
    t
}

/// Output rows as column name → values (NULL as `None`).
fn rows(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let col = b
                .column_by_name(name)
                .unwrap_or_else(|| panic!("no column {name}"));
            let col = arrow_cast_utf8(col.as_ref());
            (0..col.len())
                .map(|i| col.is_valid(i).then(|| col.value(i).to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn arrow_cast_utf8(col: &dyn Array) -> &arrow_array::StringArray {
    col.as_string_opt::<i32>()
        .unwrap_or_else(|| panic!("not Utf8: {:?}", col.data_type()))
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

const LEGACY: &str = r#"{"account": {"id": "acc-1"}, "action": "incident",
 "type": "open_custom_rule_anomaly_incident", "version": "v0.1",
 "payload": {"incident_id": "inc-1", "url": "https://getmontecarlo.com/incidents/inc-1",
  "group_id": null,
  "event_list": [
   {"table_name": null,
    "rule": {"uuid": "r-1", "rule_type": "custom_sql", "description": "Too many failures",
     "comparisons": [{"full_table_id": "ANALYTICS:PROD.Client_Txn", "metric": "custom_sql",
       "operator": "GT", "threshold": 49.0}]},
    "data": {"metric_display_name": "Custom SQL",
     "hits": [{"measurement_timestamp": "Jan 15, 06:10PM", "value": "50.0", "value_rounded": "50"}],
     "rule_comparisons": [{"operator": ">", "threshold": "49.0"}]}},
   {"table_name": null, "data": {"metric_display_name": "Freshness"}}]}}"#;

const ALERT: &str = r#"{"account": {"id": "acc-1"}, "action": "alert", "type": "alert.status_updated",
 "payload": {"alert_id": "al-9", "url": "https://getmontecarlo.com/alerts/al-9",
  "alert_feedback": "work_in_progress", "declared_alert_severity": "SEV-2",
  "event_list": [{"table_name": "orders",
    "rule": {"rule_type": "freshness", "comparisons": [
      {"full_table_id": "my-proj:sales.orders", "threshold": "24"},
      {"full_table_id": "my-proj:sales.returns", "threshold": 24}]}}]}}"#;

#[tokio::test]
async fn legacy_incident_maps_to_incident_rows() {
    let mut t = transform().await;
    let out = t
        .run("events", events_batch(LEGACY.as_bytes()).unwrap())
        .await
        .unwrap();
    assert_eq!(rows(&out, "source"), [s("monte_carlo"), s("monte_carlo")]);
    assert_eq!(rows(&out, "external_id"), [s("inc-1"), s("inc-1")]);
    assert_eq!(
        rows(&out, "incident_type"),
        [s("custom_sql"), s("custom_rule_anomaly")]
    );
    assert_eq!(rows(&out, "severity"), [s("unknown"), s("unknown")]);
    assert_eq!(rows(&out, "status"), [s("open"), s("open")]);
    assert_eq!(
        rows(&out, "table_path"),
        [s("analytics/prod/client_txn"), None]
    );
    assert_eq!(
        rows(&out, "full_table_id"),
        [s("ANALYTICS:PROD.Client_Txn"), None]
    );
    assert_eq!(
        rows(&out, "event_key"),
        [
            s("inc-1|open_custom_rule_anomaly_incident|ANALYTICS:PROD.Client_Txn|open|-|-"),
            s("inc-1|open_custom_rule_anomaly_incident|-|open|-|-")
        ]
    );
    let payload: serde_json::Value =
        serde_json::from_str(rows(&out, "payload")[0].as_deref().unwrap()).unwrap();
    assert_eq!(payload["rule"]["comparisons"][0]["threshold"], 49.0);
}

#[tokio::test]
async fn alert_update_maps_feedback_and_severity() {
    let mut t = transform().await;
    let out = t
        .run("events", events_batch(ALERT.as_bytes()).unwrap())
        .await
        .unwrap();
    assert_eq!(rows(&out, "external_id"), [s("al-9"), s("al-9")]);
    assert_eq!(
        rows(&out, "incident_type"),
        [s("freshness"), s("freshness")]
    );
    assert_eq!(rows(&out, "severity"), [s("SEV-2"), s("SEV-2")]);
    assert_eq!(
        rows(&out, "status"),
        [s("investigating"), s("investigating")]
    );
    assert_eq!(
        rows(&out, "table_path"),
        [s("my-proj/sales/orders"), s("my-proj/sales/returns")]
    );
    assert_eq!(
        rows(&out, "url"),
        [
            s("https://getmontecarlo.com/alerts/al-9"),
            s("https://getmontecarlo.com/alerts/al-9")
        ]
    );
    // The transform is planned once and run per delivery.
    let resolved = ALERT
        .replace("alert.status_updated", "alert.resolved")
        .replace("\"work_in_progress\"", "null")
        .replace("\"SEV-2\"", "null");
    let out = t
        .run("events", events_batch(resolved.as_bytes()).unwrap())
        .await
        .unwrap();
    assert_eq!(rows(&out, "status"), [s("resolved"), s("resolved")]);
    assert_eq!(rows(&out, "severity"), [s("unknown"), s("unknown")]);
}

#[tokio::test]
async fn feedback_values_map_to_three_statuses() {
    let mut t = transform().await;
    for (feedback, status) in [
        ("investigating", "investigating"),
        ("no_status", "open"),
        ("work_in_progress", "investigating"),
        ("fixed", "resolved"),
        ("expected", "resolved"),
        ("no_action_needed", "resolved"),
        ("false_positive", "resolved"),
    ] {
        let body = ALERT.replace("work_in_progress", feedback);
        let out = t
            .run("events", events_batch(body.as_bytes()).unwrap())
            .await
            .unwrap();
        assert_eq!(rows(&out, "status")[0], s(status), "{feedback}");
    }
}
