//! A txn of ranges (and compares) only is a read, as in etcd: served after
//! a read barrier from the member's own state, with no log entry. Through
//! the log each one cost an fsync and a replication round, and its ranges
//! ran inside the apply on every member and again at every restart.

use std::time::Duration;

use nines_client::proto::etcd::etcdserverpb as epb;
use nines_tests::{Cluster, ClusterOptions};
use tonic::transport::Channel;
use tonic::Code;

use epb::compare::{CompareResult, CompareTarget, TargetUnion};
use epb::kv_client::KvClient;
use epb::request_op::Request as Op;

const LONG: Duration = Duration::from_secs(60);

fn kv(addr: &str) -> KvClient<Channel> {
    nines_tests::raw::etcd_kv(addr, LONG)
}

fn range(key: &str) -> epb::RequestOp {
    epb::RequestOp {
        request: Some(Op::RequestRange(epb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// If `key`'s value is `value`, read `key`, else read `other`.
fn check_and_read(key: &str, value: &str, other: &str) -> epb::TxnRequest {
    epb::TxnRequest {
        compare: vec![epb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(TargetUnion::Value(value.as_bytes().to_vec())),
            ..Default::default()
        }],
        success: vec![range(key)],
        failure: vec![range(other)],
    }
}

fn value_of(response: &epb::TxnResponse) -> Vec<u8> {
    match &response.responses[0].response {
        Some(epb::response_op::Response::ResponseRange(r)) => {
            r.kvs.first().map(|kv| kv.value.clone()).unwrap_or_default()
        }
        other => panic!("not a range answer: {other:?}"),
    }
}

async fn last_log_index(cluster: &Cluster, id: u64) -> u64 {
    cluster.status_retrying(id).await.last_log_index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_txns_add_no_log_entry_and_see_every_acknowledged_write() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(LONG).await;
    let follower = cluster.nodes.iter().map(|n| n.id).find(|&id| id != leader);
    let follower = follower.expect("a follower");
    let mut at_leader = kv(&cluster.node(leader).client_addr);
    let mut at_follower = kv(&cluster.node(follower).client_addr);
    at_leader
        .put(epb::PutRequest {
            key: b"other".to_vec(),
            value: b"o".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put");
    let before = last_log_index(&cluster, leader).await;
    for i in 0..20 {
        let value = format!("v{i}");
        let put = at_leader
            .put(epb::PutRequest {
                key: b"k".to_vec(),
                value: value.clone().into_bytes(),
                ..Default::default()
            })
            .await
            .expect("put")
            .into_inner();
        // Through the follower, at once: the read barrier makes it see the
        // write the leader just acknowledged.
        for kv in [&mut at_follower, &mut at_leader] {
            let read = kv
                .txn(check_and_read("k", &value, "other"))
                .await
                .expect("read-only txn")
                .into_inner();
            assert!(read.succeeded, "write {i} not seen: {read:?}");
            assert_eq!(value_of(&read), value.as_bytes());
            let header = read.header.expect("header");
            assert!(
                header.revision >= put.header.as_ref().unwrap().revision,
                "{header:?}"
            );
        }
        let stale = at_follower
            .txn(check_and_read("k", "not it", "other"))
            .await
            .expect("read-only txn")
            .into_inner();
        assert!(!stale.succeeded);
        assert_eq!(value_of(&stale), b"o");
    }
    // 20 puts are 20 entries (each waited for before the next); the 60
    // txns must add none (a few spare for a lease or leader change).
    let added = last_log_index(&cluster, leader).await - before;
    assert!(
        (20..=23).contains(&added),
        "{added} log entries for 20 puts and 60 read-only txns"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_txn_meets_the_request_limit_and_the_op_limit() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.stable_leader(LONG).await;
    let mut kv = kv(&cluster.node(1).client_addr);
    // Over --max-request-bytes (1.5 MiB by default): refused as a write of
    // it would be.
    // Two compares of 900 KiB values: each within the value limit.
    let mut big = check_and_read("k", "v", "other");
    big.compare[0].target_union = Some(TargetUnion::Value(vec![b'v'; 900 << 10]));
    big.compare.push(big.compare[0].clone());
    let refused = kv.txn(big).await.expect_err("over the request limit");
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::InvalidArgument, "etcdserver: request is too large")
    );
    // More ops than etcd's --max-txn-ops (128).
    let mut many = check_and_read("k", "v", "other");
    many.success = (0..129).map(|i| range(&format!("k{i}"))).collect();
    let refused = kv.txn(many).await.expect_err("over the op limit");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}

/// A read-only txn that carries an exactly-once session goes through the
/// log as before: a session's sequence numbers are taken as its requests
/// apply, and a write at seq 2 after an unlogged seq 1 was "session
/// unknown". nines' own client sends read-only txns without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_txn_in_a_session_keeps_the_session_going() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(LONG).await;
    let mut kv = kv(&cluster.node(leader).client_addr);
    let in_session = |seq: u64| format!("5e551011/{seq}");
    let mut read = tonic::Request::new(check_and_read("k", "v", "other"));
    read.metadata_mut()
        .insert("x-nines-session", in_session(1).parse().unwrap());
    kv.txn(read).await.expect("read-only txn at seq 1");
    let mut put = tonic::Request::new(epb::PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    put.metadata_mut()
        .insert("x-nines-session", in_session(2).parse().unwrap());
    kv.put(put)
        .await
        .expect("a write at seq 2 of the same session");
    // And nines' client, whose lanes start at seq 1.
    let client = cluster.client();
    let answer = client.txn(check_and_read("k", "v", "other")).await;
    assert!(answer.expect("read-only txn").succeeded);
    client.put("k", "w").await.expect("put after it");
}
