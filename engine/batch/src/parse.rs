//! Parsers for PostgreSQL's text output format, straight from the wire bytes.
//!
//! Everything here assumes the session settings the replication connection sets:
//! `DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits=3`, `bytea_output=hex`.

use crate::types::{ColType, Kind};

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
pub(crate) const PG_EPOCH_OFFSET_MICROS: i64 = lily_pgoutput::PG_EPOCH_OFFSET_SECS * 1_000_000;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A parsed value, waiting to be appended. Text borrows from the tuple when it can; text that had
/// to be rewritten (array unescaping, uuid lowercasing) and decoded bytea live in [`Arenas`].
///
/// `repr(C, u8)` puts every payload at offset 8, so a cell moves as a tag byte plus two words;
/// with the default layout small payloads share the tag's word and the compiler copies cells
/// piecewise, which stalls store forwarding on the hot path.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, u8)]
pub(crate) enum Cell<'a> {
    Null,
    Bool(bool),
    /// int2/int4/int8, date (days since 1970-01-01) and timestamps (µs since 1970-01-01).
    Int(i64),
    UInt(u32),
    F32(f32),
    F64(f64),
    /// An i128 as (low, high) halves, so a cell stays 8-byte aligned and 24 bytes long.
    Dec(u64, u64),
    Str(&'a str),
    /// A range of [`Arenas::text`].
    ArenaStr(usize, usize),
    /// A range of [`Arenas::bytes`].
    ArenaBytes(usize, usize),
    /// A range of the row's element cells.
    List(usize, usize),
}

/// Per-row storage for values that could not borrow from the tuple.
#[derive(Debug, Default)]
pub(crate) struct Arenas {
    pub text: String,
    pub bytes: Vec<u8>,
}

impl Arenas {
    pub(crate) fn clear(&mut self) {
        self.text.clear();
        self.bytes.clear();
    }
}

/// What to tell the user to do about a value that did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hint {
    TextFormat,
    DecimalSpecial,
    ArrayShape,
    OutOfRange,
    Encoding,
}

impl Hint {
    pub(crate) fn text(self) -> &'static str {
        match self {
            Hint::TextFormat => {
                "the value is not in the PostgreSQL text output format lily expects; check that the \
                 replication session runs with DateStyle=ISO, TimeZone=UTC, extra_float_digits=3 and \
                 bytea_output=hex, and report the value if it does"
            }
            Hint::DecimalSpecial => {
                "Arrow Decimal128 cannot hold NaN or Infinity; change the column to unconstrained \
                 numeric (which lily maps to Utf8) or stop storing NaN/Infinity in it"
            }
            Hint::ArrayShape => {
                "only one-dimensional arrays with the default lower bound map to an Arrow List; store \
                 one-dimensional arrays in this column or change its type to text"
            }
            Hint::OutOfRange => {
                "the value does not fit the column's Arrow type; widen or change the PostgreSQL \
                 column type so it maps to a type that can hold it"
            }
            Hint::Encoding => {
                "the value is not valid UTF-8; lily needs the database encoding to be UTF8"
            }
        }
    }
}

/// Why a value did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParseErr {
    pub reason: &'static str,
    pub hint: Hint,
}

fn bad(reason: &'static str) -> ParseErr {
    ParseErr {
        reason,
        hint: Hint::TextFormat,
    }
}

fn out_of_range(reason: &'static str) -> ParseErr {
    ParseErr {
        reason,
        hint: Hint::OutOfRange,
    }
}

#[inline]
pub(crate) fn utf8(raw: &[u8]) -> Result<&str, ParseErr> {
    std::str::from_utf8(raw).map_err(|_| ParseErr {
        reason: "invalid UTF-8",
        hint: Hint::Encoding,
    })
}

/// Parses one non-null column value and appends it to `out` (array elements go to `elems`).
///
/// Cells are written straight into the vectors rather than returned: moving a `Result<Cell, _>`
/// through the call chain made the compiler copy cells piecewise and stall on the reload.
pub(crate) fn parse_into<'a>(
    ty: ColType,
    raw: &'a [u8],
    out: &mut Vec<Cell<'a>>,
    elems: &mut Vec<Cell<'a>>,
    arenas: &mut Arenas,
) -> Result<(), ParseErr> {
    match ty {
        ColType::Scalar(kind) => parse_scalar(kind, raw, out, arenas),
        ColType::List(kind) => {
            let (start, end) = parse_array(kind, utf8(raw)?, elems, arenas)?;
            out.push(Cell::List(start, end));
            Ok(())
        }
    }
}

#[inline(always)]
fn parse_scalar<'a>(
    kind: Kind,
    raw: &'a [u8],
    out: &mut Vec<Cell<'a>>,
    arenas: &mut Arenas,
) -> Result<(), ParseErr> {
    match kind {
        Kind::Text => out.push(Cell::Str(utf8(raw)?)),
        Kind::Uuid => {
            if check_uuid(raw)? {
                out.push(Cell::Str(utf8(raw)?));
            } else {
                let (start, end) = push_lowercase(utf8(raw)?, &mut arenas.text);
                out.push(Cell::ArenaStr(start, end));
            }
        }
        Kind::Bytea => {
            let (start, end) = decode_bytea(raw, &mut arenas.bytes)?;
            out.push(Cell::ArenaBytes(start, end));
        }
        _ => parse_fixed(kind, raw, out)?,
    }
    Ok(())
}

fn push_lowercase(s: &str, text: &mut String) -> (usize, usize) {
    let start = text.len();
    text.push_str(s);
    text[start..].make_ascii_lowercase();
    (start, text.len())
}

/// Parses a value of a fixed-width kind (everything but text, uuid and bytea).
#[inline(always)]
fn parse_fixed(kind: Kind, raw: &[u8], out: &mut Vec<Cell<'_>>) -> Result<(), ParseErr> {
    match kind {
        Kind::Bool => out.push(Cell::Bool(parse_bool(raw)?)),
        Kind::Int16 => out.push(Cell::Int(parse_int_range(
            raw,
            i16::MIN.into(),
            i16::MAX.into(),
        )?)),
        Kind::Int32 => out.push(Cell::Int(parse_int_range(
            raw,
            i32::MIN.into(),
            i32::MAX.into(),
        )?)),
        Kind::Int64 => out.push(Cell::Int(parse_int_range(raw, i64::MIN, i64::MAX)?)),
        Kind::Oid => out.push(Cell::UInt(parse_int_range(raw, 0, u32::MAX.into())? as u32)),
        Kind::Float32 => out.push(Cell::F32(
            utf8(raw)?
                .parse()
                .map_err(|_| bad("not a floating-point number"))?,
        )),
        Kind::Float64 => out.push(Cell::F64(
            utf8(raw)?
                .parse()
                .map_err(|_| bad("not a floating-point number"))?,
        )),
        Kind::Decimal { precision, scale } => {
            let v = parse_decimal(raw, precision, scale)? as u128;
            out.push(Cell::Dec(v as u64, (v >> 64) as u64));
        }
        Kind::Date => out.push(Cell::Int(parse_date(raw)?.into())),
        Kind::Timestamp => out.push(Cell::Int(parse_timestamp(raw, false)?)),
        Kind::TimestampTz => out.push(Cell::Int(parse_timestamp(raw, true)?)),
        Kind::Text | Kind::Uuid | Kind::Bytea => unreachable!("variable-width kind {kind:?}"),
    }
    Ok(())
}

pub(crate) fn parse_bool(raw: &[u8]) -> Result<bool, ParseErr> {
    match raw {
        b"t" | b"true" => Ok(true),
        b"f" | b"false" => Ok(false),
        _ => Err(bad("not a boolean (expected t or f)")),
    }
}

/// Parses a decimal integer and checks it lies in `min..=max`.
#[inline]
pub(crate) fn parse_int_range(raw: &[u8], min: i64, max: i64) -> Result<i64, ParseErr> {
    let (neg, digits) = match raw.first() {
        Some(b'-') => (true, &raw[1..]),
        Some(b'+') => (false, &raw[1..]),
        _ => (false, raw),
    };
    if digits.is_empty() {
        return Err(bad("not an integer"));
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return Err(bad("not an integer"));
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d)))
            .ok_or_else(|| out_of_range("integer out of range"))?;
    }
    let v: i64 = if neg {
        if v > 1 << 63 {
            return Err(out_of_range("integer out of range"));
        }
        (v as i64).wrapping_neg()
    } else {
        i64::try_from(v).map_err(|_| out_of_range("integer out of range"))?
    };
    if v < min || v > max {
        return Err(out_of_range("integer out of range"));
    }
    Ok(v)
}

const fn pow10_table() -> [i128; 39] {
    let mut t = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
}

const POW10: [i128; 39] = pow10_table();

/// Parses numeric text into an unscaled integer at `scale`, rounding half away from zero like
/// PostgreSQL, and checks it has at most `precision` digits.
pub(crate) fn parse_decimal(raw: &[u8], precision: u8, scale: i8) -> Result<i128, ParseErr> {
    let (neg, digits) = match raw.first() {
        Some(b'-') => (true, &raw[1..]),
        Some(b'+') => (false, &raw[1..]),
        _ => (false, raw),
    };
    if digits.eq_ignore_ascii_case(b"NaN")
        || digits.eq_ignore_ascii_case(b"Infinity")
        || digits.eq_ignore_ascii_case(b"inf")
    {
        return Err(ParseErr {
            reason: "NaN/Infinity cannot be stored in a Decimal128 column",
            hint: Hint::DecimalSpecial,
        });
    }
    let mut mantissa: i128 = 0;
    let mut significant = 0u32;
    let mut frac_digits: i32 = 0;
    let mut seen_dot = false;
    let mut seen_digit = false;
    for &c in digits {
        match c {
            b'0'..=b'9' => {
                seen_digit = true;
                if mantissa != 0 || c != b'0' {
                    significant += 1;
                    if significant > 38 {
                        return Err(out_of_range("more than 38 significant digits"));
                    }
                }
                mantissa = mantissa * 10 + i128::from(c - b'0');
                if seen_dot {
                    frac_digits += 1;
                }
            }
            b'.' if !seen_dot => seen_dot = true,
            _ => return Err(bad("not a numeric value")),
        }
    }
    if !seen_digit {
        return Err(bad("not a numeric value"));
    }
    let shift = i32::from(scale) - frac_digits;
    if shift >= 0 {
        if mantissa != 0 {
            let factor = *POW10
                .get(shift as usize)
                .ok_or_else(|| out_of_range("value does not fit the column's precision"))?;
            mantissa = mantissa
                .checked_mul(factor)
                .ok_or_else(|| out_of_range("value does not fit the column's precision"))?;
        }
    } else {
        let drop = (-shift) as usize;
        mantissa = match POW10.get(drop) {
            Some(&p) => {
                let (q, r) = (mantissa / p, mantissa % p);
                if r >= p - r {
                    q + 1
                } else {
                    q
                }
            }
            // More than 38 digits dropped: every mantissa we accept rounds to zero.
            None => 0,
        };
    }
    if mantissa >= POW10[usize::from(precision)] {
        return Err(out_of_range("value does not fit the column's precision"));
    }
    Ok(if neg { -mantissa } else { mantissa })
}

/// Validates canonical uuid text; returns whether it is already lowercase.
#[inline]
pub(crate) fn check_uuid(raw: &[u8]) -> Result<bool, ParseErr> {
    let err = || bad("not a uuid (expected 8-4-4-4-12 hex digits)");
    if raw.len() != 36 || raw[8] != b'-' || raw[13] != b'-' || raw[18] != b'-' || raw[23] != b'-' {
        return Err(err());
    }
    // Bit 0: a hex digit; bit 1: an uppercase one.
    let mut all = 1u8;
    let mut any = 0u8;
    for part in [
        &raw[..8],
        &raw[9..13],
        &raw[14..18],
        &raw[19..23],
        &raw[24..],
    ] {
        for &c in part {
            let class = HEX_CLASS[usize::from(c)];
            all &= class;
            any |= class;
        }
    }
    if all & 1 == 0 {
        return Err(err());
    }
    Ok(any & 2 == 0)
}

const HEX_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = match c as u8 {
            b'0'..=b'9' | b'a'..=b'f' => 1,
            b'A'..=b'F' => 3,
            _ => 0,
        };
        c += 1;
    }
    t
};

#[inline]
fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes `\x...` hex bytea text into the byte arena; returns the decoded range.
fn decode_bytea(raw: &[u8], out: &mut Vec<u8>) -> Result<(usize, usize), ParseErr> {
    let hex = raw
        .strip_prefix(b"\\x")
        .ok_or_else(|| bad("bytea is not in hex format (expected \\x...)"))?;
    if hex.len() % 2 != 0 {
        return Err(bad("bytea hex has an odd number of digits"));
    }
    let start = out.len();
    out.reserve(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        match (hex_val(pair[0]), hex_val(pair[1])) {
            (Some(hi), Some(lo)) => out.push((hi << 4) | lo),
            _ => {
                out.truncate(start);
                return Err(bad("bytea hex contains a non-hex digit"));
            }
        }
    }
    Ok((start, out.len()))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

#[inline]
fn two_digits(raw: &[u8], i: usize) -> Option<u32> {
    let a = raw.get(i)?.wrapping_sub(b'0');
    let b = raw.get(i + 1)?.wrapping_sub(b'0');
    if a > 9 || b > 9 {
        return None;
    }
    Some(u32::from(a) * 10 + u32::from(b))
}

#[inline]
fn expect(raw: &[u8], i: usize, c: u8) -> Result<(), ParseErr> {
    if raw.get(i) == Some(&c) {
        Ok(())
    } else {
        Err(bad("not an ISO date/time"))
    }
}

fn reject_bc(raw: &[u8]) -> Result<(), ParseErr> {
    if raw.ends_with(b" BC") {
        Err(out_of_range(
            "dates before the common era (BC) are not supported",
        ))
    } else {
        Ok(())
    }
}

/// Parses `YYYY-MM-DD` (the year may have more than four digits) at the start of `raw`; returns
/// days since 1970-01-01 and the index after the date.
#[inline]
fn parse_ymd(raw: &[u8]) -> Result<(i64, usize), ParseErr> {
    let mut i = 0;
    let mut year: i64 = 0;
    while i < raw.len() && raw[i].is_ascii_digit() {
        if i == 7 {
            return Err(out_of_range("year out of range"));
        }
        year = year * 10 + i64::from(raw[i] - b'0');
        i += 1;
    }
    if i < 4 {
        return Err(bad("not an ISO date (expected YYYY-MM-DD)"));
    }
    expect(raw, i, b'-')?;
    let month =
        two_digits(raw, i + 1).ok_or_else(|| bad("not an ISO date (expected YYYY-MM-DD)"))?;
    expect(raw, i + 3, b'-')?;
    let day = two_digits(raw, i + 4).ok_or_else(|| bad("not an ISO date (expected YYYY-MM-DD)"))?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(bad("invalid calendar date"));
    }
    Ok((days_from_civil(year, month, day), i + 6))
}

/// `date` text → days since 1970-01-01; `infinity`/`-infinity` → `i32::MAX`/`i32::MIN`.
pub(crate) fn parse_date(raw: &[u8]) -> Result<i32, ParseErr> {
    match raw {
        b"infinity" => return Ok(i32::MAX),
        b"-infinity" => return Ok(i32::MIN),
        _ => {}
    }
    reject_bc(raw)?;
    let (days, end) = parse_ymd(raw)?;
    if end != raw.len() {
        return Err(bad("not an ISO date (expected YYYY-MM-DD)"));
    }
    i32::try_from(days).map_err(|_| out_of_range("date out of range"))
}

/// `timestamp`/`timestamptz` text → µs since 1970-01-01 UTC; `infinity`/`-infinity` →
/// `i64::MAX`/`i64::MIN`. With `tz`, a UTC offset `±HH[:MM[:SS]]` must follow the time.
pub(crate) fn parse_timestamp(raw: &[u8], tz: bool) -> Result<i64, ParseErr> {
    match raw {
        b"infinity" => return Ok(i64::MAX),
        b"-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    reject_bc(raw)?;
    let (days, mut i) = parse_ymd(raw)?;
    let sep = raw.get(i).copied();
    if sep != Some(b' ') && sep != Some(b'T') {
        return Err(bad("not an ISO timestamp (expected YYYY-MM-DD HH:MM:SS)"));
    }
    let bad_time = || bad("not an ISO timestamp (expected YYYY-MM-DD HH:MM:SS)");
    let h = two_digits(raw, i + 1).ok_or_else(bad_time)?;
    expect(raw, i + 3, b':')?;
    let m = two_digits(raw, i + 4).ok_or_else(bad_time)?;
    expect(raw, i + 6, b':')?;
    let s = two_digits(raw, i + 7).ok_or_else(bad_time)?;
    if h > 23 || m > 59 || s > 59 {
        return Err(bad("time of day out of range"));
    }
    i += 9;
    let mut frac: i64 = 0;
    if raw.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < raw.len() && raw[i].is_ascii_digit() {
            frac = frac * 10 + i64::from(raw[i] - b'0');
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 6 {
            return Err(bad("fractional seconds must have 1 to 6 digits"));
        }
        frac *= [1, 100_000, 10_000, 1_000, 100, 10, 1][n];
    }
    let mut offset_secs: i64 = 0;
    if tz {
        let sign = match raw.get(i) {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err(bad("timestamptz has no UTC offset")),
        };
        let bad_offset = || bad("invalid UTC offset (expected ±HH[:MM[:SS]])");
        let oh = two_digits(raw, i + 1).ok_or_else(bad_offset)?;
        let mut secs = i64::from(oh) * 3600;
        i += 3;
        if raw.get(i) == Some(&b':') {
            secs += i64::from(two_digits(raw, i + 1).ok_or_else(bad_offset)?) * 60;
            i += 3;
            if raw.get(i) == Some(&b':') {
                secs += i64::from(two_digits(raw, i + 1).ok_or_else(bad_offset)?);
                i += 3;
            }
        }
        offset_secs = sign * secs;
    }
    if i != raw.len() {
        return Err(bad("unexpected text after the timestamp"));
    }
    let secs = i64::from(h * 3600 + m * 60 + s) - offset_secs;
    days.checked_mul(MICROS_PER_DAY)
        .and_then(|v| v.checked_add(secs * 1_000_000 + frac))
        .ok_or_else(|| out_of_range("timestamp out of range for Arrow microseconds"))
}

/// Text of one array element: borrowed from the tuple, or unescaped into the text arena.
#[derive(Clone, Copy)]
enum ElemText<'a> {
    Borrowed(&'a str),
    Arena(usize, usize),
}

fn array_shape(reason: &'static str) -> ParseErr {
    ParseErr {
        reason,
        hint: Hint::ArrayShape,
    }
}

/// Parses one-dimensional array text (`{1,2,NULL}`, `{"a b","c\"d"}`, `{}`) into element cells.
fn parse_array<'a>(
    kind: Kind,
    s: &'a str,
    elems: &mut Vec<Cell<'a>>,
    arenas: &mut Arenas,
) -> Result<(usize, usize), ParseErr> {
    let b = s.as_bytes();
    if b.first() == Some(&b'[') {
        return Err(array_shape("arrays with explicit bounds are not supported"));
    }
    if b.len() < 2 || b[0] != b'{' || b[b.len() - 1] != b'}' {
        return Err(bad("not an array (expected {...})"));
    }
    let start = elems.len();
    let end = b.len() - 1;
    let mut i = 1;
    let skip_ws = |i: &mut usize| {
        while *i < end && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if i == end {
        return Ok((start, start));
    }
    loop {
        skip_ws(&mut i);
        if i >= end {
            return Err(bad("array has an empty element"));
        }
        match b[i] {
            b'{' => return Err(array_shape("multi-dimensional arrays are not supported")),
            b'"' => {
                i += 1;
                let seg = i;
                let mut escaped = false;
                loop {
                    match b.get(i) {
                        Some(b'\\') => {
                            escaped = true;
                            i += 2;
                        }
                        Some(b'"') if i < end => break,
                        Some(_) if i < end => i += 1,
                        _ => return Err(bad("array has an unterminated quoted element")),
                    }
                }
                let raw = &s[seg..i];
                i += 1;
                let text = if escaped {
                    unescape(raw, &mut arenas.text)
                } else {
                    ElemText::Borrowed(raw)
                };
                parse_elem(kind, text, elems, arenas)?;
            }
            _ => {
                let seg = i;
                while i < end && b[i] != b',' {
                    if matches!(b[i], b'"' | b'{' | b'}') {
                        return Err(bad("array has a malformed element"));
                    }
                    i += 1;
                }
                let raw = s[seg..i].trim_end();
                if raw.is_empty() {
                    return Err(bad("array has an empty element"));
                }
                if raw.eq_ignore_ascii_case("NULL") {
                    elems.push(Cell::Null);
                } else if raw.contains('\\') {
                    let text = unescape(raw, &mut arenas.text);
                    parse_elem(kind, text, elems, arenas)?;
                } else {
                    parse_elem(kind, ElemText::Borrowed(raw), elems, arenas)?;
                }
            }
        }
        skip_ws(&mut i);
        if i == end {
            break;
        }
        if b[i] != b',' {
            return Err(bad("array elements must be separated by commas"));
        }
        i += 1;
    }
    Ok((start, elems.len()))
}

/// Removes backslash escapes, writing the result to the arena.
fn unescape(raw: &str, out: &mut String) -> ElemText<'static> {
    let start = out.len();
    let mut rest = raw;
    while let Some(p) = rest.find('\\') {
        out.push_str(&rest[..p]);
        let mut chars = rest[p + 1..].chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out.push_str(rest);
    ElemText::Arena(start, out.len())
}

fn parse_elem<'a>(
    kind: Kind,
    text: ElemText<'a>,
    elems: &mut Vec<Cell<'a>>,
    arenas: &mut Arenas,
) -> Result<(), ParseErr> {
    match (kind, text) {
        (Kind::Text, ElemText::Borrowed(s)) => elems.push(Cell::Str(s)),
        (Kind::Text, ElemText::Arena(a, b)) => elems.push(Cell::ArenaStr(a, b)),
        (Kind::Uuid, ElemText::Borrowed(s)) => {
            if check_uuid(s.as_bytes())? {
                elems.push(Cell::Str(s));
            } else {
                let (a, b) = push_lowercase(s, &mut arenas.text);
                elems.push(Cell::ArenaStr(a, b));
            }
        }
        (Kind::Uuid, ElemText::Arena(a, b)) => {
            check_uuid(&arenas.text.as_bytes()[a..b])?;
            arenas.text[a..b].make_ascii_lowercase();
            elems.push(Cell::ArenaStr(a, b));
        }
        (Kind::Bytea, ElemText::Borrowed(s)) => {
            let (a, b) = decode_bytea(s.as_bytes(), &mut arenas.bytes)?;
            elems.push(Cell::ArenaBytes(a, b));
        }
        (Kind::Bytea, ElemText::Arena(a, b)) => {
            let (a, b) = decode_bytea(&arenas.text.as_bytes()[a..b], &mut arenas.bytes)?;
            elems.push(Cell::ArenaBytes(a, b));
        }
        (_, ElemText::Borrowed(s)) => parse_fixed(kind, s.as_bytes(), elems)?,
        (_, ElemText::Arena(a, b)) => parse_fixed(kind, &arenas.text.as_bytes()[a..b], elems)?,
    }
    Ok(())
}
