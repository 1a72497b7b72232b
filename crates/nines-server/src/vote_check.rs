//! The leader's leadership check for its own reads, without openraft's
//! heartbeat round: it asks its voters for their saved votes over
//! long-lived streams (`peer_stream.rs`) and is confirmed once the voters
//! that still name it in its term are a quorum with it.
//!
//! Why that is enough (the read index ask's argument, `read_index.rs`,
//! turned around): the batch of reads is taken, then each voter reads its
//! saved vote when the check arrives, and the leader reads its own after
//! the batch was taken. Votes only move forward and are saved before any
//! grant is sent, so if a quorum of every voter set still held this
//! leader's term at those reads, no leader of a later term was elected
//! before them, and so before the reads arrived: every write acknowledged
//! before then went through this leader, which applied it first, and no
//! later leader had committed anything. The index returned also covers
//! every commit this leader saved or told a follower of (`CommitTold`),
//! since a follower may apply and serve those before the leader applies
//! them.
//!
//! openraft's round sends each voter an append over a connection opened
//! for the check (a unary call) that its RaftCore must handle; a check is
//! one small message on a stream, answered by the peer service alone.
//! Anything short of a confirmation (a peer without the stream, a voter
//! that lags, a timeout) falls back to openraft's round.

use std::collections::BTreeSet;
use std::time::Duration;

use nines_proto::{VoteCheckReply, VoteCheckRequest};
use nines_types::{NodeId, Raft};

use crate::network::ChannelPool;
use crate::peer_stream::{Check, StreamPool};
use crate::read_index::{Own, ReadState};

/// What a leader needs to check its own leadership.
#[derive(Clone)]
pub struct Checker {
    pub id: NodeId,
    pub cluster_id: u64,
    /// Channels on the runtime the reads run on.
    pub pool: ChannelPool,
    /// Where this leader's saved vote, applied index and commits are read.
    pub state: ReadState,
    pub streams: StreamPool<Check>,
}

/// The leader's side of a check, read after the batch was taken.
#[derive(Debug, PartialEq, Eq)]
pub struct Standing {
    pub term: u64,
    pub voters: Vec<BTreeSet<NodeId>>,
    /// The other voters and their peer addresses.
    pub others: Vec<(NodeId, String)>,
    /// The read index a confirmation earns.
    pub index: u64,
}

/// The check's starting point, or None when this node must not (or cannot
/// usefully) check this way: not a settled leader, or nothing of its own
/// term applied yet (so older commits may still be unapplied).
pub fn standing(own: &Own<'_>, addr_of: impl Fn(NodeId) -> Option<String>) -> Option<Standing> {
    let (term, index) = own.read_index()?;
    if own.voters.is_empty() {
        return None;
    }
    let ids: BTreeSet<NodeId> = own.voters.iter().flatten().copied().collect();
    let mut others = Vec::new();
    for id in ids.into_iter().filter(|&id| id != own.me) {
        others.push((id, addr_of(id)?));
    }
    Some(Standing {
        term,
        voters: own.voters.to_vec(),
        others,
        index,
    })
}

/// Whether a voter's reply confirms `me` as the leader of `term`.
pub fn confirms(reply: &VoteCheckReply, term: u64, me: NodeId) -> bool {
    reply.term == term && reply.leader == me
}

impl Checker {
    /// The read index a quorum of saved votes confirms within `limit`, or
    /// None (the caller runs openraft's round instead).
    pub async fn confirm(&self, raft: &Raft, limit: Duration) -> Option<u64> {
        let standing = {
            let metrics = raft.server_metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let own = self.state.own(self.id, &m);
            standing(&own, |id| {
                membership.get_node(&id).map(|n| n.raft_addr.clone())
            })?
        };
        let mut confirmed = BTreeSet::from([self.id]);
        if crate::election::has_quorum(&standing.voters, &confirmed) {
            return Some(standing.index);
        }
        // Each exchange runs to its end on its own, so a reply that comes
        // after the quorum's puts its stream back instead of dropping it.
        let (tx, mut rx) = tokio::sync::mpsc::channel(standing.others.len().max(1));
        for (id, addr) in standing.others {
            let Ok(channel) = self.pool.peer(&addr) else {
                continue;
            };
            let request = VoteCheckRequest {
                target: id,
                cluster_id: self.cluster_id,
                from: self.id,
            };
            let streams = self.streams.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let exchange = streams.exchange(&addr, channel, request);
                let reply = tokio::time::timeout(limit, exchange).await;
                let _ = tx.send((id, reply)).await;
            });
        }
        drop(tx);
        while let Some((id, reply)) = rx.recv().await {
            if matches!(reply, Ok(Ok(r)) if confirms(&r, standing.term, self.id)) {
                confirmed.insert(id);
                if crate::election::has_quorum(&standing.voters, &confirmed) {
                    return Some(standing.index);
                }
            }
        }
        None
    }
}

#[cfg(test)]
#[path = "vote_check_tests.rs"]
mod tests;
