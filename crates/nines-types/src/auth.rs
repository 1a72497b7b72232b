//! The auth model (etcd's users, roles and key permissions), as the log
//! carries its changes. Passwords arrive hashed: the member that takes the
//! request hashes them, so no log entry or snapshot holds a password.

use serde::{Deserialize, Serialize};

/// etcd's `root`: the user and role that may do everything, and the only
/// ones allowed cluster and maintenance calls once auth is on.
pub const ROOT: &str = "root";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermKind {
    Read,
    Write,
    ReadWrite,
}

impl PermKind {
    pub fn allows_read(self) -> bool {
        matches!(self, PermKind::Read | PermKind::ReadWrite)
    }

    pub fn allows_write(self) -> bool {
        matches!(self, PermKind::Write | PermKind::ReadWrite)
    }
}

/// Access to `key`, or to `[key, range_end)` (etcd's convention: an empty
/// end is the key alone, `\0` every key from `key` on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub kind: PermKind,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

/// One change to the auth state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    /// Turns auth on; `secret` (chosen by the proposer) signs tokens from
    /// then on, so every member can check every token.
    Enable {
        #[serde(with = "serde_bytes")]
        secret: Vec<u8>,
    },
    Disable,
    /// `password_hash` None: a user that can only authenticate by
    /// certificate (etcd's `no_password`).
    UserAdd {
        name: String,
        password_hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        perm: Permission,
    },
    RoleRevokePermission {
        role: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        range_end: Vec<u8>,
    },
}

/// Why an auth change was refused; the messages are etcd's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AuthRejection {
    #[error("etcdserver: user name already exists")]
    UserExists,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleExists,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotGranted,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthManagement,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// nines' own: a role record holds every permission of the role, and
    /// one too large to read back would fail every start.
    #[error("role already holds {MAX_ROLE_PERMISSIONS} permissions, the most it may")]
    TooManyPermissions,
    /// nines' own, as `TooManyPermissions`, for a user's roles.
    #[error("user already holds {MAX_USER_ROLES} roles, the most it may")]
    TooManyRoles,
}

/// Permissions one role may hold: at most 8 KiB each (key and range end),
/// so its record stays well under what a record may be to be read back.
pub const MAX_ROLE_PERMISSIONS: usize = 4096;
/// Roles one user may hold (names of at most 1 KiB).
pub const MAX_USER_ROLES: usize = 4096;
