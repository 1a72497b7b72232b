//! Hostile messages on the peer port of real server processes: each one
//! crashed, bricked or misled a node before the peer guard and the bounded
//! decoder; now each is refused with a clear status and the cluster keeps
//! serving.

use std::time::Duration;

use nines_client::proto as pb;
use nines_client::proto::v1::raft_client::RaftClient;
use nines_tests::{Cluster, ClusterOptions};
use nines_types::{codec, Command, Request, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, EntryPayload, LogId, SnapshotMeta, Vote};
use tonic::transport::Channel;
use tonic::Code;

const LONG: Duration = Duration::from_secs(30);

mod fake_peer;
use fake_peer::RaftResult;

async fn peer(cluster: &Cluster, id: u64) -> RaftClient<Channel> {
    let addr = format!("http://{}", cluster.node(id).peer_addr);
    RaftClient::new(Channel::from_shared(addr).unwrap().connect().await.unwrap())
        .max_decoding_message_size(64 << 20)
}

async fn send(
    cluster: &Cluster,
    id: u64,
    rpc: &str,
    data: Vec<u8>,
) -> Result<pb::v1::RaftReply, tonic::Status> {
    let status = cluster.status_retrying(id).await;
    let request = pb::v1::RaftRequest {
        target: id,
        cluster_id: status.header.expect("header").cluster_id,
        data,
    };
    let mut client = peer(cluster, id).await;
    let reply = match rpc {
        "append" => client.append_entries(request).await,
        "vote" => client.vote(request).await,
        "snapshot" => client.install_snapshot(request).await,
        // The stream replication uses: one request, then its reply (or
        // the status that ends the stream).
        "append-stream" => {
            let requests = futures::stream::iter([request]);
            let mut replies = client.append_stream(requests).await?.into_inner();
            let reply = replies.message().await?;
            return reply.ok_or_else(|| tonic::Status::unknown("the stream ended without a reply"));
        }
        _ => unreachable!(),
    };
    reply.map(|r| r.into_inner())
}

fn append(term: u64, from: u64, entries: Vec<nines_types::Entry>) -> Vec<u8> {
    let rpc = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, from),
        prev_log_id: None,
        entries,
        leader_commit: None,
    };
    codec::encode(&rpc).unwrap()
}

fn put_entry(term: u64, index: u64, key: &[u8]) -> nines_types::Entry {
    openraft::Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Request::new(Command::Put {
            key: key.to_vec(),
            value: b"evil".to_vec(),
            lease: 0,
            prev_kv: false,
        })),
    }
}

/// Every node still runs, a leader is elected and a write goes through.
async fn assert_serving(cluster: &mut Cluster, what: &str) -> u64 {
    for id in 1..=3 {
        if let Some(status) = cluster.exited(id) {
            panic!(
                "node {id} exited ({status}) after {what}\n{}",
                cluster.server_log(id)
            );
        }
    }
    let leader = cluster.wait_leader(LONG).await;
    cluster
        .client()
        .put(format!("after {what}"), "ok")
        .await
        .unwrap_or_else(|e| panic!("write after {what}: {e}"));
    leader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_prefix_of_two_to_the_fifty_is_refused() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.wait_leader(LONG).await;
    let term = cluster.term(leader).await;
    // A real append whose key's length prefix is rewritten to claim 2^50
    // bytes: bincode would allocate that before reading the key.
    let mut bytes = append(term, leader, vec![put_entry(term, 1, b"MARKER")]);
    let at = bytes.windows(7).position(|w| w == b"\x06MARKER").unwrap();
    bytes.truncate(at);
    bytes.push(0xfd);
    bytes.extend_from_slice(&(1u64 << 50).to_le_bytes());
    bytes.extend_from_slice(b"MARKER");
    assert!(bytes.len() < 64, "a small message: {} bytes", bytes.len());
    for (id, rpc) in [
        (1, "append"),
        (2, "append"),
        (3, "append"),
        (1, "append-stream"),
        (2, "append-stream"),
        (3, "append-stream"),
    ] {
        let err = send(&cluster, id, rpc, bytes.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "node {id} {rpc}: {err}");
        assert!(err.message().contains("LimitExceeded"), "{err}");
    }
    assert_serving(&mut cluster, "a 2^50-byte length").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_term_of_u64_max_is_refused_and_elections_still_work() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.wait_leader(LONG).await;
    // From a real member (the leader, or for the leader another member),
    // so only the term check stands in the way.
    for id in 1..=3 {
        let from = if id == leader { id % 3 + 1 } else { leader };
        for rpc in ["append", "append-stream"] {
            let err = send(&cluster, id, rpc, append(u64::MAX, from, vec![]))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::PermissionDenied, "node {id} {rpc}: {err}");
            assert!(err.message().contains("too far past"), "{err}");
        }
    }
    let term = cluster.term(leader).await;
    assert!(term < 1000, "term stayed sane: {term}");
    // The next election (term + 1) must not overflow: kill the leader.
    cluster.kill(leader);
    let next = cluster.wait_leader(LONG).await;
    assert_ne!(next, leader);
    cluster.spawn(leader);
    assert_serving(&mut cluster, "a term of u64::MAX and a leader kill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_and_votes_from_a_non_member_are_refused() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.wait_leader(LONG).await;
    cluster.client().put("k", "good").await.unwrap();
    let term = cluster.term(leader).await;
    let last = cluster.status_retrying(leader).await.last_log_index;

    // "Node 99" claims leadership of the next term and commits a write.
    let rpc = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term + 1, 99),
        prev_log_id: Some(LogId::new(CommittedLeaderId::new(term, 1), last)),
        entries: vec![put_entry(term + 1, last + 1, b"k")],
        leader_commit: Some(LogId::new(CommittedLeaderId::new(term + 1, 1), last + 1)),
    };
    let data = codec::encode(&rpc).unwrap();
    // A vote for an outsider at term 2^40, sent to the leader itself.
    let vote = codec::encode(&VoteRequest::new(Vote::new(1 << 40, 99), None)).unwrap();
    for id in 1..=3 {
        let err = send(&cluster, id, "append", data.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "node {id}: {err}");
        assert!(err.message().contains("not a member"), "{err}");
        let err = send(&cluster, id, "vote", vote.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "node {id}: {err}");
    }
    // Nobody followed the outsider or moved to its term. The term may still
    // move by one or two: on a loaded 2-core CI machine a member can time out
    // and win an ordinary election during the test (CI saw 2 -> 3).
    let now = cluster.wait_leader(LONG).await;
    assert!((1..=3).contains(&now), "leader {now} is a member");
    for id in 1..=3 {
        let status = cluster.status_retrying(id).await;
        assert_ne!(status.leader_id, 99, "node {id} follows the outsider");
        let t = status.header.unwrap().raft_term;
        assert!(t < term + 20, "node {id} moved from term {term} to {t}");
    }
    for id in 1..=3 {
        let kv = cluster.client_of(id).get("k").await.unwrap().unwrap();
        assert_eq!(kv.value, b"good", "node {id}");
    }
    assert_serving(&mut cluster, "forged appends and votes").await;
}

fn data_dir_bytes(dir: &std::path::Path) -> u64 {
    // Blocks actually allocated: a sparse file shows here only where written.
    let out = std::process::Command::new("du")
        .args(["-sk", "--"])
        .arg(dir)
        .output()
        .expect("du");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_chunk_at_offset_two_to_the_forty_is_refused() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.wait_leader(LONG).await;
    let term = cluster.term(leader).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let membership = {
        // The cluster's own membership, so only the offset is wrong.
        let nodes: std::collections::BTreeMap<u64, nines_types::Node> = cluster
            .nodes
            .iter()
            .map(|n| {
                (
                    n.id,
                    nines_types::Node::new(n.peer_addr.clone(), n.client_addr.clone()),
                )
            })
            .collect();
        let voters = nodes.keys().copied().collect();
        openraft::Membership::new(vec![voters], nodes)
    };
    let before = data_dir_bytes(&cluster.node(follower).data_dir);
    let rpc = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(term, leader),
        meta: SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(term, leader), 1_000_000)),
            last_membership: openraft::StoredMembership::new(None, membership),
            snapshot_id: "forged".into(),
        },
        offset: 1 << 40,
        data: vec![0xab; 4096],
        done: true,
    };
    let err = send(&cluster, follower, "snapshot", codec::encode(&rpc).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    // Under the size limit, a chunk that leaves a gap is refused too.
    let rpc = InstallSnapshotRequest {
        offset: 1 << 30,
        ..rpc
    };
    let err = send(&cluster, follower, "snapshot", codec::encode(&rpc).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = data_dir_bytes(&cluster.node(follower).data_dir);
    assert!(
        after < before + (64 << 20),
        "data dir grew from {before} to {after} bytes"
    );
    assert_serving(&mut cluster, "a snapshot chunk at 2^40").await;
}

/// A hostile "learner" (`fake_peer`) whose every Raft reply claims an
/// error string of 2^50 bytes. On 7b83ce3 the leader decoding such a reply
/// aborted, and so did the next leader.
fn hostile_reply() -> RaftResult {
    let err: Result<(), openraft::error::RaftError<u64>> = Err(openraft::error::RaftError::Fatal(
        openraft::error::Fatal::StorageError(openraft::StorageError::from_io_error(
            openraft::ErrorSubject::Store,
            openraft::ErrorVerb::Read,
            std::io::Error::other("MARKER"),
        )),
    ));
    let mut data = codec::encode(&err).unwrap();
    let at = data.windows(7).position(|w| w == b"\x06MARKER").unwrap();
    data.truncate(at);
    data.push(0xfd);
    data.extend_from_slice(&(1u64 << 50).to_le_bytes());
    Ok(tonic::Response::new(pb::v1::RaftReply { data }))
}

/// The leader's commit index is for members: a read index request from
/// outside the membership, from the leader itself, or for another node or
/// cluster is refused; a member's is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_index_requests_are_answered_only_for_members() {
    let cluster = Cluster::start(ClusterOptions::default());
    // Stable: in the full suite an election right after start moved the
    // leadership, and the member asked answered READ_INDEX_NOT_LEADER.
    let leader = cluster.stable_leader(LONG).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let status = cluster.status_retrying(leader).await;
    let cluster_id = status.header.expect("header").cluster_id;
    let mut client = peer(&cluster, leader).await;
    let ask = |target, cluster_id, from| pb::v1::ReadIndexRequest {
        target,
        cluster_id,
        from,
        ..Default::default()
    };
    let refused = [
        (ask(leader, cluster_id, 77), Code::PermissionDenied),
        (ask(leader, cluster_id, leader), Code::PermissionDenied),
        (
            ask(follower, cluster_id, follower),
            Code::FailedPrecondition,
        ),
        (
            ask(leader, cluster_id ^ 1, follower),
            Code::FailedPrecondition,
        ),
    ];
    for (request, code) in refused {
        let err = client.read_index(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{request:?}: {err}");
    }
    let reply = client
        .read_index(ask(leader, cluster_id, follower))
        .await
        .expect("a member's request")
        .into_inner();
    assert_eq!(reply.outcome, pb::v1::ReadIndexOutcome::ReadIndexOk as i32);
    assert!(
        reply.index >= status.applied_index,
        "{reply:?} vs {status:?}"
    );
    // Offered votes the leader cannot take (a term far ahead, another
    // leader, the real one): each is answered with an index, by a round when
    // the vote does not vouch, and none stops the leader.
    let term = cluster.term(leader).await;
    for (vote_term, vote_leader) in [
        (u64::MAX, leader),
        (term, 77),
        (term + 1, leader),
        (term, leader),
    ] {
        let request = pb::v1::ReadIndexRequest {
            vote_term,
            vote_leader,
            ..ask(leader, cluster_id, follower)
        };
        let reply = client
            .read_index(request)
            .await
            .expect("an offered vote")
            .into_inner();
        assert_eq!(
            reply.outcome,
            pb::v1::ReadIndexOutcome::ReadIndexOk as i32,
            "vote ({vote_term}, {vote_leader}): {reply:?}"
        );
        assert!(reply.index >= status.applied_index, "{reply:?}");
    }
    assert_eq!(
        cluster.term(leader).await,
        term,
        "an offered vote moved the term"
    );
    // The stream: the same refusals, each ending its stream with the
    // unary call's code; a member's asks answered in turn on one stream.
    for (request, code) in refused {
        let mut replies = client
            .read_index_stream(futures::stream::iter([request, request]))
            .await
            .expect("stream opened")
            .into_inner();
        let err = replies.message().await.unwrap_err();
        assert_eq!(err.code(), code, "{request:?} over the stream: {err}");
        assert!(
            !matches!(replies.message().await, Ok(Some(_))),
            "a refused stream answered again"
        );
    }
    let asks = vec![ask(leader, cluster_id, follower); 3];
    let mut replies = client
        .read_index_stream(futures::stream::iter(asks))
        .await
        .expect("stream opened")
        .into_inner();
    for n in 0..3 {
        let reply = replies.message().await.expect("answered").expect("a reply");
        assert_eq!(
            reply.outcome,
            pb::v1::ReadIndexOutcome::ReadIndexOk as i32,
            "ask {n}: {reply:?}"
        );
        assert!(reply.index >= status.applied_index, "{reply:?}");
    }
    assert!(
        replies.message().await.expect("ended cleanly").is_none(),
        "one reply per ask"
    );

    // Vote checks: the same refusals; a member gets the saved vote, which
    // in a stable cluster names the leader in its term.
    let check = |target, cluster_id, from| pb::v1::VoteCheckRequest {
        target,
        cluster_id,
        from,
    };
    let mut at_follower = peer(&cluster, follower).await;
    for (request, code) in [
        (check(follower, cluster_id, 77), Code::PermissionDenied),
        (
            check(follower, cluster_id, follower),
            Code::PermissionDenied,
        ),
        (check(leader, cluster_id, leader), Code::FailedPrecondition),
        (
            check(follower, cluster_id ^ 1, leader),
            Code::FailedPrecondition,
        ),
    ] {
        let mut replies = at_follower
            .vote_check_stream(futures::stream::iter([request, request]))
            .await
            .expect("stream opened")
            .into_inner();
        let err = replies.message().await.unwrap_err();
        assert_eq!(err.code(), code, "{request:?}: {err}");
        assert!(
            !matches!(replies.message().await, Ok(Some(_))),
            "a refused stream answered again"
        );
    }
    let mut replies = at_follower
        .vote_check_stream(futures::stream::iter(
            [check(follower, cluster_id, leader); 2],
        ))
        .await
        .expect("stream opened")
        .into_inner();
    for _ in 0..2 {
        let reply = replies.message().await.expect("answered").expect("a reply");
        assert_eq!((reply.term, reply.leader), (term, leader), "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_learner_cannot_crash_the_leader() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(LONG).await;
    let fake = fake_peer::serve(hostile_reply).await;
    let client = cluster.client();
    // Accepted or timed out waiting for the learner: either way the leader
    // now replicates to it and decodes its replies.
    let _ = client.member_add_learner(4, &fake, &fake).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let err = client.member_promote(4).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert_serving(&mut cluster, "a hostile learner's replies").await;
    client
        .member_remove(4)
        .await
        .expect("remove the hostile learner");
    assert_serving(&mut cluster, "removing the hostile learner").await;
}
