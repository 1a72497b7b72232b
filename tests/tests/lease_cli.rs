//! `nines lease ...` and `nines put --lease` print what etcdctl 3.4 prints,
//! run side by side on the same leases: against a real etcd (the
//! reference) and against nines. Lease ids differ between grants, so
//! outputs are compared with ids (and the remaining seconds, which tick)
//! replaced by placeholders.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nines_tests::etcd::EtcdCluster;
use nines_tests::etcdctl::{ctl, etcdctl};
use nines_tests::{Cluster, ClusterOptions};

fn nines(endpoint: &str, args: &[&str]) -> Output {
    Command::new(nines_tests::cluster::cli_binary())
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run nines")
}

fn stdout(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Both tools' stdout for `args`, checked successful.
fn both(endpoint: &str, args: &[&str]) -> (String, String) {
    let e = stdout(&ctl(endpoint, args, ""), &format!("etcdctl {args:?}"));
    let n = stdout(&nines(endpoint, args), &format!("nines {args:?}"));
    (e, n)
}

/// The 16-hex-digit lease id in `lease <id> ...`.
fn id_of(line: &str) -> String {
    let id = line.split_whitespace().nth(1).expect("lease <id>");
    assert_eq!(id.len(), 16, "{line:?}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{line:?}");
    id.to_string()
}

/// `remaining(NNs)` becomes `remaining(Ns)`: seconds tick between runs.
fn without_remaining(s: &str) -> String {
    let Some(at) = s.find("remaining(") else {
        return s.to_string();
    };
    let from = at + "remaining(".len();
    match s[from..].find("s)") {
        Some(len) => format!("{}N{}", &s[..from], &s[from + len..]),
        None => s.to_string(),
    }
}

/// `without_remaining`, with the attached keys sorted: etcd lists a
/// lease's keys in a map's order, which changes between calls.
fn normalized(s: &str) -> String {
    let s = without_remaining(s);
    let Some(at) = s.find("attached keys([") else {
        return s;
    };
    let from = at + "attached keys([".len();
    let Some(len) = s[from..].find("])") else {
        return s;
    };
    let mut keys: Vec<&str> = s[from..from + len].split(' ').collect();
    keys.sort();
    format!("{}{}{}", &s[..from], keys.join(" "), &s[from + len..])
}

fn json_keys(s: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(s.trim()).expect("one JSON object");
    let mut keys: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    keys.sort();
    keys
}

fn compare(endpoint: &str) {
    // grant: same sentence, each its own id.
    let (e, n) = both(endpoint, &["lease", "grant", "100"]);
    let (eid, nid) = (id_of(&e), id_of(&n));
    assert_eq!(e.replace(&eid, "ID"), "lease ID granted with TTL(100s)\n");
    assert_eq!(n.replace(&nid, "ID"), e.replace(&eid, "ID"));

    // put --lease, each tool on the other's lease.
    let (e, n) = (
        stdout(
            &ctl(endpoint, &["put", "lc/e", "1", "--lease", &nid], ""),
            "put",
        ),
        stdout(
            &nines(endpoint, &["put", "lc/n", "2", "--lease", &eid]),
            "put",
        ),
    );
    assert_eq!((e.as_str(), n.as_str()), ("OK\n", "OK\n"));
    stdout(
        &nines(endpoint, &["put", "lc/n2", "3", "--lease", &eid]),
        "put",
    );

    // timetolive, with and without keys; JSON with etcdctl's fields.
    for args in [
        vec!["lease", "timetolive", &eid],
        vec!["lease", "timetolive", &eid, "--keys"],
        vec!["lease", "timetolive", &nid, "--keys"],
    ] {
        let (e, n) = both(endpoint, &args);
        assert_eq!(normalized(&n), normalized(&e), "{args:?}");
    }
    let (e, _) = both(endpoint, &["lease", "timetolive", &eid, "--keys"]);
    // The server's order of a lease's keys (etcd's is a map's).
    assert!(
        e.ends_with("attached keys([lc/n lc/n2])\n")
            || e.ends_with("attached keys([lc/n2 lc/n])\n"),
        "{e}"
    );
    let args = ["lease", "timetolive", &eid, "--keys", "-w", "json"];
    let (e, n) = both(endpoint, &args);
    assert_eq!(json_keys(&n), json_keys(&e));
    let (ej, nj): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&e).unwrap(),
        serde_json::from_str(&n).unwrap(),
    );
    for field in ["id", "granted-ttl"] {
        assert_eq!(nj[field], ej[field], "{field}");
    }
    let sorted = |v: &serde_json::Value| {
        let mut keys: Vec<String> = v["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k.as_str().expect("base64").to_string())
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(sorted(&nj), sorted(&ej));
    let (e, n) = both(endpoint, &["lease", "grant", "100", "-w", "json"]);
    assert_eq!(json_keys(&n), json_keys(&e));

    // list: the same leases. etcd lists them in Go map order, which
    // changes from one call to the next, so compare them sorted.
    let (e, n) = both(endpoint, &["lease", "list"]);
    let lines = |out: &str| {
        let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    assert_eq!(lines(&n), lines(&e));
    assert!(e.contains(&eid) && e.contains(&nid), "{e}");

    // keep-alive --once.
    let (e, n) = both(endpoint, &["lease", "keep-alive", "--once", &eid]);
    assert_eq!(n, e);
    assert_eq!(e, format!("lease {eid} keepalived with TTL(100)\n"));

    // Unknown leases: etcdctl's sentence, or its error.
    let (e, n) = both(endpoint, &["lease", "timetolive", "1234"]);
    assert_eq!(
        (e.as_str(), n.as_str()),
        ("lease 0000000000001234 already expired\n", e.as_str())
    );
    for args in [
        vec!["lease", "revoke", "1234"],
        vec!["put", "lc/x", "y", "--lease", "1234"],
        vec!["lease", "keep-alive", "--once", "1234"],
    ] {
        let (e, n) = (ctl(endpoint, &args, ""), nines(endpoint, &args));
        for (tool, out) in [("etcdctl", &e), ("nines", &n)] {
            assert!(!out.status.success(), "{tool} {args:?} should fail");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("requested lease not found"), "{tool}: {err}");
        }
    }
    let (e, n) = both(endpoint, &["lease", "keep-alive", "1234"]);
    assert_eq!(n, e);
    assert_eq!(e, "lease 0000000000001234 expired or revoked.\n");

    // revoke: each tool revokes one; the keys go with them.
    let e = stdout(&ctl(endpoint, &["lease", "revoke", &nid], ""), "revoke");
    let n = stdout(&nines(endpoint, &["lease", "revoke", &eid]), "revoke");
    assert_eq!(e, format!("lease {nid} revoked\n"));
    assert_eq!(n, format!("lease {eid} revoked\n"));
    let (e, n) = both(endpoint, &["get", "lc/", "--prefix", "--keys-only"]);
    assert_eq!((e.as_str(), n.as_str()), ("", ""));

    keep_alive_until_revoked(endpoint);
}

/// `lease keep-alive ID` of both tools on one lease of TTL 6 (a keepalive
/// every 2 s); revoked after a second: both print the first keepalive,
/// then etcdctl's "expired or revoked." at the next, and exit 0.
fn keep_alive_until_revoked(endpoint: &str) {
    let grant = stdout(&ctl(endpoint, &["lease", "grant", "6"], ""), "grant");
    let id = id_of(&grant);
    let spawn = |program: PathBuf| {
        Command::new(program)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(["lease", "keep-alive", &id])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keep-alive")
    };
    let children = [
        spawn(PathBuf::from(etcdctl())),
        spawn(nines_tests::cluster::cli_binary()),
    ];
    std::thread::sleep(Duration::from_secs(1));
    stdout(&ctl(endpoint, &["lease", "revoke", &id], ""), "revoke");
    let deadline = Instant::now() + Duration::from_secs(20);
    let outputs: Vec<String> = children
        .into_iter()
        .map(|mut child| {
            while child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "keep-alive did not end");
                std::thread::sleep(Duration::from_millis(50));
            }
            let out = child.wait_with_output().unwrap();
            stdout(&out, "keep-alive")
        })
        .collect();
    let expected = format!("lease {id} keepalived with TTL(6)\nlease {id} expired or revoked.\n");
    assert_eq!(outputs[0], expected, "etcdctl");
    assert_eq!(outputs[1], expected, "nines");
}

#[test]
fn nines_lease_prints_what_etcdctl_prints_against_etcd() {
    let etcd = EtcdCluster::start(3);
    compare(&etcd.client_urls[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nines_lease_prints_what_etcdctl_prints_against_nines() {
    let cluster = Cluster::start(ClusterOptions::default());
    cluster.stable_leader(Duration::from_secs(30)).await;
    let endpoint = cluster.node(1).client_addr.clone();
    tokio::task::spawn_blocking(move || compare(&endpoint))
        .await
        .unwrap();
}
