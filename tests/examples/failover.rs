//! Measures failover: kills the leader N times (kill -9) while a client keeps
//! writing, and reports the gap between successful writes around each kill
//! and the time until a new leader is known.
//!
//!     cargo build --release -p nines-server
//!     cargo run --release -p nines-tests --example failover -- 10
//!
//! Uses target/<profile>/nines-server (override with NINES_SERVER_BIN).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nines_tests::{Cluster, ClusterOptions};

#[tokio::main]
async fn main() {
    let kills: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut cluster = Cluster::start(ClusterOptions::default());
    cluster.wait_leader(Duration::from_secs(20)).await;
    let client = cluster.client();
    let successes = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (successes, stop, client) = (successes.clone(), stop.clone(), client.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if client.put(format!("f-{n}"), "v").await.is_ok() {
                    successes.lock().unwrap().push(Instant::now());
                }
                n += 1;
            }
        })
    };
    let mut gaps = Vec::new();
    let mut elections = Vec::new();
    for round in 1..=kills {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let leader = cluster.wait_leader(Duration::from_secs(20)).await;
        let killed_at = Instant::now();
        cluster.kill(leader);
        let new_leader = cluster.wait_leader(Duration::from_secs(20)).await;
        let elected = killed_at.elapsed();
        // Wait for writes to resume, then bring the old leader back.
        loop {
            if successes
                .lock()
                .unwrap()
                .last()
                .is_some_and(|t| *t > killed_at)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let s = successes.lock().unwrap().clone();
        let before = s
            .iter()
            .rev()
            .find(|t| **t <= killed_at)
            .copied()
            .unwrap_or(killed_at);
        let after = *s
            .iter()
            .find(|t| **t > killed_at)
            .expect("a write after the kill");
        let gap = after - before;
        println!("kill {round}: leader {leader} -> {new_leader}, leader known after {elected:?}, write gap {gap:?}");
        gaps.push(gap);
        elections.push(elected);
        cluster.spawn(leader);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    gaps.sort();
    elections.sort();
    let median = |v: &[Duration]| v[v.len() / 2];
    println!(
        "write gap over {kills} leader kills: min {:?} median {:?} max {:?}",
        gaps[0],
        median(&gaps),
        gaps[gaps.len() - 1]
    );
    println!(
        "new leader known after: min {:?} median {:?} max {:?}",
        elections[0],
        median(&elections),
        elections[elections.len() - 1]
    );
}
