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
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return None;
    }
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    ))
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01, after Howard
/// Hinnant's `civil_from_days`: shift to 0000-03-01 so the leap day ends the year, then split
/// into 400-year eras of 146097 days. Written out here rather than pulling in a date crate for
/// one formatting call.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
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
