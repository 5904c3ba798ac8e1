//! RFC 3339 times, as Okta writes `published` (`2024-01-15T18:10:00.123Z`), to and from
//! microseconds since the Unix epoch. Hand-written because only this one format is needed and a
//! date crate in the tree would bring its own feature set into the shared build.

const MICROS_PER_SEC: i64 = 1_000_000;

/// Microseconds since 1970-01-01T00:00:00Z for `YYYY-MM-DD(T| )hh:mm:ss[.fraction](Z|±hh:mm)`.
/// Digits past the microsecond are dropped (a timestamp column holds µs). `None` if malformed.
pub(crate) fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |acc, d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        // 60 is a leap second; it is counted into the next minute.
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..6 {
            micros *= 10;
        }
    }
    let offset_secs = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let (h, m) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * MICROS_PER_SEC + micros)
}

/// `YYYY-MM-DDThh:mm:ss.mmmZ`, Okta's own form (milliseconds).
#[cfg_attr(not(any(test, feature = "fake")), allow(dead_code))]
pub(crate) fn format_rfc3339_millis(micros: i64) -> String {
    let secs = micros.div_euclid(MICROS_PER_SEC);
    let millis = micros.rem_euclid(MICROS_PER_SEC) / 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn is_leap(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
#[cfg_attr(not(any(test, feature = "fake")), allow(dead_code))]
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
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
