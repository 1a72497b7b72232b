//! Disaster recovery with `--force-new-cluster`: two of three members are
//! lost for good (kill -9, data dirs deleted) while writes are in flight.
//! The survivor alone has no quorum (checked: a write fails); restarted
//! with the flag it serves every acknowledged write (and an entry past the
//! commit index it knew of, as etcd commits its whole log), takes new ones, and
//! two fresh members added through etcd's Cluster API end up with the same
//! history (HashKV). Leaving the flag on after that is refused; without
//! it the member rejoins, and the recovered cluster passes a quick chaos
//! run (kill -9 and restart the leader, then a follower, under writers).
//! A fresh data dir with the flag is refused.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nines_client::proto as pb;
use nines_client::{Client, ClientConfig};
use nines_log::{LogOptions, LogStore};
use nines_tests::cluster::free_port;
use nines_tests::{Cluster, ClusterOptions};
use nines_types::{Command, Entry, LogId, Request};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::EntryPayload;
use tonic::transport::Channel;

const LONG: Duration = Duration::from_secs(60);
const ACKED_BEFORE_KILL: usize = 500;
const WRITERS: usize = 16;
const FLAG: &str = "--force-new-cluster";
const UNKNOWN_COMMIT: (&str, &str) = ("past-commit", "replicated");

fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// A client of one member whose calls give up after `deadline`.
fn client_with_deadline(cluster: &Cluster, id: u64, deadline: Duration) -> Client {
    let mut config = ClientConfig::new([cluster.node(id).client_addr.clone()]);
    config.request_timeout = deadline;
    config.retry_deadline = deadline;
    Client::new(config).expect("client")
}

/// Every key under `prefix` with its value, read through one member.
async fn read_prefix(client: &Client, prefix: &str) -> BTreeMap<String, String> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let resp = client
        .range(pb::RangeRequest {
            key: prefix.into(),
            range_end: end,
            ..Default::default()
        })
        .await
        .expect("range");
    resp.kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key).unwrap(),
                String::from_utf8(kv.value).unwrap(),
            )
        })
        .collect()
}

/// etcd's MemberAdd (as a learner) through `endpoint`, then the node
/// started with the id it was given, joining through `endpoint`; waits
/// until it is a voter.
async fn add_member_back(cluster: &mut Cluster, endpoint: &str) -> u64 {
    let peer = format!("127.0.0.1:{}", free_port());
    let mut members = pb::cluster_client::ClusterClient::new(channel(endpoint));
    let added = members
        .member_add(pb::MemberAddRequest {
            peer_ur_ls: vec![format!("http://{peer}")],
            is_learner: true,
        })
        .await
        .expect("member add")
        .into_inner();
    let id = added.member.expect("the added member").id;
    // Without --join-as-learner it promotes itself once caught up.
    cluster.add_node_as(id, peer, vec!["--join".into(), endpoint.to_string()]);
    let deadline = Instant::now() + LONG;
    loop {
        let list = members
            .member_list(pb::MemberListRequest { linearizable: true })
            .await
            .expect("member list")
            .into_inner();
        if list.members.iter().any(|m| m.id == id && !m.is_learner) {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "member {id} not a voter within {LONG:?}: {list:?}\n{}",
            cluster.server_log(id)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// HashKV of one member at `revision`, retried while it catches up.
async fn hash_kv(endpoint: &str, revision: i64) -> u32 {
    let deadline = Instant::now() + LONG;
    loop {
        let mut client = pb::maintenance_client::MaintenanceClient::new(channel(endpoint));
        match client.hash_kv(pb::HashKvRequest { revision }).await {
            Ok(r) => return r.into_inner().hash,
            Err(e) => assert!(Instant::now() < deadline, "hashkv on {endpoint}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Appends a put after the last entry of a stopped member's log, under
/// the last entry's leader, as that leader's next append would have.
async fn append_uncommitted_put(data_dir: &Path, (key, value): (&str, &str)) {
    let mut log = LogStore::open(&data_dir.join("log"), LogOptions::default()).unwrap();
    let last = log.get_log_state().await.unwrap().last_log_id.unwrap();
    let entry = Entry {
        log_id: LogId::new(last.leader_id, last.index + 1),
        payload: EntryPayload::Normal(Request::new(Command::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
            prev_kv: false,
        })),
    };
    log.blocking_append([entry]).await.unwrap();
}

/// Writers with exactly-once sessions (nines' client) keep writing while
/// the leader, then a follower, is killed -9 and restarted. Writes must
/// resume after each kill, and every acknowledged write be readable, with
/// all members agreeing, at the end.
async fn quick_chaos(cluster: &mut Cluster) {
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = {
            let mut config = ClientConfig::new(cluster.endpoints());
            config.retry_deadline = Duration::from_secs(10);
            Client::new(config).expect("client")
        };
        let (acked, count, stop) = (acked.clone(), count.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("chaos/{w}/{i:05}"), format!("c-{w}-{i}"));
                // A failed write's outcome is unknown: not counted either way.
                if client.put(key.clone(), value.clone()).await.is_ok() {
                    acked.lock().unwrap().insert(key, value);
                    count.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    let writes_go_on = |what: &str| {
        let (count, what) = (count.clone(), what.to_string());
        async move {
            let from = count.load(Ordering::Relaxed);
            let deadline = Instant::now() + LONG;
            while count.load(Ordering::Relaxed) < from + 50 {
                assert!(Instant::now() < deadline, "writes did not resume {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    writes_go_on("at the start").await;
    let leader = cluster.wait_leader(LONG).await;
    cluster.kill(leader);
    writes_go_on("with the leader killed").await;
    cluster.spawn(leader);
    let leader = cluster.wait_leader(LONG).await;
    let follower = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .expect("a follower");
    cluster.kill(follower);
    writes_go_on("with a follower killed").await;
    cluster.spawn(follower);
    writes_go_on("with every member back").await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let client = Client::connect(cluster.endpoints()).expect("client");
    let held = read_prefix(&client, "chaos/").await;
    let lost: Vec<_> = acked
        .iter()
        .filter(|(k, v)| held.get(*k) != Some(*v))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost in the chaos run, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    let rev = client
        .put("chaos/done", "y")
        .await
        .expect("put")
        .header
        .unwrap()
        .revision;
    assert_members_agree(cluster, rev).await;
}

fn set_flag(cluster: &mut Cluster, id: u64, on: bool) {
    let node = cluster.nodes.iter_mut().find(|n| n.id == id).unwrap();
    node.extra_args = if on { vec![FLAG.into()] } else { Vec::new() };
}

async fn assert_members_agree(cluster: &Cluster, revision: i64) {
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.len(), 3);
    let mut hashes = Vec::new();
    for e in &endpoints {
        hashes.push(hash_kv(e, revision).await);
    }
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "HashKV at {revision} differs: {hashes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_new_cluster_recovers_from_losing_two_of_three() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.wait_leader(LONG).await;
    // A follower survives: it is the member most likely to hold entries
    // past the commit index it knows of when the others die.
    let survivor = (1..=3).find(|&id| id != leader).unwrap();
    let lost: Vec<u64> = (1..=3).filter(|&id| id != survivor).collect();

    // Writers keep going until the kill; every acknowledged put counts.
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = {
            let mut config = ClientConfig::new(cluster.endpoints());
            config.retry_deadline = Duration::from_secs(3);
            Client::new(config).expect("client")
        };
        let (acked, count, stop) = (acked.clone(), count.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("k/{w:02}/{i:05}"), format!("v-{w}-{i}"));
                match client.put(key.clone(), value.clone()).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(key, value);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => return,
                }
                i += 1;
            }
        }));
    }
    let deadline = Instant::now() + LONG;
    while count.load(Ordering::Relaxed) < ACKED_BEFORE_KILL {
        assert!(Instant::now() < deadline, "writes too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The other follower first: from then on the leader commits only
    // what the survivor holds. A write acknowledged before that may sit on
    // the leader and the other follower alone; it must reach the survivor
    // before the leader dies (a force-started member can only keep what
    // it has). Killing both at once lost such writes (5 of 513 in one
    // run), depending on which of the two went first.
    let other = lost.iter().copied().find(|&id| id != leader).unwrap();
    cluster.kill(other);
    let target = cluster.status_retrying(leader).await.last_log_index;
    cluster.wait_applied(survivor, target, LONG).await;
    cluster.kill(leader);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    for &id in &lost {
        std::fs::remove_dir_all(&cluster.node(id).data_dir).unwrap();
    }
    cluster.nodes.retain(|n| n.id == survivor);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= ACKED_BEFORE_KILL, "{}", acked.len());

    // An entry the dead majority had (acknowledged) whose commit the
    // survivor never heard of: a leader's last append reaches followers
    // before the commit index that covers it. Appended here because the
    // kill cannot be timed between the two.
    cluster.kill(survivor);
    append_uncommitted_put(&cluster.node(survivor).data_dir, UNKNOWN_COMMIT).await;

    // Control: restarted as it was, the survivor has no quorum.
    cluster.spawn(survivor);
    let alone = client_with_deadline(&cluster, survivor, Duration::from_secs(3));
    assert!(
        alone.put("control", "no quorum").await.is_err(),
        "a lone member of three wrote without its quorum"
    );

    let before = cluster.status_retrying(survivor).await;
    eprintln!(
        "survivor {survivor} before the forced start: last log {}, applied {}, {} acked",
        before.last_log_index,
        before.applied_index,
        acked.len()
    );
    assert!(before.applied_index < before.last_log_index, "{before:?}");

    // Forced: a cluster of one, holding everything acknowledged.
    cluster.kill(survivor);
    set_flag(&mut cluster, survivor, true);
    cluster.spawn(survivor);
    assert_eq!(cluster.wait_leader(LONG).await, survivor);
    let client = cluster.client_of(survivor);
    let held = read_prefix(&client, "k/").await;
    let missing: Vec<_> = acked
        .iter()
        .filter(|(k, v)| held.get(*k) != Some(*v))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost or wrong after the forced start, e.g. {missing:?}\n{}",
        acked
            .iter()
            .filter(|(k, v)| held.get(*k) != Some(*v))
            .count(),
        acked.len(),
        cluster.server_log(survivor)
    );
    let log = cluster.server_log(survivor);
    assert!(log.contains("this node is now the only member"), "{log}");
    let (key, value) = UNKNOWN_COMMIT;
    let kv = client.get(key).await.expect("get").map(|kv| kv.value);
    assert_eq!(
        kv.as_deref(),
        Some(value.as_bytes()),
        "an entry past the commit index"
    );
    for i in 0..100 {
        client.put(format!("after/{i:03}"), "x").await.expect("put");
    }

    // Two fresh members, added back through etcd's Cluster API.
    let endpoint = cluster.node(survivor).client_addr.clone();
    let four = add_member_back(&mut cluster, &endpoint).await;
    let five = add_member_back(&mut cluster, &endpoint).await;
    assert!(!lost.contains(&four) && !lost.contains(&five));
    let client = Client::connect(cluster.endpoints()).expect("client");
    let rev = client
        .put("after/last", "y")
        .await
        .expect("put")
        .header
        .unwrap()
        .revision;
    assert_members_agree(&cluster, rev).await;
    for id in [four, five] {
        let read = client_with_deadline(&cluster, id, Duration::from_secs(5));
        assert_eq!(read_prefix(&read, "k/").await, held, "read through {id}");
    }

    // The flag left on: refused now that members were added back.
    cluster.kill(survivor);
    cluster.spawn(survivor);
    let status = cluster.wait_exit(survivor, Duration::from_secs(20)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(1), "left-on flag");
    let log = cluster.server_log(survivor);
    assert!(log.contains("already applied"), "{log}");
    // Without it the member rejoins its (new) cluster.
    set_flag(&mut cluster, survivor, false);
    cluster.spawn(survivor);
    let rev = client
        .put("after/rejoined", "z")
        .await
        .expect("put")
        .header
        .unwrap()
        .revision;
    assert_members_agree(&cluster, rev).await;

    quick_chaos(&mut cluster).await;

    // A fresh data dir has nothing to recover.
    let fresh = 99;
    cluster.add_node_as(
        fresh,
        format!("127.0.0.1:{}", free_port()),
        vec![FLAG.into()],
    );
    let status = cluster.wait_exit(fresh, Duration::from_secs(20)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(1), "fresh dir");
    let log = cluster.server_log(fresh);
    assert!(log.contains("holds no Raft log"), "{log}");
}
