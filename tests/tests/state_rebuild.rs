//! A follower whose sled state is damaged on disk restarts, rebuilds it from
//! its newest snapshot plus the Raft log, and serves every acknowledged key.

use std::path::Path;
use std::time::{Duration, Instant};

use nines_tests::{Cluster, ClusterOptions};

/// XORs 4 KiB in the middle of every file under sled's dir.
fn corrupt_sled(sled_dir: &Path) -> usize {
    let mut damaged = 0;
    let mut stack = vec![sled_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("sled dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let mut bytes = std::fs::read(&path).expect("read");
            if bytes.is_empty() {
                continue;
            }
            let mid = bytes.len() / 2;
            let end = (mid + 4096).min(bytes.len());
            for b in &mut bytes[mid.saturating_sub(8)..end] {
                *b ^= 0x5a;
            }
            std::fs::write(&path, &bytes).expect("write");
            damaged += 1;
        }
    }
    damaged
}

fn has_snapshot(state_dir: &Path) -> bool {
    std::fs::read_dir(state_dir.join("snapshots"))
        .map(|d| {
            d.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "snap"))
        })
        .unwrap_or(false)
}

async fn put_keys(cluster: &Cluster, range: std::ops::Range<u32>) {
    let client = cluster.client();
    for i in range {
        client
            .put(format!("key/{i:04}"), format!("value-{i}"))
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_follower_state_is_rebuilt_on_restart() {
    let mut cluster = Cluster::start(ClusterOptions {
        args: ["--snapshot-entries", "50", "--snapshot-keep-entries", "0"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    put_keys(&cluster, 0..300).await;
    let index = cluster.status_retrying(leader).await.applied_index;
    cluster
        .wait_applied(follower, index, Duration::from_secs(60))
        .await;
    let state_dir = cluster.node(follower).data_dir.join("state");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has_snapshot(&state_dir) {
        assert!(Instant::now() < deadline, "follower built no snapshot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let sled write its buffers, so there is something to damage.
    tokio::time::sleep(Duration::from_secs(2)).await;

    cluster.kill(follower);
    assert!(corrupt_sled(&state_dir.join("sm")) > 0, "no sled files");
    // Acknowledged while the follower is down: it must get them from the log.
    put_keys(&cluster, 300..340).await;

    cluster.restart(follower);
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let index = cluster.status_retrying(leader).await.applied_index;
    cluster
        .wait_applied(follower, index, Duration::from_secs(90))
        .await;
    assert!(cluster.is_running(follower));
    let log = cluster.server_log(follower);
    assert!(
        log.contains("state machine is damaged"),
        "no rebuild logged:\n{log}"
    );
    let aside = std::fs::read_dir(&state_dir)
        .expect("state dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("sm.corrupt-"))
        .count();
    assert_eq!(aside, 1, "the damaged dir is kept aside");

    let client = cluster.client_of(follower);
    for i in 0..340u32 {
        let resp = client
            .get_request(nines_client::GetRequest {
                key: format!("key/{i:04}").into_bytes(),
                serializable: true,
            })
            .await
            .unwrap_or_else(|e| panic!("serializable get {i}: {e}"));
        let kv = resp
            .kv
            .unwrap_or_else(|| panic!("key {i} missing on node {follower}"));
        assert_eq!(kv.value, format!("value-{i}").into_bytes());
    }
}
