//! Linearizable reads: one leadership check (a heartbeat round to a quorum)
//! serves every read that arrived before it started, so concurrent reads
//! share the round trip instead of each paying for one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nines_types::{Node, NodeId, Raft};
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::oneshot;

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
}

impl ReadBarrier {
    pub fn new(raft: Raft, timeout: Duration) -> Self {
        Self {
            raft,
            timeout,
            pending: Arc::default(),
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

    async fn round(&self) -> Barrier {
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
