//! Monte Carlo as a sender, for tests here and in the ingest server: notification bodies in
//! both shapes, signed like the reference code (or unsigned, or wrongly), delivered with
//! duplicates and out of order.
//!
//! Bodies are serialised from structs in wire order (`account`, `action`, `type`, …), not
//! sorted, so a verifier that sorts keys fails against them, as it would against Monte Carlo.

use serde::{Serialize, Serializer};

use crate::signature::{sign, HEADER};

/// One webhook call: the body and the `x-mcd-signature` value, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub body: Vec<u8>,
    pub signature: Option<String>,
}

impl Delivery {
    /// The signature as a `(name, value)` header.
    pub fn header(&self) -> Option<(&'static str, &str)> {
        self.signature.as_deref().map(|s| (HEADER, s))
    }
}

/// How a delivery is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// As Monte Carlo's reference code signs.
    Signed,
    /// No header (a webhook without a secret).
    Unsigned,
    /// A valid signature with one hex digit changed.
    BadSignature,
    /// HMAC-SHA512 over the raw body: the mistake a verifier must not accept.
    RawBodyMac,
}

/// A rule threshold. Monte Carlo sends both forms: a number in `rule.comparisons[]`, a string
/// in `data.rule_comparisons[]`.
#[derive(Debug, Clone, PartialEq)]
pub enum Threshold {
    Number(f64),
    Text(String),
}

impl Serialize for Threshold {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Threshold::Number(n) => s.serialize_f64(*n),
            Threshold::Text(t) => s.serialize_str(t),
        }
    }
}

/// One breached comparison of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// `database:schema.table`.
    pub full_table_id: String,
    pub metric: String,
    /// `GT`, `LT`, …
    pub operator: String,
    pub threshold: Threshold,
}

/// One entry of a legacy incident's `event_list`.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentEvent {
    /// Often null in real payloads.
    pub table_name: Option<String>,
    pub rule_uuid: String,
    pub rule_type: String,
    pub description: String,
    pub comparisons: Vec<Comparison>,
    pub metric_display_name: String,
    /// `(measurement_timestamp, value)`, both display text such as `("Jan 15, 06:10PM",
    /// "50.0")`.
    pub hits: Vec<(String, String)>,
    /// `data.rule_comparisons[].threshold`, which Monte Carlo sends as text.
    pub display_threshold: Threshold,
}

impl IncidentEvent {
    /// A custom SQL rule breached on one table, like Monte Carlo's example: numeric threshold
    /// 49.0 in the rule, `"49.0"` in the display data, `table_name` null.
    pub fn custom_sql(rule_uuid: &str, full_table_id: &str) -> Self {
        IncidentEvent {
            table_name: None,
            rule_uuid: rule_uuid.into(),
            rule_type: "custom_sql".into(),
            description: "Too many failed client transactions".into(),
            comparisons: vec![Comparison {
                full_table_id: full_table_id.into(),
                metric: "custom_sql".into(),
                operator: "GT".into(),
                threshold: Threshold::Number(49.0),
            }],
            metric_display_name: "Custom SQL".into(),
            hits: vec![("Jan 15, 06:10PM".into(), "50.0".into())],
            display_threshold: Threshold::Text("49.0".into()),
        }
    }
}

/// A legacy incident notification (`"action": "incident"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub account_id: String,
    pub incident_id: String,
    /// E.g. `open_custom_rule_anomaly_incident`.
    pub incident_type: String,
    /// May be null.
    pub group_id: Option<String>,
    pub events: Vec<IncidentEvent>,
}

impl Incident {
    pub fn new(account_id: &str, incident_id: &str, events: Vec<IncidentEvent>) -> Self {
        Incident {
            account_id: account_id.into(),
            incident_id: incident_id.into(),
            incident_type: "open_custom_rule_anomaly_incident".into(),
            group_id: None,
            events,
        }
    }
}

/// Alert notification events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertEvent {
    Created,
    Acknowledged,
    StatusUpdated,
    OwnerChanged,
    ExternalTicketAttached,
    MarkedIncident,
    UnmarkedIncident,
    Resolved,
}

impl AlertEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEvent::Created => "alert.created",
            AlertEvent::Acknowledged => "alert.acknowledged",
            AlertEvent::StatusUpdated => "alert.status_updated",
            AlertEvent::OwnerChanged => "alert.owner_changed",
            AlertEvent::ExternalTicketAttached => "alert.external_ticket_attached",
            AlertEvent::MarkedIncident => "alert.marked_incident",
            AlertEvent::UnmarkedIncident => "alert.unmarked_incident",
            AlertEvent::Resolved => "alert.resolved",
        }
    }
}

/// An alert notification. Its field names beyond the envelope are unverified (see the
/// reference notes); the id goes out as `payload.alert_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub account_id: String,
    pub alert_id: String,
    pub event: AlertEvent,
    /// `alert_feedback`: `investigating`, `no_status`, `work_in_progress`, `fixed`, …
    pub feedback: Option<String>,
    /// `declared_alert_severity`, `SEV-1`…`SEV-4`.
    pub severity: Option<String>,
    pub owner: Option<String>,
    /// `full_table_id`s, one event each; `table_name` is sent null.
    pub tables: Vec<String>,
    /// Threshold of each table's comparison, in whichever form the test wants.
    pub threshold: Threshold,
}

impl Alert {
    pub fn new(account_id: &str, alert_id: &str, event: AlertEvent, tables: &[&str]) -> Self {
        Alert {
            account_id: account_id.into(),
            alert_id: alert_id.into(),
            event,
            feedback: None,
            severity: None,
            owner: None,
            tables: tables.iter().map(|t| t.to_string()).collect(),
            threshold: Threshold::Text("49.0".into()),
        }
    }
}

/// Anything Monte Carlo sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    Incident(Incident),
    Alert(Alert),
}

impl Notification {
    /// The JSON body, keys in wire order.
    pub fn body(&self) -> Vec<u8> {
        let result = match self {
            Notification::Incident(i) => serde_json::to_vec(&wire_incident(i)),
            Notification::Alert(a) => serde_json::to_vec(&wire_alert(a)),
        };
        result.expect("the wire structs serialise")
    }
}

/// Builds deliveries under one secret.
#[derive(Debug, Clone)]
pub struct FakeMonteCarlo {
    secret: Vec<u8>,
}

impl FakeMonteCarlo {
    /// A sender signing with `secret` (non-empty).
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        FakeMonteCarlo {
            secret: secret.into(),
        }
    }

    pub fn deliver(&self, notification: &Notification, signing: Signing) -> Delivery {
        let body = notification.body();
        let signature = match signing {
            Signing::Unsigned => None,
            Signing::Signed => Some(self.sign(&body)),
            Signing::BadSignature => {
                let mut sig = self.sign(&body).into_bytes();
                sig[0] = if sig[0] == b'0' { b'1' } else { b'0' };
                Some(String::from_utf8(sig).expect("hex is ASCII"))
            }
            Signing::RawBodyMac => {
                use hmac::{Hmac, KeyInit, Mac};
                let mut mac = <Hmac<sha2::Sha512>>::new_from_slice(&self.secret)
                    .expect("HMAC accepts keys of any length");
                mac.update(&body);
                Some(
                    mac.finalize()
                        .into_bytes()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                )
            }
        };
        Delivery { body, signature }
    }

    /// Every notification, signed, the way an at-least-once sender with no ordering promise
    /// might deliver them: some twice, some swapped with their neighbour. Deterministic for a
    /// `seed`; there is always at least one duplicate and, with two or more notifications, at
    /// least one swap.
    pub fn chaotic(&self, notifications: &[Notification], seed: u64) -> Vec<Delivery> {
        let mut rng = SplitMix(seed);
        let mut order: Vec<usize> = Vec::new();
        for i in 0..notifications.len() {
            order.push(i);
            if rng.next().is_multiple_of(3) {
                order.push(i);
            }
        }
        if !notifications.is_empty() && order.len() == notifications.len() {
            order.insert(1, 0);
        }
        let mut swapped = false;
        let mut k = 0;
        while k + 1 < order.len() {
            if order[k] != order[k + 1] && rng.next().is_multiple_of(2) {
                order.swap(k, k + 1);
                swapped = true;
                k += 2;
            } else {
                k += 1;
            }
        }
        if !swapped && notifications.len() >= 2 {
            let n = order.len();
            if let Some(k) = (0..n - 1).rev().find(|&k| order[k] != order[k + 1]) {
                order.swap(k, k + 1);
            }
        }
        order
            .into_iter()
            .map(|i| self.deliver(&notifications[i], Signing::Signed))
            .collect()
    }

    fn sign(&self, body: &[u8]) -> String {
        sign(&self.secret, body).expect("the fake signs its own JSON object bodies with a secret")
    }
}

/// A small deterministic generator, so tests need no `rand`.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

// Wire structs: declaration order is the order of keys in the body.

#[derive(Serialize)]
struct Wire<'a, P> {
    account: WireAccount<'a>,
    action: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    payload: P,
}

#[derive(Serialize)]
struct WireAccount<'a> {
    id: &'a str,
}

#[derive(Serialize)]
struct WireIncidentPayload<'a> {
    incident_id: &'a str,
    url: String,
    group_id: Option<&'a str>,
    event_list: Vec<WireIncidentEvent<'a>>,
}

#[derive(Serialize)]
struct WireIncidentEvent<'a> {
    table_name: Option<&'a str>,
    rule: WireRule<'a>,
    data: WireData<'a>,
}

#[derive(Serialize)]
struct WireRule<'a> {
    uuid: &'a str,
    rule_type: &'a str,
    description: &'a str,
    comparisons: Vec<WireComparison<'a>>,
}

#[derive(Serialize)]
struct WireComparison<'a> {
    full_table_id: &'a str,
    metric: &'a str,
    operator: &'a str,
    threshold: &'a Threshold,
}

#[derive(Serialize)]
struct WireData<'a> {
    metric_display_name: &'a str,
    hits: Vec<WireHit<'a>>,
    rule_comparisons: Vec<WireDataComparison<'a>>,
}

#[derive(Serialize)]
struct WireHit<'a> {
    measurement_timestamp: &'a str,
    value: &'a str,
    value_rounded: String,
}

#[derive(Serialize)]
struct WireDataComparison<'a> {
    operator: &'a str,
    threshold: &'a Threshold,
}

#[derive(Serialize)]
struct WireAlertPayload<'a> {
    alert_id: &'a str,
    url: String,
    alert_feedback: Option<&'a str>,
    declared_alert_severity: Option<&'a str>,
    owner: Option<&'a str>,
    event_list: Vec<WireAlertEvent<'a>>,
}

#[derive(Serialize)]
struct WireAlertEvent<'a> {
    table_name: Option<&'a str>,
    rule: WireAlertRule<'a>,
}

#[derive(Serialize)]
struct WireAlertRule<'a> {
    comparisons: Vec<WireAlertComparison<'a>>,
}

#[derive(Serialize)]
struct WireAlertComparison<'a> {
    full_table_id: &'a str,
    threshold: &'a Threshold,
}

fn wire_incident(i: &Incident) -> Wire<'_, WireIncidentPayload<'_>> {
    Wire {
        account: WireAccount { id: &i.account_id },
        action: "incident",
        kind: &i.incident_type,
        version: Some("v0.1"),
        payload: WireIncidentPayload {
            incident_id: &i.incident_id,
            url: format!("https://getmontecarlo.com/incidents/{}", i.incident_id),
            group_id: i.group_id.as_deref(),
            event_list: i
                .events
                .iter()
                .map(|e| WireIncidentEvent {
                    table_name: e.table_name.as_deref(),
                    rule: WireRule {
                        uuid: &e.rule_uuid,
                        rule_type: &e.rule_type,
                        description: &e.description,
                        comparisons: e
                            .comparisons
                            .iter()
                            .map(|c| WireComparison {
                                full_table_id: &c.full_table_id,
                                metric: &c.metric,
                                operator: &c.operator,
                                threshold: &c.threshold,
                            })
                            .collect(),
                    },
                    data: WireData {
                        metric_display_name: &e.metric_display_name,
                        hits: e
                            .hits
                            .iter()
                            .map(|(ts, value)| WireHit {
                                measurement_timestamp: ts,
                                value,
                                value_rounded: value.split('.').next().unwrap_or(value).to_string(),
                            })
                            .collect(),
                        rule_comparisons: e
                            .comparisons
                            .iter()
                            .map(|_| WireDataComparison {
                                operator: ">",
                                threshold: &e.display_threshold,
                            })
                            .collect(),
                    },
                })
                .collect(),
        },
    }
}

fn wire_alert(a: &Alert) -> Wire<'_, WireAlertPayload<'_>> {
    Wire {
        account: WireAccount { id: &a.account_id },
        action: "alert",
        kind: a.event.as_str(),
        version: None,
        payload: WireAlertPayload {
            alert_id: &a.alert_id,
            url: format!("https://getmontecarlo.com/alerts/{}", a.alert_id),
            alert_feedback: a.feedback.as_deref(),
            declared_alert_severity: a.severity.as_deref(),
            owner: a.owner.as_deref(),
            event_list: a
                .tables
                .iter()
                .map(|t| WireAlertEvent {
                    table_name: None,
                    rule: WireAlertRule {
                        comparisons: vec![WireAlertComparison {
                            full_table_id: t,
                            threshold: &a.threshold,
                        }],
                    },
                })
                .collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{verify, SignatureError};

    fn incident() -> Notification {
        Notification::Incident(Incident::new(
            "acc",
            "inc-1",
            vec![IncidentEvent::custom_sql(
                "r-1",
                "analytics:prod.client_txn",
            )],
        ))
    }

    #[test]
    fn body_keeps_wire_order_and_both_threshold_forms() {
        let body = String::from_utf8(incident().body()).unwrap();
        assert!(body.starts_with(r#"{"account":{"id":"acc"},"action":"incident","type":"#));
        assert!(body.contains(r#""group_id":null"#), "{body}");
        assert!(body.contains(r#""table_name":null"#), "{body}");
        assert!(body.contains(r#""threshold":49.0"#), "{body}");
        assert!(body.contains(r#""threshold":"49.0""#), "{body}");
    }

    #[test]
    fn signing_modes() {
        let fake = FakeMonteCarlo::new("s3cret");
        let n = incident();
        let ok = fake.deliver(&n, Signing::Signed);
        verify(b"s3cret", &ok.body, ok.signature.as_deref()).unwrap();
        assert_eq!(ok.header().unwrap().0, "x-mcd-signature");
        let none = fake.deliver(&n, Signing::Unsigned);
        assert_eq!(none.header(), None);
        assert_eq!(
            verify(b"s3cret", &none.body, None),
            Err(SignatureError::MissingHeader)
        );
        for mode in [Signing::BadSignature, Signing::RawBodyMac] {
            let d = fake.deliver(&n, mode);
            assert_eq!(
                verify(b"s3cret", &d.body, d.signature.as_deref()),
                Err(SignatureError::Mismatch),
                "{mode:?}"
            );
        }
    }

    #[test]
    fn chaos_duplicates_and_reorders_but_loses_nothing() {
        let fake = FakeMonteCarlo::new("k");
        let notifications: Vec<Notification> = (0..6)
            .map(|i| {
                Notification::Alert(Alert::new(
                    "acc",
                    &format!("al-{i}"),
                    AlertEvent::StatusUpdated,
                    &["db:s.t"],
                ))
            })
            .collect();
        for seed in 0..20 {
            let out = fake.chaotic(&notifications, seed);
            let bodies: Vec<Vec<u8>> = notifications.iter().map(Notification::body).collect();
            let positions: Vec<usize> = out
                .iter()
                .map(|d| bodies.iter().position(|b| *b == d.body).unwrap())
                .collect();
            assert!(out.len() > notifications.len(), "seed {seed}: no duplicate");
            assert!(
                (0..6).all(|i| positions.contains(&i)),
                "seed {seed}: lost one"
            );
            assert!(
                positions.windows(2).any(|w| w[0] > w[1]),
                "seed {seed}: in order {positions:?}"
            );
        }
    }
}
