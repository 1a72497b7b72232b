//! A Range is a consistent snapshot: a transaction that writes several keys
//! is seen whole or not at all, and the header's revision is the revision
//! the read was served at (never below a returned key's mod_revision).
//!
//! A writer runs `Txn{success: [put atomic/a = i, put atomic/b = i, ...]}`
//! back to back while readers range over `atomic/` through every node, both
//! linearizable and serializable. Before the store kept versions, readers
//! saw one key of a transaction without the others, and headers older than
//! the data they carried (issue 11).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nines_client::{proto as pb, Client, ClientConfig};
use nines_tests::{Cluster, ClusterOptions};

/// Keys each transaction writes.
const KEYS: [&str; 2] = ["atomic/a", "atomic/b"];
const RUN_FOR: Duration = Duration::from_secs(10);
/// Concurrent readers per (node, consistency) pair.
const READERS_PER_ROUTE: usize = 2;

#[derive(Default)]
struct Tally {
    reads: AtomicU64,
    errors: AtomicU64,
    torn: AtomicU64,
    stale_header: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Tally {
    fn example(&self, what: String) {
        let mut examples = self.examples.lock().unwrap_or_else(|e| e.into_inner());
        if examples.len() < 10 {
            examples.push(what);
        }
    }
}

fn client_of(cluster: &Cluster, id: u64) -> Client {
    let mut config = ClientConfig::new([cluster.node(id).client_addr.clone()]);
    // Generous: the machine running this is small and busy.
    config.request_timeout = Duration::from_secs(10);
    config.retry_deadline = Duration::from_secs(30);
    Client::new(config).expect("client")
}

fn value_of(kv: &pb::KeyValue) -> String {
    String::from_utf8_lossy(&kv.value).into_owned()
}

/// Counts (and keeps a few examples of) broken promises in one range result.
fn check(resp: &pb::RangeResponse, node: u64, serializable: bool, tally: &Tally) {
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    let route = format!(
        "node {node}, {}",
        if serializable {
            "serializable"
        } else {
            "linearizable"
        }
    );
    // Before the first txn applies there is nothing; after, every key.
    let values: Vec<String> = resp.kvs.iter().map(value_of).collect();
    let whole = resp.kvs.is_empty()
        || (resp.kvs.len() == KEYS.len() && values.iter().all(|v| *v == values[0]));
    if !whole {
        tally.torn.fetch_add(1, Ordering::Relaxed);
        let seen: Vec<String> = resp
            .kvs
            .iter()
            .map(|kv| {
                format!(
                    "{}={} (mod {})",
                    String::from_utf8_lossy(&kv.key),
                    value_of(kv),
                    kv.mod_revision
                )
            })
            .collect();
        tally.example(format!(
            "torn read via {route}: {} at header revision {revision}",
            seen.join(", ")
        ));
    }
    if let Some(kv) = resp.kvs.iter().find(|kv| kv.mod_revision > revision) {
        tally.stale_header.fetch_add(1, Ordering::Relaxed);
        tally.example(format!(
            "header revision {revision} below {}'s mod_revision {} via {route}",
            String::from_utf8_lossy(&kv.key),
            kv.mod_revision
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_see_whole_transactions_at_their_header_revision() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(Duration::from_secs(30)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());

    let mut readers = Vec::new();
    for node in 1..=3 {
        for serializable in [false, true] {
            for _ in 0..READERS_PER_ROUTE {
                let client = client_of(&cluster, node);
                let (stop, tally) = (stop.clone(), tally.clone());
                readers.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let request = pb::RangeRequest {
                            key: b"atomic/".to_vec(),
                            range_end: nines_client::prefix_end(b"atomic/"),
                            serializable,
                            ..Default::default()
                        };
                        match client.range(request).await {
                            Ok(resp) => {
                                tally.reads.fetch_add(1, Ordering::Relaxed);
                                check(&resp, node, serializable, &tally);
                            }
                            Err(_) => {
                                tally.errors.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                }));
            }
        }
    }

    let writer = cluster.client();
    let until = Instant::now() + RUN_FOR;
    let (mut writes, mut write_errors) = (0u64, 0u64);
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        let success = KEYS
            .iter()
            .map(|key| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: i.to_string().into_bytes(),
                    ..Default::default()
                })),
            })
            .collect();
        match writer
            .txn(pb::TxnRequest {
                success,
                ..Default::default()
            })
            .await
        {
            Ok(_) => writes += 1,
            Err(e) => {
                write_errors += 1;
                eprintln!("txn {i}: {e}");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.expect("reader task");
    }

    let reads = tally.reads.load(Ordering::Relaxed);
    let torn = tally.torn.load(Ordering::Relaxed);
    let stale = tally.stale_header.load(Ordering::Relaxed);
    let examples = tally
        .examples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .join("\n  ");
    println!(
        "{writes} txns ({write_errors} failed); {reads} ranges ({} failed): {torn} torn, \
         {stale} with a header below a mod_revision",
        tally.errors.load(Ordering::Relaxed)
    );
    assert!(
        writes >= 20,
        "too few txns applied ({writes}, {write_errors} failed) to test anything\n{}",
        cluster.server_log(1)
    );
    assert!(reads >= 100, "too few ranges succeeded ({reads})");
    assert!(
        torn == 0 && stale == 0,
        "{torn} of {reads} ranges saw part of a txn, {stale} had a header revision below a \
         returned mod_revision:\n  {examples}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_read_past_revisions_and_refuse_future_ones() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(Duration::from_secs(30)).await;
    let client = cluster.client();
    let mut revisions = Vec::new();
    for value in ["1", "2", "3"] {
        let resp = client.put("past/k", value).await.expect("put");
        revisions.push(resp.header.expect("header").revision);
    }
    let deleted = client.delete("past/k").await.expect("delete");
    let deleted_at = deleted.header.expect("header").revision;
    let at = |revision: i64, serializable: bool| pb::RangeRequest {
        key: b"past/k".to_vec(),
        revision,
        serializable,
        ..Default::default()
    };
    // Through every node, linearizable and serializable alike.
    for node in 1..=3 {
        let client = client_of(&cluster, node);
        for serializable in [false, true] {
            for (revision, value) in revisions.iter().zip(["1", "2", "3"]) {
                let resp = wait_for_revision(&client, at(*revision, serializable)).await;
                // As etcd does, the header names the member's current revision,
                // not the one read: the delete when linearizable, and at least
                // the revision read when served from a possibly lagging member.
                let header = resp.header.expect("header").revision;
                if serializable {
                    assert!(
                        (*revision..=deleted_at).contains(&header),
                        "node {node}: header {header} outside {revision}..={deleted_at}"
                    );
                } else {
                    assert_eq!(header, deleted_at, "node {node} at {revision}");
                }
                assert_eq!(resp.kvs.len(), 1, "node {node} at {revision}");
                assert_eq!(resp.kvs[0].value, value.as_bytes());
                assert_eq!(resp.kvs[0].create_revision, revisions[0]);
            }
            let now = client.range(at(0, serializable)).await.expect("range");
            assert!(now.kvs.is_empty(), "deleted at the current revision");
        }
        let err = client
            .range(at(i64::MAX, false))
            .await
            .expect_err("a future revision");
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
        assert!(err.to_string().contains("future revision"), "{err}");
    }
    // A txn reads the state it applies to: a past revision inside one is refused.
    let err = client
        .txn(pb::TxnRequest {
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(at(
                    revisions[0],
                    false,
                ))),
            }],
            ..Default::default()
        })
        .await
        .expect_err("a txn range at a past revision");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
}

/// A serializable read on a follower may not have applied the revision yet.
async fn wait_for_revision(client: &Client, request: pb::RangeRequest) -> pb::RangeResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.range(request.clone()).await {
            Ok(resp) => return resp,
            Err(e) if e.code() == tonic::Code::OutOfRange && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("range at {}: {e}", request.revision),
        }
    }
}
