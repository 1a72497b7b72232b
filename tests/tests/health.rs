//! The metrics and health port on real processes: histograms that count
//! writes, leader changes counted, `/readyz` following leader contact and
//! catch-up, `/livez` going silent with the process, and 404/405.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nines_tests::http::{get, metrics_cluster, request, scrape};
use nines_tests::Cluster;

const GENEROUS: Duration = Duration::from_secs(60);
/// What a prober allows for an answer: `/livez` answers within a second
/// (RaftCore's answer is bounded by that) unless the process is stalled.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

fn value(m: &HashMap<String, f64>, sample: &str) -> f64 {
    m.get(sample).copied().unwrap_or(0.0)
}

async fn must_scrape(addr: &str) -> HashMap<String, f64> {
    scrape(addr).await.expect("a metrics page")
}

/// Polls `path` until it answers `status`; returns the body. Panics with
/// the last answer otherwise.
async fn wait_status(addr: &str, path: &str, status: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        let answer = get(addr, path, PROBE_TIMEOUT).await;
        if let Some((code, body)) = &answer {
            if *code == status {
                return body.clone();
            }
        }
        last = answer;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr}{path}: no {status} within {within:?}; last answer {last:?}");
}

fn others(cluster: &Cluster, id: u64) -> Vec<u64> {
    cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&n| n != id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histograms_count_writes_and_leader_changes_are_counted() {
    let (mut cluster, metrics) = metrics_cluster(&[]);
    let leader = cluster.stable_leader(GENEROUS).await;
    let follower = others(&cluster, leader)[0];
    let put =
        r#"nines_grpc_request_duration_seconds_count{method="/etcdserverpb.KV/Put",code="OK"}"#;
    let counts = [
        "nines_wal_fsync_duration_seconds_count",
        "nines_apply_duration_seconds_count",
        "nines_proposal_commit_duration_seconds_count",
        put,
    ];
    let before = must_scrape(&metrics[&leader]).await;
    let follower_before = must_scrape(&metrics[&follower]).await;
    const WRITES: usize = 30;
    let client = cluster.client_of(leader);
    for i in 0..WRITES {
        client.put(format!("k{i}"), "v").await.expect("put");
    }
    let after = must_scrape(&metrics[&leader]).await;
    for sample in counts {
        assert!(
            value(&after, sample) > value(&before, sample),
            "{sample}: {} before {WRITES} writes, {} after",
            value(&before, sample),
            value(&after, sample)
        );
    }
    // Sequential writes: one proposal and one gRPC call each.
    assert!(value(&after, put) - value(&before, put) >= WRITES as f64);
    assert!(
        value(&after, "nines_proposals_committed_total")
            - value(&before, "nines_proposals_committed_total")
            >= WRITES as f64
    );
    assert!(
        value(&after, "nines_raft_commit_index")
            >= value(&before, "nines_raft_commit_index") + WRITES as f64
    );
    // A follower syncs and applies the same entries.
    let deadline = Instant::now() + GENEROUS;
    loop {
        let now = must_scrape(&metrics[&follower]).await;
        let grew = |s: &str| value(&now, s) > value(&follower_before, s);
        if grew("nines_wal_fsync_duration_seconds_count")
            && grew("nines_apply_duration_seconds_count")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower's histograms did not move: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Only GET /metrics and the health paths are served.
    let addr = &metrics[&leader];
    let nope = get(addr, "/nope", PROBE_TIMEOUT).await.expect("an answer");
    assert_eq!(nope.0, 404, "{nope:?}");
    let post = request(addr, "POST", "/metrics", PROBE_TIMEOUT)
        .await
        .expect("an answer");
    assert_eq!(post.0, 405, "{post:?}");

    // Killing the leader: the survivors count the new one.
    let survivor = follower;
    let changes = value(
        &must_scrape(&metrics[&survivor]).await,
        "nines_leader_changes_total",
    );
    assert!(changes >= 1.0);
    cluster.kill(leader);
    let new = cluster.wait_leader(GENEROUS).await;
    assert_ne!(new, leader);
    let deadline = Instant::now() + GENEROUS;
    loop {
        let now = must_scrape(&metrics[&survivor]).await;
        if value(&now, "nines_leader_changes_total") > changes
            && value(&now, "nines_raft_leader_id") == new as f64
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leader change not counted: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_needs_leader_contact_and_a_caught_up_member() {
    let (mut cluster, metrics) = metrics_cluster(&[]);
    let leader = cluster.stable_leader(GENEROUS).await;
    for node in &cluster.nodes {
        wait_status(&metrics[&node.id], "/readyz", 200, GENEROUS).await;
        let body = wait_status(&metrics[&node.id], "/health", 200, GENEROUS).await;
        assert_eq!(body.trim(), r#"{"health":"true","reason":""}"#);
    }

    // Cut off: the leader and the other follower paused.
    let follower = others(&cluster, leader)[0];
    let paused = others(&cluster, follower);
    for &id in &paused {
        cluster.signal(id, libc::SIGSTOP);
    }
    let reason = wait_status(&metrics[&follower], "/readyz", 503, Duration::from_secs(10)).await;
    assert!(!reason.trim().is_empty());
    let health = wait_status(&metrics[&follower], "/health", 503, Duration::from_secs(10)).await;
    assert!(health.contains(r#""health":"false""#), "{health}");
    // Alive all the same: its Raft core runs.
    let live = get(&metrics[&follower], "/livez", PROBE_TIMEOUT).await;
    assert_eq!(live.map(|(code, _)| code), Some(200));
    for &id in &paused {
        cluster.signal(id, libc::SIGCONT);
    }
    wait_status(&metrics[&follower], "/readyz", 200, GENEROUS).await;

    // Far behind: down while the others commit more than the lag allowed.
    let leader = cluster.stable_leader(GENEROUS).await;
    let behind = others(&cluster, leader)[0];
    cluster.kill(behind);
    let client = cluster.client_of(leader);
    let writes = 1500;
    for i in 0..writes {
        client.put(format!("far{i}"), "v").await.expect("put");
    }
    cluster.spawn(behind);
    let addr = &metrics[&behind];
    let deadline = Instant::now() + GENEROUS;
    let mut refusals = Vec::new();
    loop {
        match get(addr, "/readyz", PROBE_TIMEOUT).await {
            Some((200, _)) => break,
            Some((503, reason)) => refusals.push(reason),
            _ => {}
        }
        assert!(Instant::now() < deadline, "never ready; said {refusals:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !refusals.is_empty(),
        "ready at once after missing {writes} writes"
    );
    // When it says ready, it is within the lag of the leader.
    let mine = must_scrape(addr).await;
    let leaders = must_scrape(&metrics[&leader]).await;
    let lag = value(&leaders, "nines_raft_commit_index") - value(&mine, "nines_raft_applied_index");
    assert!(
        lag <= 1000.0,
        "ready {lag} entries behind; refusals {refusals:?}"
    );
}

/// "The Raft core stopped" as a prober sees it. A RaftCore that exits
/// takes the process with it (the binary exits on a fatal Raft error); a
/// stalled process answers nothing, so the prober's timeout is the signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livez_goes_silent_with_a_stalled_process() {
    let (cluster, metrics) = metrics_cluster(&[]);
    let leader = cluster.stable_leader(GENEROUS).await;
    let node = others(&cluster, leader)[0];
    let addr = &metrics[&node];
    assert_eq!(
        get(addr, "/livez", PROBE_TIMEOUT).await.map(|(c, _)| c),
        Some(200)
    );
    cluster.signal(node, libc::SIGSTOP);
    let started = Instant::now();
    let answer = get(addr, "/livez", PROBE_TIMEOUT).await;
    assert!(answer.is_none(), "a stopped process answered {answer:?}");
    assert!(started.elapsed() < PROBE_TIMEOUT + Duration::from_millis(500));
    cluster.signal(node, libc::SIGCONT);
    wait_status(addr, "/livez", 200, Duration::from_secs(10)).await;
}

/// The gRPC health service (what a gRPC-aware load balancer or Kubernetes'
/// grpc probe asks) follows readiness: NOT_SERVING on a member cut off
/// from its leader, SERVING again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_follows_readiness() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let (cluster, _) = metrics_cluster(&[]);
    let leader = cluster.stable_leader(GENEROUS).await;
    let follower = others(&cluster, leader)[0];
    let endpoint = format!("http://{}", cluster.node(follower).client_addr);
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .expect("endpoint")
        .timeout(PROBE_TIMEOUT)
        .connect_lazy();
    let mut health = HealthClient::new(channel);
    // Polls every service the server reports until all read `want`.
    let mut wait = async |want: ServingStatus, within: Duration| {
        let deadline = Instant::now() + within;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            last.clear();
            for service in ["", "etcdserverpb.KV"] {
                let request = HealthCheckRequest {
                    service: service.into(),
                };
                last.push(health.check(request).await.map(|r| r.into_inner().status));
            }
            if last.iter().all(|s| s.as_ref().ok() == Some(&(want as i32))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("gRPC health never {want:?} within {within:?}; last {last:?}");
    };
    wait(ServingStatus::Serving, GENEROUS).await;
    let paused = others(&cluster, follower);
    for &id in &paused {
        cluster.signal(id, libc::SIGSTOP);
    }
    wait(ServingStatus::NotServing, Duration::from_secs(10)).await;
    for &id in &paused {
        cluster.signal(id, libc::SIGCONT);
    }
    wait(ServingStatus::Serving, GENEROUS).await;
}
