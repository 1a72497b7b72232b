//! The domain operations behind the gRPC handlers: propose a write, pass a
//! read barrier, decide when to forward to the leader.

use std::sync::Arc;
use std::time::Duration;

use nines_proto as pb;
use nines_state::StateReader;
use nines_types::{Node, NodeId, Raft, Request, Response};
use openraft::ServerState;
use tonic::transport::Channel;

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::Counters;
use crate::network::{ChannelPool, PeerLiveness};
use crate::proposer::{ProposeError, Proposer};
use crate::read_barrier::{Barrier, ReadBarrier};

/// Set on a request one node forwards to another, so it is never forwarded twice.
pub const FORWARDED_HEADER: &str = "x-nines-forwarded";
/// The forwarding member's id and cluster id, checked on the peer port.
pub const FROM_HEADER: &str = "x-nines-from";
pub const CLUSTER_HEADER: &str = "x-nines-cluster";

/// Where a request is served.
pub enum Routed<T> {
    Local(T),
    /// This node is not the leader; send the request to `leader`.
    Forward(Node),
}

pub struct NodeCore {
    pub id: NodeId,
    pub cluster_id: u64,
    pub raft: Raft,
    pub reader: StateReader,
    pub config: Arc<ServerConfig>,
    pub pool: ChannelPool,
    pub barrier: ReadBarrier,
    pub proposer: Proposer,
    pub counters: Arc<Counters>,
    /// Which peers answered our Raft RPCs recently (membership checks).
    pub peers: PeerLiveness,
}

impl NodeCore {
    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.id,
            // The server metrics: their lock is written on vote and role
            // changes only, not on every applied entry.
            raft_term: self
                .raft
                .server_metrics()
                .borrow()
                .vote
                .leader_id()
                .get_term(),
            revision,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.config.request_timeout
    }

    /// etcd's `physical` compaction: waits, within the request timeout,
    /// until this member has deleted the records a compaction at
    /// `revision` dropped.
    pub async fn wait_swept(&self, revision: i64) -> Result<(), ApiError> {
        tokio::time::timeout(self.timeout(), self.reader.wait_swept(revision))
            .await
            .map_err(|_| ApiError::Timeout(self.timeout()))
    }

    /// etcd's HashKV on this member's store (no read barrier, as in etcd:
    /// members are compared at a revision), off the async workers since it
    /// reads every retained record.
    pub async fn hash_kv(&self, revision: i64) -> Result<nines_state::HashKv, ApiError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || reader.hash_kv(revision))
            .await
            .map_err(|e| ApiError::Internal(format!("hashing the store: {e}")))?
            .map_err(ApiError::from)
    }

    /// A point-in-time snapshot of this member's applied state, for a
    /// backup (etcd's `Maintenance.Snapshot`): any member serves it.
    pub async fn export_snapshot(&self) -> Result<nines_state::Export, ApiError> {
        self.reader.export().await.map_err(ApiError::from)
    }

    /// Proposes a write and waits for it to be applied, or says where the leader is.
    pub async fn write(
        &self,
        request: Request,
        forwarded: bool,
    ) -> Result<Routed<Response>, ApiError> {
        self.config.limits.check_command(&request.command)?;
        self.check_quota(&request.command)?;
        self.check_quorum_contact()?;
        let written = tokio::time::timeout(self.timeout(), self.proposer.propose(request)).await;
        let counters = &self.counters;
        match &written {
            Ok(Ok(_)) => Counters::inc(&counters.writes_ok),
            Ok(Err(ProposeError::ForwardToLeader(..))) => Counters::inc(&counters.writes_forwarded),
            _ => Counters::inc(&counters.writes_failed),
        }
        match written {
            Err(_) => Err(ApiError::Timeout(self.timeout())),
            Ok(Ok(resp)) => Ok(Routed::Local(resp)),
            Ok(Err(ProposeError::ForwardToLeader(id, node))) => self.redirect(id, node, forwarded),
            Ok(Err(ProposeError::Membership(e))) => Err(ApiError::Precondition(e)),
            Ok(Err(ProposeError::Timeout)) => Err(ApiError::Timeout(self.timeout())),
            Ok(Err(ProposeError::ShuttingDown)) => Err(ApiError::ShuttingDown),
        }
    }

    /// Bytes on disk of the state dir (sled and snapshots): etcd's db size.
    /// Walked off the async workers; a snapshot swap mid-walk is not fatal.
    pub async fn db_size(&self) -> Result<u64, ApiError> {
        let dir = crate::disk::state_dir(&self.config.data_dir);
        tokio::task::spawn_blocking(move || crate::disk::usage(&dir))
            .await
            .map_err(|e| ApiError::Internal(format!("sizing the data dir: {e}")))
    }

    /// Refuses a write that adds data while the store holds more than the
    /// quota. Checked where the write enters (each member's store holds the
    /// same data), so a full store costs no proposal; it may overshoot by
    /// the writes already in flight, as etcd's check does.
    fn check_quota(&self, command: &nines_types::Command) -> Result<(), ApiError> {
        let used = self.reader.data_bytes();
        let quota = self.config.quota_backend_bytes;
        if used > quota && command.adds_data() {
            Counters::inc(&self.counters.writes_no_space);
            return Err(ApiError::NoSpace { used, quota });
        }
        Ok(())
    }

    /// Makes a following local read linearizable, or says where the leader is.
    pub async fn linearize(&self, forwarded: bool) -> Result<Routed<()>, ApiError> {
        if self.config.unsafe_local_reads {
            return Ok(Routed::Local(()));
        }
        match self.barrier.check().await {
            Barrier::ReadIndex(index) => {
                Counters::inc(&self.counters.reads_linearizable);
                if self.reader.last_applied().map(|l| l.index).unwrap_or(0) >= index {
                    return Ok(Routed::Local(()));
                }
                self.raft
                    .wait(Some(self.timeout()))
                    .applied_index_at_least(Some(index), "linearizable read")
                    .await
                    .map_err(|e| match e {
                        openraft::metrics::WaitError::Timeout(..) => {
                            ApiError::Timeout(self.timeout())
                        }
                        openraft::metrics::WaitError::ShuttingDown => ApiError::ShuttingDown,
                    })?;
                Ok(Routed::Local(()))
            }
            Barrier::NotLeader(id, node) => {
                Counters::inc(&self.counters.reads_forwarded);
                self.redirect(id, node, forwarded)
            }
            Barrier::QuorumLost => Err(ApiError::QuorumLost),
            Barrier::Timeout => Err(ApiError::Timeout(self.timeout())),
            Barrier::ShuttingDown => Err(ApiError::ShuttingDown),
        }
    }

    /// openraft 0.9 has no CheckQuorum: a leader cut off from the majority
    /// keeps its role and its writes hang. Refuse early instead.
    fn check_quorum_contact(&self) -> Result<(), ApiError> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state == ServerState::Leader {
            let limit = self.config.raft.election_timeout_max * 2;
            if m.millis_since_quorum_ack.is_some_and(|ms| ms > limit) {
                return Err(ApiError::QuorumLost);
            }
        }
        Ok(())
    }

    pub fn redirect<T>(
        &self,
        leader_id: Option<NodeId>,
        leader: Option<Node>,
        forwarded: bool,
    ) -> Result<Routed<T>, ApiError> {
        match (leader_id, leader) {
            (Some(leader_id), Some(leader)) if leader_id != self.id => {
                if forwarded {
                    Err(ApiError::NotLeader {
                        me: self.id,
                        leader_id,
                        leader,
                    })
                } else {
                    Ok(Routed::Forward(leader))
                }
            }
            _ => Err(ApiError::NoLeader),
        }
    }

    /// A channel to a node's client API (its peer address serves it too).
    pub fn channel_to(&self, node: &Node) -> Result<Channel, ApiError> {
        let addr = if node.api_addr.is_empty() {
            &node.raft_addr
        } else {
            &node.api_addr
        };
        self.pool
            .get(addr)
            .map_err(|e| ApiError::Internal(format!("bad address {addr:?}: {e}")))
    }

    /// Wraps a message for forwarding: marked, and bounded by our own timeout.
    pub fn forward_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert(
            FORWARDED_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        metadata.insert(FROM_HEADER, self.id.into());
        metadata.insert(CLUSTER_HEADER, self.cluster_id.into());
        request.set_timeout(self.timeout());
        request
    }

    /// Runs a call forwarded to `leader`, but gives up as soon as this node
    /// learns of a different leader: a leader that was paused or cut off
    /// never answers, and waiting out the forward's timeout kept clients
    /// of this node stalled about a second after a new leader took over.
    /// The client retries at once; writes carry a session, so a retry never
    /// applies twice.
    pub async fn forward_to<T>(
        &self,
        leader: &Node,
        call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        // The server metrics change only with the vote, role, leader or
        // membership; the full metrics change with every applied entry and
        // would wake every forwarded request on each.
        let mut server = self.raft.server_metrics();
        let moved = async {
            loop {
                if server.changed().await.is_err() {
                    return std::future::pending::<()>().await;
                }
                let now = self.leader().map(|(_, node)| node);
                if now.as_ref().is_some_and(|n| n != leader) {
                    return;
                }
            }
        };
        tokio::select! {
            result = call => result,
            () = moved => Err(crate::error::unavailable_with_leader(
                "the leader changed while the request was forwarded; retry".into(),
                self.leader().as_ref().map(|(id, node)| (*id, node)),
            )),
        }
    }

    /// The peer port serves client calls only when a member of this
    /// cluster forwarded them.
    pub fn check_forwarded_by_member(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(), tonic::Status> {
        let number =
            |name: &str| -> Option<u64> { metadata.get(name)?.to_str().ok()?.parse().ok() };
        let denied = |why: String| Err(tonic::Status::permission_denied(why));
        if !metadata.contains_key(FORWARDED_HEADER) {
            return denied("the peer port serves only members; use the client port".into());
        }
        if number(CLUSTER_HEADER) != Some(self.cluster_id) {
            return denied("forwarded from another cluster".into());
        }
        let Some(from) = number(FROM_HEADER) else {
            return denied("forwarded call without a sender".into());
        };
        let metrics = self.raft.server_metrics();
        if metrics
            .borrow()
            .membership_config
            .membership()
            .get_node(&from)
            .is_none()
        {
            return denied(format!("node {from} is not a member of this cluster"));
        }
        Ok(())
    }

    pub fn leader(&self) -> Option<(NodeId, Node)> {
        let metrics = self.raft.server_metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }
}

impl NodeCore {
    /// Counts a forward to the leader at `target` that failed for want of
    /// an answer (transport error, timeout, leader unavailable) and says so
    /// once per interval per kind: every request on a follower can fail the
    /// same way at once.
    pub fn note_forward_failure(&self, target: &Node, status: &tonic::Status) {
        use tonic::Code;
        let kind = match status.code() {
            Code::Unavailable => "forward_unavailable",
            Code::DeadlineExceeded => "forward_deadline",
            Code::Cancelled => "forward_cancelled",
            Code::Unknown => "forward_unknown",
            Code::Internal => "forward_internal",
            // The leader's answer to the request itself, not a failure to forward.
            _ => return,
        };
        Counters::inc(&self.counters.forward_failures);
        if let Some(suppressed) = crate::observe::say(kind) {
            let addr = if target.api_addr.is_empty() {
                &target.raft_addr
            } else {
                &target.api_addr
            };
            tracing::warn!(
                view = %crate::observe::View::of_raft(&self.raft),
                leader_addr = %addr,
                code = ?status.code(),
                suppressed,
                "forwarding to the leader failed: {}",
                status.message()
            );
        }
    }
}

pub fn is_forwarded<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}
