//! The `nines.v1.Cluster` service: status, membership, leadership, snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use nines_proto as pb;
use nines_proto::cluster_client::ClusterClient;
use nines_types::{Node, NodeId};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use tonic::transport::Channel;
use tonic::{Response, Status};

use crate::core::{is_forwarded, NodeCore, Routed};
use crate::error::ApiError;

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

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl ClusterService {
    fn client(&self, node: &Node) -> Result<ClusterClient<Channel>, ApiError> {
        Ok(ClusterClient::new(self.core.channel_to(node)?))
    }

    fn members_response(&self) -> pb::MemberChangeResponse {
        let metrics = self.core.raft.metrics().borrow().clone();
        pb::MemberChangeResponse {
            header: Some(self.core.header(self.core.reader.revision())),
            members: members_of(&metrics),
        }
    }

    /// Runs a membership change on the leader, or says where the leader is.
    async fn change(
        &self,
        change: ChangeMembers<NodeId, Node>,
        forwarded: bool,
    ) -> Result<Routed<()>, ApiError> {
        let timeout = self.core.timeout() * 6;
        let result =
            tokio::time::timeout(timeout, self.core.raft.change_membership(change, false)).await;
        self.membership_result(result.map_err(|_| ApiError::Timeout(timeout))?, forwarded)
    }

    fn membership_result<T>(
        &self,
        result: Result<T, RaftError<NodeId, ClientWriteError<NodeId, Node>>>,
        forwarded: bool,
    ) -> Result<Routed<()>, ApiError> {
        match result {
            Ok(_) => Ok(Routed::Local(())),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                self.core.redirect(f.leader_id, f.leader_node, forwarded)
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ApiError::Precondition(e.to_string()))
            }
            Err(RaftError::Fatal(_)) => Err(ApiError::ShuttingDown),
        }
    }

    /// Membership changes are decided on the leader's view: a follower's may
    /// lag behind a change that was just committed.
    fn leader_to_forward(
        &self,
        forwarded: bool,
    ) -> Result<Option<ClusterClient<Channel>>, ApiError> {
        let leader_id = self.core.raft.metrics().borrow().current_leader;
        if leader_id == Some(self.core.id) {
            return Ok(None);
        }
        let leader = self.core.leader().map(|(id, node)| (Some(id), Some(node)));
        let (id, node) = leader.unwrap_or((None, None));
        match self.core.redirect::<()>(id, node, forwarded)? {
            Routed::Forward(node) => Ok(Some(self.client(&node)?)),
            Routed::Local(()) => Ok(None),
        }
    }

    fn current_membership(&self) -> (BTreeSet<NodeId>, BTreeMap<NodeId, Node>) {
        let metrics = self.core.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters = membership.voter_ids().collect();
        let nodes = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        (voters, nodes)
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        _request: tonic::Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.core.raft.metrics().borrow().clone();
        let leader_api_addr = self
            .core
            .leader()
            .map(|(_, n)| {
                if n.api_addr.is_empty() {
                    n.raft_addr
                } else {
                    n.api_addr
                }
            })
            .unwrap_or_default();
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
                    .await;
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
        if let Some(mut leader) = self.leader_to_forward(forwarded)? {
            return leader
                .member_add_learner(self.core.forward_request(message))
                .await;
        }
        if message.id == 0 || message.raft_addr.is_empty() {
            return Err(ApiError::InvalidRequest(
                "a member needs a non-zero id and a peer address".into(),
            )
            .into());
        }
        let (voters, nodes) = self.current_membership();
        if voters.contains(&message.id) {
            return Err(
                ApiError::Precondition(format!("node {} is already a voter", message.id)).into(),
            );
        }
        let node = Node::new(message.raft_addr.clone(), message.api_addr.clone());
        if nodes.get(&message.id) == Some(&node) {
            // Idempotent: a joining node may retry after a lost response.
            return Ok(Response::new(self.members_response()));
        }
        let timeout = self.core.timeout() * 6;
        let added =
            tokio::time::timeout(timeout, self.core.raft.add_learner(message.id, node, true))
                .await
                .map_err(|_| ApiError::Timeout(timeout))?;
        match self.membership_result(added, forwarded)? {
            Routed::Local(()) => Ok(Response::new(self.members_response())),
            Routed::Forward(leader) => {
                self.client(&leader)?
                    .member_add_learner(self.core.forward_request(message))
                    .await
            }
        }
    }

    async fn member_promote(
        &self,
        request: tonic::Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        if let Some(mut leader) = self.leader_to_forward(forwarded)? {
            return leader
                .member_promote(self.core.forward_request(message))
                .await;
        }
        let (voters, nodes) = self.current_membership();
        if voters.contains(&message.id) {
            return Ok(Response::new(self.members_response()));
        }
        if !nodes.contains_key(&message.id) {
            return Err(ApiError::Precondition(format!(
                "node {} is not a learner of this cluster",
                message.id
            ))
            .into());
        }
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([message.id]));
        match self.change(change, forwarded).await? {
            Routed::Local(()) => Ok(Response::new(self.members_response())),
            Routed::Forward(leader) => {
                self.client(&leader)?
                    .member_promote(self.core.forward_request(message))
                    .await
            }
        }
    }

    async fn member_remove(
        &self,
        request: tonic::Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        if let Some(mut leader) = self.leader_to_forward(forwarded)? {
            return leader
                .member_remove(self.core.forward_request(message))
                .await;
        }
        let (voters, nodes) = self.current_membership();
        let id = message.id;
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(ApiError::Precondition("cannot remove the last voter".into()).into());
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if nodes.contains_key(&id) {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(ApiError::Precondition(format!("node {id} is not a member")).into());
        };
        match self.change(change, forwarded).await? {
            Routed::Local(()) => Ok(Response::new(self.members_response())),
            Routed::Forward(leader) => {
                self.client(&leader)?
                    .member_remove(self.core.forward_request(message))
                    .await
            }
        }
    }

    async fn transfer_leader(
        &self,
        request: tonic::Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let (voters, nodes) = self.current_membership();
        if !voters.contains(&message.target_id) {
            return Err(ApiError::Precondition(format!(
                "node {} is not a voter",
                message.target_id
            ))
            .into());
        }
        if message.target_id != self.core.id {
            if forwarded {
                return Err(ApiError::Precondition(
                    "transfer was forwarded to the wrong node".into(),
                )
                .into());
            }
            let target = &nodes[&message.target_id];
            return self
                .client(target)?
                .transfer_leader(self.core.forward_request(message))
                .await;
        }
        // openraft 0.9 has no leader transfer: campaigning with an up-to-date
        // log wins the next term and the old leader steps down.
        let term = self.core.raft.metrics().borrow().current_term;
        self.core
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        let wait = Duration::from_millis(self.core.config.raft.election_timeout_max * 10);
        let metrics = self
            .core
            .raft
            .wait(Some(wait))
            .metrics(
                |m| m.current_term > term && m.current_leader.is_some(),
                "leader after transfer",
            )
            .await
            .map_err(|_| ApiError::Timeout(wait))?;
        Ok(Response::new(pb::TransferLeaderResponse {
            header: Some(self.core.header(self.core.reader.revision())),
            leader_id: metrics.current_leader.unwrap_or(0),
        }))
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
