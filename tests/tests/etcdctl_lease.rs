//! Debian's etcdctl (3.4) lease commands against a 3-node nines, through a
//! follower: grant, put --lease, timetolive --keys, keep-alive (once and
//! streaming), list and revoke, with etcd's output.

use std::process::{Command, Stdio};
use std::time::Duration;

use nines_tests::etcdctl::{etcdctl, ok};
use nines_tests::{Cluster, ClusterOptions};

const LONG: Duration = Duration::from_secs(60);

/// The hex id in etcdctl's "lease <id> granted with TTL(<n>s)".
fn granted_id(out: &str) -> String {
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"lease"), "{out}");
    assert!(out.contains("granted with TTL("), "{out}");
    words[1].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lease_commands_work_against_nines() {
    let cluster = Cluster::start(ClusterOptions::default());
    let leader = cluster.stable_leader(LONG).await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let ep = follower.client_addr.as_str();

    let out = ok(ep, &["lease", "grant", "30"]);
    let id = granted_id(&out);
    assert!(out.trim_end().ends_with("granted with TTL(30s)"), "{out}");
    assert_eq!(ok(ep, &["put", "--lease", &id, "lk", "v"]).trim(), "OK");
    assert_eq!(
        ok(ep, &["put", &format!("--lease={id}"), "lk2", "v"]).trim(),
        "OK"
    );

    let ttl = ok(ep, &["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(30s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.trim_end().ends_with("attached keys([lk lk2])"), "{ttl}");

    let once = ok(ep, &["lease", "keep-alive", "--once", &id]);
    assert_eq!(once.trim(), format!("lease {id} keepalived with TTL(30)"));

    // The streaming form prints one line per keepalive until stopped.
    let mut child = Command::new(etcdctl())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={ep}"))
        .args(["lease", "keep-alive", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl keep-alive");
    // etcd's client sends a keepalive every TTL/3 (10 s): wait for two.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines = text
        .lines()
        .filter(|l| *l == format!("lease {id} keepalived with TTL(30)"))
        .count();
    assert!(lines >= 2, "keep-alive printed: {text:?}");

    let list = ok(ep, &["lease", "list"]);
    assert_eq!(list.trim(), format!("found 1 leases\n{id}"));

    assert_eq!(
        ok(ep, &["lease", "revoke", &id]).trim(),
        format!("lease {id} revoked")
    );
    assert_eq!(ok(ep, &["get", "lk"]), "");
    let gone = ok(ep, &["lease", "timetolive", &id]);
    assert_eq!(gone.trim(), format!("lease {id} already expired"));
    // A put naming the revoked lease fails with etcd's message.
    let refused = nines_tests::etcdctl::ctl(ep, &["put", "--lease", &id, "lk", "v"], "");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("requested lease not found"), "{stderr}");
}
