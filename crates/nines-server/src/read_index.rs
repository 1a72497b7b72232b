//! A follower's linearizable read asks the leader for a read index over the
//! peer port; the leader answers from its own read barrier. Both sides of
//! that exchange live here.
//!
//! An ask offers the asker's saved vote, read after its batch of reads
//! arrived. When that vote names the leader in the leader's own term, the
//! leader's saved vote is still its own in that term, and the two of them
//! are a quorum of every voter set, the ask itself is the quorum's
//! confirmation a heartbeat round would get: votes only move forward and
//! are saved before any grant is sent, so no leader of a later term can
//! have been elected before both reads of the votes, which came after the
//! reads arrived. The leader then answers with its applied index at once,
//! provided it has applied an entry of its own term (so everything
//! committed before it led is applied too); every write acknowledged to a
//! client was applied on the leader first. In a three-member cluster this
//! spares the leader a round per follower batch (Raft thesis 6.4 asks only
//! that a quorum confirm leadership after the read arrived).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nines_proto::{ReadIndexOutcome, ReadIndexReply, ReadIndexRequest};
use nines_types::{LogId, Node, NodeId, Vote};
use openraft::ServerState;

use crate::read_barrier::{Asker, Barrier};

/// Asks `leader` for a read index. A failed ask sends the reads to the
/// leader whole (the path every read took before), so a broken ask costs a
/// forward, never a wrong read; one not answered within `timeout` fails
/// the reads with a timeout instead (the client retries).
pub async fn ask(asker: &Asker, leader_id: NodeId, leader: &Node, timeout: Duration) -> Barrier {
    let forward = || Barrier::NotLeader(Some(leader_id), Some(leader.clone()));
    let Ok(channel) = asker.pool.peer(&leader.raft_addr) else {
        return forward();
    };
    // Read now, after the batch was taken: see the module doc.
    let (vote_term, vote_leader) = match asker.log.saved_vote() {
        Some(v) if v.leader_id.node_id == leader_id => (v.leader_id.term, leader_id),
        _ => (0, 0),
    };
    let request = ReadIndexRequest {
        target: leader_id,
        cluster_id: asker.cluster_id,
        from: asker.id,
        vote_term,
        vote_leader,
    };
    let exchange = asker.streams.exchange(&leader.raft_addr, channel, request);
    let reply = tokio::time::timeout(timeout, exchange).await;
    match reply {
        Err(_) => Barrier::Timeout,
        Ok(Err(_)) => forward(),
        Ok(Ok(reply)) => barrier_of(&reply).unwrap_or_else(forward),
    }
}

/// The barrier a leader's reply stands for; None for a reply that names no
/// usable outcome (a newer peer's, say): the caller forwards instead.
fn barrier_of(reply: &ReadIndexReply) -> Option<Barrier> {
    Some(match ReadIndexOutcome::try_from(reply.outcome).ok()? {
        ReadIndexOutcome::ReadIndexOk => Barrier::ReadIndex(reply.index),
        // The reads go whole to the member asked, which forwards them to
        // its own leader (an extra hop while leadership moves); the
        // leader the reply names is not used.
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

/// The highest commit index this node has sent any follower (an append's
/// `leader_commit`), recorded before the append goes out. openraft tells
/// followers of a commit before it saves the commit here and long before
/// its own state machine applies it, so a follower may apply (and serve
/// reads from) entries its leader has not applied yet: a read index must
/// cover what followers were told, or a read on one follower could miss
/// what a read on another, finished before it started, returned.
#[derive(Clone, Default)]
pub struct CommitTold(Arc<AtomicU64>);

impl CommitTold {
    pub fn record(&self, index: u64) {
        self.0.fetch_max(index, Ordering::SeqCst);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a leader knows of itself, read after the reads or the ask that
/// its read index is for arrived: the base of a vouched answer here and of
/// a vote check (`vote_check.rs`).
pub struct Own<'a> {
    pub me: NodeId,
    /// What openraft last reported: its state and vote.
    pub state: ServerState,
    pub reported: Vote,
    /// This node's saved vote.
    pub saved: Option<Vote>,
    /// The voter sets of the membership in effect (two while joint).
    pub voters: &'a [BTreeSet<NodeId>],
    pub applied: Option<LogId>,
    /// The highest commit index saved or sent to a follower ([`CommitTold`]).
    pub committed: u64,
}

impl Own<'_> {
    /// This leader's term and read index, or None unless it is a settled
    /// leader (its committed saved vote, the one openraft reports) that has
    /// applied an entry of its own term (so everything committed before it
    /// led is applied too).
    pub fn read_index(&self) -> Option<(u64, u64)> {
        let saved = self.saved?;
        let term = saved.leader_id.term;
        let mine = saved.committed && saved.leader_id.node_id == self.me;
        let leading = self.state == ServerState::Leader && self.reported == saved;
        let applied = self.applied?;
        let own_term = applied.leader_id.term == term && applied.leader_id.node_id == self.me;
        // Not the applied index alone: a follower may have applied further.
        (mine && leading && own_term).then_some((term, applied.index.max(self.committed)))
    }
}

/// Where a leader reads [`Own`] from.
#[derive(Clone)]
pub struct ReadState {
    pub log: nines_log::LogStore,
    pub reader: nines_state::StateReader,
    pub commit_told: CommitTold,
}

impl ReadState {
    /// [`Own`] as of now, with `m` the server metrics the caller borrowed.
    pub fn own<'a>(
        &self,
        me: NodeId,
        m: &'a openraft::metrics::RaftServerMetrics<NodeId, Node>,
    ) -> Own<'a> {
        Own {
            me,
            state: m.state,
            reported: m.vote,
            saved: self.log.saved_vote(),
            voters: m.membership_config.membership().get_joint_config(),
            applied: self.reader.last_applied(),
            committed: self
                .log
                .committed_index()
                .unwrap_or(0)
                .max(self.commit_told.get()),
        }
    }
}

/// What a leader knows when an ask offers the asker's vote.
pub struct Vouch<'a> {
    /// Read after the ask arrived.
    pub own: Own<'a>,
    pub asker: NodeId,
    /// The asker's saved vote: its term and the node it names.
    pub offered_term: u64,
    pub offered_leader: NodeId,
}

/// The read index an ask's vote earns without a heartbeat round, or None
/// when the leader must run one (see the module doc for why this is safe).
pub fn vouched_index(v: &Vouch<'_>) -> Option<u64> {
    let (term, index) = v.own.read_index()?;
    let me = v.own.me;
    let offered = v.offered_term == term && v.offered_leader == me && v.asker != me;
    let quorum = crate::election::has_quorum(v.own.voters, &BTreeSet::from([me, v.asker]));
    (offered && quorum).then_some(index)
}

/// Votes and voter sets for the tests here and in `vote_check.rs`.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) fn vote(term: u64, node: NodeId, committed: bool) -> Vote {
        let mut v = Vote::new(term, node);
        if committed {
            v.commit();
        }
        v
    }

    pub(crate) fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{set, vote};
    use super::*;
    use openraft::CommittedLeaderId;

    /// Leader 1 in term 5 with entry 40 of its term applied.
    fn base_own(voters: &[BTreeSet<NodeId>]) -> Own<'_> {
        Own {
            me: 1,
            saved: Some(vote(5, 1, true)),
            state: ServerState::Leader,
            reported: vote(5, 1, true),
            voters,
            applied: Some(LogId::new(CommittedLeaderId::new(5, 1), 40)),
            committed: 40,
        }
    }

    /// That leader; 2 asks.
    fn base(voters: &[BTreeSet<NodeId>]) -> Vouch<'_> {
        Vouch {
            own: base_own(voters),
            asker: 2,
            offered_term: 5,
            offered_leader: 1,
        }
    }

    #[test]
    fn the_answer_covers_commits_followers_were_told_of_before_the_leader_applied_them() {
        let three = [set(&[1, 2, 3])];
        // Entries 41-45 are committed and sent to followers, who may have
        // applied them; the leader has applied up to 40 only.
        let v = Vouch {
            own: Own {
                committed: 45,
                ..base_own(&three)
            },
            ..base(&three)
        };
        assert_eq!(vouched_index(&v), Some(45));
        let told = CommitTold::default();
        told.record(45);
        told.record(43);
        assert_eq!(told.get(), 45, "never goes back");
    }

    #[test]
    fn a_quorum_of_leader_and_asker_in_the_leaders_term_earns_the_applied_index() {
        let three = [set(&[1, 2, 3])];
        assert_eq!(vouched_index(&base(&three)), Some(40));
        // Joint: a quorum of each set.
        let joint = [set(&[1, 2, 3]), set(&[1, 2, 4])];
        assert_eq!(vouched_index(&base(&joint)), Some(40));
    }

    #[test]
    fn anything_short_of_that_runs_a_round() {
        let three = [set(&[1, 2, 3])];
        let five = [set(&[1, 2, 3, 4, 5])];
        let four = [set(&[1, 2, 3, 4])];
        let joint = [set(&[1, 2, 3]), set(&[1, 4, 5])];
        let asker_learner = [set(&[1, 3, 4])];
        let cases: Vec<(&str, Vouch<'_>)> = vec![
            ("two of five", base(&five)),
            ("two of four", base(&four)),
            ("no quorum in the new set", base(&joint)),
            ("asker not a voter", base(&asker_learner)),
            ("no voters", base(&[])),
            (
                "older term offered",
                Vouch {
                    offered_term: 4,
                    ..base(&three)
                },
            ),
            (
                "newer term offered",
                Vouch {
                    offered_term: 6,
                    ..base(&three)
                },
            ),
            (
                "offered for another",
                Vouch {
                    offered_leader: 3,
                    ..base(&three)
                },
            ),
            (
                "no vote offered",
                Vouch {
                    offered_term: 0,
                    offered_leader: 0,
                    ..base(&three)
                },
            ),
            (
                "asked by itself",
                Vouch {
                    asker: 1,
                    ..base(&three)
                },
            ),
            (
                "saved vote moved on",
                Vouch {
                    own: Own {
                        saved: Some(vote(6, 3, false)),
                        ..base_own(&three)
                    },
                    ..base(&three)
                },
            ),
            (
                "saved vote not committed",
                Vouch {
                    own: Own {
                        saved: Some(vote(5, 1, false)),
                        ..base_own(&three)
                    },
                    ..base(&three)
                },
            ),
            (
                "no saved vote",
                Vouch {
                    own: Own {
                        saved: None,
                        ..base_own(&three)
                    },
                    ..base(&three)
                },
            ),
            (
                "not leading",
                Vouch {
                    own: Own {
                        state: ServerState::Follower,
                        ..base_own(&three)
                    },
                    ..base(&three)
                },
            ),
            (
                "report behind",
                Vouch {
                    own: Own {
                        reported: vote(4, 1, true),
                        ..base_own(&three)
                    },
                    ..base(&three)
                },
            ),
            (
                "nothing of its own term applied",
                Vouch {
                    own: Own {
                        applied: Some(LogId::new(CommittedLeaderId::new(4, 2), 39)),
                        ..base_own(&three)
                    },
                    ..base(&three)
                },
            ),
            (
                "nothing applied",
                Vouch {
                    own: Own {
                        applied: None,
                        ..base_own(&three)
                    },
                    ..base(&three)
                },
            ),
        ];
        for (what, v) in cases {
            assert_eq!(vouched_index(&v), None, "{what}");
        }
    }

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
