//! The domain operations behind the API handlers: propose a write, pass a
//! read barrier, say where a request must go (here, or the leader). No
//! protocol types: handlers in `api/` convert, and forward through
//! `api::forward`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;

use nines_state::StateReader;
use nines_types::{Header, InputError, Node, NodeId, Raft, Request, Response, MAX_REQUEST_BYTES};
use openraft::ServerState;

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::Counters;
use crate::network::{ChannelPool, PeerLiveness};
use crate::proposer::{ProposeError, Proposer};
use crate::read_barrier::{Barrier, ReadBarrier};

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
    /// Watchers of this member's history.
    pub watch: Arc<crate::watch::Hub>,
    /// Lease countdowns, kept while this member leads.
    pub lessor: crate::lease::Lessor,
    /// Requests waiting for this member to apply an index or a revision.
    pub waits: Arc<crate::applied_waits::AppliedWaits>,
    /// Where the leader's read indexes are read from (`read_index.rs`):
    /// the peer service's vouched answers and the vote checks share it.
    pub read_state: crate::read_index::ReadState,
}

impl NodeCore {
    pub fn header(&self, revision: i64) -> Header {
        Header {
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
        self.submit_write(request, forwarded)?.await
    }

    /// `write`, with the checks done and the proposal queued before it
    /// returns: writes submitted one after another reach a leader's log in
    /// that order (see `Proposer::submit`).
    pub fn submit_write(
        &self,
        request: Request,
        forwarded: bool,
    ) -> Result<impl Future<Output = Result<Routed<Response>, ApiError>> + Send + '_, ApiError>
    {
        let len = self.check_limits(&request)?;
        self.check_quota(&request.command)?;
        // A follower that knows its leader sends the write there at once:
        // proposing it only to hear openraft answer ForwardToLeader cost
        // two task hops and a call into RaftCore per forwarded write. A
        // leader that has just stepped down answers the forward NotLeader,
        // as openraft would have.
        if let Some((id, node)) = self.other_leader() {
            Counters::inc(&self.counters.writes_forwarded);
            let redirected = self.redirect(Some(id), Some(node), forwarded);
            return Ok(Either::Left(std::future::ready(redirected)));
        }
        self.check_quorum_contact()?;
        let proposed = self.proposer.submit_sized(request, len);
        Ok(Either::Right(async move {
            let written = tokio::time::timeout(self.timeout(), proposed).await;
            let counters = &self.counters;
            match &written {
                Ok(Ok(_)) => Counters::inc(&counters.writes_ok),
                Ok(Err(ProposeError::ForwardToLeader(..))) => {
                    Counters::inc(&counters.writes_forwarded)
                }
                _ => Counters::inc(&counters.writes_failed),
            }
            match written {
                Err(_) => Err(ApiError::Timeout(self.timeout())),
                Ok(Ok(resp)) => Ok(Routed::Local(resp)),
                Ok(Err(ProposeError::ForwardToLeader(id, node))) => {
                    self.redirect(id, node, forwarded)
                }
                Ok(Err(ProposeError::Membership(e))) => Err(ApiError::Precondition(e)),
                Ok(Err(ProposeError::Timeout)) => Err(ApiError::Timeout(self.timeout())),
                Ok(Err(ProposeError::ShuttingDown)) => Err(ApiError::ShuttingDown),
                Ok(Err(ProposeError::TooLarge(len))) => {
                    Err(ApiError::InvalidInput(InputError::RequestTooLarge {
                        len,
                        max: MAX_REQUEST_BYTES,
                    }))
                }
            }
        }))
    }

    /// The limits on a request's shape (`Limits::check_command`) and size
    /// (etcd's `--max-request-bytes`, on the request as the log holds it):
    /// a write's, and a read-only txn's, which meets them as its write
    /// would. Returns the encoded length, which the proposer sizes batches by.
    pub(crate) fn check_limits(&self, request: &Request) -> Result<usize, ApiError> {
        self.config.limits.check_command(&request.command)?;
        let max = self.config.max_request_bytes;
        let len = nines_types::codec::encoded_len(request).unwrap_or(usize::MAX);
        if len > max {
            return Err(InputError::RequestTooLarge { len, max }.into());
        }
        Ok(len)
    }

    /// Builds a snapshot on this member covering at least what it has
    /// applied, and returns the snapshot's last log index.
    pub async fn snapshot(&self) -> Result<u64, ApiError> {
        let applied = self.raft.metrics().borrow().last_applied.map(|l| l.index);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        // Building one of a large state takes a while; longer than a request.
        let wait = Duration::from_secs(60);
        let metrics = self
            .raft
            .wait(Some(wait))
            .metrics(|m| m.snapshot.map(|l| l.index) >= applied, "snapshot built")
            .await
            .map_err(|_| ApiError::Timeout(wait))?;
        Ok(metrics.snapshot.map(|l| l.index).unwrap_or(0))
    }

    /// Bytes on disk of the state dir (snapshot, tails, sled): etcd's db size.
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
                if self.waits.index(index, self.timeout()).await {
                    Ok(Routed::Local(()))
                } else {
                    Err(ApiError::Timeout(self.timeout()))
                }
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

    /// Waits until this member has applied what the leader had committed
    /// when called, within the request timeout; best effort (a change that
    /// was made is not reported as failed because this wait was cut short).
    pub async fn catch_up(&self) {
        if let Err(e) = self.linearize(true).await {
            tracing::debug!(error = %e, "catching up after a forwarded change");
        }
    }

    /// Waits until this member's store has reached `revision`, within twice
    /// the election timeout: a member cut off from the leader cannot catch
    /// up, and the write it waits for is committed either way.
    pub async fn reach_revision(&self, revision: i64) {
        if self.reader.revision() >= revision {
            return;
        }
        let bound = Duration::from_millis(self.config.raft.election_timeout_max * 2);
        if !self.waits.revision(revision, bound).await {
            Counters::inc(&self.counters.forward_catch_up_timeouts);
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

    /// Whether `id` is in this member's view of the membership.
    pub fn is_member(&self, id: NodeId) -> bool {
        let metrics = self.raft.server_metrics();
        let m = metrics.borrow();
        m.membership_config.membership().get_node(&id).is_some()
    }

    /// The leader, when it is another member and this one is not leading.
    fn other_leader(&self) -> Option<(NodeId, Node)> {
        let metrics = self.raft.server_metrics();
        let m = metrics.borrow();
        if m.state == ServerState::Leader {
            return None;
        }
        let id = m.current_leader.filter(|&id| id != self.id)?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    pub fn leader(&self) -> Option<(NodeId, Node)> {
        let metrics = self.raft.server_metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }
}
