//! Debian's etcdctl (3.4) against a 3-node nines, for what `etcd_api.rs`
//! and `etcd_cluster.rs` leave out: endpoints given as URLs and the
//! `--cluster` flags (etcdctl then dials every member's advertised client
//! URL), `--from-key`, `del --prev-kv`, interactive `txn -i`, and
//! `check perf`.
//!
//! etcdctl 3.4 has no `get --count-only` (3.5 added it); count-only reads
//! are covered through the gRPC API in `range_options.rs`.

use std::time::{Duration, Instant};

use nines_tests::etcdctl::{ctl, ok};
use nines_tests::{Cluster, ClusterOptions};

const LONG: Duration = Duration::from_secs(60);

/// Waits until every member names the same leader (etcdctl retries no
/// write refused for want of one).
async fn all_know_leader(cluster: &Cluster) -> u64 {
    let deadline = Instant::now() + LONG;
    loop {
        let leader = cluster.wait_leader(LONG).await;
        let mut agree = true;
        for node in &cluster.nodes {
            agree &= cluster.status(node.id).await.map(|s| s.leader_id) == Some(leader);
        }
        if agree {
            return leader;
        }
        assert!(Instant::now() < deadline, "no agreed leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn urls(cluster: &Cluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .map(|n| format!("http://{}", n.client_addr))
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Each advertised client URL appears once in `text`, in any order.
fn names_each_member(text: &str, cluster: &Cluster) {
    for url in urls(cluster) {
        assert_eq!(text.matches(&format!("{url},")).count(), 1, "{url}: {text}");
    }
}

/// Calls to one member (status, hashkv, defrag, move-leader) and every
/// `--cluster` flag: etcdctl 3.4 then sends `:authority: http://host:port`,
/// which nines answered with RST_STREAM(PROTOCOL_ERROR) until its HTTP/2
/// server accepted it as etcd does (third_party/h2/NINES-PATCH.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_with_url_endpoints_and_cluster_flags() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = all_know_leader(&cluster).await;
    let all = urls(&cluster);
    let one = all[0].clone();

    let status = ok(&one, &["endpoint", "status", "--cluster"]);
    assert_eq!(status.lines().count(), 3, "{status}");
    names_each_member(&status, &cluster);
    let leaders = status
        .lines()
        .filter(|l| l.split(", ").nth(4) == Some("true"));
    assert_eq!(leaders.count(), 1, "{status}");
    let json = ok(&one, &["endpoint", "status", "--cluster", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    for member in v.as_array().expect("a list") {
        assert_eq!(member["Status"]["leader"].as_u64(), Some(leader), "{json}");
    }

    // etcdctl 3.4 reports health on stderr.
    let out = ctl(&one, &["endpoint", "health", "--cluster"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    for url in &all {
        let healthy = format!("{url} is healthy");
        assert!(stderr(&out).contains(&healthy), "{}", stderr(&out));
    }

    ok(&one, &["put", "k", "v"]);
    let deadline = Instant::now() + LONG;
    let hashes = loop {
        let text = ok(&one, &["endpoint", "hashkv", "--cluster"]);
        names_each_member(&text, &cluster);
        let hashes: Vec<&str> = text.lines().filter_map(|l| l.split(", ").nth(1)).collect();
        if hashes.len() == 3 && hashes.iter().all(|h| *h == hashes[0]) {
            break text;
        }
        assert!(Instant::now() < deadline, "members never agreed: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    names_each_member(&hashes, &cluster);

    let defrag = ok(&one, &["defrag", "--cluster"]);
    for url in &all {
        let done = format!("Finished defragmenting etcd member[{url}]");
        assert!(defrag.contains(&done), "{defrag}");
    }

    // move-leader asks each listed endpoint for its status to find the
    // leader, then moves it.
    let target = (1..=3).find(|id| *id != leader).unwrap();
    let every = all.join(",");
    let deadline = Instant::now() + LONG;
    loop {
        let out = ctl(&every, &["move-leader", &format!("{target:x}")], "");
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            assert!(text.contains("Leadership transferred"), "{text}");
            break;
        }
        // A transfer can lose to an election under way; etcdctl is run
        // again, as with etcd. Anything else is a failure.
        assert!(
            Instant::now() < deadline && !stderr(&out).contains("PROTOCOL_ERROR"),
            "{text}{}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(all_know_leader(&cluster).await, target);
}

/// KV commands through URL endpoints that the other tests do not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_from_key_prev_kv_and_interactive_txn() {
    let cluster = Cluster::start(ClusterOptions::default());
    all_know_leader(&cluster).await;
    let every = urls(&cluster).join(",");
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")] {
        assert_eq!(ok(&every, &["put", k, v]), "OK\n");
    }
    assert_eq!(
        ok(&every, &["get", "b", "--from-key", "--keys-only"]),
        "b\n\nc\n\nd\n\n"
    );
    assert_eq!(
        ok(&every, &["get", "b", "--from-key", "--limit=1"]),
        "b\n2\n"
    );
    assert_eq!(ok(&every, &["del", "c", "--prev-kv"]), "1\nc\n3\n");
    assert_eq!(
        ok(&every, &["del", "a", "--from-key", "--prev-kv"]),
        "3\na\n1\nb\n2\nd\n4\n"
    );
    assert_eq!(ok(&every, &["del", "a", "--prev-kv"]), "0\n");

    // `txn -i` prompts for each part and reads them from stdin.
    ok(&every, &["put", "x", "1"]);
    let input = "value(\"x\") = \"1\"\nversion(\"y\") = \"0\"\n\nput y 2\nget x\n\nput y bad\n\n";
    let out = ctl(&every, &["txn", "-i"], input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n\
         SUCCESS\n\nOK\n\nx\n1\n"
    );
    let out = ctl(&every, &["txn", "-i"], input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with("FAILURE\n\nOK\n"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(ok(&every, &["get", "y", "--print-value-only"]), "bad\n");
}

/// etcdctl's own performance check (50 clients, 150 writes/s for 60 s,
/// then a delete of its prefix) passes against nines. It needs Range, Put
/// and DeleteRange only; no lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_check_perf_passes() {
    let cluster = Cluster::start(ClusterOptions::default());
    all_know_leader(&cluster).await;
    let every = urls(&cluster).join(",");
    let out = ctl(&every, &["check", "perf", "--load=s"], "");
    let text = String::from_utf8_lossy(&out.stdout);
    // The last lines are the verdicts; the progress bar comes before.
    let verdict: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
        .collect();
    assert!(
        out.status.success() && verdict.last() == Some(&"PASS"),
        "{verdict:?}\n{}",
        stderr(&out)
    );
    assert_eq!(
        ok(
            &every,
            &["get", "/etcdctl-check-perf/", "--prefix", "--keys-only"]
        ),
        ""
    );
}
