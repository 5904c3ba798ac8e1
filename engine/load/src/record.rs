//! One input row, checked against what `meta.assets` accepts, and the lane it belongs to.
//!
//! The checks mirror the table's constraints so that a bad row is reported with its file and line
//! here, instead of failing a whole chunk on the server with no line to point at.

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::Lane;

/// The namespace of asset guids (`lily_metastore::ASSET_GUID_NAMESPACE`).
const ASSET_GUID_NAMESPACE: Uuid = Uuid::from_u128(0x52f8f556_8327_42c9_834a_d942b515e43f);

/// `meta.asset_guid(tenant, qualified_name)`: UUIDv5 of `tenant || ':' || qualified_name`.
pub fn asset_guid(tenant: &str, qualified_name: &str) -> Uuid {
    let mut name = Vec::with_capacity(tenant.len() + 1 + qualified_name.len());
    name.extend_from_slice(tenant.as_bytes());
    name.push(b':');
    name.extend_from_slice(qualified_name.as_bytes());
    Uuid::new_v5(&ASSET_GUID_NAMESPACE, &name)
}

/// Which asset types go to the bulk lane. Everything else (containers, processes, dashboards,
/// connector-specific types) is structural.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneRules {
    bulk_types: BTreeSet<String>,
}

impl Default for LaneRules {
    /// `Column` and `BIField`: the leaves that make up about 90% of an estate.
    fn default() -> Self {
        LaneRules {
            bulk_types: ["Column", "BIField"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

impl LaneRules {
    /// Adds a leaf type to the bulk lane (e.g. a connector's own column type).
    pub fn with_bulk_type(mut self, type_name: impl Into<String>) -> Self {
        self.bulk_types.insert(type_name.into());
        self
    }

    /// The lane of an asset of this type.
    pub fn lane_of(&self, type_name: &str) -> Lane {
        if self.bulk_types.contains(type_name) {
            Lane::Bulk
        } else {
            Lane::Structural
        }
    }

    /// The bulk types, sorted.
    pub fn bulk_types(&self) -> impl Iterator<Item = &str> {
        self.bulk_types.iter().map(String::as_str)
    }
}

/// `status` of an asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Active,
    Deleted,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Active => "ACTIVE",
            Status::Deleted => "DELETED",
        }
    }
}

/// An asset row, borrowing from the input where it can.
#[derive(Debug)]
pub(crate) struct AssetRow<'a> {
    pub type_name: Cow<'a, str>,
    pub qualified_name: Cow<'a, str>,
    pub name: Cow<'a, str>,
    pub parent_qualified_name: Option<Cow<'a, str>>,
    pub status: Status,
    /// The attributes object exactly as written in the input (checked to be a JSON object).
    pub attributes: Option<&'a str>,
}

/// A lineage edge between two assets named by qualified name.
#[derive(Debug)]
pub(crate) struct LineageRow<'a> {
    pub upstream: Cow<'a, str>,
    pub downstream: Cow<'a, str>,
    pub process: Option<Cow<'a, str>>,
}

#[derive(Debug)]
pub(crate) enum Record<'a> {
    Asset(AssetRow<'a>),
    Lineage(LineageRow<'a>),
}

impl Record<'_> {
    pub(crate) fn lane(&self, rules: &LaneRules) -> Lane {
        match self {
            Record::Asset(a) => rules.lane_of(&a.type_name),
            Record::Lineage(_) => Lane::Structural,
        }
    }
}

/// The fields of an input row before checking; NDJSON lines deserialize into it, Parquet columns
/// are mapped onto it. Unknown fields are ignored (a `guid` in the input in particular: guids are
/// always derived from the tenant and the qualified name).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRecord<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    pub type_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    pub qualified_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    pub parent_qualified_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    pub status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub attributes: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    pub upstream: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    pub downstream: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    pub process: Option<Cow<'a, str>>,
}

/// `Option<Cow<str>>` that borrows from the input when the string has no escapes (serde's
/// `borrow` only reaches a `Cow` that is the field's type itself, not one inside an `Option`).
fn borrowed_text<'de: 'a, 'a, D>(d: D) -> Result<Option<Cow<'a, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text<'a>>::deserialize(d)?.map(|t| t.0))
}

/// Parquet carries attributes as JSON text; the NDJSON path has it as a raw JSON value already.
pub(crate) enum RawAttributes<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}

impl<'a> RawRecord<'a> {
    /// Checks the row and turns it into a [`Record`]; the error is the reason, for the caller to
    /// wrap with the file and line.
    pub(crate) fn check(self) -> Result<Record<'a>, String> {
        let attributes = self.attributes.map(RawAttributes::Json);
        check_fields(
            self.kind,
            Fields {
                type_name: self.type_name,
                qualified_name: self.qualified_name,
                name: self.name,
                parent_qualified_name: self.parent_qualified_name,
                status: self.status,
                attributes,
                upstream: self.upstream,
                downstream: self.downstream,
                process: self.process,
            },
        )
    }
}

pub(crate) struct Fields<'a> {
    pub type_name: Option<Cow<'a, str>>,
    pub qualified_name: Option<Cow<'a, str>>,
    pub name: Option<Cow<'a, str>>,
    pub parent_qualified_name: Option<Cow<'a, str>>,
    pub status: Option<Cow<'a, str>>,
    pub attributes: Option<RawAttributes<'a>>,
    pub upstream: Option<Cow<'a, str>>,
    pub downstream: Option<Cow<'a, str>>,
    pub process: Option<Cow<'a, str>>,
}

pub(crate) fn check_fields<'a>(
    kind: Option<Cow<'a, str>>,
    f: Fields<'a>,
) -> Result<Record<'a>, String> {
    match kind.as_deref() {
        None | Some("asset") => check_asset(f).map(Record::Asset),
        Some("lineage") => check_lineage(f).map(Record::Lineage),
        Some(other) => Err(format!(
            "unknown kind {other:?} (expected \"asset\" or \"lineage\")"
        )),
    }
}

fn check_asset(f: Fields<'_>) -> Result<AssetRow<'_>, String> {
    let type_name = f.type_name.ok_or("missing type_name")?;
    if !crate::rules::valid_type_name(&type_name) {
        return Err(format!(
            "bad type_name {type_name:?}: a type name is an upper-case letter followed by at most 63 letters and digits"
        ));
    }
    let qualified_name = required_text("qualified_name", f.qualified_name)?;
    let name = required_text("name", f.name)?;
    let parent_qualified_name = match f.parent_qualified_name {
        None => None,
        Some(p) if p.is_empty() => None,
        Some(p) => {
            check_text("parent_qualified_name", &p)?;
            if p == qualified_name {
                return Err("parent_qualified_name is the asset's own qualified_name".into());
            }
            Some(p)
        }
    };
    let status = match f.status.as_deref() {
        None | Some("ACTIVE") => Status::Active,
        Some("DELETED") => Status::Deleted,
        Some(other) => {
            return Err(format!(
                "bad status {other:?} (expected \"ACTIVE\" or \"DELETED\")"
            ))
        }
    };
    let attributes = match f.attributes {
        None => None,
        Some(RawAttributes::Json(raw)) => check_attributes(raw.get())?,
        Some(RawAttributes::Text(text)) => {
            let raw: &RawValue = serde_json::from_str(text)
                .map_err(|e| format!("attributes is not valid JSON: {e}"))?;
            check_attributes(raw.get())?
        }
    };
    Ok(AssetRow {
        type_name,
        qualified_name,
        name,
        parent_qualified_name,
        status,
        attributes,
    })
}

fn check_lineage(f: Fields<'_>) -> Result<LineageRow<'_>, String> {
    let upstream = required_text("upstream", f.upstream)?;
    let downstream = required_text("downstream", f.downstream)?;
    let process = match f.process {
        Some(p) if p.is_empty() => None,
        Some(p) => {
            check_text("process", &p)?;
            Some(p)
        }
        None => None,
    };
    Ok(LineageRow {
        upstream,
        downstream,
        process,
    })
}

fn required_text<'a>(field: &str, v: Option<Cow<'a, str>>) -> Result<Cow<'a, str>, String> {
    let v = v.ok_or_else(|| format!("missing {field}"))?;
    check_text(field, &v)?;
    Ok(v)
}

/// The API's rule for names (present, at most 2,048 bytes, no control character): a load and
/// a request refuse the same names.
fn check_text(field: &str, v: &str) -> Result<(), String> {
    crate::rules::check_name(field, v)
}

/// `null` means no attributes; anything else must be an object, and jsonb refuses `\u0000`.
fn check_attributes(raw: &str) -> Result<Option<&str>, String> {
    match raw.as_bytes().first() {
        Some(b'{') => {}
        _ if raw == "null" => return Ok(None),
        _ => return Err("attributes must be a JSON object".into()),
    }
    if crate::rules::nests_deeper_than(raw, crate::rules::MAX_ATTRIBUTE_DEPTH) {
        return Err(format!(
            "attributes nest deeper than {} levels",
            crate::rules::MAX_ATTRIBUTE_DEPTH
        ));
    }
    if memchr::memmem::find(raw.as_bytes(), b"\\u0000").is_some() && has_nul_escape(raw) {
        return Err(
            "attributes contain a NUL character (\\u0000), which jsonb cannot store".into(),
        );
    }
    Ok(Some(raw))
}

/// Whether JSON text contains the escape `\u0000` (and not merely an escaped backslash followed by
/// `u0000`).
fn has_nul_escape(raw: &str) -> bool {
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'u') && b.get(i + 2..i + 6) == Some(b"0000") {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Record<'_>, String> {
        let raw: RawRecord<'_> = serde_json::from_str(line).map_err(|e| e.to_string())?;
        raw.check()
    }

    #[test]
    fn golden_guid() {
        // The value pinned in ARCHITECTURE.md (Python's uuid.uuid5).
        assert_eq!(
            asset_guid("t1", "conn/db/schema/table").to_string(),
            "866d170e-675c-5d7e-9cfe-fe4130681353"
        );
    }

    #[test]
    fn asset_rows() {
        let Record::Asset(a) = parse(
            r#"{"type_name":"Column","qualified_name":"c/d/s/t/x","name":"x","parent_qualified_name":"c/d/s/t","attributes":{"a":1}}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(a.qualified_name, "c/d/s/t/x");
        assert_eq!(a.attributes, Some(r#"{"a":1}"#));
        assert_eq!(a.status, Status::Active);
        assert!(matches!(a.qualified_name, Cow::Borrowed(_)));
        let Record::Asset(a) =
            parse(r#"{"kind":"asset","type_name":"Table","qualified_name":"q","name":"n","attributes":null,"status":"DELETED"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!((a.attributes, a.status), (None, Status::Deleted));
    }

    #[test]
    fn bad_rows_say_why() {
        let cases = [
            (
                r#"{"type_name":"Column","name":"x"}"#,
                "missing qualified_name",
            ),
            (
                r#"{"type_name":"Column","qualified_name":"","name":"x"}"#,
                "qualified_name is empty",
            ),
            (
                r#"{"type_name":"column","qualified_name":"q","name":"x"}"#,
                "bad type_name",
            ),
            (
                r#"{"type_name":"Col umn","qualified_name":"q","name":"x"}"#,
                "bad type_name",
            ),
            (r#"{"qualified_name":"q","name":"x"}"#, "missing type_name"),
            (
                r#"{"type_name":"Column","qualified_name":"q"}"#,
                "missing name",
            ),
            (
                r#"{"type_name":"Column","qualified_name":"q","name":"x","status":"GONE"}"#,
                "bad status",
            ),
            (
                r#"{"type_name":"Column","qualified_name":"q","name":"x","attributes":[1]}"#,
                "must be a JSON object",
            ),
            (
                r#"{"type_name":"Column","qualified_name":"q","name":"x","attributes":{"a":"\u0000"}}"#,
                "NUL",
            ),
            (
                r#"{"type_name":"Column","qualified_name":"q\u0000","name":"x"}"#,
                "control character",
            ),
            // The API's rules: no control character, at most 2,048 bytes, attributes at most
            // 128 deep.
            (
                r#"{"type_name":"Table","qualified_name":"ld/esc\u001b[31mred","name":"esc"}"#,
                "control character",
            ),
            (
                r#"{"type_name":"Table","qualified_name":"ld/tab","name":"tab\nnewline"}"#,
                "control character",
            ),
            (
                r#"{"type_name":"Table","qualified_name":"q","name":"x","parent_qualified_name":"p\u0007"}"#,
                "control character",
            ),
            (
                r#"{"kind":"lineage","upstream":"a\u0001","downstream":"b"}"#,
                "control character",
            ),
            (
                r#"{"type_name":"Column","qualified_name":"q","name":"x","parent_qualified_name":"q"}"#,
                "own qualified_name",
            ),
            (r#"{"kind":"edge"}"#, "unknown kind"),
            (r#"{"kind":"lineage","upstream":"a"}"#, "missing downstream"),
        ];
        for (line, want) in cases {
            let err = parse(line).unwrap_err();
            assert!(err.contains(want), "{line}: {err}");
        }
        let long = format!(
            r#"{{"type_name":"Table","qualified_name":"{}","name":"x"}}"#,
            "q".repeat(5008)
        );
        assert!(parse(&long).unwrap_err().contains("longer than 2048 bytes"));
        let deep = format!(
            r#"{{"type_name":"Table","qualified_name":"q","name":"x","attributes":{}1{}}}"#,
            r#"{"a":"#.repeat(10_000),
            "}".repeat(10_000)
        );
        assert!(parse(&deep).unwrap_err().contains("deeper than 128"));
        // An escaped backslash before u0000 is text, not NUL.
        assert!(parse(
            r#"{"type_name":"Column","qualified_name":"q","name":"x","attributes":{"a":"\\u0000"}}"#
        )
        .is_ok());
    }

    #[test]
    fn lanes() {
        let rules = LaneRules::default().with_bulk_type("SnowflakeColumn");
        assert_eq!(rules.lane_of("Column"), Lane::Bulk);
        assert_eq!(rules.lane_of("BIField"), Lane::Bulk);
        assert_eq!(rules.lane_of("SnowflakeColumn"), Lane::Bulk);
        assert_eq!(rules.lane_of("Table"), Lane::Structural);
        assert_eq!(rules.lane_of("Process"), Lane::Structural);
        let lineage = parse(r#"{"kind":"lineage","upstream":"a","downstream":"b"}"#).unwrap();
        assert_eq!(lineage.lane(&rules), Lane::Structural);
    }
}
