//! The fake sender against the verifier, the parser and the SQL: what the ingest server will
//! see from Monte Carlo, end to end without a server.

use std::collections::BTreeSet;

use arrow_array::cast::AsArray;
use arrow_array::Array;
use lily_montecarlo::fake::{
    Alert, AlertEvent, FakeMonteCarlo, Incident, IncidentEvent, Notification, Signing, Threshold,
};
use lily_montecarlo::payload::{events_batch, events_schema};
use lily_montecarlo::{authenticate, Authenticity, SignatureError};
use lily_transform::{SourceTable, Transform};

const SECRET: &[u8] = b"mc-webhook-secret";

fn strings(batch: &arrow_array::RecordBatch, name: &str) -> Vec<Option<String>> {
    let col = batch.column_by_name(name).unwrap().as_string::<i32>();
    (0..col.len())
        .map(|i| col.is_valid(i).then(|| col.value(i).to_string()))
        .collect()
}

fn notifications() -> Vec<Notification> {
    let mut incident = Incident::new(
        "acc-1",
        "inc-1",
        vec![
            IncidentEvent::custom_sql("r-1", "analytics:prod.client_txn"),
            IncidentEvent {
                table_name: Some("client txn ‘quoted’ é".into()),
                ..IncidentEvent::custom_sql("r-2", "analytics:prod.refunds")
            },
        ],
    );
    incident.group_id = None;
    let mut created = Alert::new("acc-1", "al-1", AlertEvent::Created, &["db:s.t"]);
    created.threshold = Threshold::Number(49.0);
    let mut investigating = Alert::new("acc-1", "al-1", AlertEvent::StatusUpdated, &["db:s.t"]);
    investigating.feedback = Some("investigating".into());
    investigating.owner = Some("dana@example.com".into());
    let mut fixed = investigating.clone();
    fixed.feedback = Some("fixed".into());
    fixed.severity = Some("SEV-3".into());
    vec![
        Notification::Incident(incident),
        Notification::Alert(created),
        Notification::Alert(investigating),
        Notification::Alert(fixed),
    ]
}

#[test]
fn signing_modes_against_the_verifier() {
    let fake = FakeMonteCarlo::new(SECRET);
    for n in notifications() {
        let signed = fake.deliver(&n, Signing::Signed);
        assert_eq!(
            authenticate(Some(SECRET), &signed.body, signed.signature.as_deref()),
            Ok(Authenticity::Signed)
        );
        let unsigned = fake.deliver(&n, Signing::Unsigned);
        assert_eq!(
            authenticate(Some(SECRET), &unsigned.body, None),
            Err(SignatureError::MissingHeader)
        );
        assert_eq!(
            authenticate(None, &unsigned.body, None),
            Ok(Authenticity::Unsigned)
        );
        for mode in [Signing::BadSignature, Signing::RawBodyMac] {
            let d = fake.deliver(&n, mode);
            let err = authenticate(Some(SECRET), &d.body, d.signature.as_deref()).unwrap_err();
            assert_eq!(err, SignatureError::Mismatch, "{mode:?}");
            assert_eq!(err.http_status(), 403);
        }
    }
}

#[test]
fn null_table_name_and_group_id_and_both_threshold_forms_parse() {
    let fake = FakeMonteCarlo::new(SECRET);
    let d = fake.deliver(&notifications()[0], Signing::Signed);
    let batch = events_batch(&d.body).unwrap();
    assert_eq!(strings(&batch, "group_id"), [None, None]);
    assert_eq!(
        strings(&batch, "table_name"),
        [None, Some("client txn ‘quoted’ é".into())]
    );
    assert_eq!(
        strings(&batch, "threshold"),
        [Some("49.0".into()), Some("49.0".into())]
    );
    let d = fake.deliver(&notifications()[1], Signing::Signed);
    assert_eq!(
        strings(&events_batch(&d.body).unwrap(), "threshold"),
        [Some("49.0".into())]
    );
    let d = fake.deliver(&notifications()[2], Signing::Signed);
    assert_eq!(
        strings(&events_batch(&d.body).unwrap(), "threshold"),
        [Some("49.0".into())]
    );
}

/// Duplicates collapse on event_key; distinct updates keep distinct keys, whatever the order.
#[tokio::test]
async fn duplicates_and_reordering_through_the_sql() {
    let sql =
        std::fs::read_to_string(manifest_dir().join("sql/monte_carlo_incidents.sql")).unwrap();
    let sources = [SourceTable {
        name: "events".into(),
        schema: events_schema(),
        filter: None,
    }];
    let mut transform = Transform::plan(&sql, &sources, &[]).await.unwrap();
    let fake = FakeMonteCarlo::new(SECRET);
    let notifications = notifications();
    let expected_keys: BTreeSet<String> = notifications
        .iter()
        .flat_map(|n| strings(&events_batch(&n.body()).unwrap(), "event_key"))
        .flatten()
        .collect();
    // Two incident rows (two tables) and one row per alert notification, all distinct.
    assert_eq!(expected_keys.len(), 5, "{expected_keys:#?}");
    for seed in 0..8 {
        let deliveries = fake.chaotic(&notifications, seed);
        assert!(deliveries.len() > notifications.len());
        let mut seen = BTreeSet::new();
        let mut statuses = Vec::new();
        for d in &deliveries {
            authenticate(Some(SECRET), &d.body, d.signature.as_deref()).unwrap();
            let out = transform
                .run("events", events_batch(&d.body).unwrap())
                .await
                .unwrap();
            for batch in &out {
                for (key, status) in strings(batch, "event_key")
                    .into_iter()
                    .zip(strings(batch, "status"))
                {
                    if seen.insert(key.unwrap()) {
                        statuses.push(status.unwrap());
                    }
                }
            }
        }
        assert_eq!(seen, expected_keys, "seed {seed}");
        assert_eq!(statuses.len(), 5);
        assert!(statuses.contains(&"resolved".to_string()));
        assert!(statuses.contains(&"investigating".to_string()));
    }
}

/// This package's directory, read when the test runs: a build directory shared between
/// checkouts may hold a binary compiled in another one, so the compile-time value could point
/// there.
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
}
