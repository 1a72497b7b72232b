//! Compaction through real server processes: a past revision is readable
//! on every node before a compaction and OUT_OF_RANGE on every node after
//! it (also after a restart), etcd's refusals, and auto-compaction moving
//! the compacted revision forward with a short retention.

use std::time::{Duration, Instant};

use nines_client::{proto as pb, Client, ClientError};
use nines_tests::{Cluster, ClusterOptions};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

/// A serializable read of `key` at `revision` from node `id` alone.
async fn read_at(
    cluster: &Cluster,
    id: u64,
    key: &str,
    revision: i64,
) -> Result<pb::RangeResponse, ClientError> {
    cluster
        .client_of(id)
        .range(pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            revision,
            serializable: true,
            ..Default::default()
        })
        .await
}

/// The value node `id` serves at `revision`, once it has applied it.
async fn value_at(cluster: &Cluster, id: u64, key: &str, revision: i64) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        match read_at(cluster, id, key, revision).await {
            Ok(resp) => {
                return String::from_utf8_lossy(&resp.kvs[0].value).into_owned();
            }
            // Not applied there yet.
            Err(e) if e.to_string().contains("future revision") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("node {id} at {revision}: {e}"),
        }
    }
}

/// The compacted revision of node `id`, once it refuses `revision`.
async fn refused_at(cluster: &Cluster, id: u64, key: &str, revision: i64) -> i64 {
    let deadline = Instant::now() + WAIT;
    loop {
        match read_at(cluster, id, key, revision).await {
            Err(e)
                if e.code() == Code::OutOfRange && e.to_string().contains("has been compacted") =>
            {
                return compacted_on(cluster, id).await;
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "node {id} at {revision}: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The compacted revision node `id` reports (etcd's HashKV, served by the
/// member asked). The refusal itself carries etcd's exact message only.
async fn compacted_on(cluster: &Cluster, id: u64) -> i64 {
    use nines_client::proto::etcd::etcdserverpb as epb;
    let addr = format!("http://{}", cluster.node(id).client_addr);
    let channel = tonic::transport::Channel::from_shared(addr)
        .unwrap()
        .connect()
        .await
        .expect("connect");
    epb::maintenance_client::MaintenanceClient::new(channel)
        .hash_kv(epb::HashKvRequest { revision: 0 })
        .await
        .expect("hashkv")
        .into_inner()
        .compact_revision
}

async fn put(client: &Client, key: &str, value: &str) -> i64 {
    let resp = client.put(key, value).await.expect("put");
    resp.header.expect("header").revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_revision_is_out_of_range_on_every_node() {
    let mut cluster = Cluster::start(ClusterOptions {
        args: vec!["--auto-compaction-retention".into(), "0".into()],
        ..Default::default()
    });
    let leader = cluster.wait_leader(WAIT).await;
    let client = cluster.client();
    let r1 = put(&client, "k", "v1").await;
    let r2 = put(&client, "k", "v2").await;
    let r3 = put(&client, "k", "v3").await;
    for id in 1..=3 {
        assert_eq!(value_at(&cluster, id, "k", r1).await, "v1", "node {id}");
    }

    client.compact(r2, true).await.expect("compact");
    for id in 1..=3 {
        assert_eq!(refused_at(&cluster, id, "k", r1).await, r2, "node {id}");
        assert_eq!(value_at(&cluster, id, "k", r2).await, "v2", "node {id}");
        assert_eq!(value_at(&cluster, id, "k", r3).await, "v3", "node {id}");
    }
    // A linearizable read below it is refused the same way.
    let err = client
        .range(pb::RangeRequest {
            key: b"k".to_vec(),
            revision: r1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");

    // etcd's refusals: not forward, not beyond the current revision.
    let again = client.compact(r2, false).await.unwrap_err();
    assert_eq!(again.code(), Code::OutOfRange, "{again}");
    assert!(again.to_string().contains("has been compacted"), "{again}");
    let future = client.compact(r3 + 1000, false).await.unwrap_err();
    assert_eq!(future.code(), Code::OutOfRange, "{future}");
    assert!(
        future.to_string().contains("is a future revision"),
        "{future}"
    );
    // As etcd: 0 and below are behind a compacted revision.
    for at in [0, -1] {
        let behind = client.compact(at, false).await.unwrap_err();
        assert_eq!(behind.code(), Code::OutOfRange, "{at}: {behind}");
        assert!(
            behind.to_string().contains("has been compacted"),
            "{behind}"
        );
    }

    // The compaction is part of the state: a restarted follower keeps it.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.restart(follower);
    cluster.wait_leader(WAIT).await;
    assert_eq!(refused_at(&cluster, follower, "k", r1).await, r2);
    assert_eq!(value_at(&cluster, follower, "k", r2).await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compaction_moves_the_compacted_revision_forward() {
    let cluster = Cluster::start(ClusterOptions {
        args: vec![
            "--auto-compaction-mode".into(),
            "periodic".into(),
            "--auto-compaction-retention".into(),
            "1s".into(),
        ],
        ..Default::default()
    });
    cluster.wait_leader(WAIT).await;
    let client = cluster.client();
    let mut first: Option<i64> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Keep writing until every node refuses revision 1, then until the
    // compacted revision has moved again.
    loop {
        put(&client, "auto", "x").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let probe = read_at(&cluster, 1, "auto", 1).await;
        if let Err(e) = &probe {
            if e.code() == Code::OutOfRange && e.to_string().contains("has been compacted") {
                let compacted = compacted_on(&cluster, 1).await;
                match first {
                    None => first = Some(compacted),
                    Some(f) if compacted > f => break,
                    Some(_) => {}
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "compaction never advanced: {probe:?}"
        );
    }
    for id in 1..=3 {
        assert!(refused_at(&cluster, id, "auto", 1).await > 1, "node {id}");
    }
}

/// etcd's API: Compact through a follower (forwarded to the leader), then
/// every member refuses the compacted revision with etcd's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_api_compaction_reaches_every_member() {
    use nines_client::proto::etcd::etcdserverpb as epb;
    let cluster = Cluster::start(ClusterOptions {
        args: vec!["--auto-compaction-retention".into(), "0".into()],
        ..Default::default()
    });
    let leader = cluster.wait_leader(WAIT).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let etcd = |id: u64| {
        let addr = format!("http://{}", cluster.node(id).client_addr);
        async move {
            let channel = tonic::transport::Channel::from_shared(addr)
                .unwrap()
                .connect()
                .await
                .unwrap();
            epb::kv_client::KvClient::new(channel)
        }
    };
    let client = cluster.client();
    let r1 = put(&client, "e", "1").await;
    let r2 = put(&client, "e", "2").await;
    let mut kv = etcd(follower).await;
    let compact = epb::CompactionRequest {
        revision: r2,
        physical: true,
    };
    // A follower that knows no leader yet (or during an election under CI
    // load) refuses before proposing anything: safe to send again.
    let mut answer = kv.compact(compact).await;
    for _ in 0..50 {
        match &answer {
            Err(e)
                if e.code() == Code::Unavailable && e.message().contains("no leader is known") =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                answer = kv.compact(compact).await;
            }
            _ => break,
        }
    }
    answer.expect("compact through a follower");
    for id in 1..=3 {
        assert_eq!(refused_at(&cluster, id, "e", r1).await, r2, "node {id}");
        let err = etcd(id)
            .await
            .range(epb::RangeRequest {
                key: b"e".to_vec(),
                revision: r1,
                serializable: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange, "node {id}: {err}");
        assert!(err
            .message()
            .contains("required revision has been compacted"));
    }
    let err = kv
        .compact(epb::CompactionRequest {
            revision: r2,
            physical: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
}
