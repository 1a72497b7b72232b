//! The membership rules, on hand-built memberships.

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

/// Peers refuse a membership naming more than the guard's bound: adding
/// past it would write an entry no follower accepts (each refusal costing
/// an election).
#[test]
fn no_add_takes_the_membership_past_what_peers_accept() {
    let learners: Vec<NodeId> = (4..=MAX_MEMBERS as NodeId).collect();
    let full = membership(&[&[1, 2, 3]], &learners);
    assert_eq!(full.nodes().count(), MAX_MEMBERS);
    let next = MAX_MEMBERS as NodeId + 1;
    assert_eq!(
        check_add_learner(&full, next, &node(next)),
        Err(MembershipError::TooMany)
    );
    assert_eq!(check_room(&full), Err(MembershipError::TooMany));
    // Already a member: still idempotent.
    assert_eq!(
        check_add_learner(&full, 4, &node(4)),
        Ok(AddLearner::AlreadyPresent)
    );
    let room = membership(&[&[1, 2, 3]], &learners[1..]);
    assert_eq!(check_add_learner(&room, 4, &node(4)), Ok(AddLearner::New));
    assert_eq!(
        crate::network::guard::GuardLimits::default().max_members,
        MAX_MEMBERS
    );
}

#[test]
fn add_learner_is_idempotent_only_for_the_same_address() {
    let m = membership(&[&[1, 2, 3]], &[4]);
    assert_eq!(check_add_learner(&m, 5, &node(5)), Ok(AddLearner::New));
    assert_eq!(
        check_add_learner(&m, 4, &node(4)),
        Ok(AddLearner::AlreadyPresent)
    );
    assert_eq!(
        check_add_learner(&m, 2, &node(2)),
        Ok(AddLearner::AlreadyPresent)
    );
    let moved = Node::new("127.0.0.1:1", "");
    assert!(matches!(
        check_add_learner(&m, 4, &moved),
        Err(MembershipError::OtherAddress { id: 4, .. })
    ));
    // The member reports its client address (added by peer URL only).
    let reporting = Node::new(node(4).raft_addr, "127.0.0.1:9");
    assert_eq!(
        check_add_learner(&m, 4, &reporting),
        Ok(AddLearner::SetClientAddr)
    );
    // An add without a client address keeps the known one.
    let mut nodes: BTreeMap<NodeId, Node> = m.nodes().map(|(i, n)| (*i, n.clone())).collect();
    nodes.insert(4, reporting.clone());
    let known = Membership::new(vec![ids(&[1, 2, 3])], nodes);
    assert_eq!(
        check_add_learner(&known, 4, &node(4)),
        Ok(AddLearner::AlreadyPresent)
    );
    assert_eq!(
        check_add_learner(&known, 4, &reporting),
        Ok(AddLearner::AlreadyPresent)
    );
    // A new id on a member's peer address.
    assert_eq!(
        check_add_learner(&m, 5, &node(2)),
        Err(MembershipError::PeerAddrInUse {
            addr: node(2).raft_addr,
            id: 2
        })
    );
}

#[test]
fn peer_urls_are_one_http_or_https_host_and_port() {
    let urls = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        peer_addr_of(&urls(&["http://127.0.0.1:2380"]), false).unwrap(),
        "127.0.0.1:2380"
    );
    assert_eq!(peer_addr_of(&urls(&["http://h:1/"]), false).unwrap(), "h:1");
    // With peer TLS, etcdctl member add is given https:// URLs, and only those.
    assert_eq!(peer_addr_of(&urls(&["https://h:1"]), true).unwrap(), "h:1");
    assert!(peer_addr_of(&urls(&["http://h:1"]), true).is_err());
    assert!(peer_addr_of(&urls(&["https://h:1"]), false).is_err());
    for bad in [
        urls(&[]),
        urls(&["http://a:1", "http://b:1"]),
        urls(&["ftp://a:1"]),
        urls(&["a:1"]),
        urls(&["http://a"]),
        urls(&["http://a:0"]),
        urls(&["http://a:1/x"]),
        urls(&["http://u@a:1"]),
        urls(&["http://"]),
        urls(&[&format!("http://{}:1", "a".repeat(300))]),
    ] {
        let err = peer_addr_of(&bad, false).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("etcdserver: given member URLs are invalid"),
            "{bad:?}: {err}"
        );
        assert!(matches!(err, MembershipError::InvalidRequest(_)));
    }
}

#[test]
fn new_ids_are_fresh_and_never_zero() {
    let m = membership(&[&[1, 2, 3]], &[4]);
    let a = new_member_id(&m, "h:1", 9, 1);
    assert!(a != 0 && m.get_node(&a).is_none());
    assert_eq!(a, new_member_id(&m, "h:1", 9, 1));
    assert_ne!(a, new_member_id(&m, "h:1", 9, 2));
    assert_ne!(a, new_member_id(&m, "h:2", 9, 1));
    // Taken ids are skipped.
    let mut nodes: BTreeMap<NodeId, Node> = m.nodes().map(|(i, n)| (*i, n.clone())).collect();
    nodes.insert(a, node(5));
    let taken = Membership::new(vec![ids(&[1, 2, 3])], nodes);
    let b = new_member_id(&taken, "h:1", 9, 1);
    assert!(b != a && b != 0);
}

#[test]
fn updates_keep_the_client_address_and_check_the_peer_one() {
    let mut nodes: BTreeMap<NodeId, Node> = BTreeMap::new();
    nodes.insert(1, Node::new("a:1", "a:2"));
    nodes.insert(2, Node::new("b:1", "b:2"));
    let m = Membership::new(vec![ids(&[1, 2])], nodes);
    assert_eq!(updated_node(&m, 1, "c:1"), Ok(Node::new("c:1", "a:2")));
    assert_eq!(updated_node(&m, 1, "a:1"), Ok(Node::new("a:1", "a:2")));
    assert_eq!(
        updated_node(&m, 9, "c:1"),
        Err(MembershipError::NotMember(9))
    );
    assert!(matches!(
        updated_node(&m, 1, "b:1"),
        Err(MembershipError::PeerAddrInUse { id: 2, .. })
    ));
    assert!(matches!(
        updated_node(&m, 1, "nope"),
        Err(MembershipError::InvalidRequest(_))
    ));
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
        "etcdserver: can only promote a learner member which is in sync with leader: \
         learner 4 is not in sync with the leader (matched 8999, leader 10000; \
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
    assert_eq!(promote_goal(&m, 9), Err(MembershipError::NotMember(9)));
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
