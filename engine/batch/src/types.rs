//! PostgreSQL type OIDs and how each maps to an Arrow type.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, TimeUnit};
use lily_pgoutput::Type;

/// The time zone every `timestamptz` and `_commit_ts` column carries.
/// Offset form rather than "UTC": Arrow resolves offsets without a time-zone database.
pub(crate) const UTC: &str = "+00:00";

/// How one scalar value is parsed and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Int16,
    Int32,
    Int64,
    Oid,
    Float32,
    Float64,
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// Any text-like value stored as-is (text, varchar, json, jsonb, interval, enums, ...).
    Text,
    /// Validated and normalised to canonical lowercase.
    Uuid,
    /// `\x...` hex text decoded to bytes.
    Bytea,
    Date,
    Timestamp,
    TimestampTz,
}

/// How one column is parsed and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColType {
    Scalar(Kind),
    /// A one-dimensional array of the element kind.
    List(Kind),
}

impl Kind {
    pub(crate) fn data_type(self) -> DataType {
        match self {
            Kind::Bool => DataType::Boolean,
            Kind::Int16 => DataType::Int16,
            Kind::Int32 => DataType::Int32,
            Kind::Int64 => DataType::Int64,
            Kind::Oid => DataType::UInt32,
            Kind::Float32 => DataType::Float32,
            Kind::Float64 => DataType::Float64,
            Kind::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
            Kind::Text | Kind::Uuid => DataType::Utf8,
            Kind::Bytea => DataType::Binary,
            Kind::Date => DataType::Date32,
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Kind::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
        }
    }

    /// Bytes one value takes in its builder apart from variable-length content.
    pub(crate) fn fixed_width(self) -> usize {
        match self {
            Kind::Bool => 1,
            Kind::Int16 => 2,
            Kind::Int32 | Kind::Oid | Kind::Float32 | Kind::Date => 4,
            Kind::Int64 | Kind::Float64 | Kind::Timestamp | Kind::TimestampTz => 8,
            Kind::Decimal { .. } => 16,
            // The i32 offset; the content is counted per value.
            Kind::Text | Kind::Uuid | Kind::Bytea => 4,
        }
    }

    /// Recovers the kind from a column's Arrow type (and its type OID, to tell uuid from text).
    fn from_data_type(dt: &DataType, scalar_oid: u32) -> Option<Kind> {
        Some(match dt {
            DataType::Boolean => Kind::Bool,
            DataType::Int16 => Kind::Int16,
            DataType::Int32 => Kind::Int32,
            DataType::Int64 => Kind::Int64,
            DataType::UInt32 => Kind::Oid,
            DataType::Float32 => Kind::Float32,
            DataType::Float64 => Kind::Float64,
            DataType::Decimal128(precision, scale) => Kind::Decimal {
                precision: *precision,
                scale: *scale,
            },
            DataType::Utf8 if scalar_oid == oid::UUID => Kind::Uuid,
            DataType::Utf8 => Kind::Text,
            DataType::Binary => Kind::Bytea,
            DataType::Date32 => Kind::Date,
            DataType::Timestamp(TimeUnit::Microsecond, None) => Kind::Timestamp,
            DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => Kind::TimestampTz,
            _ => return None,
        })
    }
}

impl ColType {
    /// The column type for a relation column.
    pub(crate) fn for_column(type_oid: u32, type_modifier: i32) -> ColType {
        if let Some(kind) = scalar_kind(type_oid, type_modifier) {
            return ColType::Scalar(kind);
        }
        if let Some(elem) = array_element(type_oid) {
            // For arrays, atttypmod is the element's modifier (numeric(10,2)[]).
            if let Some(kind) = scalar_kind(elem, type_modifier) {
                return ColType::List(kind);
            }
        }
        ColType::Scalar(Kind::Text)
    }

    /// Recovers the column type from a column's Arrow type and type OID.
    pub(crate) fn from_spec(type_oid: u32, data_type: &DataType) -> Option<ColType> {
        match data_type {
            DataType::List(item) => {
                let elem_oid = array_element(type_oid).unwrap_or(0);
                Kind::from_data_type(item.data_type(), elem_oid).map(ColType::List)
            }
            dt => Kind::from_data_type(dt, type_oid).map(ColType::Scalar),
        }
    }

    pub(crate) fn data_type(self) -> DataType {
        match self {
            ColType::Scalar(k) => k.data_type(),
            ColType::List(k) => {
                DataType::List(Arc::new(Field::new_list_field(k.data_type(), true)))
            }
        }
    }
}

/// Built-in type OIDs this crate gives a typed mapping.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

fn scalar_kind(type_oid: u32, type_modifier: i32) -> Option<Kind> {
    Some(match type_oid {
        oid::BOOL => Kind::Bool,
        oid::INT2 => Kind::Int16,
        oid::INT4 => Kind::Int32,
        oid::INT8 => Kind::Int64,
        oid::OID => Kind::Oid,
        oid::FLOAT4 => Kind::Float32,
        oid::FLOAT8 => Kind::Float64,
        oid::NUMERIC => numeric_kind(type_modifier),
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::CHAR | oid::JSON | oid::JSONB => {
            Kind::Text
        }
        oid::UUID => Kind::Uuid,
        oid::BYTEA => Kind::Bytea,
        oid::DATE => Kind::Date,
        oid::TIMESTAMP => Kind::Timestamp,
        oid::TIMESTAMPTZ => Kind::TimestampTz,
        _ => return None,
    })
}

/// `numeric(p, s)` → Decimal128(p, s) when Arrow can hold it; unconstrained or too wide → text.
fn numeric_kind(type_modifier: i32) -> Kind {
    // VARHDRSZ (4) is added to the packed ((precision << 16) | (scale & 0x7ff)).
    if type_modifier < 4 {
        return Kind::Text;
    }
    let packed = type_modifier - 4;
    let precision = (packed >> 16) & 0xffff;
    // Since PostgreSQL 15 the scale is an 11-bit two's-complement number (-1000..=1000).
    let scale = ((packed & 0x7ff) ^ 0x400) - 0x400;
    let fits = (1..=38).contains(&precision) && (-38..=precision).contains(&scale);
    if fits {
        Kind::Decimal {
            precision: precision as u8,
            scale: scale as i8,
        }
    } else {
        Kind::Text
    }
}

/// Element type of the array types that map to an Arrow List.
fn array_element(type_oid: u32) -> Option<u32> {
    Some(match type_oid {
        1000 => oid::BOOL,
        1001 => oid::BYTEA,
        1002 => oid::CHAR,
        1003 => oid::NAME,
        1005 => oid::INT2,
        1007 => oid::INT4,
        1009 => oid::TEXT,
        1014 => oid::BPCHAR,
        1015 => oid::VARCHAR,
        1016 => oid::INT8,
        1021 => oid::FLOAT4,
        1022 => oid::FLOAT8,
        1028 => oid::OID,
        1115 => oid::TIMESTAMP,
        1182 => oid::DATE,
        1185 => oid::TIMESTAMPTZ,
        1231 => oid::NUMERIC,
        2951 => oid::UUID,
        3807 => oid::JSONB,
        199 => oid::JSON,
        _ => return None,
    })
}

/// The name recorded in a field's `pg.type`: the built-in name, `namespace.name` for a type
/// announced by a `Type` message, or `unknown:<oid>`.
pub(crate) fn type_name(type_oid: u32, custom_types: &HashMap<u32, Type>) -> String {
    if let Some(t) = custom_types.get(&type_oid) {
        return format!("{}.{}", t.namespace, t.name);
    }
    match builtin_name(type_oid) {
        Some(name) => name.to_string(),
        None => format!("unknown:{type_oid}"),
    }
}

fn builtin_name(type_oid: u32) -> Option<&'static str> {
    Some(match type_oid {
        16 => "bool",
        17 => "bytea",
        18 => "char",
        19 => "name",
        20 => "int8",
        21 => "int2",
        22 => "int2vector",
        23 => "int4",
        24 => "regproc",
        25 => "text",
        26 => "oid",
        27 => "tid",
        28 => "xid",
        29 => "cid",
        30 => "oidvector",
        114 => "json",
        142 => "xml",
        143 => "_xml",
        199 => "_json",
        600 => "point",
        601 => "lseg",
        602 => "path",
        603 => "box",
        604 => "polygon",
        628 => "line",
        650 => "cidr",
        651 => "_cidr",
        700 => "float4",
        701 => "float8",
        718 => "circle",
        774 => "macaddr8",
        790 => "money",
        791 => "_money",
        829 => "macaddr",
        869 => "inet",
        1000 => "_bool",
        1001 => "_bytea",
        1002 => "_char",
        1003 => "_name",
        1005 => "_int2",
        1007 => "_int4",
        1009 => "_text",
        1014 => "_bpchar",
        1015 => "_varchar",
        1016 => "_int8",
        1021 => "_float4",
        1022 => "_float8",
        1028 => "_oid",
        1040 => "_macaddr",
        1041 => "_inet",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1115 => "_timestamp",
        1182 => "_date",
        1183 => "_time",
        1184 => "timestamptz",
        1185 => "_timestamptz",
        1186 => "interval",
        1187 => "_interval",
        1231 => "_numeric",
        1266 => "timetz",
        1270 => "_timetz",
        1560 => "bit",
        1561 => "_bit",
        1562 => "varbit",
        1563 => "_varbit",
        1700 => "numeric",
        1790 => "refcursor",
        2205 => "regclass",
        2206 => "regtype",
        2950 => "uuid",
        2951 => "_uuid",
        3220 => "pg_lsn",
        3614 => "tsvector",
        3615 => "tsquery",
        3643 => "_tsvector",
        3802 => "jsonb",
        3807 => "_jsonb",
        3904 => "int4range",
        3906 => "numrange",
        3908 => "tsrange",
        3910 => "tstzrange",
        3912 => "daterange",
        3926 => "int8range",
        4072 => "jsonpath",
        4451 => "int4multirange",
        4532 => "nummultirange",
        4533 => "tsmultirange",
        4534 => "tstzmultirange",
        4535 => "datemultirange",
        4536 => "int8multirange",
        5038 => "pg_snapshot",
        5069 => "xid8",
        _ => return None,
    })
}
