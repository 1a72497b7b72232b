//! Availability figures on real processes: a member counts the time it has
//! no leader in contact (`nines_leaderless_seconds_total`, and the same in
//! `endpoint status`), whether it is a follower whose leader is gone or a
//! leader without its quorum, and stops counting once a leader is back.
//! Before this counted contact, a lone follower kept the dead leader's id
//! (the pre-vote never lets it campaign) and reported a leader throughout.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nines_tests::http::{metrics_cluster, scrape};
use nines_tests::Cluster;

const GENEROUS: Duration = Duration::from_secs(60);
/// How long the others stay stopped.
const OUTAGE: Duration = Duration::from_secs(3);
const LEADERLESS: &str = "nines_leaderless_seconds_total";
const HAS_LEADER: &str = "nines_raft_has_leader";

fn value(m: &HashMap<String, f64>, sample: &str) -> f64 {
    m.get(sample).copied().unwrap_or(f64::NAN)
}

async fn must_scrape(addr: &str) -> HashMap<String, f64> {
    scrape(addr).await.expect("a metrics page")
}

/// Polls a member's metrics until `has_leader` reads `want`; returns them.
async fn wait_has_leader(addr: &str, want: f64) -> HashMap<String, f64> {
    let deadline = Instant::now() + GENEROUS;
    loop {
        let m = must_scrape(addr).await;
        if value(&m, HAS_LEADER) == want {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{HAS_LEADER} never {want}: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops (SIGSTOP) every member but `survivor` for `OUTAGE`, and checks
/// what the survivor reports during and after.
async fn outage_is_counted(cluster: &Cluster, metrics: &HashMap<u64, String>, survivor: u64) {
    let addr = &metrics[&survivor];
    let before = wait_has_leader(addr, 1.0).await;
    let stopped: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&id| id != survivor)
        .collect();
    for &id in &stopped {
        cluster.signal(id, libc::SIGSTOP);
    }
    tokio::time::sleep(OUTAGE).await;
    let during = must_scrape(addr).await;
    let status = cluster.status_retrying(survivor).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = must_scrape(addr).await;
    for &id in &stopped {
        cluster.signal(id, libc::SIGCONT);
    }
    let what = format!("survivor {survivor} ({})", status.state);
    assert_eq!(value(&during, HAS_LEADER), 0.0, "{what}: {during:?}");
    let counted = value(&during, LEADERLESS) - value(&before, LEADERLESS);
    // All of the outage but the time to notice it (2 x the election
    // timeout at most, backdated to the last contact) and scrape slack.
    assert!(
        counted >= OUTAGE.as_secs_f64() - 1.0 && counted <= OUTAGE.as_secs_f64() + 2.0,
        "{what}: {counted} s counted over a {OUTAGE:?} outage"
    );
    assert!(
        value(&later, LEADERLESS) > value(&during, LEADERLESS),
        "{what}: not rising during the outage"
    );
    assert!(
        value(&during, "nines_leaderless_stretch_seconds") >= OUTAGE.as_secs_f64() - 1.0,
        "{what}: {during:?}"
    );
    // endpoint status reads the same counter.
    assert!(
        status.leaderless.as_secs_f64() >= value(&during, LEADERLESS) - 0.01,
        "{what}: {status:?}"
    );
    assert!(status.uptime > OUTAGE, "{what}: {status:?}");
    assert!(status.leader_changes >= 1, "{what}: {status:?}");

    // Back: the counter stops rising.
    let after = wait_has_leader(addr, 1.0).await;
    assert_eq!(value(&after, "nines_leaderless_stretch_seconds"), 0.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = must_scrape(addr).await;
    let rose = value(&settled, LEADERLESS) - value(&after, LEADERLESS);
    assert!(
        rose < 0.05,
        "{what}: still rising with a leader: +{rose} s in 2 s"
    );
    assert!(
        value(&settled, "nines_uptime_seconds_total")
            >= value(&after, "nines_uptime_seconds_total") + 1.9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_without_a_leader_is_counted_and_stops_after_recovery() {
    let (cluster, metrics) = metrics_cluster(&[]);
    let leader = cluster.stable_leader(GENEROUS).await;
    let start = must_scrape(&metrics[&leader]).await;
    let started_at = value(&start, "nines_process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started_at > now - 120.0 && started_at <= now,
        "{started_at} vs now {now}"
    );

    // A follower whose leader is gone (it keeps the leader's id).
    let follower = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .expect("a follower");
    outage_is_counted(&cluster, &metrics, follower).await;
    // A leader without its quorum (it keeps its role).
    let leader = cluster.stable_leader(GENEROUS).await;
    outage_is_counted(&cluster, &metrics, leader).await;
}
