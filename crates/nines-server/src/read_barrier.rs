//! Linearizable reads: one leadership check (a heartbeat round to a quorum)
//! serves every read that arrived before it started, so concurrent reads
//! share the round trip instead of each paying for one.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nines_types::{Node, NodeId, Raft};
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::metrics::Counters;
use crate::observe::{mono_ms, say, View};

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

#[derive(Clone)]
pub struct ReadBarrier {
    raft: Raft,
    timeout: Duration,
    pending: Arc<Mutex<Pending>>,
    counters: Arc<Counters>,
}

impl ReadBarrier {
    pub fn new(raft: Raft, timeout: Duration, counters: Arc<Counters>) -> Self {
        Self {
            raft,
            timeout,
            pending: Arc::default(),
            counters,
        }
    }

    pub async fn check(&self) -> Barrier {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.waiters.push(tx);
            !std::mem::replace(&mut pending.running, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.run().await });
        }
        rx.await.unwrap_or(Barrier::ShuttingDown)
    }

    async fn run(&self) {
        loop {
            // Every waiter taken here arrived before this round starts: the
            // property that makes sharing the round safe.
            let batch = {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                if pending.waiters.is_empty() {
                    pending.running = false;
                    return;
                }
                std::mem::take(&mut pending.waiters)
            };
            let outcome = self.round().await;
            for waiter in batch {
                let _ = waiter.send(outcome.clone());
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
