//! Rules a leader applies before it asks openraft for a membership change,
//! so that no admin call can leave the cluster without a live quorum.
//!
//! Why they must hold *before* the change: openraft 0.9 refuses every further
//! change while the last membership entry is uncommitted (`InProgress`), and
//! a joint entry `[old, new]` commits only with a quorum of *both* sets.
//! Promoting a dead learner until the new set has no live quorum therefore
//! wedges membership for good: nothing commits the joint entry, nothing can
//! replace it, and a new leader needs votes from a quorum of both sets too.
//! A *committed* joint config (the leader died between the two steps) is
//! recoverable: any next change starts from its last set, so repeating the
//! change (or promoting/removing anything) moves on to a uniform config.
//!
//! The rules:
//! - add: the node answered a probe as that id of this cluster;
//! - promote: the learner is in sync, etcd-style: its matched index is within
//!   [`MAX_LEARNER_LAG`] entries of the leader's last log index and it
//!   answered a Raft RPC within [`live_window`];
//! - promote and remove: the live voters (the leader plus voters that
//!   answered within the window) are a quorum of every set the change goes
//!   through: the current last set and the target set.

use std::collections::BTreeSet;
use std::time::Duration;

use nines_types::{Node, NodeId};
use openraft::{LogId, Membership};

/// Largest distance between a learner's matched index and the leader's last
/// log index for a promotion (etcd requires 90% of the committed index;
/// a fixed distance does not grow with the log).
pub const MAX_LEARNER_LAG: u64 = 1_000;

/// How recently a peer must have answered to count as live: five maximal
/// election timeouts (1.5 s with the defaults), at least one second. Several
/// heartbeats fit in it, so a healthy peer never drops out.
pub fn live_window(election_timeout_max_ms: u64) -> Duration {
    Duration::from_millis(election_timeout_max_ms.saturating_mul(5).max(1_000))
}

/// Addresses arrive from admin calls: bound them before they reach a URI.
const MAX_ADDR_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("node {id} at {addr} did not answer a probe: {reason}")]
    ProbeFailed {
        id: NodeId,
        addr: String,
        reason: String,
    },
    #[error("node {0} is already a voter")]
    AlreadyVoter(NodeId),
    #[error("node {id} is already a member at {addr}; remove it before adding it elsewhere")]
    OtherAddress { id: NodeId, addr: String },
    #[error("node {0} is not a learner of this cluster")]
    NotLearner(NodeId),
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    #[error("cannot remove the last voter")]
    LastVoter,
    #[error("learner {id} is not in sync with the leader (matched {matched}, leader {leader}; at most {MAX_LEARNER_LAG} entries behind)")]
    NotInSync {
        id: NodeId,
        matched: String,
        leader: u64,
    },
    #[error("learner {id} is not in sync with the leader: it has not answered for {since} (window {window:?})")]
    Silent {
        id: NodeId,
        since: String,
        window: Duration,
    },
    #[error("the change would lose the quorum: voters {config:?} would have {live} live ({live_ids:?}), need {quorum}")]
    QuorumAtRisk {
        config: Vec<NodeId>,
        live: usize,
        live_ids: Vec<NodeId>,
        quorum: usize,
    },
}

/// What an add-learner call should do.
#[derive(Debug, PartialEq, Eq)]
pub enum AddLearner {
    /// Already a learner at that address: answer success (a joining node
    /// retries after a lost response).
    AlreadyPresent,
    New,
}

/// What a remove call should do.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    /// Change voters to this set.
    Voter(BTreeSet<NodeId>),
    Learner,
}

pub fn validate_member(id: NodeId, raft_addr: &str, api_addr: &str) -> Result<(), MembershipError> {
    if id == 0 || raft_addr.is_empty() {
        return Err(MembershipError::InvalidRequest(
            "a member needs a non-zero id and a peer address".into(),
        ));
    }
    check_addr("peer", raft_addr)?;
    if !api_addr.is_empty() {
        check_addr("client", api_addr)?;
    }
    Ok(())
}

/// `host:port` only: no scheme, path or credentials.
fn check_addr(what: &str, addr: &str) -> Result<(), MembershipError> {
    let bad = |why: &str| {
        let shown: String = addr.chars().take(64).collect();
        Err(MembershipError::InvalidRequest(format!(
            "{what} address {shown:?} {why}; expected HOST:PORT"
        )))
    };
    if addr.len() > MAX_ADDR_BYTES {
        return bad("is too long");
    }
    if addr
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '@' | '?' | '#'))
    {
        return bad("has characters not allowed in an address");
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => bad("has no valid port"),
    }
}

pub fn check_add_learner(
    membership: &Membership<NodeId, Node>,
    id: NodeId,
    node: &Node,
) -> Result<AddLearner, MembershipError> {
    if membership.voter_ids().any(|v| v == id) {
        return Err(MembershipError::AlreadyVoter(id));
    }
    match membership.get_node(&id) {
        Some(existing) if existing == node => Ok(AddLearner::AlreadyPresent),
        // openraft would keep the old address and report success.
        Some(existing) => Err(MembershipError::OtherAddress {
            id,
            addr: existing.raft_addr.clone(),
        }),
        None => Ok(AddLearner::New),
    }
}

/// The reply must come from the node we meant, in our cluster. A nines node
/// refuses a mismatch itself; this also catches anything else answering.
pub fn check_probe_reply(
    id: NodeId,
    addr: &str,
    cluster_id: u64,
    reply_id: NodeId,
    reply_cluster_id: u64,
) -> Result<(), MembershipError> {
    if reply_id == id && reply_cluster_id == cluster_id {
        return Ok(());
    }
    Err(MembershipError::ProbeFailed {
        id,
        addr: addr.to_string(),
        reason: format!("it says it is node {reply_id} of cluster {reply_cluster_id:x}"),
    })
}

/// The voter set after promoting learner `id`.
pub fn promote_goal(
    membership: &Membership<NodeId, Node>,
    id: NodeId,
) -> Result<BTreeSet<NodeId>, MembershipError> {
    if membership.get_node(&id).is_none() || membership.voter_ids().any(|v| v == id) {
        return Err(MembershipError::NotLearner(id));
    }
    let mut goal = last_config(membership);
    goal.insert(id);
    Ok(goal)
}

pub fn removal(
    membership: &Membership<NodeId, Node>,
    id: NodeId,
) -> Result<Removal, MembershipError> {
    let last = last_config(membership);
    if last.contains(&id) {
        if last.len() == 1 {
            return Err(MembershipError::LastVoter);
        }
        let mut goal = last;
        goal.remove(&id);
        return Ok(Removal::Voter(goal));
    }
    if membership.get_node(&id).is_some() {
        // A voter of only the old half of a committed joint config is still
        // a voter to openraft; removing it as a node would fail validation.
        if membership.voter_ids().any(|v| v == id) {
            return Ok(Removal::Voter(last));
        }
        return Ok(Removal::Learner);
    }
    Err(MembershipError::NotMember(id))
}

/// The set a next change starts from (the new half of a joint config).
fn last_config(membership: &Membership<NodeId, Node>) -> BTreeSet<NodeId> {
    membership
        .get_joint_config()
        .last()
        .cloned()
        .unwrap_or_default()
}

/// etcd's "learner is in sync" rule, with a distance instead of a ratio, plus
/// recent contact: a learner that stopped answering is not promoted however
/// far it got.
pub fn check_in_sync(
    id: NodeId,
    matched: Option<LogId<NodeId>>,
    leader_last_index: Option<u64>,
    since_answer: Option<Duration>,
    window: Duration,
) -> Result<(), MembershipError> {
    let leader = leader_last_index.unwrap_or(0);
    let matched_index = matched.map(|l| l.index);
    let lagging = match matched_index {
        None => true,
        Some(m) => leader.saturating_sub(m) > MAX_LEARNER_LAG,
    };
    if lagging {
        return Err(MembershipError::NotInSync {
            id,
            matched: matched_index.map_or("nothing".into(), |m| m.to_string()),
            leader,
        });
    }
    match since_answer {
        Some(since) if since <= window => Ok(()),
        since => Err(MembershipError::Silent {
            id,
            since: since.map_or("ever".into(), |s| format!("{s:?}")),
            window,
        }),
    }
}

/// Refuses a change to voters `goal` unless the live nodes are a quorum of
/// the current last set (the old half of the joint entry) and of `goal`.
pub fn check_live_quorum(
    membership: &Membership<NodeId, Node>,
    goal: &BTreeSet<NodeId>,
    live: &BTreeSet<NodeId>,
) -> Result<(), MembershipError> {
    for config in [&last_config(membership), goal] {
        let live_ids: Vec<NodeId> = config.intersection(live).copied().collect();
        let quorum = config.len() / 2 + 1;
        if live_ids.len() < quorum {
            return Err(MembershipError::QuorumAtRisk {
                config: config.iter().copied().collect(),
                live: live_ids.len(),
                live_ids,
                quorum,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::CommittedLeaderId;

    use super::*;

    fn node(id: NodeId) -> Node {
        Node::new(format!("127.0.0.1:{}", 7000 + id), "")
    }

    /// Voter sets (one, or two for a joint config) plus learners.
    fn membership(configs: &[&[NodeId]], learners: &[NodeId]) -> Membership<NodeId, Node> {
        let configs: Vec<BTreeSet<NodeId>> = configs
            .iter()
            .map(|c| c.iter().copied().collect())
            .collect();
        let ids = configs.iter().flatten().chain(learners).copied();
        let nodes: BTreeMap<NodeId, Node> = ids.map(|id| (id, node(id))).collect();
        Membership::new(configs, nodes)
    }

    fn ids(v: &[NodeId]) -> BTreeSet<NodeId> {
        v.iter().copied().collect()
    }

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    const WINDOW: Duration = Duration::from_millis(1_500);

    #[test]
    fn live_window_is_five_elections_at_least_a_second() {
        assert_eq!(live_window(300), Duration::from_millis(1_500));
        assert_eq!(live_window(50), Duration::from_secs(1));
        assert_eq!(live_window(u64::MAX), Duration::from_millis(u64::MAX));
    }

    #[test]
    fn member_addresses_are_host_and_port() {
        assert!(validate_member(4, "127.0.0.1:1", "").is_ok());
        assert!(validate_member(4, "node-4.example:2380", "[::1]:2379").is_ok());
        for (id, raft, api) in [
            (0, "127.0.0.1:1", ""),
            (4, "", ""),
            (4, "127.0.0.1", ""),
            (4, "127.0.0.1:0", ""),
            (4, "127.0.0.1:99999", ""),
            (4, ":80", ""),
            (4, "http://a:1", ""),
            (4, "a:1/path", ""),
            (4, "user@a:1", ""),
            (4, "a :1", ""),
            (4, "a:1", "b"),
        ] {
            let err = validate_member(id, raft, api).unwrap_err();
            assert!(
                matches!(err, MembershipError::InvalidRequest(_)),
                "{raft:?}"
            );
        }
        let long = format!("{}:1", "a".repeat(300));
        assert!(validate_member(4, &long, "").is_err());
    }

    #[test]
    fn add_learner_is_idempotent_only_for_the_same_address() {
        let m = membership(&[&[1, 2, 3]], &[4]);
        assert_eq!(check_add_learner(&m, 5, &node(5)), Ok(AddLearner::New));
        assert_eq!(
            check_add_learner(&m, 4, &node(4)),
            Ok(AddLearner::AlreadyPresent)
        );
        let moved = Node::new("127.0.0.1:1", "");
        assert!(matches!(
            check_add_learner(&m, 4, &moved),
            Err(MembershipError::OtherAddress { id: 4, .. })
        ));
        assert_eq!(
            check_add_learner(&m, 2, &node(2)),
            Err(MembershipError::AlreadyVoter(2))
        );
    }

    #[test]
    fn probe_reply_must_name_the_expected_node_and_cluster() {
        assert!(check_probe_reply(4, "a:1", 9, 4, 9).is_ok());
        let err = check_probe_reply(4, "a:1", 9, 5, 9).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node 4 at a:1 did not answer a probe: it says it is node 5 of cluster 9"
        );
        assert!(check_probe_reply(4, "a:1", 9, 4, 8).is_err());
    }

    #[test]
    fn in_sync_needs_a_close_match_and_a_recent_answer() {
        let recent = Some(Duration::from_millis(100));
        assert!(check_in_sync(4, Some(log_id(9_000)), Some(10_000), recent, WINDOW).is_ok());
        assert!(check_in_sync(4, Some(log_id(10_000)), Some(10_000), recent, WINDOW).is_ok());
        // Matched ahead of a stale leader view: still fine.
        assert!(check_in_sync(4, Some(log_id(12)), Some(10), recent, WINDOW).is_ok());
        let err = check_in_sync(4, Some(log_id(8_999)), Some(10_000), recent, WINDOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "learner 4 is not in sync with the leader (matched 8999, leader 10000; \
             at most 1000 entries behind)"
        );
        assert!(matches!(
            check_in_sync(4, None, Some(5), recent, WINDOW),
            Err(MembershipError::NotInSync { .. })
        ));
        // An unreachable learner has matched nothing, even on an empty log.
        assert!(check_in_sync(4, None, None, recent, WINDOW).is_err());
        let silent = Some(Duration::from_secs(2));
        assert!(matches!(
            check_in_sync(4, Some(log_id(10)), Some(10), silent, WINDOW),
            Err(MembershipError::Silent { .. })
        ));
        assert!(check_in_sync(4, Some(log_id(10)), Some(10), None, WINDOW).is_err());
    }

    #[test]
    fn promotions_of_dead_learners_stop_before_the_quorum_is_lost() {
        // The measured wedge: voters {1,2,3} alive, learners 4,5,6 dead.
        let live = ids(&[1, 2, 3]);
        let m = membership(&[&[1, 2, 3]], &[4, 5, 6]);
        let goal = promote_goal(&m, 4).unwrap();
        assert_eq!(goal, ids(&[1, 2, 3, 4]));
        // 3 of 4 is still a quorum (the in-sync rule refuses this one)...
        assert!(check_live_quorum(&m, &goal, &live).is_ok());
        let m = membership(&[&[1, 2, 3, 4]], &[5, 6]);
        let goal = promote_goal(&m, 5).unwrap();
        assert!(check_live_quorum(&m, &goal, &live).is_ok());
        // ...but {1..6} with 3 alive would need 4, and is refused.
        let m = membership(&[&[1, 2, 3, 4, 5]], &[6]);
        let goal = promote_goal(&m, 6).unwrap();
        let err = check_live_quorum(&m, &goal, &live).unwrap_err();
        assert_eq!(
            err,
            MembershipError::QuorumAtRisk {
                config: vec![1, 2, 3, 4, 5, 6],
                live: 3,
                live_ids: vec![1, 2, 3],
                quorum: 4,
            }
        );
        // A live learner counts toward the new set.
        let live = ids(&[1, 2, 3, 6]);
        assert!(check_live_quorum(&m, &goal, &live).is_ok());
    }

    #[test]
    fn promote_needs_a_learner() {
        let m = membership(&[&[1, 2, 3]], &[4]);
        assert_eq!(promote_goal(&m, 2), Err(MembershipError::NotLearner(2)));
        assert_eq!(promote_goal(&m, 9), Err(MembershipError::NotLearner(9)));
    }

    #[test]
    fn removing_a_live_voter_while_another_is_down_is_refused() {
        let m = membership(&[&[1, 2, 3]], &[]);
        let live = ids(&[1, 2]);
        let Removal::Voter(goal) = removal(&m, 2).unwrap() else {
            panic!("2 is a voter")
        };
        assert_eq!(goal, ids(&[1, 3]));
        assert!(check_live_quorum(&m, &goal, &live).is_err());
        let Removal::Voter(goal) = removal(&m, 3).unwrap() else {
            panic!("3 is a voter")
        };
        assert!(check_live_quorum(&m, &goal, &live).is_ok());
        // The old set must keep a quorum too: with 2 of 3 dead nothing commits.
        let live = ids(&[1]);
        assert!(check_live_quorum(&m, &goal, &live).is_err());
    }

    #[test]
    fn removal_of_learners_voters_and_strangers() {
        let m = membership(&[&[1]], &[4]);
        assert_eq!(removal(&m, 1), Err(MembershipError::LastVoter));
        assert_eq!(removal(&m, 4), Ok(Removal::Learner));
        assert_eq!(removal(&m, 9), Err(MembershipError::NotMember(9)));
    }

    #[test]
    fn a_committed_joint_config_moves_on_from_its_last_set() {
        // Left joint by a leader that died between the two steps.
        let m = membership(&[&[1, 2, 3], &[1, 2, 3, 4]], &[]);
        assert_eq!(removal(&m, 4), Ok(Removal::Voter(ids(&[1, 2, 3]))));
        // A voter of only the old half: finishing the change drops it.
        let m = membership(&[&[1, 2, 3], &[1, 2]], &[]);
        assert_eq!(removal(&m, 3), Ok(Removal::Voter(ids(&[1, 2]))));
        // The quorum check uses the new half as the old set.
        let m = membership(&[&[1, 2, 3], &[1, 2, 3, 4, 5]], &[6]);
        let goal = promote_goal(&m, 6).unwrap();
        let live = ids(&[1, 2, 3]);
        assert!(check_live_quorum(&m, &goal, &live).is_err());
    }
}
