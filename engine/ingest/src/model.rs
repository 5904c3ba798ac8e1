//! Request and response bodies of the ingest API (see `openapi.json`). Unknown fields are
//! errors: a misspelt field silently ignored would be data lost.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Most items one request may carry in all its lists; bigger sets go through bulk loads.
pub const MAX_ITEMS: usize = 10_000;
/// Longest qualified name or name accepted.
pub const MAX_NAME_BYTES: usize = 2_048;

/// `POST /v1/tenants/{tenant}/assets`: one transaction.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetsRequest {
    /// Assets to create or update, matched on qualified name.
    #[serde(default)]
    pub upsert: Vec<AssetIn>,
    /// Qualified names of assets to delete.
    #[serde(default)]
    pub delete: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetIn {
    /// `Connection`, `Database`, `Schema`, `Table`, `Column`, `Dashboard`, ...
    pub type_name: String,
    /// Unique within the tenant; the asset's guid is derived from it.
    pub qualified_name: String,
    /// Display name.
    pub name: String,
    /// The parent's qualified name; it must exist already or be in the same request.
    #[serde(default)]
    pub parent_qualified_name: Option<String>,
    /// Free-form attributes (a JSON object), e.g. `ownerUsers`, `description`.
    #[serde(default)]
    pub attributes: Option<Map<String, Value>>,
    /// `ACTIVE` (default) or `DELETED`.
    #[serde(default)]
    pub status: Option<String>,
}

/// `POST /v1/tenants/{tenant}/lineage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineageRequest {
    /// Edges to add (adding an existing edge changes nothing).
    #[serde(default)]
    pub upsert: Vec<EdgeIn>,
    /// Edges to remove.
    #[serde(default)]
    pub delete: Vec<EdgeIn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeIn {
    /// Qualified name of the asset data comes from.
    pub upstream: String,
    /// Qualified name of the asset data goes to.
    pub downstream: String,
    /// Qualified name of the process moving it.
    pub process: String,
}

/// `POST /v1/tenants/{tenant}/classifications`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassificationsRequest {
    /// Direct tags to set.
    #[serde(default)]
    pub upsert: Vec<TagIn>,
    /// Direct tags to remove (`propagate` is ignored).
    #[serde(default)]
    pub delete: Vec<TagIn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagIn {
    /// Qualified name of the tagged asset.
    pub qualified_name: String,
    /// The tag, e.g. `PII`.
    pub tag: String,
    /// Whether the tag propagates downstream through lineage (default false).
    #[serde(default)]
    pub propagate: bool,
}

/// What a write did.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct WriteResult {
    /// Rows inserted or changed (an upsert that changes nothing does not count).
    pub written: u64,
    /// Rows removed.
    pub deleted: u64,
}

pub(crate) const ASSET_STATUSES: &[&str] = &["ACTIVE", "DELETED"];

/// `^[A-Z][A-Za-z0-9]{0,63}$`, as the metastore checks it.
pub(crate) fn valid_type_name(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_uppercase()
        && b.iter().all(|c| c.is_ascii_alphanumeric())
}

/// `^[A-Za-z0-9][A-Za-z0-9_ -]{0,63}$`: tags name policies and appear in warehouse DDL, so they
/// are kept to a safe alphabet.
pub(crate) fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b' '))
}

/// Names are data (quotes and semicolons are fine: every write is parameterized), but they must
/// be present, bounded and free of control characters.
pub(crate) fn check_name(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if v.len() > MAX_NAME_BYTES {
        return Err(format!("{what} is longer than {MAX_NAME_BYTES} bytes"));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(format!("{what} {v:?} contains a control character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_and_tags() {
        assert!(valid_type_name("Column"));
        assert!(!valid_type_name("column"));
        assert!(!valid_type_name("Col;umn"));
        assert!(valid_tag("PII"));
        assert!(valid_tag("GDPR Art 9"));
        assert!(!valid_tag("x'; DROP TABLE t; --"));
        assert!(check_name("name", "a 'quoted'; name").is_ok());
        assert!(check_name("name", "tab\there").is_err());
        assert!(check_name("name", "").is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<AssetsRequest>(r#"{"upsert": [], "upsret": []}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `upsret`"), "{e}");
    }
}
