//! Monte Carlo notification bodies as an Arrow batch named `events`: one row per event of
//! `payload.event_list` and table it names, for `sql/monte_carlo_incidents.sql`.
//!
//! Two shapes arrive (both from secondary sources, see the reference notes):
//! - the legacy incident: `{"account": {"id"}, "action": "incident", "type":
//!   "open_custom_rule_anomaly_incident", "payload": {"incident_id", "url", "group_id",
//!   "event_list": [{"table_name", "rule": {"comparisons": [{"full_table_id", …}]}, "data"}]}}`;
//! - alert notifications (`alert.created`, `alert.status_updated`, …), which keep `account.id`,
//!   `action` and `payload.event_list[]` and add `alert_feedback`, `declared_alert_severity` and
//!   `owner`. Their id field is unverified, so `incident_id`, `alert_id` and `id` are all read.
//!
//! Unknown fields are ignored. What a row cannot do without (the account, the action, an id,
//! the event list) is required, and its absence is an error naming the field.

use std::sync::{Arc, OnceLock};

use arrow_array::builder::{StringBuilder, UInt32Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use lily_inbound::json::{self, JsonError, Obj};

/// The name SQL uses for the batch.
pub const TABLE: &str = "events";

/// Why a body was refused. All are permanent: the same body fails the same way, so the
/// server answers 4xx (Monte Carlo's retries, if any, would not help).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or a field the rows need is missing or of the wrong type (named in full).
    #[error(transparent)]
    Json(#[from] JsonError),
    /// Building the batch failed: a bug here, not a bad body.
    #[error("cannot build the events batch: {0}")]
    Arrow(String),
}

impl PayloadError {
    /// Always false: parsing the same body again gives the same answer.
    pub fn retryable(&self) -> bool {
        false
    }

    /// 400 for a body we cannot use, 500 for our own failure.
    pub fn http_status(&self) -> u16 {
        match self {
            PayloadError::Arrow(_) => 500,
            PayloadError::Json(_) => 400,
        }
    }
}

/// A Monte Carlo object id, `MCON++{account}++{resource}++{object_type}++{object_id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mcon {
    pub account_id: String,
    pub resource_id: String,
    pub object_type: String,
    /// For a table, its `full_table_id` (`database:schema.table`).
    pub object_id: String,
}

impl Mcon {
    /// `None` unless `text` has the prefix and five non-empty parts. The object id is the rest
    /// of the text, so an id containing `++` survives.
    pub fn parse(text: &str) -> Option<Mcon> {
        let mut parts = text.splitn(5, "++");
        if parts.next()? != "MCON" {
            return None;
        }
        let mut next = || parts.next().filter(|p| !p.is_empty()).map(str::to_string);
        Some(Mcon {
            account_id: next()?,
            resource_id: next()?,
            object_type: next()?,
            object_id: next()?,
        })
    }

    /// The table's `full_table_id` when this MCON names a table.
    pub fn full_table_id(&self) -> Option<&str> {
        (self.object_type == "table").then_some(self.object_id.as_str())
    }
}

/// A `full_table_id` taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    /// The database (BigQuery: the project); `None` for a bare `schema.table`.
    pub database: Option<String>,
    /// The schema (BigQuery: the dataset).
    pub schema: String,
    pub table: String,
}

impl TableRef {
    /// `database:schema.table` (BigQuery `project:dataset.table`, whose project may itself hold
    /// a `:`, as in `example.com:proj`, hence the last `:`), or dotted `database.schema.table` /
    /// `schema.table`. `None` for anything else.
    pub fn parse(full_table_id: &str) -> Option<TableRef> {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        if let Some((database, rest)) = full_table_id.rsplit_once(':') {
            let (schema, table) = rest.split_once('.')?;
            return Some(TableRef {
                database: Some(nonempty(database)?),
                schema: nonempty(schema)?,
                table: nonempty(table)?,
            });
        }
        let parts: Vec<&str> = full_table_id.split('.').collect();
        match parts.as_slice() {
            [database, schema, table] => Some(TableRef {
                database: Some(nonempty(database)?),
                schema: nonempty(schema)?,
                table: nonempty(table)?,
            }),
            [schema, table] => Some(TableRef {
                database: None,
                schema: nonempty(schema)?,
                table: nonempty(table)?,
            }),
            _ => None,
        }
    }
}

/// The columns of [`events_batch`], in order.
pub fn events_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
            Arc::new(Schema::new(vec![
                text("account_id", false),
                text("action", false),
                // The envelope's `type` (the `action` when there is none).
                text("event_type", false),
                // `payload.incident_id`, else `payload.alert_id`, else `payload.id`.
                text("incident_id", false),
                text("url", true),
                text("group_id", true),
                // Position in `payload.event_list`.
                Field::new("event_index", DataType::UInt32, false),
                // From the rule's comparisons, the event's own `full_table_id`, its MCON, or a
                // `table_name` of that form; null when the event names no table.
                text("full_table_id", true),
                // The event's `table_name` as sent.
                text("table_name", true),
                text("warehouse_database", true),
                text("schema_name", true),
                text("table_short_name", true),
                text("mcon", true),
                text("rule_uuid", true),
                text("rule_type", true),
                text("rule_description", true),
                // The comparison's `metric`, else `data.metric_display_name`.
                text("metric", true),
                text("operator", true),
                // Numeric (`49.0`) and string (`"49.0"`) thresholds both as text.
                text("threshold", true),
                // `declared_alert_severity` (`SEV-1`…`SEV-4`), null unless declared.
                text("severity", true),
                // `alert_feedback`, else derived from the event type: open, acknowledged,
                // resolved.
                text("status", false),
                text("owner", true),
                // The event object as JSON text.
                text("payload_json", false),
                // Dedupe key, see `event_key`.
                text("event_key", false),
            ]))
        })
        .clone()
}

/// Parses a notification body into the `events` batch (see [`events_schema`]).
pub fn events_batch(body: &[u8]) -> Result<RecordBatch, PayloadError> {
    let root = json::parse(body)?;
    let root = Obj::root(&root)?;
    let account_id = root.req_obj("account")?.req_text("id")?;
    let action = root.req_text("action")?;
    let event_type = root.opt_text("type")?.unwrap_or_else(|| action.clone());
    let payload = root.req_obj("payload")?;
    let incident_id = ["incident_id", "alert_id", "id"]
        .iter()
        .find_map(|key| payload.opt_text(key).transpose())
        .transpose()?
        .ok_or_else(|| JsonError::Missing("payload.incident_id (or payload.alert_id)".into()))?;
    let url = payload.opt_text("url")?;
    let group_id = payload.opt_text("group_id")?;
    let events = payload.req_array("event_list")?;

    let mut rows = Rows::default();
    for (index, event) in events.iter().enumerate() {
        let event = Obj::at(event, format!("{}[{index}]", payload.child("event_list")))?;
        // Alert state may sit on the event or on the payload; the event's wins.
        let alert_field = |key: &str| -> Result<Option<String>, PayloadError> {
            Ok(match event.opt_text(key)? {
                Some(v) => Some(v),
                None => payload.opt_text(key)?,
            })
        };
        let severity = alert_field("declared_alert_severity")?;
        let owner = alert_field("owner")?;
        let status = alert_field("alert_feedback")?
            .unwrap_or_else(|| derived_status(&event_type).to_string());
        let table_name = event.opt_text("table_name")?;
        let rule = event.opt_obj("rule")?;
        let data = event.opt_obj("data")?;
        let metric_display_name = match &data {
            Some(d) => d.opt_text("metric_display_name")?,
            None => None,
        };
        let data_comparisons = match &data {
            Some(d) => d.opt_array("rule_comparisons")?.unwrap_or_default(),
            None => &[],
        };
        let event_mcon = match event.opt_text("mcon")? {
            Some(m) => Some(m),
            None => event.opt_text("table_mcon")?,
        };

        // The tables this event is about, each with the comparison that named it.
        let mut tables: Vec<Table> = Vec::new();
        if let Some(rule) = &rule {
            let comparisons = rule.opt_array("comparisons")?.unwrap_or_default();
            for (j, comparison) in comparisons.iter().enumerate() {
                let c = Obj::at(comparison, format!("{}[{j}]", rule.child("comparisons")))?;
                let mcon = c.opt_text("mcon")?;
                let id = match c.opt_text("full_table_id")? {
                    Some(id) => Some(id),
                    None => mcon
                        .as_deref()
                        .and_then(Mcon::parse)
                        .and_then(|m| m.full_table_id().map(str::to_string)),
                };
                let Some(id) = id else { continue };
                let threshold = match threshold(&c)? {
                    Some(t) => Some(t),
                    None => match data_comparisons.get(j) {
                        Some(v) => threshold(&Obj::at(
                            v,
                            format!("{}.rule_comparisons[{j}]", event.child("data")),
                        )?)?,
                        None => None,
                    },
                };
                push_table(
                    &mut tables,
                    Table {
                        full_table_id: Some(id),
                        mcon,
                        metric: c.opt_text("metric")?,
                        operator: c.opt_text("operator")?,
                        threshold,
                    },
                );
            }
        }
        let other_ids = [
            event.opt_text("full_table_id")?,
            event_mcon
                .as_deref()
                .and_then(Mcon::parse)
                .and_then(|m| m.full_table_id().map(str::to_string)),
            table_name
                .clone()
                .filter(|t| t.contains(':') && TableRef::parse(t).is_some()),
        ];
        for id in other_ids.into_iter().flatten() {
            push_table(
                &mut tables,
                Table {
                    full_table_id: Some(id),
                    ..Table::default()
                },
            );
        }
        if tables.is_empty() {
            tables.push(Table::default());
        }

        let payload_json = serde_json::to_string(event.map())
            .map_err(|e| PayloadError::Arrow(format!("re-serialising the event failed: {e}")))?;
        for table in tables {
            let parts = table.full_table_id.as_deref().and_then(TableRef::parse);
            let key = event_key(
                &incident_id,
                &event_type,
                table.full_table_id.as_deref(),
                &status,
                severity.as_deref(),
                owner.as_deref(),
            );
            rows.account_id.append_value(&account_id);
            rows.action.append_value(&action);
            rows.event_type.append_value(&event_type);
            rows.incident_id.append_value(&incident_id);
            rows.url.append_option(url.as_deref());
            rows.group_id.append_option(group_id.as_deref());
            rows.event_index
                .append_value(u32::try_from(index).unwrap_or(u32::MAX));
            rows.full_table_id
                .append_option(table.full_table_id.as_deref());
            rows.table_name.append_option(table_name.as_deref());
            rows.warehouse_database
                .append_option(parts.as_ref().and_then(|p| p.database.as_deref()));
            rows.schema_name
                .append_option(parts.as_ref().map(|p| p.schema.as_str()));
            rows.table_short_name
                .append_option(parts.as_ref().map(|p| p.table.as_str()));
            rows.mcon
                .append_option(table.mcon.as_deref().or(event_mcon.as_deref()));
            let rule_field = |key: &str| -> Result<Option<String>, PayloadError> {
                match &rule {
                    Some(r) => Ok(r.opt_text(key)?),
                    None => Ok(None),
                }
            };
            rows.rule_uuid.append_option(rule_field("uuid")?);
            rows.rule_type.append_option(rule_field("rule_type")?);
            rows.rule_description
                .append_option(rule_field("description")?);
            rows.metric
                .append_option(table.metric.as_deref().or(metric_display_name.as_deref()));
            rows.operator.append_option(table.operator.as_deref());
            rows.threshold.append_option(table.threshold.as_deref());
            rows.severity.append_option(severity.as_deref());
            rows.status.append_value(&status);
            rows.owner.append_option(owner.as_deref());
            rows.payload_json.append_value(&payload_json);
            rows.event_key.append_value(&key);
        }
    }
    rows.finish()
}

/// What a delivery is about, for `lily.inbound_events`: the same for a redelivery, different
/// for a real change. Monte Carlo documents neither retries nor ordering, so the key is the
/// incident or alert id, the event type and the table (the reference's advice), plus the state
/// an update changes (status, severity, owner): without those, the second `alert.status_updated`
/// of an alert would look like a redelivery of the first and be dropped.
fn event_key(
    id: &str,
    event_type: &str,
    table: Option<&str>,
    status: &str,
    severity: Option<&str>,
    owner: Option<&str>,
) -> String {
    format!(
        "{id}|{event_type}|{}|{status}|{}|{}",
        table.unwrap_or("-"),
        severity.unwrap_or("-"),
        owner.unwrap_or("-")
    )
}

/// The status an event implies when it carries no `alert_feedback`.
fn derived_status(event_type: &str) -> &'static str {
    let t = event_type.to_ascii_lowercase();
    if t.ends_with("resolved") || t.starts_with("resolved_") || t.starts_with("close") {
        "resolved"
    } else if t == "alert.acknowledged" {
        "acknowledged"
    } else {
        "open"
    }
}

/// A threshold in either form: `49.0` (number, as JSON prints it) or `"49.0"`.
fn threshold(comparison: &Obj<'_>) -> Result<Option<String>, PayloadError> {
    Ok(comparison.opt_text("threshold")?)
}

#[derive(Default)]
struct Table {
    full_table_id: Option<String>,
    mcon: Option<String>,
    metric: Option<String>,
    operator: Option<String>,
    threshold: Option<String>,
}

/// Adds a table unless it is already listed (several comparisons can name one table).
fn push_table(tables: &mut Vec<Table>, table: Table) {
    if !tables
        .iter()
        .any(|t| t.full_table_id == table.full_table_id)
    {
        tables.push(table);
    }
}

#[derive(Default)]
struct Rows {
    account_id: StringBuilder,
    action: StringBuilder,
    event_type: StringBuilder,
    incident_id: StringBuilder,
    url: StringBuilder,
    group_id: StringBuilder,
    event_index: UInt32Builder,
    full_table_id: StringBuilder,
    table_name: StringBuilder,
    warehouse_database: StringBuilder,
    schema_name: StringBuilder,
    table_short_name: StringBuilder,
    mcon: StringBuilder,
    rule_uuid: StringBuilder,
    rule_type: StringBuilder,
    rule_description: StringBuilder,
    metric: StringBuilder,
    operator: StringBuilder,
    threshold: StringBuilder,
    severity: StringBuilder,
    status: StringBuilder,
    owner: StringBuilder,
    payload_json: StringBuilder,
    event_key: StringBuilder,
}

impl Rows {
    fn finish(mut self) -> Result<RecordBatch, PayloadError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.account_id.finish()),
            Arc::new(self.action.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.incident_id.finish()),
            Arc::new(self.url.finish()),
            Arc::new(self.group_id.finish()),
            Arc::new(self.event_index.finish()),
            Arc::new(self.full_table_id.finish()),
            Arc::new(self.table_name.finish()),
            Arc::new(self.warehouse_database.finish()),
            Arc::new(self.schema_name.finish()),
            Arc::new(self.table_short_name.finish()),
            Arc::new(self.mcon.finish()),
            Arc::new(self.rule_uuid.finish()),
            Arc::new(self.rule_type.finish()),
            Arc::new(self.rule_description.finish()),
            Arc::new(self.metric.finish()),
            Arc::new(self.operator.finish()),
            Arc::new(self.threshold.finish()),
            Arc::new(self.severity.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.owner.finish()),
            Arc::new(self.payload_json.finish()),
            Arc::new(self.event_key.finish()),
        ];
        RecordBatch::try_new(events_schema(), columns)
            .map_err(|e| PayloadError::Arrow(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    use serde_json::Value;

    fn column(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
        let col = batch.column_by_name(name).unwrap().as_string::<i32>();
        (0..col.len())
            .map(|i| col.is_valid(i).then(|| col.value(i).to_string()))
            .collect()
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    const LEGACY: &str = r#"{"account": {"id": "acc-1"}, "action": "incident",
        "type": "open_custom_rule_anomaly_incident", "version": "v0.1",
        "payload": {"incident_id": "inc-1", "url": "https://getmontecarlo.com/incidents/inc-1",
          "group_id": null, "unknown": {"x": 1},
          "event_list": [{"table_name": null,
            "rule": {"uuid": "r-1", "rule_type": "custom_sql", "description": "Too many",
              "comparisons": [{"full_table_id": "analytics:prod.client_txn", "metric": "custom_sql",
                "operator": "GT", "threshold": 49.0}]},
            "data": {"metric_display_name": "Custom SQL",
              "hits": [{"measurement_timestamp": "Jan 15, 06:10PM", "value": "50.0"}],
              "rule_comparisons": [{"operator": ">", "threshold": "49.0"}]}}]}}"#;

    #[test]
    fn legacy_incident_row() {
        let batch = events_batch(LEGACY.as_bytes()).unwrap();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.schema(), events_schema());
        assert_eq!(column(&batch, "incident_id"), [s("inc-1")]);
        assert_eq!(column(&batch, "group_id"), [None]);
        assert_eq!(column(&batch, "table_name"), [None]);
        assert_eq!(
            column(&batch, "full_table_id"),
            [s("analytics:prod.client_txn")]
        );
        assert_eq!(column(&batch, "warehouse_database"), [s("analytics")]);
        assert_eq!(column(&batch, "schema_name"), [s("prod")]);
        assert_eq!(column(&batch, "table_short_name"), [s("client_txn")]);
        assert_eq!(column(&batch, "threshold"), [s("49.0")]);
        assert_eq!(column(&batch, "metric"), [s("custom_sql")]);
        assert_eq!(column(&batch, "severity"), [None]);
        assert_eq!(column(&batch, "status"), [s("open")]);
        assert_eq!(
            column(&batch, "event_key"),
            [s(
                "inc-1|open_custom_rule_anomaly_incident|analytics:prod.client_txn|open|-|-"
            )]
        );
        let event: Value =
            serde_json::from_str(column(&batch, "payload_json")[0].as_deref().unwrap()).unwrap();
        assert_eq!(event["rule"]["uuid"], "r-1");
    }

    #[test]
    fn missing_fields_are_named() {
        let cases = [
            (r#"{"action": "a", "payload": {}}"#, "`account` is missing"),
            (
                r#"{"account": {}, "action": "a"}"#,
                "`account.id` is missing",
            ),
            (
                r#"{"account": {"id": "x"}, "payload": {}}"#,
                "`action` is missing",
            ),
            (
                r#"{"account": {"id": "x"}, "action": "a", "payload": {"event_list": []}}"#,
                "`payload.incident_id (or payload.alert_id)` is missing",
            ),
            (
                r#"{"account": {"id": "x"}, "action": "a", "payload": {"id": 7}}"#,
                "`payload.event_list` is missing",
            ),
            (
                r#"{"account": {"id": "x"}, "action": "a", "payload": {"id": 7, "event_list": [3]}}"#,
                "`payload.event_list[0]` must be an object",
            ),
            (
                r#"{"account": {"id": "x"}, "action": "a", "payload": {"id": 7, "event_list": [
                    {"rule": {"comparisons": [{"full_table_id": ["a"]}]}}]}}"#,
                "`payload.event_list[0].rule.comparisons[0].full_table_id` must be a string",
            ),
            ("[]", "`(the body)` must be a JSON object"),
        ];
        for (body, expected) in cases {
            let err = events_batch(body.as_bytes()).unwrap_err();
            assert_eq!(err.to_string(), expected, "{body}");
            assert_eq!(err.http_status(), 400);
            assert!(!err.retryable());
        }
        assert!(matches!(
            events_batch(b"{nope"),
            Err(PayloadError::Json(JsonError::Syntax(_)))
        ));
    }

    #[test]
    fn tables_from_every_source_deduplicated() {
        let body = r#"{"account": {"id": "a"}, "action": "alert", "type": "alert.created",
          "payload": {"alert_id": "al-1", "declared_alert_severity": "SEV-1",
            "event_list": [
              {"table_name": "db:s.t1",
               "mcon": "MCON++a++r++table++db:s.t2",
               "rule": {"comparisons": [{"full_table_id": "db:s.t1"}, {"full_table_id": "db:s.t1"},
                                        {"metric": "no table"}]}},
              {"table_name": "orphan", "alert_feedback": "fixed"}]}}"#;
        let batch = events_batch(body.as_bytes()).unwrap();
        assert_eq!(
            column(&batch, "full_table_id"),
            [s("db:s.t1"), s("db:s.t2"), None]
        );
        assert_eq!(
            column(&batch, "severity"),
            [s("SEV-1"), s("SEV-1"), s("SEV-1")]
        );
        assert_eq!(column(&batch, "status"), [s("open"), s("open"), s("fixed")]);
        assert_eq!(
            column(&batch, "mcon"),
            [
                s("MCON++a++r++table++db:s.t2"),
                s("MCON++a++r++table++db:s.t2"),
                None
            ]
        );
        assert_eq!(column(&batch, "table_name")[2], s("orphan"));
        assert_eq!(column(&batch, "table_short_name")[2], None);
        assert_eq!(
            column(&batch, "event_key")[2],
            s("al-1|alert.created|-|fixed|SEV-1|-")
        );
    }

    #[test]
    fn derived_statuses() {
        assert_eq!(derived_status("alert.resolved"), "resolved");
        assert_eq!(derived_status("alert.acknowledged"), "acknowledged");
        assert_eq!(
            derived_status("close_custom_rule_anomaly_incident"),
            "resolved"
        );
        assert_eq!(derived_status("alert.created"), "open");
    }

    #[test]
    fn mcon_and_table_refs() {
        let m = Mcon::parse("MCON++acc++res++table++analytics:prod.client_txn").unwrap();
        assert_eq!(m.account_id, "acc");
        assert_eq!(m.resource_id, "res");
        assert_eq!(m.full_table_id(), Some("analytics:prod.client_txn"));
        let view = Mcon::parse("MCON++acc++res++view++x++y").unwrap();
        assert_eq!(view.object_id, "x++y");
        assert_eq!(view.full_table_id(), None);
        for bad in [
            "",
            "MCON",
            "MCON++a++b++table",
            "MCON++a++++table++x",
            "mcon++a++b++c++d",
        ] {
            assert_eq!(Mcon::parse(bad), None, "{bad}");
        }
        let t = |db: Option<&str>, s: &str, t: &str| TableRef {
            database: db.map(str::to_string),
            schema: s.into(),
            table: t.into(),
        };
        assert_eq!(
            TableRef::parse("analytics:prod.client_txn"),
            Some(t(Some("analytics"), "prod", "client_txn"))
        );
        assert_eq!(
            TableRef::parse("example.com:proj:dataset.tbl"),
            Some(t(Some("example.com:proj"), "dataset", "tbl"))
        );
        assert_eq!(
            TableRef::parse("DB.SCH.TBL"),
            Some(t(Some("DB"), "SCH", "TBL"))
        );
        assert_eq!(TableRef::parse("sch.tbl"), Some(t(None, "sch", "tbl")));
        for bad in ["tbl", ":s.t", "db:st", "db:.t", "a.b.c.d", "db:s."] {
            assert_eq!(TableRef::parse(bad), None, "{bad}");
        }
    }
}
