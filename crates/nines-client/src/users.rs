//! etcd's Auth service: enabling auth, users, roles and permissions. Each
//! call goes to the leader with the usual retries (no exactly-once
//! session: a retried `user add` may answer "user name already exists").

use crate::auth::AuthChannel as Channel;
use crate::client::{Client, Route};
use crate::error::ClientError;
use crate::proto::{self as pb, auth_client::AuthClient};

fn auth(channel: Channel) -> AuthClient<Channel> {
    AuthClient::new(channel).max_decoding_message_size(crate::MAX_RESPONSE_BYTES)
}

/// One method per Auth call: `name(request) -> response`, on the leader.
macro_rules! calls {
    ($($(#[$doc:meta])* $name:ident($req:ident) -> $resp:ident;)*) => {
        impl Client {
            $(
                $(#[$doc])*
                pub async fn $name(&self, request: pb::$req) -> Result<pb::$resp, ClientError> {
                    self.call(Route::Leader, request, |ch, r| async move {
                        auth(ch).$name(r).await
                    })
                    .await
                }
            )*
        }
    };
}

calls! {
    /// Turns auth on: needs a `root` user holding the `root` role.
    auth_enable(AuthEnableRequest) -> AuthEnableResponse;
    auth_disable(AuthDisableRequest) -> AuthDisableResponse;
    auth_status(AuthStatusRequest) -> AuthStatusResponse;
    user_add(AuthUserAddRequest) -> AuthUserAddResponse;
    user_get(AuthUserGetRequest) -> AuthUserGetResponse;
    user_list(AuthUserListRequest) -> AuthUserListResponse;
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
    role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
    role_list(AuthRoleListRequest) -> AuthRoleListResponse;
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
}
