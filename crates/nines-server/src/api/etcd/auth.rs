//! etcd's `Auth` service: changes go through the log (a follower forwards
//! them to the leader), reads pass a read barrier. Once auth is on, every
//! call here but `Authenticate` and `AuthStatus` needs root.

use std::sync::Arc;

use nines_proto::etcd::authpb;
use nines_proto::etcd::etcdserverpb as epb;
use nines_types::{AuthCommand, Command, CommandResult, PermKind, Permission, Request};
use tonic::transport::Channel;
use tonic::{Response, Status};

use epb::auth_client::AuthClient;

use super::{convert, session};
use crate::api::forward::{self, is_forwarded};
use crate::auth::token;
use crate::core::{NodeCore, Routed};
use crate::error::ApiError;

pub struct EtcdAuth {
    pub core: Arc<NodeCore>,
}

fn auth(channel: Channel) -> AuthClient<Channel> {
    AuthClient::new(channel)
}

/// The longest password taken (PBKDF2 hashes any length; bound the work).
const MAX_PASSWORD_BYTES: usize = 4096;

fn password(p: &str) -> Result<&str, ApiError> {
    if p.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::InvalidRequest(format!(
            "password of {} bytes; the limit is {MAX_PASSWORD_BYTES}",
            p.len()
        )));
    }
    Ok(p)
}

fn perm_kind(t: i32) -> Result<PermKind, ApiError> {
    use authpb::permission::Type;
    match Type::try_from(t) {
        Ok(Type::Read) => Ok(PermKind::Read),
        Ok(Type::Write) => Ok(PermKind::Write),
        Ok(Type::Readwrite) => Ok(PermKind::ReadWrite),
        Err(_) => Err(ApiError::InvalidRequest(format!(
            "unknown permission type {t}"
        ))),
    }
}

fn perm_type(kind: PermKind) -> i32 {
    use authpb::permission::Type;
    match kind {
        PermKind::Read => Type::Read as i32,
        PermKind::Write => Type::Write as i32,
        PermKind::ReadWrite => Type::Readwrite as i32,
    }
}

/// Proposes `command` as root (once auth is on) and answers with the
/// header, or forwards the original call to the leader. Under an
/// exactly-once session a retry is answered as the first attempt was
/// (not "user name already exists").
macro_rules! change {
    ($self:ident, $request:ident, $method:ident, $command:expr, $response:ident) => {{
        let forwarded = is_forwarded(&$request);
        $self.core.admin($request.metadata())?;
        let session = session::from_metadata($request.metadata())?;
        let message = $request.into_inner();
        let command: Result<AuthCommand, ApiError> = $command(&message);
        let request = Request {
            session,
            command: Command::Auth(command?),
        };
        let routed = $self.core.write(request, forwarded).await?;
        match routed {
            Routed::Local(resp) => {
                let (revision, result) = crate::api::convert::applied(resp)?;
                debug_assert!(matches!(result, CommandResult::AuthChanged { .. }));
                Ok(Response::new(epb::$response {
                    header: Some(convert::header($self.core.header(revision))),
                }))
            }
            Routed::Forward(leader) => {
                let call = |ch, r| async move { auth(ch).$method(r).await };
                let answer =
                    forward::to_leader(&$self.core, &leader, message, session, call).await?;
                // This member checks tokens and permissions from its own
                // copy of the auth state: answer once it has the change, as
                // etcd does, so the caller's next request here sees it.
                $self.core.catch_up().await;
                Ok(answer)
            }
        }
    }};
}

/// Reads the auth state as root (once auth is on) after a read barrier,
/// or forwards the call to the leader.
macro_rules! read {
    ($self:ident, $request:ident, $method:ident, $read:expr) => {{
        let forwarded = is_forwarded(&$request);
        $self.core.admin($request.metadata())?;
        let message = $request.into_inner();
        if let Routed::Forward(leader) = $self.core.linearize(forwarded).await? {
            let call = |ch, r| async move { auth(ch).$method(r).await };
            return forward::to_leader(&$self.core, &leader, message, None, call).await;
        }
        let header = Some(convert::header(
            $self.core.header($self.core.reader.revision()),
        ));
        let answer: Result<_, ApiError> =
            $self.core.reader.with_auth(|a| $read(a, &message, header));
        Ok(Response::new(answer?))
    }};
}

impl EtcdAuth {
    /// The stored hash of a new password, made off the async workers (see
    /// `token::off_thread`) and only for root: nobody else may make this
    /// member spend the CPU.
    async fn hash<T>(&self, request: &tonic::Request<T>, new: &str) -> Result<String, ApiError> {
        self.core.admin(request.metadata())?;
        let new = password(new)?.to_string();
        token::off_thread(move || token::hash_password(&new))
            .await
            .map_err(|e| ApiError::Internal(format!("hashing a password: {e}")))
    }
}

#[tonic::async_trait]
impl epb::auth_server::Auth for EtcdAuth {
    async fn auth_enable(
        &self,
        request: tonic::Request<epb::AuthEnableRequest>,
    ) -> Result<Response<epb::AuthEnableResponse>, Status> {
        // The secret every member will sign and check tokens with.
        change!(
            self,
            request,
            auth_enable,
            |_: &epb::AuthEnableRequest| Ok(AuthCommand::Enable {
                secret: rand::random::<[u8; 32]>().to_vec()
            }),
            AuthEnableResponse
        )
    }

    async fn auth_disable(
        &self,
        request: tonic::Request<epb::AuthDisableRequest>,
    ) -> Result<Response<epb::AuthDisableResponse>, Status> {
        change!(
            self,
            request,
            auth_disable,
            |_: &epb::AuthDisableRequest| Ok(AuthCommand::Disable),
            AuthDisableResponse
        )
    }

    async fn auth_status(
        &self,
        _request: tonic::Request<epb::AuthStatusRequest>,
    ) -> Result<Response<epb::AuthStatusResponse>, Status> {
        let header = convert::header(self.core.header(self.core.reader.revision()));
        let (enabled, auth_revision) = self.core.reader.with_auth(|a| (a.enabled(), a.revision()));
        Ok(Response::new(epb::AuthStatusResponse {
            header: Some(header),
            enabled,
            auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        request: tonic::Request<epb::AuthenticateRequest>,
    ) -> Result<Response<epb::AuthenticateResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        password(&message.password)?;
        match self
            .core
            .authenticate(&message.name, &message.password, forwarded)
            .await?
        {
            Routed::Local(token) => Ok(Response::new(epb::AuthenticateResponse {
                header: Some(convert::header(
                    self.core.header(self.core.reader.revision()),
                )),
                token,
            })),
            Routed::Forward(leader) => {
                let call = |ch, r| async move { auth(ch).authenticate(r).await };
                forward::to_leader(&self.core, &leader, message, None, call).await
            }
        }
    }

    async fn user_add(
        &self,
        request: tonic::Request<epb::AuthUserAddRequest>,
    ) -> Result<Response<epb::AuthUserAddResponse>, Status> {
        let m = request.get_ref();
        let no_password = m.options.as_ref().is_some_and(|o| o.no_password);
        let password_hash = match no_password {
            true => None,
            false => Some(self.hash(&request, &m.password).await?),
        };
        change!(
            self,
            request,
            user_add,
            |m: &epb::AuthUserAddRequest| Ok(AuthCommand::UserAdd {
                name: m.name.clone(),
                password_hash: password_hash.clone(),
            }),
            AuthUserAddResponse
        )
    }

    async fn user_get(
        &self,
        request: tonic::Request<epb::AuthUserGetRequest>,
    ) -> Result<Response<epb::AuthUserGetResponse>, Status> {
        read!(
            self,
            request,
            user_get,
            |a: &nines_state::AuthState, m: &epb::AuthUserGetRequest, header| {
                let roles = a
                    .user_roles(&m.name)
                    .ok_or(ApiError::Auth(nines_types::AuthRejection::UserNotFound))?;
                Ok(epb::AuthUserGetResponse { header, roles })
            }
        )
    }

    async fn user_list(
        &self,
        request: tonic::Request<epb::AuthUserListRequest>,
    ) -> Result<Response<epb::AuthUserListResponse>, Status> {
        read!(
            self,
            request,
            user_list,
            |a: &nines_state::AuthState, _: &epb::AuthUserListRequest, header| {
                Ok(epb::AuthUserListResponse {
                    header,
                    users: a.users(),
                })
            }
        )
    }

    async fn user_delete(
        &self,
        request: tonic::Request<epb::AuthUserDeleteRequest>,
    ) -> Result<Response<epb::AuthUserDeleteResponse>, Status> {
        change!(
            self,
            request,
            user_delete,
            |m: &epb::AuthUserDeleteRequest| Ok(AuthCommand::UserDelete {
                name: m.name.clone()
            }),
            AuthUserDeleteResponse
        )
    }

    async fn user_change_password(
        &self,
        request: tonic::Request<epb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<epb::AuthUserChangePasswordResponse>, Status> {
        let password_hash = self.hash(&request, &request.get_ref().password).await?;
        change!(
            self,
            request,
            user_change_password,
            |m: &epb::AuthUserChangePasswordRequest| Ok(AuthCommand::UserChangePassword {
                name: m.name.clone(),
                password_hash: password_hash.clone(),
            }),
            AuthUserChangePasswordResponse
        )
    }

    async fn user_grant_role(
        &self,
        request: tonic::Request<epb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<epb::AuthUserGrantRoleResponse>, Status> {
        change!(
            self,
            request,
            user_grant_role,
            |m: &epb::AuthUserGrantRoleRequest| Ok(AuthCommand::UserGrantRole {
                user: m.user.clone(),
                role: m.role.clone(),
            }),
            AuthUserGrantRoleResponse
        )
    }

    async fn user_revoke_role(
        &self,
        request: tonic::Request<epb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<epb::AuthUserRevokeRoleResponse>, Status> {
        change!(
            self,
            request,
            user_revoke_role,
            |m: &epb::AuthUserRevokeRoleRequest| Ok(AuthCommand::UserRevokeRole {
                user: m.name.clone(),
                role: m.role.clone(),
            }),
            AuthUserRevokeRoleResponse
        )
    }

    async fn role_add(
        &self,
        request: tonic::Request<epb::AuthRoleAddRequest>,
    ) -> Result<Response<epb::AuthRoleAddResponse>, Status> {
        change!(
            self,
            request,
            role_add,
            |m: &epb::AuthRoleAddRequest| Ok(AuthCommand::RoleAdd {
                name: m.name.clone()
            }),
            AuthRoleAddResponse
        )
    }

    async fn role_get(
        &self,
        request: tonic::Request<epb::AuthRoleGetRequest>,
    ) -> Result<Response<epb::AuthRoleGetResponse>, Status> {
        read!(
            self,
            request,
            role_get,
            |a: &nines_state::AuthState, m: &epb::AuthRoleGetRequest, header| {
                let perms = a
                    .role_permissions(&m.role)
                    .ok_or(ApiError::Auth(nines_types::AuthRejection::RoleNotFound))?;
                let perm = perms
                    .into_iter()
                    .map(|p| authpb::Permission {
                        perm_type: perm_type(p.kind),
                        key: p.key,
                        range_end: p.range_end,
                    })
                    .collect();
                Ok(epb::AuthRoleGetResponse { header, perm })
            }
        )
    }

    async fn role_list(
        &self,
        request: tonic::Request<epb::AuthRoleListRequest>,
    ) -> Result<Response<epb::AuthRoleListResponse>, Status> {
        read!(
            self,
            request,
            role_list,
            |a: &nines_state::AuthState, _: &epb::AuthRoleListRequest, header| {
                Ok(epb::AuthRoleListResponse {
                    header,
                    roles: a.roles(),
                })
            }
        )
    }

    async fn role_delete(
        &self,
        request: tonic::Request<epb::AuthRoleDeleteRequest>,
    ) -> Result<Response<epb::AuthRoleDeleteResponse>, Status> {
        change!(
            self,
            request,
            role_delete,
            |m: &epb::AuthRoleDeleteRequest| Ok(AuthCommand::RoleDelete {
                name: m.role.clone()
            }),
            AuthRoleDeleteResponse
        )
    }

    async fn role_grant_permission(
        &self,
        request: tonic::Request<epb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<epb::AuthRoleGrantPermissionResponse>, Status> {
        change!(
            self,
            request,
            role_grant_permission,
            |m: &epb::AuthRoleGrantPermissionRequest| {
                let perm = m.perm.as_ref().ok_or_else(|| {
                    ApiError::InvalidRequest("etcdserver: permission not given".into())
                })?;
                granted_range(&perm.key, &perm.range_end)?;
                Ok(AuthCommand::RoleGrantPermission {
                    role: m.name.clone(),
                    perm: Permission {
                        kind: perm_kind(perm.perm_type)?,
                        key: perm.key.clone(),
                        range_end: perm.range_end.clone(),
                    },
                })
            },
            AuthRoleGrantPermissionResponse
        )
    }

    async fn role_revoke_permission(
        &self,
        request: tonic::Request<epb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<epb::AuthRoleRevokePermissionResponse>, Status> {
        change!(
            self,
            request,
            role_revoke_permission,
            |m: &epb::AuthRoleRevokePermissionRequest| Ok(AuthCommand::RoleRevokePermission {
                role: m.role.clone(),
                key: m.key.clone(),
                range_end: m.range_end.clone(),
            }),
            AuthRoleRevokePermissionResponse
        )
    }
}

/// etcd 3.5's check of a granted permission: a key is required, and a
/// range must not be empty (`range_end` after `key`; "\0" is every key
/// from `key` on). A grant that covers nothing is a mistake, refused.
fn granted_range(key: &[u8], range_end: &[u8]) -> Result<(), ApiError> {
    let invalid = || ApiError::InvalidRequest("etcdserver: invalid auth management".into());
    if key.is_empty() {
        return Err(invalid());
    }
    if !range_end.is_empty() && range_end != [0] && key >= range_end {
        return Err(invalid());
    }
    Ok(())
}
