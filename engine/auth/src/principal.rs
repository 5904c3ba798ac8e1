//! Who is calling, for which tenant, with which permissions.

use std::collections::BTreeSet;

use crate::{AuthError, Scope};

/// How a [`Principal`] was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// A `lily_...` API key from lily.api_keys.
    ApiKey,
    /// An OIDC access token (JWT) from the configured identity provider.
    Jwt,
}

/// An authenticated caller. A credential acts for exactly one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `key:<key_id>` or `jwt:<sub>`; what the audit log records.
    pub subject: String,
    /// The one tenant this credential acts for.
    pub tenant_id: String,
    /// What it may do there.
    pub scopes: BTreeSet<Scope>,
    /// How it was authenticated.
    pub via: Method,
}

impl Principal {
    /// Succeeds when the principal holds `scope`, or `admin`. This does not look at the tenant:
    /// pair it with [`Principal::require_tenant`], or use [`Principal::authorize`].
    pub fn require(&self, scope: Scope) -> Result<(), AuthError> {
        if self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin) {
            Ok(())
        } else {
            Err(AuthError::forbidden(format!(
                "{} lacks scope {scope}",
                self.subject
            )))
        }
    }

    /// Succeeds when the principal acts for `tenant_id`. `admin` does not widen this: an admin
    /// of one tenant is nobody in another.
    pub fn require_tenant(&self, tenant_id: &str) -> Result<(), AuthError> {
        if self.tenant_id == tenant_id {
            Ok(())
        } else {
            Err(AuthError::forbidden(format!(
                "{} of tenant {:?} used on tenant {tenant_id:?}",
                self.subject, self.tenant_id
            )))
        }
    }

    /// [`Principal::require_tenant`] then [`Principal::require`]: the check every tenant-scoped
    /// endpoint needs.
    pub fn authorize(&self, tenant_id: &str, scope: Scope) -> Result<(), AuthError> {
        self.require_tenant(tenant_id)?;
        self.require(scope)
    }
}

/// The format meta.tenants enforces (`^[a-z0-9][a-z0-9_-]{0,62}$`). A token naming anything else
/// cannot belong to a tenant, so it is refused before its value reaches a query or a setting.
pub(crate) fn is_valid_tenant_id(tenant_id: &str) -> bool {
    let bytes = tenant_id.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-';
    match bytes.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_lowercase() || first.is_ascii_digit())
                && rest.len() <= 62
                && rest.iter().all(allowed)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(tenant: &str, scopes: &[Scope]) -> Principal {
        Principal {
            subject: "key:abcdefghijkl".to_owned(),
            tenant_id: tenant.to_owned(),
            scopes: scopes.iter().copied().collect(),
            via: Method::ApiKey,
        }
    }

    #[test]
    fn require_checks_the_scope() {
        let p = principal("acme", &[Scope::AssetsWrite]);
        assert_eq!(p.require(Scope::AssetsWrite), Ok(()));
        let err = p.require(Scope::LineageWrite).unwrap_err();
        assert_eq!(err.http_status(), 403);
        assert!(err.reason().contains("lineage:write"));
        assert_eq!(err.public_message(), "forbidden");
    }

    #[test]
    fn admin_implies_every_scope_of_its_own_tenant() {
        let admin = principal("acme", &[Scope::Admin]);
        for scope in Scope::ALL {
            assert_eq!(admin.require(scope), Ok(()), "{scope}");
            assert_eq!(admin.authorize("acme", scope), Ok(()), "{scope}");
        }
    }

    #[test]
    fn admin_never_crosses_tenants() {
        let admin = principal("acme", &[Scope::Admin]);
        let err = admin.require_tenant("globex").unwrap_err();
        assert_eq!(err.http_status(), 403);
        for scope in Scope::ALL {
            assert!(admin.authorize("globex", scope).is_err(), "{scope}");
        }
    }

    #[test]
    fn no_scopes_grant_nothing() {
        let p = principal("acme", &[]);
        assert_eq!(p.require_tenant("acme"), Ok(()));
        for scope in Scope::ALL {
            assert!(p.require(scope).is_err(), "{scope}");
        }
    }

    #[test]
    fn tenant_id_format() {
        for ok in ["acme", "a", "0", "acme-corp_eu1", &"a".repeat(63)] {
            assert!(is_valid_tenant_id(ok), "{ok}");
        }
        for bad in [
            "",
            "-acme",
            "_acme",
            "Acme",
            "acme corp",
            "acme:eu",
            "acmé",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_tenant_id(bad), "{bad}");
        }
    }
}
