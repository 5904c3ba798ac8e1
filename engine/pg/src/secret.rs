//! Credentials: read from an environment variable or a file, never from config text, and never
//! printed.

use std::fmt;
use std::path::PathBuf;

/// A secret value. `Debug` and `Display` print `<redacted>`, so it can sit in any config struct
/// that is logged or put into an error.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a secret comes from, as named in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable's name.
    Env(String),
    /// A file's path; one trailing newline is ignored.
    File(PathBuf),
}

/// A secret that could not be read. The message names where it was looked for, never a value:
/// a variable name that is not a name, or a file name with no folder, may be the secret itself
/// pasted in the wrong place, and is not shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {} is not set", shown_env(.0))]
    MissingEnv(String),
    #[error("environment variable {} is empty", shown_env(.0))]
    EmptyEnv(String),
    #[error("cannot read secret file {}: {reason}", shown_file(.path))]
    File { path: String, reason: String },
    #[error("secret file {} is empty", shown_file(.0))]
    EmptyFile(String),
}

/// Whether `name` is an environment variable name: letters, digits and `_`, not starting with
/// a digit.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn shown_env(name: &str) -> String {
    if is_env_name(name) {
        name.to_string()
    } else {
        "(the name given is not a variable name, so it is not shown: a secret pasted in its place?)"
            .into()
    }
}

fn shown_file(path: &str) -> String {
    if path.contains('/') || path.contains('\\') {
        path.to_string()
    } else {
        "(a name without a folder, not shown: a secret pasted in its place?)".into()
    }
}

impl SecretSource {
    /// From a config's `*_env` / `*_file` pair: at most one may be given.
    pub fn from_pair(
        what: &str,
        env: Option<&str>,
        file: Option<&std::path::Path>,
    ) -> Result<Option<SecretSource>, String> {
        match (env, file) {
            (Some(_), Some(_)) => Err(format!("give {what}_env or {what}_file, not both")),
            (Some(""), None) => Err(format!("{what}_env is empty")),
            (Some(e), None) if !is_env_name(e) => Err(format!(
                "{what}_env must be an environment variable name (letters, digits and `_`); \
                 the value given is not one and is not shown, in case it is the secret itself"
            )),
            (Some(e), None) => Ok(Some(SecretSource::Env(e.to_string()))),
            (None, Some(f)) => Ok(Some(SecretSource::File(f.to_path_buf()))),
            (None, None) => Ok(None),
        }
    }

    pub fn resolve(&self) -> Result<Secret, SecretError> {
        match self {
            SecretSource::Env(name) => match std::env::var(name) {
                Ok(v) if v.is_empty() => Err(SecretError::EmptyEnv(name.clone())),
                Ok(v) => Ok(Secret(v)),
                Err(_) => Err(SecretError::MissingEnv(name.clone())),
            },
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| SecretError::File {
                    path: path.display().to_string(),
                    reason: e.kind().to_string(),
                })?;
                let value = text.strip_suffix('\n').unwrap_or(&text);
                let value = value.strip_suffix('\r').unwrap_or(value);
                if value.is_empty() {
                    return Err(SecretError::EmptyFile(path.display().to_string()));
                }
                Ok(Secret(value.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            password: Secret,
        }
        let h = format!("{:?}", Holder { password: s });
        assert!(!h.contains("hunter2"), "{h}");
    }

    #[test]
    fn file_secret_drops_one_newline() {
        let dir = std::env::temp_dir().join(format!("lily-pg-secret-{}", std::process::id()));
        std::fs::write(&dir, "abc\n").unwrap();
        let s = SecretSource::File(dir.clone()).resolve().unwrap();
        assert_eq!(s.expose(), "abc");
        std::fs::remove_file(&dir).unwrap();
        let err = SecretSource::Env("LILY_TEST_SURELY_UNSET_VAR".into())
            .resolve()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable LILY_TEST_SURELY_UNSET_VAR is not set"
        );
    }

    #[test]
    fn what_may_be_a_pasted_secret_is_never_shown() {
        let err = SecretSource::Env("mc-LITERAL-SECRET-9999".into())
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(!err.contains("LITERAL"), "{err}");
        let err = SecretSource::File("mc-LITERAL-SECRET-file".into())
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(!err.contains("LITERAL"), "{err}");
        let err = SecretSource::File("/nonexistent/dir/key".into())
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/dir/key"), "{err}");
        let err = SecretSource::from_pair("secret", Some("s3cr3t-value!"), None).unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(SecretSource::from_pair("secret", Some("LILY_SECRET"), None).is_ok());
    }

    #[test]
    fn pair_is_exclusive() {
        assert!(SecretSource::from_pair("secret", Some("A"), Some("f".as_ref())).is_err());
        assert_eq!(SecretSource::from_pair("secret", None, None), Ok(None));
    }
}
