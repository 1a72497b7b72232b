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

pub use scope::{current_identity, with_identity, Identity, TokenScopeLayer};

use crate::core::{NodeCore, Routed};
use crate::error::ApiError;

/// etcd's metadata key for the token.
pub const TOKEN_METADATA: &str = "token";

/// Lifetime of a token a follower signs for a certificate's user.
const FORWARDED_TOKEN_TTL: Duration = Duration::from_secs(60);

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
                // No token: the client certificate's CN, as etcd does. Not
                // checked for existence: an unknown user has no permissions.
                return match current_identity().cert_user {
                    Some(user) => Ok(Caller::User(user.to_string())),
                    None => Err(ApiError::AuthUserEmpty),
                };
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

    /// A token for the caller of the call being served, when it has no
    /// token of its own but a client certificate: a follower forwarding
    /// the call cannot pass the certificate on, and signs for the CN user
    /// with the cluster's secret, which only members hold. Short-lived: it
    /// only has to outlast the forwarded call.
    pub fn forwarding_token(&self) -> Option<String> {
        let identity = current_identity();
        if identity.token.is_some() {
            return identity.token;
        }
        let user = identity.cert_user?;
        self.reader.with_auth(|auth| {
            auth.enabled().then(|| {
                let expiry = now_secs() + FORWARDED_TOKEN_TTL.as_secs();
                token::sign(auth.secret(), &user, expiry)
            })
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
