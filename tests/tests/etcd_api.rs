//! etcd's v3 API on real server processes: Debian's etcdctl (3.4) and a
//! plain etcdserverpb client work against a nines cluster, through every
//! member (followers forward writes and linearizable reads to the leader).

use std::time::Duration;

use nines_client::proto::etcd::etcdserverpb as epb;
use nines_tests::etcdctl::{ctl, ok};
use nines_tests::{Cluster, ClusterOptions};
use tonic::transport::Channel;
use tonic::Code;

const LONG: Duration = Duration::from_secs(30);

/// Waits until every member names the same leader: a follower that has not
/// heard of it yet answers a write UNAVAILABLE, and etcdctl does not retry a
/// put (it is not idempotent), as with etcd during an election.
async fn all_know_leader(cluster: &Cluster) {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let leader = cluster.wait_leader(LONG).await;
        let mut known = 0;
        for id in 1..=3 {
            if cluster
                .status(id)
                .await
                .is_some_and(|s| s.leader_id == leader)
            {
                known += 1;
            }
        }
        if known == 3 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no agreed leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_reads_and_writes_through_every_member() {
    let cluster = Cluster::start(ClusterOptions::default());
    all_know_leader(&cluster).await;
    for id in 1..=3 {
        let ep = cluster.node(id).client_addr.clone();
        assert_eq!(
            ok(&ep, &["put", &format!("k{id}"), &format!("v{id}")]),
            "OK\n"
        );
        assert_eq!(
            ok(&ep, &["get", &format!("k{id}")]),
            format!("k{id}\nv{id}\n")
        );
    }
    // Any member: a follower forwards, the leader serves.
    let follower = cluster.node(2).client_addr.clone();
    assert_eq!(
        ok(&follower, &["get", "k", "--prefix", "--keys-only"]),
        "k1\n\nk2\n\nk3\n\n"
    );
    // Sorting happens on the server: newest write first.
    assert_eq!(
        ok(
            &follower,
            &[
                "get",
                "k",
                "--prefix",
                "--sort-by=MODIFY",
                "--order=DESCEND",
                "--limit=2"
            ]
        ),
        "k3\nv3\nk2\nv2\n"
    );
    assert_eq!(ok(&follower, &["get", "k1", "--consistency=s"]), "k1\nv1\n");
    // A past revision: k1 before it was overwritten.
    let json = ok(&follower, &["get", "k1", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let first = v["kvs"][0]["mod_revision"].as_i64().unwrap();
    ok(&follower, &["put", "k1", "changed"]);
    assert_eq!(
        ok(&follower, &["get", "k1", &format!("--rev={first}")]),
        "k1\nv1\n"
    );
    // Compaction drops that history: etcd's error, through etcdctl.
    let json = ok(&follower, &["get", "k1", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let now = v["header"]["revision"].as_i64().unwrap();
    let out = ok(&follower, &["compaction", &now.to_string(), "--physical"]);
    assert!(out.contains(&format!("compacted revision {now}")), "{out}");
    let gone = ctl(&follower, &["get", "k1", &format!("--rev={first}")], "");
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(!gone.status.success(), "a compacted revision was served");
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );
    // A transaction, from stdin as etcdctl's non-interactive mode reads it.
    let txn = ctl(
        &follower,
        &["txn"],
        "value(\"k1\") = \"changed\"\n\nput k2 from-txn\n\nput k2 wrong\n\n",
    );
    let out = String::from_utf8_lossy(&txn.stdout);
    assert!(
        txn.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&txn.stderr)
    );
    assert!(out.starts_with("SUCCESS"), "{out}");
    assert_eq!(
        ok(&follower, &["get", "k2", "--print-value-only"]),
        "from-txn\n"
    );
    assert_eq!(ok(&follower, &["del", "k", "--prefix"]), "3\n");
    assert_eq!(ok(&follower, &["get", "k", "--prefix"]), "");

    // Status and members, as operators read them.
    let json = ok(&follower, &["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let status = &v[0]["Status"];
    // The leader of the moment: an ordinary election under CI load may
    // have moved it since the start.
    let leader = status["leader"].as_u64().unwrap_or(0);
    assert!((1..=3).contains(&leader), "{json}");
    assert_eq!(status["version"].as_str(), Some("3.5.0"), "{json}");
    assert!(status["dbSize"].as_i64().unwrap() > 0, "{json}");
    let members = ok(&follower, &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    for id in 1..=3 {
        assert!(members.contains(&cluster.node(id).client_addr), "{members}");
    }
}

async fn kv_client(cluster: &Cluster, id: u64) -> epb::kv_client::KvClient<Channel> {
    let addr = format!("http://{}", cluster.node(id).client_addr);
    epb::kv_client::KvClient::new(Channel::from_shared(addr).unwrap().connect().await.unwrap())
}

fn with_session<T>(message: T, session: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-nines-session", session.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_clients_get_etcd_errors_and_nines_sessions_apply_once() {
    let cluster = Cluster::start(ClusterOptions::default());
    all_know_leader(&cluster).await;
    let follower = 2;
    let mut kv = kv_client(&cluster, follower).await;
    let put = epb::PutRequest {
        key: b"once".to_vec(),
        value: b"1".to_vec(),
        ..Default::default()
    };
    // The same session twice (a retry through a follower): applied once.
    let first = kv
        .put(with_session(put.clone(), "abc/1"))
        .await
        .unwrap()
        .into_inner();
    let again = kv
        .put(with_session(put.clone(), "abc/1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.header.unwrap().revision,
        again.header.unwrap().revision,
        "a retried write keeps its revision"
    );
    let got = kv
        .range(epb::RangeRequest {
            key: b"once".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs[0].version, 1, "applied once");
    // A malformed session is refused, not ignored.
    let err = kv
        .put(with_session(put, "not-a-session"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // etcd's answer to a revision not reached yet.
    let err = kv
        .range(epb::RangeRequest {
            key: b"once".to_vec(),
            revision: 1 << 40,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    assert!(err.message().contains("future revision"), "{err}");
    // What nines cannot do yet says so.
    let err = kv
        .txn(epb::TxnRequest {
            success: vec![epb::RequestOp {
                request: Some(epb::request_op::Request::RequestTxn(Default::default())),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let addr = format!("http://{}", cluster.node(follower).client_addr);
    let channel = Channel::from_shared(addr).unwrap().connect().await.unwrap();
    // Served through a follower now (tests/tests/lease.rs has the rest).
    let granted = epb::lease_client::LeaseClient::new(channel)
        .lease_grant(epb::LeaseGrantRequest { ttl: 5, id: 0 })
        .await
        .expect("lease grant through a follower")
        .into_inner();
    assert!(granted.id > 0 && granted.ttl == 5, "{granted:?}");
}

/// etcd grants a lease of any id but 0, negative ones included, and a put
/// or revoke of one never granted is "requested lease not found" (nines
/// refused negative ids as invalid input).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_lease_ids_work_as_in_etcd() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(Duration::from_secs(20)).await;
    all_know_leader(&cluster).await;
    let addr = format!("http://{}", cluster.node(2).client_addr);
    let channel = Channel::from_shared(addr).unwrap().connect().await.unwrap();
    let mut leases = epb::lease_client::LeaseClient::new(channel);
    let mut kv = kv_client(&cluster, 3).await;
    let put = |lease| epb::PutRequest {
        key: b"leased".to_vec(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    };
    let missing = kv.put(put(-7)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing}");
    assert!(
        missing.message().contains("requested lease not found"),
        "{missing}"
    );
    let granted = leases
        .lease_grant(epb::LeaseGrantRequest { ttl: 60, id: -7 })
        .await
        .expect("a negative lease id is granted")
        .into_inner();
    assert_eq!(granted.id, -7);
    kv.put(put(-7)).await.expect("a put under lease -7");
    let ttl = leases
        .lease_time_to_live(epb::LeaseTimeToLiveRequest { id: -7, keys: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ttl.id, ttl.keys), (-7, vec![b"leased".to_vec()]));
    leases
        .lease_revoke(epb::LeaseRevokeRequest { id: -7 })
        .await
        .expect("revoke -7");
    let gone = kv
        .range(epb::RangeRequest {
            key: b"leased".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.count, 0, "revoking deleted the lease's key");
    let again = leases
        .lease_revoke(epb::LeaseRevokeRequest { id: -7 })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound, "{again}");
}
