//! The `nines.v1.Cluster` service: status, membership, leadership, snapshots.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use nines_proto as pb;
use nines_proto::cluster_client::ClusterClient;
use nines_types::{Node, NodeId};
use tonic::transport::Channel;
use tonic::{Response, Status};

use crate::core::{is_forwarded, NodeCore, Routed};
use crate::error::ApiError;
use crate::membership::MembershipError;
use crate::observe::state_name;

pub struct ClusterService {
    pub core: Arc<NodeCore>,
}

fn members_of(m: &openraft::RaftMetrics<NodeId, Node>) -> Vec<pb::Member> {
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| pb::Member {
            id: *id,
            raft_addr: node.raft_addr.clone(),
            api_addr: node.api_addr.clone(),
            is_learner: !voters.contains(id),
        })
        .collect()
}

impl ClusterService {
    fn client(&self, node: &Node) -> Result<ClusterClient<Channel>, ApiError> {
        Ok(ClusterClient::new(self.core.channel_to(node)?))
    }

    /// Counts and logs a forward to the leader that got no answer; the
    /// status passes through unchanged.
    fn forward_failed(&self, leader: &Node, status: Status) -> Status {
        self.core.note_forward_failure(leader, &status);
        status
    }

    fn members_response(&self) -> pb::MemberChangeResponse {
        let metrics = self.core.raft.metrics().borrow().clone();
        pb::MemberChangeResponse {
            header: Some(self.core.header(self.core.reader.revision())),
            members: members_of(&metrics),
        }
    }

    /// The member list here, or the leader's answer to `message`.
    async fn answer<Req>(
        &self,
        routed: Routed<()>,
        message: Req,
        call: impl AsyncFnOnce(
            ClusterClient<Channel>,
            tonic::Request<Req>,
        ) -> Result<Response<pb::MemberChangeResponse>, Status>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        match routed {
            Routed::Local(()) => Ok(Response::new(self.members_response())),
            Routed::Forward(leader) => {
                call(self.client(&leader)?, self.core.forward_request(message))
                    .await
                    .map_err(|s| self.forward_failed(&leader, s))
            }
        }
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        _request: tonic::Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.core.raft.metrics().borrow().clone();
        // Empty when the leader has no client address: its peer port would
        // refuse a client, so the client goes through a member instead.
        let leader_api_addr = self
            .core
            .leader()
            .map(|(_, n)| n.api_addr)
            .unwrap_or_default();
        let db_size = self.core.db_size().await?;
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.core.header(self.core.reader.revision())),
            leader_id: m.current_leader.unwrap_or(0),
            state: state_name(m.state).to_string(),
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            version: env!("CARGO_PKG_VERSION").to_string(),
            millis_since_quorum_ack: m.millis_since_quorum_ack.unwrap_or(0),
            leader_api_addr,
            members: members_of(&m),
            db_size: db_size as i64,
            db_size_in_use: self.core.reader.data_bytes() as i64,
        }))
    }

    async fn member_list(
        &self,
        request: tonic::Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        if !message.serializable {
            if let Routed::Forward(leader) = self.core.linearize(forwarded).await? {
                return self
                    .client(&leader)?
                    .member_list(self.core.forward_request(message))
                    .await
                    .map_err(|s| self.forward_failed(&leader, s));
            }
        }
        let resp = self.members_response();
        Ok(Response::new(pb::MemberListResponse {
            header: resp.header,
            members: resp.members,
        }))
    }

    async fn member_add_learner(
        &self,
        request: tonic::Request<pb::MemberAddLearnerRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let node = Node::new(message.raft_addr.clone(), message.api_addr.clone());
        let routed = self.core.add_learner(message.id, node, forwarded).await?;
        self.answer(routed, message, async |mut c, r| {
            c.member_add_learner(r).await
        })
        .await
    }

    async fn member_promote(
        &self,
        request: tonic::Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let routed = match self.core.promote(message.id, forwarded).await {
            // Idempotent here: a joining node retries after a lost response.
            Err(ApiError::Membership(MembershipError::NotLearner(_))) => Routed::Local(()),
            other => other?,
        };
        self.answer(routed, message, async |mut c, r| c.member_promote(r).await)
            .await
    }

    async fn member_remove(
        &self,
        request: tonic::Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let routed = self.core.remove_member(message.id, forwarded).await?;
        self.answer(routed, message, async |mut c, r| c.member_remove(r).await)
            .await
    }

    async fn transfer_leader(
        &self,
        request: tonic::Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        match self
            .core
            .transfer_leader(message.target_id, forwarded)
            .await?
        {
            Routed::Local(()) => Ok(Response::new(pb::TransferLeaderResponse {
                header: Some(self.core.header(self.core.reader.revision())),
                leader_id: self.core.id,
            })),
            Routed::Forward(target) => self
                .client(&target)?
                .transfer_leader(self.core.forward_request(message))
                .await
                .map_err(|s| self.forward_failed(&target, s)),
        }
    }

    async fn snapshot(
        &self,
        _request: tonic::Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let applied = self
            .core
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index);
        self.core
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        let wait = Duration::from_secs(60);
        let metrics = self
            .core
            .raft
            .wait(Some(wait))
            .metrics(|m| m.snapshot.map(|l| l.index) >= applied, "snapshot built")
            .await
            .map_err(|_| ApiError::Timeout(wait))?;
        Ok(Response::new(pb::SnapshotResponse {
            header: Some(self.core.header(self.core.reader.revision())),
            snapshot_index: metrics.snapshot.map(|l| l.index).unwrap_or(0),
        }))
    }
}
