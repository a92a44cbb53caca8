//! The built-in roles and their order.
//!
//! A member holds one or more roles. Roles are ordered by rank (`owner` > `admin` >
//! `member` > `viewer`); nobody grants, changes or removes a role above their own.
//! Custom roles and permissions come with the RBAC evaluator.

/// Full control, including billing and deleting the tenant. Every tenant keeps at least one.
pub const OWNER: &str = "owner";
/// Manages members, API keys and settings.
pub const ADMIN: &str = "admin";
/// Works with the tenant's data.
pub const MEMBER: &str = "member";
/// Reads the tenant's data.
pub const VIEWER: &str = "viewer";

/// The built-in roles, highest first.
pub const BUILTIN: [&str; 4] = [OWNER, ADMIN, MEMBER, VIEWER];

/// The rank of a role (higher is more), `None` for a role we do not know.
pub fn rank(role: &str) -> Option<u8> {
    match role {
        OWNER => Some(4),
        ADMIN => Some(3),
        MEMBER => Some(2),
        VIEWER => Some(1),
        _ => None,
    }
}

/// The highest rank among `roles` (0 for none or only unknown roles).
pub fn max_rank<S: AsRef<str>>(roles: &[S]) -> u8 {
    roles.iter().filter_map(|r| rank(r.as_ref())).max().unwrap_or(0)
}

/// The rank that may manage members, API keys and tenant settings.
pub(crate) const MANAGER_RANK: u8 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order() {
        assert!(rank(OWNER) > rank(ADMIN) && rank(ADMIN) > rank(MEMBER) && rank(MEMBER) > rank(VIEWER));
        assert_eq!(rank("root"), None);
        assert_eq!(max_rank(&["viewer", "admin"]), 3);
        assert_eq!(max_rank::<&str>(&[]), 0);
    }
}
