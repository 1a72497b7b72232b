//! A follower's linearizable read asks the leader for a read index over the
//! peer port; the leader answers from its own read barrier. Both sides of
//! that exchange live here.

use std::time::Duration;

use nines_proto::raft_client::RaftClient;
use nines_proto::{ReadIndexOutcome, ReadIndexReply, ReadIndexRequest};
use nines_types::{Node, NodeId};

use crate::read_barrier::{Asker, Barrier};

/// Asks `leader` for a read index. Any failure to get an answer sends the
/// reads to the leader whole (the path every read took before), so a
/// broken ask costs a forward, never a wrong read.
pub async fn ask(asker: &Asker, leader_id: NodeId, leader: &Node, timeout: Duration) -> Barrier {
    let forward = || Barrier::NotLeader(Some(leader_id), Some(leader.clone()));
    let Ok(channel) = asker.pool.peer(&leader.raft_addr) else {
        return forward();
    };
    let mut request = tonic::Request::new(ReadIndexRequest {
        target: leader_id,
        cluster_id: asker.cluster_id,
        from: asker.id,
    });
    request.set_timeout(timeout);
    let reply = tokio::time::timeout(timeout, RaftClient::new(channel).read_index(request)).await;
    match reply {
        Err(_) => Barrier::Timeout,
        Ok(Err(_)) => forward(),
        Ok(Ok(reply)) => barrier_of(&reply.into_inner()).unwrap_or_else(forward),
    }
}

/// The barrier a leader's reply stands for; None for a reply that names no
/// usable outcome (a newer peer's, say): the caller forwards instead.
fn barrier_of(reply: &ReadIndexReply) -> Option<Barrier> {
    Some(match ReadIndexOutcome::try_from(reply.outcome).ok()? {
        ReadIndexOutcome::ReadIndexOk => Barrier::ReadIndex(reply.index),
        // The reads go to whoever the leader named, through the normal
        // forward path (which finds that member's address itself).
        ReadIndexOutcome::ReadIndexNotLeader => return None,
        ReadIndexOutcome::ReadIndexQuorumLost => Barrier::QuorumLost,
        ReadIndexOutcome::ReadIndexTimeout => Barrier::Timeout,
        ReadIndexOutcome::ReadIndexShuttingDown => Barrier::ShuttingDown,
    })
}

/// The leader's reply for a barrier of its own.
pub fn reply_of(barrier: &Barrier) -> ReadIndexReply {
    let (outcome, index, leader_id) = match barrier {
        Barrier::ReadIndex(index) => (ReadIndexOutcome::ReadIndexOk, *index, 0),
        Barrier::NotLeader(id, _) => (ReadIndexOutcome::ReadIndexNotLeader, 0, id.unwrap_or(0)),
        Barrier::QuorumLost => (ReadIndexOutcome::ReadIndexQuorumLost, 0, 0),
        Barrier::Timeout => (ReadIndexOutcome::ReadIndexTimeout, 0, 0),
        Barrier::ShuttingDown => (ReadIndexOutcome::ReadIndexShuttingDown, 0, 0),
    };
    ReadIndexReply {
        outcome: outcome as i32,
        index,
        leader_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_and_unknown_outcomes_forward() {
        for barrier in [
            Barrier::ReadIndex(42),
            Barrier::QuorumLost,
            Barrier::Timeout,
            Barrier::ShuttingDown,
        ] {
            let back = barrier_of(&reply_of(&barrier)).expect("known outcome");
            assert_eq!(format!("{back:?}"), format!("{barrier:?}"));
        }
        let not_leader = reply_of(&Barrier::NotLeader(Some(3), None));
        assert_eq!(not_leader.leader_id, 3);
        assert!(barrier_of(&not_leader).is_none());
        let unknown = ReadIndexReply {
            outcome: 99,
            index: 7,
            leader_id: 0,
        };
        assert!(
            barrier_of(&unknown).is_none(),
            "an unknown outcome must not be read as OK"
        );
    }
}
