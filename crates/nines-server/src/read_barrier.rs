//! Linearizable reads: one leadership check (a heartbeat round to a quorum)
//! serves every read that arrived before it started, so concurrent reads
//! share the round trip instead of each paying for one.
//!
//! A follower does not forward the read: it asks the leader for a read
//! index (`read_index.rs`), one request per batch of its own reads, waits
//! until it has applied that far and serves the read from its own state
//! (Raft thesis 6.4, as etcd does). The leader answers those requests from
//! its local batch, next to its own clients' reads.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nines_types::{Node, NodeId, Raft};
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::metrics::Counters;
use crate::network::ChannelPool;
use crate::observe::{mono_ms, say, View};
use crate::read_index;

/// How long a vote check may take before openraft's round is tried: a
/// check that gets no quorum by then (voters down or paused) has the round
/// fail the same way, so this bounds only the extra wait.
const CHECK_LIMIT: Duration = Duration::from_millis(300);

/// A round this slow holds every linearizable read on the node: say so.
const SLOW_ROUND: Duration = Duration::from_secs(1);

/// The outcome of one leadership check, shared by a batch of readers.
#[derive(Debug, Clone)]
pub enum Barrier {
    /// Reads are linearizable once the state machine has applied this index.
    ReadIndex(u64),
    NotLeader(Option<NodeId>, Option<Node>),
    QuorumLost,
    Timeout,
    ShuttingDown,
}

#[derive(Default)]
struct Pending {
    running: bool,
    waiters: Vec<oneshot::Sender<Barrier>>,
}

/// Who answers a batch: this node's own leadership check, or the leader's.
#[derive(Clone, Copy)]
enum Source {
    Local,
    Leader,
}

/// How a follower reaches the leader for a read index.
#[derive(Clone)]
pub struct Asker {
    pub id: NodeId,
    pub cluster_id: u64,
    /// Channels on the runtime the asking reads run on.
    pub pool: ChannelPool,
    /// This node's saved vote, offered with each ask (`read_index.rs`).
    pub log: nines_log::LogStore,
    /// The open ask streams, by leader address.
    pub streams: crate::peer_stream::StreamPool<crate::peer_stream::Ask>,
}

#[derive(Clone)]
pub struct ReadBarrier {
    raft: Raft,
    timeout: Duration,
    local: Arc<Mutex<Pending>>,
    remote: Arc<Mutex<Pending>>,
    counters: Arc<Counters>,
    /// None: a follower's reads are forwarded whole to the leader.
    asker: Option<Asker>,
    /// None: the leader's own checks are openraft's heartbeat rounds.
    checker: Option<crate::vote_check::Checker>,
}

impl ReadBarrier {
    pub fn new(
        raft: Raft,
        timeout: Duration,
        counters: Arc<Counters>,
        asker: Option<Asker>,
    ) -> Self {
        Self {
            raft,
            timeout,
            local: Arc::default(),
            remote: Arc::default(),
            counters,
            asker,
            checker: None,
        }
    }

    pub fn with_checker(mut self, checker: crate::vote_check::Checker) -> Self {
        self.checker = Some(checker);
        self
    }

    /// The barrier for a client's read on this node: this node's own check
    /// when it leads, else a read index from the leader.
    pub async fn check(&self) -> Barrier {
        let source = match &self.asker {
            Some(asker) if self.known_leader() != Some(asker.id) => Source::Leader,
            _ => Source::Local,
        };
        self.join(source).await
    }

    /// This node's own leadership check only: what a follower's read index
    /// request is answered from (never passed on: no chains of asks).
    pub async fn check_local(&self) -> Barrier {
        self.join(Source::Local).await
    }

    fn known_leader(&self) -> Option<NodeId> {
        self.raft.server_metrics().borrow().current_leader
    }

    fn batch(&self, source: Source) -> &Mutex<Pending> {
        match source {
            Source::Local => &self.local,
            Source::Leader => &self.remote,
        }
    }

    async fn join(&self, source: Source) -> Barrier {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut pending = self.batch(source).lock().unwrap_or_else(|e| e.into_inner());
            pending.waiters.push(tx);
            !std::mem::replace(&mut pending.running, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.run(source).await });
        }
        rx.await.unwrap_or(Barrier::ShuttingDown)
    }

    async fn run(&self, source: Source) {
        loop {
            // An ask or a check costs messages to peers: let reads a round
            // or two behind share it (`gather.rs`). For the leader's own
            // checks, two alternating pairs of `nines bench --workload get
            // --clients 64 --connections 8` on fresh clusters: 39,143 and
            // 34,218 ops/s without, 42,137 and 38,925 with.
            let waiting = || {
                let pending = self.batch(source).lock();
                pending.unwrap_or_else(|e| e.into_inner()).waiters.len()
            };
            crate::gather::while_arriving(waiting, crate::gather::ROUNDS).await;
            // Every waiter taken here arrived before this round starts (and
            // so before the leader hears of it): the property that makes
            // sharing the round safe.
            let batch = {
                let mut pending = self.batch(source).lock().unwrap_or_else(|e| e.into_inner());
                if pending.waiters.is_empty() {
                    pending.running = false;
                    return;
                }
                std::mem::take(&mut pending.waiters)
            };
            let outcome = match source {
                Source::Local => self.round().await,
                Source::Leader => self.ask_leader().await,
            };
            for waiter in batch {
                let _ = waiter.send(outcome.clone());
            }
        }
    }

    /// A follower's round: the leader's read index, or (leader unknown to
    /// be elsewhere, or unreachable) what sends the reads there whole.
    async fn ask_leader(&self) -> Barrier {
        let Some(asker) = &self.asker else {
            return self.round().await;
        };
        let leader = {
            let metrics = self.raft.server_metrics();
            let m = metrics.borrow();
            m.current_leader.map(|id| {
                let node = m.membership_config.membership().get_node(&id).cloned();
                (id, node)
            })
        };
        match leader {
            None => Barrier::NotLeader(None, None),
            Some((id, _)) if id == asker.id => self.round().await,
            Some((id, None)) => Barrier::NotLeader(Some(id), None),
            Some((id, Some(node))) => {
                Counters::inc(&self.counters.read_index_asks);
                // A paused or cut-off leader never answers: give up once a
                // new leader is known and send the reads there.
                let outcome = tokio::select! {
                    outcome = read_index::ask(asker, id, &node, self.timeout) => outcome,
                    moved = self.leader_moved(id) => match moved {
                        // This node took over: its own check serves the batch.
                        Barrier::NotLeader(Some(new), _) if new == asker.id => self.round().await,
                        moved => moved,
                    },
                };
                if matches!(outcome, Barrier::NotLeader(..)) {
                    Counters::inc(&self.counters.read_index_ask_failures);
                }
                outcome
            }
        }
    }

    /// Resolves with the new leader once this node knows one other than `from`.
    async fn leader_moved(&self, from: NodeId) -> Barrier {
        let mut server = self.raft.server_metrics();
        loop {
            {
                let m = server.borrow_and_update();
                if let Some(id) = m.current_leader.filter(|&id| id != from) {
                    let node = m.membership_config.membership().get_node(&id).cloned();
                    return Barrier::NotLeader(Some(id), node);
                }
            }
            if server.changed().await.is_err() {
                return Barrier::ShuttingDown;
            }
        }
    }

    /// One round, counted and timed; slow or failed rounds are said once
    /// per interval with the node's view (a round per read batch would
    /// otherwise log hundreds of lines a second).
    async fn round(&self) -> Barrier {
        let c = &self.counters;
        Counters::inc(&c.read_rounds);
        c.read_round_started_ms.store(mono_ms(), Ordering::Relaxed);
        let started = Instant::now();
        let check = self.check_leadership();
        tokio::pin!(check);
        let outcome = tokio::select! {
            outcome = &mut check => outcome,
            _ = tokio::time::sleep_until(started + SLOW_ROUND) => {
                if let Some(suppressed) = say("read_round_slow") {
                    tracing::info!(
                        view = %View::of_raft(&self.raft),
                        suppressed,
                        "read barrier round in flight for {} ms: linearizable reads on this node wait for it",
                        started.elapsed().as_millis()
                    );
                }
                check.await
            }
        };
        c.read_round_started_ms.store(0, Ordering::Relaxed);
        let kind = match outcome {
            Barrier::Timeout => {
                Counters::inc(&c.read_round_timeouts);
                Some(("read_round_timeout", "timed out"))
            }
            Barrier::QuorumLost => {
                Counters::inc(&c.read_round_failures);
                Some(("read_round_quorum_lost", "lost its quorum"))
            }
            Barrier::ShuttingDown => {
                Counters::inc(&c.read_round_failures);
                None
            }
            Barrier::ReadIndex(_) | Barrier::NotLeader(..) => None,
        };
        let took = started.elapsed();
        if let Some((kind, what)) = kind {
            if let Some(suppressed) = say(kind) {
                tracing::warn!(
                    view = %View::of_raft(&self.raft),
                    suppressed,
                    "read barrier round {what} after {} ms: its reads fail",
                    took.as_millis()
                );
            }
        } else if took >= SLOW_ROUND {
            if let Some(suppressed) = say("read_round_slow_done") {
                tracing::info!(
                    view = %View::of_raft(&self.raft),
                    suppressed,
                    outcome = ?outcome,
                    "read barrier round took {} ms",
                    took.as_millis()
                );
            }
        }
        outcome
    }

    async fn check_leadership(&self) -> Barrier {
        if let Some(checker) = &self.checker {
            Counters::inc(&self.counters.read_vote_checks);
            if let Some(index) = checker
                .confirm(&self.raft, self.timeout.min(CHECK_LIMIT))
                .await
            {
                Counters::inc(&self.counters.read_vote_checks_confirmed);
                return Barrier::ReadIndex(index);
            }
        }
        match tokio::time::timeout(self.timeout, self.raft.get_read_log_id()).await {
            Err(_) => Barrier::Timeout,
            Ok(Ok((read_log_id, _applied))) => {
                Barrier::ReadIndex(read_log_id.map(|l| l.index).unwrap_or(0))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Barrier::NotLeader(f.leader_id, f.leader_node)
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Barrier::QuorumLost
            }
            Ok(Err(RaftError::Fatal(_))) => Barrier::ShuttingDown,
        }
    }
}
