//! A follower serves a linearizable read itself once it has applied the
//! leader's read index (asked once per batch of reads), instead of
//! forwarding the read: every etcd client spreads its calls over all
//! members, and a forward costs the leader a whole extra request. The ask
//! carries the follower's vote, which spares the leader a heartbeat round
//! when the two of them are a quorum (`read_index.rs` in nines-server).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nines_client::proto as pb;
use nines_client::proto::kv_client::KvClient;
use nines_tests::http::{metrics_cluster, scrape};
use nines_tests::Cluster;
use tonic::transport::Channel;

const GENEROUS: Duration = Duration::from_secs(60);

fn value(m: &HashMap<String, f64>, sample: &str) -> f64 {
    m.get(sample).copied().unwrap_or(0.0)
}

async fn kv_of(cluster: &Cluster, id: u64) -> KvClient<Channel> {
    let addr = format!("http://{}", cluster.node(id).client_addr);
    KvClient::connect(addr).await.expect("connect")
}

async fn read(kv: &mut KvClient<Channel>, key: &str) -> Result<pb::RangeResponse, tonic::Status> {
    let mut request = tonic::Request::new(pb::RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(20));
    kv.range(request).await.map(|r| r.into_inner())
}

fn value_of(resp: &pb::RangeResponse) -> Option<String> {
    resp.kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

/// Writes k = "before" through `leader`, reads it at `reader` (whose
/// client is returned), then pauses the leader (SIGSTOP).
async fn write_read_and_pause(cluster: &Cluster, leader: u64, reader: u64) -> KvClient<Channel> {
    cluster
        .client_of(leader)
        .put("k", "before")
        .await
        .expect("put");
    let mut kv = kv_of(cluster, reader).await;
    read(&mut kv, "k").await.expect("warm-up read");
    cluster.signal(leader, libc::SIGSTOP);
    kv
}

/// The leader the members other than `old` agree on (`old` is paused and
/// cannot be asked).
async fn new_leader(cluster: &Cluster, old: u64) -> u64 {
    let deadline = Instant::now() + GENEROUS;
    loop {
        let mut seen = Vec::new();
        for node in cluster.nodes.iter().filter(|n| n.id != old) {
            if let Some(status) = cluster.status(node.id).await {
                seen.push(status.leader_id);
            }
        }
        if seen.len() == 2 && seen[0] == seen[1] && seen[0] != 0 && seen[0] != old {
            return seen[0];
        }
        assert!(
            Instant::now() < deadline,
            "no new leader; members see {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_serves_linearizable_reads_at_the_leaders_read_index() {
    let (cluster, metrics) = metrics_cluster(&[]);
    let leader = cluster.stable_leader(GENEROUS).await;
    let follower = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .unwrap();
    let writer = cluster.client_of(leader);
    let mut at_follower = kv_of(&cluster, follower).await;

    // Each write is acknowledged before the follower is asked: a read that
    // missed it would be a stale, non-linearizable read.
    let rounds = 200;
    for i in 0..rounds {
        writer.put("k", i.to_string()).await.expect("put");
        let got = read(&mut at_follower, "k")
            .await
            .expect("read at the follower");
        assert_eq!(
            value_of(&got).as_deref(),
            Some(i.to_string().as_str()),
            "read {i}"
        );
        let header = got.header.expect("header");
        assert_eq!(header.member_id, follower, "served by another member");
    }

    // Concurrent readers share read index requests.
    let mut readers = Vec::new();
    for _ in 0..16 {
        let mut kv = at_follower.clone();
        readers.push(tokio::spawn(async move {
            for _ in 0..50 {
                read(&mut kv, "k").await.expect("concurrent read");
            }
        }));
    }
    for reader in readers {
        reader.await.expect("reader");
    }

    let mine = scrape(&metrics[&follower]).await.expect("follower metrics");
    let leaders = scrape(&metrics[&leader]).await.expect("leader metrics");
    let asks = value(&mine, "nines_read_index_asks_total");
    let reads = rounds as f64 + 16.0 * 50.0;
    assert_eq!(
        value(&mine, "nines_reads_forwarded_total"),
        0.0,
        "reads were forwarded"
    );
    assert_eq!(value(&mine, "nines_read_index_ask_failures_total"), 0.0);
    assert!(
        asks >= rounds as f64,
        "{asks} asks for {rounds} sequential reads"
    );
    assert!(asks < reads, "{asks} asks for {reads} reads: no batching");
    assert!(value(&leaders, "nines_read_index_answered_total") >= asks);
    // In a stable three-member cluster the asker's vote and the leader's
    // own are a quorum: no ask waits for a heartbeat round.
    assert!(
        value(&leaders, "nines_read_index_vouched_total") >= asks,
        "{} of {asks} asks answered without a round",
        value(&leaders, "nines_read_index_vouched_total")
    );
}

/// A follower whose leader stops answering must neither serve a stale
/// read nor hold it for the whole request timeout: once a new leader is
/// known the read goes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_at_a_follower_of_a_paused_leader_ends_with_the_new_leader() {
    let (cluster, _metrics) = metrics_cluster(&[]);
    let leader = cluster.stable_leader(GENEROUS).await;
    let follower = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .unwrap();
    let mut at_follower = write_read_and_pause(&cluster, leader, follower).await;
    let start = Instant::now();
    let result = read(&mut at_follower, "k").await;
    let took = start.elapsed();
    // Writes acknowledged by the new leader are visible at once.
    let new_leader = new_leader(&cluster, leader).await;
    cluster
        .client_of(new_leader)
        .put("k", "after")
        .await
        .expect("put at the new leader");
    let after = read(&mut at_follower, "k").await;
    cluster.signal(leader, libc::SIGCONT);

    // A new leader is elected within about half a second; the server's own
    // bound on the read is 5 s.
    assert!(
        took < Duration::from_secs(3),
        "the read took {took:?}: {result:?}"
    );
    match result {
        Ok(resp) => assert_eq!(value_of(&resp).as_deref(), Some("before")),
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status}"),
    }
    let after = after.expect("read after the new leader wrote");
    assert_eq!(value_of(&after).as_deref(), Some("after"));
}

/// The leader confirms its own reads by its voters' saved votes, asked
/// over a stream, instead of openraft's heartbeat round (`vote_check.rs`);
/// each read still sees every write acknowledged before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_confirms_its_own_reads_by_its_voters_saved_votes() {
    let (cluster, metrics) = metrics_cluster(&[]);
    let leader = cluster.stable_leader(GENEROUS).await;
    let writer = cluster.client_of(leader);
    let mut at_leader = kv_of(&cluster, leader).await;
    for i in 0..50 {
        writer.put("k", i.to_string()).await.expect("put");
        let got = read(&mut at_leader, "k").await.expect("read at the leader");
        assert_eq!(value_of(&got).as_deref(), Some(i.to_string().as_str()));
    }
    let m = scrape(&metrics[&leader]).await.expect("leader metrics");
    let checks = value(&m, "nines_read_vote_checks_total");
    let confirmed = value(&m, "nines_read_vote_checks_confirmed_total");
    assert!(checks >= 50.0, "{checks} checks for 50 sequential reads");
    // A check may time out on a loaded machine (openraft's round then
    // serves the batch), but not most of them.
    assert!(
        confirmed >= checks / 2.0,
        "{confirmed} of {checks} checks confirmed"
    );
}

/// A leader paused while another was elected and wrote must not confirm
/// its own reads once it runs again: its voters' saved votes name the new
/// leader, so the read goes there (or fails), never to its stale state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_never_serves_a_read_from_its_stale_state() {
    let (cluster, _metrics) = metrics_cluster(&[]);
    let leader = cluster.stable_leader(GENEROUS).await;
    // The warm-up read opens the vote check streams the read after the
    // pause reuses.
    let mut at_old = write_read_and_pause(&cluster, leader, leader).await;
    let new_leader = new_leader(&cluster, leader).await;
    cluster
        .client_of(new_leader)
        .put("k", "after")
        .await
        .expect("put at the new leader");
    cluster.signal(leader, libc::SIGCONT);
    let result = read(&mut at_old, "k").await;
    match result {
        Ok(resp) => assert_eq!(
            value_of(&resp).as_deref(),
            Some("after"),
            "a stale read from the deposed leader"
        ),
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status}"),
    }
}
