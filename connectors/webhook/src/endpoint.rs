//! The receiver's URL, and the only way it is ever shown.
//!
//! Webhook URLs often carry a token (`?key=…`, `user:pass@`), and error messages end up in logs
//! and the dead-letter table, so the URL is kept behind a type whose `Display` and `Debug` show
//! `scheme://host[:port]/path` and nothing else.

use std::fmt;

use reqwest::Url;

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Endpoint(Url);

impl Endpoint {
    /// Parses an absolute http(s) URL with a host. Errors never echo the text, which may hold a
    /// token.
    pub(crate) fn parse(text: &str) -> Result<Endpoint, String> {
        let url = Url::parse(text).map_err(|e| format!("not a valid URL ({e})"))?;
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(format!(
                    "scheme `{other}` is not allowed; webhooks go over http or https"
                ))
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL has no host".to_string());
        }
        Ok(Endpoint(url))
    }

    /// The full URL, for the one place that sends the request.
    pub(crate) fn url(&self) -> &Url {
        &self.0
    }

    pub(crate) fn is_https(&self) -> bool {
        self.0.scheme() == "https"
    }

    /// Replaces any trace of the parts [`Endpoint`]'s `Display` hides (query, credentials)
    /// inside a message that came from elsewhere, e.g. an HTTP library's error chain.
    pub(crate) fn scrub(&self, message: &str) -> String {
        let mut out = message.replace(self.0.as_str(), &self.to_string());
        let hidden = [
            self.0.query(),
            self.0.password(),
            Some(self.0.username()).filter(|u| !u.is_empty()),
        ];
        for part in hidden.into_iter().flatten().filter(|p| p.len() >= 4) {
            out = out.replace(part, "<redacted>");
        }
        out
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = &self.0;
        write!(f, "{}://{}", url.scheme(), url.host_str().unwrap_or(""))?;
        if let Some(port) = url.port() {
            write!(f, ":{port}")?;
        }
        f.write_str(url.path())
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_scheme_host_path_only() {
        let e =
            Endpoint::parse("https://bob:pw123@hooks.example.com:8443/in/lily?token=abcd1234#x")
                .unwrap();
        assert_eq!(e.to_string(), "https://hooks.example.com:8443/in/lily");
        assert_eq!(format!("{e:?}"), "https://hooks.example.com:8443/in/lily");
        let scrubbed = e.scrub(&format!("error for url ({}) token=abcd1234", e.url()));
        assert!(!scrubbed.contains("abcd1234") && !scrubbed.contains("pw123"));
        assert!(scrubbed.contains("https://hooks.example.com:8443/in/lily"));
    }

    #[test]
    fn only_http_and_https() {
        assert!(Endpoint::parse("http://127.0.0.1:9/x").is_ok());
        let err = Endpoint::parse("ftp://example.com/x").unwrap_err();
        assert!(err.contains("`ftp`"), "{err}");
        assert!(Endpoint::parse("file:///etc/passwd").is_err());
        let err = Endpoint::parse("hooks.example.com/x?token=s3cret").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
