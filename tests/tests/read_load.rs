//! Heavy serializable reads on a follower cannot starve Raft or bloat it:
//! before Raft got its own runtime and reads were bounded, 500 concurrent
//! 4 MiB reads took a follower's term from 1 to 4 and its RSS to 2 GB.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nines_client::{proto as pb, Client, ClientConfig};
use nines_tests::{Cluster, ClusterOptions};

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_reads_on_a_follower_start_no_election() {
    // Default timing: a follower starved by reads must not start an
    // election (the pre-vote round keeps it from raising the term while the
    // leader has its quorum).
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let client = cluster.client();
    // 4 values just under the 1 MiB limit: each range returns ~4 MiB.
    let value = vec![7u8; 1024 * 1024 - 1024];
    for i in 0..4 {
        client
            .put(format!("big/{i}"), value.clone())
            .await
            .expect("put");
    }
    let applied = cluster.status_retrying(leader).await.applied_index;
    cluster
        .wait_applied(follower, applied, Duration::from_secs(30))
        .await;
    // Let the cluster settle before taking the terms.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cluster.terms().await;
    let pid = cluster.pid(follower).expect("follower pid");

    let ok = Arc::new(AtomicU64::new(0));
    let exhausted = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(15);
    // Several clients, so the reads spread over several connections.
    let clients: Vec<Client> = (0..10)
        .map(|_| {
            let mut config = ClientConfig::new([cluster.node(follower).client_addr.clone()]);
            config.request_timeout = Duration::from_secs(30);
            Client::new(config).expect("client")
        })
        .collect();
    let mut readers = Vec::new();
    for r in 0..500 {
        let client = clients[r % clients.len()].clone();
        let (ok, exhausted, other) = (ok.clone(), exhausted.clone(), other.clone());
        readers.push(tokio::spawn(async move {
            while Instant::now() < until {
                let read = client
                    .range(pb::RangeRequest {
                        key: b"big/".to_vec(),
                        range_end: b"big0".to_vec(),
                        serializable: true,
                        ..Default::default()
                    })
                    .await;
                match read {
                    Ok(r) => {
                        assert_eq!(r.kvs.len(), 4);
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                        exhausted.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        eprintln!("read failed: {e}");
                        other.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    // Writes to the leader go on meanwhile.
    let writer = {
        let client = cluster.client();
        tokio::spawn(async move {
            let (mut done, mut failed) = (0u32, 0u32);
            while Instant::now() < until {
                match client.put("small", done.to_string()).await {
                    Ok(_) => done += 1,
                    Err(e) => {
                        eprintln!("write failed: {e}");
                        failed += 1;
                    }
                }
            }
            (done, failed)
        })
    };
    let mut max_rss = 0;
    while Instant::now() < until {
        max_rss = max_rss.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in readers {
        r.await.expect("reader");
    }
    let (writes, write_failures) = writer.await.expect("writer");
    let after = cluster.terms().await;
    let (ok, exhausted, other) = (
        ok.load(Ordering::Relaxed),
        exhausted.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    eprintln!(
        "reads: {ok} ok, {exhausted} RESOURCE_EXHAUSTED, {other} other errors; \
         writes: {writes} ok, {write_failures} failed; follower max RSS {} MiB; \
         terms {before:?} -> {after:?}",
        max_rss / (1024 * 1024)
    );
    if before != after {
        let logs: Vec<String> = (1..=3)
            .map(|id| format!("--- node {id} ---\n{}", cluster.server_log(id)))
            .collect();
        panic!(
            "an election happened under read load: {before:?} -> {after:?}\n{}",
            logs.join("\n")
        );
    }
    assert!(
        max_rss < 768 * 1024 * 1024,
        "follower RSS reached {} MiB",
        max_rss / (1024 * 1024)
    );
    assert!(ok > 0, "no read succeeded");
    assert_eq!(other, 0, "reads failed other than RESOURCE_EXHAUSTED");
    assert_eq!(
        write_failures, 0,
        "writes to the leader failed under read load"
    );
    assert!(writes > 0);
}
