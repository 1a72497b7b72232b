//! `--join`: add this node to a running cluster through any member, as
//! `--join-user` when the cluster has auth on.

use std::time::Duration;

use epb::auth_client::AuthClient;
use epb::cluster_client::ClusterClient;
use nines_proto as pb;
use nines_proto::admin_client::AdminClient;
use nines_proto::etcd::etcdserverpb as epb;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::auth::TOKEN_METADATA;
use crate::config::JoinUser;
use crate::core::NodeCore;
use crate::error::{ServerError, LEADER_ADDR_HEADER};

pub async fn join(
    core: &NodeCore,
    endpoints: &[String],
    as_learner: bool,
) -> Result<(), ServerError> {
    let me = &core.config.node;
    let add = pb::AddLearnerRequest {
        id: core.id,
        raft_addr: me.raft_addr.clone(),
        api_addr: me.api_addr.clone(),
    };
    let login = Login::new(core.config.join_user.clone());
    call_any(core, endpoints, ADD_DEADLINE, false, &login, |ch, token| {
        let add = with_token(add.clone(), token);
        async move { AdminClient::new(ch).add_learner(add).await.map(|_| ()) }
    })
    .await?;
    tracing::info!("joined as learner");
    if !as_learner {
        // The leader refuses to promote a learner that is not in sync yet:
        // keep asking while it catches up.
        call_any(
            core,
            endpoints,
            PROMOTE_DEADLINE,
            true,
            &login,
            |ch, token| promote(ch, core.id, token),
        )
        .await?;
        tracing::info!("promoted to voter");
    }
    Ok(())
}

/// etcd's MemberPromote, done when this node is a voter already: a
/// promotion whose answer was lost is refused on retry ("can only promote
/// a learner member"), as etcd refuses it.
async fn promote(channel: Channel, id: u64, token: Option<String>) -> Result<(), tonic::Status> {
    let mut cluster = ClusterClient::new(channel);
    let refused = match cluster
        .member_promote(with_token(epb::MemberPromoteRequest { id }, token))
        .await
    {
        Ok(_) => return Ok(()),
        Err(status) if status.code() == tonic::Code::FailedPrecondition => status,
        Err(status) => return Err(status),
    };
    let list = cluster
        .member_list(epb::MemberListRequest { linearizable: true })
        .await?;
    let voter = |m: &epb::Member| m.id == id && !m.is_learner;
    if list.get_ref().members.iter().any(voter) {
        Ok(())
    } else {
        Err(refused)
    }
}

const ADD_DEADLINE: Duration = Duration::from_secs(60);
/// One call to one endpoint. Without it, an endpoint that took the TCP
/// connection and never answered (a hung member, a wrong port) held the
/// join for good, however many good endpoints followed. A slow add is safe
/// to cut short: asked again, the member answers that it is present.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

async fn timed<T>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {CALL_TIMEOUT:?}"
            )))
        })
}
/// Catching up from a snapshot of a large state can take minutes.
const PROMOTE_DEADLINE: Duration = Duration::from_secs(600);

/// `--join-user`'s login on a cluster with auth on: a token, taken when a
/// member first refuses the join for want of one, and again when it
/// expires (promotion can outlast a token).
struct Login {
    user: Option<JoinUser>,
    token: std::sync::Mutex<Option<String>>,
}

impl Login {
    fn new(user: Option<JoinUser>) -> Login {
        Login {
            user,
            token: std::sync::Mutex::new(None),
        }
    }

    fn token(&self) -> Option<String> {
        self.token.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Logs in through `channel` after `status` refused the join for its
    /// token; `Ok(false)` when that was not the refusal or there is no user.
    async fn renew(&self, channel: Channel, status: &tonic::Status) -> Result<bool, tonic::Status> {
        let Some(user) = &self.user else {
            return Ok(false);
        };
        let refused = match status.code() {
            tonic::Code::Unauthenticated => status.message().contains("invalid auth token"),
            tonic::Code::InvalidArgument => status.message().contains("user name is empty"),
            _ => false,
        };
        if !refused {
            return Ok(false);
        }
        let request = epb::AuthenticateRequest {
            name: user.name.clone(),
            password: user.password.clone(),
        };
        let token = AuthClient::new(channel)
            .authenticate(request)
            .await?
            .into_inner()
            .token;
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token);
        Ok(true)
    }
}

fn with_token<T>(message: T, token: Option<String>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = token.and_then(|t| MetadataValue::try_from(t.as_str()).ok()) {
        request.metadata_mut().insert(TOKEN_METADATA, value);
    }
    request
}

/// Tries each endpoint (following leader hints) until one succeeds or the
/// deadline passes. A refusal (FAILED_PRECONDITION) ends it at once unless
/// `retry_refused`: promotion is refused until this node is in sync.
async fn call_any<F, Fut>(
    core: &NodeCore,
    endpoints: &[String],
    deadline: Duration,
    retry_refused: bool,
    login: &Login,
    call: F,
) -> Result<(), ServerError>
where
    F: Fn(Channel, Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + deadline;
    let mut last = String::from("no endpoints given");
    let mut targets: Vec<String> = endpoints.to_vec();
    while tokio::time::Instant::now() < deadline {
        for addr in targets.clone() {
            let Ok(channel) = core.pool.client(&addr) else {
                last = format!("bad endpoint {addr:?}");
                continue;
            };
            let mut answer = timed(call(channel.clone(), login.token())).await;
            if let Err(status) = &answer {
                match timed(login.renew(channel.clone(), status)).await {
                    Ok(true) => answer = timed(call(channel, login.token())).await,
                    Ok(false) => {}
                    // A wrong password will not get better.
                    Err(e) if e.code() == tonic::Code::InvalidArgument => {
                        return Err(ServerError::Join(format!("--join-user: {}", e.message())));
                    }
                    Err(e) => answer = Err(e),
                }
            }
            match answer {
                Ok(()) => return Ok(()),
                Err(status) => {
                    if let Some(leader) = status
                        .metadata()
                        .get(LEADER_ADDR_HEADER)
                        .and_then(|v| v.to_str().ok())
                    {
                        if !targets.iter().any(|t| t == leader) {
                            targets.insert(0, leader.to_string());
                        }
                    }
                    let refused = status.code() == tonic::Code::FailedPrecondition;
                    if (refused && !retry_refused) || status.code() == tonic::Code::InvalidArgument
                    {
                        return Err(ServerError::Join(status.message().to_string()));
                    }
                    last = format!("{addr}: {}", status.message());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(ServerError::Join(last))
}
