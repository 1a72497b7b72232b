//! `nines.v1.Admin`: the calls etcd's API has no equivalent for. Adding a
//! learner under its own id after a probe (`--join`, `nines member add`),
//! building a snapshot on one member, and that member's Raft log positions.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nines_proto::admin_client::AdminClient;
use nines_proto::admin_server::Admin;
use nines_proto::{self as pb};
use nines_types::{Header, Node};
use tokio::sync::watch;
use tonic::{Response, Status};

use super::forward::{self, is_forwarded};
use crate::core::{NodeCore, Routed};
use crate::observe::state_name;

pub struct AdminService {
    pub core: Arc<NodeCore>,
}

fn header(h: Header) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        cluster_id: h.cluster_id,
        member_id: h.member_id,
        raft_term: h.raft_term,
        revision: h.revision,
    })
}

impl AdminService {
    fn header(&self) -> Option<pb::ResponseHeader> {
        header(self.core.header(self.core.reader.revision()))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    /// A keepalive forwarded by a follower (see `api/etcd/lease.rs`).
    async fn lease_renew(
        &self,
        request: tonic::Request<pb::LeaseRenewRequest>,
    ) -> Result<Response<pb::LeaseRenewResponse>, Status> {
        self.core.caller(request.metadata())?;
        let forwarded = is_forwarded(&request);
        let m = request.into_inner();
        crate::metrics::Counters::inc(&self.core.counters.lease_keepalives);
        match self.core.lease_renew(m.id, forwarded).await? {
            Routed::Local((revision, ttl)) => Ok(Response::new(pb::LeaseRenewResponse {
                header: header(self.core.header(revision)),
                ttl,
            })),
            Routed::Forward(leader) => {
                let call = |ch, r| async move { AdminClient::new(ch).lease_renew(r).await };
                forward::to_leader(&self.core, &leader, m, None, call).await
            }
        }
    }

    /// A member's own client address, on the peer port (see `publish`).
    async fn publish(
        &self,
        request: tonic::Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let sender = request.extensions().get::<forward::PeerMember>().copied();
        let m = request.into_inner();
        if sender.map(|s| s.0) != Some(m.id) {
            return Err(Status::permission_denied(
                "a member publishes only its own client address, on the peer port",
            ));
        }
        match self
            .core
            .publish_client_addr(m.id, &m.api_addr, true)
            .await?
        {
            Routed::Local(()) => Ok(Response::new(pb::PublishResponse {
                header: self.header(),
            })),
            Routed::Forward(_) => Err(Status::unavailable("not the leader")),
        }
    }

    async fn add_learner(
        &self,
        request: tonic::Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::AddLearnerResponse>, Status> {
        self.core.admin(request.metadata())?;
        let forwarded = is_forwarded(&request);
        let m = request.into_inner();
        let node = Node::new(m.raft_addr.clone(), m.api_addr.clone());
        match self.core.add_learner(m.id, node, forwarded).await? {
            Routed::Local(()) => Ok(Response::new(pb::AddLearnerResponse {
                header: self.header(),
            })),
            Routed::Forward(leader) => {
                let call = |ch, r| async move { AdminClient::new(ch).add_learner(r).await };
                forward::to_leader(&self.core, &leader, m, None, call).await
            }
        }
    }

    async fn snapshot(
        &self,
        request: tonic::Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        self.core.admin(request.metadata())?;
        let snapshot_index = self.core.snapshot().await?;
        Ok(Response::new(pb::SnapshotResponse {
            header: self.header(),
            snapshot_index,
        }))
    }

    async fn raft_status(
        &self,
        _request: tonic::Request<pb::RaftStatusRequest>,
    ) -> Result<Response<pb::RaftStatusResponse>, Status> {
        let m = self.core.raft.metrics().borrow().clone();
        let c = &self.core.counters;
        Ok(Response::new(pb::RaftStatusResponse {
            header: self.header(),
            state: state_name(m.state).to_string(),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            millis_since_quorum_ack: m.millis_since_quorum_ack.unwrap_or(0),
            uptime_ms: c.started.at.elapsed().as_millis() as u64,
            leader_changes: c.leader_changes.load(Ordering::Relaxed),
            leaderless_ms: c.leaderless_ms.load(Ordering::Relaxed),
        }))
    }
}

/// How often a member checks that the membership has its client address.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Keeps this member's client address in the membership, as an etcd member
/// publishes its client URLs once started: a member bootstrapped from peer
/// addresses alone is otherwise listed as unstarted, and every call for the
/// leader reaches it through a forward (clients cannot find its client
/// port). Sent to the leader's peer port; nothing once it is there.
pub async fn publish(core: Arc<NodeCore>, mut stopped: watch::Receiver<bool>) {
    let mine = core.config.node.api_addr.clone();
    let unspecified = mine
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_unspecified());
    if unspecified {
        // Peers would reach themselves, and clients nothing.
        tracing::warn!(addr = %mine, "not publishing a wildcard client address; set --advertise-client");
        return;
    }
    if mine.is_empty() {
        return;
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(PUBLISH_EVERY) => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
        let known = core
            .membership()
            .get_node(&core.id)
            .map(|n| n.api_addr.clone());
        if known.is_none_or(|addr| addr == mine) {
            continue;
        }
        let published = match core.publish_client_addr(core.id, &mine, false).await {
            Ok(Routed::Local(())) => Ok(()),
            Ok(Routed::Forward(leader)) => {
                let message = pb::PublishRequest {
                    id: core.id,
                    api_addr: mine.clone(),
                };
                let call = |ch, r| async move { AdminClient::new(ch).publish(r).await };
                forward::to_peer_port(&core, &leader, message, call)
                    .await
                    .map(drop)
            }
            Err(e) => Err(Status::from(e)),
        };
        match published {
            Ok(()) => tracing::info!(addr = %mine, "published this member's client address"),
            Err(e) => tracing::debug!(error = %e, "publishing the client address failed; retrying"),
        }
    }
}
