//! Users, roles and key permissions (etcd's auth store), changed only
//! through the log and loaded with the store, so every member, a restart
//! and a snapshot install hold the same. Records, written in the batch of
//! the apply that changes them:
//! - `u` + name → `UserRecord`
//! - `o` + name → `RoleRecord`
//! - `mauth` → `AuthMeta` (on/off, auth revision, token secret)
//!
//! Like the lease table, an apply that fails midway is not undone in
//! memory: a failed apply stops the node and the reopen reloads it.

mod perms;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use nines_types::{
    AuthCommand, AuthRejection, Permission, MAX_ROLE_PERMISSIONS, MAX_USER_ROLES, ROOT,
};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::StateError;
use crate::overlay::Overlay;
use crate::store::{decode, encode};

pub(crate) const USER_PREFIX: u8 = b'u';
pub(crate) const ROLE_PREFIX: u8 = b'o';
pub(crate) const META_AUTH: &[u8] = b"mauth";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct UserRecord {
    password_hash: Option<String>,
    roles: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RoleRecord {
    perms: Vec<Permission>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AuthMeta {
    enabled: bool,
    revision: u64,
    #[serde(with = "serde_bytes")]
    secret: Vec<u8>,
}

/// The auth state as applied here.
#[derive(Debug, Default)]
pub struct AuthState {
    meta: AuthMeta,
    users: BTreeMap<String, UserRecord>,
    roles: BTreeMap<String, RoleRecord>,
}

fn record_key(prefix: u8, name: &str) -> Vec<u8> {
    let mut raw = Vec::with_capacity(1 + name.len());
    raw.push(prefix);
    raw.extend_from_slice(name.as_bytes());
    raw
}

fn name_of(raw: &[u8]) -> Result<String, StateError> {
    String::from_utf8(raw[1..].to_vec())
        .map_err(|_| StateError::CorruptState(format!("auth record key {raw:02x?} is not UTF-8")))
}

impl AuthState {
    pub(crate) fn load<E: Engine>(engine: &E) -> Result<Self, StateError> {
        let mut state = AuthState::default();
        if let Some(raw) = engine.get(META_AUTH)? {
            state.meta = decode(raw.as_ref())?;
        }
        for item in engine.scan(&[USER_PREFIX], Some(&[USER_PREFIX + 1])) {
            let (key, raw) = item?;
            state
                .users
                .insert(name_of(key.as_ref())?, decode(raw.as_ref())?);
        }
        for item in engine.scan(&[ROLE_PREFIX], Some(&[ROLE_PREFIX + 1])) {
            let (key, raw) = item?;
            state
                .roles
                .insert(name_of(key.as_ref())?, decode(raw.as_ref())?);
        }
        Ok(state)
    }

    pub fn enabled(&self) -> bool {
        self.meta.enabled
    }

    /// Moves on every change, so a token issued before one can be told apart.
    pub fn revision(&self) -> u64 {
        self.meta.revision
    }

    /// What tokens are signed with (empty before auth was first enabled).
    pub fn secret(&self) -> &[u8] {
        &self.meta.secret
    }

    pub fn user_exists(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The stored password hash; None for a missing user or one without a
    /// password.
    pub fn password_hash(&self, user: &str) -> Option<&str> {
        self.users.get(user)?.password_hash.as_deref()
    }

    pub fn user_roles(&self, user: &str) -> Option<Vec<String>> {
        Some(self.users.get(user)?.roles.iter().cloned().collect())
    }

    pub fn users(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    pub fn roles(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    pub fn role_permissions(&self, role: &str) -> Option<Vec<Permission>> {
        Some(self.roles.get(role)?.perms.clone())
    }

    /// Whether `user` has the root role.
    pub fn is_root(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }

    /// Whether `user` may read (or write) every key of `key`/`range_end`
    /// (etcd's convention). Root may do everything.
    pub fn permitted(&self, user: &str, write: bool, key: &[u8], range_end: &[u8]) -> bool {
        let Some(record) = self.users.get(user) else {
            return false;
        };
        if record.roles.contains(ROOT) {
            return true;
        }
        let granted = record
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| &r.perms)
            .filter(|p| {
                if write {
                    p.kind.allows_write()
                } else {
                    p.kind.allows_read()
                }
            });
        perms::covers(granted, key, range_end)
    }

    /// Applies one change; on success returns the new auth revision.
    pub(crate) fn apply<E: Engine>(
        &mut self,
        overlay: &mut Overlay<'_, E>,
        command: &AuthCommand,
    ) -> Result<Result<u64, AuthRejection>, StateError> {
        use AuthCommand as A;
        use AuthRejection as R;
        let refused = |r: R| Ok(Err(r));
        let enabled = self.meta.enabled;
        match command {
            A::Enable { secret } => {
                if enabled {
                    return Ok(Ok(self.meta.revision));
                }
                match self.users.get(ROOT) {
                    None => return refused(R::RootUserNotExist),
                    Some(u) if !u.roles.contains(ROOT) => return refused(R::RootRoleNotGranted),
                    Some(_) => {}
                }
                self.meta.enabled = true;
                self.meta.secret = secret.clone();
            }
            A::Disable => self.meta.enabled = false,
            A::UserAdd {
                name,
                password_hash,
            } => {
                if name.is_empty() {
                    return refused(R::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return refused(R::UserExists);
                }
                let user = UserRecord {
                    password_hash: password_hash.clone(),
                    roles: BTreeSet::new(),
                };
                self.put_user(overlay, name, user)?;
            }
            A::UserDelete { name } => {
                if enabled && name == ROOT {
                    return refused(R::InvalidAuthManagement);
                }
                if self.users.remove(name).is_none() {
                    return refused(R::UserNotFound);
                }
                overlay.remove(record_key(USER_PREFIX, name));
            }
            A::UserChangePassword {
                name,
                password_hash,
            } => {
                let Some(mut user) = self.users.get(name).cloned() else {
                    return refused(R::UserNotFound);
                };
                user.password_hash = Some(password_hash.clone());
                self.put_user(overlay, name, user)?;
            }
            A::UserGrantRole { user, role } => {
                let Some(mut record) = self.users.get(user).cloned() else {
                    return refused(R::UserNotFound);
                };
                // etcd: the root role exists without being added.
                if role != ROOT && !self.roles.contains_key(role) {
                    return refused(R::RoleNotFound);
                }
                if !record.roles.contains(role) && record.roles.len() >= MAX_USER_ROLES {
                    return refused(R::TooManyRoles);
                }
                record.roles.insert(role.clone());
                self.put_user(overlay, user, record)?;
            }
            A::UserRevokeRole { user, role } => {
                if enabled && user == ROOT && role == ROOT {
                    return refused(R::InvalidAuthManagement);
                }
                let Some(mut record) = self.users.get(user).cloned() else {
                    return refused(R::UserNotFound);
                };
                if !record.roles.remove(role) {
                    return refused(R::RoleNotGranted);
                }
                self.put_user(overlay, user, record)?;
            }
            A::RoleAdd { name } => {
                if name.is_empty() {
                    return refused(R::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return refused(R::RoleExists);
                }
                self.put_role(overlay, name, RoleRecord::default())?;
            }
            A::RoleDelete { name } => {
                if enabled && name == ROOT {
                    return refused(R::InvalidAuthManagement);
                }
                if self.roles.remove(name).is_none() {
                    return refused(R::RoleNotFound);
                }
                overlay.remove(record_key(ROLE_PREFIX, name));
                // etcd takes the role away from every user that had it.
                let holders: Vec<String> = self
                    .users
                    .iter()
                    .filter(|(_, u)| u.roles.contains(name))
                    .map(|(n, _)| n.clone())
                    .collect();
                for holder in holders {
                    if let Some(mut user) = self.users.get(&holder).cloned() {
                        user.roles.remove(name);
                        self.put_user(overlay, &holder, user)?;
                    }
                }
            }
            A::RoleGrantPermission { role, perm } => {
                let Some(mut record) = self.roles.get(role).cloned() else {
                    return refused(R::RoleNotFound);
                };
                // The same key range granted again replaces its type (etcd).
                let held = record.perms.len();
                match record
                    .perms
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    Some(existing) => existing.kind = perm.kind,
                    None if held >= MAX_ROLE_PERMISSIONS => return refused(R::TooManyPermissions),
                    None => record.perms.push(perm.clone()),
                }
                record
                    .perms
                    .sort_by(|a, b| a.key.cmp(&b.key).then(a.range_end.cmp(&b.range_end)));
                self.put_role(overlay, role, record)?;
            }
            A::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let Some(mut record) = self.roles.get(role).cloned() else {
                    return refused(R::RoleNotFound);
                };
                let before = record.perms.len();
                record
                    .perms
                    .retain(|p| !(p.key == *key && p.range_end == *range_end));
                if record.perms.len() == before {
                    return refused(R::PermissionNotGranted);
                }
                self.put_role(overlay, role, record)?;
            }
        }
        self.meta.revision += 1;
        overlay.put(META_AUTH.to_vec(), encode(&self.meta)?);
        Ok(Ok(self.meta.revision))
    }

    fn put_user<E: Engine>(
        &mut self,
        overlay: &mut Overlay<'_, E>,
        name: &str,
        user: UserRecord,
    ) -> Result<(), StateError> {
        overlay.put(record_key(USER_PREFIX, name), encode(&user)?);
        self.users.insert(name.to_string(), user);
        Ok(())
    }

    fn put_role<E: Engine>(
        &mut self,
        overlay: &mut Overlay<'_, E>,
        name: &str,
        role: RoleRecord,
    ) -> Result<(), StateError> {
        overlay.put(record_key(ROLE_PREFIX, name), encode(&role)?);
        self.roles.insert(name.to_string(), role);
        Ok(())
    }
}
