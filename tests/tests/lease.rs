//! etcd's Lease service on real server processes: every RPC through a
//! follower and the leader, keys attached and deleted in one revision on
//! revoke and on expiry, remaining TTLs carried over a leader kill by
//! checkpoints, and a paused leader that must not revoke leases clients
//! kept alive through its successor.

use std::time::{Duration, Instant};

use nines_client::proto::etcd::etcdserverpb as epb;
use nines_tests::{Cluster, ClusterOptions};
use tonic::codegen::tokio_stream;
use tonic::transport::Channel;
use tonic::Code;

use epb::kv_client::KvClient;
use epb::lease_client::LeaseClient;

const LONG: Duration = Duration::from_secs(30);

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

async fn lease(addr: &str) -> LeaseClient<Channel> {
    LeaseClient::new(channel(addr).await)
}

async fn kv(addr: &str) -> KvClient<Channel> {
    KvClient::new(channel(addr).await)
}

async fn grant(addr: &str, id: i64, ttl: i64) -> epb::LeaseGrantResponse {
    lease(addr)
        .await
        .lease_grant(epb::LeaseGrantRequest { ttl, id })
        .await
        .expect("grant")
        .into_inner()
}

async fn put(addr: &str, key: &str, lease_id: i64) -> Result<i64, tonic::Status> {
    let req = epb::PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease: lease_id,
        ..Default::default()
    };
    let resp = kv(addr).await.put(req).await?.into_inner();
    Ok(resp.header.unwrap().revision)
}

/// The keys under `prefix` at `revision` (0: now) with their leases.
async fn keys_at(addr: &str, prefix: &str, revision: i64) -> Vec<(String, i64)> {
    let req = epb::RangeRequest {
        key: prefix.into(),
        range_end: nines_client::prefix_end(prefix.as_bytes()),
        revision,
        ..Default::default()
    };
    let resp = kv(addr).await.range(req).await.expect("range").into_inner();
    resp.kvs
        .into_iter()
        .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.lease))
        .collect()
}

/// One keepalive on a fresh stream: the TTL answered.
async fn keep_alive(addr: &str, id: i64) -> Result<i64, tonic::Status> {
    let requests = tokio_stream::once(epb::LeaseKeepAliveRequest { id });
    let mut answers = lease(addr)
        .await
        .lease_keep_alive(requests)
        .await?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(10), answers.message()).await {
        Ok(Ok(Some(resp))) => {
            assert_eq!(resp.id, id);
            Ok(resp.ttl)
        }
        Ok(Ok(None)) => Err(tonic::Status::unavailable("closed")),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(tonic::Status::deadline_exceeded("no keepalive answer")),
    }
}

async fn time_to_live(addr: &str, id: i64, keys: bool) -> epb::LeaseTimeToLiveResponse {
    lease(addr)
        .await
        .lease_time_to_live(epb::LeaseTimeToLiveRequest { id, keys })
        .await
        .expect("timetolive")
        .into_inner()
}

fn follower_of(cluster: &Cluster, leader: u64) -> String {
    let id = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .unwrap();
    cluster.node(id).client_addr.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lease_rpc_works_through_a_follower_and_revoke_deletes_in_one_revision() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(LONG).await;
    let f = follower_of(&cluster, leader);
    let l = cluster.node(leader).client_addr.clone();

    // The server picks the id; a TTL below the minimum is raised to it.
    let picked = grant(&f, 0, 1).await;
    assert!(picked.id > 0);
    assert_eq!(picked.ttl, 2, "etcd's minimum TTL");
    let chosen = grant(&f, 0x1234, 60).await;
    assert_eq!((chosen.id, chosen.ttl), (0x1234, 60));
    let again = lease(&f)
        .await
        .lease_grant(epb::LeaseGrantRequest {
            ttl: 60,
            id: 0x1234,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert_eq!(again.message(), "etcdserver: lease already exists");
    let huge = lease(&l)
        .await
        .lease_grant(epb::LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::OutOfRange, "{huge:?}");

    // Keys attach; reads show the lease; an unknown lease is refused.
    put(&f, "lease/a", 0x1234).await.unwrap();
    put(&l, "lease/b", 0x1234).await.unwrap();
    put(&f, "lease/free", 0).await.unwrap();
    let unknown = put(&f, "lease/x", 0x9999).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(unknown.message(), "etcdserver: requested lease not found");
    assert_eq!(
        keys_at(&f, "lease/", 0).await,
        vec![
            ("lease/a".into(), 0x1234),
            ("lease/b".into(), 0x1234),
            ("lease/free".into(), 0)
        ]
    );

    // Time to live with keys, keepalive, list: through the follower.
    let ttl = time_to_live(&f, 0x1234, true).await;
    assert_eq!(ttl.granted_ttl, 60);
    assert!((55..=60).contains(&ttl.ttl), "{ttl:?}");
    assert_eq!(ttl.keys, vec![b"lease/a".to_vec(), b"lease/b".to_vec()]);
    assert_eq!(keep_alive(&f, 0x1234).await.unwrap(), 60);
    assert_eq!(keep_alive(&f, 0x7777).await.unwrap(), 0, "unknown: TTL 0");
    assert_eq!(time_to_live(&f, 0x7777, false).await.ttl, -1, "unknown: -1");
    let listed = lease(&f)
        .await
        .lease_leases(epb::LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<i64> = listed.leases.iter().map(|l| l.id).collect();
    ids.sort();
    let mut want = vec![picked.id, 0x1234];
    want.sort();
    assert_eq!(ids, want);

    // Revoke: both keys go at one revision.
    let revoked = lease(&f)
        .await
        .lease_revoke(epb::LeaseRevokeRequest { id: 0x1234 })
        .await
        .unwrap()
        .into_inner();
    let at = revoked.header.unwrap().revision;
    assert_eq!(
        keys_at(&l, "lease/", at).await,
        vec![("lease/free".into(), 0)]
    );
    assert_eq!(
        keys_at(&l, "lease/", at - 1).await.len(),
        3,
        "both were there before"
    );
    let gone = lease(&f)
        .await
        .lease_revoke(epb::LeaseRevokeRequest { id: 0x1234 })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_lease_expires_and_a_kept_alive_one_does_not() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(LONG).await;
    let f = follower_of(&cluster, leader);
    grant(&f, 1, 3).await;
    grant(&f, 2, 3).await;
    put(&f, "gone/a", 1).await.unwrap();
    put(&f, "gone/b", 1).await.unwrap();
    put(&f, "kept/a", 2).await.unwrap();
    let granted = Instant::now();
    // Lease 2 kept alive through the follower for three TTLs.
    let mut expired_after = None;
    while granted.elapsed() < Duration::from_secs(9) {
        assert_eq!(keep_alive(&f, 2).await.unwrap(), 3);
        if expired_after.is_none() && keys_at(&f, "gone/", 0).await.is_empty() {
            expired_after = Some(granted.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let expired_after = expired_after.expect("lease 1 expired");
    // TTL 3 s, plus the 100 ms tick, a commit, and test timing.
    assert!(
        expired_after >= Duration::from_secs(3) && expired_after < Duration::from_secs(5),
        "expired after {expired_after:?}"
    );
    assert_eq!(keys_at(&f, "kept/", 0).await, vec![("kept/a".into(), 2)]);
    assert_eq!(time_to_live(&f, 1, false).await.ttl, -1);
    // Its two keys went at one revision: one delete event each, same revision.
    let revision = time_to_live(&f, 2, false).await.header.unwrap().revision;
    let mut deleted_at = Vec::new();
    for at in 2..=revision {
        let before = keys_at(&f, "gone/", at - 1).await.len();
        let after = keys_at(&f, "gone/", at).await.len();
        if after < before {
            deleted_at.push((at, before - after));
        }
    }
    assert_eq!(deleted_at.len(), 1, "{deleted_at:?}");
    assert_eq!(deleted_at[0].1, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remaining_ttl_carries_over_a_leader_kill() {
    let (mut cluster, metrics) =
        nines_tests::http::metrics_cluster(&["--lease-checkpoint-interval", "1s"]);
    let leader = cluster.stable_leader(LONG).await;
    let l = cluster.node(leader).client_addr.clone();
    let granting = Instant::now();
    grant(&l, 5, 40).await;
    grant(&l, 6, 40).await;
    let granted = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The leader reads each checkpoint's countdowns only once the one
    // before has applied. So the second checkpoint applied after a moment
    // the count still showed `n` read its countdowns after that moment:
    // that bounds what any new leader can count from, however slow the
    // commits under load.
    let counted = &metrics[&leader];
    let (n, seen) = checkpoints_after(counted, None).await;
    checkpoints_after(counted, Some(n + 1.0)).await;
    let before = time_to_live(&l, 5, false).await.ttl;
    assert!((20..=35).contains(&before), "remaining {before}");
    // Lease 6 is renewed just before the kill: its recorded remaining TTL
    // (about 34 s) is older than the keepalive and must not be used.
    assert_eq!(keep_alive(&l, 6).await.unwrap(), 40);
    let killed = Instant::now();
    cluster.kill(leader);
    let next = cluster.wait_leader(LONG).await;
    assert_ne!(next, leader);
    let next_addr = cluster.node(next).client_addr.clone();
    let after = time_to_live(&next_addr, 5, false).await.ttl;
    let renewed = time_to_live(&next_addr, 6, false).await.ttl;
    let asked = Instant::now();
    let elapsed = (asked - killed).as_secs_f64();
    assert!(
        renewed as f64 >= 40.0 - elapsed - 1.0,
        "renewed lease: remaining {renewed} {elapsed:.1} s after its keepalive"
    );
    // At most: the TTL less the checkpoint's age bound, plus a second each
    // for the checkpoint's and the answer's rounding up and one for the
    // new leader's extension. A new leader counting from the full TTL
    // would answer 40 or 41. At least: nothing is shortened, and the
    // extension is given.
    let most = 43.0 - (seen - granted).as_secs_f64();
    let least = 41.0 - (asked - granting).as_secs_f64();
    eprintln!("remaining before {before}, after {after} (bounds {least:.1}..={most:.1})");
    assert!(
        (after as f64) <= most && (after as f64) >= least,
        "remaining before {before}, after {after}, bounds {least:.1}..={most:.1}"
    );
}

/// Polls the leader's applied checkpoint count until it is past `past`
/// (or has moved at all, for None); returns the count it first saw and
/// when it last saw that count, before the move.
async fn checkpoints_after(addr: &str, past: Option<f64>) -> (f64, Instant) {
    const COUNT: &str = "nines_lease_checkpoints_total";
    let deadline = Instant::now() + LONG;
    let mut first = None;
    let mut seen = Instant::now();
    while Instant::now() < deadline {
        let asking = Instant::now();
        if let Some(count) = nines_tests::http::scrape(addr)
            .await
            .and_then(|m| m.get(COUNT).copied())
        {
            let base = *first.get_or_insert(count);
            if count > past.unwrap_or(base) {
                return (base, seen);
            }
            seen = asking;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{COUNT} on {addr} did not pass {past:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_does_not_revoke_leases_kept_alive_through_another_member() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(LONG).await;
    let others: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| n.client_addr.clone())
        .collect();
    let ttl = 3;
    grant(&others[0], 9, ttl).await;
    put(&others[0], "held/k", 9).await.unwrap();

    // Paused for more than twice the TTL while the client keeps the lease
    // alive through the other members.
    cluster.signal(leader, libc::SIGSTOP);
    let paused = Instant::now();
    let mut acked = Instant::now();
    let mut turn = 0;
    while paused.elapsed() < Duration::from_secs(8) {
        match keep_alive(&others[turn % 2], 9).await {
            Ok(t) => {
                assert_eq!(t, ttl, "the lease was lost while kept alive");
                acked = Instant::now();
            }
            Err(status) => eprintln!("keepalive: {status:?}"),
        }
        assert!(
            acked.elapsed() < Duration::from_secs(ttl as u64),
            "no keepalive acknowledged for a TTL: the test cannot judge"
        );
        turn += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cluster.signal(leader, libc::SIGCONT);
    // The old leader wakes with every countdown past due: it must step
    // down, not revoke. Keep the lease alive meanwhile and look.
    let woke = Instant::now();
    while woke.elapsed() < Duration::from_secs(4) {
        if let Ok(t) = keep_alive(&others[turn % 2], 9).await {
            assert_eq!(t, ttl, "the lease was revoked");
        }
        turn += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for addr in cluster.endpoints() {
        assert_eq!(
            keys_at(&addr, "held/", 0).await,
            vec![("held/k".into(), 9)],
            "on {addr}"
        );
    }
}

/// Many keepalives at once through a follower, over several streams:
/// each is forwarded to the leader. Forwarded as a stream per keepalive,
/// dropped after its answer, they made HTTP/2 resets that tripped the
/// leader's reset limit, and the follower's forwards were refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_keepalives_through_a_follower_are_all_answered() {
    use tokio::sync::mpsc;
    use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(LONG).await;
    let f = follower_of(&cluster, leader);
    grant(&f, 77, 60).await;
    const STREAMS: usize = 8;
    const N: usize = 5000;
    let mut tasks = Vec::new();
    for _ in 0..STREAMS {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(N);
            for _ in 0..N {
                tx.send(epb::LeaseKeepAliveRequest { id: 77 })
                    .await
                    .unwrap();
            }
            let mut answers = lease(&f)
                .await
                .lease_keep_alive(ReceiverStream::new(rx))
                .await
                .expect("keepalive stream")
                .into_inner();
            for _ in 0..N {
                let next = tokio::time::timeout(LONG, answers.message())
                    .await
                    .expect("answers keep coming");
                let resp = next.expect("no stream error").expect("stream open");
                assert_eq!((resp.id, resp.ttl), (77, 60));
            }
            drop(tx);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// nines' client sends grants and revokes under an exactly-once session
/// (`x-nines-session`), as it does puts: a retry whose first try was
/// applied (its answer lost) must answer the same, through any member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_and_revokes_retried_under_a_session_apply_once() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(LONG).await;
    let f = follower_of(&cluster, leader);
    let l = cluster.node(leader).client_addr.clone();
    fn with<T>(message: T, seq: u64) -> tonic::Request<T> {
        nines_client::with_session(message, 0xfeed, seq)
    }

    // A grant that lets the server pick the id, tried twice.
    let grant = epb::LeaseGrantRequest { ttl: 60, id: 0 };
    let first = lease(&f).await.lease_grant(with(grant, 1)).await.unwrap();
    let again = lease(&l).await.lease_grant(with(grant, 1)).await.unwrap();
    let id = first.into_inner().id;
    assert_eq!(again.into_inner().id, id, "the retry names the same lease");
    let listed = lease(&f)
        .await
        .lease_leases(epb::LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.leases.len(), 1, "granted once: {listed:?}");
    // A new request of that client (next seq) is a new lease.
    let other = lease(&f).await.lease_grant(with(grant, 2)).await.unwrap();
    assert_ne!(other.into_inner().id, id);

    // A revoke tried twice: the retry is not "lease not found".
    let revoke = epb::LeaseRevokeRequest { id };
    lease(&f)
        .await
        .lease_revoke(with(revoke, 3))
        .await
        .expect("revoke");
    lease(&l)
        .await
        .lease_revoke(with(revoke, 3))
        .await
        .expect("the retried revoke answers as the first did");
    let gone = lease(&f).await.lease_revoke(revoke).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "without a session: {gone:?}");
}
