//! The errors of authentication and authorization.
//!
//! Every variant carries a `reason` for the server's logs. What goes back to the caller is only
//! [`AuthError::public_message`] and [`AuthError::http_status`]: telling a caller *why* a
//! credential was refused (unknown key id, wrong secret, revoked, expired, wrong audience) helps an
//! attacker more than it helps a legitimate client.

/// Why a request was not let through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential, or one that is malformed, unknown, revoked, expired or otherwise invalid.
    #[error("unauthenticated: {reason}")]
    Unauthenticated {
        /// For logs only; never sent to the caller.
        reason: String,
    },
    /// A valid credential that does not grant this action or this tenant.
    #[error("forbidden: {reason}")]
    Forbidden {
        /// For logs only; never sent to the caller.
        reason: String,
    },
    /// The credential could not be checked: the database or the identity provider's key set could
    /// not be reached. Retryable.
    #[error("authentication unavailable: {reason}")]
    Unavailable {
        /// For logs only; never sent to the caller.
        reason: String,
    },
}

impl AuthError {
    pub(crate) fn unauthenticated(reason: impl Into<String>) -> Self {
        AuthError::Unauthenticated {
            reason: reason.into(),
        }
    }

    pub(crate) fn forbidden(reason: impl Into<String>) -> Self {
        AuthError::Forbidden {
            reason: reason.into(),
        }
    }

    /// The credential could not be checked now (the key store did not answer): 503.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        AuthError::Unavailable {
            reason: reason.into(),
        }
    }

    /// The HTTP status to answer with: 401, 403 or 503.
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::Unauthenticated { .. } => 401,
            AuthError::Forbidden { .. } => 403,
            AuthError::Unavailable { .. } => 503,
        }
    }

    /// The message that may be shown to the caller. It is the same for every reason of one kind.
    pub fn public_message(&self) -> &'static str {
        match self {
            AuthError::Unauthenticated { .. } => "invalid credentials",
            AuthError::Forbidden { .. } => "forbidden",
            AuthError::Unavailable { .. } => "authentication temporarily unavailable",
        }
    }

    /// Whether the same request may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AuthError::Unavailable { .. })
    }

    /// The detail for logs.
    pub fn reason(&self) -> &str {
        match self {
            AuthError::Unauthenticated { reason }
            | AuthError::Forbidden { reason }
            | AuthError::Unavailable { reason } => reason,
        }
    }
}

/// Why an API key could not be created, listed or revoked. These are administrative operations
/// on behalf of an already authorized caller, so their messages may be shown to it.
#[derive(Debug, thiserror::Error)]
pub enum KeyAdminError {
    /// A scope name that is not one of [`crate::Scope`]'s.
    #[error("unknown scope {0:?}")]
    UnknownScope(String),
    /// A key must grant at least one scope.
    #[error("an API key needs at least one scope")]
    NoScopes,
    /// The key's name is empty or too long.
    #[error("invalid key name: {0}")]
    InvalidName(&'static str),
    /// The tenant does not exist in meta.tenants.
    #[error("no tenant {0:?}")]
    UnknownTenant(String),
    /// The operating system's random number generator failed.
    #[error("could not generate a key: {0}")]
    Random(String),
    /// The database refused or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_messages_do_not_contain_reasons() {
        let secret_reason = "key abc123def456 revoked at 2024-01-01, secret hash 9f86d0";
        for err in [
            AuthError::unauthenticated(secret_reason),
            AuthError::forbidden(secret_reason),
            AuthError::unavailable(secret_reason),
        ] {
            let public = err.public_message();
            assert!(!public.contains("abc123"), "{public}");
            assert!(!public.contains("revoked"), "{public}");
            assert!(!public.contains("9f86d0"), "{public}");
            // The reason is still there for logs.
            assert_eq!(err.reason(), secret_reason);
            assert!(err.to_string().contains(secret_reason));
        }
    }

    #[test]
    fn every_refusal_of_a_kind_reads_the_same() {
        assert_eq!(
            AuthError::unauthenticated("unknown key id").public_message(),
            AuthError::unauthenticated("wrong secret").public_message()
        );
        assert_eq!(
            AuthError::unauthenticated("x").public_message(),
            "invalid credentials"
        );
        assert_eq!(AuthError::forbidden("y").public_message(), "forbidden");
    }

    #[test]
    fn statuses() {
        assert_eq!(AuthError::unauthenticated("").http_status(), 401);
        assert_eq!(AuthError::forbidden("").http_status(), 403);
        assert_eq!(AuthError::unavailable("").http_status(), 503);
        assert!(AuthError::unavailable("").is_retryable());
        assert!(!AuthError::unauthenticated("").is_retryable());
        assert!(!AuthError::forbidden("").is_retryable());
    }
}
