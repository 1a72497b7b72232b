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

/// Nodes one membership may name. Peers refuse a larger one as malformed
/// (`network::guard`), so adding past it would write a membership entry no
/// follower accepts.
pub const MAX_MEMBERS: usize = 64;

/// Why a membership change is refused. Where etcd has the same refusal,
/// the message starts with etcd's text (clients match on it), then says
/// what nines saw.
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
    #[error("node {id} is already a member at {addr}; remove it before adding it elsewhere")]
    OtherAddress { id: NodeId, addr: String },
    #[error("etcdserver: Peer URLs already exists: {addr} is member {id}'s")]
    PeerAddrInUse { addr: String, id: NodeId },
    #[error("etcdserver: can only promote a learner member: node {0} is a voter")]
    NotLearner(NodeId),
    #[error("etcdserver: member not found: node {0} is not a member")]
    NotMember(NodeId),
    #[error("cannot remove the last voter")]
    LastVoter,
    #[error("the membership already names {MAX_MEMBERS} nodes, the most it may")]
    TooMany,
    #[error("etcdserver: can only promote a learner member which is in sync with leader: learner {id} is not in sync with the leader (matched {matched}, leader {leader}; at most {MAX_LEARNER_LAG} entries behind)")]
    NotInSync {
        id: NodeId,
        matched: String,
        leader: u64,
    },
    #[error("etcdserver: can only promote a learner member which is in sync with leader: learner {id} has not answered for {since} (window {window:?})")]
    Silent {
        id: NodeId,
        since: String,
        window: Duration,
    },
    #[error("etcdserver: re-configuration failed due to not enough started members: the change would lose the quorum: voters {config:?} would have {live} live ({live_ids:?}), need {quorum}")]
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
    /// Already a member at that address: answer success (a joining node
    /// retries after a lost response).
    AlreadyPresent,
    /// A member at that peer address with another client address: the
    /// member itself reports the address it serves clients on (etcd's
    /// MemberAdd knows only peer URLs; see `NodeCore::add_member`).
    SetClientAddr,
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
    match membership.get_node(&id) {
        // No client address given: keep the one known.
        Some(existing) if existing.raft_addr == node.raft_addr => {
            if node.api_addr.is_empty() || existing.api_addr == node.api_addr {
                Ok(AddLearner::AlreadyPresent)
            } else {
                Ok(AddLearner::SetClientAddr)
            }
        }
        // openraft would keep the old address and report success.
        Some(existing) => Err(MembershipError::OtherAddress {
            id,
            addr: existing.raft_addr.clone(),
        }),
        None => {
            check_room(membership)?;
            check_peer_addr_free(membership, &node.raft_addr, id).map(|()| AddLearner::New)
        }
    }
}

/// Whether `membership` can name one more node.
pub fn check_room(membership: &Membership<NodeId, Node>) -> Result<(), MembershipError> {
    if membership.nodes().count() >= MAX_MEMBERS {
        return Err(MembershipError::TooMany);
    }
    Ok(())
}

/// Two members on one peer address would each get the other's traffic
/// (refused by the receiver's id check, so neither would work).
pub fn check_peer_addr_free(
    membership: &Membership<NodeId, Node>,
    raft_addr: &str,
    except: NodeId,
) -> Result<(), MembershipError> {
    match membership
        .nodes()
        .find(|(id, n)| **id != except && n.raft_addr == raft_addr)
    {
        Some((id, _)) => Err(MembershipError::PeerAddrInUse {
            addr: raft_addr.to_string(),
            id: *id,
        }),
        None => Ok(()),
    }
}

/// The node after an etcd MemberUpdate: new peer address, same client one.
pub fn updated_node(
    membership: &Membership<NodeId, Node>,
    id: NodeId,
    raft_addr: &str,
) -> Result<Node, MembershipError> {
    let existing = membership
        .get_node(&id)
        .ok_or(MembershipError::NotMember(id))?;
    validate_member(id, raft_addr, "")?;
    check_peer_addr_free(membership, raft_addr, id)?;
    Ok(Node::new(raft_addr, existing.api_addr.clone()))
}

/// etcd's peer URL, `http://HOST:PORT` or, where the peer ports run TLS
/// (`peer_tls`), `https://HOST:PORT` (a trailing `/` allowed), as the
/// `HOST:PORT` nines keeps. nines has one peer address per member, so
/// exactly one URL. Every member runs the same peer transport, so a URL
/// whose scheme says otherwise is a mistake, refused as etcd refuses it.
pub fn peer_addr_of(urls: &[String], peer_tls: bool) -> Result<String, MembershipError> {
    let invalid = |why: String| {
        MembershipError::InvalidRequest(format!("etcdserver: given member URLs are invalid: {why}"))
    };
    let [url] = urls else {
        return Err(invalid(format!(
            "nines takes exactly one peer URL per member, got {}",
            urls.len()
        )));
    };
    let shown: String = url.chars().take(64).collect();
    let (scheme, other) = if peer_tls {
        ("https://", "http://")
    } else {
        ("http://", "https://")
    };
    if url.starts_with(other) {
        return Err(invalid(format!(
            "{shown:?}: the peer ports {} TLS, so peer URLs are {scheme}HOST:PORT",
            if peer_tls { "run" } else { "do not run" }
        )));
    }
    let addr = url
        .strip_prefix(scheme)
        .ok_or_else(|| invalid(format!("{shown:?} is not {scheme}HOST:PORT")))?;
    let addr = addr.strip_suffix('/').unwrap_or(addr);
    check_addr("peer", addr).map_err(|e| invalid(e.to_string()))?;
    Ok(addr.to_string())
}

/// A fresh member id, as etcd assigns one: a hash of the peer address, the
/// cluster and the time (`seed`), so a removed member's id is not handed
/// out again; never 0 and never an id in `membership`.
pub fn new_member_id(
    membership: &Membership<NodeId, Node>,
    raft_addr: &str,
    cluster_id: u64,
    seed: u128,
) -> NodeId {
    use std::hash::{Hash, Hasher};
    let mut salt = 0u64;
    loop {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (raft_addr, cluster_id, seed, salt).hash(&mut h);
        let id = h.finish();
        if id != 0 && membership.get_node(&id).is_none() {
            return id;
        }
        salt += 1;
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
    if membership.get_node(&id).is_none() {
        return Err(MembershipError::NotMember(id));
    }
    if membership.voter_ids().any(|v| v == id) {
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
pub fn last_config(membership: &Membership<NodeId, Node>) -> BTreeSet<NodeId> {
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
#[path = "membership_tests.rs"]
mod tests;
