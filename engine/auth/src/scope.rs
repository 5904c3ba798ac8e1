//! What a credential may do.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// One permission. `Admin` implies every other scope, within the credential's own tenant only
/// (see [`crate::Principal::require`] and [`crate::Principal::require_tenant`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Scope {
    #[serde(rename = "assets:write")]
    AssetsWrite,
    #[serde(rename = "assets:read")]
    AssetsRead,
    #[serde(rename = "incidents:write")]
    IncidentsWrite,
    #[serde(rename = "lineage:write")]
    LineageWrite,
    #[serde(rename = "classifications:write")]
    ClassificationsWrite,
    #[serde(rename = "load:write")]
    LoadWrite,
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    /// Every scope, in a fixed order.
    pub const ALL: [Scope; 7] = [
        Scope::AssetsWrite,
        Scope::AssetsRead,
        Scope::IncidentsWrite,
        Scope::LineageWrite,
        Scope::ClassificationsWrite,
        Scope::LoadWrite,
        Scope::Admin,
    ];

    /// The scope's name as it appears in tokens, keys and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::AssetsWrite => "assets:write",
            Scope::AssetsRead => "assets:read",
            Scope::IncidentsWrite => "incidents:write",
            Scope::LineageWrite => "lineage:write",
            Scope::ClassificationsWrite => "classifications:write",
            Scope::LoadWrite => "load:write",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for Scope {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// A scope name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    /// Exact, case-sensitive names only: a scope is an identifier, not prose.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

/// Scopes granted by an identity provider or stored in the database. Names we do not know are
/// dropped: an IdP commonly grants scopes meant for other APIs (`openid`, `profile`, ...) in
/// the same token, and they must neither fail the token nor grant anything here.
pub(crate) fn parse_granted<I, S>(names: I) -> BTreeSet<Scope>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    names
        .into_iter()
        .filter_map(|name| name.as_ref().parse().ok())
        .collect()
}

/// Scopes requested for a new key: unlike [`parse_granted`], an unknown name is an error, since
/// it is most likely a typo that would leave the key without a permission its owner expects.
pub(crate) fn parse_requested<I, S>(names: I) -> Result<BTreeSet<Scope>, UnknownScope>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    names
        .into_iter()
        .map(|name| name.as_ref().parse())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
            assert_eq!(scope.to_string(), scope.as_str());
            let json = serde_json::to_string(&scope).unwrap();
            assert_eq!(json, format!("\"{}\"", scope.as_str()));
            assert_eq!(serde_json::from_str::<Scope>(&json).unwrap(), scope);
        }
    }

    #[test]
    fn parsing_is_exact() {
        for bad in [
            "",
            "ASSETS:WRITE",
            "assets:write ",
            " admin",
            "assets",
            "assets:delete",
            "openid",
        ] {
            assert_eq!(
                bad.parse::<Scope>(),
                Err(UnknownScope(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn granted_scopes_ignore_unknown_names() {
        let granted = parse_granted(["openid", "assets:write", "profile", "admin", "admin"]);
        assert_eq!(
            granted,
            BTreeSet::from([Scope::AssetsWrite, Scope::Admin]),
            "unknown dropped, duplicates merged"
        );
        assert!(parse_granted(Vec::<String>::new()).is_empty());
    }

    #[test]
    fn requested_scopes_refuse_unknown_names() {
        assert_eq!(
            parse_requested(["assets:write", "lineage:write"]),
            Ok(BTreeSet::from([Scope::AssetsWrite, Scope::LineageWrite]))
        );
        assert_eq!(
            parse_requested(["assets:write", "assets:wrte"]),
            Err(UnknownScope("assets:wrte".to_owned()))
        );
        // Typed scopes go through the same path.
        assert_eq!(
            parse_requested([Scope::LoadWrite]),
            Ok(BTreeSet::from([Scope::LoadWrite]))
        );
    }
}
