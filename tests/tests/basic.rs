//! A three-node cluster serves writes and reads through every node, and
//! rejects bad input with INVALID_ARGUMENT without changing anything.

use std::time::Duration;

use nines_client::proto as pb;
use nines_tests::{Cluster, ClusterOptions};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_each_node_read_from_each() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(Duration::from_secs(20)).await;
    for writer in 1..=3 {
        let client = cluster.client_of(writer);
        client
            .put(format!("key-{writer}"), format!("value-{writer}"))
            .await
            .unwrap_or_else(|e| {
                panic!("put via node {writer}: {e}\n{}", cluster.server_log(writer))
            });
    }
    for reader in 1..=3 {
        let client = cluster.client_of(reader);
        for writer in 1..=3 {
            let kv = client
                .get(format!("key-{writer}"))
                .await
                .expect("get")
                .expect("key present");
            assert_eq!(
                kv.value,
                format!("value-{writer}").into_bytes(),
                "read via node {reader}"
            );
        }
        // A serializable range on each node converges to the same three keys.
        let range = pb::RangeRequest {
            key: b"key-".to_vec(),
            range_end: nines_client::prefix_end(b"key-"),
            ..Default::default()
        };
        let resp = client.range(range).await.expect("range");
        assert_eq!(resp.count, 3);
    }
}

/// The store revision, as a linearizable read reports it.
async fn store_revision(client: &nines_client::Client) -> i64 {
    client
        .range(pb::RangeRequest {
            key: b"sentinel".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .header
        .expect("header")
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_and_changes_nothing() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(Duration::from_secs(20)).await;
    let client = cluster.client();
    client.put("sentinel", "v").await.expect("put");
    let before = client.get("sentinel").await.unwrap().unwrap();
    let revision_before = store_revision(&client).await;

    let too_long_key = vec![b'k'; 4097];
    let err = client.put(too_long_key, "v").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    let err = client
        .put("big", vec![0u8; 1024 * 1024 + 1])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    let err = client.put("", "v").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    let err = client.get("").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // A compare whose operand does not match its target is malformed (a
    // missing operand is etcd's zero value, as proto3 leaves it off the wire).
    let malformed = pb::TxnRequest {
        compare: vec![pb::Compare {
            key: b"sentinel".to_vec(),
            target: pb::compare::CompareTarget::Value as i32,
            target_union: Some(pb::compare::TargetUnion::Version(1)),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: b"sentinel".to_vec(),
                value: b"changed".to_vec(),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let err = client.txn(malformed).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // Too many ops.
    let err = client.txn(puts("t", 200)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    let after = client.get("sentinel").await.unwrap().unwrap();
    assert_eq!(before, after);
    let revision_after = store_revision(&client).await;
    assert_eq!(
        revision_before, revision_after,
        "bad input must not change the store"
    );
    let resp = client
        .range(pb::RangeRequest {
            key: b"t".to_vec(),
            range_end: b"u".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(resp.count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compare_and_swap_through_a_follower() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let client = cluster.client_of(follower);
    client.put("cas", "a").await.unwrap();
    let cas = |expect: &str, new: &str| pb::TxnRequest {
        compare: vec![pb::Compare {
            key: b"cas".to_vec(),
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Value as i32,
            target_union: Some(pb::compare::TargetUnion::Value(expect.as_bytes().to_vec())),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: b"cas".to_vec(),
                value: new.as_bytes().to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                key: b"cas".to_vec(),
                ..Default::default()
            })),
        }],
    };
    assert!(client.txn(cas("a", "b")).await.unwrap().succeeded);
    let failed = client.txn(cas("a", "c")).await.unwrap();
    assert!(!failed.succeeded);
    match &failed.responses[0].response {
        Some(pb::response_op::Response::ResponseRange(r)) => assert_eq!(r.kvs[0].value, b"b"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(client.get("cas").await.unwrap().unwrap().value, b"b");
}

/// A range answer past tonic's 4 MiB default still arrives, also through a
/// follower that forwards it from the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_larger_than_four_mib_through_leader_and_follower() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let value = vec![b'v'; 900 * 1024];
    let writer = cluster.client_of(leader);
    for i in 0..6 {
        writer.put(format!("big/{i}"), value.clone()).await.unwrap();
    }
    for node in [leader, follower] {
        let resp = cluster
            .client_of(node)
            .range(pb::RangeRequest {
                key: b"big/".to_vec(),
                range_end: nines_client::prefix_end(b"big/"),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("range via node {node}: {e}"));
        assert_eq!(resp.kvs.len(), 6, "via node {node}");
        assert!(
            resp.kvs.iter().all(|kv| kv.value == value),
            "via node {node}"
        );
    }
}

/// Input flags are checked where a request comes in, never at apply: a
/// leader started with `--max-txn-ops 300` took a txn of 200 puts that its
/// followers, on the default 128, refused when they applied it, and the
/// replicas differed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_apply_alike_whatever_their_input_flags() {
    let mut cluster = Cluster::prepare(ClusterOptions::default());
    for node in &mut cluster.nodes[..2] {
        node.extra_args = vec!["--max-txn-ops".into(), "300".into()];
    }
    cluster.spawn_all();
    let long = Duration::from_secs(30);
    let mut leader = cluster.stable_leader(long).await;
    if leader == 3 {
        // Node 3 has the default limit: lead from one of the others.
        cluster.kill(3);
        leader = cluster.wait_leader(long).await;
        cluster.spawn(3);
    }
    let done = cluster.client_of(leader).txn(puts("t", 200)).await;
    let written = done
        .unwrap_or_else(|e| panic!("leader {leader} refused 200 ops: {e}"))
        .header
        .expect("header")
        .revision;
    // Every member reaches the same revision once it has applied the txn.
    let deadline = std::time::Instant::now() + long;
    loop {
        let mut revisions = Vec::new();
        for id in 1..=3 {
            let status = cluster.status_retrying(id).await;
            revisions.push((
                status.applied_index,
                status.header.expect("header").revision,
            ));
        }
        let applied: Vec<u64> = revisions.iter().map(|r| r.0).collect();
        if applied.iter().all(|a| *a == applied[0]) {
            let revs: Vec<i64> = revisions.iter().map(|r| r.1).collect();
            assert_eq!(revs, vec![written; 3], "members differ after one txn");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{revisions:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A txn of `n` puts `{prefix}0..`, all in its success branch.
fn puts(prefix: &str, n: usize) -> pb::TxnRequest {
    pb::TxnRequest {
        success: (0..n)
            .map(|i| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: format!("{prefix}{i}").into_bytes(),
                    value: b"x".to_vec(),
                    ..Default::default()
                })),
            })
            .collect(),
        ..Default::default()
    }
}
