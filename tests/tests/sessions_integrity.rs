//! The exactly-once session table, across real processes: read results are
//! not stored per session, and a reused (client_id, seq) with a different
//! request is refused with FAILED_PRECONDITION instead of being acknowledged.

use std::path::Path;
use std::time::Duration;

use nines_client::proto as pb;
use nines_tests::{Cluster, ClusterOptions};
use tonic::Code;

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

fn state_sizes(cluster: &Cluster) -> Vec<u64> {
    cluster
        .nodes
        .iter()
        .map(|n| dir_bytes(&n.data_dir.join("state")))
        .collect()
}

async fn applied_everywhere(cluster: &Cluster) {
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let index = cluster.status_retrying(leader).await.applied_index;
    for id in 1..=3 {
        cluster
            .wait_applied(id, index, Duration::from_secs(60))
            .await;
    }
    // sled writes its buffers out every 500 ms.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_txns_under_a_session_do_not_grow_the_state() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(Duration::from_secs(30)).await;
    let client = cluster.client();
    // ~2 MiB: 20 keys of 100 KiB.
    for i in 0..20 {
        client
            .put(format!("big/{i:02}"), vec![b'x'; 100 * 1024])
            .await
            .unwrap_or_else(|e| panic!("put: {e}\n{}", cluster.server_log(1)));
    }
    applied_everywhere(&cluster).await;
    let before = state_sizes(&cluster);

    // nines-client sends every txn under a (client_id, seq) session.
    for _ in 0..3 {
        let gets = (0..20)
            .map(|i| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: format!("big/{i:02}").into_bytes(),
                    ..Default::default()
                })),
            })
            .collect();
        let resp = client
            .txn(pb::TxnRequest {
                success: gets,
                ..Default::default()
            })
            .await
            .expect("txn");
        assert_eq!(resp.responses.len(), 20);
    }
    applied_everywhere(&cluster).await;
    let after = state_sizes(&cluster);
    for (id, (b, a)) in before.iter().zip(&after).enumerate() {
        // Each txn returned 2 MiB; storing them would add at least 6 MiB.
        assert!(
            *a <= b + 3 * 1024 * 1024,
            "node {}: state dir grew from {b} to {a} bytes",
            id + 1
        );
    }
}

/// `call` again while it answers UNAVAILABLE (a leader change on a loaded
/// machine: seen right after the first write), for up to 30 s. Every call
/// here carries its session, so a retry is the same write: retries are
/// what sessions are for.
async fn until_settled<F, Fut>(mut call: F) -> Result<(), tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Err(e) if e.code() == Code::Unavailable && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_seq_with_another_request_is_failed_precondition() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let addr = format!("http://{}", cluster.node(leader).client_addr);
    let kv = pb::kv_client::KvClient::connect(addr)
        .await
        .expect("connect");
    let put = |value: &str, seq: u64| {
        let message = pb::PutRequest {
            key: b"shared".to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        };
        let mut kv = kv.clone();
        let request = nines_client::with_session(message, 0xfeed, seq);
        async move { kv.put(request).await.map(|_| ()) }
    };
    until_settled(|| put("first", 1)).await.expect("first put");
    // The honest retry is answered.
    until_settled(|| put("first", 1)).await.expect("retry");
    // A second client sharing the id, with the same seq.
    let err = until_settled(|| put("second", 1))
        .await
        .expect_err("a reused seq must be refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("session seq reused"),
        "{}",
        err.message()
    );
    // A client that lost its place and restarted at seq 1 after seq 2.
    until_settled(|| put("third", 2)).await.expect("seq 2");
    let err = until_settled(|| put("restart", 1))
        .await
        .expect_err("stale seq");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let value = cluster
        .client()
        .get("shared")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(value.value, b"third");
    assert_eq!(value.version, 2, "only the two real writes applied");
}

/// Auth changes are exactly-once too: a retried `user add` or `role add`
/// whose first attempt was applied answers OK (before: "user name already
/// exists", which failed a CI run when the client retried across a leader
/// change), at the leader and through a follower that forwards it; a new
/// request for the same user is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_auth_changes_answer_as_their_first_attempt() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    // One client id per member: each walks its own sequence 1, 2, 3.
    for (id, client_id) in [(leader, 0xa17), (follower, 0xa18)] {
        let addr = format!("http://{}", cluster.node(id).client_addr);
        let auth = pb::auth_client::AuthClient::connect(addr)
            .await
            .expect("connect");
        let name = format!("user{id}");
        let user_add = |name: String, seq: u64| {
            let mut auth = auth.clone();
            let message = pb::AuthUserAddRequest {
                name,
                password: "pw".into(),
                ..Default::default()
            };
            let request = nines_client::with_session(message, client_id, seq);
            async move { auth.user_add(request).await.map(|_| ()) }
        };
        until_settled(|| user_add(name.clone(), 1))
            .await
            .expect("user add");
        until_settled(|| user_add(name.clone(), 1))
            .await
            .unwrap_or_else(|e| panic!("the retry at member {id}: {e:?}"));
        let err = until_settled(|| user_add(name.clone(), 2))
            .await
            .expect_err("a second add of the user");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("already exists"), "{err:?}");
        let role_add = || {
            let mut auth = auth.clone();
            let message = pb::AuthRoleAddRequest {
                name: format!("role{id}"),
            };
            let request = nines_client::with_session(message, client_id, 3);
            async move { auth.role_add(request).await.map(|_| ()) }
        };
        until_settled(role_add).await.expect("role add");
        until_settled(role_add)
            .await
            .unwrap_or_else(|e| panic!("the role retry at member {id}: {e:?}"));
    }
    let users = cluster.client().user_list(Default::default()).await;
    let mut expected = [format!("user{leader}"), format!("user{follower}")];
    expected.sort();
    assert_eq!(users.expect("user list").users, expected);
}
