use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    TimestampMicrosecondType, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use bytes::Bytes;
use lily_pgoutput::{Column, Lsn, OldTuple, Relation, ReplicaIdentity, Tuple, Type, Value};

use crate::*;

fn col(name: &str, type_oid: u32, type_modifier: i32, is_key: bool) -> Column {
    Column {
        is_key,
        name: name.to_string(),
        type_oid,
        type_modifier,
    }
}

fn rel(columns: Vec<Column>) -> Relation {
    Relation {
        id: 16_400,
        namespace: "public".to_string(),
        name: "things".to_string(),
        replica_identity: ReplicaIdentity::Default,
        columns,
    }
}

fn schema(columns: Vec<Column>) -> Arc<TableSchema> {
    Arc::new(TableSchema::from_relation(&rel(columns), &HashMap::new()).unwrap())
}

fn t(v: &str) -> Value {
    Value::Text(Bytes::copy_from_slice(v.as_bytes()))
}

fn v(v: Option<&str>) -> Value {
    v.map(t).unwrap_or(Value::Null)
}

fn tuple(values: Vec<Value>) -> Tuple {
    Tuple(values)
}

fn meta() -> RowMeta {
    RowMeta {
        lsn: Lsn(0x16_B374_D848),
        commit_lsn: Lsn(0x16_B374_D900),
        commit_ts: 0,
        xid: 771,
    }
}

/// Builds a one-column table of `oid`/`typmod` and inserts one row per value.
fn column_of(type_oid: u32, type_modifier: i32, values: &[Option<&str>]) -> ArrayRef {
    let mut b = BatchBuilder::new(schema(vec![col("c", type_oid, type_modifier, false)]));
    for value in values {
        b.push_insert(&meta(), &tuple(vec![v(*value)])).unwrap();
    }
    let batch = b.finish();
    assert_eq!(batch.num_rows(), values.len());
    batch.column(0).clone()
}

fn error_of(type_oid: u32, type_modifier: i32, value: &str) -> BatchError {
    let mut b = BatchBuilder::new(schema(vec![col("c", type_oid, type_modifier, false)]));
    let err = b.push_insert(&meta(), &tuple(vec![t(value)])).unwrap_err();
    assert_eq!(b.len(), 0);
    err
}

fn numeric_typmod(precision: i32, scale: i32) -> i32 {
    ((precision << 16) | (scale & 0x7ff)) + 4
}

fn strings(a: &dyn Array) -> Vec<Option<String>> {
    a.as_string::<i32>()
        .iter()
        .map(|s| s.map(str::to_string))
        .collect()
}

fn list_strings(a: &dyn Array) -> Vec<Option<Vec<Option<String>>>> {
    a.as_list::<i32>()
        .iter()
        .map(|l| l.map(|l| strings(&l)))
        .collect()
}

// ---- type mapping ----------------------------------------------------------------------------

#[test]
fn booleans_and_integers() {
    let a = column_of(16, -1, &[Some("t"), Some("f"), None]);
    assert_eq!(a.data_type(), &DataType::Boolean);
    let a = a.as_boolean();
    assert_eq!(
        a.iter().collect::<Vec<_>>(),
        vec![Some(true), Some(false), None]
    );

    let a = column_of(21, -1, &[Some("-32768"), Some("32767"), None]);
    assert_eq!(
        a.as_primitive::<Int16Type>().iter().collect::<Vec<_>>(),
        vec![Some(i16::MIN), Some(i16::MAX), None]
    );
    let a = column_of(23, -1, &[Some("-2147483648"), Some("42"), None]);
    assert_eq!(
        a.as_primitive::<Int32Type>().iter().collect::<Vec<_>>(),
        vec![Some(i32::MIN), Some(42), None]
    );
    let a = column_of(
        20,
        -1,
        &[
            Some("-9223372036854775808"),
            Some("9223372036854775807"),
            None,
        ],
    );
    assert_eq!(
        a.as_primitive::<Int64Type>().iter().collect::<Vec<_>>(),
        vec![Some(i64::MIN), Some(i64::MAX), None]
    );
    let a = column_of(26, -1, &[Some("4294967295"), Some("0"), None]);
    assert_eq!(
        a.as_primitive::<UInt32Type>().iter().collect::<Vec<_>>(),
        vec![Some(u32::MAX), Some(0), None]
    );

    for (oid, value) in [
        (21, "32768"),
        (23, "2147483648"),
        (20, "9223372036854775808"),
        (26, "-1"),
        (23, "12a"),
        (23, ""),
        (16, "yes"),
    ] {
        let e = error_of(oid, -1, value).to_string();
        assert!(e.contains("public.things") && e.contains("\"c\""), "{e}");
    }
}

#[test]
fn floats_including_special_values() {
    let a = column_of(
        701,
        -1,
        &[
            Some("1.5"),
            Some("-2.2250738585072014e-308"),
            Some("NaN"),
            Some("Infinity"),
            Some("-Infinity"),
            Some("0.1"),
            None,
        ],
    );
    let a = a.as_primitive::<Float64Type>();
    assert_eq!(a.value(0), 1.5);
    assert_eq!(a.value(1), -2.2250738585072014e-308);
    assert!(a.value(2).is_nan());
    assert_eq!(a.value(3), f64::INFINITY);
    assert_eq!(a.value(4), f64::NEG_INFINITY);
    assert_eq!(a.value(5), 0.1);
    assert!(a.is_null(6));

    let a = column_of(
        700,
        -1,
        &[Some("3.4028235e+38"), Some("NaN"), Some("-Infinity"), None],
    );
    let a = a.as_primitive::<Float32Type>();
    assert_eq!(a.value(0), f32::MAX);
    assert!(a.value(1).is_nan());
    assert_eq!(a.value(2), f32::NEG_INFINITY);
    assert!(a.is_null(3));

    assert!(error_of(701, -1, "one").to_string().contains("\"one\""));
}

#[test]
fn numeric_with_scale_becomes_decimal() {
    let typmod = numeric_typmod(10, 2);
    let a = column_of(
        1700,
        typmod,
        &[
            Some("12.3"),
            Some("12.34"),
            Some("-0.5"),
            Some("0"),
            Some("99999999.99"),
            Some("1.005"),
            Some("-1.005"),
            Some("7"),
            None,
        ],
    );
    assert_eq!(a.data_type(), &DataType::Decimal128(10, 2));
    let a = a.as_primitive::<Decimal128Type>();
    assert_eq!(
        a.iter().collect::<Vec<_>>(),
        vec![
            Some(1230),
            Some(1234),
            Some(-50),
            Some(0),
            Some(9_999_999_999),
            Some(101),
            Some(-101),
            Some(700),
            None
        ]
    );

    // Negative scale (PostgreSQL 15+): numeric(5,-2) stores hundreds.
    let a = column_of(1700, numeric_typmod(5, -2), &[Some("12300")]);
    assert_eq!(a.data_type(), &DataType::Decimal128(5, -2));
    assert_eq!(a.as_primitive::<Decimal128Type>().value(0), 123);

    // numeric(38,0) holds 38 digits.
    let big = "9".repeat(38);
    let a = column_of(1700, numeric_typmod(38, 0), &[Some(&big)]);
    assert_eq!(
        a.as_primitive::<Decimal128Type>().value(0),
        10i128.pow(38) - 1
    );

    let e = error_of(1700, typmod, "123456789.00").to_string();
    assert!(e.contains("precision"), "{e}");
}

#[test]
fn numeric_nan_in_decimal_column_is_an_error() {
    for value in ["NaN", "Infinity", "-Infinity"] {
        let e = error_of(1700, numeric_typmod(10, 2), value);
        let text = e.to_string();
        assert!(text.contains("column \"c\""), "{text}");
        assert!(text.contains("public.things"), "{text}");
        assert!(text.contains("numeric"), "{text}");
        assert!(text.contains(value), "{text}");
        assert!(text.contains("unconstrained numeric"), "{text}");
    }
}

#[test]
fn unconstrained_and_wide_numeric_stay_text() {
    let s = schema(vec![
        col("free", 1700, -1, false),
        col("wide", 1700, numeric_typmod(60, 10), false),
    ]);
    assert_eq!(s.columns[0].data_type, DataType::Utf8);
    assert_eq!(s.columns[1].data_type, DataType::Utf8);
    assert_eq!(s.columns[0].pg_type, "numeric");
    let mut b = BatchBuilder::new(s);
    b.push_insert(&meta(), &tuple(vec![t("NaN"), t("1.5000000000")]))
        .unwrap();
    let batch = b.finish();
    assert_eq!(strings(batch.column(0))[0].as_deref(), Some("NaN"));
    assert_eq!(strings(batch.column(1))[0].as_deref(), Some("1.5000000000"));
    let f = batch.schema().field(0).clone();
    assert_eq!(f.metadata()["pg.type"], "numeric");
}

#[test]
fn text_like_types_are_utf8() {
    for (oid, name) in [
        (25, "text"),
        (1043, "varchar"),
        (1042, "bpchar"),
        (19, "name"),
        (18, "char"),
        (114, "json"),
        (3802, "jsonb"),
        (1186, "interval"),
        (1083, "time"),
        (869, "inet"),
    ] {
        let s = schema(vec![col("c", oid, -1, false)]);
        assert_eq!(s.columns[0].data_type, DataType::Utf8, "{name}");
        assert_eq!(s.columns[0].pg_type, name);
        let a = column_of(oid, -1, &[Some("héllo {\"a\": 1}"), None]);
        assert_eq!(
            strings(&a),
            vec![Some("héllo {\"a\": 1}".to_string()), None],
            "{name}"
        );
    }
    let e = {
        let mut b = BatchBuilder::new(schema(vec![col("c", 25, -1, false)]));
        b.push_insert(
            &meta(),
            &tuple(vec![Value::Text(Bytes::from_static(b"bad \xff"))]),
        )
        .unwrap_err()
    };
    assert!(e.to_string().contains("UTF-8"), "{e}");
}

#[test]
fn uuids_are_validated_and_lowercased() {
    let a = column_of(
        2950,
        -1,
        &[
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            Some("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12"),
            None,
        ],
    );
    assert_eq!(
        strings(&a),
        vec![
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_string()),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12".to_string()),
            None
        ]
    );
    for bad in [
        "a0eebc999c0b4ef8bb6d6bb9bd380a11",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g",
        "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
    ] {
        let e = error_of(2950, -1, bad).to_string();
        assert!(e.contains("uuid") && e.contains("\"c\""), "{e}");
    }
}

#[test]
fn bytea_hex_is_decoded() {
    let a = column_of(
        17,
        -1,
        &[Some("\\x0102ff"), Some("\\x"), Some("\\xDEADbeef"), None],
    );
    assert_eq!(a.data_type(), &DataType::Binary);
    let a = a.as_binary::<i32>();
    assert_eq!(a.value(0), &[1, 2, 255]);
    assert_eq!(a.value(1), b"");
    assert_eq!(a.value(2), &[0xde, 0xad, 0xbe, 0xef]);
    assert!(a.is_null(3));
    for bad in ["\\x0", "\\xzz", "abc"] {
        let e = error_of(17, -1, bad).to_string();
        assert!(e.contains("bytea"), "{e}");
    }
}

#[test]
fn dates() {
    let a = column_of(
        1082,
        -1,
        &[
            Some("1970-01-01"),
            Some("2024-02-29"),
            Some("1969-12-31"),
            Some("0001-01-01"),
            Some("infinity"),
            Some("-infinity"),
            Some("12345-06-07"),
            None,
        ],
    );
    let a = a.as_primitive::<Date32Type>();
    assert_eq!(a.value(0), 0);
    assert_eq!(a.value(1), 19_782);
    assert_eq!(a.value(2), -1);
    assert_eq!(a.value(3), -719_162);
    assert_eq!(a.value(4), i32::MAX);
    assert_eq!(a.value(5), i32::MIN);
    assert_eq!(a.value(6), 3_789_548);
    assert!(a.is_null(7));
    for bad in [
        "2023-02-29",
        "2024-13-01",
        "2024-1-01",
        "2024-01-01x",
        "0044-03-15 BC",
    ] {
        let e = error_of(1082, -1, bad).to_string();
        assert!(e.contains("\"c\""), "{e}");
    }
}

#[test]
fn timestamps_without_time_zone() {
    let a = column_of(
        1114,
        -1,
        &[
            Some("2000-01-01 00:00:00"),
            Some("2026-11-24 02:36:56.123456"),
            Some("1969-12-31 23:59:59.5"),
            Some("infinity"),
            None,
        ],
    );
    assert_eq!(
        a.data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, None)
    );
    let a = a.as_primitive::<TimestampMicrosecondType>();
    assert_eq!(a.value(0), 946_684_800_000_000);
    assert_eq!(a.value(1), 1_795_487_816_123_456);
    assert_eq!(a.value(2), -500_000);
    assert_eq!(a.value(3), i64::MAX);
    assert!(a.is_null(4));
    // No offset allowed without a time zone.
    assert!(error_of(1114, -1, "2026-11-24 02:36:56+00")
        .to_string()
        .contains("\"c\""));
}

#[test]
fn timestamptz_with_offsets() {
    let a = column_of(
        1184,
        -1,
        &[
            Some("2026-11-24 02:36:56.123456+00"),
            Some("2026-11-24 08:06:56.123456+05:30"),
            Some("2026-11-23 18:36:56.123456-08"),
            Some("2026-11-24 02:36:56+00"),
            Some("2026-11-24 02:36:56.1+00"),
            Some("1900-01-01 00:00:00-00:09:21"),
            Some("infinity"),
            Some("-infinity"),
            None,
        ],
    );
    assert_eq!(
        a.data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
    );
    let a = a.as_primitive::<TimestampMicrosecondType>();
    let base = 1_795_487_816_000_000;
    assert_eq!(a.value(0), base + 123_456);
    assert_eq!(a.value(1), base + 123_456);
    assert_eq!(a.value(2), base + 123_456);
    assert_eq!(a.value(3), base);
    assert_eq!(a.value(4), base + 100_000);
    assert_eq!(a.value(5), -2_208_988_800_000_000 + 561_000_000);
    assert_eq!(a.value(6), i64::MAX);
    assert_eq!(a.value(7), i64::MIN);
    assert!(a.is_null(8));
    for bad in [
        "2026-11-24 02:36:56",
        "2026-11-24 02:36:56.1234567+00",
        "2026-11-24 25:00:00+00",
        "2026-11-24 02:36:56+0",
        "0044-03-15 12:00:00+00 BC",
    ] {
        let e = error_of(1184, -1, bad).to_string();
        assert!(e.contains("public.things") && e.contains("\"c\""), "{e}");
    }
}

// ---- arrays ----------------------------------------------------------------------------------

#[test]
fn integer_arrays() {
    let a = column_of(
        1007,
        -1,
        &[Some("{1,2,NULL}"), Some("{}"), None, Some("{-7}")],
    );
    assert_eq!(
        a.data_type(),
        &DataType::List(Arc::new(arrow_schema::Field::new_list_field(
            DataType::Int32,
            true
        )))
    );
    let lists: Vec<Option<Vec<Option<i32>>>> = a
        .as_list::<i32>()
        .iter()
        .map(|l| l.map(|l| l.as_primitive::<Int32Type>().iter().collect()))
        .collect();
    assert_eq!(
        lists,
        vec![
            Some(vec![Some(1), Some(2), None]),
            Some(vec![]),
            None,
            Some(vec![Some(-7)])
        ]
    );
    let e = error_of(1007, -1, "{1,x}").to_string();
    assert!(e.contains("\"c\"") && e.contains("_int4"), "{e}");
}

#[test]
fn text_arrays_with_quotes_escapes_and_nulls() {
    let a = column_of(
        1009,
        -1,
        &[
            Some(r#"{"a b","c\"d","NULL",NULL,plain,"back\\slash","",null,"{}"}"#),
            Some("{}"),
            Some(r#"{"é,ü"}"#),
        ],
    );
    assert_eq!(
        list_strings(&a),
        vec![
            Some(vec![
                Some("a b".to_string()),
                Some("c\"d".to_string()),
                Some("NULL".to_string()),
                None,
                Some("plain".to_string()),
                Some("back\\slash".to_string()),
                Some("".to_string()),
                None,
                Some("{}".to_string()),
            ]),
            Some(vec![]),
            Some(vec![Some("é,ü".to_string())]),
        ]
    );
    for bad in [r#"{"open}"#, "{a,,b}", "{a,}", r#"{"a"x}"#, "1,2"] {
        let e = error_of(1009, -1, bad).to_string();
        assert!(e.contains("\"c\""), "{bad}: {e}");
    }
}

#[test]
fn multidimensional_and_bounded_arrays_are_errors() {
    for bad in ["{{1,2},{3,4}}", "[0:1]={1,2}", "[1:1][1:2]={{1,2}}"] {
        let e = error_of(1007, -1, bad).to_string();
        assert!(
            e.contains("public.things") && e.contains("column \"c\""),
            "{e}"
        );
        assert!(e.contains("one-dimensional"), "{e}");
    }
}

#[test]
fn arrays_of_other_element_types() {
    let a = column_of(1000, -1, &[Some("{t,f,NULL}")]);
    let l = a.as_list::<i32>().value(0);
    assert_eq!(
        l.as_boolean().iter().collect::<Vec<_>>(),
        vec![Some(true), Some(false), None]
    );

    let a = column_of(1231, numeric_typmod(6, 2), &[Some("{1.5,-2,NULL}")]);
    let l = a.as_list::<i32>().value(0);
    assert_eq!(l.data_type(), &DataType::Decimal128(6, 2));
    assert_eq!(
        l.as_primitive::<Decimal128Type>()
            .iter()
            .collect::<Vec<_>>(),
        vec![Some(150), Some(-200), None]
    );

    let a = column_of(
        1185,
        -1,
        &[Some(
            r#"{"2000-01-01 00:00:00+00","2000-01-01 05:30:00+05:30"}"#,
        )],
    );
    let l = a.as_list::<i32>().value(0);
    assert_eq!(
        l.as_primitive::<TimestampMicrosecondType>()
            .iter()
            .collect::<Vec<_>>(),
        vec![Some(946_684_800_000_000), Some(946_684_800_000_000)]
    );

    let a = column_of(
        2951,
        -1,
        &[Some(
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12}",
        )],
    );
    assert_eq!(
        list_strings(&a)[0],
        Some(vec![
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_string()),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12".to_string()),
        ])
    );

    let a = column_of(1001, -1, &[Some(r#"{"\\x0102","\\x",NULL}"#)]);
    let l = a.as_list::<i32>().value(0);
    let l = l.as_binary::<i32>();
    assert_eq!(l.value(0), &[1, 2]);
    assert_eq!(l.value(1), b"");
    assert!(l.is_null(2));

    let a = column_of(3807, -1, &[Some(r#"{"{\"a\": 1}","[]"}"#)]);
    assert_eq!(
        list_strings(&a)[0],
        Some(vec![
            Some(r#"{"a": 1}"#.to_string()),
            Some("[]".to_string())
        ])
    );

    let a = column_of(1182, -1, &[Some("{1970-01-02,infinity}")]);
    let l = a.as_list::<i32>().value(0);
    assert_eq!(
        l.as_primitive::<Date32Type>().iter().collect::<Vec<_>>(),
        vec![Some(1), Some(i32::MAX)]
    );

    let a = column_of(1022, -1, &[Some("{1.5,NaN,-Infinity}")]);
    let l = a.as_list::<i32>().value(0);
    let l = l.as_primitive::<Float64Type>();
    assert_eq!(l.value(0), 1.5);
    assert!(l.value(1).is_nan());
    assert_eq!(l.value(2), f64::NEG_INFINITY);

    // An array of a type without a typed mapping stays text.
    let s = schema(vec![col("c", 1041, -1, false)]);
    assert_eq!(s.columns[0].data_type, DataType::Utf8);
    assert_eq!(s.columns[0].pg_type, "_inet");
}

// ---- schema ----------------------------------------------------------------------------------

#[test]
fn schema_fields_and_metadata() {
    let mut custom = HashMap::new();
    custom.insert(
        16_500,
        Type {
            id: 16_500,
            namespace: "public".to_string(),
            name: "mood".to_string(),
        },
    );
    let s = TableSchema::from_relation(
        &rel(vec![
            col("id", 20, -1, true),
            col("mood", 16_500, -1, false),
            col("tags", 1009, -1, false),
            col("odd", 99_999, -1, false),
        ]),
        &custom,
    )
    .unwrap();
    assert_eq!(s.qualified_name(), "public.things");
    assert_eq!(
        s.key_columns()
            .map(|(i, c)| (i, c.name.as_str()))
            .collect::<Vec<_>>(),
        vec![(0, "id")]
    );
    assert_eq!(s.columns[1].pg_type, "public.mood");
    assert_eq!(s.columns[1].data_type, DataType::Utf8);
    assert_eq!(s.columns[2].pg_type, "_text");
    assert_eq!(s.columns[3].pg_type, "unknown:99999");

    let names: Vec<&str> = s.arrow.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        vec![
            "id",
            "mood",
            "tags",
            "odd",
            "_op",
            "_lsn",
            "_commit_lsn",
            "_commit_ts",
            "_xid",
            "_old",
            "_unchanged_toast"
        ]
    );
    let id = s.arrow.field(0);
    assert!(id.is_nullable());
    assert_eq!(id.metadata()["pg.type"], "int8");
    assert_eq!(id.metadata()["pg.type_oid"], "20");
    assert_eq!(id.metadata()["pg.key"], "true");
    let mood = s.arrow.field(1);
    assert_eq!(mood.metadata()["pg.type"], "public.mood");
    assert_eq!(mood.metadata()["pg.type_oid"], "16500");
    assert!(!mood.metadata().contains_key("pg.key"));
    for f in &s.arrow.fields()[4..9] {
        assert!(!f.is_nullable(), "{}", f.name());
    }
    match s.arrow.field(9).data_type() {
        DataType::Struct(fields) => {
            assert_eq!(fields.len(), 4);
            assert!(fields.iter().all(|f| f.is_nullable()));
            assert_eq!(fields[0].metadata()["pg.key"], "true");
        }
        other => panic!("{other}"),
    }
    assert_eq!(s.arrow.metadata()["pg.table"], "things");
    assert_eq!(s.metadata_offset(), 4);
}

#[test]
fn metadata_column_name_collision_is_an_error() {
    for name in METADATA_COLUMNS {
        let err = TableSchema::from_relation(
            &rel(vec![col("id", 23, -1, true), col(name, 25, -1, false)]),
            &HashMap::new(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, BatchError::ReservedColumnName { .. }));
        assert!(text.contains("public.things"), "{text}");
        assert!(text.contains(&format!("\"{name}\"")), "{text}");
        assert!(text.contains("rename"), "{text}");
    }
}

// ---- rows ------------------------------------------------------------------------------------

/// id int4 key, name text, body text (TOAST-able).
fn people() -> Arc<TableSchema> {
    schema(vec![
        col("id", 23, -1, true),
        col("name", 25, -1, false),
        col("body", 25, -1, false),
    ])
}

fn old_column(batch: &RecordBatch) -> &arrow_array::StructArray {
    batch.column_by_name(OLD_COLUMN).unwrap().as_struct()
}

#[test]
fn metadata_columns() {
    let mut b = BatchBuilder::new(people());
    let m = RowMeta {
        lsn: Lsn(100),
        commit_lsn: Lsn(200),
        commit_ts: 1_000_000,
        xid: 42,
    };
    let row = tuple(vec![t("1"), t("a"), t("x")]);
    b.push_insert(&m, &row).unwrap();
    b.push_update(&m, None, &row).unwrap();
    b.push_delete(
        &m,
        &OldTuple::Key(tuple(vec![t("1"), Value::Null, Value::Null])),
    )
    .unwrap();
    let batch = b.finish();
    assert_eq!(batch.num_rows(), 3);
    assert_eq!(
        strings(batch.column_by_name(OP_COLUMN).unwrap()),
        vec![
            Some("insert".to_string()),
            Some("update".to_string()),
            Some("delete".to_string())
        ]
    );
    let lsn = batch.column_by_name(LSN_COLUMN).unwrap();
    assert_eq!(
        lsn.as_primitive::<UInt64Type>().values().to_vec(),
        vec![100; 3]
    );
    let commit = batch.column_by_name(COMMIT_LSN_COLUMN).unwrap();
    assert_eq!(
        commit.as_primitive::<UInt64Type>().values().to_vec(),
        vec![200; 3]
    );
    let ts = batch.column_by_name(COMMIT_TS_COLUMN).unwrap();
    assert_eq!(
        ts.data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
    );
    assert_eq!(
        ts.as_primitive::<TimestampMicrosecondType>().value(0),
        946_684_801_000_000
    );
    let xid = batch.column_by_name(XID_COLUMN).unwrap();
    assert_eq!(
        xid.as_primitive::<UInt32Type>().values().to_vec(),
        vec![42; 3]
    );
    for name in [
        OP_COLUMN,
        LSN_COLUMN,
        COMMIT_LSN_COLUMN,
        COMMIT_TS_COLUMN,
        XID_COLUMN,
    ] {
        assert_eq!(batch.column_by_name(name).unwrap().null_count(), 0);
    }
    let toast = batch.column_by_name(UNCHANGED_TOAST_COLUMN).unwrap();
    assert_eq!(toast.null_count(), 3);

    // Delete rows carry the old image in the data columns too.
    assert_eq!(batch.column(0).as_primitive::<Int32Type>().value(2), 1);
    assert!(batch.column(1).is_null(2));
}

#[test]
fn old_image_for_key_and_full() {
    let mut b = BatchBuilder::new(people());
    b.push_insert(&meta(), &tuple(vec![t("1"), t("a"), t("x")]))
        .unwrap();
    // Key changed: only the key is in the old image.
    b.push_update(
        &meta(),
        Some(&OldTuple::Key(tuple(vec![
            t("1"),
            Value::Null,
            Value::Null,
        ]))),
        &tuple(vec![t("2"), t("a"), t("x")]),
    )
    .unwrap();
    // REPLICA IDENTITY FULL.
    b.push_update(
        &meta(),
        Some(&OldTuple::Old(tuple(vec![t("2"), t("a"), t("x")]))),
        &tuple(vec![t("2"), t("b"), t("x")]),
    )
    .unwrap();
    b.push_update(&meta(), None, &tuple(vec![t("2"), t("c"), t("x")]))
        .unwrap();
    b.push_delete(
        &meta(),
        &OldTuple::Old(tuple(vec![t("2"), t("c"), Value::Null])),
    )
    .unwrap();
    // Trailing rows without an old image.
    b.push_insert(&meta(), &tuple(vec![t("3"), t("d"), t("y")]))
        .unwrap();
    let batch = b.finish();
    let old = old_column(&batch);
    assert_eq!(
        old.nulls().unwrap().iter().collect::<Vec<_>>(),
        vec![false, true, true, false, true, false]
    );
    assert_eq!(old.column(0).len(), 6);
    assert!(old.column(1).is_null(5));
    let ids = old.column(0).as_primitive::<Int32Type>();
    assert_eq!(ids.value(1), 1);
    assert_eq!(ids.value(2), 2);
    assert_eq!(ids.value(4), 2);
    let names = strings(old.column(1));
    assert_eq!(names[1], None);
    assert_eq!(names[2].as_deref(), Some("a"));
    assert_eq!(names[4].as_deref(), Some("c"));
    assert_eq!(strings(old.column(2))[2].as_deref(), Some("x"));
    // New values.
    assert_eq!(
        strings(batch.column(1)),
        vec![
            Some("a".to_string()),
            Some("a".to_string()),
            Some("b".to_string()),
            Some("c".to_string()),
            Some("c".to_string()),
            Some("d".to_string())
        ]
    );
}

#[test]
fn unchanged_toast_filled_from_full_old_tuple_or_listed() {
    let mut b = BatchBuilder::new(people());
    // FULL old image carries the value: copied, not listed.
    b.push_update(
        &meta(),
        Some(&OldTuple::Old(tuple(vec![t("1"), t("a"), t("big body")]))),
        &tuple(vec![t("1"), t("b"), Value::UnchangedToast]),
    )
    .unwrap();
    // No old image: null and listed.
    b.push_update(
        &meta(),
        None,
        &tuple(vec![t("1"), Value::UnchangedToast, Value::UnchangedToast]),
    )
    .unwrap();
    // Key-only old image does not carry non-key values: listed.
    b.push_update(
        &meta(),
        Some(&OldTuple::Key(tuple(vec![
            t("0"),
            Value::Null,
            Value::Null,
        ]))),
        &tuple(vec![t("1"), t("c"), Value::UnchangedToast]),
    )
    .unwrap();
    b.push_insert(&meta(), &tuple(vec![t("2"), t("d"), t("e")]))
        .unwrap();
    let batch = b.finish();
    let body = strings(batch.column(2));
    assert_eq!(
        body,
        vec![
            Some("big body".to_string()),
            None,
            None,
            Some("e".to_string())
        ]
    );
    let toast = list_strings(batch.column_by_name(UNCHANGED_TOAST_COLUMN).unwrap());
    assert_eq!(
        toast,
        vec![
            None,
            Some(vec![Some("name".to_string()), Some("body".to_string())]),
            Some(vec![Some("body".to_string())]),
            None,
        ]
    );
    // The FULL old image itself is kept in _old.
    assert_eq!(
        strings(old_column(&batch).column(2))[0].as_deref(),
        Some("big body")
    );
}

#[test]
fn finish_resets_the_builder() {
    let mut b = BatchBuilder::new(people());
    assert!(b.is_empty());
    assert_eq!(b.approx_bytes(), 0);
    for i in 0..3 {
        b.push_insert(&meta(), &tuple(vec![t(&i.to_string()), t("n"), t("b")]))
            .unwrap();
    }
    assert_eq!(b.len(), 3);
    let first_bytes = b.approx_bytes();
    assert!(first_bytes > 3 * 12, "{first_bytes}");
    let first = b.finish();
    assert_eq!(first.num_rows(), 3);
    assert!(b.is_empty());
    assert_eq!(b.approx_bytes(), 0);

    let empty = b.finish();
    assert_eq!(empty.num_rows(), 0);
    assert_eq!(empty.schema(), first.schema());

    b.push_update(
        &meta(),
        Some(&OldTuple::Key(tuple(vec![
            t("9"),
            Value::Null,
            Value::Null,
        ]))),
        &tuple(vec![t("10"), Value::Null, Value::UnchangedToast]),
    )
    .unwrap();
    let second = b.finish();
    assert_eq!(second.num_rows(), 1);
    assert_eq!(second.column(0).as_primitive::<Int32Type>().value(0), 10);
    assert_eq!(
        old_column(&second)
            .column(0)
            .as_primitive::<Int32Type>()
            .value(0),
        9
    );
    assert_eq!(
        list_strings(second.column_by_name(UNCHANGED_TOAST_COLUMN).unwrap())[0],
        Some(vec![Some("body".to_string())])
    );
}

#[test]
fn failed_push_leaves_the_batch_consistent() {
    let s = schema(vec![
        col("id", 23, -1, true),
        col("tags", 1007, -1, false),
        col("at", 1184, -1, false),
    ]);
    let mut b = BatchBuilder::new(s);
    b.push_insert(
        &meta(),
        &tuple(vec![t("1"), t("{1,2}"), t("2000-01-01 00:00:00+00")]),
    )
    .unwrap();
    // The first two values parse, the third does not: nothing may be appended.
    let err = b
        .push_insert(&meta(), &tuple(vec![t("2"), t("{3}"), t("yesterday")]))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("public.things") && text.contains("column \"at\""),
        "{text}"
    );
    assert!(
        text.contains("\"yesterday\"") && text.contains("timestamptz"),
        "{text}"
    );
    // Bad old image on an update: nothing appended either.
    b.push_update(
        &meta(),
        Some(&OldTuple::Old(tuple(vec![
            t("x"),
            Value::Null,
            Value::Null,
        ]))),
        &tuple(vec![t("3"), Value::Null, Value::Null]),
    )
    .unwrap_err();
    assert_eq!(b.len(), 1);
    b.push_insert(&meta(), &tuple(vec![t("4"), t("{5,6}"), Value::Null]))
        .unwrap();
    let batch = b.finish();
    assert_eq!(batch.num_rows(), 2);
    assert_eq!(
        batch
            .column(0)
            .as_primitive::<Int32Type>()
            .values()
            .to_vec(),
        vec![1, 4]
    );
    let tags: Vec<Vec<i32>> = batch
        .column(1)
        .as_list::<i32>()
        .iter()
        .map(|l| l.unwrap().as_primitive::<Int32Type>().values().to_vec())
        .collect();
    assert_eq!(tags, vec![vec![1, 2], vec![5, 6]]);
}

#[test]
fn other_row_errors() {
    let mut b = BatchBuilder::new(people());
    let e = b
        .push_insert(
            &meta(),
            &tuple(vec![
                Value::Binary(Bytes::from_static(&[0, 0, 0, 1])),
                t("a"),
                t("b"),
            ]),
        )
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("public.things") && text.contains("\"id\"") && text.contains("binary"));

    let e = b.push_insert(&meta(), &tuple(vec![t("1")])).unwrap_err();
    assert!(matches!(
        e,
        BatchError::ColumnCount {
            expected: 3,
            got: 1,
            ..
        }
    ));
    assert!(e.to_string().contains("public.things"));

    let long = "x".repeat(500);
    let e = b
        .push_insert(&meta(), &tuple(vec![t(&long), t("a"), t("b")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("\"{}\"... (500 bytes)", "x".repeat(64))),
        "{e}"
    );
    assert!(!e.contains(&"x".repeat(65)), "{e}");
    assert!(e.contains("int4"), "{e}");
    assert!(b.is_empty());
}

#[test]
fn from_columns_rejects_foreign_types() {
    let err = TableSchema::from_columns(
        1,
        "public".into(),
        "t".into(),
        ReplicaIdentity::Default,
        vec![ColumnSpec {
            name: "c".into(),
            type_oid: 25,
            type_modifier: -1,
            is_key: false,
            pg_type: "text".into(),
            data_type: DataType::LargeUtf8,
        }],
    )
    .unwrap_err();
    assert!(err.to_string().contains("\"c\""), "{err}");
}

// ---- throughput ------------------------------------------------------------------------------

/// Asset-shaped rows: `cargo test -p lily-batch --release -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput_asset_rows() {
    let s = schema(vec![
        col("guid", 2950, -1, true),
        col("tenant", 25, -1, false),
        col("type", 25, -1, false),
        col("qualified_name", 25, -1, false),
        col("name", 25, -1, false),
        col("parent", 2950, -1, false),
        col("attributes", 3802, -1, false),
        col("version", 20, -1, false),
        col("updated_at", 1184, -1, false),
    ]);
    const DISTINCT: usize = 4096;
    let rows: Vec<Tuple> = (0..DISTINCT)
        .map(|i| {
            tuple(vec![
                t(&format!("{:08x}-9c0b-4ef8-bb6d-{:012x}", i * 7919, i)),
                t("default"),
                t("Table"),
                t(&format!("default/snowflake/1700000000/DB/SCHEMA/TABLE_{i}")),
                t(&format!("TABLE_{i}")),
                t(&format!("{:08x}-1111-4ef8-bb6d-{:012x}", i / 16, i / 16)),
                t(&format!(
                    r#"{{"rowCount": {i}, "columnCount": 12, "description": "table number {i}", "certified": true}}"#
                )),
                t(&(i * 3).to_string()),
                t(&format!("2026-11-24 02:{:02}:{:02}.{:06}+00", (i / 60) % 60, i % 60, i)),
            ])
        })
        .collect();
    let mut b = BatchBuilder::new(s);
    let n = 1_000_000;
    let batch_rows = 8192;
    let m = meta();
    let start = std::time::Instant::now();
    let mut total = 0;
    let mut bytes = 0;
    for i in 0..n {
        b.push_insert(&m, &rows[i % DISTINCT]).unwrap();
        if b.len() == batch_rows {
            bytes += b.approx_bytes();
            total += b.finish().num_rows();
        }
    }
    bytes += b.approx_bytes();
    total += b.finish().num_rows();
    let elapsed = start.elapsed();
    assert_eq!(total, n);
    println!(
        "lily-batch: {n} asset rows in {elapsed:?} = {:.0} rows/s (~{} MB estimated)",
        n as f64 / elapsed.as_secs_f64(),
        bytes / 1_000_000
    );
}

#[test]
fn builder_and_schema_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<BatchBuilder>();
    check::<TableSchema>();
    check::<BatchError>();
}
