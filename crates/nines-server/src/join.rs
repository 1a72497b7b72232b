//! `--join`: add this node to a running cluster through any member.

use std::time::Duration;

use epb::cluster_client::ClusterClient;
use nines_proto as pb;
use nines_proto::admin_client::AdminClient;
use nines_proto::etcd::etcdserverpb as epb;
use tonic::transport::Channel;

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
    call_any(core, endpoints, ADD_DEADLINE, false, |ch| {
        let add = add.clone();
        async move { AdminClient::new(ch).add_learner(add).await.map(|_| ()) }
    })
    .await?;
    tracing::info!("joined as learner");
    if !as_learner {
        // The leader refuses to promote a learner that is not in sync yet:
        // keep asking while it catches up.
        call_any(core, endpoints, PROMOTE_DEADLINE, true, |ch| {
            promote(ch, core.id)
        })
        .await?;
        tracing::info!("promoted to voter");
    }
    Ok(())
}

/// etcd's MemberPromote, done when this node is a voter already: a
/// promotion whose answer was lost is refused on retry ("can only promote
/// a learner member"), as etcd refuses it.
async fn promote(channel: Channel, id: u64) -> Result<(), tonic::Status> {
    let mut cluster = ClusterClient::new(channel);
    let refused = match cluster
        .member_promote(epb::MemberPromoteRequest { id })
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
/// Catching up from a snapshot of a large state can take minutes.
const PROMOTE_DEADLINE: Duration = Duration::from_secs(600);

/// Tries each endpoint (following leader hints) until one succeeds or the
/// deadline passes. A refusal (FAILED_PRECONDITION) ends it at once unless
/// `retry_refused`: promotion is refused until this node is in sync.
async fn call_any<F, Fut>(
    core: &NodeCore,
    endpoints: &[String],
    deadline: Duration,
    retry_refused: bool,
    call: F,
) -> Result<(), ServerError>
where
    F: Fn(Channel) -> Fut,
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
            match call(channel).await {
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
