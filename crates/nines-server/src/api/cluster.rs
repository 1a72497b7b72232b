//! The `nines.v1.Cluster` service: status, membership, leadership, snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use nines_proto as pb;
use nines_proto::cluster_client::ClusterClient;
use nines_types::{Node, NodeId};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Membership};
use tonic::transport::Channel;
use tonic::{Response, Status};

use crate::core::{is_forwarded, NodeCore, Routed};
use crate::error::ApiError;
use crate::membership::{self, AddLearner, MembershipError, Removal};
use crate::network::peers;
use crate::observe::state_name;

/// Upper bound on a probe of a candidate member. A live node answers in
/// milliseconds; refused connections are retried until then, because an
/// operator may add a node right after starting it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(4);

/// How long a promotion waits for a learner to get in sync before it is
/// refused: a learner added a moment ago has matched nothing yet.
const PROMOTE_SYNC_WAIT: Duration = Duration::from_secs(3);

/// A membership check and the change it allowed must not interleave with
/// another change on this node, or both could pass against the same view.
static CHANGE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn refused(e: MembershipError) -> ApiError {
    match e {
        MembershipError::InvalidRequest(m) => ApiError::InvalidRequest(m),
        other => ApiError::Precondition(other.to_string()),
    }
}

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
    ) -> Result<Option<(ClusterClient<Channel>, Node)>, ApiError> {
        let leader_id = self.core.raft.metrics().borrow().current_leader;
        if leader_id == Some(self.core.id) {
            return Ok(None);
        }
        let leader = self.core.leader().map(|(id, node)| (Some(id), Some(node)));
        let (id, node) = leader.unwrap_or((None, None));
        match self.core.redirect::<()>(id, node, forwarded)? {
            Routed::Forward(node) => Ok(Some((self.client(&node)?, node))),
            Routed::Local(()) => Ok(None),
        }
    }

    async fn change_lock(&self) -> Result<tokio::sync::MutexGuard<'static, ()>, ApiError> {
        tokio::time::timeout(self.core.timeout(), CHANGE_LOCK.lock())
            .await
            .map_err(|_| {
                ApiError::Precondition("another membership change is still running".into())
            })
    }

    /// The effective (latest, maybe uncommitted) membership.
    fn membership(&self) -> Membership<NodeId, Node> {
        let metrics = self.core.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().clone()
    }

    fn live_window(&self) -> Duration {
        membership::live_window(self.core.config.raft.election_timeout_max)
    }

    /// This node (the leader) and the peers that answered it recently.
    fn live_nodes(&self) -> BTreeSet<NodeId> {
        let mut live = self.core.peers.answered_within(self.live_window());
        live.insert(self.core.id);
        live
    }

    /// Proves that node `id` of this cluster listens at `addr`.
    async fn probe(&self, id: NodeId, addr: &str) -> Result<(), MembershipError> {
        // Leave the caller's deadline room for the change itself.
        let timeout = PROBE_TIMEOUT.min(self.core.timeout() * 3 / 4);
        let cluster_id = self.core.cluster_id;
        let source_ip = self.core.config.peer_source_ip;
        let reply = peers::probe(addr, id, cluster_id, source_ip, timeout)
            .await
            .map_err(|e| MembershipError::ProbeFailed {
                id,
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        membership::check_probe_reply(id, addr, cluster_id, reply.id, reply.cluster_id)
    }

    fn check_promote(&self, id: NodeId) -> Result<ChangeMembers<NodeId, Node>, MembershipError> {
        let metrics = self.core.raft.metrics().borrow().clone();
        let current = metrics.membership_config.membership();
        let goal = membership::promote_goal(current, id)?;
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten());
        membership::check_in_sync(
            id,
            matched,
            metrics.last_log_index,
            self.core.peers.since_answer(id),
            self.live_window(),
        )?;
        membership::check_live_quorum(current, &goal, &self.live_nodes())?;
        Ok(ChangeMembers::ReplaceAllVoters(goal))
    }

    /// `check_promote`, retried for a while when only the learner's progress
    /// is missing.
    async fn await_promotable(
        &self,
        id: NodeId,
    ) -> Result<ChangeMembers<NodeId, Node>, MembershipError> {
        let deadline = tokio::time::Instant::now() + PROMOTE_SYNC_WAIT.min(self.core.timeout() / 2);
        loop {
            match self.check_promote(id) {
                Err(MembershipError::NotInSync { .. } | MembershipError::Silent { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                result => return result,
            }
        }
    }

    fn check_remove(&self, id: NodeId) -> Result<ChangeMembers<NodeId, Node>, MembershipError> {
        let current = self.membership();
        match membership::removal(&current, id)? {
            Removal::Voter(goal) => {
                membership::check_live_quorum(&current, &goal, &self.live_nodes())?;
                Ok(ChangeMembers::ReplaceAllVoters(goal))
            }
            Removal::Learner => Ok(ChangeMembers::RemoveNodes(BTreeSet::from([id]))),
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
        // Empty when the leader has no client address: its peer port would
        // refuse a client, so the client goes through a member instead.
        let leader_api_addr = self
            .core
            .leader()
            .map(|(_, n)| n.api_addr)
            .unwrap_or_default();
        let dir = crate::disk::state_dir(&self.core.config.data_dir);
        let db_size = tokio::task::spawn_blocking(move || crate::disk::usage(&dir))
            .await
            .map_err(|e| ApiError::Internal(format!("sizing the data dir: {e}")))?;
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
        if let Some((mut leader, node)) = self.leader_to_forward(forwarded)? {
            return leader
                .member_add_learner(self.core.forward_request(message))
                .await
                .map_err(|s| self.forward_failed(&node, s));
        }
        membership::validate_member(message.id, &message.raft_addr, &message.api_addr)
            .map_err(refused)?;
        let node = Node::new(message.raft_addr.clone(), message.api_addr.clone());
        let _guard = self.change_lock().await?;
        match membership::check_add_learner(&self.membership(), message.id, &node) {
            // Idempotent: a joining node may retry after a lost response.
            Ok(AddLearner::AlreadyPresent) => return Ok(Response::new(self.members_response())),
            Ok(AddLearner::New) => {}
            Err(e) => return Err(refused(e).into()),
        }
        // Never replicate to an address until it proved to be that node.
        self.probe(message.id, &message.raft_addr)
            .await
            .map_err(refused)?;
        let timeout = self.core.timeout() * 6;
        let added =
            tokio::time::timeout(timeout, self.core.raft.add_learner(message.id, node, true))
                .await
                .map_err(|_| ApiError::Timeout(timeout))?;
        match self.membership_result(added, forwarded)? {
            Routed::Local(()) => Ok(Response::new(self.members_response())),
            Routed::Forward(leader) => self
                .client(&leader)?
                .member_add_learner(self.core.forward_request(message))
                .await
                .map_err(|s| self.forward_failed(&leader, s)),
        }
    }

    async fn member_promote(
        &self,
        request: tonic::Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        if let Some((mut leader, node)) = self.leader_to_forward(forwarded)? {
            return leader
                .member_promote(self.core.forward_request(message))
                .await
                .map_err(|s| self.forward_failed(&node, s));
        }
        let _guard = self.change_lock().await?;
        if self.membership().voter_ids().any(|v| v == message.id) {
            return Ok(Response::new(self.members_response()));
        }
        let change = self.await_promotable(message.id).await.map_err(refused)?;
        match self.change(change, forwarded).await? {
            Routed::Local(()) => Ok(Response::new(self.members_response())),
            Routed::Forward(leader) => self
                .client(&leader)?
                .member_promote(self.core.forward_request(message))
                .await
                .map_err(|s| self.forward_failed(&leader, s)),
        }
    }

    async fn member_remove(
        &self,
        request: tonic::Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        if let Some((mut leader, node)) = self.leader_to_forward(forwarded)? {
            return leader
                .member_remove(self.core.forward_request(message))
                .await
                .map_err(|s| self.forward_failed(&node, s));
        }
        let _guard = self.change_lock().await?;
        let change = self.check_remove(message.id).map_err(refused)?;
        match self.change(change, forwarded).await? {
            Routed::Local(()) => Ok(Response::new(self.members_response())),
            Routed::Forward(leader) => self
                .client(&leader)?
                .member_remove(self.core.forward_request(message))
                .await
                .map_err(|s| self.forward_failed(&leader, s)),
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
