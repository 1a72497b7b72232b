//! A follower that was paused (SIGSTOP) past the election timeout must not
//! depose a healthy leader when it resumes: without a pre-vote round it
//! campaigned at once at a higher term and the leader stepped down.

use std::time::Duration;

use nines_tests::{Cluster, ClusterOptions};

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_follower_does_not_depose_the_leader() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(LONG).await;
    cluster.client().put("k", "v").await.expect("put");
    // Leadership may still settle right after start (a slow first heartbeat
    // on a loaded machine): measure from a leader that held for a second.
    let leader = loop {
        let leader = cluster.wait_leader(LONG).await;
        let term = cluster.terms().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if cluster.wait_leader(LONG).await == leader && cluster.terms().await == term {
            break leader;
        }
    };
    let before = cluster.terms().await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    for round in 0..3 {
        cluster.signal(follower, libc::SIGSTOP);
        // Several election timeouts (150-300 ms) pass while it is stopped.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.signal(follower, libc::SIGCONT);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = cluster.terms().await;
        assert_eq!(
            cluster.wait_leader(LONG).await,
            leader,
            "round {round}: leadership moved\n{}",
            cluster.server_log(follower)
        );
        assert_eq!(
            after,
            before,
            "round {round}: a term changed\n{}",
            cluster.server_log(follower)
        );
    }
    cluster
        .client()
        .put("k", "v2")
        .await
        .expect("put after pauses");
}
