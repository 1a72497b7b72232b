//! Receiving Raft RPCs from peers: each message is decoded with a bound and
//! checked by `guard` before openraft sees it.

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::SinkExt;
use nines_proto::raft_server::Raft as RaftRpc;
use nines_proto::{RaftReply, RaftRequest};
use nines_types::{NodeId, Raft};
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use super::codec;
use super::guard::{self, GuardLimits, LogOnce, Refused, SnapshotStreams, View};
use super::snapshot_receive::NotTaken;
use crate::election::{Election, PreVoteRequest};
use crate::metrics::Counters;
use crate::read_barrier::ReadBarrier;
use openraft::raft::AppendEntriesResponse;

/// Cheap to clone (the append stream's task holds a clone).
#[derive(Clone)]
pub struct RaftService {
    pub id: NodeId,
    pub cluster_id: u64,
    pub raft: Raft,
    pub limits: GuardLimits,
    pub counters: Arc<Counters>,
    snapshots: Arc<SnapshotStreams>,
    log_once: Arc<LogOnce>,
    /// Pre-vote answers and leader contact; absent in handler-only tests.
    election: Option<Arc<Election>>,
    /// Answers followers' read index requests; absent in handler-only tests.
    reads: Option<ReadBarrier>,
    /// This node's saved vote and applied index, with which an ask that
    /// offers a vote is answered without a round (`read_index.rs`).
    vouching: Option<crate::read_index::ReadState>,
    /// Stages a snapshot before its install (`snapshot_receive.rs`); absent
    /// in handler-only tests, which use openraft's receiver.
    receiver: Option<Arc<super::SnapshotReceiver>>,
}

impl RaftService {
    pub fn new(id: NodeId, cluster_id: u64, raft: Raft, counters: Arc<Counters>) -> Self {
        Self {
            id,
            cluster_id,
            raft,
            limits: GuardLimits::default(),
            counters,
            snapshots: Arc::default(),
            log_once: Arc::new(LogOnce::new(Duration::from_secs(10))),
            election: None,
            reads: None,
            vouching: None,
            receiver: None,
        }
    }

    pub fn with_receiver(mut self, receiver: super::SnapshotReceiver) -> Self {
        self.receiver = Some(Arc::new(receiver));
        self
    }

    pub fn with_limits(mut self, limits: GuardLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn with_vouching(mut self, vouching: crate::read_index::ReadState) -> Self {
        self.vouching = Some(vouching);
        self
    }

    /// The read index `req`'s offered vote earns, if it does, with `m` the
    /// server metrics the handler borrowed.
    fn vouched(
        &self,
        req: &nines_proto::ReadIndexRequest,
        m: &openraft::metrics::RaftServerMetrics<NodeId, nines_types::Node>,
    ) -> Option<u64> {
        let state = self.vouching.as_ref()?;
        if req.vote_term == 0 {
            return None;
        }
        // The saved vote is read after the ask arrived (the module doc of
        // read_index.rs); the applied index may be read at any time after.
        crate::read_index::vouched_index(&crate::read_index::Vouch {
            own: state.own(self.id, m),
            asker: req.from,
            offered_term: req.vote_term,
            offered_leader: req.vote_leader,
        })
    }

    pub fn with_reads(mut self, reads: ReadBarrier) -> Self {
        self.reads = Some(reads);
        self
    }

    pub fn with_election(mut self, election: Arc<Election>) -> Self {
        self.election = Some(election);
        self
    }

    /// The election's turn (`Election::turn`), held around a call that may
    /// grant a vote or admit a leader; none in handler-only tests.
    async fn turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.election {
            Some(e) => Some(e.turn.lock().await),
            None => None,
        }
    }

    /// A leader of our term or a newer one reached us.
    fn leader_contact(&self) {
        if let Some(e) = &self.election {
            e.contact.touch();
        }
    }

    /// Refuses traffic meant for another node or cluster: a misconfigured
    /// address must never make a leader replicate to itself or mix clusters.
    fn check(&self, req: &RaftRequest) -> Result<(), Status> {
        if req.target != self.id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {}",
                self.id, req.target
            )));
        }
        if req.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "this node belongs to cluster {:x}, not {:x}",
                self.cluster_id, req.cluster_id
            )));
        }
        Ok(())
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, req: &RaftRequest) -> Result<T, Status> {
        self.check(req)?;
        codec::decode(&req.data).map_err(|e| {
            self.refused(&Refused::Malformed(format!(
                "undecodable raft payload: {e}"
            )))
        })
    }

    /// Refuses a request for another node or cluster (the probe, read
    /// index asks and vote checks; Raft messages go through `check`).
    fn addressed(&self, target: NodeId, cluster_id: u64) -> Result<(), Status> {
        if target != self.id || cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "this is node {} of cluster {:x}, not node {} of cluster {:x}",
                self.id, self.cluster_id, target, cluster_id
            )));
        }
        Ok(())
    }

    /// Runs `check` against this node's current term and membership.
    fn guard(
        &self,
        check: impl FnOnce(&View, &GuardLimits) -> Result<(), Refused>,
    ) -> Result<(), Status> {
        let verdict = {
            // A borrow is a read lock on the metrics channel. It must end
            // before `refused` reads the channel again: a RaftCore update
            // queued between two reads on one thread (the lock prefers
            // writers) blocks both for good, and with them the Raft runtime.
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let view = View {
                me: self.id,
                current_term: m.current_term,
                membership: &m.membership_config,
                vote: &m.vote,
                leaderless_for: self
                    .election
                    .as_ref()
                    .map_or(Duration::ZERO, |e| e.contact.since()),
            };
            check(&view, &self.limits)
        };
        verdict.map_err(|why| self.refused(&why))
    }

    /// Counts and logs (once per kind and interval) a refused message.
    fn refused(&self, why: &Refused) -> Status {
        Counters::inc(&self.counters.peer_messages_refused);
        if self.log_once.should_say(why.kind()) {
            let m = self.raft.metrics().borrow().clone();
            tracing::warn!(
                node = self.id,
                term = m.current_term,
                leader = ?m.current_leader,
                "refused a peer message: {why} (further refusals of this kind are not logged for 10 s)"
            );
        }
        match why {
            Refused::Malformed(_) => Status::invalid_argument(why.to_string()),
            Refused::SnapshotTooLarge { .. } => Status::resource_exhausted(why.to_string()),
            Refused::SnapshotGap { .. } => Status::out_of_range(why.to_string()),
            _ => Status::permission_denied(why.to_string()),
        }
    }
}

fn reply<T: Serialize>(result: &T) -> Result<Response<RaftReply>, Status> {
    encoded(result).map(Response::new)
}

fn encoded<T: Serialize>(result: &T) -> Result<RaftReply, Status> {
    let data = codec::encode(result)
        .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))?;
    Ok(RaftReply { data })
}

impl RaftService {
    /// One append, checked as every peer message is, for the unary call
    /// and the stream alike.
    async fn append_one(&self, request: &RaftRequest) -> Result<RaftReply, Status> {
        let rpc = self.decode(request)?;
        self.guard(|view, limits| guard::check_append(&rpc, view, limits))?;
        let turn = self.turn().await;
        let result = self.raft.append_entries(rpc).await;
        if matches!(&result, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.leader_contact();
        }
        drop(turn);
        encoded(&result)
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.append_one(request.get_ref()).await.map(Response::new)
    }

    type AppendStreamStream = mpsc::Receiver<Result<RaftReply, Status>>;

    /// Appends in turn, each answered before the next is read; the first
    /// refusal is sent as the stream's status and ends it, as the unary
    /// call would have answered it. The task ends with the stream.
    async fn append_stream(
        &self,
        request: Request<Streaming<RaftRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let this = self.clone();
        Ok(Response::new(in_turn(
            request.into_inner(),
            move |request| {
                let this = this.clone();
                async move { this.append_one(&request).await }
            },
        )))
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc = self.decode(request.get_ref())?;
        self.guard(|view, limits| guard::check_vote(&rpc, view, limits))?;
        let turn = self.turn().await;
        let result = self.raft.vote(rpc).await;
        if matches!(&result, Ok(r) if r.vote_granted) {
            // As in Raft: granting a vote restarts the election timer.
            self.leader_contact();
        }
        drop(turn);
        reply(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let rpc = self.decode(request.get_ref())?;
        self.guard(|view, limits| guard::check_snapshot(&rpc, view, limits))?;
        self.snapshots
            .admit(&rpc, &self.limits)
            .map_err(|why| self.refused(&why))?;
        let term = rpc.vote.leader_id.term;
        let result = match &self.receiver {
            Some(receiver) => receiver
                .receive(&self.raft, rpc)
                .await
                .map_err(|e| match e {
                    NotTaken::Bad { .. } => self.refused(&Refused::Malformed(e.to_string())),
                    NotTaken::Local { .. } => {
                        tracing::warn!(node = self.id, "{e}");
                        Status::internal(e.to_string())
                    }
                })?,
            None => self.raft.install_snapshot(rpc).await,
        };
        if matches!(&result, Ok(r) if r.vote.leader_id.term <= term) {
            self.leader_contact();
        }
        reply(&result)
    }

    async fn pre_vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req: PreVoteRequest = self.decode(request.get_ref())?;
        let Some(election) = &self.election else {
            return Err(Status::unimplemented("this node runs no pre-vote"));
        };
        if req.candidate == self.id {
            return Err(self.refused(&Refused::FromMyself(req.candidate)));
        }
        reply(&election.answer(&req))
    }

    /// Answers from this node's own configuration, and refuses a leader that
    /// expects another node or cluster here, so it never adds a wrong member.
    async fn probe(
        &self,
        request: Request<nines_proto::ProbeRequest>,
    ) -> Result<Response<nines_proto::ProbeReply>, Status> {
        let req = request.get_ref();
        self.addressed(req.target, req.cluster_id)?;
        Ok(Response::new(nines_proto::ProbeReply {
            id: self.id,
            cluster_id: self.cluster_id,
        }))
    }

    async fn read_index(
        &self,
        request: Request<nines_proto::ReadIndexRequest>,
    ) -> Result<Response<nines_proto::ReadIndexReply>, Status> {
        self.answer_ask(request.get_ref()).await.map(Response::new)
    }

    type ReadIndexStreamStream = mpsc::Receiver<Result<nines_proto::ReadIndexReply, Status>>;

    /// Asks in turn, each answered before the next is read; the first
    /// refusal ends the stream with its status (`append_stream`'s rules).
    async fn read_index_stream(
        &self,
        request: Request<Streaming<nines_proto::ReadIndexRequest>>,
    ) -> Result<Response<Self::ReadIndexStreamStream>, Status> {
        let this = self.clone();
        Ok(Response::new(in_turn(
            request.into_inner(),
            move |request| {
                let this = this.clone();
                async move { this.answer_ask(&request).await }
            },
        )))
    }

    type VoteCheckStreamStream = mpsc::Receiver<Result<nines_proto::VoteCheckReply, Status>>;

    /// A leader's vote checks (`vote_check.rs`), answered in turn.
    async fn vote_check_stream(
        &self,
        request: Request<Streaming<nines_proto::VoteCheckRequest>>,
    ) -> Result<Response<Self::VoteCheckStreamStream>, Status> {
        if self.vouching.is_none() {
            return Err(Status::unimplemented("this node answers no vote checks"));
        }
        let this = self.clone();
        Ok(Response::new(in_turn(
            request.into_inner(),
            move |request| {
                let this = this.clone();
                async move { this.answer_check(&request) }
            },
        )))
    }
}

/// Answers a stream's requests in turn, each before the next is read; the
/// first refusal is sent as the stream's status and ends it, as a unary
/// call would have answered it. The task ends with the stream.
fn in_turn<Q, R, F, Fut>(mut inbound: Streaming<Q>, answer: F) -> mpsc::Receiver<Result<R, Status>>
where
    Q: Send + 'static,
    R: Send + 'static,
    F: Fn(Q) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<R, Status>> + Send,
{
    let (mut replies, stream) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let reply = match inbound.message().await {
                Ok(Some(request)) => answer(request).await,
                Ok(None) => return,
                Err(status) => Err(status),
            };
            let last = reply.is_err();
            if replies.send(reply).await.is_err() || last {
                return;
            }
        }
    });
    stream
}

impl RaftService {
    /// A leader's vote check: this node's saved vote, read now. Only a
    /// member of this cluster may ask.
    fn answer_check(
        &self,
        req: &nines_proto::VoteCheckRequest,
    ) -> Result<nines_proto::VoteCheckReply, Status> {
        self.addressed(req.target, req.cluster_id)?;
        if req.from == self.id {
            return Err(self.refused(&Refused::FromMyself(req.from)));
        }
        let member = {
            let metrics = self.raft.server_metrics();
            let m = metrics.borrow();
            m.membership_config
                .membership()
                .get_node(&req.from)
                .is_some()
        };
        if !member {
            return Err(self.refused(&Refused::NotMember(req.from)));
        }
        let Some(vouching) = &self.vouching else {
            return Err(Status::unimplemented("this node answers no vote checks"));
        };
        Ok(match vouching.log.saved_vote() {
            Some(v) => nines_proto::VoteCheckReply {
                term: v.leader_id.term,
                leader: v.leader_id.node_id,
                committed: v.committed,
            },
            None => nines_proto::VoteCheckReply::default(),
        })
    }

    /// A follower's read index request, answered from this node's own
    /// leadership check (shared with its clients' reads). Only members of
    /// this cluster may ask: the answer is the leader's commit index.
    async fn answer_ask(
        &self,
        req: &nines_proto::ReadIndexRequest,
    ) -> Result<nines_proto::ReadIndexReply, Status> {
        self.addressed(req.target, req.cluster_id)?;
        // One borrow of the metrics for both; dropped before any await.
        let (member, vouched) = {
            let metrics = self.raft.server_metrics();
            let m = metrics.borrow();
            let member = m
                .membership_config
                .membership()
                .get_node(&req.from)
                .is_some();
            (member, self.vouched(req, &m))
        };
        if req.from == self.id {
            return Err(self.refused(&Refused::FromMyself(req.from)));
        }
        if !member {
            return Err(self.refused(&Refused::NotMember(req.from)));
        }
        let Some(reads) = &self.reads else {
            return Err(Status::unimplemented(
                "this node answers no read index requests",
            ));
        };
        Counters::inc(&self.counters.read_index_answered);
        let barrier = match vouched {
            Some(index) => {
                Counters::inc(&self.counters.read_index_vouched);
                crate::read_barrier::Barrier::ReadIndex(index)
            }
            None => reads.check_local().await,
        };
        Ok(crate::read_index::reply_of(&barrier))
    }
}
