//! Membership changes while the cluster keeps serving.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nines_tests::{Cluster, ClusterOptions};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_promote_remove_while_serving() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(Duration::from_secs(20)).await;
    let client = cluster.client();

    // A writer runs throughout; every write must eventually succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (client, stop, written) = (client.clone(), stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                client
                    .put(format!("m-{n:06}"), "v")
                    .await
                    .unwrap_or_else(|e| panic!("write {n} failed during membership change: {e}"));
                n += 1;
                written.store(n, Ordering::Relaxed);
            }
        })
    };

    let new_id = cluster.add_node_process();
    let (peer, api) = {
        let n = cluster.node(new_id);
        (n.peer_addr.clone(), n.client_addr.clone())
    };
    let members = client
        .member_add_learner(new_id, &peer, &api)
        .await
        .expect("add learner");
    assert!(members
        .members
        .iter()
        .any(|m| m.id == new_id && m.is_learner));

    // Promoting an unknown node makes no sense (etcd's "member not found").
    let err = client.member_promote(99).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");

    let members = client.member_promote(new_id).await.expect("promote");
    assert!(members
        .members
        .iter()
        .any(|m| m.id == new_id && !m.is_learner));

    let members = client.member_remove(1).await.expect("remove node 1");
    assert!(!members.members.iter().any(|m| m.id == 1));
    let err = client.member_remove(1).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");

    let before = written.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer never failed");
    assert!(
        written.load(Ordering::Relaxed) > before,
        "writes stalled after the changes"
    );

    // The new member serves the data, and node 1 is gone from the membership.
    cluster.kill(1);
    let list = cluster
        .client_of(new_id)
        .member_list()
        .await
        .expect("member list");
    let ids: Vec<u64> = list.members.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![2, 3, new_id]);
    let kv = cluster.client_of(new_id).get("m-000000").await.unwrap();
    assert!(kv.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_flag_adds_and_promotes_a_fresh_node() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(Duration::from_secs(20)).await;
    let client = cluster.client();
    client.put("before-join", "x").await.expect("put");
    let id = cluster.join_node_process();
    wait_voter(&cluster, id, Duration::from_secs(30)).await;
    // The joined node has the data and serves it.
    let kv = cluster.client_of(id).get("before-join").await.expect("get");
    assert_eq!(kv.map(|kv| kv.value), Some(b"x".to_vec()));
    // Restarting it ignores --join: it comes back with its state.
    cluster.restart(id);
    let kv = cluster
        .client_of(id)
        .get("before-join")
        .await
        .expect("get after restart");
    assert_eq!(kv.map(|kv| kv.value), Some(b"x".to_vec()));
}

/// An endpoint that speaks HTTP/2 (so keepalive pings are answered) but
/// never answers a call, as a hung member: it held `--join` for good,
/// though good endpoints followed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_gets_past_an_endpoint_that_never_answers() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(Duration::from_secs(20)).await;
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut endpoints = vec![hung.local_addr().unwrap().to_string()];
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((tcp, _)) = hung.accept().await else {
                return;
            };
            held.push(tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                let mut calls = Vec::new();
                // Takes every call and keeps it, unanswered.
                while let Some(Ok(call)) = conn.accept().await {
                    calls.push(call);
                }
            }));
        }
    });
    endpoints.extend(cluster.endpoints());
    let id = cluster.join_node_via(&endpoints);
    wait_voter(&cluster, id, Duration::from_secs(60)).await;
    server.abort();
}

/// Waits until `id` is a voter of `cluster`'s member list.
async fn wait_voter(cluster: &Cluster, id: u64, timeout: Duration) {
    let client = cluster.client();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let list = client.member_list().await.expect("member list");
        if list.members.iter().any(|m| m.id == id && !m.is_learner) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {id} did not join as a voter: {list:?}\n{}",
            cluster.server_log(id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// etcd 3.5's `MemberList{linearizable: true}` must show every change
/// committed before the call, even when asked of a member that missed it
/// (restarted on old data and still catching up): a chaos nemesis once
/// took a wiped member's stale list as proof of a promotion that never
/// happened, and left the cluster on two voters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_member_list_shows_changes_the_member_missed() {
    use nines_client::proto::etcd::etcdserverpb as epb;
    let mut cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(Duration::from_secs(20)).await;
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill(lagging);
    let new_id = cluster.add_node_process();
    let (peer, api) = {
        let n = cluster.node(new_id);
        (n.peer_addr.clone(), n.client_addr.clone())
    };
    cluster
        .client_of(leader)
        .member_add_learner(new_id, &peer, &api)
        .await
        .expect("add a learner while one member is down");
    cluster.restart(lagging);
    // Ask the restarted member as soon as it answers at all.
    let url = format!("http://{}", cluster.node(lagging).client_addr);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no linearizable member list"
        );
        let channel = match tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let request = epb::MemberListRequest { linearizable: true };
        match epb::cluster_client::ClusterClient::new(channel)
            .member_list(request)
            .await
        {
            Ok(resp) => {
                let ids: Vec<u64> = resp.get_ref().members.iter().map(|m| m.id).collect();
                assert!(
                    ids.contains(&new_id),
                    "member {lagging} listed {ids:?} without the learner {new_id} added before the call"
                );
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}
