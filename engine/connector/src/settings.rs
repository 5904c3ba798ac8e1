//! Typed settings from a TOML table, with errors that name the offending key (so the caller can
//! point at that key's own line), and their documentation from the doc comments.

use serde::de::DeserializeOwned;

/// A settings table that does not fit the connector's settings struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    /// The top-level key at fault, when there is one (an unknown key, a value of the wrong
    /// type); `None` for a missing key or a problem of the table as a whole.
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{k}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl SettingsError {
    /// A problem of the whole table (from a connector's own `validate`).
    pub fn whole(message: impl Into<String>) -> Self {
        SettingsError {
            key: None,
            message: message.into(),
        }
    }
}

/// Deserializes `table` into `T`, naming the key that failed.
pub fn parse<T: DeserializeOwned>(table: &toml::Value) -> Result<T, SettingsError> {
    serde_path_to_error::deserialize::<_, T>(table.clone()).map_err(|e| {
        let message = e.inner().message().to_string();
        let path = e.path().to_string();
        // An unknown key is reported at its parent; the key itself is in the message.
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(k, _)| k.to_string());
        let key = unknown.or_else(|| {
            (path != ".")
                .then(|| {
                    path.split(['.', '['])
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .filter(|k| !k.is_empty())
        });
        SettingsError { key, message }
    })
}

/// One setting, for `lily connectors` and the generated reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingDoc {
    pub name: String,
    /// `string`, `integer`, `boolean`, `array of string`, an enum's values, ...
    pub kind: String,
    pub required: bool,
    pub default: Option<String>,
    /// The field's doc comment.
    pub doc: String,
}

/// The settings of `T`, in declaration order, from its JSON Schema (which `schemars` builds
/// from the doc comments and serde attributes).
pub fn docs<T: schemars::JsonSchema>() -> Vec<SettingDoc> {
    let schema = schemars::schema_for!(T);
    let root = schema.as_value();
    let required: Vec<&str> = root
        .get("required")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let Some(props) = root.get("properties").and_then(|p| p.as_object()) else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, p)| SettingDoc {
            name: name.clone(),
            kind: kind_of(p, root),
            required: required.contains(&name.as_str()),
            default: p.get("default").filter(|d| !d.is_null()).map(|d| match d {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            doc: p
                .get("description")
                .and_then(|d| d.as_str())
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })
        .collect()
}

fn kind_of(p: &serde_json::Value, root: &serde_json::Value) -> String {
    if let Some(r) = p.get("$ref").and_then(|r| r.as_str()) {
        let def = r
            .rsplit('/')
            .next()
            .and_then(|n| root.get("$defs").and_then(|d| d.get(n)));
        return match def {
            Some(d) => kind_of(d, root),
            None => "table".into(),
        };
    }
    if let Some(values) = p.get("enum").and_then(|e| e.as_array()) {
        return values
            .iter()
            .filter_map(|v| v.as_str())
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    if let Some(one) = p
        .get("oneOf")
        .or_else(|| p.get("anyOf"))
        .and_then(|o| o.as_array())
    {
        let kinds: Vec<String> = one
            .iter()
            .map(|o| kind_of(o, root))
            .filter(|k| k != "null")
            .collect();
        return kinds.join(" or ");
    }
    if let Some(c) = p.get("const").and_then(|c| c.as_str()) {
        return format!("`{c}`");
    }
    let ty = match p.get("type") {
        Some(serde_json::Value::String(t)) => t.clone(),
        Some(serde_json::Value::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str())
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "value".into(),
    };
    match ty.as_str() {
        "array" => match p.get("items") {
            Some(items) => format!("array of {}", kind_of(items, root)),
            None => "array".into(),
        },
        "object" => "table".into(),
        _ => ty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings of a test connector.
    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Example {
        /// Where to send.
        url: String,
        /// How long to wait, in
        /// milliseconds.
        #[serde(default = "default_timeout")]
        timeout_ms: u64,
        /// Optional label.
        label: Option<String>,
        /// Columns.
        #[serde(default)]
        columns: Vec<String>,
    }

    fn default_timeout() -> u64 {
        15_000
    }

    fn table(text: &str) -> toml::Value {
        toml::Value::Table(toml::from_str(text).unwrap())
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse::<Example>(&table("url = \"x\"\ntimeout_ms = \"soon\"")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("timeout_ms"), "{e:?}");
        let e = parse::<Example>(&table("url = \"x\"\nurll = \"y\"")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("urll"), "{e:?}");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = parse::<Example>(&table("timeout_ms = 5")).unwrap_err();
        assert_eq!(e.key, None, "{e:?}");
        assert!(e.message.contains("url"), "{e}");
        let e = parse::<Example>(&table("url = \"x\"\ncolumns = [1]")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("columns"), "{e:?}");
        let ok = parse::<Example>(&table("url = \"x\"")).unwrap();
        assert_eq!(ok.timeout_ms, 15_000);
    }

    #[test]
    fn docs_come_from_doc_comments() {
        let d = docs::<Example>();
        let by = |n: &str| d.iter().find(|s| s.name == n).unwrap().clone();
        assert_eq!(by("url").kind, "string");
        assert!(by("url").required);
        assert_eq!(by("url").doc, "Where to send.");
        assert_eq!(by("timeout_ms").default.as_deref(), Some("15000"));
        assert_eq!(by("timeout_ms").doc, "How long to wait, in milliseconds.");
        assert!(!by("label").required);
        assert_eq!(by("label").kind, "string");
        assert_eq!(by("columns").kind, "array of string");
    }
}
