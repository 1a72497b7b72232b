//! Leader pipelining: own leader appends return before their sync, the
//! durable index catches up, and a restart never resumes leadership of a
//! term whose tail may have been lost.

mod common;

use std::time::Duration;

use common::*;
use nines_types::Vote;
use openraft::storage::RaftLogStorage;
use openraft::CommittedLeaderId;

const ME: u64 = 1;

fn committed_vote(term: u64, node: u64) -> Vote {
    let mut v = Vote::new(term, node);
    v.commit();
    v
}

fn open_pipelined(dir: &std::path::Path) -> nines_log::LogStore {
    let s = open(dir);
    s.enable_leader_pipelining(ME).unwrap();
    s
}

/// A pipelining store whose saved vote makes this node leader of `term`.
async fn open_leader(dir: &std::path::Path, term: u64) -> nines_log::LogStore {
    let mut s = open_pipelined(dir);
    s.save_vote(&committed_vote(term, ME)).await.unwrap();
    s
}

#[test]
fn own_leader_appends_become_durable_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open_leader(dir.path(), 1).await;
        let mut durable = s.durable_index();
        assert_eq!(durable.get(), 0);
        append(&mut s, entries(1, 1..101)).await;
        // Readable at once, whether or not the sync finished yet.
        assert_eq!(
            indexes(&read_all(&mut s).await),
            (1..101).collect::<Vec<_>>()
        );
        assert!(
            durable.wait_for_within(100, Duration::from_secs(10)).await,
            "the flusher never synced index 100"
        );
        // Truncation lowers it: entries above the cut no longer exist.
        s.truncate(log_id(1, 51)).await.unwrap();
        assert_eq!(durable.get(), 50);
    });
}

#[test]
fn follower_appends_are_durable_when_append_returns() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open_pipelined(dir.path());
        let durable = s.durable_index();
        // Entries made by leader 1 while our vote names leader 2 (a newer
        // term): a follower append, synced before the callback.
        s.save_vote(&committed_vote(2, 2)).await.unwrap();
        append(&mut s, entries(1, 1..11)).await;
        assert_eq!(durable.get(), 10);
    });
}

#[test]
fn a_restarted_leader_does_not_resume_its_term() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open_leader(dir.path(), 4).await;
        append(&mut s, entries(4, 1..6)).await;
        drop(s);

        let mut s = open_pipelined(dir.path());
        let vote = s.read_vote().await.unwrap().unwrap();
        assert_eq!(vote.leader_id.term, 4);
        assert_eq!(vote.leader_id.node_id, ME);
        assert!(!vote.committed, "a restarted leader must win a new term");
        // Recovered entries count as durable.
        assert_eq!(s.durable_index().get(), 5);

        // Another node's committed vote is reported as saved.
        s.save_vote(&committed_vote(5, 2)).await.unwrap();
        drop(s);
        let mut s = open_pipelined(dir.path());
        assert_eq!(s.read_vote().await.unwrap(), Some(committed_vote(5, 2)));

        // Without pipelining the vote is returned untouched.
        s.save_vote(&committed_vote(6, ME)).await.unwrap();
        drop(s);
        let mut s = open(dir.path());
        assert_eq!(s.read_vote().await.unwrap(), Some(committed_vote(6, ME)));
    });
}

#[test]
fn pipelined_entries_survive_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut s = open_leader(dir.path(), 1).await;
        append(&mut s, entries(1, 1..1001)).await;
        drop(s);
        let mut s = open(dir.path());
        let all = read_all(&mut s).await;
        assert_eq!(all.len(), 1000);
        assert_eq!(
            all[999].log_id,
            openraft::LogId::new(CommittedLeaderId::new(1, ME), 1000)
        );
    });
}
