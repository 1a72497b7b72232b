use super::*;
use crate::read_index::testing::{set, vote};
use nines_types::LogId;
use openraft::{CommittedLeaderId, ServerState};

/// Leader 1 in term 5, entry 40 of its term applied, 42 committed.
fn base(voters: &[BTreeSet<NodeId>]) -> Own<'_> {
    Own {
        me: 1,
        state: ServerState::Leader,
        reported: vote(5, 1, true),
        saved: Some(vote(5, 1, true)),
        voters,
        applied: Some(LogId::new(CommittedLeaderId::new(5, 1), 40)),
        committed: 42,
    }
}

fn addr(id: NodeId) -> Option<String> {
    Some(format!("n{id}:2380"))
}

#[test]
fn a_settled_leader_checks_every_other_voter_for_the_committed_index() {
    let joint = [set(&[1, 2, 3]), set(&[1, 3, 4])];
    let s = standing(&base(&joint), addr).expect("a settled leader");
    assert_eq!(s.term, 5);
    assert_eq!(
        s.others,
        vec![
            (2, "n2:2380".to_string()),
            (3, "n3:2380".to_string()),
            (4, "n4:2380".to_string())
        ]
    );
    assert_eq!(s.index, 42, "covers what followers were told, not applied");
    let single = [set(&[1])];
    let s = standing(&base(&single), addr).expect("a single voter");
    assert!(s.others.is_empty());
}

#[test]
fn anything_short_of_a_settled_leader_leaves_it_to_openraft() {
    let three = [set(&[1, 2, 3])];
    let cases: Vec<(&str, Own<'_>)> = vec![
        (
            "not leading",
            Own {
                state: ServerState::Follower,
                ..base(&three)
            },
        ),
        (
            "saved vote moved on",
            Own {
                saved: Some(vote(6, 3, false)),
                ..base(&three)
            },
        ),
        (
            "saved vote not committed",
            Own {
                saved: Some(vote(5, 1, false)),
                ..base(&three)
            },
        ),
        (
            "no saved vote",
            Own {
                saved: None,
                ..base(&three)
            },
        ),
        (
            "report behind",
            Own {
                reported: vote(4, 1, true),
                ..base(&three)
            },
        ),
        (
            "nothing of its own term applied",
            Own {
                applied: Some(LogId::new(CommittedLeaderId::new(4, 2), 39)),
                ..base(&three)
            },
        ),
        (
            "nothing applied",
            Own {
                applied: None,
                ..base(&three)
            },
        ),
        ("no voters", base(&[])),
    ];
    for (what, own) in cases {
        assert_eq!(standing(&own, addr), None, "{what}");
    }
    let no_address = standing(&base(&three), |id| (id != 3).then(|| "x".to_string()));
    assert_eq!(no_address, None, "a voter without an address");
}

#[test]
fn only_a_vote_for_this_leader_in_its_term_confirms() {
    let reply = |term, leader, committed| VoteCheckReply {
        term,
        leader,
        committed,
    };
    assert!(confirms(&reply(5, 1, true), 5, 1));
    // Granted, not yet heard from the leader: still no later vote.
    assert!(confirms(&reply(5, 1, false), 5, 1));
    assert!(!confirms(&reply(6, 1, true), 5, 1), "a later term");
    assert!(!confirms(&reply(6, 2, false), 5, 1), "voted for another");
    assert!(!confirms(&reply(5, 2, true), 5, 1), "another leader");
    assert!(!confirms(&reply(4, 1, true), 5, 1), "behind");
    assert!(!confirms(&VoteCheckReply::default(), 5, 1), "no vote");
}
