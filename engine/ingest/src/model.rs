//! Request and response bodies of the ingest API (see `openapi.json`). Unknown fields are
//! errors: a misspelt field silently ignored would be data lost.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Most items one request may carry in all its lists; bigger sets go through bulk loads.
pub const MAX_ITEMS: usize = 10_000;

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

pub(crate) use lily_load::rules::{check_name, valid_tag, valid_type_name};

pub(crate) const ASSET_STATUSES: &[&str] = &["ACTIVE", "DELETED"];

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
