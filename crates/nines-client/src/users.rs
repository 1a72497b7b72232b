//! etcd's Auth service: enabling auth, users, roles and permissions. Each
//! call goes to the leader with the usual retries; changes carry an
//! exactly-once session, so a retried `user add` whose first attempt was
//! applied answers as that attempt did, not "user name already exists".

use crate::auth::AuthChannel as Channel;
use crate::client::{Client, Route};
use crate::error::ClientError;
use crate::proto::{self as pb, auth_client::AuthClient};

fn auth(channel: Channel) -> AuthClient<Channel> {
    AuthClient::new(channel).max_decoding_message_size(crate::MAX_RESPONSE_BYTES)
}

/// One method per Auth call: `name(request) -> response`, on the leader;
/// `change` ones under a session, `read` ones as plain calls.
macro_rules! calls {
    ($($(#[$doc:meta])* $kind:ident $name:ident($req:ident) -> $resp:ident;)*) => {
        impl Client {
            $(
                $(#[$doc])*
                pub async fn $name(&self, request: pb::$req) -> Result<pb::$resp, ClientError> {
                    calls!(@$kind self, request, |ch, r| async move { auth(ch).$name(r).await })
                }
            )*
        }
    };
    (@change $self:ident, $request:ident, $call:expr) => {
        $self.write($request, $call).await
    };
    (@read $self:ident, $request:ident, $call:expr) => {
        $self.call(Route::Leader, $request, $call).await
    };
}

calls! {
    /// Turns auth on: needs a `root` user holding the `root` role.
    change auth_enable(AuthEnableRequest) -> AuthEnableResponse;
    change auth_disable(AuthDisableRequest) -> AuthDisableResponse;
    read auth_status(AuthStatusRequest) -> AuthStatusResponse;
    change user_add(AuthUserAddRequest) -> AuthUserAddResponse;
    read user_get(AuthUserGetRequest) -> AuthUserGetResponse;
    read user_list(AuthUserListRequest) -> AuthUserListResponse;
    change user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
    change user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
    change user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
    change user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
    change role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
    read role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
    read role_list(AuthRoleListRequest) -> AuthRoleListResponse;
    change role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
    change role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
    change role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
}
