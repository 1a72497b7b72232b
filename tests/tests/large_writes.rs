//! Writes near the message size limit, several at once. Five 15 MiB txns
//! (compares against 1 MiB values, which the leader's batch estimate
//! counted as 64 bytes each) made one 75 MiB log entry: written and
//! fsynced, then refused on every read, and the leader exited and could
//! not start again. Now a write over `--max-request-bytes` (etcd's 1.5 MiB
//! by default) is refused as etcd refuses it, and a batch is bounded by
//! what its requests really encode to.

use std::time::Duration;

use nines_client::proto::etcd::etcdserverpb as epb;
use nines_tests::{Cluster, ClusterOptions};
use tonic::transport::Channel;
use tonic::Code;

use epb::compare::{CompareResult, CompareTarget, TargetUnion};
use epb::kv_client::KvClient;

const LONG: Duration = Duration::from_secs(60);
const MIB: usize = 1024 * 1024;

fn kv(addr: &str) -> KvClient<Channel> {
    nines_tests::raw::etcd_kv(addr, LONG)
}

/// A txn of 15 compares, each against a 1 MiB value: about 15 MiB.
fn big_txn(key: &str) -> epb::TxnRequest {
    let compare = epb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Value as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(TargetUnion::Value(vec![b'v'; MIB - 1024])),
        ..Default::default()
    };
    // The put makes it a write (a txn of compares alone is a read, served
    // without the log).
    let put = epb::RequestOp {
        request: Some(epb::request_op::Request::RequestPut(epb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"small".to_vec(),
            ..Default::default()
        })),
    };
    epb::TxnRequest {
        compare: vec![compare; 15],
        success: vec![put],
        ..Default::default()
    }
}

/// Each member's warnings and errors, for a failure message.
fn logs(cluster: &Cluster) -> String {
    let mut out = String::new();
    for node in &cluster.nodes {
        out += &format!("--- node {}\n", node.id);
        for line in cluster.server_log(node.id).lines() {
            if line.contains("WARN") || line.contains("ERROR") || line.contains("fatal") {
                out += line;
                out.push('\n');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_over_the_request_limit_are_refused_and_every_member_serves() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(LONG).await;
    let addr = cluster.node(leader).client_addr.clone();
    let txns = (0..5).map(|i| {
        let mut kv = kv(&addr);
        async move { kv.txn(big_txn(&format!("big/{i}"))).await }
    });
    for (i, answer) in futures::future::join_all(txns)
        .await
        .into_iter()
        .enumerate()
    {
        let status = answer.expect_err("a 15 MiB txn is over the default limit");
        assert_eq!(
            (status.code(), status.message()),
            (Code::InvalidArgument, "etcdserver: request is too large"),
            "txn {i}: {status:?}\n{}",
            logs(&cluster)
        );
    }
    // A 1 MiB value, the value limit, is within the request limit.
    kv(&addr)
        .put(epb::PutRequest {
            key: b"big/value".to_vec(),
            value: vec![b'v'; MIB],
            ..Default::default()
        })
        .await
        .expect("a put at the value limit");
    // Every member goes on: a write through each is acknowledged and read.
    for node in &cluster.nodes {
        let mut kv = kv(&node.client_addr);
        let key = format!("after/{}", node.id).into_bytes();
        kv.put(epb::PutRequest {
            key: key.clone(),
            value: b"ok".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "put through node {}: {e:?}\n{}",
                node.id,
                cluster.server_log(leader)
            )
        });
        let got = kv
            .range(epb::RangeRequest {
                key,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.kvs[0].value, b"ok");
    }
    assert_eq!(cluster.exited_nodes(), vec![], "a member exited");
}
