//! Authentication and authorization, etcd's model: once auth is enabled,
//! every call but `Authenticate` and `AuthStatus` needs a token (etcd's
//! `token` metadata) naming a user; key calls need a role granting the
//! keys, cluster and maintenance changes need root. The users, roles and
//! the token secret are replicated state (nines-state `auth`), so any
//! member checks any call by itself.

mod scope;
pub mod token;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::metadata::MetadataMap;

pub use scope::{current_token, with_token, TokenScopeLayer};

use crate::core::{NodeCore, Routed};
use crate::error::ApiError;

/// etcd's metadata key for the token.
pub const TOKEN_METADATA: &str = "token";

/// Who a call runs as: nobody when auth is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    AuthOff,
    User(String),
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl NodeCore {
    /// The caller of a request with `metadata`: etcd's errors for a
    /// missing token ("user name is empty") and a bad or expired one.
    pub fn caller(&self, metadata: &MetadataMap) -> Result<Caller, ApiError> {
        self.reader.with_auth(|auth| {
            if !auth.enabled() {
                return Ok(Caller::AuthOff);
            }
            let Some(raw) = metadata.get(TOKEN_METADATA) else {
                return Err(ApiError::AuthUserEmpty);
            };
            let user = raw
                .to_str()
                .ok()
                .and_then(|t| token::verify(auth.secret(), t, now_secs()))
                .filter(|u| auth.user_exists(u))
                .ok_or(ApiError::AuthInvalidToken)?;
            Ok(Caller::User(user))
        })
    }

    /// Refuses unless the caller may read (or write) `key`/`range_end`.
    pub fn check_keys(
        &self,
        caller: &Caller,
        write: bool,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), ApiError> {
        match caller {
            Caller::AuthOff => Ok(()),
            Caller::User(user) => {
                let ok = self
                    .reader
                    .with_auth(|a| !a.enabled() || a.permitted(user, write, key, range_end));
                ok.then_some(()).ok_or(ApiError::PermissionDenied)
            }
        }
    }

    /// Refuses unless the caller is root (cluster and maintenance changes).
    pub fn check_admin(&self, caller: &Caller) -> Result<(), ApiError> {
        match caller {
            Caller::AuthOff => Ok(()),
            Caller::User(user) => self
                .reader
                .with_auth(|a| !a.enabled() || a.is_root(user))
                .then_some(())
                .ok_or(ApiError::PermissionDenied),
        }
    }

    /// The caller of `metadata`, who must be root.
    pub fn admin(&self, metadata: &MetadataMap) -> Result<(), ApiError> {
        let caller = self.caller(metadata)?;
        self.check_admin(&caller)
    }

    /// etcd's Authenticate: a token for `name` if `password` matches, as of
    /// the state every member agreed on (a read barrier first, so a
    /// password just changed is the one checked).
    pub async fn authenticate(
        &self,
        name: &str,
        password: &str,
        forwarded: bool,
    ) -> Result<Routed<String>, ApiError> {
        if let Routed::Forward(leader) = self.linearize(forwarded).await? {
            return Ok(Routed::Forward(leader));
        }
        let (enabled, secret, stored) = self.reader.with_auth(|a| {
            (
                a.enabled(),
                a.secret().to_vec(),
                a.password_hash(name).map(str::to_string),
            )
        });
        if !enabled {
            return Err(ApiError::AuthNotEnabled);
        }
        let Some(stored) = stored else {
            return Err(ApiError::AuthFailed);
        };
        let password = password.to_string();
        // PBKDF2 takes tens of milliseconds: off the async workers.
        let matches = token::off_thread(move || token::password_matches(&password, &stored))
            .await
            .map_err(|e| ApiError::Internal(format!("checking a password: {e}")))?;
        if !matches {
            return Err(ApiError::AuthFailed);
        }
        let ttl = self
            .config
            .auth_token_ttl
            .max(Duration::from_secs(1))
            .as_secs();
        Ok(Routed::Local(token::sign(&secret, name, now_secs() + ttl)))
    }
}
