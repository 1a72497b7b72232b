//! Checks on every peer message before openraft sees it.
//!
//! openraft 0.9 trusts its peers: a vote with term 2^64-1 makes the next
//! election overflow and panic (and the vote is persisted, so every restart
//! panics again); an append or vote from a node outside the membership is
//! obeyed; a snapshot chunk at offset 2^40 becomes a 1 TiB sparse file.
//! Here a message must come from a member of the membership this node
//! knows (voter or learner, joint included; a candidate must be a voter),
//! its terms must be sane, and snapshot chunks must arrive without gaps and
//! within a total size. Without TLS a member can still be impersonated; that
//! is the transport's job (mutual TLS), not this module's.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nines_types::{NodeId, StoredMembership, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{EntryPayload, LogId, Membership, Vote};

/// How far past its own term a node lets a peer's term go in one message.
/// A node cut off from the cluster campaigns at most ~7 times a second
/// (150 ms minimum election timeout): 10^7 terms is over two weeks of that.
/// Far below u64::MAX, so term + 1 can never overflow in openraft.
pub const MAX_TERM_JUMP: u64 = 10_000_000;

/// Limits of the guard.
#[derive(Debug, Clone, Copy)]
pub struct GuardLimits {
    pub max_term_jump: u64,
    /// Largest snapshot a peer may stream to us.
    pub max_snapshot_bytes: u64,
    /// Most nodes a membership entry may name.
    pub max_members: usize,
}

impl Default for GuardLimits {
    fn default() -> Self {
        Self {
            max_term_jump: MAX_TERM_JUMP,
            // etcd's largest supported backend quota.
            max_snapshot_bytes: 8 << 30,
            max_members: crate::membership::MAX_MEMBERS,
        }
    }
}

impl GuardLimits {
    /// The limits of a member whose store may hold `quota` bytes of
    /// history: a snapshot holds that, plus framing, leases, sessions and
    /// auth. A fixed 8 GiB refused every snapshot of a store let grow past
    /// it, and a member that needed one never caught up.
    pub fn for_quota(quota: u64) -> Self {
        let fits = quota.saturating_mul(2).saturating_add(1 << 30);
        Self {
            max_snapshot_bytes: fits.max(Self::default().max_snapshot_bytes),
            ..Self::default()
        }
    }
}

/// Why a peer message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("node {0} is not a member of this cluster")]
    NotMember(NodeId),
    #[error("node {0} is not a voter and cannot campaign")]
    NotVoter(NodeId),
    #[error("message carries no sender")]
    NoSender,
    #[error("message claims to come from this node ({0})")]
    FromMyself(NodeId),
    #[error("term {term} is too far past this node's term {current}")]
    TermTooHigh { term: u64, current: u64 },
    #[error("{0}")]
    Malformed(String),
    #[error("snapshot chunk at offset {offset}, expected at most {expected}")]
    SnapshotGap { offset: u64, expected: u64 },
    #[error("snapshot of {size} bytes is over the {limit}-byte limit")]
    SnapshotTooLarge { size: u64, limit: u64 },
}

impl Refused {
    /// A short name for log rate limiting and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Refused::NotMember(_) => "not_member",
            Refused::NotVoter(_) => "not_voter",
            Refused::NoSender => "no_sender",
            Refused::FromMyself(_) => "from_myself",
            Refused::TermTooHigh { .. } => "term_too_high",
            Refused::Malformed(_) => "malformed",
            Refused::SnapshotGap { .. } => "snapshot_gap",
            Refused::SnapshotTooLarge { .. } => "snapshot_too_large",
        }
    }
}

/// What this node knows when a message arrives.
pub struct View<'a> {
    /// This node: no message may claim to come from it.
    pub me: NodeId,
    pub current_term: u64,
    pub membership: &'a StoredMembership,
    /// This node's vote: the leader it already follows.
    pub vote: &'a Vote<NodeId>,
    /// How long this node has heard from no leader.
    pub leaderless_for: Duration,
}

/// A node catching up replays old membership entries, and the current
/// leader need not be in them (a chaos run saw a re-added learner refuse
/// its leader for good, stuck at a config from before the leader rejoined).
/// So a leader outside the membership is still admitted when this node
/// already follows it (same committed vote), or when this node has heard
/// from no leader for this long and the message's term is not behind.
pub const LEADERLESS_ADMIT_AFTER: Duration = Duration::from_secs(2);

impl View<'_> {
    /// A node that has never been part of a cluster has no membership yet:
    /// it must accept the leader that adds it.
    fn uninitialized(&self) -> bool {
        self.membership.log_id().is_none() && self.membership.membership().voter_ids().count() == 0
    }

    /// May `vote`'s leader send us appends and snapshots?
    fn admits_leader(&self, from: NodeId, vote: &Vote<NodeId>) -> bool {
        self.uninitialized()
            || self.is_member(from)
            || vote == self.vote
            || (self.leaderless_for >= LEADERLESS_ADMIT_AFTER
                && vote.leader_id.term >= self.current_term)
    }

    fn is_member(&self, id: NodeId) -> bool {
        self.membership.membership().get_node(&id).is_some()
    }

    fn is_voter(&self, id: NodeId) -> bool {
        self.membership.membership().voter_ids().any(|v| v == id)
    }
}

/// The node a message claims to come from: a leader's or candidate's vote
/// names it. openraft never sends to itself, and a leader handed its own
/// vote back trips an assertion in its engine.
fn sender(vote: &Vote<NodeId>, view: &View) -> Result<NodeId, Refused> {
    let from = vote.leader_id.voted_for().ok_or(Refused::NoSender)?;
    if from == view.me {
        return Err(Refused::FromMyself(from));
    }
    Ok(from)
}

/// Only an elected leader replicates: its vote is committed (openraft
/// asserts this deep in its engine).
fn leader_vote(vote: &Vote<NodeId>) -> Result<(), Refused> {
    if !vote.committed {
        return Err(Refused::Malformed(
            "a leader's message must carry a committed vote".into(),
        ));
    }
    Ok(())
}

fn check_term(term: u64, view: &View, limits: &GuardLimits) -> Result<(), Refused> {
    if term > view.current_term.saturating_add(limits.max_term_jump) || term > u64::MAX / 2 {
        return Err(Refused::TermTooHigh {
            term,
            current: view.current_term,
        });
    }
    Ok(())
}

/// The highest log index a peer may name: 2^62 is 146,000 years of a
/// million entries a second, and far enough below u64::MAX that openraft's
/// `index + 1` (the next entry, a snapshot's purge point) cannot overflow.
pub const MAX_LOG_INDEX: u64 = 1 << 62;

/// Longest snapshot id taken from a peer; ours are under 90 bytes. The id
/// names a file, so it must fit in one.
pub const MAX_SNAPSHOT_ID: usize = 128;

fn check_log_id(what: &str, log_id: &Option<LogId<NodeId>>, vote_term: u64) -> Result<(), Refused> {
    if let Some(id) = log_id {
        if id.index > MAX_LOG_INDEX {
            return Err(Refused::Malformed(format!(
                "{what} {id} has an index past {MAX_LOG_INDEX}"
            )));
        }
        if id.leader_id.term > vote_term {
            return Err(Refused::Malformed(format!(
                "{what} {id} has a term above the sender's vote term {vote_term}"
            )));
        }
    }
    Ok(())
}

fn check_membership(
    m: &Membership<NodeId, nines_types::Node>,
    limits: &GuardLimits,
) -> Result<(), Refused> {
    let nodes: BTreeSet<NodeId> = m.nodes().map(|(id, _)| *id).collect();
    if nodes.len() > limits.max_members {
        return Err(Refused::Malformed(format!(
            "membership names {} nodes, over {}",
            nodes.len(),
            limits.max_members
        )));
    }
    let configs = m.get_joint_config();
    if configs.is_empty() || configs.len() > 2 {
        return Err(Refused::Malformed(format!(
            "membership has {} configs",
            configs.len()
        )));
    }
    for config in configs {
        if config.is_empty() {
            return Err(Refused::Malformed(
                "membership has an empty voter set".into(),
            ));
        }
        if let Some(id) = config.iter().find(|id| !nodes.contains(id)) {
            return Err(Refused::Malformed(format!(
                "membership voter {id} has no node address"
            )));
        }
    }
    Ok(())
}

/// What every leader message (append, snapshot chunk) must show: a sender
/// other than this node, a committed vote, a leader this node admits and a
/// sane term. Returns that term.
fn check_leader(vote: &Vote<NodeId>, view: &View, limits: &GuardLimits) -> Result<u64, Refused> {
    let from = sender(vote, view)?;
    leader_vote(vote)?;
    if !view.admits_leader(from, vote) {
        return Err(Refused::NotMember(from));
    }
    let term = vote.leader_id.term;
    check_term(term, view, limits)?;
    Ok(term)
}

/// The sender of an append must be a member; its entries must follow
/// `prev_log_id` one by one, with terms that never pass its vote's.
pub fn check_append(
    rpc: &AppendEntriesRequest<TypeConfig>,
    view: &View,
    limits: &GuardLimits,
) -> Result<(), Refused> {
    let term = check_leader(&rpc.vote, view, limits)?;
    check_log_id("prev_log_id", &rpc.prev_log_id, term)?;
    check_log_id("leader_commit", &rpc.leader_commit, term)?;
    let mut expected = match rpc.prev_log_id {
        Some(prev) => prev
            .index
            .checked_add(1)
            .ok_or_else(|| Refused::Malformed("prev_log_id index overflows".into()))?,
        None => 0,
    };
    let mut last_term = rpc.prev_log_id.map(|l| l.leader_id.term).unwrap_or(0);
    for entry in &rpc.entries {
        let id = entry.log_id;
        if id.index != expected {
            return Err(Refused::Malformed(format!(
                "entry index {} where {expected} was expected",
                id.index
            )));
        }
        if id.leader_id.term < last_term || id.leader_id.term > term {
            return Err(Refused::Malformed(format!(
                "entry {id} has a term out of order (previous {last_term}, vote {term})"
            )));
        }
        if let EntryPayload::Membership(m) = &entry.payload {
            check_membership(m, limits)?;
        }
        expected = expected
            .checked_add(1)
            .ok_or_else(|| Refused::Malformed("entry index overflows".into()))?;
        last_term = id.leader_id.term;
    }
    Ok(())
}

/// A candidate must be a voter of the membership this node knows, and a
/// vote request is never already committed.
pub fn check_vote(
    rpc: &VoteRequest<NodeId>,
    view: &View,
    limits: &GuardLimits,
) -> Result<(), Refused> {
    let from = sender(&rpc.vote, view)?;
    if rpc.vote.committed {
        return Err(Refused::Malformed(
            "a vote request cannot carry a committed vote".into(),
        ));
    }
    if !view.uninitialized() && !view.is_voter(from) {
        return Err(Refused::NotVoter(from));
    }
    let term = rpc.vote.leader_id.term;
    check_term(term, view, limits)?;
    check_log_id("last_log_id", &rpc.last_log_id, term)
}

/// The membership and term rules of a snapshot chunk (its offset is
/// checked against the stream by `SnapshotStreams`).
pub fn check_snapshot(
    rpc: &InstallSnapshotRequest<TypeConfig>,
    view: &View,
    limits: &GuardLimits,
) -> Result<(), Refused> {
    let term = check_leader(&rpc.vote, view, limits)?;
    let meta = &rpc.meta;
    check_snapshot_id(&meta.snapshot_id)?;
    check_log_id("snapshot last_log_id", &meta.last_log_id, term)?;
    let membership_at = meta.last_membership.log_id();
    check_log_id("snapshot membership log id", membership_at, term)?;
    // By index and term: log ids compare by leader first, and the leader
    // ids of two terms' leaders need not be ordered.
    let past = match (membership_at, &meta.last_log_id) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(m), Some(l)) => m.index > l.index || m.leader_id.term > l.leader_id.term,
    };
    if past {
        return Err(Refused::Malformed(format!(
            "snapshot membership log id {membership_at:?} is past its last log id {:?}",
            meta.last_log_id
        )));
    }
    check_membership(meta.last_membership.membership(), limits)
}

/// A snapshot id names a file here: short, and of `[A-Za-z0-9_-]` only.
fn check_snapshot_id(id: &str) -> Result<(), Refused> {
    let safe = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if id.is_empty() || id.len() > MAX_SNAPSHOT_ID || !id.bytes().all(safe) {
        return Err(Refused::Malformed(format!(
            "snapshot id of {} bytes is not 1 to {MAX_SNAPSHOT_ID} of [A-Za-z0-9_-]",
            id.len()
        )));
    }
    Ok(())
}

/// The snapshot stream being received: chunks must come without gaps (a
/// retried chunk may repeat earlier bytes), and the whole must stay under
/// the size limit, so no offset can grow a sparse file.
#[derive(Default)]
pub struct SnapshotStreams {
    current: Mutex<Option<(String, u64)>>,
}

impl SnapshotStreams {
    pub fn admit(
        &self,
        rpc: &InstallSnapshotRequest<TypeConfig>,
        limits: &GuardLimits,
    ) -> Result<(), Refused> {
        let len = rpc.data.len() as u64;
        let end = rpc
            .offset
            .checked_add(len)
            .ok_or(Refused::SnapshotTooLarge {
                size: u64::MAX,
                limit: limits.max_snapshot_bytes,
            })?;
        if end > limits.max_snapshot_bytes {
            return Err(Refused::SnapshotTooLarge {
                size: end,
                limit: limits.max_snapshot_bytes,
            });
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let id = &rpc.meta.snapshot_id;
        let received = match current.as_ref() {
            Some((stream, received)) if stream == id => *received,
            _ => 0,
        };
        if rpc.offset > received {
            return Err(Refused::SnapshotGap {
                offset: rpc.offset,
                expected: received,
            });
        }
        *current = if rpc.done {
            None
        } else {
            Some((id.clone(), received.max(end)))
        };
        Ok(())
    }
}

/// Says each kind of refusal once per interval, not once per message: a
/// misbehaving peer sends hundreds a second.
pub struct LogOnce {
    every: Duration,
    last: Mutex<HashMap<&'static str, Instant>>,
}

impl LogOnce {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::default(),
        }
    }

    /// True when `kind` was not said within the interval.
    pub fn should_say(&self, kind: &'static str) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match last.get(kind) {
            Some(t) if now.duration_since(*t) < self.every => false,
            _ => {
                last.insert(kind, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nines_types::Node;
    use openraft::CommittedLeaderId;

    /// A membership from before node 3 (re)joined: voters 1 and 2.
    fn old_config() -> StoredMembership {
        let nodes = [(1, Node::new("a:1", "")), (2, Node::new("b:2", ""))];
        StoredMembership::new(
            Some(LogId::new(CommittedLeaderId::new(1, 1), 10)),
            Membership::new(
                vec![BTreeSet::from([1, 2])],
                nodes
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>(),
            ),
        )
    }

    fn heartbeat(term: u64, from: NodeId) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, from),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        }
    }

    #[test]
    fn the_snapshot_limit_grows_with_the_quota() {
        assert_eq!(GuardLimits::for_quota(2 << 30).max_snapshot_bytes, 8 << 30);
        let big = GuardLimits::for_quota(16 << 30).max_snapshot_bytes;
        assert!(big >= 32 << 30, "{big}");
        assert_eq!(
            GuardLimits::for_quota(u64::MAX).max_snapshot_bytes,
            u64::MAX
        );
    }

    #[test]
    fn a_catching_up_node_admits_the_leader_it_follows_or_any_after_a_silence() {
        let membership = old_config();
        let following = Vote::new_committed(3, 3);
        let limits = GuardLimits::default();
        let view = |vote, leaderless_for| View {
            me: 2,
            current_term: 3,
            membership: &membership,
            vote,
            leaderless_for,
        };
        // The leader it already follows, though its replayed config lacks it.
        let v = view(&following, Duration::ZERO);
        assert_eq!(check_append(&heartbeat(3, 3), &v, &limits), Ok(()));
        // A stranger at the next term, while a leader is heard from: refused.
        assert_eq!(
            check_append(&heartbeat(4, 99), &v, &limits),
            Err(Refused::NotMember(99))
        );
        // After a silence, a leader of a term not behind is admitted.
        let other = Vote::new_committed(2, 1);
        let v = view(&other, LEADERLESS_ADMIT_AFTER);
        assert_eq!(check_append(&heartbeat(4, 3), &v, &limits), Ok(()));
        assert_eq!(
            check_append(&heartbeat(2, 3), &v, &limits),
            Err(Refused::NotMember(3))
        );
    }

    #[test]
    fn log_indexes_past_the_bound_are_refused() {
        let membership = old_config();
        let vote = Vote::new_committed(3, 1);
        let view = View {
            me: 2,
            current_term: 3,
            membership: &membership,
            vote: &vote,
            leaderless_for: Duration::ZERO,
        };
        let limits = GuardLimits::default();
        let at = |index| Some(LogId::new(CommittedLeaderId::new(3, 1), index));
        let mut append = heartbeat(3, 1);
        append.prev_log_id = at(MAX_LOG_INDEX);
        assert_eq!(check_append(&append, &view, &limits), Ok(()));
        append.prev_log_id = at(MAX_LOG_INDEX + 1);
        assert!(matches!(
            check_append(&append, &view, &limits),
            Err(Refused::Malformed(_))
        ));
        append.prev_log_id = None;
        append.leader_commit = at(u64::MAX);
        assert!(matches!(
            check_append(&append, &view, &limits),
            Err(Refused::Malformed(_))
        ));

        let snapshot = |index, id: &str| InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            meta: openraft::SnapshotMeta {
                last_log_id: at(index),
                last_membership: old_config(),
                snapshot_id: id.into(),
            },
            offset: 0,
            data: vec![],
            done: true,
        };
        assert_eq!(
            check_snapshot(&snapshot(20, "3-20-1-0"), &view, &limits),
            Ok(())
        );
        for bad in [
            snapshot(u64::MAX, "3-20-1-0"),
            // Its membership (at index 10) is past its last log id.
            snapshot(5, "3-5-1-0"),
            snapshot(20, "../../etc"),
            snapshot(20, ""),
            snapshot(20, &"9".repeat(MAX_SNAPSHOT_ID + 1)),
        ] {
            assert!(
                matches!(
                    check_snapshot(&bad, &view, &limits),
                    Err(Refused::Malformed(_))
                ),
                "{:?}",
                bad.meta
            );
        }
    }
}
