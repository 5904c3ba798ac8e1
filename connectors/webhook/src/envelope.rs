//! The request body: the Standard Webhooks envelope around one record,
//! `{"type": …, "timestamp": …, "data": {…}}`.

use lily_delivery::Record;
use serde::Serialize;

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    /// When the change happened (its commit), not when it is sent: retries and replays carry
    /// the same body, so a receiver can order and deduplicate on it.
    timestamp: String,
    data: &'a serde_json::Map<String, serde_json::Value>,
}

/// The body for `record`, serialized once: these exact bytes are signed and sent.
pub(crate) fn encode(event_type: &str, record: &Record) -> Result<Vec<u8>, String> {
    let timestamp = rfc3339_micros(record.commit_ts_us).ok_or_else(|| {
        format!(
            "commit time {} µs since the epoch is outside the years 0000-9999 that RFC 3339 \
             can write",
            record.commit_ts_us
        )
    })?;
    serde_json::to_vec(&Envelope {
        event_type,
        timestamp,
        data: &record.fields,
    })
    .map_err(|e| format!("cannot encode the body as JSON: {e}"))
}

/// `micros` since the Unix epoch as RFC 3339 UTC with six fractional digits
/// (`2023-11-14T22:13:20.000001Z`); `None` outside years 0000-9999.
fn rfc3339_micros(micros: i64) -> Option<String> {
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(micros)?;
    (0..=9999)
        .contains(&chrono::Datelike::year(&t))
        .then(|| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lily_pgoutput::Lsn;

    /// Expected strings from Python:
    /// `(datetime(1970,1,1)+timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")`.
    #[test]
    fn formats_commit_time() {
        for (us, expected) in [
            (1_700_000_000_000_001, "2023-11-14T22:13:20.000001Z"),
            (0, "1970-01-01T00:00:00.000000Z"),
            (-1, "1969-12-31T23:59:59.999999Z"),
            (951_782_400_123_456, "2000-02-29T00:00:00.123456Z"),
            (253_402_300_799_999_999, "9999-12-31T23:59:59.999999Z"),
        ] {
            assert_eq!(rfc3339_micros(us).as_deref(), Some(expected), "{us}");
        }
        assert_eq!(rfc3339_micros(253_402_300_800_000_000), None);
        assert_eq!(rfc3339_micros(i64::MIN), None);
        assert_eq!(rfc3339_micros(i64::MAX), None);
    }

    #[test]
    fn envelope_shape() {
        let mut fields = serde_json::Map::new();
        fields.insert("guid".into(), "c-1".into());
        fields.insert("tags".into(), serde_json::json!(["pii"]));
        let record = Record {
            id: "p:0/1:0".into(),
            commit_lsn: Lsn(1),
            commit_ts_us: 1_700_000_000_000_001,
            key: None,
            fields,
        };
        let body = encode("metadata.column.tagged", &record).unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"type":"metadata.column.tagged","timestamp":"2023-11-14T22:13:20.000001Z","data":{"guid":"c-1","tags":["pii"]}}"#
        );
    }
}
