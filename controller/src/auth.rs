//! Who may do what: roles grant permissions, optionally only for some device groups.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read devices, actions and history.
    View,
    /// Request actions, cancel one's own.
    Respond,
    /// Approve, reject, undo, cancel anyone's.
    Approve,
    /// Download packages and samples.
    Investigate,
    /// Users, tokens, groups, policy.
    Admin,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Permission::View => "view",
            Permission::Respond => "respond",
            Permission::Approve => "approve",
            Permission::Investigate => "investigate",
            Permission::Admin => "admin",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Responder,
    Approver,
    Investigator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Responder,
        Role::Approver,
        Role::Investigator,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Responder => "responder",
            Role::Approver => "approver",
            Role::Investigator => "investigator",
            Role::Admin => "admin",
        }
    }

    pub fn grants(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Viewer => p == View,
            Role::Responder => matches!(p, View | Respond),
            Role::Approver => matches!(p, View | Respond | Approve),
            Role::Investigator => matches!(p, View | Respond | Investigate),
            Role::Admin => true,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?}; expected viewer, responder, approver, investigator or admin")
            })
    }
}

/// An authenticated caller of the API.
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// Device groups the role applies to; empty means every group.
    pub device_groups: Vec<String>,
}

impl Principal {
    /// Whether the caller holds `p` for devices of `group` (or for every group when `None`).
    pub fn can(&self, p: Permission, group: Option<&str>) -> bool {
        self.role.grants(p)
            && match group {
                _ if self.device_groups.is_empty() => true,
                Some(g) => self.device_groups.iter().any(|mine| mine == g),
                None => false,
            }
    }

    pub fn sees_group(&self, group: &str) -> bool {
        self.device_groups.is_empty() || self.device_groups.iter().any(|g| g == group)
    }

    /// The groups a listing is limited to, for `actions::list`: `None` when every group.
    pub fn group_scope(&self) -> Option<Vec<String>> {
        (!self.device_groups.is_empty()).then(|| self.device_groups.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_what_product_md_says() {
        assert!(Role::Viewer.grants(Permission::View));
        assert!(!Role::Viewer.grants(Permission::Respond));
        assert!(!Role::Responder.grants(Permission::Approve));
        assert!(Role::Approver.grants(Permission::Approve));
        assert!(!Role::Approver.grants(Permission::Investigate));
        assert!(Role::Investigator.grants(Permission::Investigate));
        assert!(!Role::Investigator.grants(Permission::Admin));
        assert!(Role::Admin.grants(Permission::Admin));
    }

    #[test]
    fn scoped_principals_act_only_in_their_groups() {
        let p = Principal {
            name: "a".into(),
            role: Role::Approver,
            device_groups: vec!["web".into()],
        };
        assert!(p.can(Permission::Approve, Some("web")));
        assert!(!p.can(Permission::Approve, Some("db")));
        assert!(!p.can(Permission::Approve, None));
    }
}
