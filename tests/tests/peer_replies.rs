//! A leader's peers' replies, from a fake learner on a real port: each
//! reply below is one openraft took as it came, and stopped the cluster.

use std::time::Duration;

use nines_client::proto as pb;
use nines_tests::{Cluster, ClusterOptions};
use nines_types::codec;
use openraft::raft::AppendEntriesResponse;
use openraft::Vote;

mod fake_peer;
use fake_peer::RaftResult;

const LONG: Duration = Duration::from_secs(30);

fn append_reply(reply: AppendEntriesResponse<u64>) -> RaftResult {
    let result: Result<_, openraft::error::RaftError<u64>> = Ok(reply);
    let data = codec::encode(&result).unwrap();
    Ok(tonic::Response::new(pb::v1::RaftReply { data }))
}

/// "I have seen a vote of term 2^64-1". openraft saved it and stepped down;
/// the next election's `term + 1` overflowed (a panic in a debug build;
/// release builds wrap, and every pre-vote after is refused, for good).
fn term_u64_max() -> RaftResult {
    append_reply(AppendEntriesResponse::HigherVote(Vote::new(u64::MAX, 4)))
}

/// "Your prev_log_id does not match", even when there is none: openraft
/// unwraps it and the leader panicked.
fn always_conflict() -> RaftResult {
    append_reply(AppendEntriesResponse::Conflict)
}

/// Adds a fake learner answering with `reply`, lets the leader replicate
/// to it, and checks that every member still runs, no term went wild, and
/// the cluster elects a leader and takes writes, also after its leader is
/// killed.
async fn survives(reply: fn() -> RaftResult) {
    let mut cluster = Cluster::start(ClusterOptions::default());
    cluster.stable_leader(LONG).await;
    let fake = fake_peer::serve(reply).await;
    let client = cluster.client();
    // Accepted or timed out waiting for the learner to catch up: either way
    // the leader now replicates to it and takes its replies.
    let _ = client.member_add_learner(4, &fake, &fake).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for round in 0..2 {
        for id in (1..=3).filter(|id| cluster.is_running(*id)) {
            assert!(
                cluster.is_alive(id),
                "member {id} exited (round {round})\n{}",
                cluster.server_log(id)
            );
            let term = cluster.term(id).await;
            assert!(term < 1_000, "member {id} is at term {term}");
        }
        let leader = cluster.wait_leader(LONG).await;
        cluster
            .client()
            .put("after", format!("{round}"))
            .await
            .unwrap_or_else(|e| panic!("a write (round {round}): {e}"));
        if round == 0 {
            // Elections still work: a new leader from the other two.
            cluster.kill(leader);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_answering_term_u64_max_cannot_stop_elections() {
    survives(term_u64_max).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_answering_conflict_to_everything_cannot_crash_the_leader() {
    survives(always_conflict).await;
}
