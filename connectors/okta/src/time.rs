//! RFC 3339 times, as Okta writes `published` (`2024-01-15T18:10:00.123Z`), to and from
//! microseconds since the Unix epoch (what a timestamp column holds).

use chrono::{DateTime, SecondsFormat, Utc};

/// Microseconds since 1970-01-01T00:00:00Z for `YYYY-MM-DD(T| )hh:mm:ss[.fraction](Z|±hh:mm)`.
/// Digits past the microsecond are dropped; a leap second counts into the next minute. `None` if
/// malformed.
pub(crate) fn parse_rfc3339(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// `YYYY-MM-DDThh:mm:ss.mmmZ`, Okta's own form (milliseconds).
#[cfg_attr(not(any(test, feature = "fake")), allow(dead_code))]
pub(crate) fn format_rfc3339_millis(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_okta_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-01-15T18:10:00.123Z"),
            Some(1_705_342_200_123_000)
        );
        assert_eq!(
            parse_rfc3339("2024-01-15T18:10:00.123456789Z"),
            Some(1_705_342_200_123_456)
        );
        assert_eq!(
            parse_rfc3339("2024-01-15T20:10:00.5+02:00"),
            Some(1_705_342_200_500_000)
        );
        assert_eq!(
            parse_rfc3339("2024-01-15 16:40:00-01:30"),
            Some(1_705_342_200_000_000)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000_000)
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.999Z"), Some(-1000));
        assert_eq!(
            parse_rfc3339("2016-12-31T23:59:60.5Z"),
            parse_rfc3339("2017-01-01T00:00:00.5Z")
        );
        assert_eq!(
            parse_rfc3339("2024-01-15t18:10:00z"),
            Some(1_705_342_200_000_000)
        );
    }

    #[test]
    fn refuses_malformed_times() {
        for bad in [
            "",
            "2024-01-15",
            "2024-01-15T18:10:00",
            "2024-01-15T18:10:00.Z",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-15T24:00:00Z",
            "2024-01-15T18:10:00+0200",
            "2024-01-15T18:10:00Zjunk",
            "2024-01-15T18:1a:00Z",
            "２０２４-01-15T18:10:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_and_round_trips() {
        for micros in [
            0,
            1_705_342_200_123_000,
            -1000,
            951_782_400_000_000,
            4_102_444_800_000_000,
        ] {
            let text = format_rfc3339_millis(micros);
            assert_eq!(parse_rfc3339(&text), Some(micros), "{text}");
        }
        assert_eq!(
            format_rfc3339_millis(1_705_342_200_123_000),
            "2024-01-15T18:10:00.123Z"
        );
    }
}
