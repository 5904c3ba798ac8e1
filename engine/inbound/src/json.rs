//! Field access on a parsed JSON payload, with the full path of a field in every error
//! (``payload.event_list[0].rule.comparisons[1].full_table_id` must be a string``), so whoever
//! set up the sender sees what to fix.
//!
//! Missing and `null` are the same: senders write both for "not set". Unknown fields are never
//! an error; a parser reads what it needs and ignores the rest.

use serde_json::{Map, Value};

/// Why a body could not be read. All are permanent: the same body fails the same way, so the
/// server answers 400 and a retry would not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("the body is not JSON: {0}")]
    Syntax(String),
    /// A required field is absent or null; the path names it.
    #[error("`{0}` is missing")]
    Missing(String),
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
}

/// Parses a request body.
pub fn parse(body: &[u8]) -> Result<Value, JsonError> {
    serde_json::from_slice(body).map_err(|e| JsonError::Syntax(e.to_string()))
}

/// A JSON object with its path from the root of the body.
#[derive(Debug, Clone)]
pub struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    /// The body itself, which must be an object.
    pub fn root(value: &'a Value) -> Result<Obj<'a>, JsonError> {
        match value {
            Value::Object(map) => Ok(Obj {
                map,
                path: String::new(),
            }),
            _ => Err(JsonError::WrongType {
                field: "(the body)".into(),
                expected: "a JSON object",
            }),
        }
    }

    /// `value`, found at `path` (e.g. `data.events[3]`), which must be an object.
    pub fn at(value: &'a Value, path: String) -> Result<Obj<'a>, JsonError> {
        match value {
            Value::Object(map) => Ok(Obj { map, path }),
            _ => Err(JsonError::WrongType {
                field: path,
                expected: "an object",
            }),
        }
    }

    /// The object's fields, e.g. to keep the object as it was sent.
    pub fn map(&self) -> &'a Map<String, Value> {
        self.map
    }

    /// The path of field `key` of this object.
    pub fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Field `key` when present and not null.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A string field; anything else is [`JsonError::WrongType`].
    pub fn opt_str(&self, key: &str) -> Result<Option<String>, JsonError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.wrong_type(key, "a string")),
        }
    }

    pub fn req_str(&self, key: &str) -> Result<String, JsonError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    /// Like [`Obj::opt_str`], but numbers and booleans are taken as their JSON text, for senders
    /// whose ids are sometimes numbers and whose thresholds are `49.0` or `"49.0"`.
    pub fn opt_text(&self, key: &str) -> Result<Option<String>, JsonError> {
        match self.get(key) {
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
            _ => self.opt_str(key),
        }
    }

    pub fn req_text(&self, key: &str) -> Result<String, JsonError> {
        self.opt_text(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_obj(&self, key: &str) -> Result<Option<Obj<'a>>, JsonError> {
        self.get(key)
            .map(|v| Obj::at(v, self.child(key)))
            .transpose()
    }

    pub fn req_obj(&self, key: &str) -> Result<Obj<'a>, JsonError> {
        self.opt_obj(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_array(&self, key: &str) -> Result<Option<&'a [Value]>, JsonError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => Err(self.wrong_type(key, "an array")),
        }
    }

    pub fn req_array(&self, key: &str) -> Result<&'a [Value], JsonError> {
        self.opt_array(key)?.ok_or_else(|| self.missing(key))
    }

    fn missing(&self, key: &str) -> JsonError {
        JsonError::Missing(self.child(key))
    }

    fn wrong_type(&self, key: &str, expected: &'static str) -> JsonError {
        JsonError::WrongType {
            field: self.child(key),
            expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_the_full_path() {
        let body =
            parse(br#"{"a": {"list": [{"n": 7, "b": true, "s": "x", "z": null}, 3]}}"#).unwrap();
        let root = Obj::root(&body).unwrap();
        let a = root.req_obj("a").unwrap();
        let list = a.req_array("list").unwrap();
        let first = Obj::at(&list[0], format!("{}[0]", a.child("list"))).unwrap();
        assert_eq!(first.req_str("s").unwrap(), "x");
        assert_eq!(
            first.req_str("n").unwrap_err().to_string(),
            "`a.list[0].n` must be a string"
        );
        // Text takes numbers and booleans as JSON prints them.
        assert_eq!(first.req_text("n").unwrap(), "7");
        assert_eq!(first.opt_text("b").unwrap().as_deref(), Some("true"));
        assert_eq!(
            first.req_text("list").unwrap_err(),
            JsonError::Missing("a.list[0].list".into())
        );
        // Null is missing.
        assert_eq!(first.opt_str("z").unwrap(), None);
        assert_eq!(
            first.req_obj("z").unwrap_err().to_string(),
            "`a.list[0].z` is missing"
        );
        assert_eq!(
            Obj::at(&list[1], format!("{}[1]", a.child("list")))
                .unwrap_err()
                .to_string(),
            "`a.list[1]` must be an object"
        );
        assert_eq!(
            root.opt_array("a").unwrap_err().to_string(),
            "`a` must be an array"
        );
        assert_eq!(first.map().len(), 4);
    }

    #[test]
    fn the_body_must_be_an_object_of_json() {
        assert!(matches!(parse(b"{nope"), Err(JsonError::Syntax(_))));
        let list = parse(b"[]").unwrap();
        assert_eq!(
            Obj::root(&list).unwrap_err().to_string(),
            "`(the body)` must be a JSON object"
        );
    }
}
