//! Arrow values rendered as PostgreSQL text input.
//!
//! Every value the mirror sends travels as text inside a `text[]` parameter and is cast to the
//! target column's type on the server, so the rendering must be text PostgreSQL's input functions
//! read back to the same value: `t`/`f`, shortest round-trip floats with `NaN`/`Infinity`,
//! decimals at their scale, ISO timestamps with microseconds, `\x` hex for bytea and array
//! literals with every element quoted.

use std::fmt::Write as _;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    Int8Type, TimestampMicrosecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, GenericListArray, PrimitiveArray};
use arrow_schema::{DataType, TimeUnit};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A typed view of one Arrow column that writes its values as PostgreSQL text.
pub enum ColumnText<'a> {
    Bool(&'a arrow_array::BooleanArray),
    Int8(&'a PrimitiveArray<Int8Type>),
    Int16(&'a PrimitiveArray<Int16Type>),
    Int32(&'a PrimitiveArray<Int32Type>),
    Int64(&'a PrimitiveArray<Int64Type>),
    UInt8(&'a PrimitiveArray<UInt8Type>),
    UInt16(&'a PrimitiveArray<UInt16Type>),
    UInt32(&'a PrimitiveArray<UInt32Type>),
    UInt64(&'a PrimitiveArray<UInt64Type>),
    Float32(&'a PrimitiveArray<Float32Type>),
    Float64(&'a PrimitiveArray<Float64Type>),
    Decimal(&'a PrimitiveArray<Decimal128Type>, i8),
    Utf8(&'a arrow_array::StringArray),
    LargeUtf8(&'a arrow_array::LargeStringArray),
    Binary(&'a arrow_array::BinaryArray),
    LargeBinary(&'a arrow_array::LargeBinaryArray),
    Date32(&'a PrimitiveArray<Date32Type>),
    /// Microseconds since the Unix epoch; `true` when the column has a time zone (always UTC).
    Timestamp(&'a PrimitiveArray<TimestampMicrosecondType>, bool),
    List(&'a GenericListArray<i32>, Box<ColumnText<'a>>),
    LargeList(&'a GenericListArray<i64>, Box<ColumnText<'a>>),
}

/// An Arrow type the mirror cannot render (the error names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedType(pub DataType);

impl<'a> ColumnText<'a> {
    /// A view of `array`, or the data type if it cannot be rendered.
    pub fn new(array: &'a dyn Array) -> Result<Self, UnsupportedType> {
        Ok(match array.data_type() {
            DataType::Boolean => Self::Bool(array.as_boolean()),
            DataType::Int8 => Self::Int8(array.as_primitive()),
            DataType::Int16 => Self::Int16(array.as_primitive()),
            DataType::Int32 => Self::Int32(array.as_primitive()),
            DataType::Int64 => Self::Int64(array.as_primitive()),
            DataType::UInt8 => Self::UInt8(array.as_primitive()),
            DataType::UInt16 => Self::UInt16(array.as_primitive()),
            DataType::UInt32 => Self::UInt32(array.as_primitive()),
            DataType::UInt64 => Self::UInt64(array.as_primitive()),
            DataType::Float32 => Self::Float32(array.as_primitive()),
            DataType::Float64 => Self::Float64(array.as_primitive()),
            DataType::Decimal128(_, scale) => Self::Decimal(array.as_primitive(), *scale),
            DataType::Utf8 => Self::Utf8(array.as_string()),
            DataType::LargeUtf8 => Self::LargeUtf8(array.as_string()),
            DataType::Binary => Self::Binary(array.as_binary()),
            DataType::LargeBinary => Self::LargeBinary(array.as_binary()),
            DataType::Date32 => Self::Date32(array.as_primitive()),
            DataType::Timestamp(TimeUnit::Microsecond, tz) => {
                Self::Timestamp(array.as_primitive(), tz.is_some())
            }
            DataType::List(_) => {
                let list = array.as_list::<i32>();
                Self::List(list, Box::new(ColumnText::new(list.values().as_ref())?))
            }
            DataType::LargeList(_) => {
                let list = array.as_list::<i64>();
                Self::LargeList(list, Box::new(ColumnText::new(list.values().as_ref())?))
            }
            other => return Err(UnsupportedType(other.clone())),
        })
    }

    fn array(&self) -> &dyn Array {
        match self {
            Self::Bool(a) => *a,
            Self::Int8(a) => *a,
            Self::Int16(a) => *a,
            Self::Int32(a) => *a,
            Self::Int64(a) => *a,
            Self::UInt8(a) => *a,
            Self::UInt16(a) => *a,
            Self::UInt32(a) => *a,
            Self::UInt64(a) => *a,
            Self::Float32(a) => *a,
            Self::Float64(a) => *a,
            Self::Decimal(a, _) => *a,
            Self::Utf8(a) => *a,
            Self::LargeUtf8(a) => *a,
            Self::Binary(a) => *a,
            Self::LargeBinary(a) => *a,
            Self::Date32(a) => *a,
            Self::Timestamp(a, _) => *a,
            Self::List(a, _) => *a,
            Self::LargeList(a, _) => *a,
        }
    }

    #[inline]
    pub fn is_null(&self, row: usize) -> bool {
        self.array().is_null(row)
    }

    /// Appends the text of the value at `row` to `out`; `false` (and nothing written) for null.
    pub fn write(&self, row: usize, out: &mut String) -> bool {
        if self.is_null(row) {
            return false;
        }
        match self {
            Self::Bool(a) => out.push(if a.value(row) { 't' } else { 'f' }),
            Self::Int8(a) => write_display(out, a.value(row)),
            Self::Int16(a) => write_display(out, a.value(row)),
            Self::Int32(a) => write_display(out, a.value(row)),
            Self::Int64(a) => write_display(out, a.value(row)),
            Self::UInt8(a) => write_display(out, a.value(row)),
            Self::UInt16(a) => write_display(out, a.value(row)),
            Self::UInt32(a) => write_display(out, a.value(row)),
            Self::UInt64(a) => write_display(out, a.value(row)),
            Self::Float32(a) => write_f32(out, a.value(row)),
            Self::Float64(a) => write_f64(out, a.value(row)),
            Self::Decimal(a, scale) => write_decimal(out, a.value(row), *scale),
            Self::Utf8(a) => out.push_str(a.value(row)),
            Self::LargeUtf8(a) => out.push_str(a.value(row)),
            Self::Binary(a) => write_bytea(out, a.value(row)),
            Self::LargeBinary(a) => write_bytea(out, a.value(row)),
            Self::Date32(a) => write_date(out, a.value(row)),
            Self::Timestamp(a, tz) => write_timestamp(out, a.value(row), *tz),
            Self::List(a, elems) => {
                let offsets = a.value_offsets();
                write_array(out, elems, offsets[row] as usize, offsets[row + 1] as usize);
            }
            Self::LargeList(a, elems) => {
                let offsets = a.value_offsets();
                write_array(out, elems, offsets[row] as usize, offsets[row + 1] as usize);
            }
        }
        true
    }

    /// The text of the value at `row`, or `None` for null.
    pub fn text(&self, row: usize) -> Option<String> {
        let mut s = String::new();
        self.write(row, &mut s).then_some(s)
    }
}

/// The PostgreSQL text of one value of `array` (`None` for null).
pub fn render_value(array: &ArrayRef, row: usize) -> Result<Option<String>, UnsupportedType> {
    Ok(ColumnText::new(array.as_ref())?.text(row))
}

#[inline]
fn write_display(out: &mut String, v: impl std::fmt::Display) {
    let _ = write!(out, "{v}");
}

/// Writers for float4/float8 text: the shortest text that reads back to the same value (Rust's
/// formatting round-trips), PostgreSQL's spellings of NaN and the infinities, and exponent form
/// outside the range where plain digits stay short.
macro_rules! float_writer {
    ($name:ident, $t:ty) => {
        pub fn $name(out: &mut String, v: $t) {
            if v.is_nan() {
                out.push_str("NaN");
            } else if v.is_infinite() {
                out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
            } else {
                let a = v.abs();
                if a != 0.0 && !(1e-5..1e16).contains(&a) {
                    let _ = write!(out, "{v:e}");
                } else {
                    let _ = write!(out, "{v}");
                }
            }
        }
    };
}

float_writer!(write_f64, f64);
// PostgreSQL reads float4 with strtof, so the f32's own shortest form is what round-trips.
float_writer!(write_f32, f32);

/// An unscaled Decimal128 value at `scale` (`12345`, 3 → `12.345`; `12`, -2 → `1200`).
pub fn write_decimal(out: &mut String, v: i128, scale: i8) {
    if v < 0 {
        out.push('-');
    }
    let digits = v.unsigned_abs().to_string();
    if scale <= 0 {
        out.push_str(&digits);
        if v != 0 {
            out.extend(std::iter::repeat_n('0', usize::from(scale.unsigned_abs())));
        }
        return;
    }
    let scale = scale as usize;
    if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', scale - digits.len()));
        out.push_str(&digits);
    }
}

/// `\x` followed by lowercase hex digits.
pub fn write_bytea(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 + bytes.len() * 2);
    out.push_str("\\x");
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Writes `YYYY-MM-DD` and returns whether the year is before the common era (the caller
/// appends ` BC` after the rest of the value).
fn write_ymd(out: &mut String, days: i64) -> bool {
    let (y, m, d) = civil_from_days(days);
    // Astronomical year 0 is 1 BC in PostgreSQL's notation.
    let (year, bc) = if y <= 0 { (1 - y, true) } else { (y, false) };
    let _ = write!(out, "{year:04}-{m:02}-{d:02}");
    bc
}

/// Days since 1970-01-01 as a PostgreSQL date (`i32::MAX`/`MIN` are ±infinity, as lily-batch
/// stores them).
pub fn write_date(out: &mut String, days: i32) {
    match days {
        i32::MAX => out.push_str("infinity"),
        i32::MIN => out.push_str("-infinity"),
        _ => {
            if write_ymd(out, i64::from(days)) {
                out.push_str(" BC");
            }
        }
    }
}

/// Microseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS.ffffff`, with `+00` when `tz`
/// (`i64::MAX`/`MIN` are ±infinity).
pub fn write_timestamp(out: &mut String, micros: i64, tz: bool) {
    match micros {
        i64::MAX => out.push_str("infinity"),
        i64::MIN => out.push_str("-infinity"),
        _ => {
            let days = micros.div_euclid(MICROS_PER_DAY);
            let rem = micros.rem_euclid(MICROS_PER_DAY);
            let bc = write_ymd(out, days);
            let secs = rem / 1_000_000;
            let frac = rem % 1_000_000;
            let _ = write!(
                out,
                " {:02}:{:02}:{:02}.{frac:06}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            );
            if tz {
                out.push_str("+00");
            }
            if bc {
                out.push_str(" BC");
            }
        }
    }
}

/// `{...}` with every non-null element double-quoted (backslash-escaping `"` and `\`), `NULL`
/// for nulls, and nested lists as nested braces.
fn write_array(out: &mut String, elems: &ColumnText<'_>, start: usize, end: usize) {
    out.push('{');
    let mut scratch = String::new();
    for i in start..end {
        if i > start {
            out.push(',');
        }
        if elems.is_null(i) {
            out.push_str("NULL");
            continue;
        }
        if matches!(elems, ColumnText::List(..) | ColumnText::LargeList(..)) {
            elems.write(i, out);
            continue;
        }
        scratch.clear();
        elems.write(i, &mut scratch);
        out.push('"');
        for c in scratch.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{
        BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
        Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };

    use super::*;

    fn all(array: ArrayRef) -> Vec<Option<String>> {
        (0..array.len())
            .map(|i| render_value(&array, i).unwrap())
            .collect()
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn integers_and_bools() {
        assert_eq!(
            all(Arc::new(Int32Array::from(vec![
                Some(1),
                None,
                Some(i32::MIN)
            ]))),
            vec![s("1"), None, s("-2147483648")]
        );
        assert_eq!(
            all(Arc::new(Int64Array::from(vec![i64::MAX]))),
            vec![s("9223372036854775807")]
        );
        assert_eq!(
            all(Arc::new(BooleanArray::from(vec![
                Some(true),
                Some(false),
                None
            ]))),
            vec![s("t"), s("f"), None]
        );
    }

    #[test]
    fn floats_round_trip_and_specials() {
        let vals = vec![
            0.1,
            -0.0,
            1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
            5e-324,
            123456.789,
        ];
        let out = all(Arc::new(Float64Array::from(vals.clone())));
        assert_eq!(out[0], s("0.1"));
        assert_eq!(out[1], s("-0"));
        assert_eq!(out[3], s("NaN"));
        assert_eq!(out[4], s("Infinity"));
        assert_eq!(out[5], s("-Infinity"));
        assert_eq!(out[6], s("1e300"));
        for (v, text) in vals.iter().zip(&out) {
            let back: f64 = text
                .as_deref()
                .unwrap()
                .replace("Infinity", "inf")
                .parse()
                .unwrap();
            assert!(
                back == *v || (v.is_nan() && back.is_nan()),
                "{v} -> {text:?}"
            );
            if *v == 0.0 {
                assert_eq!(back.is_sign_negative(), v.is_sign_negative());
            }
        }
        let out = all(Arc::new(Float32Array::from(vec![0.1f32, f32::NAN, 3.4e38])));
        assert_eq!(out[0], s("0.1"));
        assert_eq!(out[1], s("NaN"));
        assert_eq!(out[2].as_deref().unwrap().parse::<f32>().unwrap(), 3.4e38);
    }

    #[test]
    fn decimals_at_their_scale() {
        let a = Decimal128Array::from(vec![Some(12345), Some(-5), Some(0), None, Some(-123_000)])
            .with_precision_and_scale(12, 3)
            .unwrap();
        assert_eq!(
            all(Arc::new(a)),
            vec![s("12.345"), s("-0.005"), s("0.000"), None, s("-123.000")]
        );
        let a = Decimal128Array::from(vec![12, 0])
            .with_precision_and_scale(5, -2)
            .unwrap();
        assert_eq!(all(Arc::new(a)), vec![s("1200"), s("0")]);
        let a = Decimal128Array::from(vec![i128::MAX / 10])
            .with_precision_and_scale(38, 0)
            .unwrap();
        assert_eq!(all(Arc::new(a))[0].as_deref().unwrap().len(), 38);
    }

    #[test]
    fn text_and_bytea() {
        assert_eq!(
            all(Arc::new(StringArray::from(vec![
                Some("it's \"x\" \\ é"),
                None
            ]))),
            vec![s("it's \"x\" \\ é"), None]
        );
        let b = BinaryArray::from(vec![Some(&[0u8, 0xff, 0x10][..]), Some(&[][..]), None]);
        assert_eq!(all(Arc::new(b)), vec![s("\\x00ff10"), s("\\x"), None]);
    }

    #[test]
    fn dates_and_timestamps() {
        let d = Date32Array::from(vec![0, 19_723, -1, i32::MAX, i32::MIN, -719_163]);
        assert_eq!(
            all(Arc::new(d)),
            vec![
                s("1970-01-01"),
                s("2024-01-01"),
                s("1969-12-31"),
                s("infinity"),
                s("-infinity"),
                s("0001-12-31 BC")
            ]
        );
        let ts = TimestampMicrosecondArray::from(vec![
            Some(1_704_067_200_123_456),
            Some(-1),
            None,
            Some(i64::MAX),
            Some(253_402_300_800_000_000),
        ]);
        assert_eq!(
            all(Arc::new(ts.clone())),
            vec![
                s("2024-01-01 00:00:00.123456"),
                s("1969-12-31 23:59:59.999999"),
                None,
                s("infinity"),
                s("10000-01-01 00:00:00.000000")
            ]
        );
        let tz = ts.with_timezone("+00:00");
        assert_eq!(all(Arc::new(tz))[0], s("2024-01-01 00:00:00.123456+00"));
    }

    #[test]
    fn lists_quote_every_element() {
        let mut b = ListBuilder::new(StringBuilder::new());
        b.values().append_value("a b");
        b.values().append_null();
        b.values().append_value("NULL");
        b.values().append_value("q\"u\\o,{}");
        b.append(true);
        b.append(false);
        b.append(true);
        let out = all(Arc::new(b.finish()));
        assert_eq!(
            out,
            vec![s(r#"{"a b",NULL,"NULL","q\"u\\o,{}"}"#), None, s("{}")]
        );

        let ints = arrow_array::ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), None, Some(-3)]),
            None,
        ]);
        assert_eq!(all(Arc::new(ints)), vec![s(r#"{"1",NULL,"-3"}"#), None]);

        let mut b = ListBuilder::new(arrow_array::builder::BinaryBuilder::new());
        b.values().append_value([0xab]);
        b.append(true);
        assert_eq!(all(Arc::new(b.finish())), vec![s(r#"{"\\xab"}"#)]);
    }

    #[test]
    fn unsupported_types_are_named() {
        let a: ArrayRef = Arc::new(arrow_array::Time64MicrosecondArray::from(vec![1]));
        assert!(matches!(
            render_value(&a, 0),
            Err(UnsupportedType(DataType::Time64(_)))
        ));
    }
}
