//! The storage quota through real server processes: over
//! --quota-backend-bytes, puts and txns with a put answer RESOURCE_EXHAUSTED
//! while reads, deletes and compactions work; after a compaction frees the
//! history, writes succeed again with nothing disarmed by hand.

use std::time::{Duration, Instant};

use nines_client::{proto as pb, Client, ClientError};
use nines_tests::{Cluster, ClusterOptions};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);
const QUOTA: u64 = 200_000;

fn is_no_space(e: &ClientError) -> bool {
    e.code() == Code::ResourceExhausted && e.to_string().contains("database space exceeded")
}

/// Overwrites one key with 10 kB values until the store refuses; returns
/// how many writes it took.
async fn fill(client: &Client) -> usize {
    let value = "x".repeat(10_000);
    for n in 0..1_000 {
        match client.put("big", value.as_str()).await {
            Ok(_) => {}
            Err(e) if is_no_space(&e) => return n,
            Err(e) => panic!("put {n}: {e}"),
        }
    }
    panic!("1,000 writes of 10 kB never reached a quota of {QUOTA} bytes");
}

fn put_txn() -> pb::TxnRequest {
    pb::TxnRequest {
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: b"t".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_puts_serves_the_rest_and_recovers_after_compaction() {
    let cluster = Cluster::start(ClusterOptions {
        args: vec![
            "--quota-backend-bytes".into(),
            QUOTA.to_string(),
            "--auto-compaction-retention".into(),
            "0".into(),
        ],
        ..Default::default()
    });
    cluster.wait_leader(WAIT).await;
    let client = cluster.client();
    client.put("small", "kept").await.expect("put");
    let writes = fill(&client).await;
    assert!((15..=25).contains(&writes), "{writes} writes of 10 kB");

    // Refused with the message and code etcd clients expect, on every node.
    for id in 1..=3 {
        let node = cluster.client_of(id);
        let err = node.put("other", "v").await.unwrap_err();
        assert!(is_no_space(&err), "node {id}: {err}");
        assert!(err.to_string().contains("--quota-backend-bytes"), "{err}");
        let err = node.txn(put_txn()).await.unwrap_err();
        assert!(is_no_space(&err), "node {id} txn: {err}");
        let status = cluster.status_retrying(id).await;
        assert!(
            status.db_size_in_use as u64 > QUOTA,
            "node {id}: in use {}",
            status.db_size_in_use
        );
        assert!(status.db_size > 0, "node {id}");
    }
    // Reads and deletes still work.
    let kv = client.get("small").await.expect("get").expect("small");
    assert_eq!(kv.value, b"kept");
    let deleted = client.delete("small").await.expect("delete");
    let revision = deleted.header.expect("header").revision;

    // A compaction frees the history: writes resume by themselves.
    client.compact(revision, true).await.expect("compact");
    let deadline = Instant::now() + WAIT;
    loop {
        match client.put("after", "v").await {
            Ok(_) => break,
            Err(e) if is_no_space(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("write after compaction: {e}"),
        }
    }
    for id in 1..=3 {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = cluster.status_retrying(id).await;
            if (status.db_size_in_use as u64) < QUOTA {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} still holds {}",
                status.db_size_in_use
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster
            .client_of(id)
            .txn(put_txn())
            .await
            .unwrap_or_else(|e| panic!("node {id} txn after compaction: {e}"));
    }
}
